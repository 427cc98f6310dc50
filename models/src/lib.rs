//! The DeepTIRP Edge model pipeline.
//!
//! - [`cohort`]: the synthetic multi-centre radiograph cohort (real patient data is private).
//! - [`preview`]: contact sheets of a cohort for people to look at.
//! - [`table`]: label tables, ours and the DeepTIRP study's own format.

pub mod cohort;
pub mod preview;
pub mod table;
