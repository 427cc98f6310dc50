//! Host end of the link: a framed port with a reader thread, and the request/response client
//! `tirp` uses (handshake, status, flash with resume, signed state changes, log pulls).

use super::frame::{self, Deframer, FrameError};
use super::proto::{Auth, DeviceInfo, Envelope, ErrorCode, LogRecordWire, Msg, PROTO_VERSION};
use super::transfer::{self, SendOptions, SendStats};
use crate::bundle;
use crate::slots::SlotsReport;
use ed25519_dalek::SigningKey;
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no answer from the device: {what} ({attempts} attempts)")]
    Timeout { what: String, attempts: u32 },
    #[error("device refused ({code:?}): {message}")]
    Rejected { code: ErrorCode, message: String },
    #[error(
        "the device speaks link protocol v{peer}, this tool speaks v{PROTO_VERSION}: update one of them"
    )]
    Version { peer: u16 },
    #[error("link closed: {0}")]
    Disconnected(String),
    #[error("unexpected reply from the device: {0}")]
    Protocol(String),
    #[error("serial I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
}

impl ClientError {
    /// Whether running the same command again continues where this one stopped.
    pub fn resumable(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::Disconnected(_) | Self::Io(_)
        ) || matches!(
            self,
            Self::Rejected {
                code: ErrorCode::Busy | ErrorCode::Io,
                ..
            }
        )
    }
}

enum Event {
    Frame(Box<Envelope>),
    Version(u16),
    Closed(String),
}

/// A framed, full-duplex port: frames out through `send`, in through a reader thread.
pub struct Link {
    writer: Box<dyn Write + Send>,
    rx: mpsc::Receiver<Event>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    /// Frames dropped for CRC/COBS/overflow errors (shared with the reader thread).
    bad_frames: Arc<std::sync::atomic::AtomicU64>,
}

impl Link {
    /// `reader` must return within a bounded time (a read timeout): `TimedOut`/`WouldBlock`
    /// are treated as "no data yet", so the thread can notice when the link is dropped.
    pub fn new(reader: impl Read + Send + 'static, writer: impl Write + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let bad_frames = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, bad2) = (stop.clone(), bad_frames.clone());
        let reader = std::thread::Builder::new()
            .name("link-reader".into())
            .spawn(move || read_loop(reader, tx, stop2, bad2))
            .expect("spawn link reader");
        Self {
            writer: Box::new(writer),
            rx,
            stop,
            reader: Some(reader),
            bad_frames,
        }
    }

    pub fn send(&mut self, id: u32, msg: &Msg) -> Result<(), ClientError> {
        let bytes = frame::encode(id, msg);
        self.writer.write_all(&bytes).map_err(|e| match e.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => ClientError::Timeout {
                what: "the device is not reading (write timed out)".into(),
                attempts: 1,
            },
            _ => ClientError::Io(e),
        })?;
        self.writer.flush()?;
        Ok(())
    }

    /// Next good frame within `timeout` (`None` on timeout).
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Envelope>, ClientError> {
        match self.rx.recv_timeout(timeout) {
            Ok(Event::Frame(env)) => Ok(Some(*env)),
            Ok(Event::Version(peer)) => Err(ClientError::Version { peer }),
            Ok(Event::Closed(why)) => Err(ClientError::Disconnected(why)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(ClientError::Disconnected("reader stopped".into()))
            }
        }
    }

    pub fn bad_frames(&self) -> u64 {
        self.bad_frames.load(Ordering::Relaxed)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

fn read_loop(
    mut reader: impl Read,
    tx: mpsc::Sender<Event>,
    stop: Arc<AtomicBool>,
    bad: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut deframer = Deframer::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match reader.read(&mut buf) {
            Ok(0) => {
                let _ = tx.send(Event::Closed("end of stream".into()));
                return;
            }
            Ok(n) => {
                let mut gone = false;
                deframer.push(&buf[..n], |r| {
                    let ev = match r {
                        Ok(env) => Event::Frame(Box::new(env)),
                        Err(FrameError::Version { peer }) => Event::Version(peer),
                        Err(_) => {
                            bad.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    gone |= tx.send(ev).is_err();
                });
                if gone {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                let _ = tx.send(Event::Closed(e.to_string()));
                return;
            }
        }
    }
}

/// Opens a serial port (a real UART/USB-ACM device or a pty) as a [`Link`].
pub fn open_serial(path: &str, baud: u32) -> Result<Link, std::io::Error> {
    #[cfg(unix)]
    {
        use serialport::SerialPort;
        let port = serialport::new(path, baud)
            .timeout(Duration::from_millis(20))
            .open_native()
            .map_err(std::io::Error::from)?;
        // Bytes an earlier session left in the buffers are not ours.
        port.clear(serialport::ClearBuffer::All)
            .map_err(std::io::Error::from)?;
        tty_link(port)
    }
    #[cfg(not(unix))]
    {
        let port = serialport::new(path, baud)
            .timeout(Duration::from_millis(20))
            .open()
            .map_err(std::io::Error::from)?;
        let writer = port.try_clone().map_err(std::io::Error::from)?;
        Ok(Link::new(port, writer))
    }
}

/// A [`Link`] over an open tty: the reader polls every 20 ms, the writer may block up to 5 s
/// while the far side drains a full buffer.
#[cfg(unix)]
pub fn tty_link(mut port: serialport::TTYPort) -> Result<Link, std::io::Error> {
    use serialport::SerialPort;
    let mut writer = port.try_clone_native().map_err(std::io::Error::from)?;
    writer
        .set_timeout(Duration::from_secs(5))
        .map_err(std::io::Error::from)?;
    port.set_timeout(Duration::from_millis(20))
        .map_err(std::io::Error::from)?;
    Ok(Link::new(port, writer))
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub send: SendOptions,
    pub request_timeout: Duration,
    pub retries: u32,
    /// Commit verifies and extracts the whole bundle: allow it time.
    pub commit_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            send: SendOptions::default(),
            request_timeout: Duration::from_secs(2),
            retries: 3,
            commit_timeout: Duration::from_secs(300),
        }
    }
}

/// What a flash did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlashReport {
    pub sha256: String,
    pub size: u64,
    pub transfer: SendStats,
    pub slots: SlotsReport,
}

