//! Training the whole ensemble from a label table, the way the study did, sized for the
//! edge: image members trained on part of the training split (best epoch on validation),
//! exported to ONNX (f32 and the shipped weight-only int8), a clinical model on age, sex
//! and site, and a stacker (LR or RF, chosen on validation AUC) fitted on member
//! probabilities of training patients the members never saw (a patient-grouped hold-out
//! of the training split). Writes the bundle directory (`ensemble.json` + ONNX files) and
//! returns every split's scores; the statistics of the model card are the host's.

use crate::features::clinical;
use crate::nets::{
    self, EffNet, EffNetConfig, Member, MemberKind, ResNet, ResNetConfig, Vit, VitConfig,
};
use crate::onnx::check::{CheckError, TractMember, TractRows};
use crate::onnx::quant::weight_only_int8;
use crate::onnx::{ExportError, Model};
use crate::stack::{self, StackError, Tabular, TabularConfig, group_folds};
use crate::table::{LabelTable, Record, Split};
use crate::train::{self, CropSet, DataError, EpochStats, TrainConfig, TrainError, TrainEvent};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tirp_firmware::ensemble::{
    ENSEMBLE_FORMAT, EnsembleSpec, MemberSpec, SpecError, StackerKind, StackerSpec,
};
use tirp_firmware::preprocess::PreprocessSpec;

