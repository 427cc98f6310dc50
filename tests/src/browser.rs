//! Headless Chromium driven over the DevTools protocol on `--remote-debugging-pipe`
//! (fds 3/4, NUL-separated JSON), for tests that must see what a real browser builds from
//! the dashboard: live updates included, which `--dump-dom` cannot observe (it dumps at the
//! load event, and with `--virtual-time-budget` it never returns while an EventSource is
//! open).
//!
//! ```no_run
//! # use std::time::Duration;
//! let chromium = tirp_e2e::browser::find_chromium().expect("chromium");
//! let dir = tempfile::tempdir().unwrap();
//! let mut b = tirp_e2e::browser::Browser::launch(&chromium, dir.path());
//! b.open("http://127.0.0.1:8080/");
//! assert!(b.wait_for("document.title !== ''", Duration::from_secs(5)));
//! let title = b.eval_string("document.title");
//! ```
//!
//! One browser, one page (tab). Dropping the [`Browser`] closes Chromium (and kills it if it
//! does not go within 5 s).

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long one protocol command may take before the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Chromium to use: `TIRP_CHROMIUM`, else the first of chromium, chromium-browser,
/// google-chrome or chrome on `PATH`; `None` when there is none (tests skip then).
pub fn find_chromium() -> Option<PathBuf> {
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

/// A headless Chromium with one page attached.
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    next_id: u64,
    stderr_path: PathBuf,
    session: String,
    /// Console messages and uncaught exceptions of the page, for failure messages.
    console: Vec<String>,
}

impl Browser {
    /// Starts Chromium with its profile and stderr log (`chromium.log`) under `dir`, and
    /// attaches to a blank 1280×800 page.
    pub fn launch(chromium: &Path, dir: &Path) -> Browser {
        std::fs::create_dir_all(dir).expect("browser dir");
        let profile = dir.join("profile");
        let stderr_path = dir.join("chromium.log");
        let stderr = std::fs::File::create(&stderr_path).expect("chromium.log");
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
        let mut b = Browser {
            child,
            stdin,
            rx,
            next_id: 1,
            stderr_path,
            session: String::new(),
            console: Vec::new(),
        };
        let target = b.browser_call("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = b.browser_call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b.call("Runtime.enable", json!({}));
        b.call("Page.enable", json!({}));
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    /// The browser's product string (`Chrome/…`).
    pub fn version(&mut self) -> String {
        self.browser_call("Browser.getVersion", json!({}))["product"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The last lines of Chromium's stderr and the page's console, for failure messages.
    pub fn log(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let tail: Vec<&str> = s.lines().rev().take(30).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        format!(
            "chromium stderr:\n{tail}\npage console:\n{}",
            self.console.join("\n")
        )
    }

    /// Sends a protocol command to the page; panics on a protocol error.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(&session), method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}\n{}", self.log()))
    }

    /// Sends a protocol command to the browser itself; panics on a protocol error.
    pub fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(None, method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}\n{}", self.log()))
    }

    /// Sends a command and waits for its reply: `Err` with the protocol error. Panics when
    /// Chromium does not answer in time or has gone.
    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        if let Err(e) = self
            .stdin
            .write_all(&bytes)
            .and_then(|()| self.stdin.flush())
        {
            panic!("{method}: cannot write to chromium: {e}\n{}", self.log());
        }
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if v["id"] == json!(id) => {
                    return match v.get("error") {
                        Some(e) => Err(e.clone()),
                        None => Ok(v["result"].clone()),
                    };
                }
                Ok(v) => self.event(&v),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{method}: no reply in {CALL_TIMEOUT:?}\n{}", self.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{method}: chromium went away\n{}", self.log())
                }
            }
        }
    }

    /// Keeps what the page logged (console, uncaught exceptions).
    fn event(&mut self, v: &Value) {
        let line = match v["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = v["params"]["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| match &x["value"] {
                                Value::String(s) => s.clone(),
                                Value::Null => x["description"].as_str().unwrap_or("").to_owned(),
                                other => other.to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                format!("console.{}: {}", v["params"]["type"], args.join(" "))
            }
            Some("Runtime.exceptionThrown") => {
                let d = &v["params"]["exceptionDetails"];
                format!(
                    "exception: {} {}",
                    d["text"],
                    d["exception"]["description"].as_str().unwrap_or("")
                )
            }
            _ => return,
        };
        if self.console.len() < 200 {
            self.console.push(line);
        }
    }

    /// Navigates the page to `url` and waits until its document has loaded
    /// (`readyState === 'complete'`, scripts deferred to it included).
    pub fn open(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}));
        if let Some(e) = r["errorText"].as_str() {
            panic!("open {url}: {e}\n{}", self.log());
        }
        assert!(
            self.wait_for("document.readyState === 'complete'", CALL_TIMEOUT),
            "open {url}: not loaded in {CALL_TIMEOUT:?}\n{}",
            self.log()
        );
    }

    /// Evaluates `js` in the page: its value (as JSON), or `Err` with the exception or
    /// protocol error (a page being replaced has no context to evaluate in, for a moment).
    pub fn try_eval(&mut self, js: &str) -> Result<Value, String> {
        let session = self.session.clone();
        let r = self
            .send(
                Some(&session),
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true}),
            )
            .map_err(|e| e.to_string())?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(ex["exception"]["description"]
                .as_str()
                .map_or_else(|| ex.to_string(), str::to_owned));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluates `js` in the page and returns its value (as JSON); panics if it throws.
    pub fn eval(&mut self, js: &str) -> Value {
        self.try_eval(js)
            .unwrap_or_else(|e| panic!("evaluate {js}: {e}\n{}", self.log()))
    }

    /// [`Browser::eval`] of an expression that yields a string (`""` if it does not).
    pub fn eval_string(&mut self, js: &str) -> String {
        self.eval(js).as_str().unwrap_or_default().to_owned()
    }

    /// The page's current DOM, serialised.
    pub fn dom(&mut self) -> String {
        self.try_eval("document.documentElement.outerHTML")
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Polls the predicate `js` (every 20 ms) until it is `true`; `false` when `timeout`
    /// passes first. A predicate that throws counts as not yet true.
    pub fn wait_for(&mut self, js: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.try_eval(js) == Ok(json!(true)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A PNG of what the page shows.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        base64_decode(r["data"].as_str().unwrap_or_default())
    }

    /// With `TIRP_DASH_SCREENSHOTS=DIR`, saves a screenshot as `DIR/{name}.png` (for
    /// reviewing the UI); does nothing otherwise.
    pub fn screenshot_if_asked(&mut self, name: &str) {
        let Some(dir) = std::env::var_os("TIRP_DASH_SCREENSHOTS") else {
            return;
        };
        std::thread::sleep(Duration::from_millis(200));
        let png = self.screenshot();
        let path = Path::new(&dir).join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let id = self.next_id;
        let mut bytes = serde_json::to_vec(&json!({"id": id, "method": "Browser.close"})).unwrap();
        bytes.push(0);
        let _ = self.stdin.write_all(&bytes);
        let _ = self.stdin.flush();
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

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::base64_decode("aGVsbG8="), b"hello");
        assert_eq!(super::base64_decode("aGk="), b"hi");
        assert_eq!(super::base64_decode("YWJj"), b"abc");
    }
}
