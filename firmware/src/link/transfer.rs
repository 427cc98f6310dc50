//! Bulk transfer of a bundle file, both ends.
//!
//! Byte offsets are the sequence numbers (u64, never wrap). The device writes only in order,
//! acknowledges cumulatively and sends one NAK per gap (suppressed per gap offset, re-sent
//! after 8 more out-of-order chunks): suppressing by time instead stalls fast links. The host
//! runs a go-back-N window, halves its chunk on loss and doubles it after 32 clean ACKs.
//! The device stages to `<sha256>.partial`; a later session resumes from its verified length.

use super::client::{ClientError, Link};
use super::proto::{ErrorCode, Msg};
use crate::bundle::{self, Header};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// fdatasync the staging file every this many bytes (bounds what a power cut can tear).
const SYNC_EVERY: u64 = 1024 * 1024;
/// Out-of-order chunks after which a suppressed NAK is sent again.
const RENAK_AFTER: u32 = 8;

/// A refusal the device sends back: final, with a code the host maps to an exit status.
pub type Refusal = (ErrorCode, String);

struct Staging {
    sha256: [u8; 32],
    size: u64,
    file: File,
    path: PathBuf,
    next: u64,
    synced_at: u64,
    nak_at: Option<u64>,
    ooo_since_nak: u32,
    /// Bundle prefix kept in memory until the header is complete and checked.
    head: Option<Vec<u8>>,
}

/// Device end: stages incoming bundles under `dir`.
pub struct Receiver {
    dir: PathBuf,
    cur: Option<Staging>,
}

fn partial_path(dir: &Path, sha: &[u8; 32]) -> PathBuf {
    dir.join(format!("{}.partial", hex::encode(sha)))
}

pub fn staged_path(dir: &Path, sha: &[u8; 32]) -> PathBuf {
    dir.join(format!("{}.tirpb", hex::encode(sha)))
}

fn io_refusal(what: &str) -> impl FnOnce(std::io::Error) -> Refusal + '_ {
    move |e| (ErrorCode::Io, format!("{what}: {e}"))
}

