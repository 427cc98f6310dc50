//! Device side of the provisioning link: answers `tirp` over any byte port (UART, USB-ACM
//! gadget, pty). Owns the slots, the keyring, the staging area and the device log.
//!
//! Data directory layout: `device-id`, `keyring/*.pem`, `incoming/` (staging), `slots/`
//! (A/B and their state), `log/` (device log), `study-salt` (salt of the pseudonymous study
//! keys in inference records; never leaves the device).

use crate::bundle::{self, Header, Keyring, Policy};
use crate::devlog::{self, DevLog, EventRecord, LogEntry, LogOptions};
use crate::link::client::{ACTION_ACTIVATE, ACTION_ROLLBACK, distrust_action, trust_action};
use crate::link::frame::{self, Deframer, FrameError};
use crate::link::proto::{Auth, DeviceInfo, ErrorCode, LogRecordWire, Msg, PROTO_VERSION};
use crate::link::transfer::{self, Receiver, Refusal};
use crate::slots::{HealthCheck, SlotError, SlotEvent, SlotManager};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Largest chunk the device accepts (its frame buffer bounds it).
pub const DEVICE_MAX_CHUNK: u32 = 16 * 1024;
pub const DEVICE_MAX_WINDOW: u16 = 8;
/// Log pages stay well inside one frame.
const LOG_PAGE_BYTES: u32 = 40 * 1024;
const LOG_PAGE_RECORDS: u32 = 500;

#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub data_dir: PathBuf,
    pub board_id: String,
    pub firmware_version: String,
    /// Restarts a slot on trial may see before it is reverted.
    pub max_trial_boots: u32,
    pub log: LogOptions,
    /// Test hook: simulate the process dying before durable slot step `k`.
    #[doc(hidden)]
    pub crash_at: Option<usize>,
}

