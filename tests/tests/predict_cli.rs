//! `tirp predict`, `tirp eval` and `tirp predict bench` end to end on a fixture bundle
//! (random-initialised members written by `tirp_models::fixture`): the JSON fields, the
//! overlay, bad inputs named on stderr with a non-zero exit, predictions `tirp audit` reads.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tirp_e2e::bin;

fn tirp(args: &[&str]) -> Output {
    tirp_env(args, &[])
}

fn tirp_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(bin("tirp"));
    c.args(args).env_remove("TIRP_BUNDLE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run tirp")
}

fn ok_json(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "tirp failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

fn fails_with(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected failure, stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    bundle: PathBuf,
    png: PathBuf,
}

/// A fixture bundle and a 16-bit PNG radiograph (96×80).
fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let bundle = dir.join("bundle");
    tirp_models::fixture::write_bundle(&bundle, &Default::default()).unwrap();
    let img: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
        image::ImageBuffer::from_fn(96, 80, |x, y| {
            let bar = if (30..50).contains(&x) { 2000 } else { 0 };
            image::Luma([600 + 7 * y as u16 + bar + ((x * 31 + y * 17) % 50) as u16])
        });
    let png = dir.join("r.png");
    img.save(&png).unwrap();
    Setup {
        _tmp: tmp,
        dir,
        bundle,
        png,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn predict_prints_the_prediction_and_writes_the_overlay() {
    let t = setup();
    let overlay = t.dir.join("o.png");
    let v = ok_json(&tirp(&[
        "--json",
        "predict",
        s(&t.png),
        "--bundle",
        s(&t.bundle),
        "--age",
        "30",
        "--sex",
        "f",
        "--site",
        "tibia",
        "--roi",
        "20,18,44,40",
        "--heatmap",
        s(&overlay),
        "--threads",
        "2",
    ]));
    let p = v["probability"].as_f64().unwrap();
    let threshold = v["threshold"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p));
    assert_eq!(v["pbt"].as_bool().unwrap(), p >= threshold);
    let flag = v["flag"].as_str().unwrap();
    assert_eq!(
        flag,
        if p >= threshold {
            "suspected primary bone tumour"
        } else {
            "suspected bone infection"
        }
    );
    let members = v["members"].as_array().unwrap();
    let names: Vec<&str> = members
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["resnet", "effnet", "vit"]);
    for m in members {
        let l = m["logit"].as_f64().unwrap();
        let q = m["probability"].as_f64().unwrap();
        assert!((q - 1.0 / (1.0 + (-l).exp())).abs() < 1e-5);
    }
    assert_eq!(v["clinical"]["age"], 30.0);
    assert_eq!(v["clinical"]["sex"], "f");
    assert_eq!(v["clinical"]["site"], "tibia");
    assert_eq!(v["clinical"]["missing"].as_array().unwrap().len(), 0);
    assert_eq!(
        v["roi"],
        serde_json::json!({"x": 20, "y": 18, "w": 44, "h": 40})
    );
    assert_eq!(v["roi_source"], "caller");
    assert_eq!(v["backend"], "cpu");
    assert_eq!(v["bundle"]["name"], "tirp-fixture");
    assert_eq!(v["bundle"]["version"], "0.0.1");
    for stage in [
        "decode_ms",
        "preprocess_ms",
        "members_ms",
        "stacker_ms",
        "explain_ms",
        "total_ms",
    ] {
        assert!(v["timings"][stage].as_f64().unwrap() >= 0.0, "{stage}");
    }
    assert_eq!(v["heatmap"]["method"], "gradcam");
    assert_eq!(v["heatmap"]["side"], 32);
    assert!(
        v["heatmap"].get("values").is_none(),
        "values only on request"
    );
    assert_eq!(v["notice"], "NOT FOR DIAGNOSTIC USE");
    assert_eq!(v["input"]["format"], "png");
    let o = image::open(&overlay).unwrap();
    assert!(o.width() > 384 && o.height() > 384);

    // Score-CAM, the whole image, missing clinical inputs, values on request; human text.
    let v = ok_json(&tirp(&[
        "--json",
        "predict",
        s(&t.png),
        "--bundle",
        s(&t.bundle),
        "--explain",
        "scorecam",
        "--heatmap-values",
    ]));
    assert_eq!(v["heatmap"]["method"], "scorecam");
    assert_eq!(v["heatmap"]["values"].as_array().unwrap().len(), 32 * 32);
    assert_eq!(v["roi_source"], "whole_image");
    assert_eq!(
        v["clinical"]["missing"],
        serde_json::json!(["age", "sex", "site"])
    );
    let o = tirp_env(&["predict", s(&t.png)], &[("TIRP_BUNDLE", &t.bundle)]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("suspected"), "{text}");
    assert!(text.contains("NOT FOR DIAGNOSTIC USE"), "{text}");
}

