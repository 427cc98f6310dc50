//! The persistent retry queue for results going back to the station and PACS: nothing is
//! dropped while a destination is down.
//!
//! One directory per destination under the outbox root, one file per object
//! (`<seq>-<name>.dcm`, written durably before it counts as queued). A sender thread per
//! destination sends the oldest first by C-STORE, up to [`BATCH`] objects over one
//! association (one negotiation per batch, not per object); a transient failure (connection refused,
//! time-out, out of resources at the far end) backs off exponentially and keeps the file; a
//! permanent refusal moves it to `failed/` beside a `.reason` file, so one bad object never
//! blocks the queue behind it.

use super::spool::{SpoolError, write_durably};
use crate::dicom::scu::{self, Destination, ScuError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Back-off after a transient failure: 1 s doubling to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Objects sent over one association at most, so an association never lasts for ever.
pub const BATCH: usize = 64;

/// What happened to an object, for the daemon's log (no patient data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendEvent {
    Sent {
        dest: String,
        name: String,
    },
    Retrying {
        dest: String,
        name: String,
        error: String,
        after: Duration,
    },
    Refused {
        dest: String,
        name: String,
        error: String,
    },
}

struct Queue {
    dest: Destination,
    dir: PathBuf,
    wake: (Mutex<u64>, Condvar),
}

pub struct Outbox {
    root: PathBuf,
    calling_ae: String,
    timeout: Duration,
    queues: Vec<Arc<Queue>>,
    seq: AtomicU64,
}

