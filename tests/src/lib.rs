//! Helpers for the end-to-end tests in `tests/tests/`.

pub mod browser;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary (`tirp`, `tirpd`) built into the same target directory as
/// the running test (`cargo test --workspace` builds every package's binaries).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned()
}

/// A running `tirpd` on the x86_64-dev profile, serving a pseudo-terminal.
pub struct Tirpd {
    pub child: Child,
    /// The pseudo-terminal the host opens.
    pub port: String,
}

impl Tirpd {
    /// Starts `tirpd` on `data`, trusting `trust`, with `extra` arguments; returns once it
    /// serves (it resolves a pending trial, golden inference included, before that).
    pub fn start(data: &Path, trust: &Path, extra: &[&str]) -> Self {
        let _ = std::fs::remove_file(data.join("serial-port"));
        // Tests run side by side: any free DICOM and dashboard port unless one is asked for.
        let mut ports = Vec::new();
        if !extra.contains(&"--dicom-port") {
            ports.extend(["--dicom-port", "0", "--dicom-addr", "127.0.0.1"]);
        }
        if !extra.contains(&"--http-addr") {
            ports.extend(["--http-addr", "127.0.0.1:0"]);
        }
        let child = Command::new(bin("tirpd"))
            .arg("--board")
            .arg(repo_root().join("boards/x86_64-dev.toml"))
            .arg("--data-dir")
            .arg(data)
            .args(["--serial", "/nonexistent/tirp-test-port", "--trust"])
            .arg(trust)
            .args(&ports)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tirpd");
        let t0 = Instant::now();
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(data.join("serial-port"))
                && !p.is_empty()
            {
                break p;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "tirpd did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        Self { child, port }
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Whether a system tool is installed (tests that need dcmtk/dicom3tools skip without it).
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether all of `tools` are installed; names the first missing one (and `install`) if not.
pub fn have_all(tools: &[&str], install: &str) -> bool {
    for t in tools {
        if !have(t) {
            eprintln!("skipped: {t} not installed ({install})");
            return false;
        }
    }
    true
}

/// A command's stdout then stderr, for assertion messages and greps.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// dcmtk `storescu` from AE DRSTATION to TIRPD at 127.0.0.1:`port`, with `extra` options.
pub fn storescu(port: u16, extra: &[&str], files: &[&Path]) -> std::process::Output {
    let p = port.to_string();
    let mut args = vec!["-aet", "DRSTATION", "-aec", "TIRPD"];
    args.extend_from_slice(extra);
    args.extend(["127.0.0.1", p.as_str()]);
    Command::new("storescu")
        .args(&args)
        .args(files)
        .output()
        .unwrap()
}

/// Polls `done` every 100 ms; fails the test naming `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A dcmtk `storescp` standing in for the station's own SCP or the PACS.
pub struct StoreScp {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl StoreScp {
    pub fn start(ae: &str, port: u16, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new("storescp")
            .args(["--aetitle", ae, "-od"])
            .arg(dir)
            .args(["+xa", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn storescp");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "storescp did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        StoreScp {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    /// Files received so far.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `tirpd` serving DR stations: DICOM node and dashboard on free ports, stderr kept in
/// `DATA/tirpd.stderr` (tests grep it for patient data).
pub struct StationDaemon {
    pub child: Child,
    pub data: PathBuf,
    pub dicom_port: u16,
    pub http_port: u16,
    pub token: String,
    pub stdout: PathBuf,
    /// The provisioning link's pseudo-terminal.
    pub serial: String,
}

pub const TEST_TOKEN: &str = "0123456789abcdef0123456789abcdef";

impl StationDaemon {
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        std::fs::create_dir_all(data).unwrap();
        for f in ["serial-port", "dicom-port", "http-port"] {
            let _ = std::fs::remove_file(data.join(f));
        }
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("tirpd.stderr"))
            .unwrap();
        let stdout_path = data.join("tirpd.stdout");
        let stdout = std::fs::File::create(&stdout_path).unwrap();
        let child = Command::new(bin("tirpd"))
            .arg("--board")
            .arg(repo_root().join("boards/x86_64-dev.toml"))
            .arg("--data-dir")
            .arg(data)
            .args([
                "--serial",
                "/nonexistent/tirp-test-port",
                "--dicom-addr",
                "127.0.0.1",
                "--dicom-port",
                "0",
                "--http-addr",
                "127.0.0.1:0",
                "--token",
                TEST_TOKEN,
            ])
            .args(extra)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn tirpd");
        let t0 = Instant::now();
        let read = |name: &str| {
            std::fs::read_to_string(data.join(name))
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
        };
        let mut child = child;
        loop {
            if std::fs::read_to_string(data.join("serial-port")).is_ok_and(|p| !p.is_empty())
                && let (Some(d), Some(h)) = (read("dicom-port"), read("http-port"))
            {
                return StationDaemon {
                    child,
                    data: data.to_owned(),
                    dicom_port: d,
                    http_port: h,
                    token: TEST_TOKEN.into(),
                    stdout: stdout_path,
                    serial: std::fs::read_to_string(data.join("serial-port")).unwrap_or_default(),
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "tirpd exited with {status}: {}",
                    std::fs::read_to_string(data.join("tirpd.stderr")).unwrap_or_default()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "tirpd did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// GET `path` on the dashboard with the token; (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http_port, path, Some(&self.token))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.data.join("tirpd.stderr")).unwrap_or_default()
    }

    /// The dashboard API's study list.
    pub fn studies(&self) -> Vec<serde_json::Value> {
        let (status, body) = self.get("/api/studies");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v.as_array()
            .or_else(|| v["studies"].as_array())
            .cloned()
            .unwrap_or_default()
    }

    /// SIGTERM, then waits (up to 30 s) for a clean exit; returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        unsafe_kill(self.child.id(), 15);
        let t0 = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.success();
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a power cut, as far as the daemon can tell.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for StationDaemon {
    /// A failed test must not leave a daemon behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

/// A minimal HTTP/1.1 GET (the dashboard's JSON API); (status, body).
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect dashboard");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A synthetic DX cohort made by the real `tirp cohort generate --format dicom`; its DICOM
/// files, sorted.
pub fn dicom_cohort(dir: &Path, patients: usize, seed: u64) -> Vec<PathBuf> {
    let o = Command::new(bin("tirp"))
        .args(["cohort", "generate", "--format", "dicom", "--out"])
        .arg(dir)
        .args([
            "--patients",
            &patients.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .output()
        .expect("run tirp");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tirp_firmware::dicom::dicom_files(&[dir.join("images")]).expect("list the cohort")
}
