//! Device side of DeepTIRP Edge: what runs on the box (and what the host shares with it).
//!
//! - [`board`]: typed board profiles (`boards/*.toml`).
//! - [`glyphs`]: a 5×7 bitmap font for text burned into images.
//! - [`preprocess`]: the one preprocessing implementation, shared by training and inference.

pub mod board;
pub mod glyphs;
pub mod preprocess;
