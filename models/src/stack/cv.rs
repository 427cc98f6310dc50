//! Patient-grouped, class-stratified k-fold cross-validation: all rows (radiographs) of
//! one patient fall in the same fold, so no patient is both trained on and scored.

use super::{StackError, StackerKind, Tabular, TabularConfig, check_labels, rows_matrix};
use crate::train::auc;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// Out-of-fold results of [`cross_validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct CvResult {
    /// AUC on each fold's held-out rows.
    pub fold_auc: Vec<f64>,
    pub mean_auc: f64,
    /// AUC of the pooled out-of-fold predictions.
    pub pooled_auc: f64,
    /// Each row's prediction from the model that did not see its patient.
    pub oof: Vec<f32>,
    /// Each row's fold.
    pub fold: Vec<usize>,
}

/// Assigns each row a fold in `0..k`, whole groups at a time. Groups are shuffled with
/// `seed`, ordered by class (a group's class is its rows' majority label) and dealt
/// round-robin, so every fold gets about the same number of groups of each class.
pub fn group_folds<G: AsRef<str>>(
    y: &[f32],
    groups: &[G],
    k: usize,
    seed: u64,
) -> Result<Vec<usize>, StackError> {
    if k < 2 {
        return Err(StackError::Folds(k));
    }
    if y.is_empty() {
        return Err(StackError::Empty);
    }
    if groups.len() != y.len() {
        return Err(StackError::Length {
            what: "group ids",
            got: groups.len(),
            rows: y.len(),
        });
    }
    check_labels(y, y.len())?;
    // Groups in order of first appearance with (rows, label-1 rows).
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut counts: Vec<(usize, usize)> = Vec::new();
    let row_group: Vec<usize> = groups
        .iter()
        .zip(y)
        .map(|(g, &v)| {
            let next = index.len();
            let i = *index.entry(g.as_ref()).or_insert(next);
            if i == counts.len() {
                counts.push((0, 0));
            }
            counts[i].0 += 1;
            counts[i].1 += (v == 1.0) as usize;
            i
        })
        .collect();
    let class = |g: usize| (2 * counts[g].1 >= counts[g].0) as u8;
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    // Stable: shuffled within each class.
    order.sort_by_key(|&g| class(g));
    for c in [0u8, 1] {
        let groups = order.iter().filter(|&&g| class(g) == c).count();
        if groups < k {
            return Err(StackError::TooFewGroups {
                k,
                class: c,
                groups,
            });
        }
    }
    let mut group_fold = vec![0; counts.len()];
    for (i, &g) in order.iter().enumerate() {
        group_fold[g] = i % k;
    }
    Ok(row_group.iter().map(|&g| group_fold[g]).collect())
}

/// Fits on k−1 folds and predicts the held-out fold, k times (folds from [`group_folds`]).
pub fn cross_validate<R: AsRef<[f32]>, G: AsRef<str>>(
    kind: StackerKind,
    x: &[R],
    y: &[f32],
    groups: &[G],
    k: usize,
    seed: u64,
    cfg: &TabularConfig,
) -> Result<CvResult, StackError> {
    rows_matrix(x, None)?;
    if y.len() != x.len() {
        return Err(StackError::Length {
            what: "labels",
            got: y.len(),
            rows: x.len(),
        });
    }
    let fold = group_folds(y, groups, k, seed)?;
    let mut oof = vec![f32::NAN; x.len()];
    let mut fold_auc = Vec::with_capacity(k);
    for f in 0..k {
        let (test, train): (Vec<usize>, Vec<usize>) = (0..x.len()).partition(|&i| fold[i] == f);
        let pick = |idx: &[usize]| -> (Vec<&[f32]>, Vec<f32>) {
            idx.iter().map(|&i| (x[i].as_ref(), y[i])).unzip()
        };
        let (xtr, ytr) = pick(&train);
        let (xte, yte) = pick(&test);
        let model = Tabular::fit(kind, &xtr, &ytr, cfg)?;
        let p = model.predict(&xte)?;
        fold_auc.push(auc(&p, &yte));
        for (&i, &v) in test.iter().zip(&p) {
            oof[i] = v;
        }
    }
    Ok(CvResult {
        mean_auc: fold_auc.iter().sum::<f64>() / k as f64,
        pooled_auc: auc(&oof, y),
        fold_auc,
        oof,
        fold,
    })
}
