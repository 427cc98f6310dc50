//! Population stability index (PSI) between a reference score distribution and a window:
//! PSI = Σ (wᵢ − rᵢ) ln(wᵢ / rᵢ) over bins cut at the reference's deciles.
//! Conventional reading: < 0.10 stable, 0.10–0.25 moderate shift, > 0.25 major shift.

use super::{Result, StatsError, check_finite, quantile_sorted};
use serde::Serialize;

/// Shares below this are raised to it, so an empty bin gives a large but finite term.
const FLOOR: f64 = 1e-4;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Psi {
    pub psi: f64,
    /// Upper edges of the bins (the last bin is open above).
    pub edges: Vec<f64>,
    pub reference_share: Vec<f64>,
    pub window_share: Vec<f64>,
}

/// The PSI that sampling alone produces on average between two samples of one distribution,
/// (B − 1)(1/n_ref + 1/n_win) (PSI is the J-divergence, ≈ χ²_{B−1} scaled by that sum): with
/// small windows it exceeds the conventional 0.10 threshold without any drift.
pub fn sampling_level(n_reference: usize, n_window: usize, bins: usize) -> f64 {
    (bins.saturating_sub(1)) as f64 * (1.0 / n_reference as f64 + 1.0 / n_window as f64)
}

impl Psi {
    pub fn rating(&self) -> &'static str {
        if self.psi < 0.10 {
            "stable"
        } else if self.psi <= 0.25 {
            "moderate shift"
        } else {
            "major shift"
        }
    }
}

/// PSI with `bins` quantile bins of the reference (duplicate edges from ties are merged).
pub fn psi(reference: &[f64], window: &[f64], bins: usize) -> Result<Psi> {
    check_finite(reference)?;
    check_finite(window)?;
    if reference.is_empty() || window.is_empty() {
        return Err(StatsError::Empty);
    }
    if bins < 2 {
        return Err(StatsError::TooFew {
            what: "bins",
            need: 2,
            got: bins,
        });
    }
    let mut sorted = reference.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let mut edges: Vec<f64> = (1..bins)
        .map(|b| quantile_sorted(&sorted, b as f64 / bins as f64))
        .collect();
    edges.dedup();
    let share = |xs: &[f64]| {
        let mut counts = vec![0usize; edges.len() + 1];
        for &x in xs {
            // Bin i holds edges[i-1] < x ≤ edges[i].
            counts[edges.partition_point(|&e| e < x)] += 1;
        }
        counts
            .iter()
            .map(|&c| c as f64 / xs.len() as f64)
            .collect::<Vec<f64>>()
    };
    let r = share(reference);
    let w = share(window);
    let psi = r
        .iter()
        .zip(&w)
        .map(|(&r, &w)| {
            let (r, w) = (r.max(FLOOR), w.max(FLOOR));
            (w - r) * (w / r).ln()
        })
        .sum();
    Ok(Psi {
        psi,
        edges,
        reference_share: r,
        window_share: w,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_have_zero_psi() {
        let r: Vec<f64> = (0..1000).map(|i| i as f64 / 1000.0).collect();
        let p = psi(&r, &r, 10).unwrap();
        assert!(p.psi.abs() < 1e-12);
        assert_eq!(p.edges.len(), 9);
        assert_eq!(p.rating(), "stable");
        assert!((sampling_level(100, 50, 10) - 9.0 * 0.03).abs() < 1e-15);
    }

    #[test]
    fn shifted_window_by_hand() {
        // Reference quartiles cut at 1.75, 2.5, 3.25 for [1, 2, 3, 4]: one value per bin.
        let r = [1.0, 2.0, 3.0, 4.0];
        let w = [1.0, 1.0, 3.0, 4.0];
        let p = psi(&r, &w, 4).unwrap();
        let expect = (0.5 - 0.25) * (0.5f64 / 0.25).ln() + (FLOOR - 0.25) * (FLOOR / 0.25).ln();
        assert!((p.psi - expect).abs() < 1e-12);
        assert_eq!(p.rating(), "major shift");
        assert!(matches!(
            psi(&r, &[f64::NAN], 4),
            Err(StatsError::NonFiniteScore { .. })
        ));
    }
}
