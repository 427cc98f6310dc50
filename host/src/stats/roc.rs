//! ROC analysis as R's pROC does it with `direction = "<"` (a higher score means positive):
//! the curve at midpoint thresholds, the AUC, its DeLong variance by the fast algorithm of
//! Sun & Xu (2014, O(n log n)), DeLong's test of two paired curves, the stratified bootstrap CI,
//! and the Youden point.

use super::{Result, StatsError, check_finite, check_len, normal, quantile_sorted, sample_cov};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

/// How a confidence interval was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CiMethod {
    DeLong,
    Bootstrap,
}

impl CiMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CiMethod::DeLong => "delong",
            CiMethod::Bootstrap => "bootstrap",
        }
    }
}

/// An AUC with its confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AucCi {
    pub auc: f64,
    pub low: f64,
    pub high: f64,
    pub level: f64,
    pub method: CiMethod,
}

/// DeLong's structural components: the placement values of each positive (V10, in input order
/// of the positives) and each negative (V01), from which AUC, variance and covariance follow.
#[derive(Debug, Clone)]
pub struct DeLong {
    pub auc: f64,
    pub v10: Vec<f64>,
    pub v01: Vec<f64>,
}

/// Counts of each class, with errors when a class is empty.
fn class_counts(labels: &[bool]) -> Result<(usize, usize)> {
    let m = labels.iter().filter(|&&l| l).count();
    let n = labels.len() - m;
    if m == 0 {
        return Err(StatsError::NoPositives);
    }
    if n == 0 {
        return Err(StatsError::NoNegatives);
    }
    Ok((m, n))
}

fn validated(scores: &[f64], labels: &[bool]) -> Result<(usize, usize)> {
    check_len(scores.len(), labels.len())?;
    check_finite(scores)?;
    class_counts(labels)
}

/// Runs of equal scores in ascending order, as (positives, negatives, indices) per run; the
/// single sort here is what makes the whole analysis O(n log n).
fn tie_groups(scores: &[f64], labels: &[bool], mut visit: impl FnMut(usize, usize, &[(f64, u32)])) {
    let mut order: Vec<(f64, u32)> = scores
        .iter()
        .enumerate()
        .map(|(i, &s)| (s, i as u32))
        .collect();
    order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        // `==` rather than bit equality: −0.0 and 0.0 are one score.
        while end < order.len() && order[end].0 == order[start].0 {
            end += 1;
        }
        let group = &order[start..end];
        let pos = group.iter().filter(|(_, i)| labels[*i as usize]).count();
        visit(pos, group.len() - pos, group);
        start = end;
    }
}

/// Fast DeLong (Sun & Xu 2014): V10 of a positive is the share of negatives scored below it
/// (ties count half), V01 of a negative the share of positives scored above it.
pub fn delong(scores: &[f64], labels: &[bool]) -> Result<DeLong> {
    let (m, n) = validated(scores, labels)?;
    // Position of each case within its own class, so placements keep the input order.
    let mut class_pos = vec![0u32; labels.len()];
    let (mut pi, mut ni) = (0u32, 0u32);
    for (slot, &l) in class_pos.iter_mut().zip(labels) {
        if l {
            *slot = pi;
            pi += 1;
        } else {
            *slot = ni;
            ni += 1;
        }
    }
    let mut v10 = vec![0.0; m];
    let mut v01 = vec![0.0; n];
    let (mut pos_below, mut neg_below) = (0usize, 0usize);
    tie_groups(scores, labels, |pos_g, neg_g, group| {
        let p10 = (neg_below as f64 + 0.5 * neg_g as f64) / n as f64;
        let p01 = 1.0 - (pos_below as f64 + 0.5 * pos_g as f64) / m as f64;
        for &(_, i) in group {
            let i = i as usize;
            if labels[i] {
                v10[class_pos[i] as usize] = p10;
            } else {
                v01[class_pos[i] as usize] = p01;
            }
        }
        pos_below += pos_g;
        neg_below += neg_g;
    });
    let auc = v10.iter().sum::<f64>() / m as f64;
    Ok(DeLong { auc, v10, v01 })
}

impl DeLong {
    /// DeLong variance of the AUC, var(V10)/m + var(V01)/n with R's n − 1 denominators.
    pub fn variance(&self) -> Result<f64> {
        let (m, n) = (self.v10.len(), self.v01.len());
        if m < 2 || n < 2 {
            return Err(StatsError::TooFew {
                what: "cases of each class for a DeLong variance",
                need: 2,
                got: m.min(n),
            });
        }
        Ok(sample_cov(&self.v10, &self.v10) / m as f64
            + sample_cov(&self.v01, &self.v01) / n as f64)
    }

