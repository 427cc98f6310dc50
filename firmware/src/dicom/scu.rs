//! C-STORE SCU: sends one Part-10 file to a configured destination (the DR station's own SCP
//! for the flag, PACS for the archive).
//!
//! The file is sent in its own transfer syntax. Only between the two uncompressed little
//! endian syntaxes do we convert (losslessly, by re-encoding) when the peer picks the other
//! one; a compressed file is never transcoded, so a peer that refuses its syntax gets a
//! permanent [`ScuError::NoPresentationContext`].

use super::scp::{get_u16, ui, us};
use super::{EXPLICIT_VR_LE, IMPLICIT_VR_LE, describe_ul_error, trim_uid, validate_ae_title};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{FileMetaTable, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::pdu::{AssociationRJResult, PDataValue, PDataValueType};
use dicom_ul::{ClientAssociation, ClientAssociationOptions, Pdu};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

const C_STORE_RQ: u16 = 0x0001;
const C_STORE_RSP: u16 = 0x8001;
/// Command Data Set Type: any value but 0x0101 means "a data set follows".
const DATA_SET_PRESENT: u16 = 0x0000;
/// Priority MEDIUM.
const PRIORITY_MEDIUM: u16 = 0x0000;
/// Warning statuses that still mean "stored": coercion of data elements, elements
/// discarded, data set does not match SOP class (PS3.4 B.2.3).
const STORED_WARNINGS: [u16; 3] = [0xB000, 0xB007, 0xB006];

/// A DICOM peer: `AE@host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub ae_title: String,
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: String,
    pub port: u16,
}

/// Why a destination string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("destination {0:?} has no '@': expected AE@host:port")]
    MissingAt(String),
    #[error("destination {input:?}: {reason}")]
    AeTitle { input: String, reason: String },
    #[error("destination {0:?} has no ':port' after the host: expected AE@host:port")]
    MissingPort(String),
    #[error("destination {0:?} has an empty host: expected AE@host:port")]
    EmptyHost(String),
    #[error("destination {input:?}: port {port:?} is not a number in 1..=65535")]
    InvalidPort { input: String, port: String },
}

impl FromStr for Destination {
    type Err = DestinationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        // An AE title may itself contain '@' (any ASCII but backslash), a host cannot: split
        // at the last one.
        let (ae, rest) = input
            .rsplit_once('@')
            .ok_or_else(|| DestinationError::MissingAt(input.into()))?;
        validate_ae_title(ae).map_err(|reason| DestinationError::AeTitle {
            input: input.into(),
            reason,
        })?;
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| DestinationError::MissingPort(input.into()))?;
        // "[::1]:104": IPv6 literal in brackets; a bare IPv6 address would be ambiguous.
        let host = match host.strip_prefix('[') {
            Some(h) => h.strip_suffix(']').unwrap_or(h),
            None if host.contains(':') => return Err(DestinationError::MissingPort(input.into())),
            None => host,
        };
        if host.is_empty() {
            return Err(DestinationError::EmptyHost(input.into()));
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => {
                return Err(DestinationError::InvalidPort {
                    input: input.into(),
                    port: port.into(),
                });
            }
        };
        Ok(Destination {
            ae_title: ae.to_string(),
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.ae_title, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.ae_title, self.host, self.port)
        }
    }
}

