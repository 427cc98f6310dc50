use super::*;
use crate::onnx::check::TractRows;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::collections::HashMap;
use std::time::Instant;

/// `n` rows of `k` columns on mixed scales (some 0/1 indicators, like the clinical
/// features) with labels drawn from a logistic model on a few of them.
fn synthetic(n: usize, k: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Vec::with_capacity(n);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let row: Vec<f32> = (0..k)
            .map(|j| match j % 3 {
                0 => rng.sample::<f32, _>(StandardNormal) * 3.0 + 10.0,
                1 => rng.random_range(0.0f32..1.0),
                _ => rng.random_bool(0.4) as u8 as f32,
            })
            .collect();
        let z = 0.8 * (row[0] - 10.0) + 3.0 * (row[1] - 0.5) - 1.5 * (row[2] - 0.4);
        y.push(rng.random_bool(1.0 / (1.0 + (-z as f64).exp())) as u8 as f32);
        x.push(row);
    }
    (x, y)
}

fn tract(model: &Tabular, x: &[Vec<f32>]) -> Vec<f32> {
    let k = model.n_features();
    let bytes = model.to_onnx().to_bytes();
    let flat: Vec<f32> = x.iter().flatten().copied().collect();
    let out = TractRows::load(&bytes, k)
        .unwrap()
        .run(&flat, x.len())
        .unwrap();
    assert_eq!(out.len(), x.len(), "probability is [N, 1]");
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn small_forest() -> TabularConfig {
    TabularConfig {
        forest: ForestConfig {
            trees: 60,
            seed: 3,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn lr_and_rf_match_tract_at_batch_1_and_7() {
    let (x, y) = synthetic(400, 13, 1);
    let (xt, _) = synthetic(7, 13, 2);
    for kind in [StackerKind::Lr, StackerKind::Rf] {
        let m = Tabular::fit(kind, &x, &y, &small_forest()).unwrap();
        for rows in [&xt[..1], &xt[..], &x[..]] {
            let rust = m.predict(rows).unwrap();
            let onnx = tract(&m, rows);
            let d = max_diff(&rust, &onnx);
            eprintln!("{kind:?}: batch {}: max |rust − tract| = {d:e}", rows.len());
            match kind {
                StackerKind::Lr => assert!(d <= 1e-6, "{kind:?} batch {}: {d}", rows.len()),
                // Same f32 leaf weights summed in the same order: bit-identical.
                StackerKind::Rf => assert_eq!(rust, onnx, "batch {}", rows.len()),
            }
        }
    }
}

#[test]
fn same_seed_gives_bitwise_identical_models() {
    let (x, y) = synthetic(300, 8, 4);
    let (xt, _) = synthetic(50, 8, 5);
    let bits = |m: &Tabular| -> Vec<u32> {
        m.predict(&xt)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    let cfg = small_forest();
    for kind in [StackerKind::Lr, StackerKind::Rf] {
        let a = Tabular::fit(kind, &x, &y, &cfg).unwrap();
        let b = Tabular::fit(kind, &x, &y, &cfg).unwrap();
        assert_eq!(bits(&a), bits(&b), "{kind:?}");
        assert_eq!(a.to_onnx().to_bytes(), b.to_onnx().to_bytes(), "{kind:?}");
    }
    let mut other = cfg.clone();
    other.forest.seed += 1;
    let a = Tabular::fit(StackerKind::Rf, &x, &y, &cfg).unwrap();
    let c = Tabular::fit(StackerKind::Rf, &x, &y, &other).unwrap();
    assert_ne!(bits(&a), bits(&c), "another seed grows another forest");
}

#[test]
fn folds_never_split_a_patient_and_are_stratified() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut groups = Vec::new();
    let mut y = Vec::new();
    for p in 0..97 {
        let label = rng.random_bool(0.3) as u8 as f32;
        for _ in 0..rng.random_range(1..=3) {
            groups.push(format!("P{p}"));
            y.push(label);
        }
    }
    for (k, seed) in [(2, 0), (5, 1), (5, 2), (10, 3)] {
        let fold = group_folds(&y, &groups, k, seed).unwrap();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (g, &f) in groups.iter().zip(&fold) {
            assert!(f < k);
            assert_eq!(
                *seen.entry(g).or_insert(f),
                f,
                "patient {g} straddles folds"
            );
        }
        for c in [0.0, 1.0] {
            let per_fold: Vec<usize> = (0..k)
                .map(|f| {
                    seen.iter()
                        .filter(|&(g, &gf)| {
                            gf == f && y[groups.iter().position(|x| x == g).unwrap()] == c
                        })
                        .count()
                })
                .collect();
            let (lo, hi) = (per_fold.iter().min(), per_fold.iter().max());
            assert!(
                hi.unwrap() - lo.unwrap() <= 1,
                "class {c}, k {k}: {per_fold:?}"
            );
        }
    }
    let a = group_folds(&y, &groups, 5, 1).unwrap();
    assert_eq!(a, group_folds(&y, &groups, 5, 1).unwrap());
    assert_ne!(a, group_folds(&y, &groups, 5, 2).unwrap());
}

#[test]
fn forest_and_logistic_separate_a_separable_problem() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut groups = Vec::new();
    for i in 0..300 {
        let row: Vec<f32> = (0..5).map(|_| rng.random_range(0.0f32..1.0)).collect();
        y.push((row[0] + row[1] > 1.0) as u8 as f32);
        x.push(row);
        groups.push(format!("P{}", i / 2));
    }
    for kind in [StackerKind::Rf, StackerKind::Lr] {
        let cv = cross_validate(kind, &x, &y, &groups, 5, 7, &small_forest()).unwrap();
        eprintln!("{kind:?}: fold AUCs {:?}", cv.fold_auc);
        assert!(cv.mean_auc > 0.95, "{kind:?}: {}", cv.mean_auc);
        assert!(cv.oof.iter().all(|p| (0.0..=1.0).contains(p)));
        assert_eq!(cv.fold, group_folds(&y, &groups, 5, 7).unwrap());
    }
}

#[test]
fn importance_is_a_distribution_led_by_the_informative_column() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut x = Vec::new();
    let mut y = Vec::new();
    for _ in 0..400 {
        let row: Vec<f32> = (0..4).map(|_| rng.sample(StandardNormal)).collect();
        y.push(rng.random_bool(if row[2] > 0.0 { 0.9 } else { 0.1 }) as u8 as f32);
        x.push(row);
    }
    for kind in [StackerKind::Lr, StackerKind::Rf] {
        let imp = Tabular::fit(kind, &x, &y, &small_forest())
            .unwrap()
            .importance();
        assert!(imp.iter().all(|&v| v >= 0.0), "{kind:?}: {imp:?}");
        assert!(
            (imp.iter().sum::<f32>() - 1.0).abs() < 1e-5,
            "{kind:?}: {imp:?}"
        );
        let top = (0..4).max_by(|&a, &b| imp[a].total_cmp(&imp[b])).unwrap();
        assert_eq!(top, 2, "{kind:?}: {imp:?}");
    }
}

#[test]
fn logistic_coefficients_are_on_the_original_scale() {
    let (x, y) = synthetic(500, 4, 13);
    let cfg = LogisticConfig::default();
    let a = Logistic::fit(&x, &y, &cfg).unwrap();
    // The fit is on standardised columns, so rescaling a column rescales its coefficient.
    let scaled: Vec<Vec<f32>> = x
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r[0] *= 10.0;
            r
        })
        .collect();
    let b = Logistic::fit(&scaled, &y, &cfg).unwrap();
    let (ca, cb) = (a.coefficients()[0], b.coefficients()[0]);
    assert!(
        (ca - 10.0 * cb).abs() < 1e-3 * ca.abs(),
        "{ca} vs 10 × {cb}"
    );
    assert!(ca > 0.3, "the label depends on column 0: {ca}");
    let p = a.predict(&x[..1]).unwrap()[0];
    let z = a.intercept()
        + x[0]
            .iter()
            .zip(a.coefficients())
            .map(|(v, c)| v * c)
            .sum::<f32>();
    assert!((p - 1.0 / (1.0 + (-z).exp())).abs() < 1e-6);
}

