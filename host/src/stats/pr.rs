//! Precision–recall curve and average precision, as scikit-learn defines them
//! (`precision_recall_curve`, `average_precision_score`): one point per distinct score, and
//! AP = Σ (Rₙ − Rₙ₋₁) Pₙ, a step sum without interpolation.

use super::{Result, StatsError, check_finite, check_len};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PrPoint {
    /// Cases scored at or above this are called positive.
    pub threshold: f64,
    pub precision: f64,
    pub recall: f64,
}

/// The curve from the highest threshold down (recall ascending).
pub fn pr_curve(scores: &[f64], labels: &[bool]) -> Result<Vec<PrPoint>> {
    check_len(scores.len(), labels.len())?;
    check_finite(scores)?;
    let total_pos = labels.iter().filter(|&&l| l).count();
    if total_pos == 0 {
        return Err(StatsError::NoPositives);
    }
    let mut order: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    order.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut points = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let s = order[i].0;
        while i < order.len() && order[i].0 == s {
            if order[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        points.push(PrPoint {
            threshold: s,
            precision: tp as f64 / (tp + fp) as f64,
            recall: tp as f64 / total_pos as f64,
        });
    }
    Ok(points)
}

/// Average precision (scikit-learn's definition).
pub fn average_precision(scores: &[f64], labels: &[bool]) -> Result<f64> {
    let curve = pr_curve(scores, labels)?;
    let mut prev_recall = 0.0;
    let mut ap = 0.0;
    for p in &curve {
        ap += (p.recall - prev_recall) * p.precision;
        prev_recall = p.recall;
    }
    Ok(ap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sklearn_docstring_example() {
        // sklearn docs: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.8333…
        let s = [0.1, 0.4, 0.35, 0.8];
        let l = [false, false, true, true];
        assert!((average_precision(&s, &l).unwrap() - 5.0 / 6.0).abs() < 1e-15);
        let c = pr_curve(&s, &l).unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!((c[0].precision, c[0].recall), (1.0, 0.5));
        assert_eq!((c[3].precision, c[3].recall), (0.5, 1.0));
    }

    #[test]
    fn ties_form_one_point_and_no_positives_is_an_error() {
        let s = [0.5, 0.5, 0.5, 0.1];
        let l = [true, false, true, false];
        let c = pr_curve(&s, &l).unwrap();
        assert_eq!(c.len(), 2);
        assert!((c[0].precision - 2.0 / 3.0).abs() < 1e-15);
        assert!(matches!(
            average_precision(&s, &[false; 4]),
            Err(StatsError::NoPositives)
        ));
    }
}