/// A directory name for a destination: its AE, host and port with anything unusual replaced.
fn dest_dir_name(d: &Destination) -> String {
    format!("{}@{}_{}", d.ae_title, d.host, d.port)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Outbox {
    /// Opens the outbox for `dests`; objects queued before a restart are sent again.
    pub fn open(
        root: &Path,
        calling_ae: &str,
        dests: &[Destination],
        timeout: Duration,
    ) -> Result<Outbox, SpoolError> {
        let mkdir = |p: &Path| {
            std::fs::create_dir_all(p).map_err(|source| SpoolError::Io {
                context: format!("create {}", p.display()),
                source,
            })
        };
        mkdir(&root.join("tmp"))?;
        let mut seq = 0u64;
        let mut queues = Vec::new();
        for d in dests {
            let dir = root.join(dest_dir_name(d));
            mkdir(&dir.join("failed"))?;
            for p in list(&dir) {
                let n = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split('-').next())
                    .and_then(|s| s.parse::<u64>().ok());
                seq = seq.max(n.unwrap_or(0));
            }
            queues.push(Arc::new(Queue {
                dest: d.clone(),
                dir,
                wake: (Mutex::new(0), Condvar::new()),
            }));
        }
        Ok(Outbox {
            root: root.to_owned(),
            calling_ae: calling_ae.to_owned(),
            timeout,
            queues,
            seq: AtomicU64::new(seq + 1),
        })
    }

    /// Queues one DICOM file for every destination. `name` identifies the object (e.g.
    /// `<id>-sc`); queuing the same name again (reprocessing after a crash) replaces it.
    pub fn enqueue(&self, name: &str, file: &[u8]) -> Result<(), SpoolError> {
        for q in &self.queues {
            // The same object already waiting (a crash before the commit): replace, not add.
            for p in list(&q.dir) {
                if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.split_once('-')
                        .is_some_and(|(_, rest)| rest == format!("{name}.dcm"))
                }) {
                    let _ = std::fs::remove_file(&p);
                }
            }
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            write_durably(
                &self.root.join("tmp"),
                &q.dir,
                &format!("{seq:012}-{name}.dcm"),
                file,
            )?;
            let (lock, cv) = &q.wake;
            *lock.lock().expect("outbox lock") += 1;
            cv.notify_all();
        }
        Ok(())
    }

    /// Objects waiting, over all destinations.
    pub fn depth(&self) -> u64 {
        self.queues.iter().map(|q| list(&q.dir).len() as u64).sum()
    }

    /// Objects refused for good, over all destinations.
    pub fn failed(&self) -> u64 {
        self.queues
            .iter()
            .map(|q| list(&q.dir.join("failed")).len() as u64)
            .sum()
    }

    /// Starts one sender per destination; they stop when `stop` is set (an object being sent
    /// is finished or left queued, never half-removed).
    pub fn spawn(
        self: &Arc<Self>,
        stop: Arc<AtomicBool>,
        on_event: Arc<dyn Fn(SendEvent) + Send + Sync>,
    ) -> Vec<std::thread::JoinHandle<()>> {
        self.queues
            .iter()
            .map(|q| {
                let (q, me, stop, on_event) =
                    (q.clone(), self.clone(), stop.clone(), on_event.clone());
                std::thread::Builder::new()
                    .name(format!("outbox {}", q.dest))
                    .spawn(move || me.send_loop(&q, &stop, on_event.as_ref()))
                    .expect("spawn outbox sender")
            })
            .collect()
    }

    fn send_loop(
        &self,
        q: &Queue,
        stop: &AtomicBool,
        on_event: &(dyn Fn(SendEvent) + Send + Sync),
    ) {
        let mut backoff = FIRST_BACKOFF;
        let dest = q.dest.to_string();
        while !stop.load(Ordering::Relaxed) {
            let seen = *q.wake.0.lock().expect("outbox lock");
            let queued = list(&q.dir);
            if queued.is_empty() {
                // Nothing queued: sleep until enqueue() or the stop flag.
                let (lock, cv) = &q.wake;
                let g = lock.lock().expect("outbox lock");
                if *g == seen {
                    let _ = cv.wait_timeout(g, Duration::from_millis(200));
                }
                continue;
            }
            let batch: Vec<PathBuf> = queued.into_iter().take(BATCH).collect();
            let name_of = |path: &Path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split_once('-').map(|(_, rest)| rest.to_owned()))
                    .unwrap_or_default()
            };
            let refuse = |path: &Path, e: &ScuError| {
                let failed = q.dir.join("failed");
                let file_name = path.file_name().expect("listed file has a name");
                let _ = std::fs::write(
                    failed.join(file_name).with_extension("reason"),
                    e.to_string(),
                );
                let _ = std::fs::rename(path, failed.join(file_name));
                on_event(SendEvent::Refused {
                    dest: dest.clone(),
                    name: name_of(path),
                    error: e.to_string(),
                });
            };
            // One association for the batch; each file's fate as it comes.
            let mut reported = vec![false; batch.len()];
            let mut busy: Option<ScuError> = None;
            let result = scu::store_files(
                &self.calling_ae,
                &q.dest,
                &batch,
                self.timeout,
                &mut |i, r| {
                    reported[i] = true;
                    match r {
                        Ok(()) => {
                            let _ = std::fs::remove_file(&batch[i]);
                            on_event(SendEvent::Sent {
                                dest: dest.clone(),
                                name: name_of(&batch[i]),
                            });
                        }
                        // Out of resources for this one: it stays queued.
                        Err(e) if e.is_transient() => busy = Some(e),
                        Err(e) => refuse(&batch[i], &e),
                    }
                },
            );
            let unreported = || batch.iter().zip(&reported).filter(|(_, r)| !**r);
            let retry = match result {
                Ok(()) => busy,
                Err(e) if e.is_transient() => Some(e),
                Err(e) => {
                    // Refused for good (e.g. the peer does not know our AE): every file left.
                    for (path, _) in unreported() {
                        refuse(path, &e);
                    }
                    None
                }
            };
            match retry {
                None => backoff = FIRST_BACKOFF,
                Some(e) => {
                    let first = unreported()
                        .next()
                        .map(|(p, _)| p)
                        .or(batch.first())
                        .expect("a batch has a file");
                    on_event(SendEvent::Retrying {
                        dest: dest.clone(),
                        name: name_of(first),
                        error: e.to_string(),
                        after: backoff,
                    });
                    // Sleep in slices so the stop flag and new objects are noticed.
                    let until = std::time::Instant::now() + backoff;
                    while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_directories_are_safe_names() {
        let d: Destination = "PACS@10.0.0.5:104".parse().unwrap();
        assert_eq!(dest_dir_name(&d), "PACS@10.0.0.5_104");
        let d = Destination {
            ae_title: "A/../B".into(),
            host: "h".into(),
            port: 1,
        };
        assert_eq!(dest_dir_name(&d), "A_.._B@h_1");
    }

    #[test]
    fn enqueued_objects_wait_durably_and_requeueing_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let dests: Vec<Destination> = vec![
            "A@127.0.0.1:1".parse().unwrap(),
            "B@127.0.0.1:2".parse().unwrap(),
        ];
        {
            let o = Outbox::open(dir.path(), "TIRPD", &dests, Duration::from_secs(1)).unwrap();
            o.enqueue("x-sc", b"one").unwrap();
            o.enqueue("x-sr", b"two").unwrap();
            o.enqueue("x-sc", b"one again").unwrap();
            assert_eq!(o.depth(), 4);
        }
        let o = Outbox::open(dir.path(), "TIRPD", &dests, Duration::from_secs(1)).unwrap();
        assert_eq!(o.depth(), 4, "survives a restart");
        let files = list(&dir.path().join("A@127.0.0.1_1"));
        let names: Vec<String> = files
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .split_once('-')
                    .unwrap()
                    .1
                    .to_owned()
            })
            .collect();
        assert_eq!(
            names,
            ["x-sr.dcm", "x-sc.dcm"],
            "the replaced object goes to the back"
        );
        assert_eq!(std::fs::read(&files[1]).unwrap(), b"one again");
        o.enqueue("y-sc", b"three").unwrap();
        let last = list(&dir.path().join("B@127.0.0.1_2")).pop().unwrap();
        assert!(last.to_str().unwrap().ends_with("-y-sc.dcm"));
    }
}