#[test]
fn bad_input_gives_typed_errors() {
    let ok = vec![vec![0.0f32, 1.0], vec![1.0, 0.0]];
    let y = [0.0, 1.0];
    let fit = |x: &[Vec<f32>], y: &[f32]| Tabular::fit(StackerKind::Rf, x, y, &small_forest());
    assert!(matches!(fit(&[], &[]), Err(StackError::Empty)));
    assert!(matches!(
        fit(&[vec![], vec![]], &y),
        Err(StackError::NoColumns)
    ));
    assert!(matches!(
        fit(&[vec![0.0, 1.0], vec![1.0]], &y),
        Err(StackError::Ragged {
            row: 1,
            got: 1,
            expected: 2
        })
    ));
    for bad in [f32::NAN, f32::INFINITY] {
        assert!(matches!(
            fit(&[vec![0.0, 1.0], vec![1.0, bad]], &y),
            Err(StackError::NonFinite { row: 1, col: 1, .. })
        ));
    }
    assert!(matches!(
        fit(&ok, &[1.0, 1.0]),
        Err(StackError::OneClass(1))
    ));
    assert!(matches!(
        Tabular::fit(StackerKind::Lr, &ok, &[0.0, 0.0], &small_forest()),
        Err(StackError::OneClass(0))
    ));
    assert!(matches!(
        fit(&ok, &[0.0, 2.0]),
        Err(StackError::Label { row: 1, .. })
    ));
    assert!(matches!(
        fit(&ok, &[0.0]),
        Err(StackError::Length { what: "labels", .. })
    ));
    let mut cfg = small_forest();
    cfg.forest.trees = 0;
    assert!(matches!(
        Tabular::fit(StackerKind::Rf, &ok, &y, &cfg),
        Err(StackError::Config(_))
    ));
    cfg = small_forest();
    cfg.logistic.alpha = -1.0;
    assert!(matches!(
        Tabular::fit(StackerKind::Lr, &ok, &y, &cfg),
        Err(StackError::Config(_))
    ));

    let groups = ["a", "b"];
    let cv = |k| cross_validate(StackerKind::Lr, &ok, &y, &groups, k, 0, &small_forest());
    assert!(matches!(cv(1), Err(StackError::Folds(1))));
    assert!(matches!(
        cv(2),
        Err(StackError::TooFewGroups {
            k: 2,
            class: 0,
            groups: 1
        })
    ));
    assert!(matches!(
        group_folds(&y, &["a"], 2, 0),
        Err(StackError::Length {
            what: "group ids",
            ..
        })
    ));

    let m = Tabular::fit(StackerKind::Lr, &ok, &y, &small_forest()).unwrap();
    assert!(matches!(
        m.predict(&[vec![1.0f32]]),
        Err(StackError::Ragged { expected: 2, .. })
    ));
    let e = fit(&[vec![0.0, 1.0], vec![1.0, f32::NAN]], &y)
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 1, column 1"), "{e}");
}

