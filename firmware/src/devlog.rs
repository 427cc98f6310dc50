//! Append-only, crash-safe device log: inference records and events, pulled by `tirp logs`.
//!
//! Segment files are named by their first sequence number. A record is
//! `len u32 ‖ crc32c(seq ‖ payload) u32 ‖ seq u64 ‖ payload`, written with one `write` on an
//! append-only file. On open the last segment is scanned and a torn tail (short, bad CRC, or a
//! sequence gap) is truncated away, never skipped over. Rotation retains every record the host
//! has not pulled yet unless the disk is critically full, and such a deletion is itself logged.

use crate::link::frame::CRC32C;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const HEADER: usize = 16;
const PULLED_FILE: &str = "pulled";
/// Largest payload accepted (a log page must fit in one link frame); a length above it on
/// disk means a torn or corrupt record.
pub const MAX_RECORD: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("record of {0} bytes exceeds the {MAX_RECORD}-byte limit")]
    TooLarge(usize),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LogError {
    let context = context.into();
    move |source| LogError::Io { context, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fdatasync after every record (audit records: nothing acknowledged is ever lost).
    EveryRecord,
    /// fdatasync after every N records; up to N-1 records may be lost on power loss.
    EveryN(u32),
    /// Only on [`DevLog::sync`] and rotation.
    Manual,
}

#[derive(Debug, Clone)]
pub struct LogOptions {
    pub segment_bytes: u64,
    /// Retention target: older segments go once everything in them has been pulled.
    pub retain_bytes: u64,
    /// Below this much free disk space, unpulled segments may go too (and that is logged).
    pub critical_free_bytes: u64,
    pub sync: SyncPolicy,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 8 * 1024 * 1024,
            retain_bytes: 256 * 1024 * 1024,
            critical_free_bytes: 64 * 1024 * 1024,
            sync: SyncPolicy::EveryRecord,
        }
    }
}

#[derive(Debug, Clone)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    len: u64,
}

/// What open found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    pub truncated_bytes: u64,
    pub records: u64,
}

