//! Messages of the provisioning link, shared by `tirpd` and `tirp`.
//!
//! Every request carries an id that its reply echoes, so a late reply to a retried request is
//! never taken for the answer to the next one. Bulk chunks are identified by their byte offset.

use crate::slots::SlotsReport;
use serde::{Deserialize, Serialize};

/// Bumped on every incompatible change of [`Msg`]; peers refuse other versions.
pub const PROTO_VERSION: u16 = 1;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: u32,
    pub msg: Msg,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// Host → device: what the host can do. Both sides use the minimum.
    Hello {
        max_chunk: u32,
        window: u16,
    },
    HelloAck {
        max_chunk: u32,
        window: u16,
        info: DeviceInfo,
    },
    GetStatus,
    Status(DeviceInfo),
    /// Start (or resume) staging the bundle file with this SHA-256 and size.
    Begin {
        sha256: [u8; 32],
        size: u64,
    },
    /// The device holds `resume_from` verified bytes of it already.
    BeginAck {
        resume_from: u64,
    },
    Chunk {
        offset: u64,
        data: Vec<u8>,
    },
    /// Cumulative: every byte below `next_offset` is staged. `nak` asks for a resend from there.
    Ack {
        next_offset: u64,
        nak: bool,
    },
    /// Verify the staged bundle and install it into the candidate slot (idempotent).
    Commit {
        sha256: [u8; 32],
    },
    Installed(SlotsReport),
    /// A fresh nonce for the next state change; single use.
    GetChallenge,
    Challenge {
        nonce: [u8; 32],
    },
    Activate {
        auth: Auth,
    },
    Rollback {
        auth: Auth,
    },
    /// Add a public key (SPKI PEM) to the device keyring.
    TrustKey {
        pem: String,
        auth: Auth,
    },
    /// Remove a key from the keyring (the last key can never be removed).
    DistrustKey {
        key_id: [u8; 8],
        auth: Auth,
    },
    Done(SlotsReport),
    /// Records with `seq >= since_seq`, at most this many / this many payload bytes. With
    /// `ack`, every record below `since_seq` is acknowledged as safely stored by the host
    /// (retention may then reclaim it); a look at recent records (`--since`) does not ack.
    LogPull {
        since_seq: u64,
        max_records: u32,
        max_bytes: u32,
        ack: bool,
    },
    LogBatch {
        since_seq: u64,
        /// Oldest record the device still holds at or after `since_seq`; larger than
        /// `since_seq` means records were lost (retention under a full disk).
        first_seq: u64,
        next_seq: u64,
        more: bool,
        records: Vec<LogRecordWire>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecordWire {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// A challenge signed by an engineer key the device trusts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Auth {
    pub key_id: [u8; 8],
    pub signature: Vec<u8>,
}

/// What the device tells the host about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub device_id: String,
    pub board: String,
    pub firmware_version: String,
    pub proto: u16,
    pub free_space: u64,
    pub keyring: Vec<String>,
    pub slots: SlotsReport,
    pub log_next_seq: u64,
}

/// Why the device refused a request. Every code except `Busy` and `Io` is final: retrying the
/// same request gives the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    Unsigned,
    BadSignature,
    UnknownKey,
    WrongBoard,
    Downgrade,
    VersionMismatch,
    Tampered,
    BadBundle,
    NoSpace,
    NotStaged,
    NothingToActivate,
    NothingToRollBack,
    HealthCheckFailed,
    AuthFailed,
    Protocol,
    Busy,
    Io,
}

impl ErrorCode {
    /// Whether the bundle itself was refused (the host's "rejected bundle" exit code).
    pub fn is_bundle_rejection(self) -> bool {
        matches!(
            self,
            Self::Unsigned
                | Self::BadSignature
                | Self::UnknownKey
                | Self::WrongBoard
                | Self::Downgrade
                | Self::VersionMismatch
                | Self::Tampered
                | Self::BadBundle
        )
    }
}
