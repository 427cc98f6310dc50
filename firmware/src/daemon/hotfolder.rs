//! Hot-folder ingest: the fallback for stations that export files to a share instead of
//! pushing them by C-STORE.
//!
//! Only complete files are taken: a writer that renames into the folder is safe at once;
//! any other file must keep the same size and modification time over two polls (at least
//! [`STABLE_FOR`]). Hidden files and names ending in `.tmp`, `.part` or `.partial` are never
//! taken. A taken file is stored in the spool exactly like a received one, then moved to
//! `processed/`; one that is refused is moved to `failed/` beside `<name>.reason.txt`. Nothing
//! is deleted.

use super::station::Station;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tracing::{error, warn};

/// How long a file's size and time must stay unchanged before it is taken.
pub const STABLE_FOR: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(250);

fn skipped(name: &str) -> bool {
    name.starts_with('.')
        || [".tmp", ".part", ".partial", ".reason.txt"]
            .iter()
            .any(|s| name.to_ascii_lowercase().ends_with(s))
}

/// A name in `dir` not yet used (a re-exported file of the same name is kept beside the old).
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    if !p.exists() {
        return p;
    }
    (1..)
        .map(|i| dir.join(format!("{name}.{i}")))
        .find(|p| !p.exists())
        .expect("some suffix is free")
}

pub struct HotFolder {
    dir: PathBuf,
    /// Size and mtime last seen, and since when.
    seen: HashMap<PathBuf, ((u64, Option<SystemTime>), Instant)>,
}

impl HotFolder {
    pub fn open(dir: &Path) -> std::io::Result<HotFolder> {
        for d in ["processed", "failed"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        Ok(HotFolder {
            dir: dir.to_owned(),
            seen: HashMap::new(),
        })
    }

    /// Files that are complete now.
    fn stable_files(&mut self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut present = Vec::new();
        let mut ready = Vec::new();
        for e in rd.flatten() {
            let path = e.path();
            let Ok(md) = e.metadata() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            if !md.is_file() || skipped(&name) {
                continue;
            }
            present.push(path.clone());
            let sig = (md.len(), md.modified().ok());
            match self.seen.get(&path) {
                Some((s, since)) if *s == sig => {
                    if now.duration_since(*since) >= STABLE_FOR {
                        ready.push(path);
                    }
                }
                _ => {
                    self.seen.insert(path, (sig, now));
                }
            }
        }
        self.seen.retain(|p, _| present.contains(p));
        ready.sort();
        ready
    }

    /// Takes one complete file: into the spool, then out of the folder.
    fn take(&mut self, station: &Station, path: &Path) {
        self.seen.remove(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let result = std::fs::read(path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|bytes| {
                station
                    .accept(&bytes, "hotfolder", SystemTime::now())
                    .map_err(|e| e.to_string())
            });
        let (sub, reason) = match result {
            Ok(_) => ("processed", None),
            Err(r) => ("failed", Some(r)),
        };
        let dest = free_name(&self.dir.join(sub), &name);
        if let Some(r) = &reason {
            let _ = std::fs::write(
                dest.with_file_name(format!(
                    "{}.reason.txt",
                    dest.file_name().unwrap_or_default().to_string_lossy()
                )),
                format!("{r}\n"),
            );
            // Not the file's name: stations often name exports after the patient.
            warn!(
                source = "hotfolder",
                reason = r.as_str(),
                "hot folder: refused a file, moved to failed/"
            );
        }
        if let Err(e) = std::fs::rename(path, &dest) {
            error!(
                dir = sub,
                error = e.to_string(),
                "hot folder: cannot move a file"
            );
        }
    }

    /// Polls until `stop` is set.
    pub fn spawn(
        mut self,
        station: Arc<Station>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("hot folder".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for p in self.stable_files() {
                        self.take(&station, &p);
                    }
                    std::thread::sleep(POLL);
                }
            })
            .expect("spawn hot folder")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_and_hidden_names_are_never_taken() {
        for n in [
            ".x.dcm",
            "a.dcm.tmp",
            "a.PART",
            "b.partial",
            "a.dcm.reason.txt",
        ] {
            assert!(skipped(n), "{n}");
        }
        assert!(!skipped("IM0001.dcm"));
        assert!(!skipped("IM0001"));
    }

    #[test]
    fn a_file_is_taken_only_after_it_stopped_changing() {
        let dir = tempfile::tempdir().unwrap();
        let mut hf = HotFolder::open(dir.path()).unwrap();
        let f = dir.path().join("a.dcm");
        std::fs::write(&f, b"12").unwrap();
        assert!(hf.stable_files().is_empty(), "first sighting");
        std::thread::sleep(STABLE_FOR / 2);
        std::fs::write(&f, b"1234").unwrap();
        assert!(hf.stable_files().is_empty(), "it grew: the clock restarts");
        std::thread::sleep(STABLE_FOR + Duration::from_millis(50));
        assert_eq!(hf.stable_files(), [f]);
    }

    #[test]
    fn free_names_keep_earlier_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"").unwrap();
        std::fs::write(dir.path().join("a.1"), b"").unwrap();
        assert_eq!(free_name(dir.path(), "a"), dir.path().join("a.2"));
        assert_eq!(free_name(dir.path(), "b"), dir.path().join("b"));
    }
}
