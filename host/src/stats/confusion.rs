//! The confusion matrix at an operating point and its proportions, each with a Wilson score
//! interval (statsmodels' `proportion_confint(method = "wilson")`).

use super::{Result, StatsError, check_finite, check_len, normal};
use serde::Serialize;

/// A proportion k / n with its Wilson interval; `value` and bounds are NaN when n = 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Proportion {
    pub k: u64,
    pub n: u64,
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// The Wilson score interval at `level`.
pub fn wilson(k: u64, n: u64, level: f64) -> Proportion {
    if n == 0 {
        return Proportion {
            k,
            n,
            value: f64::NAN,
            ci_low: f64::NAN,
            ci_high: f64::NAN,
        };
    }
    let z = normal::quantile(1.0 - (1.0 - level) / 2.0);
    let nf = n as f64;
    let p = k as f64 / nf;
    let z2 = z * z;
    let denom = 1.0 + z2 / nf;
    let center = (p + z2 / (2.0 * nf)) / denom;
    let half = z / denom * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
    Proportion {
        k,
        n,
        value: p,
        ci_low: (center - half).max(0.0),
        ci_high: (center + half).min(1.0),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

/// The proportions of a confusion matrix (F1 is not a proportion and has no Wilson interval).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    pub accuracy: Proportion,
    pub sensitivity: Proportion,
    pub specificity: Proportion,
    pub ppv: Proportion,
    pub npv: Proportion,
    pub f1: f64,
}

impl Confusion {
    /// From paired calls and truths (true = positive).
    pub fn from_calls(calls: &[bool], truth: &[bool]) -> Result<Self> {
        check_len(calls.len(), truth.len())?;
        let mut c = Confusion::default();
        for (&call, &t) in calls.iter().zip(truth) {
            match (call, t) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        Ok(c)
    }

    /// A case is called positive when its score is at or above `threshold` (the device's rule).
    pub fn from_scores(scores: &[f64], truth: &[bool], threshold: f64) -> Result<Self> {
        check_finite(scores)?;
        if !threshold.is_finite() {
            return Err(StatsError::NonFiniteScore {
                index: 0,
                value: threshold,
            });
        }
        let calls: Vec<bool> = scores.iter().map(|&s| s >= threshold).collect();
        Self::from_calls(&calls, truth)
    }

    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    pub fn metrics(&self, level: f64) -> Metrics {
        let f1_denom = 2 * self.tp + self.fp + self.fn_;
        Metrics {
            accuracy: wilson(self.tp + self.tn, self.total(), level),
            sensitivity: wilson(self.tp, self.tp + self.fn_, level),
            specificity: wilson(self.tn, self.tn + self.fp, level),
            ppv: wilson(self.tp, self.tp + self.fp, level),
            npv: wilson(self.tn, self.tn + self.fn_, level),
            f1: if f1_denom == 0 {
                f64::NAN
            } else {
                2.0 * self.tp as f64 / f1_denom as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_textbook_values() {
        // Newcombe (1998), Table I: 81/263 → 0.2553, 0.3662 (rounded to 4 places).
        let p = wilson(81, 263, 0.95);
        assert!((p.ci_low - 0.2553).abs() < 5e-5 && (p.ci_high - 0.3662).abs() < 5e-5);
        let zero = wilson(0, 10, 0.95);
        assert!(zero.ci_low.abs() < 1e-15 && zero.value == 0.0);
        assert!(wilson(0, 0, 0.95).value.is_nan());
    }

    #[test]
    fn matrix_and_metrics() {
        let truth = [true, true, true, false, false, false, false];
        let calls = [true, true, false, true, false, false, false];
        let c = Confusion::from_calls(&calls, &truth).unwrap();
        assert_eq!(
            c,
            Confusion {
                tp: 2,
                fp: 1,
                tn: 3,
                fn_: 1
            }
        );
        let m = c.metrics(0.95);
        assert_eq!(m.accuracy.k, 5);
        assert!((m.sensitivity.value - 2.0 / 3.0).abs() < 1e-15);
        assert!((m.specificity.value - 0.75).abs() < 1e-15);
        assert!((m.f1 - 4.0 / 6.0).abs() < 1e-15);
        let by_score =
            Confusion::from_scores(&[0.9, 0.5, 0.1], &[true, false, false], 0.5).unwrap();
        assert_eq!(
            by_score,
            Confusion {
                tp: 1,
                fp: 1,
                tn: 1,
                fn_: 0
            }
        );
    }
}
