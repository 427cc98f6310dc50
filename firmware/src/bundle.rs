//! Model bundles: one file holding a manifest, its ed25519 signature and the payload.
//!
//! Layout: `MAGIC (8 B, last byte = container version) ‖ header_len u32 le ‖ header ‖ payload`,
//! where `header = postcard(Header { manifest: exact postcard bytes, signature })` and the
//! payload is the files of the manifest, concatenated in manifest order. The signature covers
//! the exact manifest bytes; the manifest pins every file's size and SHA-256 and a SHA-256 per
//! payload chunk, so a resumed transfer can re-check its staged prefix. Trust never depends on
//! the device clock: downgrades are refused by a stored `security_version` floor.

use crate::preprocess::PreprocessSpec;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: [u8; 8] = *b"TIRPBDL\x01";
/// Container version: the last byte of [`MAGIC`].
pub const CONTAINER_VERSION: u8 = 1;
/// Version of the [`Manifest`] layout.
pub const MANIFEST_FORMAT: u16 = 1;
/// Payload bytes per manifest chunk hash.
pub const CHUNK_HASH_SIZE: u32 = 64 * 1024;
/// Domain separation: a manifest signature can never be replayed as an auth signature.
const MANIFEST_DOMAIN: &[u8] = b"tirp-bundle-manifest-v1\0";
const AUTH_DOMAIN: &[u8] = b"tirp-device-auth-v1\0";
/// Upper bound on the header, so a corrupt length cannot make us allocate gigabytes.
pub const MAX_HEADER: u32 = 16 * 1024 * 1024;

