//! `tirp train` end to end on a tiny cohort at a tiny input size: the bundle directory is
//! complete and valid, the model card carries the study's table, and the same seed gives
//! the same bundle (bit for bit) and metrics.

use std::path::Path;
use std::process::Command;
use tirp_e2e::{bin, repo_root};
use tirp_firmware::ensemble::EnsembleSpec;

fn tirp(args: &[&str]) -> std::process::Output {
    let out = Command::new(bin("tirp"))
        .args(args)
        .output()
        .expect("run tirp");
    assert!(
        out.status.success(),
        "tirp {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `tirp predict` on the bundle's golden input gives the recorded golden answer (probability
/// within its tolerance, same flag); returns the prediction.
fn golden_is_reproduced(bundle: &Path) -> serde_json::Value {
    let golden = tirp_firmware::bundle::check_golden(
        &std::fs::read(bundle.join("golden.png")).unwrap(),
        &std::fs::read(bundle.join("golden.json")).unwrap(),
    )
    .expect("golden pair is valid");
    let o = tirp(&[
        "--json",
        "predict",
        bundle.join("golden.png").to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
    ]);
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let prob = p["probability"].as_f64().unwrap();
    assert!(
        (prob - golden.probability).abs() <= golden.tolerance,
        "{prob} vs {golden:?}"
    );
    assert_eq!(p["pbt"].as_bool().unwrap(), golden.flag);
    p
}

/// `tirp --json train` at 32×32 with the given members (plus `extra` arguments).
fn train(labels: &Path, out: &Path, members: &str, extra: &[&str]) -> serde_json::Value {
    let study = repo_root().join("../shared/deeptirp/train.csv");
    let mut args = vec![
        "--json",
        "train",
        "--labels",
        labels.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--size",
        "32",
        "--members",
        members,
    ];
    if study.exists() {
        args.extend(["--study-table", study.to_str().unwrap()]);
    }
    args.extend(extra);
    let o = tirp(&args);
    serde_json::from_slice(&o.stdout).expect("train --json prints JSON")
}

#[test]
fn train_writes_a_complete_reproducible_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let cohort = dir.path().join("cohort");
    tirp(&[
        "cohort",
        "generate",
        "--out",
        cohort.to_str().unwrap(),
        "--patients",
        "90",
    ]);
    let labels = cohort.join("labels.csv");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let ja = train(&labels, &a, "resnet=2,effnet=1,vit=2", &[]);
    let jb = train(&labels, &b, "resnet=2,effnet=1,vit=2", &[]);

    let spec = EnsembleSpec::load(&a).expect("ensemble.json is valid");
    assert_eq!(spec.members.len(), 3);
    assert_eq!(spec.preprocess.input_size, 32);
    for m in &spec.members {
        assert!(a.join(&m.file).is_file(), "{} missing", m.file);
        assert!(a.join(format!("{}.f32.onnx", m.name)).is_file());
        // The full-int8 variant, for boards where it is faster.
        assert_eq!(m.full_int8_file, Some(format!("{}.qdq.onnx", m.name)));
        assert!(a.join(m.full_int8_file.as_ref().unwrap()).is_file());
    }
    let q = &ja["full_int8"];
    assert_eq!(q["members"].as_array().unwrap().len(), 3, "{q}");
    for split in ["validation", "internal test", "external"] {
        let e = &q["ensemble"][split];
        assert!(e["auc_delta"].as_f64().unwrap().abs() < 0.1, "{split}: {e}");
        assert!(
            e["max_probability_diff"].as_f64().unwrap() < 0.2,
            "{split}: {e}"
        );
        // The engine with `full_int8` really ran the QDQ files (quantisation moves p a bit).
        assert!(
            e["max_probability_diff"].as_f64().unwrap() > 0.0,
            "{split}: {e}"
        );
    }
    assert!(a.join(&spec.stacker.file).is_file());

    // Same seed, same table: the same files, byte for byte, and the same metrics.
    for name in [
        "ensemble.json",
        "resnet.onnx",
        "effnet.onnx",
        "vit.onnx",
        "resnet.qdq.onnx",
        "effnet.qdq.onnx",
        "vit.qdq.onnx",
        "stacker.onnx",
    ] {
        let (x, y) = (
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
        );
        assert!(x == y, "{name} differs between two runs with the same seed");
    }
    assert_eq!(ja["table"], jb["table"]);

    // The study's table: every member, the clinical model and the ensemble on each split.
    let table = ja["table"].as_array().unwrap();
    for split in ["validation", "internal test", "external test"] {
        let models: Vec<&str> = table
            .iter()
            .filter(|r| r["split"] == split)
            .map(|r| r["model"].as_str().unwrap())
            .collect();
        assert_eq!(models.len(), 5, "{split}: {models:?}");
        assert!(models.contains(&"ensemble"));
        assert!(models.iter().any(|m| m.starts_with("clinical")));
    }
    for r in table {
        let auc = r["auc"]["auc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auc));
        let c = &r["confusion"];
        let total: u64 = ["tp", "fp", "tn", "fn"]
            .iter()
            .map(|k| c[k].as_u64().unwrap())
            .sum();
        assert_eq!(total, r["n"].as_u64().unwrap());
    }
    let card = std::fs::read_to_string(a.join("MODEL_CARD.md")).unwrap();
    for needle in [
        "not for diagnostic use",
        "Fleiss",
        "DeLong",
        "int8",
        "SHA-256",
        "stacker.onnx",
        "## Full-int8 (QDQ) members",
        "vit.qdq.onnx",
    ] {
        assert!(card.contains(needle), "model card lacks `{needle}`");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("model_card.json")).unwrap()).unwrap();
    let carded: EnsembleSpec = serde_json::from_value(json["trained"]["spec"].clone()).unwrap();
    assert_eq!(carded, spec);
    assert!(json["files"].as_array().unwrap().len() >= 8);

    // The golden pair for the health check: `tirp predict` on the golden input gives the
    // recorded answer.
    golden_is_reproduced(&a);

    // A non-empty output directory is not overwritten by accident.
    let o = Command::new(bin("tirp"))
        .args(["train", "--labels", labels.to_str().unwrap(), "--out"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));

    train_localiser_completes_the_bundle(&labels, &a);
}

/// `tirp train-localiser` into the trained bundle: the localiser file and spec entry (zoom
/// pass on), the report with the task effect and latency, the model card's localiser section
/// and file hashes, and a golden pair the localiser path reproduces; `--card-only` redoes the
/// card steps without training, re-scoring the localiser as training did (or, with
/// `--zoom-flips false`, with the single zoom pass), and leaves one localiser section.
fn train_localiser_completes_the_bundle(labels: &Path, a: &Path) {
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "--json",
            "train-localiser",
            "--labels",
            labels.to_str().unwrap(),
            "--bundle",
            a.to_str().unwrap(),
        ];
        args.extend(extra);
        serde_json::from_slice(&tirp(&args).stdout).expect("train-localiser --json prints JSON")
    };
    let r = run(&["--epochs", "1", "--size", "32", "--batch", "8"]);
    let spec = EnsembleSpec::load(a).unwrap();
    let l = spec.localiser.as_ref().expect("the spec has the localiser");
    assert_eq!((l.input_size, l.zoom, l.zoom_flips), (32, Some(4.0), true));
    assert_eq!(r["zoom_flips"], true);
    assert!(a.join(&l.file).is_file());
    for split in ["internal test", "external"] {
        let e = &r["task_effect"][split];
        let n = e["n_studies"].as_u64().unwrap();
        assert!(n > 0 && e["n_review"].as_u64().unwrap() <= n, "{e}");
        assert!(e["iou_with_recorded"]["n"].as_u64().unwrap() == n);
        for k in [
            "ensemble_auc_automatic_boxes",
            "ensemble_auc_recorded_boxes",
            "ensemble_auc_whole_image",
        ] {
            assert!(e[k].is_object(), "{k}: {e}");
        }
    }
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(r["internal_test"]["first_pass_recall_iou50"].is_number());
    let md = std::fs::read_to_string(a.join("MODEL_CARD.md")).unwrap();
    let card_json = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(a.join("model_card.json")).unwrap()).unwrap()
    };
    let check_card = |md: &str, r: &serde_json::Value| {
        assert_eq!(md.matches("## Lesion localiser").count(), 1, "{md}");
        assert_eq!(md.matches("## Files").count(), 1, "{md}");
        assert!(md.find("## Lesion localiser") < md.find("## Files"));
        assert!(md.contains("Effect on the task") && md.contains("localiser.onnx"));
        let card = card_json();
        let carded: EnsembleSpec = serde_json::from_value(card["trained"]["spec"].clone()).unwrap();
        assert_eq!(carded, EnsembleSpec::load(a).unwrap());
        let files = card["files"].as_array().unwrap();
        assert!(files.iter().any(|f| f["name"] == "localiser.onnx"));
        for f in files {
            let name = f["name"].as_str().unwrap();
            let bytes = std::fs::read(a.join(name)).unwrap();
            use sha2::Digest;
            assert_eq!(
                hex::encode(sha2::Sha256::digest(&bytes)),
                f["sha256"].as_str().unwrap(),
                "{name} changed since the card was written"
            );
        }
        assert_eq!(card["localiser"]["task_effect"], r["task_effect"]);
    };
    check_card(&md, &r);
    assert!(md.contains("three mirror images"), "{md}");
    // The golden answer is the localiser path's: `tirp predict` with no ROI reproduces it.
    assert_eq!(golden_is_reproduced(a)["roi_source"], "localiser");

    // --card-only: no training (the ONNX file is untouched), one section still.
    let onnx = std::fs::read(a.join("localiser.onnx")).unwrap();
    let again = run(&["--card-only"]);
    assert_eq!(std::fs::read(a.join("localiser.onnx")).unwrap(), onnx);
    for k in [
        "task_effect",
        "validation",
        "internal_test",
        "external",
        "min_confidence",
        "history",
    ] {
        assert_eq!(again[k], r[k], "{k}");
    }
    check_card(
        &std::fs::read_to_string(a.join("MODEL_CARD.md")).unwrap(),
        &again,
    );
    // Re-scored with the single zoom pass: the spec follows, training's record stays.
    let single = run(&["--card-only", "--zoom-flips", "false"]);
    assert_eq!(single["zoom_flips"], false);
    assert_eq!(single["config"]["zoom_flips"], false);
    assert!(!EnsembleSpec::load(a).unwrap().localiser.unwrap().zoom_flips);
    assert_eq!(single["history"], r["history"]);
    assert_eq!(
        single["validation"]["first_pass_mean_iou"],
        r["validation"]["first_pass_mean_iou"]
    );
    let md = std::fs::read_to_string(a.join("MODEL_CARD.md")).unwrap();
    check_card(&md, &single);
    assert!(!md.contains("three mirror images"), "{md}");

    // `tirp quantize` again on the localised bundle: its section is replaced in place, the
    // localiser's stays, the hashes are fresh.
    let q = tirp(&[
        "--json",
        "quantize",
        "--labels",
        labels.to_str().unwrap(),
        "--bundle",
        a.to_str().unwrap(),
    ]);
    let q: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap();
    assert!(q["calibration_images"].as_u64().unwrap() > 0);
    let md = std::fs::read_to_string(a.join("MODEL_CARD.md")).unwrap();
    assert_eq!(md.matches("## Full-int8 (QDQ) members").count(), 1, "{md}");
    check_card(&md, &single);
    assert_eq!(card_json()["full_int8"], q);

    // Retraining the members in place (`--force`) keeps the localiser: its spec entry, file
    // and report stay, the golden answer is the localiser path's with the new members, and
    // `--card-only` puts its section back into the new card.
    let kept = EnsembleSpec::load(a).unwrap().localiser.unwrap();
    let report = std::fs::read(a.join("localiser.json")).unwrap();
    let t = train(labels, a, "resnet=1,effnet=1,vit=1", &["--force"]);
    assert_eq!(t["localiser_kept"], true);
    assert_eq!(EnsembleSpec::load(a).unwrap().localiser.unwrap(), kept);
    assert_eq!(std::fs::read(a.join("localiser.onnx")).unwrap(), onnx);
    assert_eq!(std::fs::read(a.join("localiser.json")).unwrap(), report);
    assert_eq!(golden_is_reproduced(a)["roi_source"], "localiser");
    let rescored = run(&["--card-only", "--zoom-flips", "false"]);
    check_card(
        &std::fs::read_to_string(a.join("MODEL_CARD.md")).unwrap(),
        &rescored,
    );
}

#[test]
fn train_rejects_bad_member_lists_and_tables() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(bin("tirp"))
        .args(["train", "--labels", "/nonexistent/labels.csv", "--out"])
        .arg(dir.path().join("o"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/labels.csv"));
    let o = Command::new(bin("tirp"))
        .args([
            "train",
            "--labels",
            "x.csv",
            "--members",
            "resnet=2,alexnet=1",
            "--out",
        ])
        .arg(dir.path().join("o"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown member `alexnet`"));
}