pub struct DevLog {
    dir: PathBuf,
    opts: LogOptions,
    segments: Vec<Segment>,
    file: File,
    next_seq: u64,
    unsynced: u32,
    pulled: u64,
    /// Free-space probe; replaced in tests.
    free_space: fn(&Path) -> Option<u64>,
    pub recovery: Recovery,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// A page of records for [`DevLog::read_since`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// First sequence number still held at or after the requested one.
    pub first_seq: u64,
    pub records: Vec<Record>,
    pub next_seq: u64,
    pub more: bool,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

impl DevLog {
    pub fn open(dir: &Path, opts: LogOptions) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let mut segments = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
            let path = e.map_err(io_err("read log dir"))?.path();
            let first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(first_seq) = first {
                let len = std::fs::metadata(&path)
                    .map_err(io_err(format!("stat {}", path.display())))?
                    .len();
                segments.push(Segment {
                    first_seq,
                    path,
                    len,
                });
            }
        }
        segments.sort_by_key(|s| s.first_seq);
        let mut recovery = Recovery::default();
        let next_seq = match segments.last_mut() {
            None => {
                let path = dir.join(segment_name(1));
                File::create(&path).map_err(io_err(format!("create {}", path.display())))?;
                segments.push(Segment {
                    first_seq: 1,
                    path,
                    len: 0,
                });
                crate::slots::sync_dir(dir).map_err(|e| LogError::Io {
                    context: e.to_string(),
                    source: std::io::Error::other("sync"),
                })?;
                1
            }
            Some(last) => {
                let (valid, count, next) = scan(&last.path, last.first_seq)?;
                if valid < last.len {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&last.path)
                        .map_err(io_err(format!("open {}", last.path.display())))?;
                    f.set_len(valid)
                        .and_then(|_| f.sync_all())
                        .map_err(io_err(format!("truncate {}", last.path.display())))?;
                    recovery.truncated_bytes = last.len - valid;
                    last.len = valid;
                }
                recovery.records = count;
                next
            }
        };
        let last = segments.last().expect("one segment");
        let file = OpenOptions::new()
            .append(true)
            .open(&last.path)
            .map_err(io_err(format!("open {}", last.path.display())))?;
        let pulled = std::fs::read_to_string(dir.join(PULLED_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1);
        Ok(Self {
            dir: dir.to_owned(),
            opts,
            segments,
            file,
            next_seq,
            unsynced: 0,
            pulled,
            free_space,
            recovery,
        })
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends one record and returns its sequence number.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, LogError> {
        if payload.len() > MAX_RECORD {
            return Err(LogError::TooLarge(payload.len()));
        }
        let seq = self.next_seq;
        let mut rec = Vec::with_capacity(HEADER + payload.len());
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&record_crc(seq, payload).to_le_bytes());
        rec.extend_from_slice(&seq.to_le_bytes());
        rec.extend_from_slice(payload);
        self.file
            .write_all(&rec)
            .map_err(io_err("append device log"))?;
        self.next_seq += 1;
        self.segments.last_mut().expect("segment").len += rec.len() as u64;
        self.unsynced += 1;
        let sync = match self.opts.sync {
            SyncPolicy::EveryRecord => true,
            SyncPolicy::EveryN(n) => self.unsynced >= n,
            SyncPolicy::Manual => false,
        };
        if sync {
            self.sync()?;
        }
        if self.segments.last().expect("segment").len >= self.opts.segment_bytes {
            self.rotate()?;
        }
        Ok(seq)
    }

    /// Appends a typed entry as JSON.
    pub fn append_entry(&mut self, entry: &LogEntry) -> Result<u64, LogError> {
        self.append(&serde_json::to_vec(entry).expect("log entries serialise"))
    }

    pub fn sync(&mut self) -> Result<(), LogError> {
        self.unsynced = 0;
        self.file.sync_data().map_err(io_err("sync device log"))
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        self.sync()?;
        let path = self.dir.join(segment_name(self.next_seq));
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(format!("create {}", path.display())))?;
        self.segments.push(Segment {
            first_seq: self.next_seq,
            path,
            len: 0,
        });
        self.sync_dir()?;
        self.retain()
    }

    fn sync_dir(&self) -> Result<(), LogError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(format!("sync {}", self.dir.display())))
    }

    fn retain(&mut self) -> Result<(), LogError> {
        let mut dropped: Option<(u64, u64)> = None;
        loop {
            let total: u64 = self.segments.iter().map(|s| s.len).sum();
            if self.segments.len() < 2 {
                break;
            }
            let oldest_last = self.segments[1].first_seq - 1;
            let pulled_all = oldest_last < self.pulled;
            let critical = (self.free_space)(&self.dir)
                .is_some_and(|free| free < self.opts.critical_free_bytes);
            if !(critical || (total > self.opts.retain_bytes && pulled_all)) {
                break;
            }
            let seg = self.segments.remove(0);
            std::fs::remove_file(&seg.path)
                .map_err(io_err(format!("remove {}", seg.path.display())))?;
            if !pulled_all {
                let first = seg.first_seq.max(self.pulled);
                dropped = Some((dropped.map_or(first, |d| d.0), oldest_last));
            }
        }
        self.sync_dir()?;
        if let Some((first_seq, last_seq)) = dropped {
            self.append_entry(&LogEntry::Event(EventRecord::now(
                "log_records_dropped",
                format!("disk critically full: deleted unpulled records {first_seq}..={last_seq}"),
            )))?;
        }
        Ok(())
    }

    /// Records every seq below `seq` as pulled (they may now be reclaimed).
    pub fn mark_pulled(&mut self, seq: u64) -> Result<(), LogError> {
        let seq = seq.min(self.next_seq);
        if seq <= self.pulled {
            return Ok(());
        }
        self.pulled = seq;
        let tmp = self.dir.join("pulled.tmp");
        std::fs::write(&tmp, seq.to_string())
            .and_then(|_| File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, self.dir.join(PULLED_FILE)))
            .map_err(io_err("persist pulled cursor"))?;
        Ok(())
    }

    /// Records with `seq >= since`, bounded by count and payload bytes (at least one record is
    /// returned when any is available, whatever its size).
    pub fn read_since(
        &self,
        since: u64,
        max_records: u32,
        max_bytes: u32,
    ) -> Result<Page, LogError> {
        let since = since.max(1);
        let first_held = self.segments.first().map_or(self.next_seq, |s| s.first_seq);
        let mut page = Page {
            first_seq: since.max(first_held).min(self.next_seq),
            records: Vec::new(),
            next_seq: since.max(first_held),
            more: false,
        };
        if page.next_seq >= self.next_seq {
            // Nothing new (or a cursor from before a wiped log): report where the log is.
            page.next_seq = self.next_seq;
            return Ok(page);
        }
        let start = self
            .segments
            .iter()
            .rposition(|s| s.first_seq <= page.next_seq)
            .unwrap_or(0);
        let mut bytes = 0usize;
        'segments: for seg in &self.segments[start..] {
            let mut f =
                File::open(&seg.path).map_err(io_err(format!("open {}", seg.path.display())))?;
            let mut data = Vec::with_capacity(seg.len as usize);
            f.seek(SeekFrom::Start(0))
                .and_then(|_| f.take(seg.len).read_to_end(&mut data))
                .map_err(io_err(format!("read {}", seg.path.display())))?;
            let mut at = 0usize;
            while let Some((seq, payload, len)) = parse_record(&data[at..]) {
                at += len;
                if seq < page.next_seq {
                    continue;
                }
                if page.records.len() as u32 >= max_records
                    || (!page.records.is_empty() && bytes + payload.len() > max_bytes as usize)
                {
                    page.more = true;
                    break 'segments;
                }
                bytes += payload.len();
                page.records.push(Record {
                    seq,
                    payload: payload.to_vec(),
                });
                page.next_seq = seq + 1;
            }
        }
        if let Some(r) = page.records.first() {
            page.first_seq = r.seq;
        }
        Ok(page)
    }

    #[doc(hidden)]
    pub fn set_free_space_probe(&mut self, probe: fn(&Path) -> Option<u64>) {
        self.free_space = probe;
    }
}

