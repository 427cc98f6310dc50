//! Runs an exported member (or a tabular model) in tract, the engine the box uses, so that
//! export parity (burn eval forward or the Rust model vs tract on the written file) is
//! checked against the real runtime.

use std::sync::Arc;
use tract_onnx::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("tract: {0}")]
    Tract(String),
    #[error("input has {got} values, expected {n}×{s}×{s}")]
    Input { got: usize, n: usize, s: usize },
    #[error("input has {got} values, expected {n} rows × {cols} columns")]
    Rows { got: usize, n: usize, cols: usize },
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

/// Loads and optimises a model with its batch dimension left symbolic.
fn plan(bytes: &[u8]) -> Result<Arc<TypedRunnableModel>, CheckError> {
    tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .map_err(tract_err)?
        .into_optimized()
        .map_err(tract_err)?
        .into_runnable()
        .map_err(tract_err)
}

impl TractMember {
    pub fn load(bytes: &[u8], size: usize) -> Result<Self, CheckError> {
        Ok(TractMember {
            plan: plan(bytes)?,
            size,
        })
    }

    /// Every graph output, in the graph's output order, each row-major.
    pub fn run_all(&self, x: &[f32], n: usize) -> Result<Vec<Vec<f32>>, CheckError> {
        let s = self.size;
        if x.len() != n * s * s {
            return Err(CheckError::Input { got: x.len(), n, s });
        }
        let input = Tensor::from_shape(&[n, 1, s, s], x).map_err(tract_err)?;
        let out = self.plan.run(tvec!(input.into())).map_err(tract_err)?;
        out.iter()
            .map(|t| {
                Ok(t.to_plain_array_view::<f32>()
                    .map_err(tract_err)?
                    .iter()
                    .copied()
                    .collect())
            })
            .collect()
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

/// A tabular model (`[N, cols]` → first output) loaded and optimised by tract.
pub struct TractRows {
    plan: Arc<TypedRunnableModel>,
    cols: usize,
}

impl TractRows {
    pub fn load(bytes: &[u8], cols: usize) -> Result<Self, CheckError> {
        Ok(TractRows {
            plan: plan(bytes)?,
            cols,
        })
    }

    /// Runs `n` row-major rows; returns the first output, row-major.
    pub fn run(&self, x: &[f32], n: usize) -> Result<Vec<f32>, CheckError> {
        let cols = self.cols;
        if x.len() != n * cols {
            return Err(CheckError::Rows {
                got: x.len(),
                n,
                cols,
            });
        }
        let input = Tensor::from_shape(&[n, cols], x).map_err(tract_err)?;
        let out = self.plan.run(tvec!(input.into())).map_err(tract_err)?;
        Ok(out[0]
            .to_plain_array_view::<f32>()
            .map_err(tract_err)?
            .iter()
            .copied()
            .collect())
    }
}