impl Receiver {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            cur: None,
        }
    }

    /// Length of the bundle file staged so far for `sha` (0 if none).
    pub fn staged_len(&self, sha: &[u8; 32]) -> u64 {
        std::fs::metadata(partial_path(&self.dir, sha)).map_or(0, |m| m.len())
    }

    /// Starts or resumes staging. Other bundles' leftovers are removed first (one transfer
    /// at a time; stale state never accumulates). Returns the verified length held.
    pub fn begin(
        &mut self,
        sha256: [u8; 32],
        size: u64,
        free_space: Option<u64>,
        check_header: &dyn Fn(&Header) -> Result<(), Refusal>,
    ) -> Result<u64, Refusal> {
        std::fs::create_dir_all(&self.dir).map_err(io_refusal("create staging dir"))?;
        if std::fs::metadata(staged_path(&self.dir, &sha256)).is_ok_and(|m| m.len() == size) {
            self.cur = None;
            return Ok(size);
        }
        for e in std::fs::read_dir(&self.dir).map_err(io_refusal("read staging dir"))? {
            let p = e.map_err(io_refusal("read staging dir"))?.path();
            if p != partial_path(&self.dir, &sha256) {
                let _ = std::fs::remove_file(&p);
            }
        }
        let path = partial_path(&self.dir, &sha256);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_refusal("open staging file"))?;
        let have = file
            .metadata()
            .map_err(io_refusal("stat staging file"))?
            .len();
        let need = size.saturating_sub(have);
        if free_space.is_some_and(|free| free < need.saturating_add(size)) {
            // Room for the staged file and for its extraction into a slot.
            return Err((
                ErrorCode::NoSpace,
                format!("{need} more bytes to stage plus {size} to install; not enough free space"),
            ));
        }
        let (verified, header_done) = verified_prefix(&mut file, size, check_header)?;
        file.set_len(verified)
            .and_then(|_| file.sync_all())
            .map_err(io_refusal("truncate staging file"))?;
        let head = if header_done {
            None
        } else {
            let mut head = vec![0u8; verified as usize];
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.read_exact(&mut head))
                .map_err(io_refusal("read staging file"))?;
            Some(head)
        };
        file.seek(SeekFrom::Start(verified))
            .map_err(io_refusal("seek staging file"))?;
        self.cur = Some(Staging {
            sha256,
            size,
            file,
            path,
            next: verified,
            synced_at: verified,
            nak_at: None,
            ooo_since_nak: 0,
            head,
        });
        Ok(verified)
    }

    /// Handles one chunk; returns the reply to send, if any.
    pub fn chunk(
        &mut self,
        offset: u64,
        data: &[u8],
        check_header: &dyn Fn(&Header) -> Result<(), Refusal>,
    ) -> Option<Msg> {
        let Some(st) = self.cur.as_mut() else {
            return Some(Msg::Error {
                code: ErrorCode::NotStaged,
                message: "chunk without Begin".into(),
            });
        };
        if offset < st.next {
            // Duplicate (go-back-N resend): re-acknowledge.
            return Some(Msg::Ack {
                next_offset: st.next,
                nak: false,
            });
        }
        if offset > st.next {
            let first = st.nak_at != Some(st.next);
            st.ooo_since_nak += 1;
            if first || st.ooo_since_nak >= RENAK_AFTER {
                st.nak_at = Some(st.next);
                st.ooo_since_nak = 0;
                return Some(Msg::Ack {
                    next_offset: st.next,
                    nak: true,
                });
            }
            return None;
        }
        let end = offset + data.len() as u64;
        if end > st.size {
            return Some(Msg::Error {
                code: ErrorCode::Protocol,
                message: format!("chunk ends at {end}, past the announced size {}", st.size),
            });
        }
        if let Err(e) = st.file.write_all(data) {
            return Some(Msg::Error {
                code: ErrorCode::Io,
                message: format!("write staging file: {e}"),
            });
        }
        st.next = end;
        st.nak_at = None;
        if let Some(head) = st.head.as_mut() {
            head.extend_from_slice(data);
            match Header::parse_prefix(head) {
                Ok(None) => {}
                Ok(Some((header, _))) => {
                    st.head = None;
                    // Refuse early: no point sending megabytes of a bundle we will reject.
                    if let Err((code, message)) = check_header(&header) {
                        self.abort();
                        return Some(Msg::Error { code, message });
                    }
                }
                Err(e) => {
                    self.abort();
                    return Some(refusal_msg(&e));
                }
            }
        }
        let st = self.cur.as_mut()?;
        if st.next - st.synced_at >= SYNC_EVERY || st.next == st.size {
            if let Err(e) = st.file.sync_data() {
                return Some(Msg::Error {
                    code: ErrorCode::Io,
                    message: format!("sync staging file: {e}"),
                });
            }
            st.synced_at = st.next;
        }
        Some(Msg::Ack {
            next_offset: st.next,
            nak: false,
        })
    }

    fn abort(&mut self) {
        if let Some(st) = self.cur.take() {
            let _ = std::fs::remove_file(&st.path);
        }
    }

    /// Completes staging: size and SHA-256 check, fsync, atomic rename, directory fsync.
    /// Idempotent: a bundle already staged is returned as is.
    pub fn finish(&mut self, sha256: [u8; 32]) -> Result<PathBuf, Refusal> {
        let done = staged_path(&self.dir, &sha256);
        if self.cur.as_ref().is_none_or(|c| c.sha256 != sha256) {
            return if done.exists() {
                Ok(done)
            } else {
                Err((ErrorCode::NotStaged, "no such bundle staged".into()))
            };
        }
        let st = self.cur.as_mut().expect("checked");
        if st.next != st.size {
            return Err((
                ErrorCode::NotStaged,
                format!("only {} of {} bytes staged", st.next, st.size),
            ));
        }
        st.file
            .sync_all()
            .map_err(io_refusal("sync staging file"))?;
        st.file
            .seek(SeekFrom::Start(0))
            .map_err(io_refusal("seek staging file"))?;
        let mut h = Sha256::new();
        std::io::copy(&mut st.file, &mut h).map_err(io_refusal("hash staging file"))?;
        if h.finalize().as_slice() != sha256 {
            self.abort();
            return Err((
                ErrorCode::Tampered,
                "staged bytes do not match the announced SHA-256".into(),
            ));
        }
        let st = self.cur.take().expect("checked");
        std::fs::rename(&st.path, &done).map_err(io_refusal("rename staged bundle"))?;
        crate::slots::sync_dir(&self.dir).map_err(|e| (ErrorCode::Io, e.to_string()))?;
        Ok(done)
    }

    /// Removes a staged bundle once installed.
    pub fn discard(&mut self, sha256: &[u8; 32]) {
        let _ = std::fs::remove_file(staged_path(&self.dir, sha256));
    }
}

