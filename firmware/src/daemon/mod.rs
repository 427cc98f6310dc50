//! The device daemon `tirpd`: one module per service. Each service runs on its own thread
//! against the shared [`crate::provision::Device`] and stops when the shutdown flag is set.

pub mod dashboard;
pub mod serial_service;