/// One page of log records.
#[derive(Debug, Clone)]
pub struct LogPage {
    pub since_seq: u64,
    pub first_seq: u64,
    pub next_seq: u64,
    pub more: bool,
    pub records: Vec<LogRecordWire>,
}

pub struct Client {
    link: Link,
    pub info: DeviceInfo,
    opts: ClientOptions,
    next_id: u32,
    /// Handshake round trip (sets the retransmit timeout floor).
    pub rtt: Duration,
}

impl Client {
    /// Handshake: negotiates chunk size and window (both sides take the minimum).
    pub fn connect(link: Link, mut opts: ClientOptions) -> Result<Self, ClientError> {
        let mut c = Self {
            link,
            info: placeholder_info(),
            opts: opts.clone(),
            next_id: 1,
            rtt: Duration::ZERO,
        };
        // A lone sentinel ends any partial frame the device holds from an earlier session.
        c.link.writer.write_all(&[0]).map_err(ClientError::Io)?;
        let t0 = Instant::now();
        let reply = c.request(
            &Msg::Hello {
                max_chunk: opts.send.max_chunk,
                window: opts.send.window,
            },
            opts.request_timeout,
        )?;
        c.rtt = t0.elapsed();
        let Msg::HelloAck {
            max_chunk,
            window,
            info,
        } = reply
        else {
            return Err(ClientError::Protocol(format!("{reply:?} to Hello")));
        };
        opts.send.max_chunk = opts.send.max_chunk.min(max_chunk);
        opts.send.start_chunk = opts.send.start_chunk.min(opts.send.max_chunk);
        opts.send.min_chunk = opts.send.min_chunk.min(opts.send.max_chunk);
        opts.send.window = opts.send.window.min(window).max(1);
        opts.send.rto = opts.send.rto.max(c.rtt * 4);
        c.opts = opts;
        c.info = info;
        Ok(c)
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// Sends `msg` and waits for the reply with the same id, re-sending the same request (the
    /// device treats every request idempotently) on timeout, a bounded number of times.
    pub fn request(&mut self, msg: &Msg, timeout: Duration) -> Result<Msg, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        for _ in 0..=self.opts.retries {
            self.link.send(id, msg)?;
            let deadline = Instant::now() + timeout;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match self.link.recv(left)? {
                    Some(env) if env.id == id => {
                        return match env.msg {
                            Msg::Error { code, message } => {
                                Err(ClientError::Rejected { code, message })
                            }
                            other => Ok(other),
                        };
                    }
                    Some(_) => {} // stale reply to an earlier request or chunk
                    None => break,
                }
            }
        }
        Err(ClientError::Timeout {
            what: format!("{} request", msg_name(msg)),
            attempts: self.opts.retries + 1,
        })
    }

    pub fn status(&mut self) -> Result<DeviceInfo, ClientError> {
        match self.request(&Msg::GetStatus, self.opts.request_timeout)? {
            Msg::Status(info) => {
                self.info = info.clone();
                Ok(info)
            }
            other => Err(ClientError::Protocol(format!("{other:?} to GetStatus"))),
        }
    }

    /// Transfers (resuming where the device stopped) and installs a bundle into the candidate
    /// slot. The bundle is checked here first, so an obviously wrong file never goes out.
    pub fn flash(
        &mut self,
        bundle_bytes: &[u8],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<FlashReport, ClientError> {
        use sha2::Digest;
        let sha256: [u8; 32] = sha2::Sha256::digest(bundle_bytes).into();
        let size = bundle_bytes.len() as u64;
        let resume_from =
            match self.request(&Msg::Begin { sha256, size }, self.opts.request_timeout)? {
                Msg::BeginAck { resume_from } if resume_from <= size => resume_from,
                other => return Err(ClientError::Protocol(format!("{other:?} to Begin"))),
            };
        progress(resume_from, size);
        let opts = self.opts.send.clone();
        let transfer = transfer::send(
            &mut self.link,
            bundle_bytes,
            resume_from,
            &opts,
            &mut |at| progress(at, size),
        )?;
        let slots = match self.request(&Msg::Commit { sha256 }, self.opts.commit_timeout)? {
            Msg::Installed(slots) => slots,
            other => return Err(ClientError::Protocol(format!("{other:?} to Commit"))),
        };
        self.info.slots = slots.clone();
        Ok(FlashReport {
            sha256: hex::encode(sha256),
            size,
            transfer,
            slots,
        })
    }

    fn auth(&mut self, key: &SigningKey, action: &[u8]) -> Result<Auth, ClientError> {
        let nonce = match self.request(&Msg::GetChallenge, self.opts.request_timeout)? {
            Msg::Challenge { nonce } => nonce,
            other => return Err(ClientError::Protocol(format!("{other:?} to GetChallenge"))),
        };
        let (key_id, signature) = bundle::sign_auth(key, &self.info.device_id, &nonce, action);
        Ok(Auth { key_id, signature })
    }

    fn state_change(&mut self, msg: Msg) -> Result<SlotsReport, ClientError> {
        match self.request(&msg, self.opts.commit_timeout)? {
            Msg::Done(slots) => {
                self.info.slots = slots.clone();
                Ok(slots)
            }
            other => Err(ClientError::Protocol(format!(
                "{other:?} to {}",
                msg_name(&msg)
            ))),
        }
    }

    /// Activates the installed candidate (health check included), signed with `key`.
    pub fn activate(&mut self, key: &SigningKey) -> Result<SlotsReport, ClientError> {
        let auth = self.auth(key, ACTION_ACTIVATE)?;
        self.state_change(Msg::Activate { auth })
    }

    pub fn rollback(&mut self, key: &SigningKey) -> Result<SlotsReport, ClientError> {
        let auth = self.auth(key, ACTION_ROLLBACK)?;
        self.state_change(Msg::Rollback { auth })
    }

    pub fn trust_key(&mut self, pem: &str, key: &SigningKey) -> Result<SlotsReport, ClientError> {
        let auth = self.auth(key, &trust_action(pem))?;
        self.state_change(Msg::TrustKey {
            pem: pem.to_owned(),
            auth,
        })
    }

    pub fn distrust_key(
        &mut self,
        key_id: [u8; 8],
        key: &SigningKey,
    ) -> Result<SlotsReport, ClientError> {
        let auth = self.auth(key, &distrust_action(&key_id))?;
        self.state_change(Msg::DistrustKey { key_id, auth })
    }

    /// One page of the device log from `since_seq`; `ack` confirms everything below it as
    /// durably stored on the host.
    pub fn logs_page(
        &mut self,
        since_seq: u64,
        max_records: u32,
        max_bytes: u32,
        ack: bool,
    ) -> Result<LogPage, ClientError> {
        let msg = Msg::LogPull {
            since_seq,
            max_records,
            max_bytes,
            ack,
        };
        match self.request(&msg, self.opts.request_timeout)? {
            Msg::LogBatch {
                since_seq: echoed,
                first_seq,
                next_seq,
                more,
                records,
            } if echoed == since_seq => Ok(LogPage {
                since_seq,
                first_seq,
                next_seq,
                more,
                records,
            }),
            other => Err(ClientError::Protocol(format!("{other:?} to LogPull"))),
        }
    }
}