pub type KeyId = [u8; 8];
/// Key types, re-exported so users of this module need no direct ed25519 dependency.
pub use ed25519_dalek::{SigningKey, VerifyingKey};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a TIRP bundle (bad magic)")]
    NotABundle,
    #[error("bundle {what} version {found} is not supported (this build reads {supported})")]
    VersionMismatch {
        what: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("bundle is malformed: {0}")]
    Malformed(String),
    #[error("bundle is unsigned")]
    Unsigned,
    #[error("bundle is signed by key {0}, which this device does not trust")]
    UnknownKey(String),
    #[error("bad signature by key {0}: the manifest was altered or signed by another key")]
    BadSignature(String),
    #[error("bundle is for boards {compatible:?}, not {board}")]
    WrongBoard {
        board: String,
        compatible: Vec<String>,
    },
    #[error("bundle security_version {version} is below the device floor {floor}")]
    Downgrade { version: u32, floor: u32 },
    #[error("payload tampered: {0}")]
    Tampered(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("key: {0}")]
    Key(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BundleError {
    let context = context.into();
    move |source| BundleError::Io { context, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRole {
    Model,
    GoldenInput,
    GoldenOutput,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub role: FileRole,
    pub size: u64,
    #[serde(with = "hex32")]
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u16,
    pub name: String,
    pub version: String,
    /// Anti-rollback counter: the device refuses bundles below the highest it marked good.
    pub security_version: u32,
    /// Board ids (`boards/*.toml` `id`) this bundle may run on.
    pub compatible: Vec<String>,
    pub files: Vec<FileEntry>,
    pub chunk_size: u32,
    #[serde(with = "hex32_vec")]
    pub chunk_hashes: Vec<[u8; 32]>,
    /// How model inputs are made.
    pub preprocess: PreprocessSpec,
    /// Operating threshold on the ensemble probability.
    pub threshold: f32,
    /// Informational build time; never used for trust decisions.
    pub created_unix: u64,
}

impl Manifest {
    pub fn payload_len(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn file(&self, role: FileRole) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.role == role)
    }

    /// Byte offset of each file in the payload.
    pub fn offsets(&self) -> Vec<u64> {
        self.files
            .iter()
            .scan(0u64, |off, f| {
                let at = *off;
                *off += f.size;
                Some(at)
            })
            .collect()
    }

    /// The one canonical byte form the signature covers.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("manifest serialises")
    }

    fn check_shape(&self) -> Result<(), BundleError> {
        let bad = |m: String| Err(BundleError::Malformed(m));
        if self.chunk_size == 0 {
            return bad("chunk_size is 0".into());
        }
        let chunks = self.payload_len().div_ceil(u64::from(self.chunk_size));
        if chunks != self.chunk_hashes.len() as u64 {
            return bad(format!(
                "{} chunk hashes for {chunks} chunks",
                self.chunk_hashes.len()
            ));
        }
        for f in &self.files {
            check_file_name(&f.name).map_err(BundleError::Malformed)?;
        }
        let mut names: Vec<_> = self.files.iter().map(|f| &f.name).collect();
        names.sort();
        names.dedup();
        if names.len() != self.files.len() {
            return bad("duplicate file names".into());
        }
        for role in [FileRole::GoldenInput, FileRole::GoldenOutput] {
            if self.files.iter().filter(|f| f.role == role).count() != 1 {
                return bad(format!("needs exactly one {role:?} file"));
            }
        }
        if !self.files.iter().any(|f| f.role == FileRole::Model) {
            return bad("no model file".into());
        }
        Ok(())
    }
}

/// File names become paths inside a slot: plain names only.
pub fn check_file_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "file name {name:?} must be a plain [A-Za-z0-9._-] name"
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleSignature {
    pub key_id: KeyId,
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Exact postcard bytes of the [`Manifest`]; kept as bytes so re-encoding can never
    /// change what the signature covers.
    pub manifest: Vec<u8>,
    pub signature: Option<BundleSignature>,
}

impl Header {
    pub fn encode(&self) -> Vec<u8> {
        let body = postcard::to_allocvec(self).expect("header serialises");
        let mut out = Vec::with_capacity(12 + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Parses the container prefix. `Ok(None)` when `bytes` is too short to hold it yet.
    pub fn parse_prefix(bytes: &[u8]) -> Result<Option<(Header, usize)>, BundleError> {
        if bytes.len() < 12 {
            return Ok(None);
        }
        if bytes[..7] != MAGIC[..7] {
            return Err(BundleError::NotABundle);
        }
        if bytes[7] != CONTAINER_VERSION {
            return Err(BundleError::VersionMismatch {
                what: "container",
                found: bytes[7].into(),
                supported: CONTAINER_VERSION.into(),
            });
        }
        let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if len > MAX_HEADER {
            return Err(BundleError::Malformed(format!("header length {len}")));
        }
        let end = 12 + len as usize;
        if bytes.len() < end {
            return Ok(None);
        }
        let header: Header = postcard::from_bytes(&bytes[12..end])
            .map_err(|e| BundleError::Malformed(format!("header: {e}")))?;
        Ok(Some((header, end)))
    }

    /// Reads the header from the start of a bundle file; returns it and the payload offset.
    pub fn read_from(file: &mut (impl Read + Seek)) -> Result<(Header, u64), BundleError> {
        file.seek(SeekFrom::Start(0))
            .map_err(io_err("seek bundle"))?;
        let mut prefix = [0u8; 12];
        file.read_exact(&mut prefix)
            .map_err(|_| BundleError::Malformed("shorter than its header".into()))?;
        if Header::parse_prefix(&prefix)?.is_some() {
            unreachable!("a 12-byte prefix never holds a complete header");
        }
        let len = u32::from_le_bytes(prefix[8..12].try_into().expect("4 bytes")) as usize;
        let mut all = prefix.to_vec();
        all.resize(12 + len, 0);
        file.read_exact(&mut all[12..])
            .map_err(|_| BundleError::Malformed("shorter than its header".into()))?;
        let (header, end) = Header::parse_prefix(&all)?.expect("complete header");
        Ok((header, end as u64))
    }

    /// Decodes the manifest, refusing other manifest formats by name.
    pub fn manifest(&self) -> Result<Manifest, BundleError> {
        let (format, _): (u16, _) = postcard::take_from_bytes(&self.manifest)
            .map_err(|e| BundleError::Malformed(format!("manifest: {e}")))?;
        if format != MANIFEST_FORMAT {
            return Err(BundleError::VersionMismatch {
                what: "manifest format",
                found: format.into(),
                supported: MANIFEST_FORMAT.into(),
            });
        }
        let m: Manifest = postcard::from_bytes(&self.manifest)
            .map_err(|e| BundleError::Malformed(format!("manifest: {e}")))?;
        m.check_shape()?;
        Ok(m)
    }
}

/// Key id: the first 8 bytes of SHA-256 of the raw public key (like minisign's key id).
pub fn key_id(key: &VerifyingKey) -> KeyId {
    let h = Sha256::digest(key.as_bytes());
    h[..8].try_into().expect("8 bytes")
}

/// A fresh signing key from the operating system's random source.
pub fn generate_key() -> Result<SigningKey, BundleError> {
    use rand::TryRngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| BundleError::Key(format!("OS random source: {e}")))?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn private_key_pem(key: &SigningKey) -> Result<String, BundleError> {
    Ok(key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| BundleError::Key(e.to_string()))?
        .to_string())
}

pub fn public_key_pem(key: &VerifyingKey) -> Result<String, BundleError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| BundleError::Key(e.to_string()))
}

