//! Device side of DeepTIRP Edge: what runs on the box (and what the host shares with it).
//!
//! - [`board`]: typed board profiles (`boards/*.toml`).
//! - [`preprocess`]: the one preprocessing implementation, shared by training and inference.

pub mod board;
pub mod preprocess;
