//! The dashboard in a real browser: headless Chromium opens the study list with `?token=`,
//! the test publishes a study once the page has loaded and its live stream is connected,
//! and the DOM the browser built must then show that study's flag, which only the
//! server-sent event carried (it is in neither the served HTML nor the initial list).
//!
//! Chromium is driven over the DevTools protocol on `--remote-debugging-pipe` (fds 3/4,
//! NUL-separated JSON): `--dump-dom` cannot observe live updates (it dumps at the load event,
//! and with `--virtual-time-budget` it never returns while an EventSource is open).
//!
//! Skipped (with a message) only when no Chromium is installed; `TIRP_CHROMIUM` names one.

#![cfg(unix)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};
use tirp_firmware::daemon::dashboard::{
    Dashboard, DashboardConfig, StatusView, StudyState, StudyView, serve,
};

const TOKEN: &str = "browser-test-token-7f3a";
const LIVE_FLAG: &str = "suspected primary bone tumour";
const LIVE_PATIENT: &str = "LIVEUPDATE^PATIENT";

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TIRP_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

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

/// Chromium on `--remote-debugging-pipe`.
struct Cdp {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    next_id: u64,
    stderr_path: PathBuf,
}

impl Cdp {
    fn launch(chromium: &Path, profile: &Path, stderr_path: &Path) -> Cdp {
        let stderr = std::fs::File::create(stderr_path).unwrap();
        // The pipe protocol reads commands on fd 3 and writes replies on fd 4: hand it our
        // stdin/stdout pipes there (std cannot set fds 3/4 itself without unsafe code).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start chromium");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut msg = Vec::new();
            loop {
                msg.clear();
                match stdout.read_until(0, &mut msg) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if msg.last() == Some(&0) {
                    msg.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&msg)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Cdp {
            child,
            stdin,
            rx,
            next_id: 1,
            stderr_path: stderr_path.to_owned(),
        }
    }

    fn chromium_log(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let tail: Vec<&str> = s.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Sends a command (to the browser, or to a page's session) and waits for its reply.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.stdin.write_all(&bytes).unwrap();
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if v["id"] == json!(id) => {
                    if let Some(e) = v.get("error") {
                        panic!("{method}: {e}\nchromium:\n{}", self.chromium_log());
                    }
                    return v["result"].clone();
                }
                Ok(_) => {} // an event, or another reply
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{method}: no reply in 20 s\nchromium:\n{}",
                        self.chromium_log()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "{method}: chromium went away\nchromium:\n{}",
                        self.chromium_log()
                    )
                }
            }
        }
    }

    /// Evaluates `expr` in the page and returns its value.
    fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    fn dom(&mut self, session: &str) -> String {
        self.eval(session, "document.documentElement.outerHTML")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Polls `expr` until it is `true` or the timeout passes.
    fn wait_for(&mut self, session: &str, expr: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.eval(session, expr) == json!(true) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Cdp {
    fn drop(&mut self) {
        let id = self.next_id;
        let mut bytes = serde_json::to_vec(&json!({"id": id, "method": "Browser.close"})).unwrap();
        bytes.push(0);
        let _ = self.stdin.write_all(&bytes);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (the DevTools protocol's screenshots), without padding checks.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = s.bytes().filter(|c| *c != b'=').map(val).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for ch in digits.chunks(4) {
        let n = ch
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..ch.len()]);
    }
    out
}

/// With `TIRP_DASH_SCREENSHOTS=DIR`, saves what the browser shows (for reviewing the UI).
fn screenshot(cdp: &mut Cdp, session: &str, name: &str) {
    let Some(dir) = std::env::var_os("TIRP_DASH_SCREENSHOTS") else {
        return;
    };
    std::thread::sleep(Duration::from_millis(200));
    let r = cdp.call(
        Some(session),
        "Page.captureScreenshot",
        json!({"format": "png"}),
    );
    let path = Path::new(&dir).join(format!("{name}.png"));
    std::fs::write(&path, base64_decode(r["data"].as_str().unwrap())).unwrap();
    eprintln!("screenshot: {}", path.display());
}

fn raw_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
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
        let body = raw_get(addr, path);
        assert!(body.starts_with("HTTP/1.1 200"), "{path}: {body}");
        assert!(
            !body.contains(LIVE_FLAG) && !body.contains(LIVE_PATIENT),
            "{path}"
        );
    }

    let mut cdp = Cdp::launch(
        &chromium,
        &tmp.path().join("profile"),
        &tmp.path().join("chromium.log"),
    );
    let version = cdp.call(None, "Browser.getVersion", json!({}));
    eprintln!("browser: {}", version["product"]);
    let url = format!("http://{addr}/?token={TOKEN}");
    let target = cdp.call(None, "Target.createTarget", json!({"url": url}));
    let target_id = target["targetId"].as_str().unwrap().to_owned();
    let attached = cdp.call(
        None,
        "Target.attachToTarget",
        json!({"targetId": target_id, "flatten": true}),
    );
    let session = attached["sessionId"].as_str().unwrap().to_owned();
    cdp.call(
        Some(&session),
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
    );

    // Loaded (the list came through the cookie that ?token= set) and the live stream is open.
    let loaded = cdp.wait_for(
        &session,
        "document.body !== null && document.body.getAttribute('data-loaded') === '1' \
         && document.getElementById('live').textContent === 'live'",
        Duration::from_secs(20),
    );
    let dom = cdp.dom(&session);
    assert!(
        loaded,
        "the page never loaded and went live:\n{dom}\n{}",
        cdp.chromium_log()
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
    let href = cdp.eval(&session, "location.href");
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
    let seen = cdp.wait_for(
        &session,
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
    let dom = cdp.dom(&session);
    assert!(
        seen,
        "the live study never reached the DOM:\n{dom}\nchromium:\n{}",
        cdp.chromium_log()
    );
    let took = seen_at.duration_since(published.lock().unwrap().unwrap());
    eprintln!("publish → browser DOM: {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(dom.contains(LIVE_FLAG));
    // Newest first: the live study is above the earlier one.
    let order = cdp.eval(
        &session,
        "Array.prototype.map.call(document.querySelectorAll('li.study'), \
         function (e) { return e.getAttribute('data-id'); }).join(',')",
    );
    assert_eq!(order, json!("live01,0001"));
    screenshot(&mut cdp, &session, "list");
    // Its heat-map thumbnail loaded (through the cookie).
    assert!(cdp.wait_for(
        &session,
        "(function () { var i = document.querySelector('li.study[data-id=\"live01\"] img'); \
         return i !== null && i.complete && i.naturalWidth === 1; })()",
        Duration::from_secs(5),
    ));

    // The study page and the status page render with the cookie alone.
    cdp.call(
        Some(&session),
        "Page.navigate",
        json!({"url": format!("http://{addr}/studies/live01")}),
    );
    assert!(
        cdp.wait_for(
            &session,
            &format!(
                "(function () {{ var f = document.querySelector('.bigflag'); \
                 return f !== null && f.textContent === '{LIVE_FLAG}' \
                 && document.body.textContent.indexOf('PID-live01') >= 0; }})()"
            ),
            Duration::from_secs(10),
        ),
        "study page:\n{}",
        cdp.dom(&session)
    );
    screenshot(&mut cdp, &session, "study");
    cdp.call(
        Some(&session),
        "Page.navigate",
        json!({"url": format!("http://{addr}/status")}),
    );
    assert!(
        cdp.wait_for(
            &session,
            "document.body.getAttribute('data-loaded') === '1' \
             && document.body.textContent.indexOf('test-board-x1') >= 0 \
             && document.body.textContent.indexOf('NOT FOR DIAGNOSTIC USE') >= 0",
            Duration::from_secs(10),
        ),
        "status page:\n{}",
        cdp.dom(&session)
    );
    screenshot(&mut cdp, &session, "status");

    drop(cdp);
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}
