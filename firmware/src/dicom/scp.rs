//! C-ECHO + C-STORE SCP: receives radiographs from DR stations and hands each complete
//! instance to an [`InstanceSink`].
//!
//! One thread per association (dicom-ul's sync API). A C-STORE-RSP is only sent after the
//! sink returned, so a "stored" status always means the instance is on disk; a data set is
//! only handed to the sink once its last fragment arrived, so an association that dies
//! mid-transfer never produces a partial instance.
//!
//! Over the association limit the connection gets an A-ASSOCIATE-RJ (transient,
//! service-provider, local-limit-exceeded), written by hand: dicom-ul's `AccessControl` can only
//! give service-user reasons.

use super::{
    IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS, describe_ul_error, error_chain, trim_uid, uid_hash, validate_ae_title,
};
use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::association::Association;
use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, PDataValue, PDataValueType, UserIdentity,
};
use dicom_ul::{Pdu, ServerAssociation, ServerAssociationOptions};
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};
use tracing::{error, info, warn};

/// DIMSE command field values (PS3.7 E.1).
const C_STORE_RQ: u16 = 0x0001;
const C_STORE_RSP: u16 = 0x8001;
const C_ECHO_RQ: u16 = 0x0030;
const C_ECHO_RSP: u16 = 0x8030;
const C_CANCEL_RQ: u16 = 0x0FFF;
/// Command Data Set Type "no data set".
const NO_DATA_SET: u16 = 0x0101;

/// C-STORE statuses (PS3.4 B.2.3).
pub const STATUS_SUCCESS: u16 = 0x0000;
pub const STATUS_OUT_OF_RESOURCES: u16 = 0xA700;
pub const STATUS_DATA_SET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
pub const STATUS_CANNOT_UNDERSTAND: u16 = 0xC000;
pub const STATUS_SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;

/// Error Comment (0000,0902) is LO: at most 64 characters.
const MAX_ERROR_COMMENT: usize = 64;
/// A single instance larger than this aborts the association instead of exhausting memory
/// (a large DX is ~50 MB uncompressed).
pub const MAX_INSTANCE_BYTES: usize = 1 << 30;
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(50);
/// Over-limit connections get at most this long to send their A-ASSOCIATE-RQ before the
/// A-ASSOCIATE-RJ; at most [`MAX_REJECTORS`] of them are handled at once, the rest are dropped.
const REJECT_READ_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_REJECTORS: usize = 4;
/// An A-ASSOCIATE-RQ is small (a few presentation contexts); a larger one over the limit is
/// not worth reading.
const MAX_RQ_BYTES: usize = 64 * 1024;

/// SCP settings.
#[derive(Debug, Clone)]
pub struct ScpConfig {
    /// Our AE title; associations calling any other title are rejected.
    pub ae_title: String,
    /// Calling AE titles allowed; empty = any calling AE.
    pub allow_ae: Vec<String>,
    /// Largest PDU we accept (A-ASSOCIATE-AC maximum length), default 16384.
    pub max_pdu: u32,
    /// Read (and write) timeout on an association's socket, default 30 s.
    pub read_timeout: Duration,
    /// Concurrent associations; more get A-ASSOCIATE-RJ local-limit-exceeded. Default 8.
    pub max_associations: usize,
}

impl Default for ScpConfig {
    fn default() -> Self {
        ScpConfig {
            ae_title: "TIRPD".into(),
            allow_ae: Vec::new(),
            max_pdu: 16384,
            read_timeout: Duration::from_secs(30),
            max_associations: 8,
        }
    }
}

/// One received instance, described for the sink (no patient data in here).
#[derive(Debug, Clone)]
pub struct ReceivedInstance {
    pub calling_ae: String,
    pub peer: SocketAddr,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax: String,
    /// When the C-STORE request's command arrived (first byte of this instance), wall clock.
    pub started: SystemTime,
}

