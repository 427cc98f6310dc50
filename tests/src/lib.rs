//! Helpers for the end-to-end tests in `tests/tests/`.

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
        let child = Command::new(bin("tirpd"))
            .arg("--board")
            .arg(repo_root().join("boards/x86_64-dev.toml"))
            .arg("--data-dir")
            .arg(data)
            .args(["--serial", "/nonexistent/tirp-test-port", "--trust"])
            .arg(trust)
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
