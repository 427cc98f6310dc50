//! L2-regularised logistic regression (linfa-logistic, L-BFGS) fitted on standardised
//! columns, so that one `alpha` means the same whatever the columns' units; the
//! standardisation is then folded into the coefficients, so the model (and its ONNX
//! graph, plain `Gemm` + `Sigmoid`) works on the original columns.

use super::{StackError, check_labels, finish, rows_matrix};
use crate::onnx::{Graph, Model, Weights};
use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use tirp_firmware::ensemble::STACKER_INPUT;

/// Smallest column scale used in standardisation (see [`Logistic::fit`]).
const MIN_SCALE: f64 = 0.01;

#[derive(Debug, Clone, PartialEq)]
pub struct LogisticConfig {
    /// L2 penalty `alpha/2·‖w‖²` on the standardised coefficients (not the intercept),
    /// added to the summed log-loss: 1.0 is scikit-learn's default `C = 1`.
    pub alpha: f64,
    pub max_iterations: u64,
    /// L-BFGS stops when the gradient norm falls below this.
    pub gradient_tolerance: f64,
}

impl Default for LogisticConfig {
    fn default() -> Self {
        LogisticConfig {
            alpha: 1.0,
            max_iterations: 1000,
            gradient_tolerance: 1e-6,
        }
    }
}

/// A fitted logistic regression on the original (unstandardised) columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    coef: Vec<f32>,
    intercept: f32,
    /// Training standard deviation of each column (0 for a constant column).
    std: Vec<f32>,
}

impl Logistic {
    pub fn fit<R: AsRef<[f32]>>(
        x: &[R],
        y: &[f32],
        cfg: &LogisticConfig,
    ) -> Result<Self, StackError> {
        let (data, k) = rows_matrix(x, None)?;
        let n = x.len();
        check_labels(y, n)?;
        if !(cfg.alpha >= 0.0 && cfg.alpha.is_finite()) {
            return Err(StackError::Config(format!(
                "alpha {} must be ≥ 0",
                cfg.alpha
            )));
        }
        if cfg.max_iterations == 0 {
            return Err(StackError::Config("max_iterations must be ≥ 1".into()));
        }
        // Population mean and std per column, in f64.
        let mut mean = vec![0.0f64; k];
        for row in data.chunks(k) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut std = vec![0.0f64; k];
        for row in data.chunks(k) {
            for ((s, &v), m) in std.iter_mut().zip(row).zip(&mean) {
                *s += (v as f64 - m).powi(2);
            }
        }
        std.iter_mut().for_each(|s| *s = (*s / n as f64).sqrt());
        // Columns are standardised with a floor on the scale: our inputs (probabilities,
        // clinical features) are of order one, and a nearly constant column (a member that
        // barely varies) must not get a huge original-scale weight that turns int8 rounding
        // noise into flips. A constant column standardises to 0, so it gets no weight.
        let scale: Vec<f64> = std.iter().map(|&s| s.max(MIN_SCALE)).collect();
        let z = Array2::from_shape_fn((n, k), |(i, j)| {
            (data[i * k + j] as f64 - mean[j]) / scale[j]
        });
        let t = Array1::from_iter(y.iter().map(|&v| v == 1.0));
        let fitted = LogisticRegression::default()
            .alpha(cfg.alpha)
            .max_iterations(cfg.max_iterations)
            .gradient_tolerance(cfg.gradient_tolerance)
            .fit(&Dataset::new(z, t))
            .map_err(|e| StackError::Fit(e.to_string()))?;
        // linfa chooses which class it models; we always model label 1.
        let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
        let w_std: Vec<f64> = fitted.params().iter().map(|w| sign * w).collect();
        let b_std = sign * fitted.intercept();
        // w·(x − μ)/s + b = (w/s)·x + (b − Σ w·μ/s)
        let coef: Vec<f64> = w_std.iter().zip(&scale).map(|(w, s)| w / s).collect();
        let intercept = b_std - coef.iter().zip(&mean).map(|(c, m)| c * m).sum::<f64>();
        Ok(Logistic {
            coef: coef.iter().map(|&c| c as f32).collect(),
            intercept: intercept as f32,
            std: std.iter().map(|&s| s as f32).collect(),
        })
    }

    /// Coefficients on the original columns (the exported weights).
    pub fn coefficients(&self) -> &[f32] {
        &self.coef
    }

    pub fn intercept(&self) -> f32 {
        self.intercept
    }

    pub fn n_features(&self) -> usize {
        self.coef.len()
    }

    pub fn predict<R: AsRef<[f32]>>(&self, x: &[R]) -> Result<Vec<f32>, StackError> {
        let (data, k) = rows_matrix(x, Some(self.coef.len()))?;
        Ok(data
            .chunks(k)
            .map(|row| {
                // f64 from the exported f32 weights: tract's f32 Gemm differs by rounding only.
                let z = self.intercept as f64
                    + row
                        .iter()
                        .zip(&self.coef)
                        .map(|(&v, &c)| v as f64 * c as f64)
                        .sum::<f64>();
                (1.0 / (1.0 + (-z).exp())) as f32
            })
            .collect())
    }

    /// |coefficient| × column std (the standardised coefficient's size), normalised to 1;
    /// uniform when every coefficient is 0.
    pub fn importance(&self) -> Vec<f32> {
        let raw: Vec<f64> = self
            .coef
            .iter()
            .zip(&self.std)
            .map(|(&c, &s)| (c as f64 * s as f64).abs())
            .collect();
        normalise(&raw)
    }

    pub fn to_onnx(&self) -> Model {
        let k = self.coef.len();
        let mut g = Graph::new();
        let logit = g.gemm(
            STACKER_INPUT,
            &Weights::new(vec![k, 1], self.coef.clone()),
            &Weights::new(vec![1], vec![self.intercept]),
        );
        let p = g.sigmoid(&logit);
        finish(g, &p, k, "logistic regression: P(primary bone tumour)")
    }
}

/// Scales non-negative values to sum to 1; uniform when they are all 0.
pub(super) fn normalise(raw: &[f64]) -> Vec<f32> {
    let sum: f64 = raw.iter().sum();
    if sum > 0.0 {
        raw.iter().map(|v| (v / sum) as f32).collect()
    } else {
        vec![1.0 / raw.len() as f32; raw.len()]
    }
}