pub fn read_private_key(path: &Path) -> Result<SigningKey, BundleError> {
    let pem = std::fs::read_to_string(path).map_err(io_err(format!("read {}", path.display())))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        BundleError::Key(format!(
            "{}: not a PKCS#8 ed25519 private key: {e}",
            path.display()
        ))
    })
}

pub fn parse_public_key(pem: &str) -> Result<VerifyingKey, BundleError> {
    VerifyingKey::from_public_key_pem(pem)
        .map_err(|e| BundleError::Key(format!("not an SPKI ed25519 public key: {e}")))
}

/// The trusted public keys of a device (several at once, for rotation).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: Vec<(KeyId, VerifyingKey)>,
}

impl Keyring {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        let mut ring = Self::default();
        for k in keys {
            ring.add(k);
        }
        ring
    }

    pub fn add(&mut self, key: VerifyingKey) -> KeyId {
        let id = key_id(&key);
        if self.get(&id).is_none() {
            self.keys.push((id, key));
        }
        id
    }

    pub fn get(&self, id: &KeyId) -> Option<&VerifyingKey> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, v)| v)
    }

    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|(k, _)| *k).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Loads every `*.pem` of a directory (missing directory = empty keyring).
    pub fn load_dir(dir: &Path) -> Result<Self, BundleError> {
        let mut ring = Self::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ring),
            Err(e) => return Err(io_err(format!("read keyring {}", dir.display()))(e)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "pem"))
            .collect();
        paths.sort();
        for p in paths {
            let pem =
                std::fs::read_to_string(&p).map_err(io_err(format!("read {}", p.display())))?;
            let key = parse_public_key(&pem)
                .map_err(|e| BundleError::Key(format!("{}: {e}", p.display())))?;
            ring.add(key);
        }
        Ok(ring)
    }

    /// Verifies `sig` over `message` with the key `id` from this keyring.
    fn verify(&self, id: &KeyId, message: &[u8], sig: &[u8]) -> Result<(), BundleError> {
        let key = self
            .get(id)
            .ok_or_else(|| BundleError::UnknownKey(hex::encode(id)))?;
        let sig =
            Signature::from_slice(sig).map_err(|_| BundleError::BadSignature(hex::encode(id)))?;
        key.verify_strict(message, &sig)
            .map_err(|_| BundleError::BadSignature(hex::encode(id)))
    }
}

fn manifest_message(manifest: &[u8]) -> Vec<u8> {
    [MANIFEST_DOMAIN, manifest].concat()
}

/// What an engineer signs to authorise one state change on one device.
pub fn auth_message(device_id: &str, nonce: &[u8; 32], action: &[u8]) -> Vec<u8> {
    let mut m = AUTH_DOMAIN.to_vec();
    m.extend_from_slice(&(device_id.len() as u32).to_le_bytes());
    m.extend_from_slice(device_id.as_bytes());
    m.extend_from_slice(nonce);
    m.extend_from_slice(action);
    m
}

