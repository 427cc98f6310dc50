//! `tirpd` at the DR station with real DICOM tools (dcmtk, dicom3tools): synthetic DX
//! studies in by `storescu`, flag on the dashboard API, Secondary Capture and SRs out to a
//! dcmtk `storescp`, refusals that name the problem, and no study lost or processed twice
//! across a SIGKILL, a dead destination, or eight stations sending at once.
#![cfg(unix)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use tirp_e2e::{
    StationDaemon, StoreScp, bin, free_port, have_all, output_text as text, storescu, wait_for,
};
use tirp_firmware::devlog::{DevLog, LogEntry, LogOptions};

fn tools() -> bool {
    have_all(
        &[
            "storescu", "storescp", "echoscu", "dcmcrle", "dcmcjpeg", "img2dcm", "dciodvfy",
        ],
        "apt-get install dcmtk dicom3tools",
    )
}

fn run(cmd: &str, args: &[&str], files: &[&Path]) -> Output {
    Command::new(cmd).args(args).args(files).output().unwrap()
}

fn results(data: &Path) -> usize {
    std::fs::read_dir(data.join("spool/results"))
        .map(|rd| {
            rd.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// Inference records in the device log (read after the daemon stopped).
fn logged_inferences(data: &Path) -> usize {
    let log = DevLog::open(&data.join("log"), LogOptions::default()).unwrap();
    let mut n = 0;
    let mut since = 1;
    loop {
        let page = log.read_since(since, 10_000, 1 << 26).unwrap();
        n += page
            .records
            .iter()
            .filter(|r| {
                matches!(
                    serde_json::from_slice::<LogEntry>(&r.payload),
                    Ok(LogEntry::Inference(_))
                )
            })
            .count();
        if !page.more {
            return n;
        }
        since = page.next_seq;
    }
}

/// Every word that identifies a synthetic patient in `files`.
fn patient_words(files: &[PathBuf]) -> Vec<String> {
    let mut v: Vec<String> = files
        .iter()
        .map(|f| {
            f.file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .split('_')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    v.push("SYNTHETIC".into());
    v.sort();
    v.dedup();
    v
}

#[test]
fn a_dr_station_gets_flags_heat_maps_and_dicom_results() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut files = tirp_e2e::dicom_cohort(&tmp.path().join("cohort"), 20, 11);
    files.truncate(6);
    // Compressed variants of the first two images (new SOP instances, same pixels).
    let rle = tmp.path().join("rle.dcm");
    let jpl = tmp.path().join("jpeg-lossless.dcm");
    let o = run("dcmcrle", &["+ua"], &[&files[0], &rle]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run("dcmcjpeg", &["+e1", "+ua"], &[&files[1], &jpl]);
    assert!(o.status.success(), "{}", text(&o));
    let station = StoreScp::start("STATION", free_port(), &tmp.path().join("station"));
    let dest = format!("STATION@127.0.0.1:{}", station.port);
    let data = tmp.path().join("tirpd");
    let d = StationDaemon::start(&data, &["--allow-ae", "DRSTATION", "--dest", &dest]);
    let port = d.dicom_port.to_string();

    // C-ECHO: accepted for the allowed station, rejected for others, by reason.
    let o = run(
        "echoscu",
        &["-aet", "DRSTATION", "-aec", "TIRPD", "127.0.0.1", &port],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        "echoscu",
        &["-aet", "INTRUDER", "-aec", "TIRPD", "127.0.0.1", &port],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&o)
    );
    let o = run(
        "echoscu",
        &["-aet", "DRSTATION", "-aec", "WRONG", "127.0.0.1", &port],
        &[],
    );
    assert!(
        text(&o).contains("Called AE Title Not Recognized"),
        "{}",
        text(&o)
    );

    // C-STORE of uncompressed, RLE and JPEG lossless images: success.
    let plain: Vec<&Path> = files[2..].iter().map(PathBuf::as_path).collect();
    let o = storescu(d.dicom_port, &[], &plain);
    assert!(
        o.status.success() && !text(&o).contains("Error"),
        "{}",
        text(&o)
    );
    let o = storescu(d.dicom_port, &["-xr"], &[&rle]);
    assert!(
        o.status.success() && !text(&o).contains("Error"),
        "{}",
        text(&o)
    );
    let o = storescu(d.dicom_port, &["-xs"], &[&jpl]);
    assert!(
        o.status.success() && !text(&o).contains("Error"),
        "{}",
        text(&o)
    );
    let sent = plain.len() + 2;

    // A colour photo, a malformed file and an unknown SOP class: clear refusals.
    let jpg = tmp.path().join("photo.jpg");
    let mut rgb = image::RgbImage::new(64, 64);
    for (x, y, p) in rgb.enumerate_pixels_mut() {
        *p = image::Rgb([(x * 4) as u8, (y * 4) as u8, 200]);
    }
    rgb.save(&jpg).unwrap();
    let colour = tmp.path().join("colour.dcm");
    let o = run("img2dcm", &[], &[&jpg, &colour]);
    assert!(o.status.success(), "{}", text(&o));
    let o = storescu(d.dicom_port, &["-xy"], &[&colour]);
    let t = text(&o);
    assert!(
        t.contains("Error") || !o.status.success(),
        "colour accepted: {t}"
    );
    let ct = tmp.path().join("ct.dcm");
    std::fs::copy(&files[2], &ct).unwrap();
    let o = run(
        "dcmodify",
        &["-nb", "-m", "SOPClassUID=1.2.840.10008.5.1.4.1.1.2"],
        &[&ct],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = storescu(d.dicom_port, &[], &[&ct]);
    assert!(
        !o.status.success() || text(&o).contains("Error"),
        "CT accepted: {}",
        text(&o)
    );
    let broken = tmp.path().join("broken.dcm");
    let bytes = std::fs::read(&files[2]).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    let _ = storescu(d.dicom_port, &[], &[&broken]);
    // ...and the daemon keeps serving.
    let o = run(
        "echoscu",
        &["-aet", "DRSTATION", "-aec", "TIRPD", "127.0.0.1", &port],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));

    // Flags on the dashboard; three result objects per study at the station.
    wait_for("flags on the dashboard", Duration::from_secs(120), || {
        d.studies().iter().filter(|s| s["state"] == "done").count() >= sent
    });
    let shown = d.studies();
    for s in shown.iter().filter(|s| s["state"] == "done") {
        let flag = s["flag"].as_str().unwrap();
        assert!(flag.starts_with("suspected"), "{s}");
        let p = s["probability"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p), "{s}");
        assert!(
            s["patient_id"]
                .as_str()
                .is_some_and(|id| id.starts_with('P')),
            "{s}"
        );
        let id = s["id"].as_str().unwrap();
        let (status, png) = d.get(&format!("/api/studies/{id}/heatmap.png"));
        assert_eq!(status, 200);
        assert!(!png.is_empty());
    }
    let (status, _) = tirp_e2e::http_get(d.http_port, "/api/studies", None);
    assert_eq!(status, 401, "the dashboard needs the token");
    wait_for("results at the station", Duration::from_secs(60), || {
        station.files().len() >= 3 * sent
    });
    let received = station.files();
    assert_eq!(received.len(), 3 * sent, "{received:?}");
    for f in &received {
        let o = run("dciodvfy", &[], &[f]);
        let t = text(&o);
        let errors: Vec<&str> = t.lines().filter(|l| l.starts_with("Error")).collect();
        assert!(errors.is_empty(), "{}: {t}", f.display());
    }

    // Patient identity never reaches the logs (stderr, device log).
    let stop_ok = d.terminate();
    assert!(stop_ok, "SIGTERM: clean exit");
    let mut logs = std::fs::read_to_string(data.join("tirpd.stderr")).unwrap();
    logs.push_str(&std::fs::read_to_string(data.join("tirpd.stdout")).unwrap());
    for seg in std::fs::read_dir(data.join("log")).unwrap() {
        logs.push_str(&String::from_utf8_lossy(
            &std::fs::read(seg.unwrap().path()).unwrap(),
        ));
    }
    for w in patient_words(&files) {
        assert!(!logs.contains(&w), "{w} in the logs");
    }
    assert!(logs.contains("refused") || logs.contains("colour") || logs.contains("MONOCHROME"));
}

#[test]
fn no_study_is_lost_or_processed_twice_across_a_crash_and_a_dead_destination() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = tirp_e2e::dicom_cohort(&tmp.path().join("cohort"), 20, 12);
    let pacs_port = free_port();
    let dest = format!("PACS@127.0.0.1:{pacs_port}");
    let data = tmp.path().join("tirpd");
    // The PACS is down; the daemon is killed while it works through the queue.
    let d = StationDaemon::start(&data, &["--dest", &dest]);
    let all: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let o = storescu(d.dicom_port, &[], &all);
    assert!(
        o.status.success() && !text(&o).contains("Error"),
        "{}",
        text(&o)
    );
    wait_for("a few results", Duration::from_secs(60), || {
        results(&data) >= 3
    });
    d.kill();
    let done_before = results(&data);
    assert!(
        done_before < files.len(),
        "killed too late to test anything"
    );
    // Back up: everything stored is processed, once; the results wait for the PACS.
    let d = StationDaemon::start(&data, &["--dest", &dest]);
    wait_for("every study processed", Duration::from_secs(120), || {
        results(&data) >= files.len()
    });
    let pacs = StoreScp::start("PACS", pacs_port, &tmp.path().join("pacs"));
    wait_for("results at the PACS", Duration::from_secs(90), || {
        pacs.files().len() >= 3 * files.len()
    });
    assert!(d.terminate());
    assert_eq!(results(&data), files.len());
    assert_eq!(
        logged_inferences(&data),
        files.len(),
        "one log record per study"
    );
    assert_eq!(pacs.files().len(), 3 * files.len());
}

#[test]
fn eight_stations_sending_at_once_lose_nothing() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = tirp_e2e::dicom_cohort(&tmp.path().join("cohort"), 210, 13);
    assert!(files.len() >= 400, "{}", files.len());
    let data = tmp.path().join("tirpd");
    let d = StationDaemon::start(&data, &[]);
    let port = d.dicom_port;
    let senders: Vec<_> = files[..400]
        .chunks(50)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            std::thread::spawn(move || {
                let refs: Vec<&Path> = chunk.iter().map(PathBuf::as_path).collect();
                storescu(port, &[], &refs)
            })
        })
        .collect();
    for s in senders {
        let o = s.join().unwrap();
        assert!(
            o.status.success() && !text(&o).contains("Error"),
            "{}",
            text(&o)
        );
    }
    wait_for(
        "all 400 studies processed",
        Duration::from_secs(600),
        || results(&data) >= 400,
    );
    assert!(d.terminate());
    assert_eq!(results(&data), 400);
    assert_eq!(logged_inferences(&data), 400);
}

