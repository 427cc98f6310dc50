//! The audit of a box's performance: CSV input with located errors, the reader study, the
//! HTML report and the SQLite audit store. The statistics themselves are in [`crate::stats`].

pub mod input;
pub mod readers;
pub mod report;
pub mod simulate;
pub mod store;