impl DeviceConfig {
    pub fn new(data_dir: &Path, board_id: &str) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            board_id: board_id.to_owned(),
            firmware_version: env!("CARGO_PKG_VERSION").to_owned(),
            max_trial_boots: 3,
            log: LogOptions::default(),
            crash_at: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Slots(#[from] SlotError),
    #[error(transparent)]
    Log(#[from] devlog::LogError),
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    /// The simulated crash fired (tests): the device must be reopened.
    #[error("simulated crash at step {0}")]
    Crashed(usize),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeviceError {
    let context = context.into();
    move |source| DeviceError::Io { context, source }
}

struct Session {
    receiver: Receiver,
    /// (request id, nonce) of the outstanding challenge: a retried request gets the same one.
    challenge: Option<(u32, [u8; 32])>,
    /// Last reply, re-sent when a request is retried with the same id (idempotency).
    last: Option<(u32, Msg)>,
}

pub struct Device {
    cfg: DeviceConfig,
    device_id: String,
    study_salt: Vec<u8>,
    slots: Mutex<SlotManager>,
    log: Mutex<DevLog>,
    keyring: RwLock<Keyring>,
    session: Mutex<Session>,
    health: Arc<dyn HealthCheck>,
    /// Bumped on every change of the active slot, so the engine reloads between studies.
    generation: AtomicU64,
    crashed: AtomicBool,
}

impl Device {
    /// Opens the data directory, repairs state after any crash and resolves a pending trial.
    pub fn open(cfg: DeviceConfig, health: Arc<dyn HealthCheck>) -> Result<Self, DeviceError> {
        let dir = &cfg.data_dir;
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let device_id = load_or_create_device_id(dir)?;
        let study_salt = load_or_create_salt(dir)?;
        let mut log = DevLog::open(&dir.join("log"), cfg.log.clone())?;
        if log.recovery.truncated_bytes > 0 {
            log.append_entry(&LogEntry::Event(EventRecord::now(
                "log_recovered",
                format!(
                    "truncated a torn tail of {} bytes",
                    log.recovery.truncated_bytes
                ),
            )))?;
        }
        let keyring = Keyring::load_dir(&dir.join("keyring"))?;
        let mut slots = match SlotManager::open_with_crash(
            &dir.join("slots"),
            health.as_ref(),
            cfg.max_trial_boots,
            cfg.crash_at,
        ) {
            Err(SlotError::Crashed(k)) => return Err(DeviceError::Crashed(k)),
            other => other?,
        };
        log_slot_events(&mut log, slots.take_events())?;
        log.append_entry(&LogEntry::Event(EventRecord::now(
            "start",
            format!(
                "tirpd {} on {} ({} trusted keys)",
                cfg.firmware_version,
                cfg.board_id,
                keyring.ids().len()
            ),
        )))?;
        Ok(Self {
            session: Mutex::new(Session {
                receiver: Receiver::new(&dir.join("incoming")),
                challenge: None,
                last: None,
            }),
            cfg,
            device_id,
            study_salt,
            slots: Mutex::new(slots),
            log: Mutex::new(log),
            keyring: RwLock::new(keyring),
            health,
            generation: AtomicU64::new(0),
            crashed: AtomicBool::new(false),
        })
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The pseudonymous study key of a Study Instance UID on this device.
    pub fn study_key(&self, study_instance_uid: &str) -> String {
        devlog::study_key(&self.study_salt, study_instance_uid)
    }

    pub fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    /// Incremented whenever the active slot changes.
    pub fn active_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The active bundle (slot directory and manifest), for the inference engine.
    pub fn active_bundle(&self) -> Result<Option<(PathBuf, bundle::Manifest)>, DeviceError> {
        let slots = self.slots.lock().expect("slots lock");
        Ok(slots.active()?.map(|(_, dir, m)| (dir, m)))
    }

    /// Appends an entry to the device log (inference records come through here).
    pub fn log_entry(&self, entry: &LogEntry) -> Result<u64, DeviceError> {
        Ok(self.log.lock().expect("log lock").append_entry(entry)?)
    }

    /// Whether the device log already holds exactly this entry (crash recovery: a study
    /// committed just before a crash is logged once, not twice). Scans the whole log.
    pub fn has_logged(&self, entry: &LogEntry) -> Result<bool, DeviceError> {
        let log = self.log.lock().expect("log lock");
        let mut since = 1;
        loop {
            let page = log.read_since(since, 4096, 1 << 22)?;
            if page.records.iter().any(|r| {
                serde_json::from_slice::<LogEntry>(&r.payload).ok().as_ref() == Some(entry)
            }) {
                return Ok(true);
            }
            if !page.more || page.next_seq <= since {
                return Ok(false);
            }
            since = page.next_seq;
        }
    }

    pub fn info(&self) -> DeviceInfo {
        DeviceInfo {
            device_id: self.device_id.clone(),
            board: self.cfg.board_id.clone(),
            firmware_version: self.cfg.firmware_version.clone(),
            proto: PROTO_VERSION,
            free_space: devlog::free_space(&self.cfg.data_dir).unwrap_or(0),
            keyring: self
                .keyring
                .read()
                .expect("keyring lock")
                .ids()
                .iter()
                .map(hex::encode)
                .collect(),
            slots: self.slots.lock().expect("slots lock").report().clone(),
            log_next_seq: self.log.lock().expect("log lock").next_seq(),
        }
    }

    fn event(&self, event: &str, detail: impl Into<String>) {
        // The log failing must not take the link down; the error reaches the host instead.
        let _ = self.log_entry(&LogEntry::Event(EventRecord::now(event, detail)));
    }

    /// Serves one port until `stop` is set, the port ends or hangs up (`Ok`), or a simulated
    /// crash.
    pub fn serve(
        &self,
        reader: &mut dyn Read,
        writer: &mut dyn Write,
        stop: &AtomicBool,
    ) -> Result<(), DeviceError> {
        let mut deframer = Deframer::new();
        let mut buf = vec![0u8; 32 * 1024];
        let mut version_reported = false;
        while !stop.load(Ordering::Relaxed) {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                // The far end hung up (host closed its pty, USB cable pulled).
                Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(io_err("read serial port")(e)),
            };
            let mut replies = Vec::new();
            deframer.push(&buf[..n], |r| match r {
                Ok(env) => replies.push((env.id, Some(env.msg))),
                Err(FrameError::Version { peer }) => replies.push((peer.into(), None)),
                Err(_) => {} // corrupted: the host's timeout or the next NAK recovers
            });
            for (id, msg) in replies {
                let reply = match msg {
                    Some(msg) => self.handle(id, msg),
                    None => {
                        if !version_reported {
                            version_reported = true;
                            self.event(
                                "error",
                                format!("host speaks link protocol v{id}, device v{PROTO_VERSION}"),
                            );
                        }
                        Some((
                            0,
                            Msg::Error {
                                code: ErrorCode::VersionMismatch,
                                message: format!(
                                    "device speaks link protocol v{PROTO_VERSION}, host v{id}"
                                ),
                            },
                        ))
                    }
                };
                if self.crashed.load(Ordering::Relaxed) {
                    let k = self.cfg.crash_at.unwrap_or(0);
                    return Err(DeviceError::Crashed(k));
                }
                if let Some((id, reply)) = reply {
                    match writer.write_all(&frame::encode(id, &reply)) {
                        Ok(()) => {}
                        // Nobody reads (host gone): drop the reply, keep serving.
                        Err(e)
                            if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {}
                        Err(e) => return Err(io_err("write serial port")(e)),
                    }
                }
            }
            let _ = writer.flush();
        }
        Ok(())
    }

    /// Handles one request; `None` when no reply is due (a suppressed NAK).
    pub fn handle(&self, id: u32, msg: Msg) -> Option<(u32, Msg)> {
        if let Msg::Chunk { offset, data } = &msg {
            let mut s = self.session.lock().expect("session lock");
            let check = |h: &Header| self.check_header(h);
            return s.receiver.chunk(*offset, data, &check).map(|m| (0, m));
        }
        {
            let mut s = self.session.lock().expect("session lock");
            if matches!(msg, Msg::Hello { .. }) {
                s.last = None;
            } else if let Some((last_id, reply)) = &s.last
                && *last_id == id
            {
                return Some((id, reply.clone()));
            }
        }
        let reply = match self.dispatch(id, msg) {
            Ok(m) => m,
            Err((code, message)) => Msg::Error { code, message },
        };
        self.session.lock().expect("session lock").last = Some((id, reply.clone()));
        Some((id, reply))
    }

    fn dispatch(&self, id: u32, msg: Msg) -> Result<Msg, Refusal> {
        match msg {
            Msg::Hello { max_chunk, window } => Ok(Msg::HelloAck {
                max_chunk: max_chunk.min(DEVICE_MAX_CHUNK),
                window: window.clamp(1, DEVICE_MAX_WINDOW),
                info: self.info(),
            }),
            Msg::GetStatus => Ok(Msg::Status(self.info())),
            Msg::Begin { sha256, size } => {
                // Flashing what is already installed transfers nothing (Commit is idempotent).
                if self.already_installed(&sha256).is_some() {
                    return Ok(Msg::BeginAck { resume_from: size });
                }
                let free = devlog::free_space(&self.cfg.data_dir);
                let mut s = self.session.lock().expect("session lock");
                let check = |h: &Header| self.check_header(h);
                let resume_from = s.receiver.begin(sha256, size, free, &check)?;
                drop(s);
                if resume_from > 0 {
                    self.event(
                        "transfer_resume",
                        format!("{} from byte {resume_from} of {size}", hex::encode(sha256)),
                    );
                }
                Ok(Msg::BeginAck { resume_from })
            }
            Msg::Commit { sha256 } => self.commit(sha256),
            Msg::GetChallenge => {
                let mut s = self.session.lock().expect("session lock");
                let nonce = match s.challenge {
                    Some((cid, n)) if cid == id => n,
                    _ => {
                        let n = random_nonce().map_err(|e| (ErrorCode::Io, e))?;
                        s.challenge = Some((id, n));
                        n
                    }
                };
                Ok(Msg::Challenge { nonce })
            }
            Msg::Activate { auth } => {
                self.authorise(&auth, ACTION_ACTIVATE)?;
                let mut slots = self.slots.lock().expect("slots lock");
                let r = slots.activate(self.health.as_ref());
                self.after_slot_change(&mut slots, r).map(Msg::Done)
            }
            Msg::Rollback { auth } => {
                self.authorise(&auth, ACTION_ROLLBACK)?;
                let mut slots = self.slots.lock().expect("slots lock");
                let r = slots.rollback();
                self.after_slot_change(&mut slots, r).map(Msg::Done)
            }
            Msg::TrustKey { pem, auth } => {
                self.authorise(&auth, &trust_action(&pem))?;
                let key = bundle::parse_public_key(&pem)
                    .map_err(|e| (ErrorCode::BadBundle, e.to_string()))?;
                let kid = bundle::key_id(&key);
                let dir = self.cfg.data_dir.join("keyring");
                write_atomic(
                    &dir.join(format!("{}.pem", hex::encode(kid))),
                    pem.trim().as_bytes(),
                )
                .map_err(|e| (ErrorCode::Io, e.to_string()))?;
                self.keyring.write().expect("keyring lock").add(key);
                self.event(
                    "keyring",
                    format!(
                        "trusted key {} (by {})",
                        hex::encode(kid),
                        hex::encode(auth.key_id)
                    ),
                );
                Ok(Msg::Done(
                    self.slots.lock().expect("slots lock").report().clone(),
                ))
            }
            Msg::DistrustKey { key_id, auth } => {
                self.authorise(&auth, &distrust_action(&key_id))?;
                self.distrust(key_id)?;
                self.event(
                    "keyring",
                    format!(
                        "removed key {} (by {})",
                        hex::encode(key_id),
                        hex::encode(auth.key_id)
                    ),
                );
                Ok(Msg::Done(
                    self.slots.lock().expect("slots lock").report().clone(),
                ))
            }
            Msg::LogPull {
                since_seq,
                max_records,
                max_bytes,
                ack,
            } => {
                let mut log = self.log.lock().expect("log lock");
                if ack {
                    log.mark_pulled(since_seq)
                        .map_err(|e| (ErrorCode::Io, e.to_string()))?;
                }
                let page = log
                    .read_since(
                        since_seq,
                        max_records.clamp(1, LOG_PAGE_RECORDS),
                        max_bytes.clamp(1, LOG_PAGE_BYTES),
                    )
                    .map_err(|e| (ErrorCode::Io, e.to_string()))?;
                Ok(Msg::LogBatch {
                    since_seq,
                    first_seq: page.first_seq,
                    next_seq: page.next_seq,
                    more: page.more,
                    records: page
                        .records
                        .into_iter()
                        .map(|r| LogRecordWire {
                            seq: r.seq,
                            payload: r.payload,
                        })
                        .collect(),
                })
            }
            other => Err((ErrorCode::Protocol, format!("unexpected message {other:?}"))),
        }
    }

    fn policy_floor(&self) -> u32 {
        self.slots
            .lock()
            .expect("slots lock")
            .report()
            .security_floor
    }

    fn check_header(&self, header: &Header) -> Result<(), Refusal> {
        let ring = self.keyring.read().expect("keyring lock");
        let policy = Policy {
            keyring: &ring,
            board: &self.cfg.board_id,
            security_floor: self.policy_floor(),
        };
        bundle::verify_header(header, &policy)
            .map(|_| ())
            .map_err(|e| transfer::refusal(&e))
    }

    /// Whether this bundle already sits installed in the candidate slot or is active.
    fn already_installed(&self, sha256: &[u8; 32]) -> Option<crate::slots::SlotsReport> {
        let sha_hex = hex::encode(sha256);
        let slots = self.slots.lock().expect("slots lock");
        let r = slots.report();
        let holds = |id| {
            r.slot(id)
                .bundle
                .as_ref()
                .is_some_and(|b| b.sha256 == sha_hex)
        };
        let cand = r.candidate();
        (holds(cand) && r.slot(cand).state == crate::slots::SlotState::Installed
            || r.active.is_some_and(holds))
        .then(|| r.clone())
    }

    fn commit(&self, sha256: [u8; 32]) -> Result<Msg, Refusal> {
        let sha_hex = hex::encode(sha256);
        if let Some(r) = self.already_installed(&sha256) {
            return Ok(Msg::Installed(r));
        }
        let path = self
            .session
            .lock()
            .expect("session lock")
            .receiver
            .finish(sha256)?;
        let ring = self.keyring.read().expect("keyring lock").clone();
        // Lock order everywhere: session before slots; never hold slots while taking session.
        let (result, report, events) = {
            let mut slots = self.slots.lock().expect("slots lock");
            let policy = Policy {
                keyring: &ring,
                board: &self.cfg.board_id,
                security_floor: slots.report().security_floor,
            };
            let result = slots.install(&path, &policy, &sha_hex);
            (result, slots.report().clone(), slots.take_events())
        };
        let _ = log_slot_events(&mut self.log.lock().expect("log lock"), events);
        let discard = || {
            self.session
                .lock()
                .expect("session lock")
                .receiver
                .discard(&sha256)
        };
        match result {
            Ok(_) => {
                discard();
                Ok(Msg::Installed(report))
            }
            Err(SlotError::Crashed(_)) => {
                self.crashed.store(true, Ordering::Relaxed);
                Err((ErrorCode::Io, "crashed".into()))
            }
            Err(SlotError::Bundle(e)) => {
                discard();
                self.event("install_rejected", e.to_string());
                Err(transfer::refusal(&e))
            }
            Err(e) => Err((ErrorCode::Io, e.to_string())),
        }
    }

    fn after_slot_change(
        &self,
        slots: &mut SlotManager,
        result: Result<crate::slots::SlotId, SlotError>,
    ) -> Result<crate::slots::SlotsReport, Refusal> {
        let events = slots.take_events();
        if !events.is_empty() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        let _ = log_slot_events(&mut self.log.lock().expect("log lock"), events);
        match result {
            Ok(_) => Ok(slots.report().clone()),
            Err(SlotError::Crashed(_)) => {
                self.crashed.store(true, Ordering::Relaxed);
                Err((ErrorCode::Io, "crashed".into()))
            }
            Err(e @ SlotError::NothingToActivate) => {
                Err((ErrorCode::NothingToActivate, e.to_string()))
            }
            Err(e @ (SlotError::NothingToRollBack | SlotError::RollbackBelowFloor { .. })) => {
                Err((ErrorCode::NothingToRollBack, e.to_string()))
            }
            Err(e @ SlotError::HealthCheck { .. }) => {
                Err((ErrorCode::HealthCheckFailed, e.to_string()))
            }
            Err(e) => Err((ErrorCode::Io, e.to_string())),
        }
    }

    /// Checks an engineer signature over the outstanding challenge; the nonce is single use.
    fn authorise(&self, auth: &Auth, action: &[u8]) -> Result<(), Refusal> {
        let nonce = self
            .session
            .lock()
            .expect("session lock")
            .challenge
            .take()
            .map(|(_, n)| n)
            .ok_or((ErrorCode::AuthFailed, "no challenge outstanding".to_owned()))?;
        let ring = self.keyring.read().expect("keyring lock");
        bundle::verify_auth(
            &ring,
            &auth.key_id,
            &auth.signature,
            &self.device_id,
            &nonce,
            action,
        )
        .map_err(|e| {
            self.event("auth_failed", e.to_string());
            (ErrorCode::AuthFailed, e.to_string())
        })
    }

    fn distrust(&self, key_id: [u8; 8]) -> Result<(), Refusal> {
        let dir = self.cfg.data_dir.join("keyring");
        let ring = self.keyring.read().expect("keyring lock").clone();
        if ring.get(&key_id).is_none() {
            return Err((
                ErrorCode::UnknownKey,
                format!("key {} is not trusted", hex::encode(key_id)),
            ));
        }
        if ring.ids().len() == 1 {
            return Err((
                ErrorCode::Protocol,
                "refusing to remove the last trusted key (the device could never be updated again)"
                    .into(),
            ));
        }
        for e in std::fs::read_dir(&dir).map_err(|e| (ErrorCode::Io, e.to_string()))? {
            let p = e.map_err(|e| (ErrorCode::Io, e.to_string()))?.path();
            if let Ok(pem) = std::fs::read_to_string(&p)
                && bundle::parse_public_key(&pem).is_ok_and(|k| bundle::key_id(&k) == key_id)
            {
                std::fs::remove_file(&p).map_err(|e| (ErrorCode::Io, e.to_string()))?;
            }
        }
        let fresh = Keyring::load_dir(&dir).map_err(|e| (ErrorCode::Io, e.to_string()))?;
        *self.keyring.write().expect("keyring lock") = fresh;
        Ok(())
    }
}

fn log_slot_events(log: &mut DevLog, events: Vec<SlotEvent>) -> Result<(), devlog::LogError> {
    for ev in events {
        let (event, detail, bundle) = match ev {
            SlotEvent::Installed { slot, bundle } => (
                "install",
                format!(
                    "{} {} into slot {}",
                    bundle.name,
                    bundle.version,
                    slot.name()
                ),
                Some(bundle.sha256),
            ),
            SlotEvent::Activated { slot } => {
                ("activate", format!("slot {} on trial", slot.name()), None)
            }
            SlotEvent::MarkedGood { slot } => (
                "health_check",
                format!("slot {} passed, marked good", slot.name()),
                None,
            ),
            SlotEvent::HealthCheckFailed { slot, message } => (
                "health_check",
                format!("slot {} failed: {message}", slot.name()),
                None,
            ),
            SlotEvent::TrialExpired { slot, boots } => (
                "rollback",
                format!("slot {} not marked good after {boots} starts", slot.name()),
                None,
            ),
            SlotEvent::Reverted { from, to } => (
                "rollback",
                format!(
                    "reverted from slot {} to {}",
                    from.name(),
                    to.map_or("none", |s| s.name())
                ),
                None,
            ),
            SlotEvent::RolledBack { from, to } => (
                "rollback",
                format!("rolled back from slot {} to {}", from.name(), to.name()),
                None,
            ),
            SlotEvent::SlotMissing { slot } => (
                "error",
                format!("slot {} missing on disk; forgotten", slot.name()),
                None,
            ),
        };
        let mut rec = EventRecord::now(event, detail);
        rec.bundle = bundle;
        log.append_entry(&LogEntry::Event(rec))?;
    }
    Ok(())
}

fn random_nonce() -> Result<[u8; 32], String> {
    use rand::TryRngCore;
    let mut n = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut n)
        .map_err(|e| format!("OS random source: {e}"))?;
    Ok(n)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("file in a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn load_or_create_salt(dir: &Path) -> Result<Vec<u8>, DeviceError> {
    let path = dir.join("study-salt");
    match std::fs::read(&path) {
        Ok(s) if s.len() == 32 => return Ok(s),
        Ok(_) | Err(_) if path.exists() => {
            return Err(DeviceError::Io {
                context: format!("{} is not a 32-byte salt", path.display()),
                source: std::io::Error::other("bad salt"),
            });
        }
        _ => {}
    }
    let salt = random_nonce().map_err(|e| DeviceError::Io {
        context: e,
        source: std::io::Error::other("random"),
    })?;
    write_atomic(&path, &salt).map_err(io_err(format!("write {}", path.display())))?;
    Ok(salt.to_vec())
}

/// The device id: kept in `device-id`; first set from the Jetson serial number when there
/// is one, else random.
fn load_or_create_device_id(dir: &Path) -> Result<String, DeviceError> {
    let path = dir.join("device-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_owned();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let serial = std::fs::read_to_string("/proc/device-tree/serial-number")
        .ok()
        .map(|s| {
            s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_owned()
        })
        .filter(|s| !s.is_empty());
    let id = match serial {
        Some(s) => format!("tirp-{s}"),
        None => format!(
            "tirp-{}",
            hex::encode(
                &random_nonce().map_err(|e| DeviceError::Io {
                    context: e,
                    source: std::io::Error::other("random"),
                })?[..6]
            )
        ),
    };
    write_atomic(&path, id.as_bytes()).map_err(io_err(format!("write {}", path.display())))?;
    Ok(id)
}
