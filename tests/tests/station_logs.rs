//! `tirpd`'s structured logs: `--log-format json` writes one JSON object per stderr line
//! (`timestamp`, `level`, `target`, `fields`), with the events an administrator needs as
//! fields (study stored, its result with flag, probability and latency, a refused C-STORE
//! with its status, the startup facts) and nothing that identifies a patient, a study or the
//! dashboard token. Text is the default; the settings file can choose JSON.
//!
//! Needs dcmtk (`storescu`, `storescp`, `img2dcm`; skipped with a message otherwise) and
//! `cargo build -p tirp-host -p tirp-firmware --bins` first.
#![cfg(unix)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tirp_e2e::{
    StationDaemon, StoreScp, TEST_TOKEN, free_port, have_all, output_text as text, storescu,
    wait_for,
};

fn tools() -> bool {
    have_all(
        &["storescu", "storescp", "img2dcm"],
        "apt-get install dcmtk",
    )
}

/// Kills `tirpd` if the test fails before stopping it.
struct Daemon(Option<StationDaemon>);

impl Daemon {
    fn d(&self) -> &StationDaemon {
        self.0.as_ref().unwrap()
    }
    fn terminate(mut self) -> bool {
        self.0.take().unwrap().terminate()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            d.kill();
        }
    }
}

/// Every stderr line as a JSON object with the JSON format's keys (panics otherwise).
fn json_events(stderr: &str) -> Vec<Value> {
    let events: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            assert!(v.is_object(), "{l}");
            assert!(v["timestamp"].is_string(), "no timestamp: {l}");
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap()),
                "level: {l}"
            );
            assert!(v["target"].is_string(), "no target: {l}");
            assert!(v["fields"]["message"].is_string(), "no fields.message: {l}");
            v
        })
        .collect();
    assert!(!events.is_empty(), "no log at all");
    events
}

/// The `fields` of the events with this message.
fn with_message<'a>(events: &'a [Value], msg: &str) -> Vec<&'a Value> {
    events
        .iter()
        .map(|e| &e["fields"])
        .filter(|f| f["message"] == msg)
        .collect()
}