/// Why a C-STORE did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ScuError {
    /// Our own settings are unusable (e.g. an invalid calling AE title).
    #[error("invalid SCU configuration: {0}")]
    Config(String),
    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("{path} is not a sendable DICOM Part-10 file: {reason}")]
    InvalidFile { path: PathBuf, reason: String },
    /// TCP connection failed (refused, unreachable, timed out, name not resolved).
    #[error("cannot connect to {dest}: {source}")]
    Connect { dest: String, source: io::Error },
    /// A-ASSOCIATE-RJ; `transient` follows the rejection's result field.
    #[error("association rejected by {dest} ({}): {reason}", if *.transient { "transient" } else { "permanent" })]
    Rejected {
        dest: String,
        transient: bool,
        reason: String,
    },
    /// The peer accepted no presentation context for the file's SOP class and syntax.
    #[error(
        "{dest} accepts no presentation context for SOP class {sop_class} in transfer syntax {transfer_syntax}"
    )]
    NoPresentationContext {
        dest: String,
        sop_class: String,
        transfer_syntax: String,
    },
    /// The connection failed during the association (reset, timeout, closed, A-ABORT).
    #[error("network failure with {dest}: {reason}")]
    Network { dest: String, reason: String },
    /// The peer broke the protocol (malformed or unexpected PDU/response).
    #[error("protocol error with {dest}: {reason}")]
    Protocol { dest: String, reason: String },
    /// The C-STORE-RSP carried a failure status.
    #[error("{dest} answered C-STORE with status {status:#06x}{}", .comment.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        dest: String,
        status: u16,
        comment: Option<String>,
    },
}

impl ScuError {
    /// Worth retrying later (connection refused/reset/timeout, association rejected
    /// transiently, status 0xA7xx out of resources); false = permanent (rejected permanently,
    /// no presentation context for the SOP class/TS, other failure status).
    pub fn is_transient(&self) -> bool {
        match self {
            ScuError::Connect { .. } | ScuError::Network { .. } => true,
            ScuError::Rejected { transient, .. } => *transient,
            ScuError::Status { status, .. } => status & 0xFF00 == 0xA700,
            ScuError::Config(_)
            | ScuError::ReadFile { .. }
            | ScuError::InvalidFile { .. }
            | ScuError::NoPresentationContext { .. }
            | ScuError::Protocol { .. } => false,
        }
    }
}

/// A Part-10 file split into what the C-STORE needs.
struct Part10 {
    path: PathBuf,
    sop_class: String,
    sop_instance: String,
    transfer_syntax: String,
    bytes: Vec<u8>,
    dataset_offset: usize,
}

/// Sends one DICOM file (Part 10) by C-STORE; proposes the file's own transfer syntax (plus
/// explicit/implicit LE only if the file is in one of them — no transcoding). Returns once
/// the C-STORE-RSP says success (0x0000, or warning 0xB000/0xB007/0xB006 counts as stored).
/// `timeout` bounds the TCP connect and every read and write on the association.
pub fn store_file(
    calling_ae: &str,
    dest: &Destination,
    file: &Path,
    timeout: Duration,
) -> Result<(), ScuError> {
    let mut result = None;
    store_files(
        calling_ae,
        dest,
        &[file.to_path_buf()],
        timeout,
        &mut |_, r| result = Some(r),
    )?;
    result.expect("one file, one result")
}

/// Errors that concern one file of a batch; any other ends the association.
fn is_per_file(e: &ScuError) -> bool {
    matches!(
        e,
        ScuError::Status { .. }
            | ScuError::NoPresentationContext { .. }
            | ScuError::InvalidFile { .. }
            | ScuError::ReadFile { .. }
    )
}

