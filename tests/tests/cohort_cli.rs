//! `tirp cohort …` end to end: determinism across runs, preview, difficulty, bad input.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use tirp_e2e::bin;

fn tirp(args: &[&str]) -> std::process::Output {
    Command::new(bin("tirp"))
        .args(args)
        .output()
        .expect("run tirp")
}

/// SHA-256 of every file under `dir`, by relative path.
fn hashes(dir: &Path) -> BTreeMap<String, String> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(
                    rel,
                    hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap())),
                );
            }
        }
    }
    out
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str| {
        let dir = tmp.path().join(name);
        let o = tirp(&[
            "cohort",
            "generate",
            "--out",
            dir.to_str().unwrap(),
            "--seed",
            seed,
            "--patients",
            "60",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        hashes(&dir)
    };
    let a = run("a", "11");
    let b = run("b", "11");
    let c = run("c", "12");
    assert!(
        a.len() > 100,
        "expected labels, manifest and ~126 images, got {}",
        a.len()
    );
    assert!(a.keys().any(|k| k.ends_with(".png")));
    assert_eq!(a, b, "same seed must give the same bytes");
    assert_ne!(a.get("labels.csv"), c.get("labels.csv"));

    // Preview and difficulty work on what was generated.
    let labels = tmp.path().join("a/labels.csv");
    let sheet = tmp.path().join("sheet.png");
    let o = tirp(&[
        "cohort",
        "preview",
        "--labels",
        labels.to_str().unwrap(),
        "--out",
        sheet.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = image::open(&sheet).unwrap();
    assert!(img.width() > 600 && img.height() > 600);
    let o = tirp(&[
        "--json",
        "cohort",
        "difficulty",
        "--labels",
        labels.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert!(
        rows.iter()
            .all(|r| (0.0..=1.0).contains(&r["auc"].as_f64().unwrap()))
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tirp(&[
        "cohort",
        "generate",
        "--out",
        tmp.path().to_str().unwrap(),
        "--patients",
        "3",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("too small"));
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "path,patient_id,label\nx.png,P1,maybe\n").unwrap();
    let o = tirp(&["cohort", "difficulty", "--labels", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("row 2") && err.contains("label"), "{err}");
}

/// `--format dicom` writes DX files that dicom3tools' validator accepts without errors and
/// that dcmtk reads with the clinical header the daemon will use.
#[test]
fn dicom_cohort_passes_dciodvfy() {
    let have = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !(have("dciodvfy") && have("dcmdump")) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install dicom3tools and dcmtk"
        );
        eprintln!("skipping: dciodvfy/dcmdump not installed (apt-get install dicom3tools dcmtk)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dcm");
    let o = tirp(&[
        "cohort",
        "generate",
        "--out",
        dir.to_str().unwrap(),
        "--patients",
        "20",
        "--format",
        "dicom",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for centre in 1..=3 {
        let first = std::fs::read_dir(dir.join(format!("images/c{centre}")))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let v = Command::new("dciodvfy").arg(&first).output().unwrap();
        let report =
            String::from_utf8_lossy(&v.stderr).into_owned() + &String::from_utf8_lossy(&v.stdout);
        assert!(!report.contains("Error"), "{}: {report}", first.display());
        let d = Command::new("dcmdump").arg(&first).output().unwrap();
        let dump = String::from_utf8_lossy(&d.stdout);
        let photometric = if centre == 3 {
            "MONOCHROME1"
        } else {
            "MONOCHROME2"
        };
        assert!(dump.contains(photometric), "{dump}");
        assert!(
            dump.contains("PatientAge")
                && dump.contains("BodyPartExamined")
                && dump.contains("PatientSex")
        );
    }
    let labels = std::fs::read_to_string(dir.join("labels.csv")).unwrap();
    assert!(labels.lines().nth(1).unwrap().contains(".dcm"));
}
