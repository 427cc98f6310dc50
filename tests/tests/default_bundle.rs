//! The shipped default bundle (`models/bundle`, made by `tirp train`, see its MODEL_CARD.md):
//! its files are the ones its model card hashed, its measured parity holds (tract vs burn
//! ≤ 1e-4; weight-only int8 moves the ensemble's test AUCs by ≤ 0.005), its golden pair is
//! reproduced by the engine, and on radiographs it never saw the int8 members (weight-only
//! and full int8) give the f32 members' answers.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tirp_e2e::repo_root;
use tirp_firmware::engine::{ClinicalInput, Engine, EngineOptions, Explain};
use tirp_firmware::ensemble::EnsembleSpec;
use tirp_models::cohort::{self, CohortConfig};
use tirp_models::table::LabelTable;

fn bundle() -> PathBuf {
    repo_root().join("models/bundle")
}

fn card() -> serde_json::Value {
    let bytes = std::fs::read(bundle().join("model_card.json")).expect("model_card.json");
    serde_json::from_slice(&bytes).expect("model card is JSON")
}

#[test]
fn files_are_the_ones_the_model_card_hashed() {
    let spec = EnsembleSpec::load(&bundle()).expect("ensemble.json is valid");
    let card = card();
    let files = card["files"].as_array().unwrap();
    let mut named = vec!["ensemble.json".to_owned(), spec.stacker.file.clone()];
    named.extend(spec.members.iter().map(|m| m.file.clone()));
    for name in &named {
        assert!(
            files.iter().any(|f| f["name"] == name.as_str()),
            "{name} is not in the model card"
        );
    }
    for f in files {
        let name = f["name"].as_str().unwrap();
        let bytes = std::fs::read(bundle().join(name)).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            f["sha256"].as_str().unwrap(),
            "{name} changed since the model card was written"
        );
    }
    assert_eq!(
        serde_json::from_value::<EnsembleSpec>(card["trained"]["spec"].clone()).unwrap(),
        spec
    );
}

#[test]
fn measured_parity_and_int8_effect_hold() {
    let card = card();
    for m in card["trained"]["members"].as_array().unwrap() {
        let d = m["parity_f32"].as_f64().unwrap();
        assert!(d <= 1e-4, "{}: tract vs burn {d}", m["kind"]);
    }
    for e in card["int8"].as_array().unwrap() {
        let d = e["difference"].as_f64().unwrap();
        assert!(d.abs() <= 0.005, "{}: int8 changes AUC by {d}", e["split"]);
    }
    let splits: Vec<&str> = card["int8"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["split"].as_str().unwrap())
        .collect();
    assert!(splits.contains(&"internal test") && splits.contains(&"external test"));
}

#[test]
fn golden_pair_is_reproduced() {
    let golden = tirp_firmware::bundle::check_golden(
        &std::fs::read(bundle().join("golden.png")).unwrap(),
        &std::fs::read(bundle().join("golden.json")).unwrap(),
    )
    .unwrap();
    let engine = Engine::load(&bundle(), &EngineOptions::default()).unwrap();
    let input = tirp_firmware::engine::load_input(&bundle().join("golden.png"), None).unwrap();
    let p = engine
        .predict(
            &input.image,
            None,
            ClinicalInput::default(),
            Explain::GradCam,
        )
        .unwrap();
    assert!(
        (p.probability as f64 - golden.probability).abs() <= golden.tolerance,
        "{} vs {}",
        p.probability,
        golden.probability
    );
    assert_eq!(p.pbt, golden.flag);
}

/// A copy of the bundle whose members are the f32 originals.
fn f32_bundle(dir: &Path) -> PathBuf {
    let out = dir.join("f32");
    std::fs::create_dir_all(&out).unwrap();
    let mut spec = EnsembleSpec::load(&bundle()).unwrap();
    for m in &mut spec.members {
        let f32_file = format!("{}.f32.onnx", m.name);
        std::fs::copy(bundle().join(&f32_file), out.join(&f32_file)).unwrap();
        m.file = f32_file;
        m.full_int8_file = None;
    }
    let others =
        std::iter::once(&spec.stacker.file).chain(spec.localiser.as_ref().map(|l| &l.file));
    for f in others {
        std::fs::copy(bundle().join(f), out.join(f)).unwrap();
    }
    spec.save(&out).unwrap();
    out
}

/// Weight-only int8 (the shipped files) and full int8 (the QDQ files) against the f32
/// originals on radiographs from a cohort seed the bundle never saw.
#[test]
fn int8_members_answer_like_f32_on_unseen_radiographs() {
    let dir = tempfile::tempdir().unwrap();
    // A different seed: patients the bundle never trained or was selected on.
    let cfg = CohortConfig {
        seed: 4242,
        patients: 40,
        ..Default::default()
    };
    let summary = cohort::generate(&cfg, &dir.path().join("cohort"), &|_, _| {}).unwrap();
    let table = LabelTable::load(&summary.labels).unwrap();
    let int8 = Engine::load(&bundle(), &EngineOptions::default()).unwrap();
    let f32 = Engine::load(&f32_bundle(dir.path()), &EngineOptions::default()).unwrap();
    // The full-int8 (QDQ) members, as a board whose profile says they are faster runs them.
    let full = Engine::load(
        &bundle(),
        &EngineOptions {
            full_int8: true,
            ..Default::default()
        },
    )
    .unwrap();
    let (mut a, mut b, mut c, mut y) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in &table.records {
        let image = tirp_models::radiograph::load_record(r).unwrap();
        let clinical = ClinicalInput {
            age: r.age,
            sex: r.sex,
            site: r.site,
        };
        let run = |e: &Engine| {
            e.predict(&image, r.roi, clinical, Explain::GradCam)
                .unwrap()
                .probability as f64
        };
        a.push(run(&int8));
        b.push(run(&f32));
        c.push(run(&full));
        y.push(r.label == tirp_models::cohort::clinical::Label::Pbt);
    }
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, z)| (x - z).abs())
        .fold(0.0, f64::max);
    assert!(max < 0.02, "int8 vs f32 probability differs by {max}");
    let (auc_a, auc_b) = (
        tirp_host::stats::roc::auc(&a, &y).unwrap(),
        tirp_host::stats::roc::auc(&b, &y).unwrap(),
    );
    assert!(
        (auc_a - auc_b).abs() <= 0.005,
        "AUC int8 {auc_a} vs f32 {auc_b} on {} radiographs",
        a.len()
    );
    let max_full = c
        .iter()
        .zip(&b)
        .map(|(x, z)| (x - z).abs())
        .fold(0.0, f64::max);
    assert!(
        max_full < 0.05,
        "full int8 vs f32 probability differs by {max_full}"
    );
    assert!(c != a, "full int8 ran the weight-only files");
    let auc_c = tirp_host::stats::roc::auc(&c, &y).unwrap();
    assert!(
        (auc_c - auc_b).abs() <= 0.01,
        "AUC full int8 {auc_c} vs f32 {auc_b} on {} radiographs",
        c.len()
    );
}