    /// Covariance of two AUCs over the same cases (paired design).
    pub fn covariance(&self, other: &DeLong) -> Result<f64> {
        check_len(self.v10.len(), other.v10.len())?;
        check_len(self.v01.len(), other.v01.len())?;
        let (m, n) = (self.v10.len() as f64, self.v01.len() as f64);
        Ok(sample_cov(&self.v10, &other.v10) / m + sample_cov(&self.v01, &other.v01) / n)
    }

    /// Normal-theory CI as pROC's `ci.auc(method = "delong")`, clipped to [0, 1] as pROC does.
    pub fn ci(&self, level: f64) -> Result<AucCi> {
        let sd = self.variance()?.sqrt();
        let z = normal::quantile(1.0 - (1.0 - level) / 2.0);
        Ok(AucCi {
            auc: self.auc,
            low: (self.auc - z * sd).clamp(0.0, 1.0),
            high: (self.auc + z * sd).clamp(0.0, 1.0),
            level,
            method: CiMethod::DeLong,
        })
    }
}

/// AUC alone (the Mann–Whitney statistic with ties counted half).
pub fn auc(scores: &[f64], labels: &[bool]) -> Result<f64> {
    delong(scores, labels).map(|d| d.auc)
}

/// AUC with DeLong CI at `level` (e.g. 0.95).
pub fn auc_delong_ci(scores: &[f64], labels: &[bool], level: f64) -> Result<AucCi> {
    delong(scores, labels)?.ci(level)
}

/// DeLong's test for two correlated ROC curves (same cases, same labels).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DeLongTest {
    pub auc_a: f64,
    pub auc_b: f64,
    pub z: f64,
    pub p: f64,
}

/// pROC's `roc.test(method = "delong", paired = TRUE)`: z = (AUC_a − AUC_b) / sd of the difference.
pub fn delong_test(scores_a: &[f64], scores_b: &[f64], labels: &[bool]) -> Result<DeLongTest> {
    check_len(scores_a.len(), scores_b.len())?;
    let a = delong(scores_a, labels)?;
    let b = delong(scores_b, labels)?;
    let var = a.variance()? + b.variance()? - 2.0 * a.covariance(&b)?;
    if var <= 0.0 {
        return Err(StatsError::Degenerate(
            "the two ROC curves rank the cases identically: their difference has no variance",
        ));
    }
    let z = (a.auc - b.auc) / var.sqrt();
    Ok(DeLongTest {
        auc_a: a.auc,
        auc_b: b.auc,
        z,
        p: normal::two_sided_p(z),
    })
}

/// AUC of two sorted samples by a merge: O(m + n).
fn auc_sorted(pos: &[f64], neg: &[f64]) -> f64 {
    let (mut below, mut equal_end) = (0usize, 0usize);
    let mut sum = 0.0;
    for &x in pos {
        while below < neg.len() && neg[below] < x {
            below += 1;
        }
        equal_end = equal_end.max(below);
        while equal_end < neg.len() && neg[equal_end] == x {
            equal_end += 1;
        }
        sum += below as f64 + 0.5 * (equal_end - below) as f64;
    }
    sum / (pos.len() as f64 * neg.len() as f64)
}

fn split_classes(scores: &[f64], labels: &[bool]) -> (Vec<f64>, Vec<f64>) {
    let pos = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l)
        .map(|(s, _)| *s)
        .collect();
    let neg = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| !**l)
        .map(|(s, _)| *s)
        .collect();
    (pos, neg)
}

/// The random stream of bootstrap replicate `r`: one ChaCha stream per replicate, so the result
/// depends on the seed only, not on how rayon schedules the replicates.
pub(crate) fn replicate_rng(seed: u64, r: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(r);
    rng
}

fn resample(from: &[f64], rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut v: Vec<f64> = (0..from.len())
        .map(|_| from[rng.random_range(0..from.len())])
        .collect();
    v.sort_unstable_by(f64::total_cmp);
    v
}

/// Stratified bootstrap CI (pROC's `boot.stratified = TRUE`): each replicate resamples the
/// positives and the negatives separately; percentile interval with R's type-7 quantiles.
/// Seeded and reproducible on any number of threads (not the same random numbers as R).
pub fn auc_bootstrap_ci(
    scores: &[f64],
    labels: &[bool],
    replicates: usize,
    seed: u64,
    level: f64,
) -> Result<AucCi> {
    validated(scores, labels)?;
    if replicates < 2 {
        return Err(StatsError::TooFew {
            what: "bootstrap replicates",
            need: 2,
            got: replicates,
        });
    }
    let (pos, neg) = split_classes(scores, labels);
    let mut aucs: Vec<f64> = (0..replicates as u64)
        .into_par_iter()
        .map(|r| {
            let mut rng = replicate_rng(seed, r);
            let p = resample(&pos, &mut rng);
            let n = resample(&neg, &mut rng);
            auc_sorted(&p, &n)
        })
        .collect();
    aucs.sort_unstable_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0;
    Ok(AucCi {
        auc: auc(scores, labels)?,
        low: quantile_sorted(&aucs, alpha),
        high: quantile_sorted(&aucs, 1.0 - alpha),
        level,
        method: CiMethod::Bootstrap,
    })
}