pub fn sign_auth(
    key: &SigningKey,
    device_id: &str,
    nonce: &[u8; 32],
    action: &[u8],
) -> (KeyId, Vec<u8>) {
    let sig = key.sign(&auth_message(device_id, nonce, action));
    (key_id(&key.verifying_key()), sig.to_bytes().to_vec())
}

pub fn verify_auth(
    ring: &Keyring,
    key: &KeyId,
    sig: &[u8],
    device_id: &str,
    nonce: &[u8; 32],
    action: &[u8],
) -> Result<(), BundleError> {
    ring.verify(key, &auth_message(device_id, nonce, action), sig)
}

/// Signs a header's manifest in place (replacing any earlier signature).
pub fn sign_header(header: &mut Header, key: &SigningKey) {
    let sig = key.sign(&manifest_message(&header.manifest));
    header.signature = Some(BundleSignature {
        key_id: key_id(&key.verifying_key()),
        signature: sig.to_bytes().to_vec(),
    });
}

/// What the device checks before any payload byte is trusted.
pub struct Policy<'a> {
    pub keyring: &'a Keyring,
    pub board: &'a str,
    pub security_floor: u32,
}

/// Checks signature, board and anti-rollback floor of a header (no payload yet).
pub fn verify_header(header: &Header, policy: &Policy) -> Result<Manifest, BundleError> {
    // Decode first so a newer manifest format is reported as such, not as a bad signature.
    let manifest = header.manifest()?;
    let sig = header.signature.as_ref().ok_or(BundleError::Unsigned)?;
    policy.keyring.verify(
        &sig.key_id,
        &manifest_message(&header.manifest),
        &sig.signature,
    )?;
    if !manifest.compatible.iter().any(|b| b == policy.board) {
        return Err(BundleError::WrongBoard {
            board: policy.board.to_owned(),
            compatible: manifest.compatible.clone(),
        });
    }
    if manifest.security_version < policy.security_floor {
        return Err(BundleError::Downgrade {
            version: manifest.security_version,
            floor: policy.security_floor,
        });
    }
    Ok(manifest)
}

/// Streams the payload from `reader` (positioned at the payload start) and checks every chunk
/// hash and every file hash, calling `sink(file_index, bytes)` with verified-in-order data.
pub fn check_payload(
    manifest: &Manifest,
    reader: &mut impl Read,
    mut sink: impl FnMut(usize, &[u8]) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let chunk = manifest.chunk_size as usize;
    let mut buf = vec![0u8; chunk];
    let mut file_idx = 0usize;
    let mut file_left = manifest.files.first().map_or(0, |f| f.size);
    let mut file_hash = Sha256::new();
    let total = manifest.payload_len();
    let mut done = 0u64;
    for (i, expected) in manifest.chunk_hashes.iter().enumerate() {
        let n = (total - done).min(chunk as u64) as usize;
        reader
            .read_exact(&mut buf[..n])
            .map_err(|_| BundleError::Tampered("payload is shorter than the manifest".into()))?;
        if Sha256::digest(&buf[..n]).as_slice() != expected {
            return Err(BundleError::Tampered(format!("chunk {i} hash mismatch")));
        }
        done += n as u64;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            while file_left == 0 {
                finish_file(manifest, file_idx, &mut file_hash)?;
                file_idx += 1;
                file_left = manifest.files[file_idx].size;
            }
            let take = rest.len().min(file_left as usize);
            file_hash.update(&rest[..take]);
            sink(file_idx, &rest[..take])?;
            file_left -= take as u64;
            rest = &rest[take..];
        }
    }
    // Remaining files (the last one, and any empty ones).
    while file_idx < manifest.files.len() {
        finish_file(manifest, file_idx, &mut file_hash)?;
        file_idx += 1;
    }
    let mut extra = [0u8; 1];
    if reader.read(&mut extra).map_err(io_err("read payload"))? != 0 {
        return Err(BundleError::Tampered(
            "payload is longer than the manifest".into(),
        ));
    }
    Ok(())
}