/// The values in `file` that identify the patient or the study (read from the file itself).
fn identifying_values(file: &Path) -> Vec<String> {
    let obj = tirp_firmware::radiograph::parse_dicom(&std::fs::read(file).unwrap()).unwrap();
    let mut v = Vec::new();
    for name in [
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "AccessionNumber",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    ] {
        let value = obj
            .element_by_name(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .to_str()
            .unwrap()
            .trim_end_matches(['\0', ' '])
            .to_owned();
        assert!(value.len() >= 4, "{name} {value:?}");
        // A person name also by its components (SYNTHETIC^P0001: both).
        v.extend(value.split('^').filter(|p| p.len() >= 4).map(str::to_owned));
        v.push(value);
    }
    v.sort();
    v.dedup();
    v
}

#[test]
fn json_logs_carry_fields_and_no_patient_data() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = tirp_e2e::dicom_cohort(&tmp.path().join("cohort"), 20, 17);
    let sent: Vec<PathBuf> = files[..2].to_vec();
    let station = StoreScp::start("STATION", free_port(), &tmp.path().join("station"));
    let dest = format!("STATION@127.0.0.1:{}", station.port);
    let data = tmp.path().join("tirpd");
    let d = Daemon(Some(StationDaemon::start(
        &data,
        &["--log-format", "json", "--dest", &dest],
    )));
    let dicom_port = d.d().dicom_port;

    let refs: Vec<&Path> = sent.iter().map(PathBuf::as_path).collect();
    let o = storescu(dicom_port, &[], &refs);
    assert!(
        o.status.success() && !text(&o).contains("Error"),
        "{}",
        text(&o)
    );
    // A colour photograph: refused while the station is connected.
    let jpg = tmp.path().join("photo.jpg");
    let mut rgb = image::RgbImage::new(64, 64);
    for (x, y, p) in rgb.enumerate_pixels_mut() {
        *p = image::Rgb([(x * 4) as u8, (y * 4) as u8, 200]);
    }
    rgb.save(&jpg).unwrap();
    let colour = tmp.path().join("colour.dcm");
    let o = Command::new("img2dcm")
        .arg(&jpg)
        .arg(&colour)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = storescu(dicom_port, &["-xy"], &[&colour]);
    assert!(
        text(&o).contains("Error") || !o.status.success(),
        "colour accepted: {}",
        text(&o)
    );
    // The token in a query string (a first visit) never reaches the log.
    let (status, _) = tirp_e2e::http_get(
        d.d().http_port,
        &format!("/api/studies?token={TEST_TOKEN}"),
        None,
    );
    assert_eq!(status, 200);

    wait_for("flags on the dashboard", Duration::from_secs(120), || {
        d.d()
            .studies()
            .iter()
            .filter(|s| s["state"] == "done")
            .count()
            >= sent.len()
    });
    wait_for("results at the station", Duration::from_secs(60), || {
        station.files().len() >= 3 * sent.len()
    });
    let shown = d.d().studies();
    let stderr_path = data.join("tirpd.stderr");
    assert!(d.terminate(), "SIGTERM: clean exit");
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    let events = json_events(&stderr);

    // Each study: stored (with its hashed id and source), then its result as fields.
    for s in shown.iter().filter(|s| s["state"] == "done") {
        let id = s["id"].as_str().unwrap();
        let tag = &id[..8];
        let stored: Vec<_> = with_message(&events, "study stored, queued")
            .into_iter()
            .filter(|f| f["study"] == tag)
            .collect();
        assert_eq!(stored.len(), 1, "study {tag} stored:\n{stderr}");
        assert_eq!(stored[0]["source"], "dicom:DRSTATION");
        let done: Vec<_> = with_message(&events, "study done")
            .into_iter()
            .filter(|f| f["study"] == tag)
            .collect();
        assert_eq!(done.len(), 1, "study {tag} done:\n{stderr}");
        let f = done[0];
        assert_eq!(f["flag"], s["flag"], "{f}");
        let p = f["probability"].as_f64().expect("probability");
        assert!(
            (p - s["probability"].as_f64().unwrap()).abs() < 1e-3,
            "{f} vs {s}"
        );
        assert!(f["latency_ms"].as_u64().is_some(), "{f}");
        assert!(
            f["processing_ms"].as_f64().is_some_and(|ms| ms > 0.0),
            "{f}"
        );
        assert_eq!(f["review"], false);
        // Its three result objects, named by the hashed id only.
        let sent_objects: Vec<_> = with_message(&events, "result sent")
            .into_iter()
            .filter(|f| f["object"].as_str().is_some_and(|o| o.starts_with(id)))
            .collect();
        assert_eq!(sent_objects.len(), 3, "{stderr}");
        assert!(sent_objects.iter().all(|f| f["dest"] == dest.as_str()));
    }
    assert_eq!(
        shown.iter().filter(|s| s["state"] == "done").count(),
        sent.len()
    );
    // The DICOM node: accepted stores and the refused colour image with its status.
    let stores = with_message(&events, "dicom-scp: C-STORE stored");
    assert_eq!(stores.len(), sent.len(), "{stderr}");
    assert!(
        stores
            .iter()
            .all(|f| f["calling_ae"] == "DRSTATION" && f["peer"] == "127.0.0.1"),
        "{stderr}"
    );
    let refused = with_message(&events, "dicom-scp: C-STORE refused");
    assert_eq!(refused.len(), 1, "{stderr}");
    assert_eq!(refused[0]["status"], "0xc000", "{stderr}");
    let comment = refused[0]["comment"].as_str().unwrap();
    assert!(
        comment.contains("colour") || comment.contains("MONOCHROME"),
        "{comment}"
    );
    // The banner's facts, once, as fields.
    let ready = with_message(&events, "tirpd ready");
    assert_eq!(ready.len(), 1, "{stderr}");
    assert_eq!(
        ready[0]["dicom"].as_str().unwrap(),
        format!("TIRPD@127.0.0.1:{dicom_port}")
    );
    assert_eq!(
        ready[0]["dashboard"].as_str().unwrap(),
        format!("http://127.0.0.1:{}/", d_http_port(&data))
    );
    assert_eq!(ready[0]["dests"], dest.as_str());
    assert!(ready[0]["serial"].is_string());
    // The dashboard's access log: method, path, status; never the query string.
    assert!(
        with_message(&events, "dashboard request")
            .iter()
            .any(|f| f["method"] == "GET" && f["path"] == "/api/studies" && f["status"] == 200),
        "{stderr}"
    );
    // The stdout banner is unchanged (scripts and the README read it).
    let stdout = std::fs::read_to_string(data.join("tirpd.stdout")).unwrap();
    assert!(
        stdout.contains(&format!("tirpd: DICOM TIRPD@127.0.0.1:{dicom_port}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("tirpd: dashboard http://127.0.0.1:"),
        "{stdout}"
    );

    // Nothing identifying a patient or a study, and no token, anywhere in the log.
    assert!(!stderr.contains(TEST_TOKEN), "the token in the log");
    let mut words = vec!["SYNTHETIC".to_owned()];
    for f in &sent {
        words.extend(identifying_values(f));
    }
    for w in &words {
        assert!(!stderr.contains(w.as_str()), "{w} in the log:\n{stderr}");
    }
}

/// The dashboard port tirpd wrote into its data directory.
fn d_http_port(data: &Path) -> u16 {
    std::fs::read_to_string(data.join("http-port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn text_logs_by_default_and_json_from_the_settings_file() {
    let tmp = tempfile::tempdir().unwrap();
    // Default: text lines with level, target, message and key=value fields.
    let data = tmp.path().join("text");
    let d = Daemon(Some(StationDaemon::start(&data, &[])));
    let dicom_port = d.d().dicom_port;
    assert!(d.terminate(), "SIGTERM: clean exit");
    let stderr = std::fs::read_to_string(data.join("tirpd.stderr")).unwrap();
    let ready = stderr
        .lines()
        .find(|l| l.contains("tirpd ready"))
        .unwrap_or_else(|| panic!("no ready event:\n{stderr}"));
    assert!(
        ready.contains(" INFO ")
            && ready.contains("tirpd::imp:")
            && ready.contains(&format!("dicom=TIRPD@127.0.0.1:{dicom_port}")),
        "{ready}"
    );
    assert!(
        stderr
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "ANSI colours in a file: {stderr:?}"
    );
    assert!(!stderr.contains(TEST_TOKEN), "the token in the log");

    // `log_format = "json"` in the settings file.
    let data = tmp.path().join("json");
    std::fs::create_dir_all(&data).unwrap();
    let cfg = data.join("tirpd.toml");
    std::fs::write(&cfg, "log_format = \"json\"\n").unwrap();
    let d = Daemon(Some(StationDaemon::start(
        &data,
        &["--config", cfg.to_str().unwrap()],
    )));
    assert!(d.terminate(), "SIGTERM: clean exit");
    let stderr = std::fs::read_to_string(data.join("tirpd.stderr")).unwrap();
    let events = json_events(&stderr);
    assert_eq!(with_message(&events, "tirpd ready").len(), 1, "{stderr}");
    assert_eq!(with_message(&events, "tirpd stopped").len(), 1, "{stderr}");

    // A malformed RUST_LOG: tirpd refuses to start rather than log something else.
    let o = Command::new(tirp_e2e::bin("tirpd"))
        .arg("--board")
        .arg(tirp_e2e::repo_root().join("boards/x86_64-dev.toml"))
        .arg("--data-dir")
        .arg(tmp.path().join("bad-filter"))
        .args([
            "--serial",
            "/nonexistent/tirp-test-port",
            "--dicom-port",
            "0",
        ])
        .args(["--http-addr", "127.0.0.1:0", "--token", TEST_TOKEN])
        .env("RUST_LOG", "tirpd=loudest")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("RUST_LOG"), "{}", text(&o));
    assert!(!text(&o).contains("tirpd: ready"), "{}", text(&o));
}
