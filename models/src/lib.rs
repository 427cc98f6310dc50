//! The DeepTIRP Edge model pipeline.
//!
//! - [`cohort`]: the synthetic multi-centre radiograph cohort (real patient data is private).
//! - [`features`]: clinical feature encoding shared by training and inference.
//! - [`preview`]: contact sheets of a cohort for people to look at.
//! - [`table`]: label tables, ours and the DeepTIRP study's own format.

pub mod cohort;
pub mod features;
pub mod preview;
pub mod table;