fn finish_file(manifest: &Manifest, idx: usize, hash: &mut Sha256) -> Result<(), BundleError> {
    let got = std::mem::take(hash).finalize();
    let f = &manifest.files[idx];
    if got.as_slice() != f.sha256 {
        return Err(BundleError::Tampered(format!(
            "{} SHA-256 mismatch",
            f.name
        )));
    }
    Ok(())
}

/// Fully verifies a bundle file: header policy, then every payload byte.
pub fn verify_file(path: &Path, policy: &Policy) -> Result<(Header, Manifest), BundleError> {
    let mut f = std::fs::File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    let (header, _) = Header::read_from(&mut f)?;
    let manifest = verify_header(&header, policy)?;
    check_payload(&manifest, &mut std::io::BufReader::new(f), |_, _| Ok(()))?;
    Ok((header, manifest))
}

/// The expected answer of the golden inference, shipped in the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenOutput {
    /// Ensemble probability of primary bone tumour for the golden input.
    pub probability: f64,
    pub flag: bool,
    /// Largest accepted absolute difference of the probability.
    pub tolerance: f64,
    #[serde(default)]
    pub member_scores: Vec<f64>,
}

/// Checks that golden files parse: the input is a decodable image, the output typed JSON.
pub fn check_golden(input: &[u8], output: &[u8]) -> Result<GoldenOutput, String> {
    image::load_from_memory(input).map_err(|e| format!("golden input is not an image: {e}"))?;
    let out: GoldenOutput = serde_json::from_slice(output)
        .map_err(|e| format!("golden output is not valid JSON: {e}"))?;
    if !(0.0..=1.0).contains(&out.probability) || !(0.0..=1.0).contains(&out.tolerance) {
        return Err("golden output probability and tolerance must lie in [0, 1]".into());
    }
    Ok(out)
}

/// One input file of [`build`].
pub struct BuildFile {
    pub name: String,
    pub role: FileRole,
    pub path: PathBuf,
}

/// What [`build`] needs besides the files.
pub struct BuildSpec {
    pub name: String,
    pub version: String,
    pub security_version: u32,
    pub compatible: Vec<String>,
    pub preprocess: PreprocessSpec,
    pub threshold: f32,
    pub created_unix: u64,
}

/// Writes an unsigned bundle to `out` (atomically: temp file, fsync, rename).
pub fn build(spec: BuildSpec, files: &[BuildFile], out: &Path) -> Result<Manifest, BundleError> {
    if spec.compatible.is_empty() {
        return Err(BundleError::Malformed("no compatible board".into()));
    }
    if !(0.0..=1.0).contains(&spec.threshold) {
        return Err(BundleError::Malformed(
            "threshold must lie in [0, 1]".into(),
        ));
    }
    let mut entries = Vec::new();
    let mut chunk_hashes = Vec::new();
    let mut chunk = Sha256::new();
    let mut in_chunk = 0usize;
    let cs = CHUNK_HASH_SIZE as usize;
    let mut golden = (None, None);
    for f in files {
        let bytes = std::fs::read(&f.path).map_err(io_err(format!("read {}", f.path.display())))?;
        match f.role {
            FileRole::GoldenInput => golden.0 = Some(bytes.clone()),
            FileRole::GoldenOutput => golden.1 = Some(bytes.clone()),
            _ => {}
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let take = rest.len().min(cs - in_chunk);
            chunk.update(&rest[..take]);
            in_chunk += take;
            rest = &rest[take..];
            if in_chunk == cs {
                chunk_hashes.push(std::mem::take(&mut chunk).finalize().into());
                in_chunk = 0;
            }
        }
        entries.push(FileEntry {
            name: f.name.clone(),
            role: f.role,
            size: bytes.len() as u64,
            sha256: Sha256::digest(&bytes).into(),
        });
    }
    if in_chunk > 0 {
        chunk_hashes.push(chunk.finalize().into());
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: spec.name,
        version: spec.version,
        security_version: spec.security_version,
        compatible: spec.compatible,
        files: entries,
        chunk_size: CHUNK_HASH_SIZE,
        chunk_hashes,
        preprocess: spec.preprocess,
        threshold: spec.threshold,
        created_unix: spec.created_unix,
    };
    manifest.check_shape()?;
    if let (Some(i), Some(o)) = &golden {
        check_golden(i, o).map_err(BundleError::Malformed)?;
    }
    let header = Header {
        manifest: manifest.to_bytes(),
        signature: None,
    };
    write_atomic(out, &header, |w| {
        for f in files {
            let mut src = std::fs::File::open(&f.path)
                .map_err(io_err(format!("open {}", f.path.display())))?;
            std::io::copy(&mut src, w).map_err(io_err("write bundle"))?;
        }
        Ok(())
    })?;
    Ok(manifest)
}