/// Where received instances go (the daemon's spool).
pub trait InstanceSink: Send + Sync {
    /// Durably stores one received instance. `file` is a complete DICOM Part-10 file
    /// (preamble, file meta group built by the SCP with our implementation UID, then the data
    /// set bytes exactly as received in the negotiated transfer syntax, not re-encoded).
    /// Returns only when it is safely on disk; the SCP sends the C-STORE response after this
    /// returns.
    fn store(&self, instance: &ReceivedInstance, file: &[u8]) -> Result<(), SinkError>;
}

/// Why the sink refused an instance; decides the C-STORE-RSP status.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Refused for lack of resources: disk nearly full → status 0xA700.
    #[error("out of resources: {0}")]
    OutOfResources(String),
    /// The data set cannot be used (not greyscale, malformed, ...) → status 0xC000 "cannot
    /// understand", with the message as Error Comment (0000,0902), truncated to 64 chars.
    #[error("cannot understand: {0}")]
    CannotUnderstand(String),
}

impl SinkError {
    /// The C-STORE-RSP status for this refusal.
    pub fn status(&self) -> u16 {
        match self {
            SinkError::OutOfResources(_) => STATUS_OUT_OF_RESOURCES,
            SinkError::CannotUnderstand(_) => STATUS_CANNOT_UNDERSTAND,
        }
    }
}

/// Counters for the status page.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ScpStats {
    /// Associations accepted.
    pub associations: u64,
    /// Associations rejected (AE title not recognized, over the limit, bad request).
    pub rejected: u64,
    /// C-ECHO requests answered.
    pub echoes: u64,
    /// Instances stored (sink returned Ok, success status sent).
    pub stored: u64,
    /// Instances refused (any non-success C-STORE status).
    pub refused: u64,
    /// Associations open right now.
    pub active: u64,
}

#[derive(Debug, Default)]
struct Counters {
    associations: AtomicU64,
    rejected: AtomicU64,
    echoes: AtomicU64,
    stored: AtomicU64,
    refused: AtomicU64,
    /// Open associations (accepted connections being negotiated or served).
    active: AtomicUsize,
    /// Threads currently writing an over-limit A-ASSOCIATE-RJ.
    rejectors: AtomicUsize,
}

/// Live view of an SCP's counters; cheap to clone, stays valid after [`Scp::spawn`].
#[derive(Debug, Clone)]
pub struct ScpStatsHandle(Arc<Counters>);

impl ScpStatsHandle {
    /// Current counter values.
    pub fn snapshot(&self) -> ScpStats {
        let c = &self.0;
        ScpStats {
            associations: c.associations.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            echoes: c.echoes.load(Ordering::Relaxed),
            stored: c.stored.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            active: c.active.load(Ordering::Relaxed) as u64,
        }
    }
}

struct Shared {
    cfg: ScpConfig,
    sink: Arc<dyn InstanceSink>,
    counters: Arc<Counters>,
}