/// Issue 7: activating a new bundle over the serial link while studies stream in swaps the
/// engine between studies: every study is processed once, by the old bundle or the new one,
/// and none by the old one after the first by the new one.
#[test]
fn activation_swaps_the_engine_between_studies_while_ingest_runs() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let tirp = |args: &[&str]| {
        let o = Command::new(bin("tirp")).args(args).output().unwrap();
        assert!(o.status.success(), "tirp {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let key = d.join("eng");
    tirp(&["keys", "gen", "--out", key.to_str().unwrap()]);
    // The shipped models under a new version (same golden pair: the health check passes).
    let src = d.join("bundle-src");
    std::fs::create_dir_all(&src).unwrap();
    let shipped = tirp_e2e::repo_root().join("models/bundle");
    for e in std::fs::read_dir(&shipped).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, src.join(p.file_name().unwrap())).unwrap();
    }
    let mut spec: Value =
        serde_json::from_slice(&std::fs::read(src.join("ensemble.json")).unwrap()).unwrap();
    let old_version = spec["version"].as_str().unwrap().to_owned();
    spec["version"] = "9.9.9-swap".into();
    std::fs::write(
        src.join("ensemble.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    let bundle = d.join("new.tirpb");
    tirp(&[
        "bundle",
        "build",
        "--from-dir",
        src.to_str().unwrap(),
        "--board",
        "x86_64-dev",
        "--security-version",
        "1",
        "--version",
        "9.9.9-swap",
        "--key",
        key.with_extension("key.pem").to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]);

    let files = tirp_e2e::dicom_cohort(&d.join("cohort"), 20, 14);
    let data = d.join("tirpd");
    let pubkey = key.with_extension("pub.pem");
    let daemon = StationDaemon::start(&data, &["--trust", pubkey.to_str().unwrap()]);
    let port = daemon.dicom_port;
    let (first, last) = files.split_at(files.len() - 5);
    let first = first.to_vec();
    // Ingest keeps running through the flash and the activation.
    let sender = std::thread::spawn(move || {
        for f in &first {
            let o = storescu(port, &[], &[f]);
            assert!(
                o.status.success() && !text(&o).contains("Error"),
                "{}",
                text(&o)
            );
            std::thread::sleep(Duration::from_millis(40));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let out = tirp(&[
        "--port",
        &daemon.serial,
        "--non-interactive",
        "flash",
        bundle.to_str().unwrap(),
        "--activate",
        "--key",
        key.with_extension("key.pem").to_str().unwrap(),
    ]);
    assert!(out.contains("activated and marked good"), "{out}");
    sender.join().unwrap();
    let rest: Vec<&Path> = last.iter().map(PathBuf::as_path).collect();
    let o = storescu(port, &[], &rest);
    assert!(o.status.success(), "{}", text(&o));
    // The dashboard hears of a study just after its result is committed: wait for it.
    wait_for(
        "every study on the dashboard",
        Duration::from_secs(120),
        || {
            daemon
                .studies()
                .iter()
                .filter(|s| s["state"] != "queued")
                .count()
                >= files.len()
        },
    );
    let mut done = daemon.studies();
    let failed: Vec<&Value> = done.iter().filter(|s| s["state"] != "done").collect();
    assert!(failed.is_empty(), "{failed:?}");
    done.sort_by_key(|s| s["done_unix_ms"].as_u64());
    let versions: Vec<String> = done
        .iter()
        .map(|s| s["bundle"].as_str().unwrap_or("?").to_owned())
        .collect();
    let new = "deeptirp-edge 9.9.9-swap".to_owned();
    let old = format!("deeptirp-edge {old_version}");
    let first_new = versions
        .iter()
        .position(|v| *v == new)
        .expect("some studies on the new bundle");
    assert!(
        first_new > 0,
        "some studies on the old bundle: {versions:?}"
    );
    assert!(
        versions[..first_new].iter().all(|v| *v == old)
            && versions[first_new..].iter().all(|v| *v == new),
        "the engine swapped once, between studies: {versions:?}"
    );
    let (_, status) = daemon.get("/api/status");
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["bundle"], new.as_str(), "{status}");
    assert_eq!(status["slot"], "a", "{status}");
    // The auditor pulls the inference records over the same link into the audit store.
    let jsonl = d.join("box.jsonl");
    tirp(&[
        "--port",
        &daemon.serial,
        "--non-interactive",
        "logs",
        "pull",
        "--out",
        jsonl.to_str().unwrap(),
        "--state-dir",
        d.join("host-state").to_str().unwrap(),
        "--db",
        d.join("audit.sqlite").to_str().unwrap(),
    ]);
    let pulled = std::fs::read_to_string(&jsonl).unwrap();
    let inferences: Vec<Value> = pulled
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "inference")
        .collect();
    assert_eq!(inferences.len(), files.len(), "one pulled record per study");
    for r in &inferences {
        assert!(
            r["bundle_id"]
                .as_str()
                .unwrap()
                .starts_with("deeptirp-edge-"),
            "{r}"
        );
        // A study the localiser sent to review has no member scores.
        let members = if r["review"] == true { 0 } else { 3 };
        assert_eq!(r["member_scores"].as_array().unwrap().len(), members, "{r}");
        assert_eq!(r["study_key"].as_str().unwrap().len(), 32, "{r}");
    }
    assert!(daemon.terminate());
    assert_eq!(results(&data), files.len());
    assert_eq!(
        logged_inferences(&data),
        files.len(),
        "each study logged once"
    );
}

/// The settings file, the hot folder (only complete files; refusals kept with a reason) and
/// the storage guard (0xA700 while the disk is nearly full).
#[test]
fn settings_file_hot_folder_and_storage_guard() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let files = tirp_e2e::dicom_cohort(&d.join("cohort"), 20, 15);
    let hot = d.join("hot");
    let settings = d.join("tirpd.toml");
    std::fs::write(
        &settings,
        format!(
            "ae_title = \"EDGEBOX\"\nallow_ae = [\"DRSTATION\"]\nhot_folder = {:?}\n",
            hot.to_str().unwrap()
        ),
    )
    .unwrap();
    let data = d.join("tirpd");
    let daemon = StationDaemon::start(&data, &["--config", settings.to_str().unwrap()]);
    let port = daemon.dicom_port.to_string();
    let o = run(
        "echoscu",
        &["-aet", "DRSTATION", "-aec", "EDGEBOX", "127.0.0.1", &port],
        &[],
    );
    assert!(
        o.status.success(),
        "AE title from the settings file: {}",
        text(&o)
    );

    // Renamed in: taken at once. Written slowly in place: taken only when complete.
    std::fs::copy(&files[0], hot.join("a.dcm.tmp")).unwrap();
    std::fs::rename(hot.join("a.dcm.tmp"), hot.join("a.dcm")).unwrap();
    let bytes = std::fs::read(&files[1]).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(hot.join("slow.dcm")).unwrap();
        f.write_all(&bytes[..bytes.len() / 2]).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(600));
        f.write_all(&bytes[bytes.len() / 2..]).unwrap();
    }
    std::fs::write(hot.join("junk.dcm"), b"not a radiograph at all").unwrap();
    wait_for("the hot folder emptied", Duration::from_secs(30), || {
        ["a.dcm", "slow.dcm", "junk.dcm"]
            .iter()
            .all(|n| !hot.join(n).exists())
    });
    assert!(hot.join("processed/a.dcm").exists());
    assert!(
        hot.join("processed/slow.dcm").exists(),
        "taken whole, not half"
    );
    assert!(hot.join("failed/junk.dcm").exists());
    let reason = std::fs::read_to_string(hot.join("failed/junk.dcm.reason.txt")).unwrap();
    assert!(!reason.trim().is_empty());
    wait_for("both processed", Duration::from_secs(60), || {
        daemon
            .studies()
            .iter()
            .filter(|s| s["state"] == "done" && s["source"] == "hotfolder")
            .count()
            == 2
    });
    assert!(daemon.terminate());

    // A disk with less free space than the reserve: refused with 0xA700, still serving.
    let data = d.join("tirpd-full");
    let daemon = StationDaemon::start(&data, &["--min-free-mb", "1000000000"]);
    let o = storescu(daemon.dicom_port, &["-v"], &[&files[2]]);
    let t = text(&o);
    assert!(t.contains("Refused: OutOfResources"), "{t}");
    let port = daemon.dicom_port.to_string();
    let o = run(
        "echoscu",
        &["-aet", "DRSTATION", "-aec", "TIRPD", "127.0.0.1", &port],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(results(&data), 0);
    assert!(daemon.terminate());
}

