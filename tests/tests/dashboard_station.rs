//! The station dashboard in a real browser, fed by a real DR station: headless Chromium
//! (`tirp_e2e::browser`) opens a running `tirpd`'s study list with `?token=`, and only once
//! the page has loaded and its live stream is connected does dcmtk's `storescu` send one
//! synthetic study. The page, never reloaded, must then show that study's flag, probability
//! and patient ID — which were in neither the served HTML nor the list it loaded — and its
//! study page, reached by clicking the row, must show the heat-map image.
//!
//! Skipped (with a message) only when Chromium (`TIRP_CHROMIUM` names one) or `storescu`
//! (dcmtk) is not installed. Needs `cargo build -p tirp-host -p tirp-firmware --bins` first.
#![cfg(unix)]

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tirp_e2e::browser::{Browser, find_chromium};
use tirp_e2e::{StationDaemon, TEST_TOKEN, have};

const FLAGS: [&str; 2] = ["suspected primary bone tumour", "suspected bone infection"];
/// From `storescu` starting to the flag in the DOM: the study is analysed on the CPU
/// in between (well under a second on a dev machine).
const FLAG_LIMIT: Duration = Duration::from_secs(15);

/// Kills `tirpd` if the test fails before stopping it.
struct Daemon(Option<StationDaemon>);

impl Daemon {
    fn d(&self) -> &StationDaemon {
        self.0.as_ref().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            d.kill();
        }
    }
}

/// What the list page shows for the row of patient `pid`: `null` while there is none, else
/// its id, state class, flag, probability and patient ID texts.
fn row_js(pid: &str) -> String {
    format!(
        "(function () {{ var rows = document.querySelectorAll('li.study'); \
         for (var i = 0; i < rows.length; i++) {{ var r = rows[i]; \
           var p = r.querySelector('.pid'); \
           if (p === null || p.textContent !== 'ID {pid}') continue; \
           return {{ id: r.getAttribute('data-id'), cls: r.className, \
                     flag: r.querySelector('.flag').textContent, \
                     prob: r.querySelector('.prob').textContent, \
                     pid: p.textContent }}; }} \
         return null; }})()"
    )
}