/// Sends `files` in order over one association, as [`store_file`] sends one, so a queue of
/// results costs one connection and negotiation instead of one per object (one presentation
/// context per SOP class in the batch). `done(i, result)` reports file `i` as soon as its fate
/// is known: stored, or refused for itself (unreadable, no accepted context for its SOP class
/// and syntax, a failure status in its C-STORE-RSP). A failure of the association itself
/// (connect, rejection, network, protocol) ends the batch: it is returned, and the files not
/// yet reported were not stored.
pub fn store_files(
    calling_ae: &str,
    dest: &Destination,
    files: &[PathBuf],
    timeout: Duration,
    done: &mut dyn FnMut(usize, Result<(), ScuError>),
) -> Result<(), ScuError> {
    validate_ae_title(calling_ae).map_err(ScuError::Config)?;
    validate_ae_title(&dest.ae_title).map_err(ScuError::Config)?;
    let dest_s = dest.to_string();
    let mut parts: Vec<(usize, Part10)> = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        match read_part10(f) {
            Ok(p) => parts.push((i, p)),
            Err(e) => done(i, Err(e)),
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    // One context per SOP class, proposing every syntax its files need (no transcoding
    // beyond explicit ↔ implicit VR little endian).
    let mut contexts: Vec<(String, Vec<&str>)> = Vec::new();
    for (_, p) in &parts {
        let proposed: Vec<&str> = match p.transfer_syntax.as_str() {
            EXPLICIT_VR_LE => vec![EXPLICIT_VR_LE, IMPLICIT_VR_LE],
            IMPLICIT_VR_LE => vec![IMPLICIT_VR_LE, EXPLICIT_VR_LE],
            ts => vec![ts],
        };
        match contexts.iter_mut().find(|(c, _)| *c == p.sop_class) {
            Some((_, list)) => {
                for ts in proposed {
                    if !list.contains(&ts) {
                        list.push(ts);
                    }
                }
            }
            None => contexts.push((p.sop_class.clone(), proposed)),
        }
    }
    let no_context = |p: &Part10| ScuError::NoPresentationContext {
        dest: dest_s.clone(),
        sop_class: p.sop_class.clone(),
        transfer_syntax: p.transfer_syntax.clone(),
    };
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(calling_ae)
        .called_ae_title(dest.ae_title.as_str())
        .connection_timeout(timeout)
        .read_timeout(timeout)
        .write_timeout(timeout);
    for (class, syntaxes) in &contexts {
        options = options.with_presentation_context(class.as_str(), syntaxes.clone());
    }
    let mut association = match options.establish((dest.host.as_str(), dest.port)) {
        Ok(a) => a,
        Err(dicom_ul::association::Error::NoAcceptedPresentationContexts { .. }) => {
            for (i, p) in &parts {
                done(*i, Err(no_context(p)));
            }
            return Ok(());
        }
        Err(e) => return Err(ul_error(&dest_s, e)),
    };
    // The C-STORE-RQ command is a small PDU followed by the data set: without this, Nagle's
    // algorithm holds the data behind the peer's delayed ACK, ~40–90 ms per object.
    let _ = association.inner_stream().set_nodelay(true);
    for (k, (i, p)) in parts.iter().enumerate() {
        // Message IDs 1, 2, …: unique within the association.
        let message_id = (k % usize::from(u16::MAX)) as u16 + 1;
        match send_on(&mut association, p, message_id, &dest_s, &|| no_context(p)) {
            Ok(()) => done(*i, Ok(())),
            Err(e) if is_per_file(&e) => done(*i, Err(e)),
            Err(e) => {
                let _ = association.abort();
                return Err(e);
            }
        }
    }
    // Every instance is stored once its RSP said so; a failed release changes nothing.
    let _ = association.release();
    Ok(())
}

fn send_on(
    association: &mut ClientAssociation<TcpStream>,
    part10: &Part10,
    message_id: u16,
    dest: &str,
    no_context: &dyn Fn() -> ScuError,
) -> Result<(), ScuError> {
    let pc = association
        .presentation_contexts()
        .iter()
        .find(|pc| trim_uid(&pc.abstract_syntax) == part10.sop_class)
        .cloned()
        .ok_or_else(no_context)?;
    let chosen = trim_uid(&pc.transfer_syntax).to_string();
    let reencoded;
    let data: &[u8] = if chosen == part10.transfer_syntax {
        &part10.bytes[part10.dataset_offset..]
    } else if [EXPLICIT_VR_LE, IMPLICIT_VR_LE].contains(&chosen.as_str()) {
        reencoded = reencode(part10, &chosen)?;
        &reencoded
    } else {
        return Err(no_context());
    };

    let cmd = InMemDicomObject::command_from_element_iter([
        ui(tags::AFFECTED_SOP_CLASS_UID, &part10.sop_class),
        us(tags::COMMAND_FIELD, C_STORE_RQ),
        us(tags::MESSAGE_ID, message_id),
        us(tags::PRIORITY, PRIORITY_MEDIUM),
        us(tags::COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT),
        ui(tags::AFFECTED_SOP_INSTANCE_UID, &part10.sop_instance),
    ]);
    let mut cmd_bytes = Vec::new();
    cmd.write_dataset_with_ts(&mut cmd_bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| ScuError::Protocol {
            dest: dest.into(),
            reason: format!("cannot encode the C-STORE-RQ: {e}"),
        })?;
    association
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc.id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: cmd_bytes,
            }],
        })
        .map_err(|e| ul_error(dest, e))?;
    {
        // Splits the data set into P-DATA PDUs of the peer's maximum length.
        let mut writer = association.send_pdata(pc.id);
        let net = |e: io::Error| ScuError::Network {
            dest: dest.into(),
            reason: format!("sending the data set: {e}"),
        };
        writer.write_all(data).map_err(net)?;
        writer.finish().map_err(net)?;
    }

    let rsp = receive_command(association, dest)?;
    let field = get_u16(&rsp, tags::COMMAND_FIELD);
    let responded_to = get_u16(&rsp, tags::MESSAGE_ID_BEING_RESPONDED_TO);
    if field != Some(C_STORE_RSP) || responded_to != Some(message_id) {
        return Err(ScuError::Protocol {
            dest: dest.into(),
            reason: format!(
                "expected C-STORE-RSP to message {message_id}, got command {field:?} for {responded_to:?}"
            ),
        });
    }
    let status = get_u16(&rsp, tags::STATUS).ok_or_else(|| ScuError::Protocol {
        dest: dest.into(),
        reason: "C-STORE-RSP without Status".into(),
    })?;
    if status == 0x0000 || STORED_WARNINGS.contains(&status) {
        return Ok(());
    }
    let comment = rsp
        .get(tags::ERROR_COMMENT)
        .and_then(|e| e.to_str().ok())
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    Err(ScuError::Status {
        dest: dest.into(),
        status,
        comment,
    })
}