/// How much of a partial file can be trusted, and whether that includes the whole header:
/// the header if complete and acceptable, then every payload chunk whose hash matches the
/// manifest, then an incomplete tail chunk (its bytes arrived CRC-checked and in order; a torn
/// tail past the last fsync is caught by the next chunk hash or the final SHA-256). A prefix
/// too short for the header is kept if it starts like a bundle.
fn verified_prefix(
    file: &mut File,
    size: u64,
    check_header: &dyn Fn(&Header) -> Result<(), Refusal>,
) -> Result<(u64, bool), Refusal> {
    let have = file
        .metadata()
        .map_err(io_refusal("stat staging file"))?
        .len();
    if have == 0 || have > size {
        return Ok((0, false));
    }
    let mut prefix = vec![0u8; have.min(12) as usize];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut prefix))
        .map_err(io_refusal("read staging file"))?;
    let n = prefix.len().min(7);
    if prefix[..n] != bundle::MAGIC[..n] {
        return Ok((0, false));
    }
    if have < 12 {
        return Ok((have, false));
    }
    let header_len = u64::from(u32::from_le_bytes(
        prefix[8..12].try_into().expect("4 bytes"),
    ));
    if header_len > u64::from(bundle::MAX_HEADER) {
        return Ok((0, false));
    }
    if have < 12 + header_len {
        return Ok((have, false));
    }
    let Ok((header, payload_at)) = Header::read_from(file) else {
        return Ok((0, false));
    };
    check_header(&header)?;
    let Ok(manifest) = header.manifest() else {
        return Ok((0, false));
    };
    let cs = u64::from(manifest.chunk_size);
    let payload_len = manifest.payload_len();
    let mut verified = payload_at;
    let mut buf = vec![0u8; cs as usize];
    file.seek(SeekFrom::Start(payload_at))
        .map_err(io_refusal("seek staging file"))?;
    for expected in &manifest.chunk_hashes {
        let done = verified - payload_at;
        let want = cs.min(payload_len - done);
        let n = (have - verified).min(want);
        if n == 0 {
            break;
        }
        file.read_exact(&mut buf[..n as usize])
            .map_err(io_refusal("read staging file"))?;
        if n < want {
            return Ok((verified + n, true));
        }
        if Sha256::digest(&buf[..n as usize]).as_slice() != expected {
            return Ok((verified, true));
        }
        verified += n;
    }
    Ok((verified, true))
}

/// Maps a bundle error to the refusal the device sends.
pub fn refusal_msg(e: &bundle::BundleError) -> Msg {
    let (code, message) = refusal(e);
    Msg::Error { code, message }
}

pub fn refusal(e: &bundle::BundleError) -> Refusal {
    use bundle::BundleError as E;
    let code = match e {
        E::NotABundle | E::Malformed(_) => ErrorCode::BadBundle,
        E::VersionMismatch { .. } => ErrorCode::VersionMismatch,
        E::Unsigned => ErrorCode::Unsigned,
        E::UnknownKey(_) => ErrorCode::UnknownKey,
        E::BadSignature(_) => ErrorCode::BadSignature,
        E::WrongBoard { .. } => ErrorCode::WrongBoard,
        E::Downgrade { .. } => ErrorCode::Downgrade,
        E::Tampered(_) => ErrorCode::Tampered,
        E::Io { .. } | E::Key(_) => ErrorCode::Io,
    };
    (code, e.to_string())
}

