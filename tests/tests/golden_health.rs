//! The golden-inference health check end to end: a trained bundle directory (a fixture
//! bundle with the golden pair `tirp train` would write) built in one command with
//! `tirp bundle build --from-dir`, flashed to a running `tirpd` (default health check) and
//! marked good; a bundle whose golden output disagrees with the engine is reverted with the
//! reason; a directory without the golden pair is refused at build.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tirp_e2e::{Tirpd, bin};
use tirp_firmware::bundle::{FileRole, GoldenOutput, Manifest};
use tirp_firmware::engine::{ClinicalInput, Engine, EngineOptions, Explain};
use tirp_firmware::ensemble::EnsembleSpec;
use tirp_firmware::link::client::{Client, ClientOptions, open_serial};
use tirp_firmware::slots::{SlotId, SlotState, SlotsReport};
use tirp_models::fixture::{self, FixtureConfig};

fn run(args: &[&str]) -> Output {
    Command::new(bin("tirp"))
        .args(args)
        .env(
            "TIRP_STATE_DIR",
            std::env::temp_dir().join("tirp-e2e-unused"),
        )
        .output()
        .expect("run tirp")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fixture bundle directory without its golden pair, plus a model card file.
fn untrained_dir(dir: &Path) -> PathBuf {
    let out = dir.join("bundle");
    let cfg = FixtureConfig {
        name: "tirp-ensemble".into(),
        version: "1.0.0".into(),
        threshold: 0.4,
        ..Default::default()
    };
    fixture::write_bundle(&out, &cfg).unwrap();
    std::fs::write(out.join("MODEL_CARD.md"), "# untrained fixture\n").unwrap();
    out
}

/// What `tirp train` adds: a radiograph and the engine's answer on it (whole image, no
/// clinical inputs, Grad-CAM, tolerance 1e-4).
fn trained_dir(dir: &Path) -> (PathBuf, GoldenOutput) {
    let out = untrained_dir(dir);
    let img: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
        image::ImageBuffer::from_fn(96, 80, |x, y| {
            let bar = if (30..50).contains(&x) { 2000 } else { 0 };
            image::Luma([600 + 7 * y as u16 + bar + ((x * 31 + y * 17) % 50) as u16])
        });
    img.save(out.join("golden.png")).unwrap();
    let engine = Engine::load(&out, &EngineOptions::default()).unwrap();
    let bytes = std::fs::read(out.join("golden.png")).unwrap();
    let image = tirp_firmware::radiograph::decode(&bytes).unwrap().image;
    let p = engine
        .predict(&image, None, ClinicalInput::default(), Explain::GradCam)
        .unwrap();
    let golden = GoldenOutput {
        probability: p.probability as f64,
        flag: p.pbt,
        tolerance: 1e-4,
        member_scores: p.members.iter().map(|m| m.probability as f64).collect(),
    };
    std::fs::write(
        out.join("golden.json"),
        serde_json::to_vec_pretty(&golden).unwrap(),
    )
    .unwrap();
    (out, golden)
}

fn build_from_dir(src: &Path, key: &Path, out: &Path, extra: &[&str]) -> Manifest {
    let mut args = vec!["--json", "bundle", "build", "--from-dir", s(src)];
    args.extend(["--board", "x86_64-dev", "--security-version", "1"]);
    args.extend(["--key", s(key), "--out", s(out)]);
    args.extend(extra);
    let v: serde_json::Value = serde_json::from_str(&ok(run(&args))).unwrap();
    serde_json::from_value(v["manifest"].clone()).unwrap()
}

fn status(port: &str) -> SlotsReport {
    let link = open_serial(port, 921_600).unwrap();
    let mut c = Client::connect(link, ClientOptions::default()).unwrap();
    c.status().unwrap().slots
}

#[test]
fn trained_bundle_passes_golden_inference_and_a_wrong_golden_output_reverts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(run(&["keys", "gen", "--out", s(&d.join("eng"))]));
    let (key, public) = (d.join("eng.key.pem"), d.join("eng.pub.pem"));
    let (src, golden) = trained_dir(&d.join("good"));

    // One command: roles from the file names, the rest from ensemble.json.
    let good = d.join("good.tirpb");
    let m = build_from_dir(&src, &key, &good, &[]);
    let spec = EnsembleSpec::load(&src).unwrap();
    assert_eq!(
        (m.name.as_str(), m.version.as_str()),
        ("tirp-ensemble", "1.0.0")
    );
    assert_eq!(
        (m.preprocess.clone(), m.threshold),
        (spec.preprocess.clone(), 0.4)
    );
    let role = |n: &str| m.files.iter().find(|f| f.name == n).map(|f| f.role);
    assert_eq!(role("golden.png"), Some(FileRole::GoldenInput));
    assert_eq!(role("golden.json"), Some(FileRole::GoldenOutput));
    assert_eq!(role("ensemble.json"), Some(FileRole::Other));
    assert_eq!(role("MODEL_CARD.md"), Some(FileRole::Other));
    for f in spec
        .members
        .iter()
        .map(|m| &m.file)
        .chain([&spec.stacker.file])
    {
        assert_eq!(role(f), Some(FileRole::Model), "{f}");
    }
    assert_eq!(m.files.len(), spec.members.len() + 5);

    // The same directory with a golden output the engine does not reproduce (signed as
    // such: what a box computing differently from the training machine would see).
    let bad_src = d.join("bad");
    std::fs::create_dir_all(&bad_src).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, bad_src.join(p.file_name().unwrap())).unwrap();
    }
    let mut wrong = golden.clone();
    wrong.probability += if golden.probability < 0.5 {
        0.01
    } else {
        -0.01
    };
    std::fs::write(
        bad_src.join("golden.json"),
        serde_json::to_vec(&wrong).unwrap(),
    )
    .unwrap();
    let bad = d.join("bad.tirpb");
    build_from_dir(&bad_src, &key, &bad, &["--version", "1.1.0"]);

    let data = d.join("device");
    let daemon = Tirpd::start(&data, &public, &[]);
    let port = daemon.port.clone();
    let flash = |b: &Path, activate: bool| {
        let mut args = vec!["--port", &port, "--non-interactive", "flash", s(b)];
        if activate {
            args.extend(["--activate", "--key", s(&key)]);
        }
        run(&args)
    };
    let out = ok(flash(&good, true));
    assert!(out.contains("activated and marked good"), "{out}");
    let st = status(&port);
    assert_eq!((st.active, st.a.state), (Some(SlotId::A), SlotState::Good));

    ok(flash(&bad, false));
    let o = run(&[
        "--port",
        &port,
        "--non-interactive",
        "activate",
        "--key",
        s(&key),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(7), "{err}");
    assert!(
        err.contains("golden inference mismatch: probability") && err.contains("reverted"),
        "{err}"
    );
    let st = status(&port);
    assert_eq!(
        (st.active, st.a.state, st.b.state),
        (Some(SlotId::A), SlotState::Good, SlotState::Bad)
    );
    daemon.kill();

    // A restart re-runs the golden inference on the good slot, which still passes.
    let daemon = Tirpd::start(&data, &public, &[]);
    let st = status(&daemon.port);
    assert_eq!(
        (st.active, st.a.state, st.b.state),
        (Some(SlotId::A), SlotState::Good, SlotState::Bad)
    );
    daemon.kill();
}

#[test]
fn bundle_directory_without_golden_pair_is_refused_at_build() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(run(&["keys", "gen", "--out", s(&d.join("eng"))]));
    let src = untrained_dir(d);
    let o = run(&[
        "bundle",
        "build",
        "--from-dir",
        s(&src),
        "--board",
        "x86_64-dev",
        "--key",
        s(&d.join("eng.key.pem")),
        "--out",
        s(&d.join("x.tirpb")),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "built without a golden pair");
    assert!(err.contains("no golden.png"), "{err}");
    assert!(!d.join("x.tirpb").exists());
    // --from-dir takes preprocessing and threshold from ensemble.json, never from flags.
    let o = run(&[
        "bundle",
        "build",
        "--from-dir",
        s(&src),
        "--board",
        "x86_64-dev",
        "--threshold",
        "0.9",
        "--out",
        s(&d.join("x.tirpb")),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