fn record_crc(seq: u64, payload: &[u8]) -> u32 {
    let mut d = CRC32C.digest();
    d.update(&seq.to_le_bytes());
    d.update(payload);
    d.finalize()
}

/// Parses one record at the start of `data`: (seq, payload, encoded length).
fn parse_record(data: &[u8]) -> Option<(u64, &[u8], usize)> {
    if data.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes(data[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data[4..8].try_into().ok()?);
    let seq = u64::from_le_bytes(data[8..16].try_into().ok()?);
    if len > MAX_RECORD || data.len() < HEADER + len {
        return None;
    }
    let payload = &data[HEADER..HEADER + len];
    (record_crc(seq, payload) == crc).then_some((seq, payload, HEADER + len))
}

/// Scans a segment: (valid prefix length, record count, next seq).
fn scan(path: &Path, first_seq: u64) -> Result<(u64, u64, u64), LogError> {
    let data = std::fs::read(path).map_err(io_err(format!("read {}", path.display())))?;
    let (mut at, mut count, mut next) = (0usize, 0u64, first_seq);
    while let Some((seq, _, len)) = parse_record(&data[at..]) {
        if seq != next {
            break;
        }
        at += len;
        count += 1;
        next += 1;
    }
    Ok((at as u64, count, next))
}

/// Free bytes on the file system holding `path`.
pub fn free_space(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// A device log entry (stored as JSON so any later reader can parse old records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEntry {
    Inference(InferenceRecord),
    Event(EventRecord),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageLatency {
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberScore {
    pub member: String,
    pub score: f64,
}

/// One inference. Carries a salted hash of the Study Instance UID, never an identifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceRecord {
    pub time_unix_ms: u64,
    pub device_id: String,
    pub board: String,
    pub bundle_id: String,
    pub bundle_sha256: String,
    pub member_scores: Vec<MemberScore>,
    pub probability: f64,
    pub flag: bool,
    /// "No lesion localised — review": nothing classified (`probability` 0, no member
    /// scores, `flag` false). Absent (false) in records of classified studies.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review: bool,
    pub threshold: f64,
    pub latency: StageLatency,
    pub study_key: String,
    /// Salted hash of the SOP Instance UID: a study may hold several radiographs, each
    /// flagged on its own (empty in records from before it existed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub time_unix_ms: u64,
    /// `install`, `activate`, `health_check`, `rollback`, `keyring`, `error`, ...
    pub event: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
}

impl EventRecord {
    pub fn now(event: &str, detail: impl Into<String>) -> Self {
        Self {
            time_unix_ms: now_unix_ms(),
            event: event.to_owned(),
            detail: detail.into(),
            bundle: None,
        }
    }
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The pseudonymous study key of the log: SHA-256(device salt ‖ Study Instance UID), hex.
pub fn study_key(salt: &[u8], study_instance_uid: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(study_instance_uid.as_bytes());
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> LogOptions {
        LogOptions {
            segment_bytes: 1 << 20,
            retain_bytes: 1 << 30,
            critical_free_bytes: 0,
            sync: SyncPolicy::Manual,
        }
    }

    fn payload(i: u64) -> Vec<u8> {
        format!(
            "{{\"n\":{i},\"pad\":\"{}\"}}",
            "x".repeat((i % 17) as usize)
        )
        .into_bytes()
    }

    #[test]
    fn torn_tail_is_truncated_at_every_byte_of_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut log = DevLog::open(&src, opts()).unwrap();
        for i in 1..=50 {
            assert_eq!(log.append(&payload(i)).unwrap(), i);
        }
        log.sync().unwrap();
        drop(log);
        let seg = src.join(segment_name(1));
        let full = std::fs::read(&seg).unwrap();
        let last_len = HEADER + payload(50).len();
        let last_start = full.len() - last_len;
        for cut in last_start..full.len() {
            let d = dir.path().join(format!("cut{cut}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join(segment_name(1)), &full[..cut]).unwrap();
            let mut log = DevLog::open(&d, opts()).unwrap();
            assert_eq!(log.next_seq(), 50, "cut at {cut}");
            assert_eq!(log.recovery.truncated_bytes, (cut - last_start) as u64);
            assert_eq!(log.append(b"after").unwrap(), 50);
            drop(log);
            let log = DevLog::open(&d, opts()).unwrap();
            assert_eq!(log.next_seq(), 51);
            let page = log.read_since(49, 10, 1 << 20).unwrap();
            assert_eq!(page.records.len(), 2);
            assert_eq!(page.records[1].payload, b"after");
            std::fs::remove_dir_all(&d).unwrap();
        }
        // A zero-filled tail (blocks allocated, data never written) is cut as well.
        let d = dir.path().join("zeros");
        std::fs::create_dir(&d).unwrap();
        let mut z = full.clone();
        z.extend_from_slice(&[0u8; 4096]);
        std::fs::write(d.join(segment_name(1)), &z).unwrap();
        let log = DevLog::open(&d, opts()).unwrap();
        assert_eq!(log.next_seq(), 51);
        assert_eq!(log.recovery.truncated_bytes, 4096);
    }

    #[test]
    fn rotation_keeps_unpulled_records_and_pages_by_count_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let o = LogOptions {
            segment_bytes: 2000,
            retain_bytes: 5000,
            ..opts()
        };
        let mut log = DevLog::open(dir.path(), o).unwrap();
        for i in 1..=1000 {
            log.append(&payload(i)).unwrap();
        }
        // Nothing pulled: nothing deleted, however far over retention.
        let page = log.read_since(1, 5, 1 << 20).unwrap();
        assert_eq!(
            (page.first_seq, page.records.len(), page.more),
            (1, 5, true)
        );
        // Pull everything page by page, acknowledging as the host would.
        let mut since = 1;
        let mut got = 0;
        loop {
            let page = log.read_since(since, 100, 1500).unwrap();
            assert!(page.records.iter().map(|r| r.payload.len()).sum::<usize>() <= 1500);
            for r in &page.records {
                assert_eq!(r.seq, since);
                assert_eq!(r.payload, payload(r.seq));
                since += 1;
                got += 1;
            }
            log.mark_pulled(since).unwrap();
            if !page.more {
                break;
            }
        }
        assert_eq!(got, 1000);
        // Once pulled, the next rotation trims to retention.
        for i in 1001..=1100 {
            log.append(&payload(i)).unwrap();
        }
        let total: u64 = log.segments.iter().map(|s| s.len).sum();
        assert!(total <= 5000 + 2000, "retained {total} bytes");
        // A cursor that fell off retention resumes at the oldest record and shows the gap.
        let page = log.read_since(1, 10, 1 << 20).unwrap();
        assert!(page.first_seq > 1);
        assert_eq!(page.records[0].seq, page.first_seq);
    }

    #[test]
    fn critically_full_disk_drops_unpulled_records_and_logs_it() {
        let dir = tempfile::tempdir().unwrap();
        let o = LogOptions {
            segment_bytes: 2000,
            retain_bytes: 1 << 30,
            critical_free_bytes: 1000,
            ..opts()
        };
        let mut log = DevLog::open(dir.path(), o).unwrap();
        for i in 1..=100 {
            log.append(&payload(i)).unwrap();
        }
        assert_eq!(log.read_since(1, 1, 1 << 20).unwrap().first_seq, 1);
        log.set_free_space_probe(|_| Some(10));
        for i in 101..=200 {
            log.append(&payload(i)).unwrap();
        }
        let page = log.read_since(1, 1, 1 << 20).unwrap();
        assert!(page.first_seq > 1);
        let all = log.read_since(1, 100_000, u32::MAX).unwrap();
        let dropped: Vec<_> = all
            .records
            .iter()
            .filter_map(|r| serde_json::from_slice::<LogEntry>(&r.payload).ok())
            .filter(|e| matches!(e, LogEntry::Event(ev) if ev.event == "log_records_dropped"))
            .collect();
        assert!(!dropped.is_empty());
    }

    #[test]
    fn study_key_is_salted_and_hides_the_uid() {
        let uid = "1.2.840.113619.2.55.3.604688119.971.1234567890.123";
        let a = study_key(b"salt-a", uid);
        assert_ne!(a, study_key(b"salt-b", uid));
        assert!(!a.contains("1.2.840"));
        assert_eq!(a.len(), 32);
    }
}