/// Receives PDUs until one complete command set has arrived.
fn receive_command(
    association: &mut ClientAssociation<TcpStream>,
    dest: &str,
) -> Result<InMemDicomObject, ScuError> {
    let mut bytes = Vec::new();
    loop {
        match association.receive().map_err(|e| ul_error(dest, e))? {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type != PDataValueType::Command {
                        return Err(ScuError::Protocol {
                            dest: dest.into(),
                            reason: "data set where a C-STORE-RSP was expected".into(),
                        });
                    }
                    bytes.extend_from_slice(&pdv.data);
                    if pdv.is_last {
                        return InMemDicomObject::read_dataset_with_ts(
                            &bytes[..],
                            &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
                        )
                        .map_err(|e| ScuError::Protocol {
                            dest: dest.into(),
                            reason: format!("unreadable C-STORE-RSP: {e}"),
                        });
                    }
                }
            }
            Pdu::AbortRQ { source } => {
                return Err(ScuError::Network {
                    dest: dest.into(),
                    reason: format!("association aborted by the peer ({source:?})"),
                });
            }
            pdu => {
                return Err(ScuError::Protocol {
                    dest: dest.into(),
                    reason: format!("unexpected {}", pdu.short_description()),
                });
            }
        }
    }
}

/// Explicit ↔ implicit VR little endian: lossless, the only conversion we do.
fn reencode(part10: &Part10, to: &str) -> Result<Vec<u8>, ScuError> {
    let invalid = |reason: String| ScuError::InvalidFile {
        path: part10.path.clone(),
        reason,
    };
    let registry = TransferSyntaxRegistry;
    let (Some(from_ts), Some(to_ts)) = (registry.get(&part10.transfer_syntax), registry.get(to))
    else {
        return Err(invalid("transfer syntax not in the registry".into()));
    };
    let obj =
        InMemDicomObject::read_dataset_with_ts(&part10.bytes[part10.dataset_offset..], from_ts)
            .map_err(|e| invalid(format!("cannot parse the data set: {e}")))?;
    let mut out = Vec::with_capacity(part10.bytes.len());
    obj.write_dataset_with_ts(&mut out, to_ts)
        .map_err(|e| invalid(format!("cannot re-encode the data set: {e}")))?;
    Ok(out)
}