/// A bound, not yet running SCP.
pub struct Scp {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Scp {
    /// Binds the listening socket (port 0 picks a free one) and checks the configuration.
    pub fn bind(addr: SocketAddr, cfg: ScpConfig, sink: Arc<dyn InstanceSink>) -> io::Result<Scp> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        validate_ae_title(&cfg.ae_title).map_err(invalid)?;
        for ae in &cfg.allow_ae {
            validate_ae_title(ae).map_err(invalid)?;
        }
        // dicom-ul refuses to read any PDU with a maximum outside this range.
        if !(dicom_ul::pdu::MINIMUM_PDU_SIZE..=dicom_ul::pdu::MAXIMUM_PDU_SIZE)
            .contains(&cfg.max_pdu)
        {
            return Err(invalid(format!(
                "max PDU {} outside {}..={}",
                cfg.max_pdu,
                dicom_ul::pdu::MINIMUM_PDU_SIZE,
                dicom_ul::pdu::MAXIMUM_PDU_SIZE
            )));
        }
        if cfg.max_associations == 0 {
            return Err(invalid("max_associations must be at least 1".into()));
        }
        if cfg.read_timeout.is_zero() {
            return Err(invalid("read_timeout must not be zero".into()));
        }
        let listener = TcpListener::bind(addr)?;
        // Non-blocking so the accept loop can notice `stop`.
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        Ok(Scp {
            listener,
            local_addr,
            shared: Arc::new(Shared {
                cfg,
                sink,
                counters: Arc::default(),
            }),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Current counters.
    pub fn stats(&self) -> ScpStats {
        self.stats_handle().snapshot()
    }

    /// A handle on the counters that stays usable after [`Scp::spawn`].
    pub fn stats_handle(&self) -> ScpStatsHandle {
        ScpStatsHandle(self.shared.counters.clone())
    }

    /// Accepts associations on a thread each until `stop` is set (the listener is polled every
    /// 50 ms). The returned thread ends once the listener is closed; associations still open
    /// then finish on their own threads (release, abort or read timeout) and are not joined.
    pub fn spawn(self, stop: Arc<AtomicBool>) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name("dicom-scp".into())
            .spawn(move || self.run(&stop))
            .expect("spawning the DICOM SCP accept thread")
    }

    fn run(self, stop: &AtomicBool) {
        info!(
            addr = %self.local_addr,
            ae_title = self.shared.cfg.ae_title.as_str(),
            max_associations = self.shared.cfg.max_associations,
            max_pdu = self.shared.cfg.max_pdu,
            "dicom-scp: listening"
        );
        while !stop.load(Ordering::Acquire) {
            match self.listener.accept() {
                Ok((stream, peer)) => self.on_connection(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // e.g. EMFILE: back off rather than spin.
                    warn!(error = e.to_string(), "dicom-scp: accept failed");
                    std::thread::sleep(ACCEPT_POLL * 4);
                }
            }
        }
        info!(addr = %self.local_addr, "dicom-scp: stopped listening");
    }

    fn on_connection(&self, stream: TcpStream, peer: SocketAddr) {
        // Small PDUs (C-STORE-RSP) go out at once rather than waiting on Nagle + delayed ACK.
        let _ = stream.set_nodelay(true);
        let counters = &self.shared.counters;
        let max = self.shared.cfg.max_associations;
        let admitted = counters
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            reject_over_limit(stream, peer, counters.clone(), self.shared.cfg.max_pdu);
            return;
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("dicom-assoc-{peer}"))
            .spawn(move || {
                let _active = ActiveGuard(shared.counters.clone());
                serve_association(&shared, stream, peer);
            });
        if let Err(e) = spawned {
            // The closure (and its guard) never ran: undo the admission ourselves.
            counters.active.fetch_sub(1, Ordering::AcqRel);
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            warn!(peer = %peer.ip(), error = e.to_string(), "dicom-scp: association dropped: no thread");
        }
    }
}

/// Releases an association slot when the association thread ends, however it ends.
struct ActiveGuard(Arc<Counters>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers an over-limit connection with A-ASSOCIATE-RJ (rejected-transient,
/// service-provider presentation, local-limit-exceeded) on a short-lived thread; if too many
/// such threads are busy the TCP connection is just dropped.
fn reject_over_limit(stream: TcpStream, peer: SocketAddr, counters: Arc<Counters>, max_pdu: u32) {
    let busy = counters
        .rejectors
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_REJECTORS).then_some(n + 1)
        })
        .is_err();
    if busy {
        warn!(
            peer = %peer.ip(),
            "dicom-scp: association dropped: over the association limit"
        );
        return;
    }
    let c = counters.clone();
    let spawned = std::thread::Builder::new()
        .name("dicom-reject".into())
        .spawn(move || {
            let calling = write_limit_rejection(stream, max_pdu);
            c.rejectors.fetch_sub(1, Ordering::AcqRel);
            warn!(
                calling_ae = calling.as_deref().unwrap_or("?"),
                peer = %peer.ip(),
                reason = "local limit exceeded",
                "dicom-scp: association rejected"
            );
        });
    if spawned.is_err() {
        counters.rejectors.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads the A-ASSOCIATE-RQ (so closing does not reset the connection before the peer reads
/// our answer) and writes the rejection. Returns the calling AE title if it could be read.
fn write_limit_rejection(mut stream: TcpStream, max_pdu: u32) -> Option<String> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(REJECT_READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(REJECT_READ_TIMEOUT));
    let mut header = [0u8; 6];
    let mut calling = None;
    if stream.read_exact(&mut header).is_ok() {
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        if header[0] == 0x01 && len <= MAX_RQ_BYTES {
            let mut pdu = header.to_vec();
            pdu.resize(6 + len, 0);
            if stream.read_exact(&mut pdu[6..]).is_ok()
                && let Ok(Some(Pdu::AssociationRQ(rq))) =
                    dicom_ul::read_pdu(&pdu[..], max_pdu.max(MAX_RQ_BYTES as u32), false)
            {
                calling = Some(rq.calling_ae_title.trim().to_string());
            }
        }
    }
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut buf = Vec::new();
    if dicom_ul::write_pdu(&mut buf, &rj).is_ok() {
        let _ = stream.write_all(&buf);
        let _ = stream.flush();
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    calling
}

/// Called/calling AE title policy; remembers the titles it saw so a rejection can be logged.
struct AeAccess {
    allow: Vec<String>,
    seen: Arc<Mutex<Option<(String, String)>>>,
}

impl AccessControl for AeAccess {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let calling = calling_ae_title.trim();
        let called = called_ae_title.trim();
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some((calling.to_string(), called.to_string()));
        }
        if called != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|a| a.trim() == calling) {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// The C-STORE in progress on an association: its command, then the data set bytes.
struct PendingStore {
    pc_id: u8,
    message_id: u16,
    sop_class_uid: String,
    sop_instance_uid: String,
    started: SystemTime,
    data: Vec<u8>,
}

/// Per-association state between PDUs.
struct Session<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
    calling_ae: String,
    /// Command fragments of the message being received, and when its first one came.
    command: Vec<u8>,
    command_started: Option<SystemTime>,
    pending: Option<PendingStore>,
    stored: u64,
}

/// How an association ends.
enum Stop {
    /// The peer broke the protocol: we send A-ABORT.
    Abort(String),
    /// It is over already (released, aborted by the peer, socket failed or timed out):
    /// nothing more to send.
    Lost(String),
}

fn serve_association(shared: &Shared, stream: TcpStream, peer: SocketAddr) {
    let cfg = &shared.cfg;
    let counters = &shared.counters;
    // Accepted sockets do not inherit O_NONBLOCK on Linux, but make sure on every platform.
    if let Err(e) = stream.set_nonblocking(false) {
        warn!(peer = %peer.ip(), error = e.to_string(), "dicom-scp: connection dropped");
        return;
    }
    let seen = Arc::new(Mutex::new(None));
    let access = AeAccess {
        allow: cfg.allow_ae.clone(),
        seen: seen.clone(),
    };
    let seen_ae = || {
        seen.lock()
            .ok()
            .and_then(|s| s.clone())
            .unwrap_or_else(|| ("?".into(), "?".into()))
    };
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(access)
        .ae_title(cfg.ae_title.as_str())
        .max_pdu_length(cfg.max_pdu)
        .read_timeout(cfg.read_timeout)
        .write_timeout(cfg.read_timeout)
        .with_abstract_syntax(VERIFICATION_SOP_CLASS);
    for class in STORAGE_SOP_CLASSES {
        options = options.with_abstract_syntax(*class);
    }
    for ts in TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(*ts);
    }
    let mut association = match options.establish(stream) {
        Ok(a) => a,
        Err(dicom_ul::association::Error::Rejected { association_rj, .. }) => {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            let (calling, called) = seen_ae();
            warn!(
                calling_ae = calling.as_str(),
                called_ae = called.as_str(),
                peer = %peer.ip(),
                reason = association_rj.source.to_string(),
                "dicom-scp: association rejected"
            );
            return;
        }
        Err(e) => {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            warn!(
                peer = %peer.ip(),
                error = describe_ul_error(&e),
                "dicom-scp: association failed to establish"
            );
            return;
        }
    };
    counters.associations.fetch_add(1, Ordering::Relaxed);
    let calling_ae = association.peer_ae_title().trim().to_string();
    let accepted: Vec<String> = association
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance)
        .map(|pc| {
            format!(
                "{}:{}",
                short_class(&pc.abstract_syntax),
                pc.transfer_syntax
            )
        })
        .collect();
    info!(
        calling_ae = calling_ae.as_str(),
        peer = %peer.ip(),
        peer_max_pdu = association.peer_max_pdu_length(),
        contexts = accepted.join(", "),
        "dicom-scp: association accepted"
    );