/// One point of the ROC curve: cases scored above `threshold` are called positive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RocPoint {
    pub threshold: f64,
    pub sensitivity: f64,
    pub specificity: f64,
}

/// The empirical ROC curve at pROC's thresholds: −∞, the midpoints between adjacent distinct
/// scores, +∞ (ascending threshold, so descending sensitivity).
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Result<Vec<RocPoint>> {
    let (m, n) = validated(scores, labels)?;
    let mut points = vec![RocPoint {
        threshold: f64::NEG_INFINITY,
        sensitivity: 1.0,
        specificity: 0.0,
    }];
    let (mut pos_le, mut neg_le) = (0usize, 0usize);
    let mut prev: Option<f64> = None;
    tie_groups(scores, labels, |pos_g, neg_g, group| {
        let s = group[0].0;
        if let Some(p) = prev {
            // The threshold between the previous group and this one.
            points.push(RocPoint {
                threshold: (p + s) / 2.0,
                sensitivity: (m - pos_le) as f64 / m as f64,
                specificity: neg_le as f64 / n as f64,
            });
        }
        pos_le += pos_g;
        neg_le += neg_g;
        prev = Some(s);
    });
    points.push(RocPoint {
        threshold: f64::INFINITY,
        sensitivity: 0.0,
        specificity: 1.0,
    });
    Ok(points)
}

/// The Youden point: maximum sensitivity + specificity − 1; of tied points the first in
/// ascending threshold order (pROC's first row of `coords(…, "best")`).
pub fn youden(curve: &[RocPoint]) -> Option<RocPoint> {
    let mut best: Option<RocPoint> = None;
    for p in curve {
        let j = p.sensitivity + p.specificity;
        if best.is_none_or(|b| j > b.sensitivity + b.specificity) {
            best = Some(*p);
        }
    }
    best
}

