//! The dashboard in a real browser: headless Chromium opens the study list with `?token=`,
//! the test publishes a study once the page has loaded and its live stream is connected,
//! and the DOM the browser built must then show that study's flag, which only the
//! server-sent event carried (it is in neither the served HTML nor the initial list).
//!
//! Chromium is driven by `tirp_e2e::browser` (DevTools protocol over
//! `--remote-debugging-pipe`). `dashboard_station.rs` does the same against a real `tirpd`
//! fed by dcmtk's `storescu`; this one drives the `Dashboard` directly, so it controls every
//! field and the timing of the publish.
//!
//! Skipped (with a message) only when no Chromium is installed; `TIRP_CHROMIUM` names one.

#![cfg(unix)]

use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tirp_e2e::browser::{Browser, find_chromium};
use tirp_e2e::http_get;
use tirp_firmware::daemon::dashboard::{
    Dashboard, DashboardConfig, StatusView, StudyState, StudyView, serve,
};

const TOKEN: &str = "browser-test-token-7f3a";
const LIVE_FLAG: &str = "suspected primary bone tumour";
const LIVE_PATIENT: &str = "LIVEUPDATE^PATIENT";

fn study(id: &str, received: u64, flag: &str, pbt: bool, patient: &str) -> StudyView {
    StudyView {
        id: id.into(),
        received_unix_ms: received,
        done_unix_ms: Some(received + 850),
        state: StudyState::Done,
        patient_name: Some(patient.into()),
        patient_id: Some(format!("PID-{id}")),
        accession: Some("ACC-1".into()),
        body_part: Some("FEMUR".into()),
        source: "dicom:DRSTATION".into(),
        flag: Some(flag.into()),
        pbt: Some(pbt),
        probability: Some(if pbt { 0.91 } else { 0.12 }),
        threshold: Some(0.5),
        bundle: Some("tirp-ensemble 1.0.0".into()),
        backend: Some("cpu".into()),
        latency_ms: Some(850.0),
        error: None,
        has_heatmap: true,
    }
}

/// A 1×1 PNG (red pixel) for the thumbnails.
fn tiny_png() -> Arc<Vec<u8>> {
    Arc::new(
        hex::decode(
            "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de\
             0000000c49444154789c63f8cfc0000003010100c9fe92ef0000000049454e44ae426082",
        )
        .unwrap(),
    )
}

fn get(port: u16, path: &str) -> String {
    let (status, body) = http_get(port, path, Some(TOKEN));
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[test]
fn live_update_reaches_the_browser_dom() {
    let Some(chromium) = find_chromium() else {
        eprintln!("SKIPPED dashboard_browser: no chromium on PATH (set TIRP_CHROMIUM to one)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();

    let dash = Arc::new(Dashboard::new(
        200,
        Box::new(|| StatusView {
            device_id: "dev-browser".into(),
            board: "test-board-x1".into(),
            firmware_version: "9.9.9".into(),
            queue_depth: 4,
            ..StatusView::default()
        }),
    ));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Already there when the page loads.
    dash.publish(
        study(
            "0001",
            now_ms - 60_000,
            "suspected bone infection",
            false,
            "EARLIER^PATIENT",
        ),
        Some(tiny_png()),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = DashboardConfig::new("127.0.0.1:0".parse().unwrap(), TOKEN);
    let (addr, server) = serve(dash.clone(), cfg, stop.clone()).unwrap();

    // What the server sends for the page does not contain the live study.
    for path in ["/", "/app.js", "/api/studies"] {
        let body = get(addr.port(), path);
        assert!(
            !body.contains(LIVE_FLAG) && !body.contains(LIVE_PATIENT),
            "{path}"
        );
    }

    let mut browser = Browser::launch(&chromium, &tmp.path().join("browser"));
    eprintln!("browser: {}", browser.version());
    browser.open(&format!("http://{addr}/?token={TOKEN}"));

    // Loaded (the list came through the cookie that ?token= set) and the live stream is open.
    let loaded = browser.wait_for(
        "document.body !== null && document.body.getAttribute('data-loaded') === '1' \
         && document.getElementById('live').textContent === 'live'",
        Duration::from_secs(20),
    );
    let dom = browser.dom();
    assert!(
        loaded,
        "the page never loaded and went live:\n{dom}\n{}",
        browser.log()
    );
    let t = Instant::now();
    while dash.live_clients() == 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(dash.live_clients(), 1, "one EventSource connected");
    assert!(dom.contains("NOT FOR DIAGNOSTIC USE"));
    assert!(dom.contains("suspected bone infection") && dom.contains("EARLIER^PATIENT"));
    assert!(
        !dom.contains(LIVE_FLAG) && !dom.contains(LIVE_PATIENT),
        "{dom}"
    );
    // The token left the address bar.
    let href = browser.eval("location.href");
    assert_eq!(href, json!(format!("http://{addr}/")));

    // Publish from another thread after a delay, as the daemon would.
    let published = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let publisher = {
        let dash = dash.clone();
        let published = published.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            *published.lock().unwrap() = Some(Instant::now());
            dash.publish(
                study("live01", now_ms, LIVE_FLAG, true, LIVE_PATIENT),
                Some(tiny_png()),
            );
        })
    };
    let seen = browser.wait_for(
        &format!(
            "(function () {{ var r = document.querySelector('li.study[data-id=\"live01\"]'); \
             return r !== null && r.classList.contains('pbt') \
             && r.querySelector('.flag').textContent === '{LIVE_FLAG}' \
             && r.querySelector('.pname').textContent === '{LIVE_PATIENT}'; }})()"
        ),
        Duration::from_secs(10),
    );
    let seen_at = Instant::now();
    publisher.join().unwrap();
    let dom = browser.dom();
    assert!(
        seen,
        "the live study never reached the DOM:\n{dom}\n{}",
        browser.log()
    );
    let took = seen_at.duration_since(published.lock().unwrap().unwrap());
    eprintln!("publish → browser DOM: {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(dom.contains(LIVE_FLAG));
    // Newest first: the live study is above the earlier one.
    let order = browser.eval(
        "Array.prototype.map.call(document.querySelectorAll('li.study'), \
         function (e) { return e.getAttribute('data-id'); }).join(',')",
    );
    assert_eq!(order, json!("live01,0001"));
    browser.screenshot_if_asked("list");
    // Its heat-map thumbnail loaded (through the cookie).
    assert!(browser.wait_for(
        "(function () { var i = document.querySelector('li.study[data-id=\"live01\"] img'); \
         return i !== null && i.complete && i.naturalWidth === 1; })()",
        Duration::from_secs(5),
    ));

    // The study page and the status page render with the cookie alone.
    browser.open(&format!("http://{addr}/studies/live01"));
    assert!(
        browser.wait_for(
            &format!(
                "(function () {{ var f = document.querySelector('.bigflag'); \
                 return f !== null && f.textContent === '{LIVE_FLAG}' \
                 && document.body.textContent.indexOf('PID-live01') >= 0; }})()"
            ),
            Duration::from_secs(10),
        ),
        "study page:\n{}",
        browser.dom()
    );
    browser.screenshot_if_asked("study");
    browser.open(&format!("http://{addr}/status"));
    assert!(
        browser.wait_for(
            "document.body.getAttribute('data-loaded') === '1' \
             && document.body.textContent.indexOf('test-board-x1') >= 0 \
             && document.body.textContent.indexOf('NOT FOR DIAGNOSTIC USE') >= 0",
            Duration::from_secs(10),
        ),
        "status page:\n{}",
        browser.dom()
    );
    browser.screenshot_if_asked("status");

    drop(browser);
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}