/// One image member and how long it trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberPlan {
    pub kind: MemberKind,
    pub epochs: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineConfig {
    pub name: String,
    pub version: String,
    pub seed: u64,
    /// Side of the members' square input.
    pub input_size: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub members: Vec<MemberPlan>,
    /// One in this many training patients is held out of member training for the stacker.
    pub stacker_holdout: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        // Epochs per member are set by cost on this 2-core machine (effnet's depthwise
        // convolutions are burn-flex's slowest op, the ViT's steps the cheapest).
        let plan = |kind, epochs| MemberPlan { kind, epochs };
        PipelineConfig {
            name: "deeptirp-edge".into(),
            version: "0.1.0".into(),
            seed: 17,
            input_size: 128,
            batch_size: 32,
            lr: 2e-3,
            members: vec![
                plan(MemberKind::ResNet, 6),
                plan(MemberKind::EffNet, 4),
                plan(MemberKind::Vit, 12),
            ],
            stacker_holdout: 4,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("invalid pipeline configuration: {0}")]
    Config(String),
    #[error("the table has no {0} split")]
    MissingSplit(&'static str),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("training member {member}: {source}")]
    Train {
        member: MemberKind,
        source: TrainError,
    },
    #[error("exporting member {member}: {source}")]
    Export {
        member: MemberKind,
        source: ExportError,
    },
    #[error("running {what} in tract: {source}")]
    Tract { what: String, source: CheckError },
    #[error("{what}: {source}")]
    Stack {
        what: &'static str,
        source: StackError,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// What the pipeline is doing, for progress display.
pub enum PipelineEvent<'a> {
    Stage(&'a str),
    Crops {
        done: usize,
        total: usize,
    },
    Member {
        kind: MemberKind,
        event: TrainEvent<'a>,
    },
    MemberDone(&'a MemberReport),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberReport {
    pub kind: MemberKind,
    pub params: usize,
    pub cam_side: usize,
    pub best_epoch: usize,
    pub history: Vec<EpochStats>,
    pub train_seconds: f64,
    /// The shipped weight-only int8 file and the f32 reference beside it.
    pub file: String,
    pub f32_file: String,
    pub bytes: u64,
    pub f32_bytes: u64,
    /// Largest |logit| difference, tract on the f32 file vs burn's eval forward (validation).
    pub parity_f32: f32,
    /// Largest |logit| difference, tract on the int8 file vs burn (validation).
    pub parity_int8: f32,
}

/// Scores of one split. Member and ensemble scores are probabilities of a primary bone
/// tumour; `*_f32` ones come from the f32 members (burn), the others from the shipped
/// int8 files run by tract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitScores {
    pub split: Split,
    pub paths: Vec<PathBuf>,
    pub patient_ids: Vec<String>,
    pub centres: Vec<Option<u8>>,
    pub labels: Vec<f32>,
    pub members: Vec<Vec<f32>>,
    pub members_f32: Vec<Vec<f32>>,
    pub clinical: Vec<f32>,
    pub ensemble: Vec<f32>,
    pub ensemble_f32: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    /// SHA-256 over every record's image path (as in the table) and file hash, in order.
    pub sha256: String,
    pub images: Vec<(Split, usize)>,
    pub patients: Vec<(Split, usize)>,
    pub member_train_images: usize,
    pub stacker_images: usize,
    pub crop_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainedEnsemble {
    pub config: PipelineConfig,
    pub spec: EnsembleSpec,
    pub data: DataSummary,
    pub members: Vec<MemberReport>,
    /// Validation AUC of each candidate, and the kind kept.
    pub clinical_candidates: Vec<(StackerKind, f64)>,
    pub clinical_kind: StackerKind,
    pub stacker_candidates: Vec<(StackerKind, f64)>,
    /// The stacker's reliance on each input column (sums to 1), in `spec.stacker.features` order.
    pub stacker_importance: Vec<f32>,
    /// Validation, internal test and external test (those the table has).
    pub splits: Vec<SplitScores>,
    pub seconds: f64,
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PipelineError + '_ {
    move |source| PipelineError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Hash of the data a bundle was trained on: paths and file contents.
fn dataset_hash(records: &[Record]) -> Result<String, PipelineError> {
    let hashes: Vec<[u8; 32]> = records
        .par_iter()
        .map(|r| {
            let bytes = std::fs::read(&r.path).map_err(io(&r.path))?;
            Ok(Sha256::digest(&bytes).into())
        })
        .collect::<Result<_, PipelineError>>()?;
    let mut h = Sha256::new();
    for (r, fh) in records.iter().zip(hashes) {
        let name = r.path.file_name().map(|n| n.to_string_lossy().into_owned());
        h.update(name.unwrap_or_default().as_bytes());
        h.update(fh);
    }
    Ok(hex::encode(h.finalize()))
}

fn clinical_rows(records: &[&Record]) -> Vec<[f32; 10]> {
    records
        .iter()
        .map(|r| clinical(r.age, r.sex, r.site))
        .collect()
}

fn targets(records: &[&Record]) -> Vec<f32> {
    records
        .iter()
        .map(|r| train::data::target(r.label))
        .collect()
}

/// A trained member: its f32 logits on every scored set, its shipped file's logits.
struct MemberOut {
    report: MemberReport,
    /// Per scored set (stacker hold-out, then `sets`): logits from burn and from tract (int8).
    burn: Vec<Vec<f32>>,
    tract: Vec<Vec<f32>>,
}

fn tract_logits(m: &TractMember, set: &CropSet, what: &str) -> Result<Vec<f32>, PipelineError> {
    let p = set.size * set.size;
    let mut out = Vec::with_capacity(set.len());
    for chunk in set.inputs.chunks(32 * p) {
        let r = m
            .run(chunk, chunk.len() / p)
            .map_err(|source| PipelineError::Tract {
                what: what.to_owned(),
                source,
            })?;
        out.extend(r.logits);
    }
    Ok(out)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[allow(clippy::too_many_arguments)]
fn train_member<M: Member>(
    model: M,
    plan: &MemberPlan,
    cfg: &PipelineConfig,
    member_train: &CropSet,
    val: &CropSet,
    scored: &[&CropSet],
    out: &Path,
    on: &mut dyn FnMut(PipelineEvent),
) -> Result<MemberOut, PipelineError> {
    let kind = M::KIND;
    let tcfg = TrainConfig {
        seed: cfg.seed,
        epochs: plan.epochs,
        batch_size: cfg.batch_size,
        lr: cfg.lr,
        // One step down for the last third of the epochs.
        lr_step_epochs: (plan.epochs * 2).div_ceil(3).max(1),
        lr_gamma: 0.3,
        ..Default::default()
    };
    let params = model.num_params();
    let cam_side = model.cam_side();
    let start = Instant::now();
    let trained = train::fit(model, member_train, val, &tcfg, &mut |event| {
        on(PipelineEvent::Member { kind, event })
    })
    .map_err(|source| PipelineError::Train {
        member: kind,
        source,
    })?;
    let train_seconds = start.elapsed().as_secs_f64();
    let f32_model = nets::export(&trained.model).map_err(|source| PipelineError::Export {
        member: kind,
        source,
    })?;
    let int8_model = weight_only_int8(&f32_model);
    let file = format!("{kind}.onnx");
    let f32_file = crate::quantize::f32_file(&kind.to_string());
    let save = |m: &Model, name: &str| -> Result<(Vec<u8>, u64), PipelineError> {
        let bytes = m.to_bytes();
        let path = out.join(name);
        std::fs::write(&path, &bytes).map_err(io(&path))?;
        let n = bytes.len() as u64;
        Ok((bytes, n))
    };
    let (int8_bytes, bytes) = save(&int8_model, &file)?;
    let (f32_bytes_v, f32_bytes) = save(&f32_model, &f32_file)?;
    let load = |b: &[u8], name: &str| {
        TractMember::load(b, cfg.input_size).map_err(|source| PipelineError::Tract {
            what: name.to_owned(),
            source,
        })
    };
    let tract_int8 = load(&int8_bytes, &file)?;
    let tract_f32 = load(&f32_bytes_v, &f32_file)?;
    let burn_logits = |set: &CropSet| {
        train::predict(&trained.model, set, 64).map_err(|source| PipelineError::Train {
            member: kind,
            source,
        })
    };
    let val_burn = burn_logits(val)?;
    let parity_f32 = max_diff(&tract_logits(&tract_f32, val, &f32_file)?, &val_burn);
    let parity_int8 = max_diff(&tract_logits(&tract_int8, val, &file)?, &val_burn);
    let mut burn = Vec::new();
    let mut tract = Vec::new();
    for set in scored {
        burn.push(burn_logits(set)?);
        tract.push(tract_logits(&tract_int8, set, &file)?);
    }
    let report = MemberReport {
        kind,
        params,
        cam_side,
        best_epoch: trained.best_epoch,
        history: trained.history,
        train_seconds,
        file,
        f32_file,
        bytes,
        f32_bytes,
        parity_f32,
        parity_int8,
    };
    on(PipelineEvent::MemberDone(&report));
    Ok(MemberOut {
        report,
        burn,
        tract,
    })
}

/// Rows of stacker features: member probabilities then the clinical encoding.
fn stack_rows(member_logits: &[&Vec<f32>], clin: &[[f32; 10]]) -> Vec<Vec<f32>> {
    clin.iter()
        .enumerate()
        .map(|(i, c)| {
            member_logits
                .iter()
                .map(|l| sigmoid(l[i]))
                .chain(c.iter().copied())
                .collect()
        })
        .collect()
}

fn stack_err(what: &'static str) -> impl FnOnce(StackError) -> PipelineError {
    move |source| PipelineError::Stack { what, source }
}

/// Fits LR and RF on `(x, y)` and keeps the one with the higher validation AUC (ties: LR,
/// the simpler one).
fn choose<R: AsRef<[f32]>>(
    what: &'static str,
    x: &[R],
    y: &[f32],
    x_val: &[R],
    y_val: &[f32],
    cfg: &TabularConfig,
) -> Result<(Tabular, Vec<(StackerKind, f64)>), PipelineError> {
    let mut best: Option<(f64, Tabular)> = None;
    let mut scores = Vec::new();
    for kind in [StackerKind::Lr, StackerKind::Rf] {
        let m = Tabular::fit(kind, x, y, cfg).map_err(stack_err(what))?;
        let auc = train::auc(&m.predict(x_val).map_err(stack_err(what))?, y_val);
        scores.push((kind, auc));
        if best.as_ref().is_none_or(|(a, _)| auc > *a) {
            best = Some((auc, m));
        }
    }
    let (_, m) = best.expect("two candidates");
    Ok((m, scores))
}

/// Trains everything and writes the bundle directory `out`. `threshold` picks the
/// operating point from validation scores and labels (the host passes its Youden rule).
pub fn train_ensemble(
    table: &LabelTable,
    cfg: &PipelineConfig,
    out: &Path,
    threshold: &dyn Fn(&[f32], &[f32]) -> f32,
    on: &mut dyn FnMut(PipelineEvent),
) -> Result<TrainedEnsemble, PipelineError> {
    let start = Instant::now();
    if cfg.members.is_empty() {
        return Err(PipelineError::Config("no image members".into()));
    }
    if cfg.stacker_holdout < 2 {
        return Err(PipelineError::Config(
            "stacker_holdout must be ≥ 2 (one in N training patients)".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if !cfg.members.iter().all(|m| seen.insert(m.kind)) {
        return Err(PipelineError::Config("a member kind appears twice".into()));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;

    on(PipelineEvent::Stage("hashing the data set"));
    let sha256 = dataset_hash(&table.records)?;
    let train_all = table.split(Split::Train);
    let val = table.split(Split::Validation);
    if train_all.is_empty() {
        return Err(PipelineError::MissingSplit("train"));
    }
    if val.is_empty() {
        return Err(PipelineError::MissingSplit("val"));
    }
    // The stacker's rows: one patient-grouped, class-stratified fold of the training split.
    let y_all = targets(&train_all);
    let groups: Vec<&str> = train_all.iter().map(|r| r.patient_id.as_str()).collect();
    let folds = group_folds(&y_all, &groups, cfg.stacker_holdout, cfg.seed)
        .map_err(stack_err("splitting the training patients"))?;
    let (mut member_recs, mut stack_recs) = (Vec::new(), Vec::new());
    for (r, f) in train_all.iter().zip(&folds) {
        if *f == 0 {
            &mut stack_recs
        } else {
            &mut member_recs
        }
        .push(*r);
    }
    let evals: Vec<(Split, Vec<&Record>)> = [Split::Validation, Split::Test, Split::External]
        .into_iter()
        .map(|s| (s, table.split(s)))
        .filter(|(_, r)| !r.is_empty())
        .collect();

    on(PipelineEvent::Stage("cropping"));
    let crop_start = Instant::now();
    let mut spec = PreprocessSpec {
        input_size: cfg.input_size as u32,
        ..Default::default()
    };
    let total =
        member_recs.len() + stack_recs.len() + evals.iter().map(|e| e.1.len()).sum::<usize>();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let progress = || {
        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let groups_to_crop: Vec<&Vec<&Record>> = std::iter::once(&member_recs)
        .chain(std::iter::once(&stack_recs))
        .chain(evals.iter().map(|e| &e.1))
        .collect();
    // Cropping runs on rayon's pool; this thread reports progress meanwhile.
    let mut sets = std::thread::scope(|scope| {
        let job = scope.spawn(|| {
            groups_to_crop
                .iter()
                .map(|recs| CropSet::load(recs, &spec, &progress))
                .collect::<Result<Vec<_>, _>>()
        });
        while !job.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let d = done.load(std::sync::atomic::Ordering::Relaxed);
            on(PipelineEvent::Crops { done: d, total });
        }
        job.join().expect("cropping thread")
    })?;
    let (mean, std) = sets[0].mean_std();
    (spec.mean, spec.std) = (mean, std);
    for s in &mut sets {
        s.standardise(mean, std);
    }
    let crop_seconds = crop_start.elapsed().as_secs_f64();
    let (member_set, rest) = sets.split_first().expect("member set");
    let val_set = &rest[1];
    let scored: Vec<&CropSet> = rest.iter().collect();

    let mut members = Vec::new();
    for plan in &cfg.members {
        on(PipelineEvent::Stage(plan.kind.as_str()));
        // The members differ only in their net and its configuration.
        macro_rules! member {
            ($net:ident, $config:ident) => {{
                let c = $config {
                    input_size: cfg.input_size,
                    ..Default::default()
                };
                let model = train::init(cfg.seed, |d| $net::new(&c, d));
                train_member(model, plan, cfg, member_set, val_set, &scored, out, on)?
            }};
        }
        let m = match plan.kind {
            MemberKind::ResNet => member!(ResNet, ResNetConfig),
            MemberKind::EffNet => member!(EffNet, EffNetConfig),
            MemberKind::Vit => member!(Vit, VitConfig),
        };
        members.push(m);
    }

    on(PipelineEvent::Stage("clinical model and stacker"));
    let tab = TabularConfig {
        forest: stack::ForestConfig {
            seed: cfg.seed,
            ..Default::default()
        },
        ..Default::default()
    };
    // Scored sets, by index into `scored`: 0 = stacker hold-out, 1 = validation, then tests.
    let scored_recs: Vec<&Vec<&Record>> = std::iter::once(&stack_recs)
        .chain(evals.iter().map(|e| &e.1))
        .collect();
    let clin: Vec<Vec<[f32; 10]>> = scored_recs.iter().map(|r| clinical_rows(r)).collect();
    let ys: Vec<Vec<f32>> = scored_recs.iter().map(|r| targets(r)).collect();

    // The clinical model sees no images, so it may use the whole training split.
    let clin_train = clinical_rows(&train_all);
    let (clinical_model, clinical_candidates) = choose(
        "clinical model",
        &clin_train,
        &y_all,
        &clin[1],
        &ys[1],
        &tab,
    )?;

    let rows = |i: usize, f32_members: bool| -> Vec<Vec<f32>> {
        let logits: Vec<&Vec<f32>> = members
            .iter()
            .map(|m| if f32_members { &m.burn[i] } else { &m.tract[i] })
            .collect();
        stack_rows(&logits, &clin[i])
    };
    let (stacker, stacker_candidates) = choose(
        "stacker",
        &rows(0, false),
        &ys[0],
        &rows(1, false),
        &ys[1],
        &tab,
    )?;
    let stacker_importance = stacker.importance();
    let stacker_file = "stacker.onnx";
    let stacker_bytes = stacker.to_onnx().to_bytes();
    let path = out.join(stacker_file);
    std::fs::write(&path, &stacker_bytes).map_err(io(&path))?;
    let n_cols = stacker.n_features();
    let tract_stacker =
        TractRows::load(&stacker_bytes, n_cols).map_err(|source| PipelineError::Tract {
            what: stacker_file.into(),
            source,
        })?;

    let mut splits = Vec::new();
    for (k, (split, recs)) in evals.iter().enumerate() {
        let i = k + 1;
        let x = rows(i, false);
        let flat: Vec<f32> = x.concat();
        let ensemble =
            tract_stacker
                .run(&flat, x.len())
                .map_err(|source| PipelineError::Tract {
                    what: stacker_file.into(),
                    source,
                })?;
        let ensemble_f32 = stacker
            .predict(&rows(i, true))
            .map_err(stack_err("stacker"))?;
        let probs = |f32_members: bool| -> Vec<Vec<f32>> {
            members
                .iter()
                .map(|m| {
                    let l = if f32_members { &m.burn[i] } else { &m.tract[i] };
                    l.iter().map(|&z| sigmoid(z)).collect()
                })
                .collect()
        };
        splits.push(SplitScores {
            split: *split,
            paths: recs.iter().map(|r| r.path.clone()).collect(),
            patient_ids: recs.iter().map(|r| r.patient_id.clone()).collect(),
            centres: recs.iter().map(|r| r.centre).collect(),
            labels: ys[i].clone(),
            members: probs(false),
            members_f32: probs(true),
            clinical: clinical_model
                .predict(&clin[i])
                .map_err(stack_err("clinical model"))?,
            ensemble,
            ensemble_f32,
        });
    }

    // Members' heat-maps are weighted as the stacker weighs their probabilities.
    let n_members = members.len();
    let member_importance: Vec<f32> = stacker_importance[..n_members].to_vec();
    let total_imp: f32 = member_importance.iter().sum();
    let cam_weights: Vec<f32> = if total_imp > 0.0 {
        member_importance.iter().map(|w| w / total_imp).collect()
    } else {
        vec![1.0 / n_members as f32; n_members]
    };
    let member_specs: Vec<MemberSpec> = members
        .iter()
        .zip(&cam_weights)
        .map(|(m, &w)| MemberSpec {
            name: m.report.kind.as_str().to_owned(),
            file: m.report.file.clone(),
            full_int8_file: None,
            cam_side: m.report.cam_side as u32,
            cam_weight: w,
        })
        .collect();
    let val_scores = &splits[0];
    let spec_out = EnsembleSpec {
        format: ENSEMBLE_FORMAT,
        name: cfg.name.clone(),
        version: cfg.version.clone(),
        preprocess: spec,
        stacker: StackerSpec {
            kind: stacker.kind(),
            file: stacker_file.into(),
            features: EnsembleSpec::feature_names(&member_specs),
        },
        members: member_specs,
        threshold: threshold(&val_scores.ensemble, &val_scores.labels),
        localiser: None,
    };
    spec_out.save(out)?;

    let count = |recs: &[&Record]| {
        let mut p: Vec<&str> = recs.iter().map(|r| r.patient_id.as_str()).collect();
        p.sort_unstable();
        p.dedup();
        p.len()
    };
    let all_splits: Vec<(Split, Vec<&Record>)> = std::iter::once((Split::Train, train_all.clone()))
        .chain(evals.iter().cloned())
        .collect();
    let data = DataSummary {
        sha256,
        images: all_splits.iter().map(|(s, r)| (*s, r.len())).collect(),
        patients: all_splits.iter().map(|(s, r)| (*s, count(r))).collect(),
        member_train_images: member_recs.len(),
        stacker_images: stack_recs.len(),
        crop_seconds,
    };
    Ok(TrainedEnsemble {
        config: cfg.clone(),
        spec: spec_out,
        data,
        members: members.into_iter().map(|m| m.report).collect(),
        clinical_candidates,
        clinical_kind: clinical_model.kind(),
        stacker_candidates,
        stacker_importance,
        splits,
        seconds: start.elapsed().as_secs_f64(),
    })
}