/// Bootstrap band of the ROC curve: at each specificity in `specificities`, the percentile
/// interval of the best sensitivity reachable at that specificity or higher (stratified,
/// seeded). Returns (specificity, low, high) triples.
pub fn sensitivity_band(
    scores: &[f64],
    labels: &[bool],
    specificities: &[f64],
    replicates: usize,
    seed: u64,
    level: f64,
) -> Result<Vec<(f64, f64, f64)>> {
    validated(scores, labels)?;
    let (pos, neg) = split_classes(scores, labels);
    let per_rep: Vec<Vec<f64>> = (0..replicates as u64)
        .into_par_iter()
        .map(|r| {
            let mut rng = replicate_rng(seed, r);
            let p = resample(&pos, &mut rng);
            let n = resample(&neg, &mut rng);
            let s: Vec<f64> = p.iter().chain(&n).copied().collect();
            let l: Vec<bool> = std::iter::repeat_n(true, p.len())
                .chain(std::iter::repeat_n(false, n.len()))
                .collect();
            let curve = roc_curve(&s, &l).expect("resample keeps both classes");
            specificities
                .iter()
                .map(|&sp| {
                    curve
                        .iter()
                        .filter(|c| c.specificity >= sp - 1e-12)
                        .map(|c| c.sensitivity)
                        .fold(0.0, f64::max)
                })
                .collect()
        })
        .collect();
    let alpha = (1.0 - level) / 2.0;
    Ok(specificities
        .iter()
        .enumerate()
        .map(|(k, &sp)| {
            let mut v: Vec<f64> = per_rep.iter().map(|r| r[k]).collect();
            v.sort_unstable_by(f64::total_cmp);
            (
                sp,
                quantile_sorted(&v, alpha),
                quantile_sorted(&v, 1.0 - alpha),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute-force Mann–Whitney AUC and DeLong placements, O(m n).
    fn brute(scores: &[f64], labels: &[bool]) -> (f64, Vec<f64>, Vec<f64>) {
        let (pos, neg) = split_classes(scores, labels);
        let psi = |x: f64, y: f64| {
            if x > y {
                1.0
            } else if x == y {
                0.5
            } else {
                0.0
            }
        };
        let v10: Vec<f64> = pos
            .iter()
            .map(|&x| neg.iter().map(|&y| psi(x, y)).sum::<f64>() / neg.len() as f64)
            .collect();
        let v01: Vec<f64> = neg
            .iter()
            .map(|&y| pos.iter().map(|&x| psi(x, y)).sum::<f64>() / pos.len() as f64)
            .collect();
        (v10.iter().sum::<f64>() / pos.len() as f64, v10, v01)
    }

    fn sample() -> (Vec<f64>, Vec<bool>) {
        let scores = vec![0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.9, 0.2, 0.65, 0.1, 0.7, 0.3];
        let labels = vec![
            false, false, true, true, true, false, true, false, true, true, false, false,
        ];
        (scores, labels)
    }

    #[test]
    fn fast_delong_equals_brute_force_with_ties() {
        let (s, l) = sample();
        let d = delong(&s, &l).unwrap();
        let (a, v10, v01) = brute(&s, &l);
        assert!((d.auc - a).abs() < 1e-15);
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-15);
        assert!(close(&d.v10, &v10) && d.v10.len() == v10.len());
        assert!(close(&d.v01, &v01) && d.v01.len() == v01.len());
        let ci = d.ci(0.95).unwrap();
        assert!(ci.low < d.auc && d.auc < ci.high);
    }

    #[test]
    fn perfect_and_reversed_separation() {
        let s = [0.1, 0.2, 0.8, 0.9];
        let l = [false, false, true, true];
        assert_eq!(auc(&s, &l).unwrap(), 1.0);
        let l2 = [true, true, false, false];
        assert_eq!(auc(&s, &l2).unwrap(), 0.0);
        // Zero variance: the interval collapses onto the AUC, clipped to [0, 1].
        let ci = auc_delong_ci(&s, &l, 0.95).unwrap();
        assert_eq!((ci.low, ci.high), (1.0, 1.0));
    }

    #[test]
    fn curve_uses_midpoint_thresholds() {
        let (s, l) = sample();
        let c = roc_curve(&s, &l).unwrap();
        // 9 distinct scores → 8 midpoints plus ±∞.
        assert_eq!(c.len(), 10);
        assert!((c[1].threshold - 0.15).abs() < 1e-15);
        assert_eq!((c[0].sensitivity, c[0].specificity), (1.0, 0.0));
        assert_eq!((c[9].sensitivity, c[9].specificity), (0.0, 1.0));
        // Area under the step curve equals the Mann–Whitney AUC (trapezoids over ties).
        let area: f64 = c
            .windows(2)
            .map(|w| {
                (w[1].specificity - w[0].specificity) * (w[0].sensitivity + w[1].sensitivity) / 2.0
            })
            .sum();
        assert!((area - auc(&s, &l).unwrap()).abs() < 1e-12);
        let y = youden(&c).unwrap();
        assert!(
            c.iter()
                .all(|p| p.sensitivity + p.specificity <= y.sensitivity + y.specificity)
        );
    }

    #[test]
    fn paired_test_is_antisymmetric_and_rejects_identical_curves() {
        let (s, l) = sample();
        let s2: Vec<f64> = s
            .iter()
            .enumerate()
            .map(|(i, v)| v + 0.05 * ((i * 7 % 5) as f64))
            .collect();
        let t1 = delong_test(&s, &s2, &l).unwrap();
        let t2 = delong_test(&s2, &s, &l).unwrap();
        assert!((t1.z + t2.z).abs() < 1e-12 && (t1.p - t2.p).abs() < 1e-12);
        // A monotone transform ranks identically.
        let s3: Vec<f64> = s.iter().map(|v| v * 2.0 + 1.0).collect();
        assert!(matches!(
            delong_test(&s, &s3, &l),
            Err(StatsError::Degenerate(_))
        ));
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_auc() {
        let (s, l) = sample();
        let a = auc_bootstrap_ci(&s, &l, 500, 7, 0.95).unwrap();
        let b = auc_bootstrap_ci(&s, &l, 500, 7, 0.95).unwrap();
        let c = auc_bootstrap_ci(&s, &l, 500, 8, 0.95).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.low, c.low);
        assert!(a.low <= a.auc && a.auc <= a.high);
        let band = sensitivity_band(&s, &l, &[0.0, 0.5, 1.0], 200, 1, 0.95).unwrap();
        assert_eq!(band[0].1, 1.0);
        assert!(band.iter().all(|(_, lo, hi)| lo <= hi));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            auc(&[0.1, f64::NAN], &[true, false]),
            Err(StatsError::NonFiniteScore { index: 1, .. })
        ));
        assert!(matches!(
            auc(&[0.1, 0.2], &[true, true]),
            Err(StatsError::NoNegatives)
        ));
        assert!(matches!(
            auc(&[0.1, 0.2], &[false, false]),
            Err(StatsError::NoPositives)
        ));
        assert!(matches!(
            auc(&[0.1], &[true, false]),
            Err(StatsError::LengthMismatch { .. })
        ));
        assert!(matches!(
            auc_delong_ci(&[0.1, 0.2, 0.3], &[true, false, false], 0.95),
            Err(StatsError::TooFew { .. })
        ));
    }
}
