//! Device side of DeepTIRP Edge: what runs on the box (and what the host shares with it).
//!
//! - [`board`]: typed board profiles (`boards/*.toml`).
//! - [`clinical`]: label, sex and site, and their feature encoding (training = inference).
//! - [`dicom`]: the DICOM node (C-ECHO/C-STORE SCP for radiographs, C-STORE SCU) and the
//!   result objects (heat-map Secondary Capture, Basic Text and Comprehensive SR).
//! - [`ensemble`]: `ensemble.json`, what a bundle holds for the engine.
//! - [`engine`]: the inference engine (tract): bundle → flag, probability, heat-map.
//! - [`glyphs`]: a 5×7 bitmap font for text burned into images.
//! - [`health`]: the golden-inference health check of an activated bundle.
//! - [`localise`]: the lesion localiser's input, outputs, training targets and decoding.
//! - [`preprocess`]: the one preprocessing implementation, shared by training and inference.
//! - [`radiograph`]: decoding PNG, JPEG and DICOM radiographs to MONOCHROME2.
//! - [`link`], [`bundle`], [`slots`], [`devlog`], [`provision`], [`daemon`]: the provisioning
//!   link (shared with the host), signed bundles, A/B slots, the device log, the daemon.

pub mod board;
pub mod bundle;
pub mod clinical;
#[cfg(unix)]
pub mod daemon;
pub mod devlog;
pub mod dicom;
pub mod engine;
pub mod ensemble;
pub mod glyphs;
pub mod health;
pub mod link;
pub mod localise;
pub mod preprocess;
pub mod provision;
pub mod radiograph;
pub mod slots;
#[doc(hidden)]
pub mod testlog;
