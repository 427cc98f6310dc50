//! The DR-station service: received radiographs → engine → flag, heat-map and DICOM results.
//!
//! Ingest (the DICOM node, the hot folder) hands each instance to [`Station::accept`], which
//! refuses what cannot be used while the sender is still connected, stores the rest durably
//! in the [`Spool`] and returns: the station gets its C-STORE response before any inference.
//! One worker thread takes the spool's entries in arrival order and, per study: loads the
//! active bundle's engine if the active slot changed (so activation swaps the engine between
//! studies, never during one), predicts, writes the overlay PNG, queues the Secondary
//! Capture and SRs in the [`Outbox`], commits the result (the point where the study counts
//! as processed), appends the inference record to the device log and publishes it to the
//! dashboard. A "no lesion localised — review" result (the bundle's localiser found nothing
//! confident enough, [`crate::engine::FLAG_NO_LESION`]) is done with that flag, no
//! probability and no PBT/infection claim: its overlay is written and it is committed,
//! logged (`review: true`) and published, but no Secondary Capture or SR is sent, since they
//! would report a finding that was never made. A crash anywhere before the commit reprocesses the study (results are
//! deterministic: same objects, same UIDs); after it, only the device-log record is checked
//! and written if missing, so each study is logged exactly once.

use super::dashboard::{Dashboard, StudyState, StudyView};
use super::outbox::Outbox;
use super::spool::{EntryMeta, PutOutcome, Spool, SpoolError, instance_id};
use crate::devlog::{InferenceRecord, LogEntry, MemberScore, StageLatency, now_unix_ms};
use crate::dicom::results::{self, ResultContext};
use crate::dicom::scp::{InstanceSink, ReceivedInstance, SinkError};
use crate::engine::{ClinicalInput, Engine, EngineOptions, Explain, Prediction, overlay};
use crate::provision::Device;
use crate::radiograph;
use dicom_dictionary_std::tags;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tracing::{error, info, warn};

#[derive(Debug, Clone)]
pub struct StationConfig {
    /// The bundle used while no slot is active (the shipped default bundle).
    pub default_bundle: Option<PathBuf>,
    pub engine: EngineOptions,
    /// Refuse new studies (0xA700) when the data disk has less free space than this.
    pub min_free_bytes: u64,
    /// "tirpd <version>", written into the result objects.
    pub software_version: String,
}

/// What a study's result file holds (`spool/results/<id>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyRecord {
    pub view: StudyView,
    /// The device-log record of the inference (absent for a failed study).
    pub inference: Option<InferenceRecord>,
}

struct Loaded {
    generation: u64,
    engine: Arc<Engine>,
    slot: Option<String>,
    bundle_id: String,
    bundle_sha256: String,
}

pub struct Station {
    cfg: StationConfig,
    device: Arc<Device>,
    spool: Arc<Spool>,
    outbox: Arc<Outbox>,
    dashboard: Arc<Dashboard>,
    /// The board id for inference records (read once: `Device::info` locks and stats).
    board: String,
    loaded: Mutex<Option<Loaded>>,
    processed: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
}

/// A short, non-reversible tag for logs.
fn tag(id: &str) -> &str {
    &id[..id.len().min(8)]
}

/// SHA-256 over the bundle files the engine reads (ensemble.json and every graph it names),
/// so a slot and the shipped directory holding the same models get the same id.
fn bundle_digest(engine: &Engine) -> String {
    let spec = engine.spec();
    let mut names = vec!["ensemble.json".to_owned(), spec.stacker.file.clone()];
    names.extend(spec.members.iter().map(|m| m.file.clone()));
    let mut h = Sha256::new();
    for n in names {
        let file = std::fs::read(engine.dir().join(&n)).unwrap_or_default();
        h.update(n.as_bytes());
        h.update([0]);
        h.update(Sha256::digest(&file));
    }
    hex::encode(h.finalize())
}

