//! The DeepTIRP Edge model pipeline.
//!
//! - [`cohort`]: the synthetic multi-centre radiograph cohort (real patient data is private).
//! - [`table`]: label tables, ours and the DeepTIRP study's own format.

pub mod cohort;
pub mod table;
