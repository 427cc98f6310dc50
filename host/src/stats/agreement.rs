//! Agreement: Fleiss' κ for many raters (κ as statsmodels' `fleiss_kappa`; its standard error
//! under H0: κ = 0 by Fleiss, Nee & Landis (1979), as R's `irr::kappam.fleiss` reports it),
//! Cohen's κ for two raters with statsmodels' `cohens_kappa` standard errors, and McNemar's exact
//! test for paired correctness (statsmodels' `mcnemar(exact = True)`).

use super::{Result, StatsError, check_len, normal};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FleissKappa {
    pub kappa: f64,
    /// Standard error under κ = 0 (Fleiss, Nee & Landis 1979).
    pub se: f64,
    pub z: f64,
    pub p: f64,
    pub n_cases: usize,
    pub n_raters: u64,
}

/// Fleiss' κ from a cases × categories table of counts; every case must carry the same number of
/// ratings (at least two).
pub fn fleiss_kappa(table: &[Vec<u64>]) -> Result<FleissKappa> {
    let n_cases = table.len();
    if n_cases == 0 {
        return Err(StatsError::Empty);
    }
    let k = table[0].len();
    let n: u64 = table[0].iter().sum();
    for (case, row) in table.iter().enumerate() {
        check_len(row.len(), k)?;
        let got: u64 = row.iter().sum();
        if got != n {
            return Err(StatsError::UnequalRaterCounts {
                case,
                got: got as usize,
                expected: n as usize,
            });
        }
    }
    if n < 2 {
        return Err(StatsError::TooFew {
            what: "ratings per case",
            need: 2,
            got: n as usize,
        });
    }
    let (nf, total) = (n as f64, (n_cases as u64 * n) as f64);
    let p_cat: Vec<f64> = (0..k)
        .map(|j| table.iter().map(|r| r[j]).sum::<u64>() as f64 / total)
        .collect();
    let p_mean = table
        .iter()
        .map(|r| (r.iter().map(|&c| (c * c) as f64).sum::<f64>() - nf) / (nf * (nf - 1.0)))
        .sum::<f64>()
        / n_cases as f64;
    let p_exp: f64 = p_cat.iter().map(|p| p * p).sum();
    if p_exp >= 1.0 {
        return Err(StatsError::Degenerate(
            "every rating is in one category: chance agreement is 1 and κ is undefined",
        ));
    }
    let kappa = (p_mean - p_exp) / (1.0 - p_exp);
    let pq: f64 = p_cat.iter().map(|p| p * (1.0 - p)).sum();
    let pq_term: f64 = p_cat.iter().map(|p| p * (1.0 - p) * (1.0 - 2.0 * p)).sum();
    let var = 2.0 / (pq * pq * (n_cases as f64 * nf * (nf - 1.0))) * (pq * pq - pq_term);
    let se = var.sqrt();
    let z = kappa / se;
    Ok(FleissKappa {
        kappa,
        se,
        z,
        p: normal::two_sided_p(z),
        n_cases,
        n_raters: n,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CohenKappa {
    pub kappa: f64,
    /// Asymptotic standard error (Fleiss, Cohen & Everitt 1969), statsmodels' `std_kappa`.
    pub se: f64,
    /// Standard error under κ = 0, statsmodels' `std_kappa0`.
    pub se0: f64,
    pub n: u64,
}

/// Cohen's κ from a square table: rows rater A's category, columns rater B's.
pub fn cohen_kappa(table: &[Vec<u64>]) -> Result<CohenKappa> {
    let k = table.len();
    for row in table {
        check_len(row.len(), k)?;
    }
    let n: u64 = table.iter().flatten().sum();
    if n == 0 {
        return Err(StatsError::Empty);
    }
    let nf = n as f64;
    let p = |i: usize, j: usize| table[i][j] as f64 / nf;
    let row: Vec<f64> = (0..k).map(|i| (0..k).map(|j| p(i, j)).sum()).collect();
    let col: Vec<f64> = (0..k).map(|j| (0..k).map(|i| p(i, j)).sum()).collect();
    let po: f64 = (0..k).map(|i| p(i, i)).sum();
    let pe: f64 = (0..k).map(|i| row[i] * col[i]).sum();
    if pe >= 1.0 {
        return Err(StatsError::Degenerate(
            "both raters use one and the same category only: κ is undefined",
        ));
    }
    let kappa = (po - pe) / (1.0 - pe);
    let term_a: f64 = (0..k)
        .map(|i| p(i, i) * (1.0 - (row[i] + col[i]) * (1.0 - kappa)).powi(2))
        .sum();
    let off_diagonal: f64 = (0..k)
        .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
        .map(|(i, j)| p(i, j) * (col[i] + row[j]).powi(2))
        .sum();
    let term_b = (1.0 - kappa).powi(2) * off_diagonal;
    let term_c = (kappa - pe * (1.0 - kappa)).powi(2);
    let var = (term_a + term_b - term_c) / (1.0 - pe).powi(2) / nf;
    let t0: f64 = (0..k).map(|i| col[i] * row[i] * (col[i] + row[i])).sum();
    let var0 = (pe + pe * pe - t0) / ((1.0 - pe).powi(2) * nf);
    Ok(CohenKappa {
        kappa,
        se: var.sqrt(),
        se0: var0.sqrt(),
        n,
    })
}

/// Cohen's κ of two raters' calls on the same cases (categories as indices below `k`).
pub fn cohen_kappa_calls(a: &[usize], b: &[usize], k: usize) -> Result<CohenKappa> {
    check_len(a.len(), b.len())?;
    let mut table = vec![vec![0u64; k]; k];
    for (&x, &y) in a.iter().zip(b) {
        if x >= k || y >= k {
            return Err(StatsError::Degenerate("category index out of range"));
        }
        table[x][y] += 1;
    }
    cohen_kappa(&table)
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct McNemar {
    /// Cases only A got right.
    pub only_a: u64,
    /// Cases only B got right.
    pub only_b: u64,
    /// min(only_a, only_b), statsmodels' exact statistic.
    pub statistic: u64,
    pub p: f64,
}

/// McNemar's exact (binomial) test on the discordant pairs.
pub fn mcnemar_exact(only_a: u64, only_b: u64) -> McNemar {
    let statistic = only_a.min(only_b);
    let p = (2.0 * normal::binom_half_cdf(statistic, only_a + only_b)).min(1.0);
    McNemar {
        only_a,
        only_b,
        statistic,
        p,
    }
}

/// McNemar's exact test of paired correctness (true = that rater called the case right).
pub fn mcnemar_paired(correct_a: &[bool], correct_b: &[bool]) -> Result<McNemar> {
    check_len(correct_a.len(), correct_b.len())?;
    let only_a = correct_a
        .iter()
        .zip(correct_b)
        .filter(|(a, b)| **a && !**b)
        .count() as u64;
    let only_b = correct_a
        .iter()
        .zip(correct_b)
        .filter(|(a, b)| !**a && **b)
        .count() as u64;
    Ok(mcnemar_exact(only_a, only_b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fleiss (1971) data as on Wikipedia's "Fleiss' kappa" page: 10 cases, 14 raters, κ = 0.210.
    fn wikipedia_table() -> Vec<Vec<u64>> {
        vec![
            vec![0, 0, 0, 0, 14],
            vec![0, 2, 6, 4, 2],
            vec![0, 0, 3, 5, 6],
            vec![0, 3, 9, 2, 0],
            vec![2, 2, 8, 1, 1],
            vec![7, 7, 0, 0, 0],
            vec![3, 2, 6, 3, 0],
            vec![2, 5, 3, 2, 2],
            vec![6, 5, 2, 1, 0],
            vec![0, 2, 2, 3, 7],
        ]
    }

    #[test]
    fn fleiss_wikipedia_example() {
        let f = fleiss_kappa(&wikipedia_table()).unwrap();
        assert!((f.kappa - 0.209_930_704).abs() < 1e-8, "{}", f.kappa);
        assert_eq!((f.n_cases, f.n_raters), (10, 14));
        assert!(f.se > 0.0 && f.p < 0.05);
    }

    #[test]
    fn fleiss_rejects_unequal_counts() {
        let mut t = wikipedia_table();
        t[3][0] += 1;
        assert!(matches!(
            fleiss_kappa(&t),
            Err(StatsError::UnequalRaterCounts {
                case: 3,
                got: 15,
                expected: 14
            })
        ));
        assert!(matches!(
            fleiss_kappa(&[vec![3, 0], vec![3, 0]]),
            Err(StatsError::Degenerate(_))
        ));
    }

    #[test]
    fn cohen_perfect_and_chance() {
        let perfect = cohen_kappa(&[vec![5, 0], vec![0, 5]]).unwrap();
        assert!((perfect.kappa - 1.0).abs() < 1e-15);
        let chance = cohen_kappa(&[vec![5, 5], vec![5, 5]]).unwrap();
        assert!(chance.kappa.abs() < 1e-15);
        let c = cohen_kappa_calls(&[0, 1, 1, 0, 1], &[0, 1, 0, 0, 1], 2).unwrap();
        assert_eq!(c.n, 5);
    }

    #[test]
    fn mcnemar_small_counts() {
        // 2 · P(X ≤ 1 | n = 6, ½) = 2 · 7/64
        let m = mcnemar_exact(1, 5);
        assert!((m.p - 14.0 / 64.0).abs() < 1e-14);
        assert_eq!(mcnemar_exact(0, 0).p, 1.0);
        let p = mcnemar_paired(&[true, true, false], &[false, true, true]).unwrap();
        assert_eq!((p.only_a, p.only_b), (1, 1));
    }
}