#[test]
fn a_study_sent_by_storescu_appears_live_in_the_browser() {
    let Some(chromium) = find_chromium() else {
        eprintln!("SKIPPED dashboard_station: no chromium on PATH (set TIRP_CHROMIUM to one)");
        return;
    };
    if !have("storescu") {
        eprintln!("SKIPPED dashboard_station: storescu not installed (apt-get install dcmtk)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = tirp_e2e::dicom_cohort(&tmp.path().join("cohort"), 20, 31);
    let file = &files[0];
    // P0001_v1.dcm → patient ID P0001.
    let stem = file.file_stem().unwrap().to_str().unwrap();
    let pid = stem.split('_').next().unwrap().to_owned();
    assert!(pid.starts_with('P'), "{}", file.display());

    let daemon = Daemon(Some(StationDaemon::start(&tmp.path().join("tirpd"), &[])));
    let d = daemon.d();

    // Nothing the server sends for the page knows the study yet.
    let before = d.studies();
    for path in ["/", "/app.js", "/api/studies"] {
        let (status, body) = d.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains(&pid), "{path} already names {pid}: {body}");
    }

    let mut browser = Browser::launch(&chromium, &tmp.path().join("browser"));
    eprintln!("browser: {}", browser.version());
    browser.open(&format!(
        "http://127.0.0.1:{}/?token={TEST_TOKEN}",
        d.http_port
    ));
    // Loaded (the list came through the cookie that ?token= set) and the stream is open:
    // the page says so, and the daemon counts the EventSource.
    let live = browser.wait_for(
        "document.body !== null && document.body.getAttribute('data-loaded') === '1' \
         && document.getElementById('live').textContent === 'live'",
        Duration::from_secs(20),
    );
    assert!(
        live,
        "the page never loaded and went live:\n{}\n{}",
        browser.dom(),
        browser.log()
    );
    let t = Instant::now();
    let live_clients = loop {
        let (status, body) = d.get("/api/status");
        assert_eq!(status, 200, "{body}");
        let n = serde_json::from_str::<Value>(&body).unwrap()["live_clients"]
            .as_u64()
            .unwrap_or(0);
        if n >= 1 || t.elapsed() > Duration::from_secs(5) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(live_clients, 1, "one EventSource connected");
    // The DOM has the list the page loaded, and not the study.
    let rows = browser.eval("document.querySelectorAll('li.study').length");
    assert_eq!(rows, Value::from(before.len()), "{}", browser.dom());
    assert_eq!(browser.eval(&row_js(&pid)), Value::Null);
    let dom = browser.dom();
    assert!(dom.contains("NOT FOR DIAGNOSTIC USE"));
    assert!(!dom.contains(&pid), "{dom}");
    assert!(FLAGS.iter().all(|f| !dom.contains(f)), "{dom}");
    // A reload would lose this.
    browser.eval("window.tirpNotReloaded = true");

    // One study from the DR station; the page must show it on its own.
    let t0 = Instant::now();
    let storescu = Command::new("storescu")
        .args(["-aet", "DRSTATION", "-aec", "TIRPD", "127.0.0.1"])
        .arg(d.dicom_port.to_string())
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn storescu");
    let mut row_at = None;
    let mut seen = None;
    while t0.elapsed() < FLAG_LIMIT {
        let r = browser.try_eval(&row_js(&pid)).unwrap_or(Value::Null);
        if !r.is_null() {
            row_at.get_or_insert_with(|| t0.elapsed());
            if FLAGS.contains(&r["flag"].as_str().unwrap_or_default()) {
                seen = Some((t0.elapsed(), r));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent = storescu.wait_with_output().unwrap();
    let sent_text = format!(
        "{}{}",
        String::from_utf8_lossy(&sent.stdout),
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(
        sent.status.success() && !sent_text.contains("Error"),
        "storescu: {sent_text}"
    );
    let Some((took, row)) = seen else {
        panic!(
            "no flag for {pid} in the DOM within {FLAG_LIMIT:?} of storescu (row seen: \
             {row_at:?}):\n{}\nAPI: {:?}\n{}\ntirpd:\n{}",
            browser.dom(),
            d.studies(),
            browser.log(),
            d.stderr()
        );
    };
    eprintln!(
        "storescu start → row in the DOM: {:?}, → flag in the DOM: {took:?}",
        row_at.unwrap()
    );
    assert_eq!(
        browser.eval("window.tirpNotReloaded === true"),
        Value::Bool(true),
        "the page was reloaded"
    );
    assert_eq!(browser.eval_string("location.pathname"), "/");

    // What the DOM shows is what the daemon decided.
    let shown = d.studies();
    let id = row["id"].as_str().unwrap().to_owned();
    let s = shown
        .iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not in {shown:?}"));
    assert_eq!(s["state"], "done", "{s}");
    assert_eq!(s["patient_id"], pid.as_str(), "{s}");
    assert_eq!(row["flag"], s["flag"], "{row} vs {s}");
    assert_eq!(row["pid"].as_str().unwrap(), format!("ID {pid}"));
    let p = s["probability"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{s}");
    assert_eq!(
        row["prob"].as_str().unwrap(),
        format!("{:.1} %", p * 100.0),
        "{row} vs {s}"
    );
    let class = if s["pbt"] == true { "pbt" } else { "inf" };
    assert!(
        row["cls"].as_str().unwrap().split(' ').any(|c| c == class),
        "{row} vs {s}"
    );
    eprintln!(
        "{pid}: {} ({}), study {id}",
        row["flag"].as_str().unwrap(),
        row["prob"].as_str().unwrap()
    );
    browser.screenshot_if_asked("station-list");

    // Its study page, by clicking the row: the flag, and the heat-map image decoded.
    let clicked = browser.eval(&format!(
        "(function () {{ var a = document.querySelector('li.study[data-id=\"' + CSS.escape({}) \
         + '\"] a.row'); if (a === null) return false; a.click(); return true; }})()",
        Value::from(id.as_str())
    ));
    assert_eq!(clicked, Value::Bool(true), "{}", browser.dom());
    let study_page = browser.wait_for(
        &format!(
            "(function () {{ var f = document.querySelector('.bigflag'); \
             var i = document.querySelector('figure.heat img'); \
             return location.pathname === '/studies/' + encodeURIComponent({id}) \
             && f !== null && f.textContent === {flag} \
             && document.querySelector('.bigprob').textContent === 'probability ' + {prob} \
             && document.body.textContent.indexOf({pid}) >= 0 \
             && i !== null && i.complete && i.naturalWidth > 0; }})()",
            id = Value::from(id.as_str()),
            flag = row["flag"],
            prob = row["prob"],
            pid = Value::from(pid.as_str()),
        ),
        Duration::from_secs(10),
    );
    assert!(
        study_page,
        "study page:\n{}\n{}",
        browser.dom(),
        browser.log()
    );
    let size = browser.eval(
        "(function () { var i = document.querySelector('figure.heat img'); \
         return [i.naturalWidth, i.naturalHeight]; })()",
    );
    eprintln!("study page heat-map: {size}");
    browser.screenshot_if_asked("station-study");

    drop(browser);
    let mut daemon = daemon;
    assert!(daemon.0.take().unwrap().terminate(), "SIGTERM: clean exit");
}
