//! The field engineer's workflow with the real binaries: `tirp` flashing a running `tirpd`
//! over a pseudo-terminal, exit codes, and `tirpd` killed (SIGKILL) at random points.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tirp_e2e::{Tirpd, bin};
use tirp_firmware::link::client::{Client, ClientOptions, open_serial};
use tirp_firmware::slots::{FileIntegrityCheck, HealthCheck, SlotState, SlotsReport};

/// The bundles here carry synthetic model bytes the engine cannot run, so `tirpd` checks
/// file integrity only; `golden_health.rs` runs the default golden-inference check.
const INTEGRITY_ONLY: &[&str] = &["--health-check", "integrity"];

fn tirp(args: &[&str], port: &str) -> Output {
    Command::new(bin("tirp"))
        .args(["--port", port, "--non-interactive"])
        .args(args)
        .env(
            "TIRP_STATE_DIR",
            std::env::temp_dir().join("tirp-e2e-unused"),
        )
        .output()
        .expect("run tirp")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn status(port: &str) -> SlotsReport {
    let link = open_serial(port, 921_600).unwrap();
    let mut c = Client::connect(link, ClientOptions::default()).unwrap();
    c.status().unwrap().slots
}

/// Model, golden image and golden output files for `tirp bundle build`.
fn sources(dir: &Path, model_len: usize, seed: u8) -> Vec<String> {
    let model = dir.join(format!("member{seed}.onnx"));
    let bytes: Vec<u8> = (0..model_len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(u32::from(seed)) as u8
                ^ (i >> 9) as u8
        })
        .collect();
    std::fs::write(&model, bytes).unwrap();
    let png = dir.join("golden.png");
    std::fs::write(&png, tirp_firmware::bundle::testkit::golden_png()).unwrap();
    let json = dir.join("golden.json");
    std::fs::write(
        &json,
        r#"{"probability":0.64,"flag":true,"tolerance":0.02,"member_scores":[0.6,0.68]}"#,
    )
    .unwrap();
    [model, png, json]
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn build(
    dir: &Path,
    name: &str,
    version: &str,
    sv: u32,
    board: &str,
    key: Option<&Path>,
    model_len: usize,
    seed: u8,
) -> PathBuf {
    let src = sources(dir, model_len, seed);
    let out = dir.join(name);
    let mut cmd = Command::new(bin("tirp"));
    cmd.args([
        "bundle",
        "build",
        "--name",
        "tirp-ensemble",
        "--version",
        version,
    ])
    .args(["--security-version", &sv.to_string(), "--board", board])
    .args([
        "--model",
        &src[0],
        "--golden-input",
        &src[1],
        "--golden-output",
        &src[2],
    ])
    .args(["--threshold", "0.5", "--out"])
    .arg(&out);
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    ok(&cmd.output().unwrap());
    out
}

fn keys(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let prefix = dir.join(name);
    ok(&Command::new(bin("tirp"))
        .args(["keys", "gen", "--out"])
        .arg(&prefix)
        .output()
        .unwrap());
    (
        dir.join(format!("{name}.key.pem")),
        dir.join(format!("{name}.pub.pem")),
    )
}

/// Inference records as the engine will write them (the engine is another issue).
fn seed_inferences(data: &Path, n: usize) {
    use tirp_firmware::devlog::*;
    let mut log = DevLog::open(&data.join("log"), LogOptions::default()).unwrap();
    for i in 0..n {
        log.append_entry(&LogEntry::Inference(InferenceRecord {
            time_unix_ms: 1_796_000_000_000 + i as u64 * 60_000,
            device_id: "seeded".into(),
            board: "x86_64-dev".into(),
            bundle_id: "tirp-ensemble 1.0.0".into(),
            bundle_sha256: "00".repeat(32),
            member_scores: ["cnn", "vit"]
                .iter()
                .map(|m| MemberScore {
                    member: (*m).into(),
                    score: 0.1 * i as f64 + 0.2,
                })
                .collect(),
            probability: 0.1 * i as f64 + 0.25,
            flag: i > 1,
            review: false,
            threshold: 0.5,
            latency: StageLatency {
                decode_ms: 5.0,
                preprocess_ms: 3.0,
                inference_ms: 400.0,
                total_ms: 410.0,
            },
            study_key: study_key(b"salt", &format!("1.2.826.0.1.{i}")),
            instance_key: String::new(),
        }))
        .unwrap();
    }
}

#[test]
fn field_engineer_flashes_activates_rolls_back_and_pulls_logs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = keys(d, "eng");
    let (other_key, _) = keys(d, "other");
    let v1 = build(
        d,
        "v1.tirpb",
        "1.0.0",
        1,
        "x86_64-dev",
        Some(&key),
        300_000,
        1,
    );
    let v2 = build(d, "v2.tirpb", "1.1.0", 1, "x86_64-dev", None, 200_000, 2);
    let verify = Command::new(bin("tirp"))
        .args(["bundle", "verify"])
        .arg(&v2)
        .arg("--pub")
        .arg(&public)
        .output()
        .unwrap();
    assert_eq!(
        verify.status.code(),
        Some(4),
        "unsigned bundle must fail verify"
    );
    ok(&Command::new(bin("tirp"))
        .args(["bundle", "sign"])
        .arg(&v2)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap());
    let data = d.join("device");
    seed_inferences(&data, 3);
    let daemon = Tirpd::start(&data, &public, INTEGRITY_ONLY);
    let port = daemon.port.clone();
    let k = key.display().to_string();

    // Without --non-interactive and without a terminal to ask on, nothing is flashed.
    let o = Command::new(bin("tirp"))
        .args(["--port", &port, "flash"])
        .arg(&v1)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--non-interactive"));
    assert_eq!(status(&port).a.state, SlotState::Empty);

    let out = ok(&tirp(
        &["flash", v1.to_str().unwrap(), "--activate", "--key", &k],
        &port,
    ));
    assert!(out.contains("activated and marked good"), "{out}");
    ok(&tirp(&["flash", v2.to_str().unwrap()], &port));
    let s = status(&port);
    assert_eq!(
        (s.a.state, s.b.state),
        (SlotState::Good, SlotState::Installed)
    );
    // The engineer key is needed for state changes; a key the device does not trust: 7.
    let o = tirp(&["activate", "--key", other_key.to_str().unwrap()], &port);
    assert_eq!(o.status.code(), Some(7));
    ok(&tirp(&["activate", "--key", &k], &port));
    assert_eq!(status(&port).b.state, SlotState::Good);
    ok(&tirp(&["rollback", "--key", &k], &port));
    let s = status(&port);
    assert_eq!(s.active.map(|a| a.name()), Some("a"));

    // Rejections and their exit codes.
    let unsigned = build(d, "u.tirpb", "2.0.0", 1, "x86_64-dev", None, 1000, 3);
    let o = tirp(&["flash", unsigned.to_str().unwrap()], &port);
    assert_eq!(o.status.code(), Some(4), "unsigned");
    let foreign = build(
        d,
        "f.tirpb",
        "2.0.0",
        1,
        "x86_64-dev",
        Some(&other_key),
        1000,
        4,
    );
    assert_eq!(
        tirp(&["flash", foreign.to_str().unwrap()], &port)
            .status
            .code(),
        Some(4)
    );
    let orin = build(
        d,
        "o.tirpb",
        "2.0.0",
        1,
        "jetson-orin-nano-8gb",
        Some(&key),
        1000,
        5,
    );
    assert_eq!(
        tirp(&["flash", orin.to_str().unwrap()], &port)
            .status
            .code(),
        Some(6)
    );
    assert_eq!(tirp(&["info"], "/nonexistent/port").status.code(), Some(3));
    assert_eq!(tirp(&["flash"], &port).status.code(), Some(2));

    // Logs: incremental and idempotent; a second pull adds nothing.
    let logs = d.join("logs.jsonl");
    let state = d.join("host-state");
    let db = d.join("audit.sqlite");
    let pull = || {
        Command::new(bin("tirp"))
            .args(["--port", &port, "logs", "pull", "--out"])
            .arg(&logs)
            .arg("--state-dir")
            .arg(&state)
            .arg("--db")
            .arg(&db)
            .output()
            .unwrap()
    };
    // 3 inference records × (2 members + the ensemble) = 9 predictions, then none new.
    let text = ok(&pull());
    assert!(text.contains("; 9 new predictions"), "{text}");
    let first = std::fs::read_to_string(&logs).unwrap();
    let text = ok(&pull());
    assert!(
        text.contains("0 records") && text.contains("; 0 new predictions"),
        "{text}"
    );
    let lines: Vec<_> = first.lines().collect();
    assert!(lines.len() >= 8, "{first}");
    // Each record once, in order (the pulls themselves add no records).
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| {
            let at = l.find("\"seq\":").unwrap() + 6;
            l[at..].split([',', '}']).next().unwrap().parse().unwrap()
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let again = std::fs::read_to_string(&logs).unwrap();
    assert_eq!(again.lines().count(), lines.len());
    for event in [
        "\"install\"",
        "\"activate\"",
        "\"rollback\"",
        "\"health_check\"",
        "\"auth_failed\"",
    ] {
        assert!(first.contains(event), "no {event} in the pulled log");
    }

    // SIGTERM stops tirpd cleanly.
    let mut child = daemon.child;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let t0 = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "tirpd ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(code, Some(0));
}

/// SIGKILL `tirpd` at seeded random moments while `tirp flash --activate` runs; after each
/// restart one good slot is active and its files match its manifest.
#[test]
fn sigkill_during_flash_and_activation_leaves_one_good_slot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = keys(d, "eng");
    let k = key.display().to_string();
    let bundles: Vec<PathBuf> = (0..3)
        .map(|i| {
            build(
                d,
                &format!("b{i}.tirpb"),
                &format!("1.{i}.0"),
                1,
                "x86_64-dev",
                Some(&key),
                400_000,
                10 + i as u8,
            )
        })
        .collect();
    let data = d.join("device");
    let daemon = Tirpd::start(&data, &public, INTEGRITY_ONLY);
    // Kill moments are drawn over the duration of one whole command on this machine.
    let t0 = Instant::now();
    ok(&tirp(
        &[
            "flash",
            bundles[0].to_str().unwrap(),
            "--activate",
            "--key",
            &k,
        ],
        &daemon.port,
    ));
    let span_us = (t0.elapsed().as_micros() as u64).max(1000);
    daemon.kill();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    // Kill until enough kills have landed mid-command: how many of a fixed number of draws land
    // depends on the machine's load, so count landings rather than draws.
    let mut killed_mid_command = 0;
    let mut runs = 0;
    while killed_mid_command < 12 && runs < 200 {
        let run = runs;
        runs += 1;
        let daemon = Tirpd::start(&data, &public, INTEGRITY_ONLY);
        let b = &bundles[1 + run % 2];
        let mut flash = Command::new(bin("tirp"))
            .args(["--port", &daemon.port, "--non-interactive", "flash"])
            .arg(b)
            .args(["--activate", "--key", &k, "--retries", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(rng % span_us));
        let finished = flash.try_wait().unwrap().is_some();
        daemon.kill();
        let _ = flash.wait();
        killed_mid_command += usize::from(!finished);
        // Restart and check.
        let daemon = Tirpd::start(&data, &public, INTEGRITY_ONLY);
        let s = status(&daemon.port);
        let active = s.active.expect("a slot is active");
        assert_eq!(s.slot(active).state, SlotState::Good, "run {run}: {s:?}");
        let slot_dir = data.join("slots").join(active.name());
        let manifest = tirp_firmware::slots::read_slot_manifest(&slot_dir).unwrap();
        FileIntegrityCheck.check(&slot_dir, &manifest).unwrap();
        daemon.kill();
    }
    eprintln!("{killed_mid_command} of {runs} kills landed while tirp flash --activate ran");
    assert!(
        killed_mid_command >= 12,
        "only {killed_mid_command} of {runs} kills landed mid-command"
    );
}