/// Reads the file and locates its data set: after the preamble (optional), "DICM" and the
/// group-0002 elements, which are always explicit VR little endian.
fn read_part10(path: &Path) -> Result<Part10, ScuError> {
    let invalid = |reason: String| ScuError::InvalidFile {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| ScuError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let magic_at = if bytes.get(128..132) == Some(b"DICM") {
        128
    } else if bytes.starts_with(b"DICM") {
        0
    } else {
        return Err(invalid("no DICM magic (not a Part-10 file)".into()));
    };
    let meta = FileMetaTable::from_reader(&bytes[magic_at..])
        .map_err(|e| invalid(format!("bad file meta group: {e}")))?;
    let dataset_offset = skip_meta_group(&bytes, magic_at + 4)
        .ok_or_else(|| invalid("truncated file meta group".into()))?;
    let sop_class = trim_uid(meta.media_storage_sop_class_uid()).to_string();
    let sop_instance = trim_uid(meta.media_storage_sop_instance_uid()).to_string();
    let transfer_syntax = trim_uid(meta.transfer_syntax()).to_string();
    if sop_class.is_empty() || sop_instance.is_empty() {
        return Err(invalid(
            "file meta group lacks the SOP class or instance UID".into(),
        ));
    }
    match TransferSyntaxRegistry.get(&transfer_syntax) {
        Some(ts) if !ts.is_unsupported() => {}
        _ => {
            return Err(invalid(format!(
                "transfer syntax {transfer_syntax} cannot be read by this build"
            )));
        }
    }
    if dataset_offset >= bytes.len() {
        return Err(invalid("no data set after the file meta group".into()));
    }
    Ok(Part10 {
        path: path.to_path_buf(),
        sop_class,
        sop_instance,
        transfer_syntax,
        bytes,
        dataset_offset,
    })
}

/// Offset of the first element after group 0002 (explicit VR LE), walking the elements
/// rather than trusting the group length.
fn skip_meta_group(bytes: &[u8], mut at: usize) -> Option<usize> {
    const LONG_VRS: [&[u8; 2]; 12] = [
        b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
    ];
    loop {
        let head = bytes.get(at..at + 8)?;
        if u16::from_le_bytes([head[0], head[1]]) != 0x0002 {
            return Some(at);
        }
        let vr = [head[4], head[5]];
        let (len, header) = if LONG_VRS.iter().any(|v| **v == vr) {
            let l = bytes.get(at + 8..at + 12)?;
            (u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize, 12)
        } else {
            (u16::from_le_bytes([head[6], head[7]]) as usize, 8)
        };
        at = at.checked_add(header)?.checked_add(len)?;
        if at > bytes.len() {
            return None;
        }
    }
}

/// Maps a dicom-ul failure: rejections keep their result, anything with an I/O error
/// underneath is a (transient) network failure, the rest is a protocol error.
fn ul_error(dest: &str, e: dicom_ul::association::Error) -> ScuError {
    use dicom_ul::association::Error as E;
    match e {
        E::Connect { source, .. } | E::ToAddress { source, .. } => ScuError::Connect {
            dest: dest.into(),
            source,
        },
        E::Rejected { association_rj, .. } => ScuError::Rejected {
            dest: dest.into(),
            transient: association_rj.result == AssociationRJResult::Transient,
            reason: association_rj.source.to_string(),
        },
        e => {
            let reason = describe_ul_error(&e);
            let io = matches!(
                e,
                E::Timeout { .. }
                    | E::WireSend { .. }
                    | E::WireRead { .. }
                    | E::ConnectionClosed { .. }
                    | E::Aborted { .. }
            ) || has_io_source(&e);
            if io {
                ScuError::Network {
                    dest: dest.into(),
                    reason,
                }
            } else {
                ScuError::Protocol {
                    dest: dest.into(),
                    reason,
                }
            }
        }
    }
}

fn has_io_source(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = e.source();
    while let Some(c) = cur {
        if c.is::<io::Error>() {
            return true;
        }
        cur = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_round_trips() {
        let d: Destination = "PACS@10.0.0.5:104".parse().unwrap();
        assert_eq!(
            d,
            Destination {
                ae_title: "PACS".into(),
                host: "10.0.0.5".into(),
                port: 104
            }
        );
        assert_eq!(d.to_string(), "PACS@10.0.0.5:104");
        let d: Destination = "DR STATION@dr-01.local:11112".parse().unwrap();
        assert_eq!(d.ae_title, "DR STATION");
        assert_eq!(d.host, "dr-01.local");
        assert_eq!(d.to_string().parse::<Destination>().unwrap(), d);
        let v6: Destination = "PACS@[::1]:4242".parse().unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "PACS@[::1]:4242");
        assert_eq!(v6.to_string().parse::<Destination>().unwrap(), v6);
        let json = serde_json::to_string(&v6).unwrap();
        assert_eq!(serde_json::from_str::<Destination>(&json).unwrap(), v6);
    }

    #[test]
    fn destination_errors_name_the_problem() {
        let err = |s: &str| s.parse::<Destination>().unwrap_err();
        assert!(matches!(
            err("PACS10.0.0.5:104"),
            DestinationError::MissingAt(_)
        ));
        assert!(matches!(err("@host:104"), DestinationError::AeTitle { .. }));
        assert!(matches!(
            err("WAY_TOO_LONG_AE_TITLE@host:104"),
            DestinationError::AeTitle { .. }
        ));
        assert!(matches!(err("PACS@host"), DestinationError::MissingPort(_)));
        assert!(matches!(
            err("PACS@::1:104"),
            DestinationError::MissingPort(_)
        ));
        assert!(matches!(err("PACS@:104"), DestinationError::EmptyHost(_)));
        assert!(matches!(
            err("PACS@host:0"),
            DestinationError::InvalidPort { .. }
        ));
        assert!(matches!(
            err("PACS@host:99999"),
            DestinationError::InvalidPort { .. }
        ));
        assert!(matches!(
            err("PACS@host:abc"),
            DestinationError::InvalidPort { .. }
        ));
        let msg = err("PACS@host:abc").to_string();
        assert!(msg.contains("port") && msg.contains("abc"), "{msg}");
        assert!(err("PACS").to_string().contains("AE@host:port"));
    }

    #[test]
    fn transient_classification() {
        let d = || "X@h:1".to_string();
        let connect = ScuError::Connect {
            dest: d(),
            source: io::ErrorKind::ConnectionRefused.into(),
        };
        assert!(connect.is_transient());
        let status = |s| ScuError::Status {
            dest: d(),
            status: s,
            comment: None,
        };
        assert!(status(0xA700).is_transient());
        assert!(status(0xA7FF).is_transient());
        assert!(!status(0xC000).is_transient());
        assert!(!status(0xA900).is_transient());
        let rj = |t| ScuError::Rejected {
            dest: d(),
            transient: t,
            reason: String::new(),
        };
        assert!(rj(true).is_transient());
        assert!(!rj(false).is_transient());
        assert!(
            !ScuError::NoPresentationContext {
                dest: d(),
                sop_class: String::new(),
                transfer_syntax: String::new()
            }
            .is_transient()
        );
    }

    #[test]
    fn meta_group_is_skipped_by_walking_elements() {
        let data = b"\x08\x00\x18\x00UI\x04\x001.2\0";
        let f = super::super::scp::part10_file(
            "1.2.840.10008.5.1.4.1.1.7",
            "1.2",
            EXPLICIT_VR_LE,
            "DR",
            data,
        )
        .unwrap();
        let off = skip_meta_group(&f, 132).unwrap();
        assert_eq!(&f[off..], data);
        assert_eq!(skip_meta_group(&f[..140], 132), None);
    }
}
