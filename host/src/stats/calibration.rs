//! Calibration of predicted probabilities: Brier score, the reliability curve in ten equal-width
//! bins (scikit-learn's `calibration_curve(n_bins = 10)`), and the calibration slope and
//! intercept from the logistic regression of the outcome on logit(p) (Cox 1958; statsmodels'
//! `Logit` gives the reference).

use super::{Result, StatsError, check_len, check_probabilities};
use serde::Serialize;

/// Mean squared difference between probability and outcome.
pub fn brier(p: &[f64], y: &[bool]) -> Result<f64> {
    check_len(p.len(), y.len())?;
    check_probabilities(p)?;
    if p.is_empty() {
        return Err(StatsError::Empty);
    }
    let sum: f64 = p
        .iter()
        .zip(y)
        .map(|(&p, &y)| (p - if y { 1.0 } else { 0.0 }).powi(2))
        .sum();
    Ok(sum / p.len() as f64)
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReliabilityBin {
    pub low: f64,
    pub high: f64,
    pub n: u64,
    pub mean_predicted: f64,
    pub observed: f64,
}

/// Ten bins [0, .1), [.1, .2), …, [.9, 1]; empty bins are left out, as scikit-learn does.
pub fn reliability(p: &[f64], y: &[bool], bins: usize) -> Result<Vec<ReliabilityBin>> {
    check_len(p.len(), y.len())?;
    check_probabilities(p)?;
    let mut sum_p = vec![0.0; bins];
    let mut sum_y = vec![0.0; bins];
    let mut n = vec![0u64; bins];
    for (&pi, &yi) in p.iter().zip(y) {
        let b = ((pi * bins as f64).floor() as usize).min(bins - 1);
        sum_p[b] += pi;
        sum_y[b] += if yi { 1.0 } else { 0.0 };
        n[b] += 1;
    }
    Ok((0..bins)
        .filter(|&b| n[b] > 0)
        .map(|b| ReliabilityBin {
            low: b as f64 / bins as f64,
            high: (b + 1) as f64 / bins as f64,
            n: n[b],
            mean_predicted: sum_p[b] / n[b] as f64,
            observed: sum_y[b] / n[b] as f64,
        })
        .collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CalibrationFit {
    /// 1 for a perfectly calibrated model; below 1 means overconfident scores.
    pub slope: f64,
    /// 0 for a perfectly calibrated model (fitted jointly with the slope).
    pub intercept: f64,
}

/// Probabilities are clipped to [1e-12, 1 − 1e-12] so that logit stays finite.
const CLIP: f64 = 1e-12;

/// Maximum-likelihood fit of logit P(y) = a + b · logit(p) by Newton–Raphson.
pub fn calibration_fit(p: &[f64], y: &[bool]) -> Result<CalibrationFit> {
    check_len(p.len(), y.len())?;
    check_probabilities(p)?;
    let pos = y.iter().filter(|&&v| v).count();
    if pos == 0 {
        return Err(StatsError::NoPositives);
    }
    if pos == y.len() {
        return Err(StatsError::NoNegatives);
    }
    let x: Vec<f64> = p
        .iter()
        .map(|&v| {
            let v = v.clamp(CLIP, 1.0 - CLIP);
            (v / (1.0 - v)).ln()
        })
        .collect();
    let (mut a, mut b) = (0.0f64, 1.0f64);
    for _ in 0..100 {
        // Gradient g and Hessian H of the log-likelihood in (a, b).
        let (mut g0, mut g1, mut h00, mut h01, mut h11) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (&xi, &yi) in x.iter().zip(y) {
            let mu = 1.0 / (1.0 + (-(a + b * xi)).exp());
            let r = if yi { 1.0 } else { 0.0 } - mu;
            let w = mu * (1.0 - mu);
            g0 += r;
            g1 += r * xi;
            h00 += w;
            h01 += w * xi;
            h11 += w * xi * xi;
        }
        let det = h00 * h11 - h01 * h01;
        if !(det.is_finite() && det > 0.0) {
            return Err(StatsError::Degenerate(
                "calibration fit: the scores do not vary",
            ));
        }
        let da = (h11 * g0 - h01 * g1) / det;
        let db = (h00 * g1 - h01 * g0) / det;
        a += da;
        b += db;
        if da.abs() < 1e-12 && db.abs() < 1e-12 {
            return Ok(CalibrationFit {
                slope: b,
                intercept: a,
            });
        }
    }
    Err(StatsError::Degenerate(
        "calibration fit did not converge (the scores separate the classes perfectly)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brier_and_bins() {
        let p = [0.05, 0.15, 0.95, 1.0, 0.1];
        let y = [false, false, true, true, true];
        let b = brier(&p, &y).unwrap();
        assert!((b - (0.0025 + 0.0225 + 0.0025 + 0.0 + 0.81) / 5.0).abs() < 1e-15);
        let bins = reliability(&p, &y, 10).unwrap();
        // 0.1 and 0.15 share bin [0.1, 0.2); 0.95 and 1.0 share the last bin.
        assert_eq!(bins.len(), 3);
        assert_eq!(bins[1].n, 2);
        assert_eq!(bins[2].observed, 1.0);
        assert!(matches!(
            brier(&[1.2], &[true]),
            Err(StatsError::NotAProbability { index: 0, .. })
        ));
    }

    #[test]
    fn calibrated_scores_fit_slope_one() {
        // Outcomes drawn exactly in proportion: 10 cases at each p with round(10 p) positives.
        let mut p = Vec::new();
        let mut y = Vec::new();
        for k in 1..10 {
            for j in 0..10 {
                p.push(k as f64 / 10.0);
                y.push(j < k);
            }
        }
        let f = calibration_fit(&p, &y).unwrap();
        assert!(
            (f.slope - 1.0).abs() < 1e-9 && f.intercept.abs() < 1e-9,
            "{f:?}"
        );
        assert!(matches!(
            calibration_fit(&[0.1, 0.9], &[false, true]),
            Err(StatsError::Degenerate(_))
        ));
    }
}