/// Rewrites `input` with `header` (e.g. newly signed) into `out`, copying the payload as is.
pub fn rewrite_header(input: &Path, header: &Header, out: &Path) -> Result<(), BundleError> {
    let mut f = std::fs::File::open(input).map_err(io_err(format!("open {}", input.display())))?;
    let (_, payload_at) = Header::read_from(&mut f)?;
    f.seek(SeekFrom::Start(payload_at))
        .map_err(io_err("seek bundle"))?;
    write_atomic(out, header, |w| {
        std::io::copy(&mut f, w).map_err(io_err("write bundle"))?;
        Ok(())
    })
}

fn write_atomic(
    out: &Path,
    header: &Header,
    payload: impl FnOnce(&mut dyn Write) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let tmp = out.with_extension("tmp-write");
    let result = (|| {
        let file =
            std::fs::File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        let mut w = std::io::BufWriter::new(file);
        w.write_all(&header.encode())
            .map_err(io_err("write bundle"))?;
        payload(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| io_err("write bundle")(e.into_error()))?;
        file.sync_all().map_err(io_err("sync bundle"))?;
        std::fs::rename(&tmp, out).map_err(io_err(format!("rename to {}", out.display())))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// SHA-256 of a whole file (the transfer key).
pub fn file_sha256(path: &Path) -> Result<[u8; 32], BundleError> {
    let mut f = std::fs::File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err(format!("read {}", path.display())))?;
    Ok(h.finalize().into())
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(v))
        } else {
            serde::Serialize::serialize(v, s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
            v.try_into()
                .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
        } else {
            <[u8; 32]>::deserialize(d)
        }
    }
}

mod hex32_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_seq(v.iter().map(hex::encode))
        } else {
            serde::Serialize::serialize(v, s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        if d.is_human_readable() {
            let v = Vec::<String>::deserialize(d)?;
            v.iter()
                .map(|s| {
                    hex::decode(s)
                        .map_err(serde::de::Error::custom)?
                        .try_into()
                        .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
                })
                .collect()
        } else {
            Vec::<[u8; 32]>::deserialize(d)
        }
    }
}

/// Test helpers shared by this crate's tests and the workspace end-to-end tests.
#[doc(hidden)]
pub mod testkit {
    use super::*;