    let mut session = Session {
        shared,
        peer,
        calling_ae,
        command: Vec::new(),
        command_started: None,
        pending: None,
        stored: 0,
    };
    let outcome = loop {
        match association.receive() {
            Ok(Pdu::PData { data }) => {
                if let Err(stop) = data
                    .into_iter()
                    .try_for_each(|pdv| session.on_pdv(&mut association, pdv))
                {
                    break stop;
                }
            }
            Ok(Pdu::ReleaseRQ) => {
                let _ = association.send(&Pdu::ReleaseRP);
                break Stop::Lost("released".into());
            }
            Ok(Pdu::AbortRQ { source }) => {
                break Stop::Lost(format!("aborted by peer ({source:?})"));
            }
            Ok(pdu) => {
                break Stop::Abort(format!("unexpected PDU {}", pdu.short_description()));
            }
            Err(e) => break Stop::Lost(format!("connection lost: {}", describe_ul_error(&e))),
        }
    };
    // Bytes of an instance still incomplete when it ended (not stored).
    let partial_bytes = session.pending.as_ref().map(|p| p.data.len());
    let why = match outcome {
        Stop::Abort(why) => {
            let _ = association.abort();
            format!("aborted by us: {why}")
        }
        Stop::Lost(why) => why,
    };
    info!(
        calling_ae = session.calling_ae.as_str(),
        peer = %peer.ip(),
        reason = why.as_str(),
        stored = session.stored,
        partial_instance_discarded_bytes = partial_bytes,
        "dicom-scp: association ended"
    );
}

