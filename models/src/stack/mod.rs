//! Tabular models: the clinical-only model (age, sex, site) and the stacker (the image
//! members' probabilities plus the clinical features), as an L2 logistic regression or a
//! random forest, each exported to ONNX that tract runs and that reproduces the Rust
//! model's predictions.
//!
//! Every exported graph has one input `features [N, k]` (f32, symbolic batch) and one
//! output `probability [N, 1]` = P(primary bone tumour, label 1), the names the engine
//! reads from [`tirp_firmware::ensemble`]:
//! - [`Logistic`]: `Gemm` + `Sigmoid`, with the training standardisation folded into the
//!   weights;
//! - [`Forest`]: ONNX-ML `TreeEnsembleClassifier` (`BRANCH_LT`, no post-transform) whose
//!   `probabilities [N, 2]` are sliced to column 1.
//!
//! Rows are anything that derefs to `[f32]` (`Vec<f32>`, `[f32; 10]` from
//! [`crate::features::clinical`]); labels are 0/1 as f32 (1 = primary bone tumour).

mod cv;
mod forest;
mod logistic;
#[cfg(test)]
mod tests;

pub use cv::{CvResult, cross_validate, group_folds};
pub use forest::{Forest, ForestConfig};
pub use logistic::{Logistic, LogisticConfig};
pub use tirp_firmware::ensemble::StackerKind;

use crate::onnx::Model;
use tirp_firmware::ensemble::{STACKER_INPUT, STACKER_OUTPUT};

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("no rows")]
    Empty,
    #[error("rows have no columns")]
    NoColumns,
    #[error("row {row} has {got} columns, expected {expected}")]
    Ragged {
        row: usize,
        got: usize,
        expected: usize,
    },
    #[error("row {row}, column {col}: {value} is not a finite number")]
    NonFinite { row: usize, col: usize, value: f32 },
    #[error("{got} {what} for {rows} rows")]
    Length {
        what: &'static str,
        got: usize,
        rows: usize,
    },
    #[error("row {row}: label {value} is not 0 or 1")]
    Label { row: usize, value: f32 },
    #[error("every label is {0}: fitting needs both classes")]
    OneClass(u8),
    #[error("cross-validation needs at least 2 folds, got {0}")]
    Folds(usize),
    #[error("{k} folds need at least {k} patients of each class; class {class} has {groups}")]
    TooFewGroups { k: usize, class: u8, groups: usize },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("fitting failed: {0}")]
    Fit(String),
}

/// Settings of both model kinds; [`Tabular::fit`] uses the one its kind names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TabularConfig {
    pub logistic: LogisticConfig,
    pub forest: ForestConfig,
}

/// A fitted clinical model or stacker of either kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Tabular {
    Lr(Logistic),
    Rf(Forest),
}

impl Tabular {
    pub fn fit<R: AsRef<[f32]>>(
        kind: StackerKind,
        x: &[R],
        y: &[f32],
        cfg: &TabularConfig,
    ) -> Result<Self, StackError> {
        Ok(match kind {
            StackerKind::Lr => Tabular::Lr(Logistic::fit(x, y, &cfg.logistic)?),
            StackerKind::Rf => Tabular::Rf(Forest::fit(x, y, &cfg.forest)?),
        })
    }

    pub fn kind(&self) -> StackerKind {
        match self {
            Tabular::Lr(_) => StackerKind::Lr,
            Tabular::Rf(_) => StackerKind::Rf,
        }
    }

    /// Number of input columns the model was fitted on.
    pub fn n_features(&self) -> usize {
        match self {
            Tabular::Lr(m) => m.n_features(),
            Tabular::Rf(m) => m.n_features(),
        }
    }

    /// P(label 1) per row; the rows must have the fitted width and finite values.
    pub fn predict<R: AsRef<[f32]>>(&self, x: &[R]) -> Result<Vec<f32>, StackError> {
        match self {
            Tabular::Lr(m) => m.predict(x),
            Tabular::Rf(m) => m.predict(x),
        }
    }

    /// The ONNX graph `features [N, k]` → `probability [N, 1]`.
    pub fn to_onnx(&self) -> Model {
        match self {
            Tabular::Lr(m) => m.to_onnx(),
            Tabular::Rf(m) => m.to_onnx(),
        }
    }

    /// How much the model relies on each column: non-negative, summing to 1 (used to
    /// weight the members' heat-maps). LR: |coefficient| × column std; RF: mean decrease
    /// in Gini impurity.
    pub fn importance(&self) -> Vec<f32> {
        match self {
            Tabular::Lr(m) => m.importance(),
            Tabular::Rf(m) => m.importance(),
        }
    }
}

/// Checks that the rows are non-empty, rectangular (`cols` wide when given) and finite;
/// returns them row-major with their width.
fn rows_matrix<R: AsRef<[f32]>>(
    x: &[R],
    cols: Option<usize>,
) -> Result<(Vec<f32>, usize), StackError> {
    let first = x.first().ok_or(StackError::Empty)?.as_ref().len();
    let expected = cols.unwrap_or(first);
    if expected == 0 {
        return Err(StackError::NoColumns);
    }
    let mut data = Vec::with_capacity(x.len() * expected);
    for (row, r) in x.iter().enumerate() {
        let r = r.as_ref();
        if r.len() != expected {
            return Err(StackError::Ragged {
                row,
                got: r.len(),
                expected,
            });
        }
        if let Some(col) = r.iter().position(|v| !v.is_finite()) {
            return Err(StackError::NonFinite {
                row,
                col,
                value: r[col],
            });
        }
        data.extend_from_slice(r);
    }
    Ok((data, expected))
}

/// Checks labels for `rows` rows: each 0 or 1, both classes present.
fn check_labels(y: &[f32], rows: usize) -> Result<(), StackError> {
    if y.len() != rows {
        return Err(StackError::Length {
            what: "labels",
            got: y.len(),
            rows,
        });
    }
    if let Some(row) = y.iter().position(|&v| v != 0.0 && v != 1.0) {
        return Err(StackError::Label { row, value: y[row] });
    }
    let ones = y.iter().filter(|&&v| v == 1.0).count();
    match ones {
        0 => Err(StackError::OneClass(0)),
        n if n == rows => Err(StackError::OneClass(1)),
        _ => Ok(()),
    }
}

/// Declared output of every tabular graph.
fn finish(g: crate::onnx::Graph, p: &str, cols: usize, doc: &str) -> Model {
    g.finish_rows(
        "stacker",
        STACKER_INPUT,
        cols,
        &[(p, STACKER_OUTPUT, vec![None, Some(1)])],
        doc,
    )
}