    /// A tiny valid PNG (golden input).
    pub fn golden_png() -> Vec<u8> {
        let img = image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x * 16 + y) as u8]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .expect("encode png");
        out.into_inner()
    }

    pub fn golden_json() -> Vec<u8> {
        br#"{"probability":0.73,"flag":true,"tolerance":0.01,"member_scores":[0.7,0.76]}"#.to_vec()
    }

    /// A deterministic key from a seed (tests only).
    pub fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// Builds a signed bundle of `model_len` pseudo-random model bytes into `dir`.
    #[allow(clippy::too_many_arguments)]
    pub fn make_bundle(
        dir: &Path,
        file_name: &str,
        model_len: usize,
        seed: u64,
        board: &str,
        version: &str,
        security_version: u32,
        key: Option<&SigningKey>,
    ) -> PathBuf {
        use rand::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut model = vec![0u8; model_len];
        rng.fill_bytes(&mut model);
        let src = dir.join(format!("{file_name}.src"));
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::write(src.join("member0.onnx"), &model).expect("write");
        std::fs::write(src.join("golden.png"), golden_png()).expect("write");
        std::fs::write(src.join("golden.json"), golden_json()).expect("write");
        let files = [
            ("member0.onnx", FileRole::Model),
            ("golden.png", FileRole::GoldenInput),
            ("golden.json", FileRole::GoldenOutput),
        ]
        .map(|(n, role)| BuildFile {
            name: n.into(),
            role,
            path: src.join(n),
        });
        let out = dir.join(file_name);
        build(
            BuildSpec {
                name: "tirp-ensemble".into(),
                version: version.into(),
                security_version,
                compatible: vec![board.into()],
                preprocess: PreprocessSpec::default(),
                threshold: 0.5,
                created_unix: 0,
            },
            &files,
            &out,
        )
        .expect("build bundle");
        if let Some(key) = key {
            let mut f = std::fs::File::open(&out).expect("open");
            let (mut header, _) = Header::read_from(&mut f).expect("header");
            sign_header(&mut header, key);
            rewrite_header(&out, &header, &out.with_extension("signed")).expect("sign");
            std::fs::rename(out.with_extension("signed"), &out).expect("rename");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;

    fn policy<'a>(ring: &'a Keyring, floor: u32) -> Policy<'a> {
        Policy {
            keyring: ring,
            board: "x86_64-dev",
            security_floor: floor,
        }
    }

    #[test]
    fn signed_bundle_verifies_and_every_rejection_is_distinct() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(1);
        let ring = Keyring::new([k.verifying_key()]);
        let good = make_bundle(
            dir.path(),
            "good.tirpb",
            200_000,
            1,
            "x86_64-dev",
            "1.0.0",
            3,
            Some(&k),
        );
        let (_, m) = verify_file(&good, &policy(&ring, 3)).unwrap();
        assert_eq!(
            m.payload_len(),
            200_000 + golden_png().len() as u64 + golden_json().len() as u64
        );
        assert_eq!(
            m.chunk_hashes.len() as u64,
            m.payload_len().div_ceil(CHUNK_HASH_SIZE as u64)
        );

        let unsigned = make_bundle(
            dir.path(),
            "u.tirpb",
            1000,
            1,
            "x86_64-dev",
            "1.0.0",
            3,
            None,
        );
        assert!(matches!(
            verify_file(&unsigned, &policy(&ring, 0)),
            Err(BundleError::Unsigned)
        ));

        let other = key(2);
        let foreign = make_bundle(
            dir.path(),
            "f.tirpb",
            1000,
            1,
            "x86_64-dev",
            "1.0.0",
            3,
            Some(&other),
        );
        assert!(matches!(
            verify_file(&foreign, &policy(&ring, 0)),
            Err(BundleError::UnknownKey(_))
        ));

        let wrong = make_bundle(
            dir.path(),
            "w.tirpb",
            1000,
            1,
            "jetson-orin-nano-8gb",
            "1.0.0",
            3,
            Some(&k),
        );
        assert!(matches!(
            verify_file(&wrong, &policy(&ring, 0)),
            Err(BundleError::WrongBoard { .. })
        ));

        assert!(matches!(
            verify_file(&good, &policy(&ring, 4)),
            Err(BundleError::Downgrade {
                version: 3,
                floor: 4
            })
        ));

        // Flip one byte of the manifest: the signature no longer matches.
        let bytes = std::fs::read(&good).unwrap();
        let (header, end) = Header::parse_prefix(&bytes).unwrap().unwrap();
        let mut h2 = header.clone();
        let name_at = h2
            .manifest
            .windows(13)
            .position(|w| w == b"tirp-ensemble")
            .unwrap();
        h2.manifest[name_at] = b'T';
        let mut tampered = h2.encode();
        tampered.extend_from_slice(&bytes[end..]);
        let p = dir.path().join("tm.tirpb");
        std::fs::write(&p, &tampered).unwrap();
        assert!(matches!(
            verify_file(&p, &policy(&ring, 0)),
            Err(BundleError::BadSignature(_))
        ));

        // Flip one payload byte: caught by the chunk hash.
        let mut tampered = bytes.clone();
        tampered[end + 100_000] ^= 1;
        std::fs::write(&p, &tampered).unwrap();
        assert!(matches!(
            verify_file(&p, &policy(&ring, 0)),
            Err(BundleError::Tampered(_))
        ));
        // Truncated and extended payloads.
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(
            verify_file(&p, &policy(&ring, 0)),
            Err(BundleError::Tampered(_))
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        std::fs::write(&p, &longer).unwrap();
        assert!(matches!(
            verify_file(&p, &policy(&ring, 0)),
            Err(BundleError::Tampered(_))
        ));

        // Another container version or manifest format is named, not a generic failure.
        let mut v2 = bytes.clone();
        v2[7] = 2;
        std::fs::write(&p, &v2).unwrap();
        assert!(matches!(
            verify_file(&p, &policy(&ring, 0)),
            Err(BundleError::VersionMismatch {
                what: "container",
                found: 2,
                ..
            })
        ));
        let mut h3 = header.clone();
        h3.manifest[0] = 2; // format is the first varint field
        let mut v3 = h3.encode();
        v3.extend_from_slice(&bytes[end..]);
        std::fs::write(&p, &v3).unwrap();
        assert!(matches!(
            verify_file(&p, &policy(&ring, 0)),
            Err(BundleError::VersionMismatch {
                what: "manifest format",
                found: 2,
                ..
            })
        ));
        std::fs::write(&p, b"hello world, not a bundle").unwrap();
        assert!(matches!(
            verify_file(&p, &policy(&ring, 0)),
            Err(BundleError::NotABundle)
        ));
    }

    #[test]
    fn keyring_rotation_trusts_both_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (key(1), key(2));
        let ring = Keyring::new([old.verifying_key(), new.verifying_key()]);
        for (i, k) in [&old, &new].into_iter().enumerate() {
            let b = make_bundle(
                dir.path(),
                &format!("{i}.tirpb"),
                5000,
                1,
                "x86_64-dev",
                "1.0.0",
                0,
                Some(k),
            );
            verify_file(&b, &policy(&ring, 0)).unwrap();
        }
    }

    #[test]
    fn pem_keys_round_trip_and_load_as_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let k = generate_key().unwrap();
        let pem = private_key_pem(&k).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        std::fs::write(dir.path().join("eng.key.pem"), &pem).unwrap();
        let back = read_private_key(&dir.path().join("eng.key.pem")).unwrap();
        assert_eq!(back.to_bytes(), k.to_bytes());
        let ring_dir = dir.path().join("ring");
        std::fs::create_dir(&ring_dir).unwrap();
        let pub_pem = public_key_pem(&k.verifying_key()).unwrap();
        assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        std::fs::write(ring_dir.join("eng.pem"), pub_pem).unwrap();
        let ring = Keyring::load_dir(&ring_dir).unwrap();
        assert_eq!(ring.ids(), vec![key_id(&k.verifying_key())]);
    }

    #[test]
    fn auth_signature_is_bound_to_device_nonce_and_action() {
        let k = key(5);
        let ring = Keyring::new([k.verifying_key()]);
        let nonce = [7u8; 32];
        let (id, sig) = sign_auth(&k, "dev-1", &nonce, b"activate");
        verify_auth(&ring, &id, &sig, "dev-1", &nonce, b"activate").unwrap();
        assert!(verify_auth(&ring, &id, &sig, "dev-2", &nonce, b"activate").is_err());
        assert!(verify_auth(&ring, &id, &sig, "dev-1", &[8u8; 32], b"activate").is_err());
        assert!(verify_auth(&ring, &id, &sig, "dev-1", &nonce, b"rollback").is_err());
    }

    #[test]
    fn unsafe_file_names_are_refused() {
        for bad in ["", "..", "a/b", ".hidden", "x\0y", "header.bin/.."] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        check_file_name("member0.onnx").unwrap();
    }
}