impl Session<'_> {
    fn on_pdv(
        &mut self,
        association: &mut ServerAssociation<TcpStream>,
        pdv: PDataValue,
    ) -> Result<(), Stop> {
        match pdv.value_type {
            PDataValueType::Command => {
                if self.pending.is_some() {
                    return Err(Stop::Abort("command while a data set was expected".into()));
                }
                self.command_started.get_or_insert_with(SystemTime::now);
                self.command.extend_from_slice(&pdv.data);
                if !pdv.is_last {
                    return Ok(());
                }
                let bytes = std::mem::take(&mut self.command);
                let started = self.command_started.take().unwrap_or_else(SystemTime::now);
                self.on_command(association, pdv.presentation_context_id, &bytes, started)
            }
            PDataValueType::Data => {
                let Some(pending) = self.pending.as_mut() else {
                    return Err(Stop::Abort("data set without a C-STORE command".into()));
                };
                if pending.pc_id != pdv.presentation_context_id {
                    return Err(Stop::Abort(format!(
                        "data on presentation context {} for a command on {}",
                        pdv.presentation_context_id, pending.pc_id
                    )));
                }
                if pending.data.len() + pdv.data.len() > MAX_INSTANCE_BYTES {
                    return Err(Stop::Abort(format!(
                        "instance larger than {MAX_INSTANCE_BYTES} bytes"
                    )));
                }
                pending.data.extend_from_slice(&pdv.data);
                if pdv.is_last {
                    let pending = self.pending.take().expect("checked above");
                    self.on_instance(association, pending)?;
                }
                Ok(())
            }
        }
    }

    fn on_command(
        &mut self,
        association: &mut ServerAssociation<TcpStream>,
        pc_id: u8,
        bytes: &[u8],
        started: SystemTime,
    ) -> Result<(), Stop> {
        let cmd =
            InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
                .map_err(|e| Stop::Abort(format!("unreadable command set: {e}")))?;
        let field = get_u16(&cmd, tags::COMMAND_FIELD)
            .ok_or_else(|| Stop::Abort("command without Command Field".into()))?;
        let message_id = get_u16(&cmd, tags::MESSAGE_ID).unwrap_or(0);
        match field {
            C_ECHO_RQ => {
                // Echo back this request's Message ID and the SOP class (upstream's example
                // answers with a stale ID and no Affected SOP Class UID).
                let rsp = InMemDicomObject::command_from_element_iter([
                    ui(tags::AFFECTED_SOP_CLASS_UID, VERIFICATION_SOP_CLASS),
                    us(tags::COMMAND_FIELD, C_ECHO_RSP),
                    us(tags::MESSAGE_ID_BEING_RESPONDED_TO, message_id),
                    us(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET),
                    us(tags::STATUS, STATUS_SUCCESS),
                ]);
                send_command(association, pc_id, &rsp)?;
                self.shared.counters.echoes.fetch_add(1, Ordering::Relaxed);
                info!(
                    calling_ae = self.calling_ae.as_str(),
                    peer = %self.peer.ip(),
                    "dicom-scp: C-ECHO"
                );
                Ok(())
            }
            C_STORE_RQ => {
                if get_u16(&cmd, tags::COMMAND_DATA_SET_TYPE) == Some(NO_DATA_SET) {
                    return Err(Stop::Abort("C-STORE-RQ without a data set".into()));
                }
                self.pending = Some(PendingStore {
                    pc_id,
                    message_id,
                    sop_class_uid: get_uid(&cmd, tags::AFFECTED_SOP_CLASS_UID),
                    sop_instance_uid: get_uid(&cmd, tags::AFFECTED_SOP_INSTANCE_UID),
                    started,
                    data: Vec::new(),
                });
                Ok(())
            }
            // Nothing of ours is cancellable: a C-STORE is answered when it completes.
            C_CANCEL_RQ => Ok(()),
            other => Err(Stop::Abort(format!(
                "unsupported DIMSE command {other:#06x}"
            ))),
        }
    }

    fn on_instance(
        &mut self,
        association: &mut ServerAssociation<TcpStream>,
        pending: PendingStore,
    ) -> Result<(), Stop> {
        let pc = association
            .presentation_contexts()
            .iter()
            .find(|pc| pc.id == pending.pc_id)
            .cloned();
        let ts = pc
            .as_ref()
            .map(|pc| trim_uid(&pc.transfer_syntax).to_string())
            .unwrap_or_else(|| "?".into());
        let (status, comment) = match &pc {
            None => (
                STATUS_SOP_CLASS_NOT_SUPPORTED,
                Some("no such presentation context".to_string()),
            ),
            Some(pc) => self.store(&pending, trim_uid(&pc.abstract_syntax), &ts),
        };
        let mut elements = vec![
            ui(tags::AFFECTED_SOP_CLASS_UID, &pending.sop_class_uid),
            us(tags::COMMAND_FIELD, C_STORE_RSP),
            us(tags::MESSAGE_ID_BEING_RESPONDED_TO, pending.message_id),
            us(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET),
            us(tags::STATUS, status),
            ui(tags::AFFECTED_SOP_INSTANCE_UID, &pending.sop_instance_uid),
        ];
        if let Some(comment) = &comment {
            elements.push(DataElement::new(
                tags::ERROR_COMMENT,
                VR::LO,
                PrimitiveValue::from(error_comment(comment)),
            ));
        }
        let rsp = InMemDicomObject::command_from_element_iter(elements);
        let sent = send_command(association, pending.pc_id, &rsp);
        let counters = &self.shared.counters;
        if status == STATUS_SUCCESS {
            counters.stored.fetch_add(1, Ordering::Relaxed);
            self.stored += 1;
        } else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
        }
        macro_rules! c_store_event {
            ($level:ident, $msg:literal) => {
                $level!(
                    calling_ae = self.calling_ae.as_str(),
                    peer = %self.peer.ip(),
                    class = short_class(&pending.sop_class_uid),
                    ts = %ts,
                    instance = %uid_hash(&pending.sop_instance_uid),
                    bytes = pending.data.len(),
                    status = %format_args!("{status:#06x}"),
                    comment = comment.as_deref(),
                    response_delivered = sent.is_ok(),
                    $msg
                )
            };
        }
        if status == STATUS_SUCCESS {
            c_store_event!(info, "dicom-scp: C-STORE stored");
        } else {
            c_store_event!(warn, "dicom-scp: C-STORE refused");
        }
        sent
    }

    /// Checks the data set against its command and hands it to the sink; returns the status
    /// and Error Comment of the C-STORE-RSP.
    fn store(&self, pending: &PendingStore, pc_class: &str, ts_uid: &str) -> (u16, Option<String>) {
        let class = trim_uid(&pending.sop_class_uid);
        let instance = trim_uid(&pending.sop_instance_uid);
        if class != pc_class || !STORAGE_SOP_CLASSES.contains(&class) {
            return (
                STATUS_SOP_CLASS_NOT_SUPPORTED,
                Some("SOP class differs from the presentation context".into()),
            );
        }
        let Some(ts) = TransferSyntaxRegistry.get(ts_uid) else {
            return (
                STATUS_CANNOT_UNDERSTAND,
                Some("unknown transfer syntax".into()),
            );
        };
        // Parsing proves the data set is complete and well formed before the sink sees it.
        let obj = match InMemDicomObject::read_dataset_with_ts(&pending.data[..], ts) {
            Ok(obj) => obj,
            Err(e) => {
                warn!(
                    instance = %uid_hash(instance),
                    error = error_chain(&e),
                    "dicom-scp: data set unreadable"
                );
                return (
                    STATUS_CANNOT_UNDERSTAND,
                    Some("data set cannot be parsed".into()),
                );
            }
        };
        if get_uid(&obj, tags::SOP_INSTANCE_UID) != instance {
            return (
                STATUS_CANNOT_UNDERSTAND,
                Some("SOP Instance UID differs from the command".into()),
            );
        }
        if get_uid(&obj, tags::SOP_CLASS_UID) != class {
            return (
                STATUS_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                Some("SOP Class UID differs from the command".into()),
            );
        }
        drop(obj);
        let file = match part10_file(class, instance, ts_uid, &self.calling_ae, &pending.data) {
            Ok(f) => f,
            Err(e) => {
                error!(
                    error = e.to_string(),
                    "dicom-scp: cannot build the file meta group"
                );
                return (
                    STATUS_CANNOT_UNDERSTAND,
                    Some("cannot build file meta".into()),
                );
            }
        };
        let received = ReceivedInstance {
            calling_ae: self.calling_ae.clone(),
            peer: self.peer,
            sop_class_uid: class.to_string(),
            sop_instance_uid: instance.to_string(),
            transfer_syntax: ts_uid.to_string(),
            started: pending.started,
        };
        match self.shared.sink.store(&received, &file) {
            Ok(()) => (STATUS_SUCCESS, None),
            Err(e) => {
                let msg = match &e {
                    SinkError::OutOfResources(m) | SinkError::CannotUnderstand(m) => m.clone(),
                };
                (e.status(), Some(msg))
            }
        }
    }
}

