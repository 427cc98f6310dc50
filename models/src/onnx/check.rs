//! Runs an exported member in tract, the engine the box uses, so that export parity
//! (burn eval forward vs tract on the written file) is checked against the real runtime.

use std::sync::Arc;
use tract_onnx::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("tract: {0}")]
    Tract(String),
    #[error("input has {got} values, expected {n}×{s}×{s}")]
    Input { got: usize, n: usize, s: usize },
}

fn tract_err(e: impl std::fmt::Display) -> CheckError {
    CheckError::Tract(format!("{e:#}"))
}

/// A member's ONNX file loaded and optimised by tract (batch dimension left symbolic).
pub struct TractMember {
    plan: Arc<TypedRunnableModel>,
    size: usize,
}

/// A member's outputs from tract, row-major: `logits [n]`, `cam [n, h, w]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TractOutput {
    pub logits: Vec<f32>,
    pub cam: Vec<f32>,
}

impl TractMember {
    pub fn load(bytes: &[u8], size: usize) -> Result<Self, CheckError> {
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(tract_err)?
            .into_optimized()
            .map_err(tract_err)?
            .into_runnable()
            .map_err(tract_err)?;
        Ok(TractMember { plan, size })
    }

    pub fn run(&self, x: &[f32], n: usize) -> Result<TractOutput, CheckError> {
        let s = self.size;
        if x.len() != n * s * s {
            return Err(CheckError::Input { got: x.len(), n, s });
        }
        let input = Tensor::from_shape(&[n, 1, s, s], x).map_err(tract_err)?;
        let out = self.plan.run(tvec!(input.into())).map_err(tract_err)?;
        let flat = |i: usize| -> Result<Vec<f32>, CheckError> {
            Ok(out[i]
                .to_plain_array_view::<f32>()
                .map_err(tract_err)?
                .iter()
                .copied()
                .collect())
        };
        Ok(TractOutput {
            logits: flat(0)?,
            cam: flat(1)?,
        })
    }
}