/// Host-side tuning of the sender.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub max_chunk: u32,
    pub min_chunk: u32,
    pub start_chunk: u32,
    pub window: u16,
    /// Retransmit when no ACK progress for this long.
    pub rto: Duration,
    /// Give up (resumably) after this many consecutive timeouts.
    pub max_timeouts: u32,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            max_chunk: 16 * 1024,
            min_chunk: 256,
            start_chunk: 4 * 1024,
            window: 8,
            rto: Duration::from_millis(500),
            max_timeouts: 8,
        }
    }
}

/// What a transfer did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SendStats {
    pub resumed_from: u64,
    pub size: u64,
    /// Payload bytes written to the link, retransmissions included.
    pub bytes_sent: u64,
    pub retransmitted_bytes: u64,
    pub naks: u64,
    pub timeouts: u64,
    pub final_chunk: u32,
    pub seconds: f64,
}

impl SendStats {
    /// New bytes delivered per second.
    pub fn goodput(&self) -> f64 {
        (self.size - self.resumed_from) as f64 / self.seconds.max(1e-9)
    }
}

/// Host end: sends `data[start..]`, returns once the device has acknowledged every byte.
pub fn send(
    link: &mut Link,
    data: &[u8],
    start: u64,
    opts: &SendOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<SendStats, ClientError> {
    let size = data.len() as u64;
    let t0 = Instant::now();
    let mut stats = SendStats {
        resumed_from: start,
        size,
        ..Default::default()
    };
    let (min_chunk, max_chunk) = (opts.min_chunk.max(1), opts.max_chunk.max(opts.min_chunk));
    let mut chunk = opts.start_chunk.clamp(min_chunk, max_chunk);
    let window = usize::from(opts.window.max(1));
    let (mut base, mut next, mut high_water) = (start, start, start);
    let mut inflight: VecDeque<u64> = VecDeque::new(); // end offsets
    let mut clean = 0u32;
    let mut consecutive_timeouts = 0u32;
    let mut last_progress = Instant::now();
    while base < size {
        while inflight.len() < window && next < size {
            let len = (size - next).min(u64::from(chunk));
            let msg = Msg::Chunk {
                offset: next,
                data: data[next as usize..(next + len) as usize].to_vec(),
            };
            if inflight.is_empty() {
                last_progress = Instant::now();
            }
            link.send(0, &msg)?;
            if next < high_water {
                stats.retransmitted_bytes += len.min(high_water - next);
            }
            stats.bytes_sent += len;
            next += len;
            high_water = high_water.max(next);
            inflight.push_back(next);
        }
        let wait = opts.rto.saturating_sub(last_progress.elapsed());
        match link.recv(wait)? {
            Some(env) => match env.msg {
                Msg::Ack { next_offset, nak } => {
                    if next_offset > base && next_offset <= size {
                        base = next_offset;
                        while inflight.front().is_some_and(|&end| end <= base) {
                            inflight.pop_front();
                        }
                        if base > next {
                            next = base;
                            inflight.clear();
                        }
                        last_progress = Instant::now();
                        consecutive_timeouts = 0;
                        progress(base);
                        clean += 1;
                        if clean >= 32 {
                            chunk = (chunk * 2).min(max_chunk);
                            clean = 0;
                        }
                    }
                    if nak && next_offset == base && next > base {
                        stats.naks += 1;
                        next = base;
                        inflight.clear();
                        chunk = (chunk / 2).max(min_chunk);
                        clean = 0;
                    }
                }
                Msg::Error { code, message } => {
                    return Err(ClientError::Rejected { code, message });
                }
                _ => {} // a stale reply to an earlier request
            },
            None => {
                if last_progress.elapsed() < opts.rto {
                    continue;
                }
                stats.timeouts += 1;
                consecutive_timeouts += 1;
                if consecutive_timeouts > opts.max_timeouts {
                    return Err(ClientError::Timeout {
                        what: format!("transfer stalled at byte {base} of {size}"),
                        attempts: consecutive_timeouts,
                    });
                }
                next = base;
                inflight.clear();
                chunk = (chunk / 2).max(min_chunk);
                clean = 0;
                last_progress = Instant::now();
            }
        }
    }
    stats.final_chunk = chunk;
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}