/// Preamble, "DICM", our file meta group, then the data set bytes untouched.
pub(crate) fn part10_file(
    sop_class: &str,
    sop_instance: &str,
    ts_uid: &str,
    source_ae: &str,
    dataset: &[u8],
) -> Result<Vec<u8>, dicom_object::meta::Error> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax(ts_uid)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .source_application_entity_title(source_ae)
        .build()?;
    let mut file = Vec::with_capacity(dataset.len() + 512);
    file.extend_from_slice(&[0u8; 128]);
    file.extend_from_slice(b"DICM");
    meta.write(&mut file)?;
    file.extend_from_slice(dataset);
    Ok(file)
}

fn send_command(
    association: &mut ServerAssociation<TcpStream>,
    pc_id: u8,
    cmd: &InMemDicomObject,
) -> Result<(), Stop> {
    let mut data = Vec::new();
    cmd.write_dataset_with_ts(&mut data, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| Stop::Abort(format!("cannot encode response: {e}")))?;
    association
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data,
            }],
        })
        .map_err(|e| Stop::Lost(format!("cannot send response: {}", describe_ul_error(&e))))
}

pub(crate) fn ui(tag: dicom_core::Tag, uid: &str) -> dicom_object::mem::InMemElement {
    DataElement::new(tag, VR::UI, PrimitiveValue::from(trim_uid(uid)))
}

