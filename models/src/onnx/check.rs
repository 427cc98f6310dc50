//! Runs an exported member (or a tabular model) in tract through the engine's own loader
//! (`tirp_firmware::engine::Plan`), so export parity (burn eval forward or the Rust model vs
//! tract on the written file) is checked against exactly what the box runs.

use tirp_firmware::engine::{Outputs, Plan};

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
    plan: Plan,
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
        Ok(TractMember {
            plan: Plan::from_bytes(bytes, "exported graph", &[1, size, size], Outputs::All)
                .map_err(tract_err)?,
            size,
        })
    }

    /// Every graph output, in the graph's output order, each row-major.
    pub fn run_all(&self, x: &[f32], n: usize) -> Result<Vec<Vec<f32>>, CheckError> {
        let s = self.size;
        if x.len() != n * s * s {
            return Err(CheckError::Input { got: x.len(), n, s });
        }
        Ok(self
            .plan
            .run(x, n, &[1, s, s])
            .map_err(tract_err)?
            .into_iter()
            .map(|o| o.values)
            .collect())
    }

    pub fn run(&self, x: &[f32], n: usize) -> Result<TractOutput, CheckError> {
        let mut out = self.run_all(x, n)?.into_iter();
        let mut next = || {
            out.next()
                .ok_or_else(|| CheckError::Tract("the graph has fewer than two outputs".into()))
        };
        Ok(TractOutput {
            logits: next()?,
            cam: next()?,
        })
    }
}

/// A tabular model (`[N, cols]` → first output) loaded and optimised by tract.
pub struct TractRows {
    plan: Plan,
    cols: usize,
}

impl TractRows {
    pub fn load(bytes: &[u8], cols: usize) -> Result<Self, CheckError> {
        Ok(TractRows {
            plan: Plan::from_bytes(bytes, "exported table model", &[cols], Outputs::All)
                .map_err(tract_err)?,
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
        let out = self.plan.run(x, n, &[cols]).map_err(tract_err)?;
        out.into_iter()
            .next()
            .map(|o| o.values)
            .ok_or_else(|| CheckError::Tract("the graph has no output".into()))
    }
}