/// The clinical-only model on the DeepTIRP study's public table (age and sex; the table
/// has no lesion site, so every row has `site_missing`). Prints the patient-grouped
/// 5-fold CV AUCs, timings and tract parity on all rows.
#[test]
fn clinical_models_on_the_public_study_table() {
    use crate::features::clinical;
    use crate::table::LabelTable;
    use crate::train::data::target;
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/deeptirp/train.csv");
    if !path.exists() && std::env::var_os("CI").is_none() {
        eprintln!("skipping: {} not present", path.display());
        return;
    }
    let t = LabelTable::load(&path).unwrap();
    let x: Vec<[f32; 10]> = t
        .records
        .iter()
        .map(|r| clinical(r.age, r.sex, r.site))
        .collect();
    let y: Vec<f32> = t.records.iter().map(|r| target(r.label)).collect();
    let groups: Vec<&str> = t.records.iter().map(|r| r.patient_id.as_str()).collect();
    let cfg = TabularConfig::default();
    for kind in [StackerKind::Lr, StackerKind::Rf] {
        let start = Instant::now();
        let cv = cross_validate(kind, &x, &y, &groups, 5, 7, &cfg).unwrap();
        let cv_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let m = Tabular::fit(kind, &x, &y, &cfg).unwrap();
        let fit_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let p = m.predict(&x).unwrap();
        let predict_s = start.elapsed().as_secs_f64();
        let bytes = m.to_onnx().to_bytes();
        let start = Instant::now();
        let plan = TractRows::load(&bytes, 10).unwrap();
        let load_s = start.elapsed().as_secs_f64();
        let flat: Vec<f32> = x.iter().flatten().copied().collect();
        let start = Instant::now();
        let onnx = plan.run(&flat, x.len()).unwrap();
        let tract_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for row in flat.chunks(10).take(50) {
            plan.run(row, 1).unwrap();
        }
        let row_ms = start.elapsed().as_secs_f64() * 1e3 / 50.0;
        eprintln!(
            "{kind:?} on {} rows / {} patients: 5-fold grouped CV AUC mean {:.4} (folds {:?}), pooled {:.4}; \
             cv {cv_s:.2} s, fit {fit_s:.3} s, predict all {predict_s:.4} s; tract: {} bytes, load {load_s:.3} s, \
             all rows {tract_s:.3} s, one row {row_ms:.3} ms; max |rust − tract| {:e}, importance {:?}",
            x.len(),
            t.records
                .iter()
                .map(|r| &r.patient_id)
                .collect::<std::collections::HashSet<_>>()
                .len(),
            cv.mean_auc,
            cv.fold_auc
                .iter()
                .map(|a| (a * 1e4).round() / 1e4)
                .collect::<Vec<_>>(),
            cv.pooled_auc,
            bytes.len(),
            max_diff(&p, &onnx),
            m.importance(),
        );
        // Age alone separates tumours (median 22 years) from infections (49.5) well.
        assert!(cv.mean_auc > 0.7, "{kind:?}: {}", cv.mean_auc);
        assert!(max_diff(&p, &onnx) <= 1e-6);
    }
}