fn text(obj: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// A score rounded to 3 decimals for the log (the dashboard and device log keep it whole).
fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Station {
    /// Opens the spool and outbox under the device's data directory (recovering after a
    /// crash) and republishes the newest results to the dashboard.
    pub fn open(
        cfg: StationConfig,
        device: Arc<Device>,
        outbox: Arc<Outbox>,
        dashboard: Arc<Dashboard>,
        history: usize,
    ) -> Result<Arc<Station>, SpoolError> {
        let root = device.data_dir().join("spool");
        let mut finished = Vec::new();
        let spool = Arc::new(Spool::open(&root, &mut |id| finished.push(id.to_owned()))?);
        let station = Arc::new(Station {
            cfg,
            board: device.info().board,
            device,
            spool,
            outbox,
            dashboard,
            loaded: Mutex::new(None),
            processed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        // Committed before a crash: make sure the device log has the record, exactly once.
        for id in &finished {
            if let Some(rec) = station.read_record(id)
                && let Some(inf) = rec.inference
            {
                let entry = LogEntry::Inference(inf);
                match station.device.has_logged(&entry) {
                    Ok(true) => {}
                    Ok(false) => {
                        if let Err(e) = station.device.log_entry(&entry) {
                            error!(
                                study = tag(id),
                                error = e.to_string(),
                                "cannot write the device log"
                            );
                        }
                    }
                    Err(e) => error!(
                        study = tag(id),
                        error = e.to_string(),
                        "cannot read the device log"
                    ),
                }
            }
        }
        let mut recent = station.spool.recent_results(history).unwrap_or_default();
        recent.reverse();
        for id in recent {
            if let Some(rec) = station.read_record(&id) {
                let png = std::fs::read(station.spool.result_file(&id, "png")).ok();
                station.dashboard.publish(rec.view, png.map(Arc::new));
            }
        }
        Ok(station)
    }

    fn read_record(&self, id: &str) -> Option<StudyRecord> {
        let bytes = std::fs::read(self.spool.result_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Studies waiting for the engine.
    pub fn queue_depth(&self) -> u64 {
        self.spool.depth() as u64
    }

    /// (processed, failed, refused at ingest) since start.
    pub fn counters(&self) -> (u64, u64, u64) {
        (
            self.processed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// The loaded bundle ("name version"), its slot and backend, once a study has run or
    /// [`Station::load_engine`] was called.
    pub fn engine_summary(&self) -> (Option<String>, Option<String>, Option<String>) {
        let l = self.loaded.lock().expect("engine lock");
        match l.as_ref() {
            Some(l) => (
                Some(format!(
                    "{} {}",
                    l.engine.spec().name,
                    l.engine.spec().version
                )),
                Some(l.slot.clone().unwrap_or_else(|| "default".into())),
                Some(l.engine.backend().to_owned()),
            ),
            None => (None, None, None),
        }
    }

    /// Loads the active slot's bundle (or the default bundle) if the active slot changed
    /// since the last load. Between studies only: the worker calls it before each one.
    pub fn load_engine(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        let generation = self.device.active_generation();
        let mut l = self.loaded.lock().expect("engine lock");
        if l.as_ref().is_some_and(|l| l.generation == generation) {
            return Ok(());
        }
        let active = self.device.active_bundle()?;
        let (dir, slot) = match active {
            Some((dir, _manifest)) => {
                let slot = self.device.info().slots.active.map(|s| s.name().to_owned());
                (dir, slot)
            }
            None => match &self.cfg.default_bundle {
                Some(d) => (d.clone(), None),
                None => anyhow::bail!("no active bundle and no default bundle"),
            },
        };
        let engine = Engine::load(&dir, &self.cfg.engine)
            .with_context(|| format!("load bundle {}", dir.display()))?;
        let bundle_sha256 = bundle_digest(&engine);
        let bundle_id = format!("{}-{}", engine.spec().name, engine.spec().version);
        info!(
            bundle = %bundle_id,
            slot = slot.as_deref().unwrap_or("default bundle"),
            dir = dir.display().to_string(),
            backend = engine.backend(),
            load_ms = engine.load_ms().round(),
            "engine loaded"
        );
        *l = Some(Loaded {
            generation,
            engine: Arc::new(engine),
            slot,
            bundle_id,
            bundle_sha256,
        });
        Ok(())
    }

    /// Validates and durably stores one received instance (the C-STORE SCP and the hot
    /// folder both come here). Returns after the file is on disk.
    pub fn accept(
        &self,
        file: &[u8],
        source: &str,
        received: SystemTime,
    ) -> Result<(String, PutOutcome), SinkError> {
        let free = crate::devlog::free_space(self.spool.root()).unwrap_or(u64::MAX);
        if free < self.cfg.min_free_bytes {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(SinkError::OutOfResources(format!(
                "disk nearly full: {} MB free, {} MB reserved",
                free >> 20,
                self.cfg.min_free_bytes >> 20
            )));
        }
        let refuse = |msg: String| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            SinkError::CannotUnderstand(msg)
        };
        let obj = radiograph::parse_dicom(file).map_err(|e| refuse(e.to_string()))?;
        radiograph::check_dicom_header(&obj).map_err(|e| refuse(e.to_string()))?;
        let sop = text(&obj, tags::SOP_INSTANCE_UID)
            .ok_or_else(|| refuse("no SOP Instance UID".into()))?;
        let id = instance_id(&sop);
        let meta = EntryMeta {
            id: id.clone(),
            received_unix_ms: unix_ms(received),
            source: source.to_owned(),
        };
        let outcome = self.spool.put(meta.clone(), file).map_err(|e| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            SinkError::OutOfResources(format!("cannot store: {e}"))
        })?;
        match outcome {
            PutOutcome::Queued => {
                self.dashboard.publish(self.view(&meta, &obj), None);
                info!(study = tag(&id), source, "study stored, queued");
            }
            PutOutcome::Duplicate => {
                info!(
                    study = tag(&id),
                    source, "study already received, not queued again"
                )
            }
        }
        Ok((id, outcome))
    }

    fn view(&self, meta: &EntryMeta, obj: &dicom_object::InMemDicomObject) -> StudyView {
        StudyView {
            id: meta.id.clone(),
            received_unix_ms: meta.received_unix_ms,
            done_unix_ms: None,
            state: StudyState::Queued,
            patient_name: text(obj, tags::PATIENT_NAME)
                .map(|n| n.replace('^', " ").trim().to_owned()),
            patient_id: text(obj, tags::PATIENT_ID),
            accession: text(obj, tags::ACCESSION_NUMBER),
            body_part: text(obj, tags::BODY_PART_EXAMINED),
            source: meta.source.clone(),
            flag: None,
            pbt: None,
            probability: None,
            threshold: None,
            bundle: None,
            backend: None,
            latency_ms: None,
            error: None,
            has_heatmap: false,
        }
    }

    /// Starts the worker; it stops when `stop` is set, after the study in hand.
    pub fn spawn_worker(self: &Arc<Self>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("station worker".into())
            .spawn(move || {
                while let Some(entry) = me.spool.next(Duration::from_secs(3600), &stop) {
                    me.process(&entry.meta, &entry.path);
                }
            })
            .expect("spawn station worker")
    }

    fn process(&self, meta: &EntryMeta, path: &Path) {
        let id = &meta.id;
        let t = Instant::now();
        let bytes = std::fs::read(path);
        let obj = bytes
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|b| radiograph::parse_dicom(b).map_err(|e| e.to_string()));
        let mut view = match &obj {
            Ok(o) => self.view(meta, o),
            Err(_) => self.view(meta, &dicom_object::InMemDicomObject::new_empty()),
        };
        let outcome = obj.map_err(anyhow::Error::msg).and_then(|obj| {
            self.load_engine()?;
            self.run(meta, &obj, t)
        });
        let done = now_unix_ms();
        view.done_unix_ms = Some(done);
        match outcome {
            Ok((p, png, inference)) => {
                view.state = StudyState::Done;
                view.flag = Some(p.flag.clone());
                // A review result claims neither class and has no probability.
                view.pbt = (!p.review).then_some(p.pbt);
                view.probability = (!p.review).then_some(p.probability);
                view.threshold = Some(p.threshold);
                view.bundle = Some(format!("{} {}", p.bundle.name, p.bundle.version));
                view.backend = Some(p.backend.clone());
                view.latency_ms = Some(done.saturating_sub(meta.received_unix_ms) as f64);
                view.has_heatmap = true;
                let rec = StudyRecord {
                    view: view.clone(),
                    inference: Some(inference.clone()),
                };
                if let Err(e) = self.spool.commit(
                    id,
                    &serde_json::to_vec_pretty(&rec).expect("record serialises"),
                ) {
                    // Not committed: it stays in incoming/ and is processed after a restart.
                    error!(
                        study = tag(id),
                        error = e.to_string(),
                        "cannot record the result"
                    );
                    return;
                }
                if let Err(e) = self.device.log_entry(&LogEntry::Inference(inference)) {
                    error!(
                        study = tag(id),
                        error = e.to_string(),
                        "cannot write the device log"
                    );
                }
                self.processed.fetch_add(1, Ordering::Relaxed);
                // A review result has no probability; its localiser confidence instead.
                let probability = (!p.review).then_some(round3(p.probability as f64));
                let localiser_confidence = p
                    .localiser
                    .as_ref()
                    .filter(|_| p.review)
                    .map(|l| round3(l.confidence as f64));
                info!(
                    study = tag(id),
                    source = meta.source.as_str(),
                    flag = p.flag.as_str(),
                    probability,
                    localiser_confidence,
                    review = p.review,
                    processing_ms = (t.elapsed().as_secs_f64() * 1e3).round(),
                    latency_ms = done.saturating_sub(meta.received_unix_ms),
                    "study done"
                );
                self.dashboard.publish(view, Some(Arc::new(png)));
            }
            Err(e) => {
                let reason = format!("{e:#}");
                view.state = StudyState::Failed;
                view.error = Some(reason.clone());
                let rec = StudyRecord {
                    view: view.clone(),
                    inference: None,
                };
                if let Err(e) = self.spool.fail(
                    id,
                    &serde_json::to_vec_pretty(&rec).expect("record serialises"),
                ) {
                    error!(
                        study = tag(id),
                        error = e.to_string(),
                        "cannot record the failure"
                    );
                    return;
                }
                let _ = self
                    .device
                    .log_entry(&LogEntry::Event(crate::devlog::EventRecord::now(
                        "study_failed",
                        format!("study {}: {reason}", tag(id)),
                    )));
                self.failed.fetch_add(1, Ordering::Relaxed);
                warn!(
                    study = tag(id),
                    source = meta.source.as_str(),
                    error = reason.as_str(),
                    "study failed"
                );
                self.dashboard.publish(view, None);
            }
        }
    }

    /// Everything before the commit; idempotent (a crash reruns it with the same output).
    fn run(
        &self,
        meta: &EntryMeta,
        obj: &dicom_object::DefaultDicomObject,
        t: Instant,
    ) -> anyhow::Result<(Prediction, Vec<u8>, InferenceRecord)> {
        use anyhow::Context;
        let (engine, bundle_id, bundle_sha256) = {
            let l = self.loaded.lock().expect("engine lock");
            let l = l.as_ref().expect("engine loaded before run");
            (
                l.engine.clone(),
                l.bundle_id.clone(),
                l.bundle_sha256.clone(),
            )
        };
        let decoded = radiograph::decode_dicom_object(obj)?;
        let decode_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut clinical = ClinicalInput::default();
        let from_dicom = decoded
            .dicom
            .as_ref()
            .map(|h| clinical.fill_from(h))
            .unwrap_or_default();
        let mut p = engine.predict(&decoded.image, None, clinical, Explain::GradCam)?;
        p.clinical.from_dicom = from_dicom;
        p.timings.decode_ms = decode_ms;
        let png = overlay::render_png(&decoded.image, &p).context("render the heat-map overlay")?;
        let id = &meta.id;
        crate::daemon::spool::write_durably(
            &self.spool.root().join("tmp"),
            &self.spool.root().join("results"),
            &format!("{id}.png"),
            &png,
        )?;
        let ctx = ResultContext {
            source: obj,
            image: &decoded.image,
            prediction: &p,
            software_version: self.cfg.software_version.clone(),
            device_id: self.device.device_id().to_owned(),
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(meta.received_unix_ms),
        };
        // No result objects for "no lesion localised": they would report a finding.
        if !p.review {
            let objects = results::build(&ctx).context("build the result objects")?;
            for (kind, o) in [
                ("sc", &objects.secondary_capture),
                ("sr", &objects.basic_text_sr),
                ("csr", &objects.comprehensive_sr),
            ] {
                let mut bytes = Vec::new();
                o.write_all(&mut bytes)
                    .with_context(|| format!("encode the {kind} object"))?;
                self.outbox.enqueue(&format!("{id}-{kind}"), &bytes)?;
            }
        }
        let study_uid = text(obj, tags::STUDY_INSTANCE_UID).unwrap_or_else(|| id.clone());
        let inference = InferenceRecord {
            time_unix_ms: now_unix_ms(),
            device_id: self.device.device_id().to_owned(),
            board: self.board.clone(),
            bundle_id,
            bundle_sha256,
            member_scores: p
                .members
                .iter()
                .map(|m| MemberScore {
                    member: m.name.clone(),
                    score: m.probability as f64,
                })
                .collect(),
            probability: p.probability as f64,
            flag: p.pbt,
            review: p.review,
            threshold: p.threshold as f64,
            latency: StageLatency {
                decode_ms,
                preprocess_ms: p.timings.preprocess_ms,
                inference_ms: p.timings.localise_ms
                    + p.timings.members_ms
                    + p.timings.stacker_ms
                    + p.timings.explain_ms,
                total_ms: t.elapsed().as_secs_f64() * 1e3,
            },
            study_key: self.device.study_key(&study_uid),
            instance_key: self
                .device
                .study_key(&text(obj, tags::SOP_INSTANCE_UID).unwrap_or_else(|| id.clone())),
        };
        Ok((p, png, inference))
    }
}

impl InstanceSink for Station {
    fn store(&self, instance: &ReceivedInstance, file: &[u8]) -> Result<(), SinkError> {
        self.accept(
            file,
            &format!("dicom:{}", instance.calling_ae),
            instance.started,
        )
        .map(|_| ())
    }
}