pub const ACTION_ACTIVATE: &[u8] = b"activate";
pub const ACTION_ROLLBACK: &[u8] = b"rollback";

/// A key-ring change signs the key it adds, so the signature cannot be reused for another.
pub fn trust_action(pem: &str) -> Vec<u8> {
    use sha2::Digest;
    [
        b"trust-key:".as_slice(),
        &sha2::Sha256::digest(pem.trim().as_bytes()),
    ]
    .concat()
}

pub fn distrust_action(key_id: &[u8; 8]) -> Vec<u8> {
    [b"distrust-key:".as_slice(), key_id].concat()
}

fn msg_name(msg: &Msg) -> &'static str {
    match msg {
        Msg::Hello { .. } => "Hello",
        Msg::GetStatus => "GetStatus",
        Msg::Begin { .. } => "Begin",
        Msg::Commit { .. } => "Commit",
        Msg::GetChallenge => "GetChallenge",
        Msg::Activate { .. } => "Activate",
        Msg::Rollback { .. } => "Rollback",
        Msg::TrustKey { .. } => "TrustKey",
        Msg::DistrustKey { .. } => "DistrustKey",
        Msg::LogPull { .. } => "LogPull",
        _ => "other",
    }
}

fn placeholder_info() -> DeviceInfo {
    DeviceInfo {
        device_id: String::new(),
        board: String::new(),
        firmware_version: String::new(),
        proto: PROTO_VERSION,
        free_space: 0,
        keyring: Vec::new(),
        slots: SlotsReport::empty(),
        log_next_seq: 0,
    }
}
