//! `tirp audit …` end to end: JSON shapes, reference values through the CLI, bad inputs with
//! errors that name the line and column, the report, and the SQLite store.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tirp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tirp"))
        .args(args)
        .output()
        .expect("tirp runs")
}

fn ok_json(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let o = tirp(&all);
    assert!(
        o.status.success(),
        "tirp {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

/// Runs a command that must fail cleanly (exit 1, no panic) and returns its stderr.
fn fails(args: &[&str]) -> String {
    let o = tirp(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(
        o.status.code(),
        Some(1),
        "tirp {args:?} should fail cleanly: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn reference(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

#[test]
fn roc_json_has_the_issue_shape_and_matches_proc() {
    let csv = fixture("roc_paired.csv");
    let v = ok_json(&[
        "audit",
        "roc",
        "--csv",
        csv.to_str().unwrap(),
        "--label",
        "label",
        "--positive",
        "infection",
        "--score",
        "model_a",
        "--score",
        "model_b",
    ]);
    let r = reference("reference_proc.json");
    let scores = v["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 2);
    for (s, name) in scores.iter().zip(["model_a", "model_b"]) {
        let want = &r["roc_paired"][name];
        assert_eq!(s["name"], name);
        assert_eq!(s["ci_method"], "delong");
        assert_eq!(
            (s["n_pos"].as_u64(), s["n_neg"].as_u64()),
            (Some(90), Some(150))
        );
        for (k, w) in [("auc", "auc"), ("ci_low", "ci_low"), ("ci_high", "ci_high")] {
            assert!(
                (s[k].as_f64().unwrap() - want[w].as_f64().unwrap()).abs() < 1e-6,
                "{name} {k}"
            );
        }
        for k in ["threshold", "sensitivity", "specificity"] {
            assert!(
                (s["youden"][k].as_f64().unwrap() - want["youden"][0][k].as_f64().unwrap()).abs()
                    < 1e-6
            );
        }
    }
    let c = &v["comparison"];
    assert_eq!(
        (c["a"].as_str(), c["b"].as_str()),
        (Some("model_a"), Some("model_b"))
    );
    assert!(
        (c["z"].as_f64().unwrap() - r["roc_paired"]["delong_test"]["z"].as_f64().unwrap()).abs()
            < 1e-6
    );
    assert!(
        (c["p"].as_f64().unwrap() - r["roc_paired"]["delong_test"]["p"].as_f64().unwrap()).abs()
            < 1e-6
    );

    // One score column: no comparison. Bootstrap: seeded, reproducible, labelled.
    let args = [
        "audit",
        "roc",
        "--csv",
        csv.to_str().unwrap(),
        "--label",
        "label",
        "--positive",
        "infection",
        "--score",
        "model_a",
        "--bootstrap",
        "500",
        "--seed",
        "3",
    ];
    let b1 = ok_json(&args);
    assert!(b1.get("comparison").is_none());
    assert_eq!(b1["scores"][0]["ci_method"], "bootstrap");
    assert_eq!(b1, ok_json(&args));
}

#[test]
fn kappa_json_matches_statsmodels() {
    let csv = fixture("kappa_long.csv");
    let v = ok_json(&[
        "audit",
        "kappa",
        "--csv",
        csv.to_str().unwrap(),
        "--case",
        "case",
        "--rater",
        "rater",
        "--call",
        "call",
    ]);
    let r = &reference("reference_python.json")["kappa_long"];
    assert!(
        (v["fleiss_kappa"].as_f64().unwrap() - r["fleiss_kappa"].as_f64().unwrap()).abs() < 1e-6
    );
    assert!((v["se"].as_f64().unwrap() - r["se_fnl1979_numpy"].as_f64().unwrap()).abs() < 1e-6);
    assert_eq!(v["n_cases"], 40);
    assert_eq!(v["n_raters"], 5);
    assert_eq!(
        v["categories"],
        serde_json::json!(["indeterminate", "infection", "tumour"])
    );
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let roc = |file: &str| {
        fails(&[
            "audit",
            "roc",
            "--csv",
            file,
            "--label",
            "label",
            "--positive",
            "infection",
            "--score",
            "score",
        ])
    };
    // (file content, what the error must say)
    let cases: [(&str, &[&str]); 9] = [
        (
            "label,other\ninfection,0.9\ntumour,0.1\n",
            &["no column 'score'", "label, other"],
        ),
        (
            "label,score\ninfection,0.9\ntumour,0.2\ninfection,0.7\nosteoma,0.5\n",
            &["line 5", "'label'", "'osteoma'"],
        ),
        (
            "label,score\ninfection,0.9\ntumour,NaN\n",
            &["line 3", "'score'", "not a finite number"],
        ),
        (
            "label,score\ninfection,0.9\ntumour,high\n",
            &["line 3", "'high' is not a number"],
        ),
        (
            "label,score\ninfection,0.9\ntumour,\n",
            &["line 3", "empty value"],
        ),
        (
            "label,score\ninfection,0.9\ninfection,0.2\n",
            &["no case of the negative class"],
        ),
        (
            "label,score\ntumour,0.9\ntumour,0.2\n",
            &["no case of the positive class 'infection'"],
        ),
        ("label,score\ninfection,0.9\ntumour,0.2\n", &["at least 2"]),
        (
            "label,score\ninfection,0.9\ntumour,0.2,0.3\n",
            &["line: 3", "3 fields"],
        ),
    ];
    for (i, (text, needles)) in cases.iter().enumerate() {
        let e = roc(&write(d, &format!("bad{i}.csv"), text));
        assert!(needles.iter().all(|n| e.contains(n)), "case {i}: {e}");
    }
    let e = roc(&d.join("missing.csv").display().to_string());
    assert!(e.contains("missing.csv"), "{e}");

    let kappa = |file: &str| fails(&["audit", "kappa", "--csv", file]);
    let e = kappa(&write(
        d,
        "unequal.csv",
        "case,rater,call\nc1,r1,a\nc1,r2,b\nc2,r1,a\nc2,r2,a\nc3,r1,b\n",
    ));
    assert!(
        e.contains("line 6") && e.contains("'case'") && e.contains("case 'c3' has 1 calls"),
        "{e}"
    );
    let e = kappa(&write(
        d,
        "twice.csv",
        "case,rater,call\nc1,r1,a\nc1,r1,b\n",
    ));
    assert!(
        e.contains("line 3") && e.contains("'rater'") && e.contains("twice"),
        "{e}"
    );
    let e = kappa(&write(d, "nocall.csv", "case,rater\nc1,r1\n"));
    assert!(e.contains("no column 'call'"), "{e}");

    let truth = write(d, "truth.csv", "case,label\nc1,infection\nc2,tumour\n");
    let preds = write(d, "p.csv", "case,model,score\nc1,cnn,0.9\nc3,cnn,0.1\n");
    let e = fails(&[
        "audit",
        "report",
        "--predictions",
        &preds,
        "--truth",
        &truth,
        "--out",
        &d.join("r.html").display().to_string(),
    ]);
    assert!(
        e.contains("line 3") && e.contains("'c3' has no truth label"),
        "{e}"
    );
    assert!(!d.join("r.html").exists(), "no report from bad input");
}

#[test]
fn report_from_csv_and_from_the_store_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (preds, truth) = (
        fixture("sample_predictions.csv"),
        fixture("sample_truth.csv"),
    );
    let (preds, truth) = (preds.to_str().unwrap(), truth.to_str().unwrap());
    let html = d.join("report.html");
    let v = ok_json(&[
        "audit",
        "report",
        "--predictions",
        preds,
        "--truth",
        truth,
        "--out",
        html.to_str().unwrap(),
    ]);
    assert_eq!(v["cases"], 360);
    let names: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cnn", "vit", "ensemble"]);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("<table>") && page.contains("Drift"));

    let db = d.join("audit.sqlite");
    let db = db.to_str().unwrap();
    let first = ok_json(&[
        "audit",
        "import",
        "--db",
        db,
        "--predictions",
        preds,
        "--truth",
        truth,
    ]);
    assert_eq!(first["predictions"]["new"], 720);
    assert_eq!(first["truth"]["new"], 360);
    let again = ok_json(&[
        "audit",
        "import",
        "--db",
        db,
        "--predictions",
        preds,
        "--truth",
        truth,
    ]);
    assert_eq!(
        (
            again["predictions"]["new"].as_u64(),
            again["truth"]["new"].as_u64()
        ),
        (Some(0), Some(0))
    );

    let from_db = ok_json(&[
        "audit",
        "report",
        "--db",
        db,
        "--out",
        html.to_str().unwrap(),
    ]);
    // The store reproduces the CSV report (row order differs: sums agree to rounding).
    for (a, b) in from_db["models"]
        .as_array()
        .unwrap()
        .iter()
        .zip(v["models"].as_array().unwrap())
    {
        assert_eq!(a["name"], b["name"]);
        assert_eq!(a["confusion"], b["confusion"]);
        for k in ["auc", "ci_low", "ci_high", "average_precision", "brier"] {
            assert!(
                (a[k].as_f64().unwrap() - b[k].as_f64().unwrap()).abs() < 1e-12,
                "{k}"
            );
        }
    }
    let filtered = ok_json(&[
        "audit",
        "report",
        "--db",
        db,
        "--device",
        "box-a",
        "--since",
        "2026-10-01",
        "--until",
        "2026-10-31",
        "--out",
        html.to_str().unwrap(),
    ]);
    assert_eq!(filtered["cases"], 40);
    assert_eq!(filtered["centres"].as_array().unwrap().len(), 1);
    let v11 = ok_json(&[
        "audit",
        "report",
        "--db",
        db,
        "--model-version",
        "1.1.0",
        "--out",
        html.to_str().unwrap(),
    ]);
    assert_eq!(v11["cases"], 120);
    let e = fails(&[
        "audit",
        "report",
        "--db",
        db,
        "--device",
        "nonexistent",
        "--out",
        html.to_str().unwrap(),
    ]);
    assert!(e.contains("no predictions"), "{e}");
}

#[test]
fn readers_study_end_to_end_on_a_simulated_panel() {
    use tirp_host::audit::simulate::{deeptirp_radiologists, simulate_panel};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(String, bool)> = (0..300).map(|i| (format!("c{i:03}"), i % 3 == 0)).collect();
    let (groups, kappa) = deeptirp_radiologists();
    let reads = simulate_panel(&cases, &groups, kappa, 11);
    let mut text = String::from("reader,group,case,call\n");
    for r in &reads {
        text += &format!(
            "{},{},{},{}\n",
            r.reader,
            r.group,
            r.case,
            if r.positive { "infection" } else { "tumour" }
        );
    }
    let reads_csv = write(d, "reads.csv", &text);
    let mut truth = String::from("case,label\n");
    let mut models = String::from("model,case,call\n");
    for (i, (c, t)) in cases.iter().enumerate() {
        let label = |p: bool| if p { "infection" } else { "tumour" };
        truth += &format!("{c},{}\n", label(*t));
        // Two members that err on different cases, and the logged ensemble.
        models += &format!("cnn,{c},{}\n", label(if i % 9 == 0 { !t } else { *t }));
        models += &format!("vit,{c},{}\n", label(if i % 11 == 0 { !t } else { *t }));
        models += &format!(
            "ensemble,{c},{}\n",
            label(if i % 17 == 0 { !t } else { *t })
        );
    }
    let (truth_csv, models_csv) = (
        write(d, "truth.csv", &truth),
        write(d, "models.csv", &models),
    );
    let v = ok_json(&[
        "audit",
        "readers",
        "--reads",
        &reads_csv,
        "--truth",
        &truth_csv,
        "--models",
        &models_csv,
    ]);
    assert_eq!(v["n_cases"], 300);
    assert_eq!(v["readers"].as_array().unwrap().len(), 9);
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    for g in groups {
        assert!(g["fleiss"]["kappa"].as_f64().unwrap() > 0.0);
        assert!(
            g["mcnemar_vs_ensemble"]["p"].as_f64().unwrap() < 0.05,
            "the ensemble beats every group here"
        );
        assert!(
            g["accuracy"]["ci_low"].as_f64().unwrap() < g["accuracy"]["value"].as_f64().unwrap()
        );
    }
    assert!(
        (v["ensemble"]["accuracy"]["value"].as_f64().unwrap() - (300.0 - 18.0) / 300.0).abs()
            < 1e-12
    );
    // κ among the two members only (the logged ensemble is not a rater).
    let table: Vec<Vec<u64>> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, t))| {
            let pos = [i % 9 == 0, i % 11 == 0]
                .iter()
                .filter(|&&wrong| wrong != *t)
                .count() as u64;
            vec![pos, 2 - pos]
        })
        .collect();
    let want = tirp_host::stats::agreement::fleiss_kappa(&table)
        .unwrap()
        .kappa;
    assert_eq!(v["models"].as_array().unwrap().len(), 2);
    assert!((v["models_fleiss"]["kappa"].as_f64().unwrap() - want).abs() < 1e-12);

    // A reader who skipped a case breaks Fleiss' κ of the group: a clear error.
    let skipped: String = text
        .lines()
        .filter(|l| !l.starts_with("senior-2,senior,c005,"))
        .map(|l| format!("{l}\n"))
        .collect();
    let e = fails(&[
        "audit",
        "readers",
        "--reads",
        &write(d, "r2.csv", &skipped),
        "--truth",
        &truth_csv,
    ]);
    assert!(
        e.contains("group 'senior'") && e.contains("case 'c005' has 2 reads"),
        "{e}"
    );
}

#[test]
fn device_log_to_store_to_report() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A pulled device log (as `tirp logs pull` writes it): events and inference records.
    let mut log = String::from(
        "{\"device_id\":\"box-a\",\"seq\":0,\"type\":\"event\",\"time_unix_ms\":0,\"event\":\"install\",\"detail\":\"\"}\n",
    );
    let mut truth = String::from("study_key,label\n");
    for i in 0..60u64 {
        let infected = i % 3 == 0;
        let p = if infected { 0.55 } else { 0.2 } + (i % 7) as f64 * 0.05;
        log += &format!(
            "{{\"device_id\":\"box-a\",\"seq\":{},\"type\":\"inference\",\"time_unix_ms\":{},\"board\":\"orin\",\"bundle_id\":\"tirp-1.0.0\",\"bundle_sha256\":\"00\",\"member_scores\":[{{\"member\":\"cnn\",\"score\":{p}}}],\"probability\":{p},\"flag\":{},\"threshold\":0.5,\"latency\":{{\"decode_ms\":1,\"preprocess_ms\":1,\"inference_ms\":1,\"total_ms\":3}},\"study_key\":\"k{i}\"}}\n",
            i + 1,
            1_790_000_000_000 + i * 86_400_000,
            p >= 0.5
        );
        truth += &format!("k{i},{}\n", if infected { "infection" } else { "tumour" });
    }
    let (log, truth) = (write(d, "box-a.jsonl", &log), write(d, "truth.csv", &truth));
    let db = d.join("audit.sqlite").display().to_string();
    let v = ok_json(&[
        "audit",
        "import",
        "--db",
        &db,
        "--predictions",
        &log,
        "--truth",
        &truth,
    ]);
    assert_eq!(
        v["predictions"]["new"], 120,
        "a member row and an ensemble row per inference"
    );
    let html = d.join("r.html").display().to_string();
    let r = ok_json(&["audit", "report", "--db", &db, "--out", &html]);
    assert_eq!(r["cases"], 60);
    let names: Vec<&str> = r["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cnn", "ensemble"]);
    assert_eq!(r["model_versions"][0]["name"], "tirp-1.0.0");
    assert!(
        std::fs::read_to_string(&html)
            .unwrap()
            .contains("(as logged by the device)")
    );
}