#[test]
fn bad_inputs_exit_non_zero_naming_the_problem() {
    let t = setup();
    let b = s(&t.bundle);
    let png = s(&t.png);
    fails_with(
        &tirp(&["predict", png, "--bundle", b, "--roi", "80,10,40,20"]),
        "outside the 96x80 image",
    );
    fails_with(
        &tirp(&["predict", png, "--bundle", b, "--roi", "1,2,3"]),
        "x,y,w,h",
    );
    fails_with(
        &tirp(&["predict", png, "--bundle", b, "--age", "-3"]),
        "age -3 is outside [0, 120]",
    );
    fails_with(
        &tirp(&["predict", png, "--bundle", b, "--sex", "x"]),
        "unknown sex",
    );
    let missing = t.dir.join("no-bundle");
    let o = tirp(&["predict", png, "--bundle", s(&missing)]);
    fails_with(&o, "no model bundle at");
    fails_with(&o, "tirp train");

    let bytes = std::fs::read(&t.png).unwrap();
    let cut = t.dir.join("cut.png");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&tirp(&["predict", s(&cut), "--bundle", b]), "truncated PNG");
    let photo: image::RgbImage = image::ImageBuffer::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 90])
    });
    let jpg = t.dir.join("photo.jpg");
    photo.save(&jpg).unwrap();
    fails_with(&tirp(&["predict", s(&jpg), "--bundle", b]), "colour image");
    let tiny = t.dir.join("tiny.png");
    image::GrayImage::from_pixel(1, 1, image::Luma([9]))
        .save(&tiny)
        .unwrap();
    fails_with(&tirp(&["predict", s(&tiny), "--bundle", b]), "1x1");
    fails_with(
        &tirp(&["predict", s(&t.dir.join("nope.png")), "--bundle", b]),
        "nope.png",
    );
}

