//! The durable queue of received radiographs: what makes "never a lost study" and "processed
//! exactly once" hold across crashes and restarts.
//!
//! Layout under the spool root:
//! - `tmp/`: files being written (never read back; cleared on open);
//! - `incoming/<id>.dcm` (+ `<id>.json`, its metadata): stored and acknowledged, waiting; the
//!   rename of the `.dcm` into `incoming/` (after `fsync` of file and directory) is the point
//!   where an instance is stored, and only then does the sender get its C-STORE response;
//! - `results/<id>.json`: the outcome; its atomic rename is the point where an instance
//!   counts as processed. On open, an `incoming/` entry that already has a result is finished
//!   (not processed again); one without is queued again.
//! - `failed/<id>.dcm`: sources that could not be processed, kept for inspection.
//!
//! `<id>` is derived from the SOP Instance UID, so a station re-sending an instance it never
//! saw acknowledged does not get it processed twice.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unreadable metadata: {error}")]
    Meta { path: PathBuf, error: String },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SpoolError {
    let context = context.into();
    move |source| SpoolError::Io { context, source }
}

/// The id of an instance on this box: 16 hex digits of SHA-256 of its SOP Instance UID.
pub fn instance_id(sop_instance_uid: &str) -> String {
    hex::encode(&Sha256::digest(sop_instance_uid.trim_end_matches('\0').trim().as_bytes())[..8])
}

/// What is known about an entry when it is stored (no patient data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub id: String,
    /// First byte of the C-STORE, or when the hot folder picked the file up.
    pub received_unix_ms: u64,
    /// `dicom:<calling AE>` or `hotfolder`.
    pub source: String,
}

/// A stored instance waiting for (or under) processing.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub meta: EntryMeta,
    pub path: PathBuf,
}

/// What [`Spool::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Queued,
    /// Already queued or processed: acknowledged, not queued again.
    Duplicate,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Entry>,
    /// Ids queued or being processed.
    pending: HashSet<String>,
}

pub struct Spool {
    root: PathBuf,
    state: Mutex<State>,
    ready: Condvar,
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("sync {}", dir.display())))
}

/// Writes `bytes` to `dir/name` durably: temporary file, fsync, rename, fsync of the directory.
pub fn write_durably(
    tmp_dir: &Path,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), SpoolError> {
    let tmp = tmp_dir.join(format!("{name}.{}.tmp", std::process::id()));
    let mut f = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("write {}", tmp.display())))?;
    drop(f);
    let dest = dir.join(name);
    std::fs::rename(&tmp, &dest).map_err(io_err(format!("rename into {}", dest.display())))?;
    sync_dir(dir)
}

