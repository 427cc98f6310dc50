//! The statistics of the DeepTIRP study, matched to the field's reference tools to 1e-6:
//! R's pROC (AUC, DeLong CI and test, Youden point), scikit-learn (AUC, average precision) and
//! statsmodels (Wilson intervals, Fleiss' κ, Cohen's κ, McNemar, logistic calibration).
//! The fixtures and reference values live in `host/tests/fixtures/`.

pub mod agreement;
pub mod calibration;
pub mod confusion;
pub mod drift;
pub mod normal;
pub mod pr;
pub mod roc;

/// Errors of the statistics: each names what is missing or out of range.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("no positive cases (need at least one of each class)")]
    NoPositives,
    #[error("no negative cases (need at least one of each class)")]
    NoNegatives,
    #[error("score {index} is not a finite number ({value})")]
    NonFiniteScore { index: usize, value: f64 },
    #[error("probability {index} is {value}, outside [0, 1]")]
    NotAProbability { index: usize, value: f64 },
    #[error("inputs differ in length: {a} against {b}")]
    LengthMismatch { a: usize, b: usize },
    #[error("empty input")]
    Empty,
    #[error("case {case} has {got} ratings, the first case has {expected}")]
    UnequalRaterCounts {
        case: usize,
        got: usize,
        expected: usize,
    },
    #[error("need at least {need} {what}, got {got}")]
    TooFew {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("{0}")]
    Degenerate(&'static str),
}

pub type Result<T> = std::result::Result<T, StatsError>;

/// Rejects NaN and infinite scores, naming the first offending index.
pub(crate) fn check_finite(scores: &[f64]) -> Result<()> {
    match scores.iter().position(|s| !s.is_finite()) {
        Some(index) => Err(StatsError::NonFiniteScore {
            index,
            value: scores[index],
        }),
        None => Ok(()),
    }
}

/// Rejects values outside [0, 1] (and NaN).
pub(crate) fn check_probabilities(p: &[f64]) -> Result<()> {
    match p.iter().position(|v| !(0.0..=1.0).contains(v)) {
        Some(index) => Err(StatsError::NotAProbability {
            index,
            value: p[index],
        }),
        None => Ok(()),
    }
}

pub(crate) fn check_len(a: usize, b: usize) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(StatsError::LengthMismatch { a, b })
    }
}

/// A p-value as reports print it: "p = 0.0123", or "p < 0.0001" below that.
pub fn format_p(p: f64) -> String {
    if p < 1e-4 {
        "p < 0.0001".into()
    } else {
        format!("p = {p:.4}")
    }
}

/// R's default quantile (type 7) of an ascending sorted sample.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 1 {
        return sorted[0];
    }
    let h = (n - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Sample variance and covariance with the n − 1 denominator, as R's `var`/`cov`.
pub(crate) fn sample_cov(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len();
    if n < 2 {
        return f64::NAN;
    }
    let ma = a.iter().sum::<f64>() / n as f64;
    let mb = b.iter().sum::<f64>() / n as f64;
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - ma) * (y - mb))
        .sum::<f64>()
        / (n - 1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_values_print_with_a_floor() {
        assert_eq!(format_p(0.01234), "p = 0.0123");
        assert_eq!(format_p(3e-7), "p < 0.0001");
    }

    #[test]
    fn quantile_type7_matches_r() {
        // R: quantile(c(1,2,3,4,10), c(0.025, 0.5, 0.975)) = 1.1 3.0 9.4
        let s = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert!((quantile_sorted(&s, 0.025) - 1.1).abs() < 1e-12);
        assert!((quantile_sorted(&s, 0.5) - 3.0).abs() < 1e-12);
        assert!((quantile_sorted(&s, 0.975) - 9.4).abs() < 1e-12);
    }

    #[test]
    fn checks_name_the_offender() {
        assert!(matches!(
            check_finite(&[0.1, f64::NAN]),
            Err(StatsError::NonFiniteScore { index: 1, .. })
        ));
        assert!(check_finite(&[0.1, 0.2]).is_ok());
        assert!(matches!(
            check_probabilities(&[0.5, 1.5]),
            Err(StatsError::NotAProbability { index: 1, .. })
        ));
        assert_eq!(sample_cov(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 1.0);
    }
}
