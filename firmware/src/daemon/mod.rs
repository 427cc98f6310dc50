//! The device daemon `tirpd`: one module per service. Each service runs on its own thread
//! against the shared [`crate::provision::Device`] and stops when the shutdown flag is set.
//!
//! - [`serial_service`]: the provisioning link.
//! - [`spool`]: the durable queue of received radiographs (never a lost study, each
//!   processed once).

pub mod dashboard;
pub mod serial_service;
pub mod spool;