impl Spool {
    /// Opens (creating) the spool and recovers after a crash: clears `tmp/`, finishes entries
    /// that have a result (`finished` is told their ids, for post-commit steps such as the
    /// device log), and queues the rest oldest first.
    pub fn open(root: &Path, finished: &mut dyn FnMut(&str)) -> Result<Spool, SpoolError> {
        for d in ["tmp", "incoming", "results", "failed"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err(format!("create {}", p.display())))?;
        }
        let tmp = root.join("tmp");
        for e in std::fs::read_dir(&tmp).map_err(io_err(format!("read {}", tmp.display())))? {
            let p = e.map_err(io_err("read tmp"))?.path();
            std::fs::remove_file(&p).map_err(io_err(format!("remove {}", p.display())))?;
        }
        let spool = Spool {
            root: root.to_owned(),
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
        };
        let incoming = root.join("incoming");
        let mut entries = Vec::new();
        for e in
            std::fs::read_dir(&incoming).map_err(io_err(format!("read {}", incoming.display())))?
        {
            let path = e.map_err(io_err("read incoming"))?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".dcm"))
                .map(str::to_owned)
            else {
                continue;
            };
            if spool.result_path(&id).exists() {
                finished(&id);
                spool.remove_incoming(&id)?;
                continue;
            }
            let meta = spool.read_meta(&id, &path)?;
            entries.push(Entry { meta, path });
        }
        // Metadata without its file: the crash came before the store completed (never acked).
        for e in
            std::fs::read_dir(&incoming).map_err(io_err(format!("read {}", incoming.display())))?
        {
            let p = e.map_err(io_err("read incoming"))?.path();
            if p.extension().is_some_and(|x| x == "json") && !p.with_extension("dcm").exists() {
                std::fs::remove_file(&p).map_err(io_err(format!("remove {}", p.display())))?;
            }
        }
        entries.sort_by(|a, b| {
            (a.meta.received_unix_ms, &a.meta.id).cmp(&(b.meta.received_unix_ms, &b.meta.id))
        });
        {
            let mut st = spool.state.lock().expect("spool lock");
            for e in entries {
                st.pending.insert(e.meta.id.clone());
                st.queue.push_back(e);
            }
        }
        Ok(spool)
    }

    fn read_meta(&self, id: &str, dcm: &Path) -> Result<EntryMeta, SpoolError> {
        let json = dcm.with_extension("json");
        match std::fs::read(&json) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SpoolError::Meta {
                path: json.clone(),
                error: e.to_string(),
            }),
            // Stored by an older layout or the metadata was lost: the file's time will do.
            Err(_) => {
                let mtime = std::fs::metadata(dcm)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64);
                Ok(EntryMeta {
                    id: id.to_owned(),
                    received_unix_ms: mtime,
                    source: "unknown".into(),
                })
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn result_path(&self, id: &str) -> PathBuf {
        self.root.join("results").join(format!("{id}.json"))
    }

    /// Where an entry's extra result files (the heat-map PNG, ...) go: `results/<id>.<ext>`.
    pub fn result_file(&self, id: &str, ext: &str) -> PathBuf {
        self.root.join("results").join(format!("{id}.{ext}"))
    }

    /// Stores one instance durably and queues it, unless it is already queued or processed.
    pub fn put(&self, meta: EntryMeta, file: &[u8]) -> Result<PutOutcome, SpoolError> {
        let id = meta.id.clone();
        {
            let st = self.state.lock().expect("spool lock");
            if st.pending.contains(&id) || self.result_path(&id).exists() {
                return Ok(PutOutcome::Duplicate);
            }
        }
        let incoming = self.root.join("incoming");
        let tmp = self.root.join("tmp");
        let json = serde_json::to_vec(&meta).expect("metadata serialises");
        write_durably(&tmp, &incoming, &format!("{id}.json"), &json)?;
        write_durably(&tmp, &incoming, &format!("{id}.dcm"), file)?;
        let mut st = self.state.lock().expect("spool lock");
        // Two associations racing with the same instance: the second finds it pending.
        if !st.pending.insert(id.clone()) {
            return Ok(PutOutcome::Duplicate);
        }
        st.queue.push_back(Entry {
            meta,
            path: incoming.join(format!("{id}.dcm")),
        });
        self.ready.notify_one();
        Ok(PutOutcome::Queued)
    }

    /// The next entry to process, waiting up to `wait`; `None` on time-out or when `stop` is
    /// set. The entry stays pending until [`Spool::commit`] or [`Spool::fail`].
    pub fn next(&self, wait: Duration, stop: &AtomicBool) -> Option<Entry> {
        let mut st = self.state.lock().expect("spool lock");
        let deadline = std::time::Instant::now() + wait;
        loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(e) = st.queue.pop_front() {
                return Some(e);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            let slice = (deadline - now).min(Duration::from_millis(200));
            st = self.ready.wait_timeout(st, slice).expect("spool lock").0;
        }
    }

    /// Entries waiting (not counting one being processed).
    pub fn depth(&self) -> usize {
        self.state.lock().expect("spool lock").queue.len()
    }

    /// Records the outcome of `id` (the commit point) and removes its source.
    pub fn commit(&self, id: &str, result: &[u8]) -> Result<(), SpoolError> {
        write_durably(
            &self.root.join("tmp"),
            &self.root.join("results"),
            &format!("{id}.json"),
            result,
        )?;
        self.remove_incoming(id)?;
        self.state.lock().expect("spool lock").pending.remove(id);
        Ok(())
    }

    /// Records a failure of `id` (the commit point as well) and keeps its source in `failed/`.
    pub fn fail(&self, id: &str, result: &[u8]) -> Result<(), SpoolError> {
        let src = self.root.join("incoming").join(format!("{id}.dcm"));
        let dst = self.root.join("failed").join(format!("{id}.dcm"));
        if src.exists() {
            std::fs::rename(&src, &dst)
                .map_err(io_err(format!("move {} to failed/", src.display())))?;
            sync_dir(&self.root.join("failed"))?;
        }
        self.commit(id, result)
    }

    fn remove_incoming(&self, id: &str) -> Result<(), SpoolError> {
        let incoming = self.root.join("incoming");
        for ext in ["dcm", "json"] {
            let p = incoming.join(format!("{id}.{ext}"));
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("remove {}", p.display()))(e)),
            }
        }
        sync_dir(&incoming)
    }

    /// Ids with a recorded outcome, newest first (by file time), at most `limit`.
    pub fn recent_results(&self, limit: usize) -> Result<Vec<String>, SpoolError> {
        let dir = self.root.join("results");
        let mut v = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err(format!("read {}", dir.display())))? {
            let e = e.map_err(io_err("read results"))?;
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let t = e.metadata().and_then(|m| m.modified()).ok();
                if let Some(id) = p.file_stem().and_then(|s| s.to_str()) {
                    v.push((t, id.to_owned()));
                }
            }
        }
        v.sort_by(|a, b| b.cmp(a));
        v.truncate(limit);
        Ok(v.into_iter().map(|(_, id)| id).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, t: u64) -> EntryMeta {
        EntryMeta {
            id: id.into(),
            received_unix_ms: t,
            source: "dicom:TEST".into(),
        }
    }

    #[test]
    fn instance_ids_ignore_uid_padding() {
        assert_eq!(instance_id("1.2.3"), instance_id("1.2.3\0"));
        assert_ne!(instance_id("1.2.3"), instance_id("1.2.4"));
        assert_eq!(instance_id("1.2.3").len(), 16);
    }

    #[test]
    fn queued_entries_survive_a_restart_in_arrival_order_and_results_are_not_redone() {
        let dir = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(false);
        {
            let s = Spool::open(dir.path(), &mut |_| panic!("nothing finished")).unwrap();
            assert_eq!(s.put(meta("bb", 2), b"second").unwrap(), PutOutcome::Queued);
            assert_eq!(s.put(meta("aa", 1), b"first").unwrap(), PutOutcome::Queued);
            assert_eq!(s.put(meta("cc", 3), b"third").unwrap(), PutOutcome::Queued);
            assert_eq!(
                s.put(meta("aa", 9), b"again").unwrap(),
                PutOutcome::Duplicate
            );
            // "cc" was processed; the crash came before its source was removed.
            let e = s.next(Duration::ZERO, &stop).unwrap();
            assert_eq!(e.meta.id, "bb");
            write_durably(
                &dir.path().join("tmp"),
                &dir.path().join("results"),
                "cc.json",
                b"{}",
            )
            .unwrap();
            std::fs::write(dir.path().join("tmp/half.tmp"), b"x").unwrap();
        }
        let mut finished = Vec::new();
        let s = Spool::open(dir.path(), &mut |id| finished.push(id.to_owned())).unwrap();
        assert_eq!(finished, ["cc"]);
        assert!(!dir.path().join("incoming/cc.dcm").exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        let a = s.next(Duration::ZERO, &stop).unwrap();
        assert_eq!(
            (a.meta.id.as_str(), std::fs::read(&a.path).unwrap()),
            ("aa", b"first".to_vec())
        );
        let b = s.next(Duration::ZERO, &stop).unwrap();
        assert_eq!(b.meta.id, "bb");
        assert!(s.next(Duration::ZERO, &stop).is_none());
        assert_eq!(s.put(meta("cc", 4), b"x").unwrap(), PutOutcome::Duplicate);
        assert_eq!(
            s.put(meta("aa", 4), b"x").unwrap(),
            PutOutcome::Duplicate,
            "still pending"
        );
        s.commit("aa", b"{\"ok\":1}").unwrap();
        s.fail("bb", b"{\"error\":1}").unwrap();
        assert!(dir.path().join("failed/bb.dcm").exists());
        assert!(!dir.path().join("incoming/aa.dcm").exists());
        assert_eq!(
            s.put(meta("aa", 5), b"x").unwrap(),
            PutOutcome::Duplicate,
            "processed"
        );
        let mut recent = s.recent_results(10).unwrap();
        recent.sort();
        assert_eq!(recent, ["aa", "bb", "cc"]);
    }

    #[test]
    fn metadata_without_its_file_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("incoming")).unwrap();
        std::fs::write(dir.path().join("incoming/dd.json"), b"{}").unwrap();
        let s = Spool::open(dir.path(), &mut |_| {}).unwrap();
        assert_eq!(s.depth(), 0);
        assert!(!dir.path().join("incoming/dd.json").exists());
    }

    #[test]
    fn next_waits_for_a_put_from_another_thread() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Spool::open(dir.path(), &mut |_| {}).unwrap());
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s2.put(meta("ee", 1), b"x").unwrap();
        });
        let stop = AtomicBool::new(false);
        let e = s
            .next(Duration::from_secs(5), &stop)
            .expect("woken by the put");
        assert_eq!(e.meta.id, "ee");
        t.join().unwrap();
    }
}
