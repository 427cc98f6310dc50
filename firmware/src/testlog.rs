//! Test helpers (the library's unit tests and `tirpd`'s): a `tracing` writer that keeps what
//! it is given, and the events a closure emits on this thread as JSON objects (the shape of
//! `tirpd --log-format json`).

use std::sync::{Arc, Mutex};

/// A subscriber's writer that keeps every byte in memory.
#[derive(Clone, Default)]
pub struct Buf(Arc<Mutex<Vec<u8>>>);

impl Buf {
    /// Everything written so far.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Buf {
        self.clone()
    }
}

/// Runs `f` with a JSON subscriber for this thread; returns (events, the raw lines).
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<serde_json::Value>, String) {
    let buf = Buf::default();
    let sub = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(buf.clone())
        .finish();
    let r = tracing::subscriber::with_default(sub, f);
    let raw = buf.contents();
    let events = raw
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (r, events, raw)
}