#[test]
fn eval_writes_predictions_that_audit_reads() {
    let t = setup();
    let cohort = t.dir.join("cohort");
    let o = tirp(&[
        "cohort",
        "generate",
        "--out",
        s(&cohort),
        "--patients",
        "20",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let labels = cohort.join("labels.csv");
    let preds = t.dir.join("pred.csv");
    let v = ok_json(&tirp(&[
        "--json",
        "eval",
        "--labels",
        s(&labels),
        "--split",
        "all",
        "--bundle",
        s(&t.bundle),
        "--out",
        s(&preds),
    ]));
    let n = v["n"].as_u64().unwrap();
    assert!(n >= 20, "{v}");
    assert_eq!(
        v["n_pbt"].as_u64().unwrap() + v["n_infection"].as_u64().unwrap(),
        n
    );
    for m in ["ensemble", "resnet", "effnet", "vit"] {
        let auc = v["auc"][m]["auc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auc), "{m}: {auc}");
    }
    let text = std::fs::read_to_string(&preds).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "study_key,model,score,centre,model_version,device,time,label,split"
    );
    assert_eq!(
        lines.count() as u64,
        4 * n,
        "an ensemble row and 3 member rows per image"
    );
    let truth = t.dir.join("truth.csv");
    assert!(truth.exists());

    let report = t.dir.join("report.html");
    let o = tirp(&[
        "audit",
        "report",
        "--predictions",
        s(&preds),
        "--truth",
        s(&truth),
        "--positive",
        "pbt",
        "--out",
        s(&report),
    ]);
    assert!(
        o.status.success(),
        "audit: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(std::fs::metadata(&report).unwrap().len() > 1000);

    // One split only, and a bad split name.
    let v = ok_json(&tirp(&[
        "--json",
        "eval",
        "--labels",
        s(&labels),
        "--split",
        "test",
        "--bundle",
        s(&t.bundle),
        "--out",
        s(&preds),
    ]));
    assert!(v["n"].as_u64().unwrap() < n);
    fails_with(
        &tirp(&[
            "eval",
            "--labels",
            s(&labels),
            "--split",
            "tset",
            "--bundle",
            s(&t.bundle),
        ]),
        "--split",
    );
}

#[test]
fn bench_reports_cold_start_and_stage_percentiles() {
    let t = setup();
    let v = ok_json(&tirp(&[
        "--json",
        "predict",
        "bench",
        "--bundle",
        s(&t.bundle),
        "--iters",
        "3",
    ]));
    assert!(v["cold_start_ms"].as_f64().unwrap() > 0.0);
    for stage in ["preprocess", "members", "stacker", "explain", "end_to_end"] {
        let p50 = v["stages"][stage]["p50_ms"].as_f64().unwrap();
        let p95 = v["stages"][stage]["p95_ms"].as_f64().unwrap();
        assert!(p50 >= 0.0 && p95 >= p50, "{stage}: {p50} {p95}");
    }
    // Resident memory (this machine is Linux): loading the bundle adds to it; peak ≥ end.
    let m = &v["memory"];
    let kb = |k: &str| m[k].as_u64().unwrap_or_else(|| panic!("{k}: {m}"));
    assert!(kb("rss_after_load_kb") > kb("rss_before_load_kb"), "{m}");
    assert!(
        kb("peak_rss_kb") >= kb("rss_end_kb") && kb("rss_end_kb") > 1024,
        "{m}"
    );
    assert!(v["graphs"].get("profile").is_none(), "only with --profile");

    // --profile: each member's time per tract operator, in JSON and in the table.
    let args = [
        "predict",
        "bench",
        "--bundle",
        s(&t.bundle),
        "--iters",
        "2",
        "--profile",
    ];
    let v = ok_json(&tirp(&[&["--json"][..], &args].concat()));
    let profile = v["graphs"]["profile"].as_array().unwrap();
    assert_eq!(profile.len(), v["members"].as_u64().unwrap() as usize);
    for m in profile {
        let ops = m["ops"].as_array().unwrap();
        assert!(!ops.is_empty(), "{m}");
        let sum: f64 = ops.iter().map(|o| o["ms"].as_f64().unwrap()).sum();
        assert!((sum - m["total_ms"].as_f64().unwrap()).abs() < 1e-9, "{m}");
    }
    let o = tirp(&args);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("per tract operator"),
        "{text}"
    );
}

#[test]
fn dicom_input_takes_age_sex_and_site_from_its_header() {
    let t = setup();
    let cohort = t.dir.join("dcm");
    let o = tirp(&[
        "cohort",
        "generate",
        "--out",
        s(&cohort),
        "--patients",
        "20",
        "--format",
        "dicom",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let labels = std::fs::read_to_string(cohort.join("labels.csv")).unwrap();
    // A centre-3 (MONOCHROME1) radiograph.
    let row = labels
        .lines()
        .skip(1)
        .find(|l| l.contains("MONOCHROME1"))
        .expect("a centre-3 row");
    let rel = row.split(',').next().unwrap();
    let v = ok_json(&tirp(&[
        "--json",
        "predict",
        s(&cohort.join(rel)),
        "--bundle",
        s(&t.bundle),
        "--sex",
        "m",
    ]));
    assert_eq!(v["input"]["format"], "dicom");
    assert_eq!(
        v["clinical"]["from_dicom"],
        serde_json::json!(["age", "site"])
    );
    assert_eq!(
        v["clinical"]["sex"], "m",
        "the caller's value wins over the header"
    );
    let cols: Vec<&str> = row.split(',').collect();
    assert_eq!(
        v["clinical"]["age"].as_f64().unwrap(),
        cols[3].parse::<f64>().unwrap()
    );
    assert_eq!(v["clinical"]["site"], cols[5]);
    assert_eq!(v["clinical"]["missing"].as_array().unwrap().len(), 0);
    // The DICOM table evaluates too (its MONOCHROME1 files are inverted once, by the header).
    let v = ok_json(&tirp(&[
        "--json",
        "eval",
        "--labels",
        s(&cohort.join("labels.csv")),
        "--split",
        "all",
        "--bundle",
        s(&t.bundle),
        "--out",
        s(&t.dir.join("dcm-pred.csv")),
    ]));
    assert!(v["n"].as_u64().unwrap() >= 20);
}

/// A 16-bit PNG, 320×240: dark, a gentle ramp and a texture with a bright 64×64 square at
/// (200, 130); without the lesion, the texture alone (nothing brighter anywhere).
fn lesion_png(path: &Path, lesion: bool) {
    let img: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
        image::ImageBuffer::from_fn(320, 240, |x, y| {
            let inside = lesion && (200..264).contains(&x) && (130..194).contains(&y);
            let base = match (lesion, inside) {
                (_, true) => 3000,
                (true, false) => 400 + y as u16 / 2,
                (false, false) => 400,
            };
            image::Luma([base + ((x * 31 + y * 17) % 60) as u16])
        });
    img.save(path).unwrap();
}

#[test]
fn predict_without_a_roi_uses_the_bundles_localiser() {
    let t = setup();
    let bundle = t.dir.join("loc-bundle");
    let o = tirp(&["predict", "fixture", "--out", s(&bundle), "--localiser"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = t.dir.join("lesion.png");
    lesion_png(&png, true);
    let overlay = t.dir.join("auto.png");
    let v = ok_json(&tirp(&[
        "--json",
        "predict",
        s(&png),
        "--bundle",
        s(&bundle),
        "--heatmap",
        s(&overlay),
    ]));
    assert_eq!(v["roi_source"], "localiser", "{v}");
    assert_eq!(v["review"], false);
    let conf = v["localiser"]["confidence"].as_f64().unwrap();
    assert!(conf > 0.9, "{conf}");
    assert_eq!(v["localiser"]["min_confidence"], 0.5);
    assert_eq!(v["localiser"]["roi"], v["roi"]);
    let r = |k: &str| v["roi"][k].as_u64().unwrap();
    let (x, y, w, h) = (r("x"), r("y"), r("w"), r("h"));
    assert!(
        x <= 200 && y <= 130 && x + w >= 264 && y + h >= 194 && w <= 101 && h <= 101,
        "box {x},{y},{w},{h} should cover the lesion at 200,130,64,64"
    );
    assert!(v["timings"]["localise_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(v["members"].as_array().unwrap().len(), 3);
    assert!(image::open(&overlay).is_ok());
    let o = tirp(&["predict", s(&png), "--bundle", s(&bundle)]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("(localiser, confidence 0.9"),
        "{text}"
    );

    // A given box wins.
    let v = ok_json(&tirp(&[
        "--json",
        "predict",
        s(&png),
        "--bundle",
        s(&bundle),
        "--roi",
        "10,10,60,50",
    ]));
    assert_eq!(v["roi_source"], "caller");
    assert!(v["localiser"].is_null());
    assert_eq!(v["timings"]["localise_ms"], 0.0);

    // Nothing to localise: not classified, valid JSON, said so in the text.
    let flat = t.dir.join("flat.png");
    lesion_png(&flat, false);
    let v = ok_json(&tirp(&[
        "--json",
        "predict",
        s(&flat),
        "--bundle",
        s(&bundle),
    ]));
    assert_eq!(v["review"], true, "{v}");
    assert_eq!(v["flag"], "no lesion localised — review");
    assert_eq!(v["pbt"], false);
    assert_eq!(v["probability"], 0.0);
    assert_eq!(v["members"].as_array().unwrap().len(), 0);
    assert!(v["localiser"]["confidence"].as_f64().unwrap() < 0.5);
    let o = tirp(&["predict", s(&flat), "--bundle", s(&bundle)]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("no lesion localised — review"),
        "{text}"
    );

    // The bench times the localiser and the whole prediction without a ROI.
    let v = ok_json(&tirp(&[
        "--json",
        "predict",
        "bench",
        "--bundle",
        s(&bundle),
        "--iters",
        "3",
    ]));
    for stage in ["localiser", "end_to_end_auto_roi"] {
        assert!(
            v["stages"][stage]["p50_ms"].as_f64().unwrap() > 0.0,
            "{stage}"
        );
    }
    assert_eq!(v["localiser"]["input_size"], 64);

    // eval --roi auto needs a localiser; with one it reports what it did.
    let cohort = t.dir.join("cohort");
    let o = tirp(&[
        "cohort",
        "generate",
        "--out",
        s(&cohort),
        "--patients",
        "20",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let labels = cohort.join("labels.csv");
    let preds = t.dir.join("pred.csv");
    let eval = |b: &Path, roi: &str| {
        tirp(&[
            "--json",
            "eval",
            "--labels",
            s(&labels),
            "--split",
            "all",
            "--bundle",
            s(b),
            "--out",
            s(&preds),
            "--roi",
            roi,
        ])
    };
    fails_with(&eval(&t.bundle, "auto"), "no localiser");
    let v = ok_json(&eval(&bundle, "auto"));
    assert_eq!(v["roi"], "auto");
    let n_review = v["localiser"]["n_review"].as_u64().unwrap();
    assert_eq!(
        v["n"].as_u64().unwrap() + n_review,
        v["n_studies"].as_u64().unwrap()
    );
    assert_eq!(v["roi_sources"]["localiser"], v["n_studies"]);
    assert!(
        v["localiser"]["iou_with_recorded"]["n"].as_u64().unwrap() > 0,
        "{v}"
    );
    let v = ok_json(&eval(&bundle, "recorded"));
    assert_eq!(v["roi"], "recorded");
    assert_eq!(v["roi_sources"]["caller"], v["n_studies"]);
    // --roi whole: the whole image even with a localiser in the bundle; nothing to review.
    let w = ok_json(&eval(&bundle, "whole"));
    assert_eq!(w["roi_sources"]["caller"], w["n_studies"]);
    assert_eq!(w["n"], w["n_studies"]);
    assert!(w["localiser"].is_null(), "{w}");
    assert_ne!(w["auc"]["ensemble"], v["auc"]["ensemble"]);
}
