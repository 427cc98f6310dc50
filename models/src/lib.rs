//! The DeepTIRP Edge model pipeline.
//!
//! - [`cohort`]: the synthetic multi-centre radiograph cohort (real patient data is private).
//! - [`features`]: clinical feature encoding shared by training and inference.
//! - [`fixture`]: small random-initialised bundles for tests and demos of the engine.
//! - [`preview`]: contact sheets of a cohort for people to look at.
//! - [`table`]: label tables, ours and the DeepTIRP study's own format.
//! - [`localiser`]: training and evaluating the lesion localiser (`tirp train-localiser`).
//! - [`nets`]: the ensemble's image members (residual CNN, EfficientNet-style, ViT) in burn.
//! - [`onnx`]: the ONNX writer the members export through (and weight-only int8).
//! - [`pipeline`]: training the whole ensemble into a bundle directory (`tirp train`).
//! - [`radiograph`]: loading stored radiographs for preprocessing.
//! - [`stack`]: the clinical model and the stacker (logistic regression, random forest).
//! - [`train`]: training the members (burn, flex CPU backend).

pub mod cohort;
pub mod features;
pub mod fixture;
pub mod localiser;
pub mod nets;
pub mod onnx;
pub mod pipeline;
pub mod preview;
pub mod quantize;
pub mod radiograph;
pub mod stack;
pub mod table;
pub mod train;