/// Issue 5 at the station: with a localiser in the bundle, a radiograph where it finds no
/// lesion is shown as "no lesion localised — review", logged as such, and no result object
/// claiming a finding is sent; one where it finds the lesion is flagged from the found box.
#[test]
fn a_study_without_a_localised_lesion_is_flagged_for_review() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let bundle = d.join("bundle");
    let o = Command::new(bin("tirp"))
        .args(["predict", "fixture", "--localiser", "--out"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // A flat grey photograph as Secondary Capture: nothing for the localiser to find.
    let jpg = d.join("flat.jpg");
    image::GrayImage::from_pixel(256, 256, image::Luma([90u8]))
        .save(&jpg)
        .unwrap();
    let flat = d.join("flat.dcm");
    let o = run("img2dcm", &["-k", "PatientID=FLAT01"], &[&jpg, &flat]);
    assert!(o.status.success(), "{}", text(&o));
    let files = tirp_e2e::dicom_cohort(&d.join("cohort"), 20, 16);
    let station = StoreScp::start("STATION", free_port(), &d.join("station"));
    let dest = format!("STATION@127.0.0.1:{}", station.port);
    let data = d.join("tirpd");
    let daemon = StationDaemon::start(
        &data,
        &["--bundle", bundle.to_str().unwrap(), "--dest", &dest],
    );
    let o = storescu(daemon.dicom_port, &["-xy"], &[&flat]);
    assert!(
        o.status.success() && !text(&o).contains("Error"),
        "{}",
        text(&o)
    );
    let o = storescu(daemon.dicom_port, &[], &[&files[0]]);
    assert!(
        o.status.success() && !text(&o).contains("Error"),
        "{}",
        text(&o)
    );
    wait_for("both on the dashboard", Duration::from_secs(60), || {
        daemon
            .studies()
            .iter()
            .filter(|s| s["state"] == "done")
            .count()
            == 2
    });
    let shown = daemon.studies();
    let review = shown.iter().find(|s| s["patient_id"] == "FLAT01").unwrap();
    assert_eq!(review["flag"], "no lesion localised — review", "{review}");
    assert!(
        review["probability"].is_null() && review["pbt"].is_null(),
        "{review}"
    );
    let found = shown.iter().find(|s| s["patient_id"] != "FLAT01").unwrap();
    assert!(
        found["flag"].as_str().unwrap().starts_with("suspected"),
        "{found}"
    );
    // Only the classified study sends its three objects.
    wait_for("results at the station", Duration::from_secs(60), || {
        station.files().len() >= 3
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(station.files().len(), 3, "{:?}", station.files());
    assert!(daemon.terminate());
    let log = DevLog::open(&data.join("log"), LogOptions::default()).unwrap();
    let page = log.read_since(1, 10_000, 1 << 26).unwrap();
    let reviews: Vec<bool> = page
        .records
        .iter()
        .filter_map(|r| match serde_json::from_slice::<LogEntry>(&r.payload) {
            Ok(LogEntry::Inference(i)) => Some(i.review),
            _ => None,
        })
        .collect();
    let mut sorted = reviews.clone();
    sorted.sort();
    assert_eq!(sorted, [false, true], "{reviews:?}");
}
