//! The device daemon `tirpd`: one module per service. Each service runs on its own thread
//! against the shared [`crate::provision::Device`] and stops when the shutdown flag is set.
//!
//! - [`serial_service`]: the provisioning link.
//! - [`spool`]: the durable queue of received radiographs (never a lost study, each
//!   processed once).
//! - [`station`]: ingest checks, the inference worker, results to the outbox and dashboard.
//! - [`outbox`]: the persistent retry queue of result objects per destination.
//! - [`hotfolder`]: file ingest for stations that export instead of pushing.
//! - [`dashboard`]: the station's live web UI and JSON API.

pub mod dashboard;
pub mod hotfolder;
pub mod outbox;
pub mod serial_service;
pub mod spool;
pub mod station;