pub(crate) fn us(tag: dicom_core::Tag, value: u16) -> dicom_object::mem::InMemElement {
    DataElement::new(tag, VR::US, dicom_value!(U16, [value]))
}

pub(crate) fn get_u16(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<u16> {
    obj.get(tag).and_then(|e| e.to_int::<u16>().ok())
}

pub(crate) fn get_uid(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| trim_uid(&s).to_string())
        .unwrap_or_default()
}

/// LO, at most 64 characters, no backslash or control characters.
fn error_comment(msg: &str) -> String {
    msg.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .map(|c| if c == '\\' { '/' } else { c })
        .take(MAX_ERROR_COMMENT)
        .collect()
}

/// A SOP class for logs: the short name for ours, the UID otherwise (SOP class UIDs are
/// standard identifiers, not patient data).
fn short_class(uid: &str) -> &str {
    match trim_uid(uid) {
        super::DX_FOR_PRESENTATION => "DX-pres",
        super::DX_FOR_PROCESSING => "DX-proc",
        super::CR_IMAGE => "CR",
        super::SECONDARY_CAPTURE => "SC",
        VERIFICATION_SOP_CLASS => "Verification",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_comment_is_lo_safe() {
        let long = "x".repeat(100);
        assert_eq!(error_comment(&long).len(), 64);
        assert_eq!(error_comment("a\\b\nc"), "a/b?c");
    }

    #[test]
    fn access_control_checks_called_then_calling() {
        let acl = AeAccess {
            allow: vec!["DR1".into()],
            seen: Arc::default(),
        };
        assert_eq!(acl.check_access("TIRPD", "DR1", "TIRPD", None), Ok(()));
        assert_eq!(
            acl.check_access("TIRPD", "DR1", "OTHER", None),
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        );
        assert_eq!(
            acl.check_access("TIRPD", "EVIL", "TIRPD", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
        let any = AeAccess {
            allow: vec![],
            seen: Arc::default(),
        };
        assert_eq!(any.check_access("TIRPD", "WHOEVER", "TIRPD ", None), Ok(()));
    }

    #[test]
    fn part10_file_has_our_meta_and_the_data_set_verbatim() {
        let data = b"\x08\x00\x18\x00\x04\x00\x00\x001.2\0";
        let f = part10_file(
            "1.2.840.10008.5.1.4.1.1.7",
            "1.2",
            "1.2.840.10008.1.2",
            "DR",
            data,
        )
        .unwrap();
        assert_eq!(&f[128..132], b"DICM");
        assert!(f.ends_with(data));
        let meta = dicom_object::FileMetaTable::from_reader(&f[128..]).unwrap();
        assert_eq!(
            trim_uid(meta.implementation_class_uid()),
            IMPLEMENTATION_CLASS_UID
        );
        assert_eq!(trim_uid(meta.transfer_syntax()), "1.2.840.10008.1.2");
    }

    #[test]
    fn bind_rejects_bad_config() {
        struct Nop;
        impl InstanceSink for Nop {
            fn store(&self, _: &ReceivedInstance, _: &[u8]) -> Result<(), SinkError> {
                Ok(())
            }
        }
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bad = [
            ScpConfig {
                ae_title: "".into(),
                ..Default::default()
            },
            ScpConfig {
                max_pdu: 100,
                ..Default::default()
            },
            ScpConfig {
                max_associations: 0,
                ..Default::default()
            },
        ];
        for cfg in bad {
            let e = Scp::bind(addr, cfg, Arc::new(Nop))
                .err()
                .expect("must fail");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
        let scp = Scp::bind(addr, ScpConfig::default(), Arc::new(Nop)).unwrap();
        assert_ne!(scp.local_addr().port(), 0);
        assert_eq!(scp.stats(), ScpStats::default());
    }
}
