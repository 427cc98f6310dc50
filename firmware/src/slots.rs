//! Two model slots (A/B) on the data partition, RAUC/Mender style.
//!
//! Install writes only to the candidate (the slot that is not active); activation is a
//! separate step that puts the candidate on trial, runs the health check and marks it good.
//! A trial that survives `max_trial_boots` restarts without being marked good reverts on its
//! own. Every durable step is ordered so that a crash between any two leaves the state file
//! describing slots that really exist: the state is written (temp, fsync, rename, dir fsync)
//! before a slot directory is destroyed and after a new one is complete.

use crate::bundle::{self, FileRole, Header, Manifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const HEADER_FILE: &str = "header.bin";
const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotId {
    A,
    B,
}

impl SlotId {
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    Empty,
    /// Installed and verified, not active.
    Installed,
    /// Active, health check not yet passed.
    Trial,
    /// Passed its health check while active.
    Good,
    /// Failed its health check or its trial; kept for diagnosis until overwritten.
    Bad,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleSummary {
    pub name: String,
    pub version: String,
    pub security_version: u32,
    /// SHA-256 of the bundle file as transferred.
    pub sha256: String,
    pub key_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub state: SlotState,
    pub bundle: Option<BundleSummary>,
}

impl SlotRecord {
    fn empty() -> Self {
        Self {
            state: SlotState::Empty,
            bundle: None,
        }
    }
}

/// The persisted slot state; also what status reports show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotsReport {
    pub version: u32,
    pub a: SlotRecord,
    pub b: SlotRecord,
    pub active: Option<SlotId>,
    /// Slot to return to on rollback or failed trial.
    pub previous: Option<SlotId>,
    /// Restarts seen while the active slot is on trial.
    pub trial_boots: u32,
    /// Highest `security_version` ever marked good.
    pub security_floor: u32,
}

impl SlotsReport {
    /// No slot installed (a fresh device).
    pub fn empty() -> Self {
        Self {
            version: STATE_VERSION,
            a: SlotRecord::empty(),
            b: SlotRecord::empty(),
            active: None,
            previous: None,
            trial_boots: 0,
            security_floor: 0,
        }
    }

    pub fn slot(&self, id: SlotId) -> &SlotRecord {
        match id {
            SlotId::A => &self.a,
            SlotId::B => &self.b,
        }
    }

    fn slot_mut(&mut self, id: SlotId) -> &mut SlotRecord {
        match id {
            SlotId::A => &mut self.a,
            SlotId::B => &mut self.b,
        }
    }

    /// The slot install writes to.
    pub fn candidate(&self) -> SlotId {
        self.active.map_or(SlotId::A, SlotId::other)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("slot state file {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error("no installed bundle to activate")]
    NothingToActivate,
    #[error("no previous good slot to roll back to")]
    NothingToRollBack,
    #[error("cannot roll back to {version}: security_version {sv} is below the floor {floor}")]
    RollbackBelowFloor {
        version: String,
        sv: u32,
        floor: u32,
    },
    #[error("health check of slot {slot} failed: {message}; reverted")]
    HealthCheck { slot: &'static str, message: String },
    /// Test-only crash injection fired: the manager must be dropped and reopened.
    #[error("simulated crash at step {0}")]
    Crashed(usize),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SlotError {
    let context = context.into();
    move |source| SlotError::Io { context, source }
}

/// Decides whether an activated bundle may be marked good: [`FileIntegrityCheck`] here, the
/// engine's golden inference in [`crate::health::GoldenInferenceCheck`].
pub trait HealthCheck: Send + Sync {
    fn check(&self, bundle_dir: &Path, manifest: &Manifest) -> Result<(), String>;
}

/// Every file's size and SHA-256 match the manifest, and the golden files parse.
pub struct FileIntegrityCheck;

impl HealthCheck for FileIntegrityCheck {
    fn check(&self, dir: &Path, manifest: &Manifest) -> Result<(), String> {
        for f in &manifest.files {
            let path = dir.join(&f.name);
            let file = File::open(&path).map_err(|e| format!("{}: {e}", f.name))?;
            let len = file
                .metadata()
                .map_err(|e| format!("{}: {e}", f.name))?
                .len();
            if len != f.size {
                return Err(format!("{}: {len} bytes, manifest says {}", f.name, f.size));
            }
            let mut h = Sha256::new();
            std::io::copy(&mut BufReader::new(file), &mut h)
                .map_err(|e| format!("{}: {e}", f.name))?;
            if h.finalize().as_slice() != f.sha256 {
                return Err(format!("{}: SHA-256 differs from the manifest", f.name));
            }
        }
        let read = |role| {
            let f = manifest
                .file(role)
                .ok_or_else(|| format!("manifest has no {role:?} file"))?;
            std::fs::read(dir.join(&f.name)).map_err(|e| format!("{}: {e}", f.name))
        };
        bundle::check_golden(
            &read(FileRole::GoldenInput)?,
            &read(FileRole::GoldenOutput)?,
        )?;
        Ok(())
    }
}

/// Several checks in order; the first failure decides. The daemon runs the file integrity
/// check first, then the golden inference.
pub struct AllChecks(pub Vec<std::sync::Arc<dyn HealthCheck>>);

impl HealthCheck for AllChecks {
    fn check(&self, dir: &Path, manifest: &Manifest) -> Result<(), String> {
        self.0.iter().try_for_each(|c| c.check(dir, manifest))
    }
}

/// What changed, for the device log.
#[derive(Debug, Clone, PartialEq)]
pub enum SlotEvent {
    Installed { slot: SlotId, bundle: BundleSummary },
    Activated { slot: SlotId },
    MarkedGood { slot: SlotId },
    HealthCheckFailed { slot: SlotId, message: String },
    TrialExpired { slot: SlotId, boots: u32 },
    Reverted { from: SlotId, to: Option<SlotId> },
    RolledBack { from: SlotId, to: SlotId },
    SlotMissing { slot: SlotId },
}

pub struct SlotManager {
    root: PathBuf,
    state: SlotsReport,
    max_trial_boots: u32,
    events: Vec<SlotEvent>,
    crash_at: Option<usize>,
    steps: usize,
}

impl SlotManager {
    /// Opens (creating) the slot area, cleans stale staging, repairs the state against what is
    /// on disk and resolves a pending trial: counts this start, reverts an expired trial, or
    /// runs the health check and marks the slot good.
    pub fn open(
        root: &Path,
        health: &dyn HealthCheck,
        max_trial_boots: u32,
    ) -> Result<Self, SlotError> {
        Self::open_with_crash(root, health, max_trial_boots, None)
    }

    /// [`Self::open`] with a simulated crash before durable step `crash_at` (tests).
    #[doc(hidden)]
    pub fn open_with_crash(
        root: &Path,
        health: &dyn HealthCheck,
        max_trial_boots: u32,
        crash_at: Option<usize>,
    ) -> Result<Self, SlotError> {
        std::fs::create_dir_all(root).map_err(io_err(format!("create {}", root.display())))?;
        let path = root.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let s: SlotsReport =
                    serde_json::from_slice(&bytes).map_err(|e| SlotError::State {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                if s.version != STATE_VERSION {
                    return Err(SlotError::State {
                        path,
                        message: format!("version {} (this build: {STATE_VERSION})", s.version),
                    });
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SlotsReport::empty(),
            Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
        };
        let mut m = Self {
            root: root.to_owned(),
            state,
            max_trial_boots,
            events: Vec::new(),
            crash_at,
            steps: 0,
        };
        m.clean_staging()?;
        m.repair()?;
        m.resolve_trial(health)?;
        Ok(m)
    }

    pub fn report(&self) -> &SlotsReport {
        &self.state
    }

    /// Drains what happened since the last call (for the device log).
    pub fn take_events(&mut self) -> Vec<SlotEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn slot_dir(&self, id: SlotId) -> PathBuf {
        self.root.join(id.name())
    }

    /// The active slot's directory and manifest, if one is active.
    pub fn active(&self) -> Result<Option<(SlotId, PathBuf, Manifest)>, SlotError> {
        let Some(id) = self.state.active else {
            return Ok(None);
        };
        let dir = self.slot_dir(id);
        let manifest = read_slot_manifest(&dir)?;
        Ok(Some((id, dir, manifest)))
    }

    fn step(&mut self) -> Result<(), SlotError> {
        let k = self.steps;
        self.steps += 1;
        if self.crash_at == Some(k) {
            return Err(SlotError::Crashed(k));
        }
        Ok(())
    }

    fn persist(&mut self) -> Result<(), SlotError> {
        self.step()?;
        let path = self.root.join(STATE_FILE);
        let tmp = self.root.join("state.json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.state).expect("state serialises");
        let mut f = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .map_err(io_err(format!("write {}", tmp.display())))?;
        drop(f);
        self.step()?;
        std::fs::rename(&tmp, &path).map_err(io_err(format!("rename {}", path.display())))?;
        sync_dir(&self.root)
    }

    fn clean_staging(&mut self) -> Result<(), SlotError> {
        for id in [SlotId::A, SlotId::B] {
            let staging = self.root.join(format!(".staging-{}", id.name()));
            if staging.exists() {
                std::fs::remove_dir_all(&staging)
                    .map_err(io_err(format!("remove stale {}", staging.display())))?;
            }
        }
        let _ = std::fs::remove_file(self.root.join("state.json.tmp"));
        Ok(())
    }

    /// A slot the state calls non-empty must exist with its header; otherwise forget it.
    fn repair(&mut self) -> Result<(), SlotError> {
        let mut changed = false;
        for id in [SlotId::A, SlotId::B] {
            if self.state.slot(id).state != SlotState::Empty
                && !self.slot_dir(id).join(HEADER_FILE).is_file()
            {
                *self.state.slot_mut(id) = SlotRecord::empty();
                self.events.push(SlotEvent::SlotMissing { slot: id });
                if self.state.active == Some(id) {
                    self.state.active = self.state.previous.take();
                }
                if self.state.previous == Some(id) {
                    self.state.previous = None;
                }
                changed = true;
            }
        }
        if changed {
            self.persist()?;
        }
        Ok(())
    }

    fn resolve_trial(&mut self, health: &dyn HealthCheck) -> Result<(), SlotError> {
        let Some(active) = self.state.active else {
            return Ok(());
        };
        match self.state.slot(active).state {
            SlotState::Trial => {
                self.state.trial_boots += 1;
                self.persist()?;
                if self.state.trial_boots > self.max_trial_boots {
                    let boots = self.state.trial_boots;
                    self.events.push(SlotEvent::TrialExpired {
                        slot: active,
                        boots,
                    });
                    self.revert(active)?;
                    return self.resolve_trial(health);
                }
                self.run_health(active, health).map(|_| ())
            }
            SlotState::Good => {
                // A good slot that no longer passes (disk corruption) yields to the previous.
                let dir = self.slot_dir(active);
                let verdict = read_slot_manifest(&dir)
                    .map_err(|e| e.to_string())
                    .and_then(|m| health.check(&dir, &m));
                if let Err(message) = verdict {
                    self.events.push(SlotEvent::HealthCheckFailed {
                        slot: active,
                        message,
                    });
                    self.revert(active)?;
                    return self.resolve_trial(health);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Marks `slot` bad and returns to the previous good slot (or none).
    fn revert(&mut self, slot: SlotId) -> Result<(), SlotError> {
        self.state.slot_mut(slot).state = SlotState::Bad;
        let to = self
            .state
            .previous
            .take()
            .filter(|p| matches!(self.state.slot(*p).state, SlotState::Good));
        self.state.active = to;
        self.state.trial_boots = 0;
        self.events.push(SlotEvent::Reverted { from: slot, to });
        self.persist()
    }

    fn run_health(&mut self, slot: SlotId, health: &dyn HealthCheck) -> Result<(), SlotError> {
        let dir = self.slot_dir(slot);
        let verdict = read_slot_manifest(&dir)
            .map_err(|e| e.to_string())
            .and_then(|m| health.check(&dir, &m).map(|_| m));
        match verdict {
            Ok(manifest) => {
                self.state.slot_mut(slot).state = SlotState::Good;
                self.state.trial_boots = 0;
                self.state.security_floor =
                    self.state.security_floor.max(manifest.security_version);
                self.persist()?;
                self.events.push(SlotEvent::MarkedGood { slot });
                Ok(())
            }
            Err(message) => {
                self.events.push(SlotEvent::HealthCheckFailed {
                    slot,
                    message: message.clone(),
                });
                self.revert(slot)?;
                Err(SlotError::HealthCheck {
                    slot: slot.name(),
                    message,
                })
            }
        }
    }

    /// Installs a verified bundle file into the candidate slot. `expected` is the already
    /// verified manifest; the payload is re-checked chunk by chunk while it is extracted.
    pub fn install(
        &mut self,
        bundle_path: &Path,
        policy: &bundle::Policy,
        summary_sha256: &str,
    ) -> Result<SlotId, SlotError> {
        self.clean_staging()?;
        let mut f =
            File::open(bundle_path).map_err(io_err(format!("open {}", bundle_path.display())))?;
        let (header, payload_at) = Header::read_from(&mut f)?;
        let policy = bundle::Policy {
            security_floor: self.state.security_floor.max(policy.security_floor),
            ..*policy
        };
        let manifest = bundle::verify_header(&header, &policy)?;
        let slot = self.state.candidate();
        // Idempotent: the same bundle already sits in the candidate slot.
        let rec = self.state.slot(slot);
        if rec.state == SlotState::Installed
            && rec
                .bundle
                .as_ref()
                .is_some_and(|b| b.sha256 == summary_sha256)
        {
            return Ok(slot);
        }
        if rec.state != SlotState::Empty {
            *self.state.slot_mut(slot) = SlotRecord::empty();
            if self.state.previous == Some(slot) {
                self.state.previous = None;
            }
            self.persist()?;
        }
        let dir = self.slot_dir(slot);
        self.step()?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
        }
        let staging = self.root.join(format!(".staging-{}", slot.name()));
        std::fs::create_dir_all(&staging)
            .map_err(io_err(format!("create {}", staging.display())))?;
        f.seek(SeekFrom::Start(payload_at))
            .map_err(io_err("seek bundle"))?;
        self.extract(&header, &manifest, &mut BufReader::new(f), &staging)?;
        self.step()?;
        std::fs::rename(&staging, &dir).map_err(io_err(format!("rename to {}", dir.display())))?;
        sync_dir(&self.root)?;
        let sig = header
            .signature
            .as_ref()
            .expect("verified header is signed");
        let summary = BundleSummary {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            security_version: manifest.security_version,
            sha256: summary_sha256.to_owned(),
            key_id: hex::encode(sig.key_id),
        };
        *self.state.slot_mut(slot) = SlotRecord {
            state: SlotState::Installed,
            bundle: Some(summary.clone()),
        };
        self.persist()?;
        self.events.push(SlotEvent::Installed {
            slot,
            bundle: summary,
        });
        Ok(slot)
    }

    fn extract(
        &mut self,
        header: &Header,
        manifest: &Manifest,
        payload: &mut impl Read,
        staging: &Path,
    ) -> Result<(), SlotError> {
        let header_only = Header {
            manifest: header.manifest.clone(),
            signature: header.signature.clone(),
        };
        write_synced(&staging.join(HEADER_FILE), &header_only.encode())?;
        let mut files: Vec<Option<File>> = Vec::new();
        for f in &manifest.files {
            let p = staging.join(&f.name);
            files.push(Some(
                File::create(&p).map_err(io_err(format!("create {}", p.display())))?,
            ));
        }
        let mut written = 0u64;
        let half = manifest.payload_len() / 2;
        let mut crash = None;
        let steps_before = self.steps;
        let crash_at = self.crash_at;
        bundle::check_payload(manifest, payload, |i, bytes| {
            // A crash point in the middle of the payload (a torn extraction).
            if written < half
                && written + bytes.len() as u64 >= half
                && crash_at == Some(steps_before)
            {
                crash = Some(steps_before);
                return Err(bundle::BundleError::Malformed("simulated crash".into()));
            }
            written += bytes.len() as u64;
            files[i]
                .as_mut()
                .expect("open")
                .write_all(bytes)
                .map_err(|source| bundle::BundleError::Io {
                    context: format!("write {}", manifest.files[i].name),
                    source,
                })
        })
        .map_err(|e| match crash {
            Some(k) => SlotError::Crashed(k),
            None => e.into(),
        })?;
        self.steps += 1;
        for (f, entry) in files.iter_mut().zip(&manifest.files) {
            f.take()
                .expect("open")
                .sync_all()
                .map_err(io_err(format!("sync {}", entry.name)))?;
        }
        sync_dir(staging)
    }

    /// Puts the installed candidate on trial, runs the health check and marks it good; a
    /// failed check reverts to the previous good slot.
    pub fn activate(&mut self, health: &dyn HealthCheck) -> Result<SlotId, SlotError> {
        let cand = self.state.candidate();
        if self.state.slot(cand).state != SlotState::Installed {
            return Err(SlotError::NothingToActivate);
        }
        let sv = self
            .state
            .slot(cand)
            .bundle
            .as_ref()
            .map_or(0, |b| b.security_version);
        if sv < self.state.security_floor {
            return Err(SlotError::RollbackBelowFloor {
                version: self
                    .state
                    .slot(cand)
                    .bundle
                    .as_ref()
                    .map_or_else(String::new, |b| b.version.clone()),
                sv,
                floor: self.state.security_floor,
            });
        }
        self.state.previous = self
            .state
            .active
            .filter(|a| self.state.slot(*a).state == SlotState::Good);
        self.state.active = Some(cand);
        self.state.slot_mut(cand).state = SlotState::Trial;
        self.state.trial_boots = 0;
        self.persist()?;
        self.events.push(SlotEvent::Activated { slot: cand });
        self.step()?;
        self.run_health(cand, health)?;
        Ok(cand)
    }

    /// Returns to the previous good slot; the slot left stays installed (re-activatable).
    pub fn rollback(&mut self) -> Result<SlotId, SlotError> {
        let (Some(active), Some(prev)) = (self.state.active, self.state.previous) else {
            return Err(SlotError::NothingToRollBack);
        };
        let rec = self.state.slot(prev);
        if rec.state != SlotState::Good {
            return Err(SlotError::NothingToRollBack);
        }
        if let Some(b) = &rec.bundle
            && b.security_version < self.state.security_floor
        {
            return Err(SlotError::RollbackBelowFloor {
                version: b.version.clone(),
                sv: b.security_version,
                floor: self.state.security_floor,
            });
        }
        self.state.slot_mut(active).state = SlotState::Installed;
        self.state.active = Some(prev);
        self.state.previous = None;
        self.state.trial_boots = 0;
        self.persist()?;
        self.events.push(SlotEvent::RolledBack {
            from: active,
            to: prev,
        });
        Ok(prev)
    }
}

/// Reads the manifest a slot was installed from (signature was checked at install).
pub fn read_slot_manifest(dir: &Path) -> Result<Manifest, SlotError> {
    let mut f = File::open(dir.join(HEADER_FILE))
        .map_err(io_err(format!("open {}", dir.join(HEADER_FILE).display())))?;
    let (header, _) = Header::read_from(&mut f)?;
    Ok(header.manifest()?)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SlotError> {
    let mut f = File::create(path).map_err(io_err(format!("create {}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("write {}", path.display())))
}

/// Makes a rename or unlink in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), SlotError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(format!("sync {}", dir.display())))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::testkit::*;
    use crate::bundle::{Keyring, Policy};

    struct Fails;
    impl HealthCheck for Fails {
        fn check(&self, _: &Path, _: &Manifest) -> Result<(), String> {
            Err("golden inference mismatch".into())
        }
    }

    fn setup() -> (tempfile::TempDir, Keyring, ed25519_dalek::SigningKey) {
        let k = key(3);
        (
            tempfile::tempdir().unwrap(),
            Keyring::new([k.verifying_key()]),
            k,
        )
    }

    /// A signed x86_64-dev bundle `<seed>.tirpb` with `len` model bytes.
    fn signed(
        dir: &Path,
        seed: u64,
        len: usize,
        version: &str,
        sv: u32,
        k: &ed25519_dalek::SigningKey,
    ) -> PathBuf {
        let name = format!("{seed}.tirpb");
        make_bundle(dir, &name, len, seed, "x86_64-dev", version, sv, Some(k))
    }

    fn install(m: &mut SlotManager, ring: &Keyring, path: &Path) -> Result<SlotId, SlotError> {
        let sha = hex::encode(bundle::file_sha256(path).unwrap());
        m.install(
            path,
            &Policy {
                keyring: ring,
                board: "x86_64-dev",
                security_floor: 0,
            },
            &sha,
        )
    }

    #[test]
    fn install_activate_rollback_cycle() {
        let (dir, ring, k) = setup();
        let root = dir.path().join("slots");
        let b1 = signed(dir.path(), 1, 70_000, "1.0.0", 1, &k);
        let b2 = signed(dir.path(), 2, 90_000, "1.1.0", 1, &k);
        let mut m = SlotManager::open(&root, &FileIntegrityCheck, 3).unwrap();
        assert!(matches!(
            m.activate(&FileIntegrityCheck),
            Err(SlotError::NothingToActivate)
        ));
        assert_eq!(install(&mut m, &ring, &b1).unwrap(), SlotId::A);
        assert_eq!(m.activate(&FileIntegrityCheck).unwrap(), SlotId::A);
        assert_eq!(m.report().a.state, SlotState::Good);
        assert_eq!(install(&mut m, &ring, &b2).unwrap(), SlotId::B);
        // Active slot untouched by install.
        assert_eq!(m.report().active, Some(SlotId::A));
        m.activate(&FileIntegrityCheck).unwrap();
        assert_eq!(m.report().active, Some(SlotId::B));
        assert_eq!(m.rollback().unwrap(), SlotId::A);
        assert_eq!(m.report().b.state, SlotState::Installed);
        assert!(matches!(m.rollback(), Err(SlotError::NothingToRollBack)));
        // Survives a reopen.
        let m = SlotManager::open(&root, &FileIntegrityCheck, 3).unwrap();
        assert_eq!(m.report().active, Some(SlotId::A));
        assert_eq!(m.active().unwrap().unwrap().2.version, "1.0.0");
    }

    #[test]
    fn failed_health_check_reverts_and_trial_expires_after_n_boots() {
        let (dir, ring, k) = setup();
        let root = dir.path().join("slots");
        let b1 = signed(dir.path(), 1, 10_000, "1.0.0", 0, &k);
        let b2 = signed(dir.path(), 2, 10_000, "2.0.0", 0, &k);
        let mut m = SlotManager::open(&root, &FileIntegrityCheck, 2).unwrap();
        install(&mut m, &ring, &b1).unwrap();
        m.activate(&FileIntegrityCheck).unwrap();
        install(&mut m, &ring, &b2).unwrap();
        assert!(matches!(
            m.activate(&Fails),
            Err(SlotError::HealthCheck { .. })
        ));
        assert_eq!(m.report().active, Some(SlotId::A));
        assert_eq!(m.report().b.state, SlotState::Bad);

        // A trial whose health check never completes (the daemon dies in it) expires.
        install(&mut m, &ring, &b2).unwrap();
        let r = m.activate_for_test_without_health();
        assert_eq!(r, SlotId::B);
        drop(m);
        struct Hangs;
        impl HealthCheck for Hangs {
            fn check(&self, dir: &Path, m: &Manifest) -> Result<(), String> {
                if m.version == "2.0.0" {
                    panic!("simulated crash in health check")
                }
                FileIntegrityCheck.check(dir, m)
            }
        }
        for boot in 1..=2 {
            let res = std::panic::catch_unwind(|| {
                let _ = SlotManager::open(&root, &Hangs, 2);
            });
            assert!(res.is_err(), "boot {boot} reached the health check");
        }
        let m = SlotManager::open(&root, &Hangs, 2).unwrap();
        assert_eq!(m.report().active, Some(SlotId::A));
        assert_eq!(m.report().b.state, SlotState::Bad);
    }

    #[test]
    fn downgrade_refused_after_floor_rises_and_corrupt_good_slot_yields() {
        let (dir, ring, k) = setup();
        let root = dir.path().join("slots");
        let b1 = signed(dir.path(), 1, 10_000, "1.0.0", 1, &k);
        let b2 = signed(dir.path(), 2, 10_000, "2.0.0", 2, &k);
        let mut m = SlotManager::open(&root, &FileIntegrityCheck, 2).unwrap();
        install(&mut m, &ring, &b1).unwrap();
        m.activate(&FileIntegrityCheck).unwrap();
        install(&mut m, &ring, &b2).unwrap();
        m.activate(&FileIntegrityCheck).unwrap();
        assert_eq!(m.report().security_floor, 2);
        assert!(matches!(
            m.rollback(),
            Err(SlotError::RollbackBelowFloor { .. })
        ));
        assert!(matches!(
            install(&mut m, &ring, &b1),
            Err(SlotError::Bundle(bundle::BundleError::Downgrade {
                version: 1,
                floor: 2
            }))
        ));
        // Corrupt the active slot's model: the next start marks it bad.
        let model = m.slot_dir(SlotId::B).join("member0.onnx");
        let mut bytes = std::fs::read(&model).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&model, bytes).unwrap();
        let m = SlotManager::open(&root, &FileIntegrityCheck, 2).unwrap();
        assert_eq!(m.report().b.state, SlotState::Bad);
    }

    impl SlotManager {
        fn activate_for_test_without_health(&mut self) -> SlotId {
            let cand = self.state.candidate();
            self.state.previous = self.state.active;
            self.state.active = Some(cand);
            self.state.slot_mut(cand).state = SlotState::Trial;
            self.persist().unwrap();
            cand
        }
    }

    /// Crash at every durable step of install + activate: after a reopen exactly one good
    /// slot is active and it passes the integrity check.
    #[test]
    fn crash_at_every_step_leaves_one_good_slot() {
        let (dir, ring, k) = setup();
        let b1 = signed(dir.path(), 1, 40_000, "1.0.0", 0, &k);
        let b2 = signed(dir.path(), 2, 50_000, "2.0.0", 0, &k);
        let mut crashed = 0;
        for at in 0.. {
            let root = dir.path().join(format!("slots-{at}"));
            let mut m = SlotManager::open(&root, &FileIntegrityCheck, 3).unwrap();
            install(&mut m, &ring, &b1).unwrap();
            m.activate(&FileIntegrityCheck).unwrap();
            drop(m);
            let mut m =
                SlotManager::open_with_crash(&root, &FileIntegrityCheck, 3, Some(at)).unwrap();
            let r = install(&mut m, &ring, &b2).and_then(|_| m.activate(&FileIntegrityCheck));
            drop(m);
            let m = SlotManager::open(&root, &FileIntegrityCheck, 3).unwrap();
            let (id, dir_, manifest) = m.active().unwrap().expect("a slot is active");
            assert_eq!(m.report().slot(id).state, SlotState::Good, "step {at}");
            FileIntegrityCheck.check(&dir_, &manifest).unwrap();
            match r {
                Err(SlotError::Crashed(k)) => {
                    assert_eq!(k, at);
                    crashed += 1;
                }
                Ok(_) => {
                    assert_eq!(manifest.version, "2.0.0");
                    break;
                }
                Err(e) => panic!("step {at}: {e}"),
            }
        }
        assert!(crashed >= 8, "only {crashed} crash points");
    }
}
