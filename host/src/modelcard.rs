//! The model card of a trained bundle: the study's evaluation table (each member, the
//! clinical model and the ensemble on validation, internal and external test: AUC with
//! DeLong 95% CI, accuracy, sensitivity, specificity and the confusion matrix at an
//! operating point chosen on validation), Fleiss' κ among the members, the int8 effect,
//! data and file hashes, configuration, timings, intended use and limits. JSON for
//! machines, Markdown for people; the statistics are `crate::stats`, the audit's own.

use crate::stats::agreement::fleiss_kappa;
use crate::stats::confusion::{Confusion, Metrics};
use crate::stats::roc::{self, AucCi};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::Path;
use tirp_models::pipeline::{SplitScores, TrainedEnsemble};
use tirp_models::stack::CvResult;
use tirp_models::table::Split;

pub const CARD_JSON: &str = "model_card.json";
pub const CARD_MD: &str = "MODEL_CARD.md";

pub const INTENDED_USE: &str = "Research and engineering demonstration of the DeepTIRP Edge \
pipeline: flags whether a bone lesion on a radiograph region of interest looks more like a \
primary bone tumour or a bone infection, for a radiologist to review.";
pub const LIMITS: &[&str] = &[
    "Trained on synthetic radiographs (the project's simulated multi-centre cohort) — not for \
     diagnostic use.",
    "Performance on real radiographs is unknown until the pipeline is retrained and validated \
     on a hospital's own data (the same command accepts the DeepTIRP table format).",
    "Inputs are the lesion's region of interest with a margin; other body parts, children's \
     growth-plate variants outside the cohort's range and non-lesion images are out of scope.",
    "Retraining with the same seed reproduces the members bit for bit on x86-64 CPUs with AVX2 \
     or AVX-512 (burn-flex's SIMD kernels are capped at AVX2: vendor/README.md); other CPU \
     architectures round differently and train other members from the same seed.",
];

/// The 95% level of every interval in the card.
const LEVEL: f64 = 0.95;

/// The CPU a bundle was trained on, and the SIMD level burn-flex's kernels ran at (capped at
/// AVX2 on x86-64 so that AVX2 and AVX-512 machines train the same bits).
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub arch: &'static str,
    /// `model name` of /proc/cpuinfo where there is one.
    pub cpu: Option<String>,
    /// The training kernels' instruction-set level.
    pub simd: &'static str,
    pub cores: usize,
}

impl Machine {
    pub fn this() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        });
        Machine {
            arch: std::env::consts::ARCH,
            cpu,
            simd: simd_level(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// The level the vendored macerator dispatches to: x86-64-v3 (AVX2 + FMA) at most.
fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let v2 = has!("sse4.2") && has!("popcnt");
        let v3 = v2 && has!("avx2") && has!("fma") && has!("bmi2") && has!("f16c") && has!("lzcnt");
        return match (v3, v2) {
            (true, _) => "x86-64-v3 (AVX2, FMA)",
            (_, true) => "x86-64-v2 (SSE4.2)",
            _ => "x86-64 (SSE2)",
        };
    }
    #[cfg(target_arch = "aarch64")]
    {
        return if std::arch::is_aarch64_feature_detected!("neon") {
            "aarch64 (NEON)"
        } else {
            "aarch64"
        };
    }
    #[allow(unreachable_code)]
    "scalar"
}

/// One model's results on one split.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub model: String,
    pub split: String,
    pub n: usize,
    pub auc: AucCi,
    pub threshold: f64,
    pub confusion: Confusion,
    pub metrics: Metrics,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub split: String,
    pub against: String,
    pub auc_difference: f64,
    /// Two-sided DeLong test of paired AUCs (none when both rank the cases identically).
    pub p: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgreementRow {
    pub split: String,
    pub fleiss_kappa: f64,
    pub n_cases: usize,
    pub raters: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Int8Effect {
    pub split: String,
    pub auc_int8: f64,
    pub auc_f32: f64,
    pub difference: f64,
    pub max_probability_difference: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileRow {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Clinical models fitted on the study's real public label table (age, sex; no images).
#[derive(Debug, Clone, Serialize)]
pub struct StudyTable {
    pub path: String,
    pub rows: usize,
    pub patients: usize,
    pub folds: usize,
    pub lr_cv_auc: f64,
    pub rf_cv_auc: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    pub name: String,
    pub version: String,
    pub intended_use: &'static str,
    pub limits: &'static [&'static str],
    pub labels_table: String,
    pub trained: TrainedEnsemble,
    pub table: Vec<Row>,
    pub comparisons: Vec<Comparison>,
    pub agreement: Vec<AgreementRow>,
    pub int8: Vec<Int8Effect>,
    pub files: Vec<FileRow>,
    pub study_table: Option<StudyTable>,
    pub machine: Machine,
}

fn split_name(s: Split) -> &'static str {
    match s {
        Split::Train => "train",
        Split::Validation => "validation",
        Split::Test => "internal test",
        Split::External => "external test",
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The Youden operating point of `scores` (the midpoint threshold pROC reports).
pub fn youden_threshold(scores: &[f32], labels: &[f32]) -> Result<f64> {
    let truth: Vec<bool> = labels.iter().map(|&y| y > 0.5).collect();
    let curve = roc::roc_curve(&f64s(scores), &truth)?;
    let p = roc::youden(&curve).context("empty ROC curve")?;
    // ±∞ are the curve's ends: clamp into the probability range the device compares with.
    Ok(p.threshold.clamp(0.0, 1.0))
}

fn row(model: &str, s: &SplitScores, scores: &[f32], threshold: f64) -> Result<Row> {
    let truth: Vec<bool> = s.labels.iter().map(|&y| y > 0.5).collect();
    let x = f64s(scores);
    let confusion = Confusion::from_scores(&x, &truth, threshold)?;
    Ok(Row {
        model: model.to_owned(),
        split: split_name(s.split).to_owned(),
        n: x.len(),
        auc: roc::auc_delong_ci(&x, &truth, LEVEL)?,
        threshold,
        metrics: confusion.metrics(LEVEL),
        confusion,
    })
}

pub fn file_rows(dir: &Path) -> Result<Vec<FileRow>> {
    let mut rows = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == CARD_JSON || name == CARD_MD || !e.file_type()?.is_file() {
            continue;
        }
        let bytes = std::fs::read(e.path()).with_context(|| format!("reading {name}"))?;
        rows.push(FileRow {
            name,
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        });
    }
    Ok(rows)
}

impl ModelCard {
    pub fn build(
        trained: TrainedEnsemble,
        labels_table: &Path,
        bundle_dir: &Path,
        study_table: Option<StudyTable>,
    ) -> Result<Self> {
        let val = trained
            .splits
            .iter()
            .find(|s| s.split == Split::Validation)
            .context("no validation scores")?;
        let names: Vec<String> = trained.members.iter().map(|m| m.kind.to_string()).collect();
        // Every model's operating point is chosen on validation, the ensemble's is the bundle's.
        let mut thresholds = Vec::new();
        for (i, _) in names.iter().enumerate() {
            thresholds.push(youden_threshold(&val.members[i], &val.labels)?);
        }
        let clinical_threshold = youden_threshold(&val.clinical, &val.labels)?;
        let ensemble_threshold = trained.spec.threshold as f64;
        let mut table = Vec::new();
        let mut comparisons = Vec::new();
        let mut agreement = Vec::new();
        let mut int8 = Vec::new();
        for s in &trained.splits {
            let truth: Vec<bool> = s.labels.iter().map(|&y| y > 0.5).collect();
            for (i, name) in names.iter().enumerate() {
                table.push(row(name, s, &s.members[i], thresholds[i])?);
            }
            let clinical_name = format!("clinical ({})", kind_name(trained.clinical_kind));
            table.push(row(&clinical_name, s, &s.clinical, clinical_threshold)?);
            table.push(row("ensemble", s, &s.ensemble, ensemble_threshold)?);
            let ens = f64s(&s.ensemble);
            let others = names
                .iter()
                .zip(&s.members)
                .map(|(n, v)| (n.clone(), v))
                .chain(std::iter::once((clinical_name, &s.clinical)));
            for (name, v) in others {
                let other = f64s(v);
                // Identical rankings have no variance of the difference: no test, ΔAUC 0.
                let p = roc::delong_test(&ens, &other, &truth).ok().map(|t| t.p);
                comparisons.push(Comparison {
                    split: split_name(s.split).to_owned(),
                    against: name,
                    auc_difference: roc::auc(&ens, &truth)? - roc::auc(&other, &truth)?,
                    p,
                });
            }
            if names.len() >= 2 {
                let ratings: Vec<Vec<u64>> = (0..s.labels.len())
                    .map(|k| {
                        let pos = (0..names.len())
                            .filter(|&i| s.members[i][k] as f64 >= thresholds[i])
                            .count() as u64;
                        vec![names.len() as u64 - pos, pos]
                    })
                    .collect();
                let k = fleiss_kappa(&ratings)?;
                agreement.push(AgreementRow {
                    split: split_name(s.split).to_owned(),
                    fleiss_kappa: k.kappa,
                    n_cases: k.n_cases,
                    raters: names.len(),
                });
            }
            let auc_int8 = roc::auc(&ens, &truth)?;
            let auc_f32 = roc::auc(&f64s(&s.ensemble_f32), &truth)?;
            int8.push(Int8Effect {
                split: split_name(s.split).to_owned(),
                auc_int8,
                auc_f32,
                difference: auc_int8 - auc_f32,
                max_probability_difference: s
                    .ensemble
                    .iter()
                    .zip(&s.ensemble_f32)
                    .map(|(a, b)| (a - b).abs() as f64)
                    .fold(0.0, f64::max),
            });
        }
        Ok(ModelCard {
            name: trained.spec.name.clone(),
            version: trained.spec.version.clone(),
            intended_use: INTENDED_USE,
            limits: LIMITS,
            labels_table: labels_table.display().to_string(),
            files: file_rows(bundle_dir)?,
            trained,
            table,
            comparisons,
            agreement,
            int8,
            study_table,
            machine: Machine::this(),
        })
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        std::fs::write(dir.join(CARD_JSON), json)
            .with_context(|| format!("writing {}", dir.join(CARD_JSON).display()))?;
        std::fs::write(dir.join(CARD_MD), self.markdown())
            .with_context(|| format!("writing {}", dir.join(CARD_MD).display()))?;
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let t = &self.trained;
        let mut md = String::new();
        let _ = writeln!(md, "# Model card: {} {}\n", self.name, self.version);
        let _ = writeln!(md, "**{}**\n", LIMITS[0]);
        let _ = writeln!(md, "## Intended use\n\n{}\n", self.intended_use);
        let _ = writeln!(md, "## Limits\n");
        for l in self.limits {
            let _ = writeln!(md, "- {l}");
        }
        let _ = writeln!(md, "\n## Evaluation\n");
        let _ = writeln!(
            md,
            "AUC with DeLong 95% CI; accuracy, sensitivity (primary bone tumour), specificity \
             (infection) with Wilson 95% CI and the confusion matrix at each model's \
             operating point (Youden on validation; the ensemble's is the bundle threshold \
             {:.4}).\n",
            t.spec.threshold
        );
        let _ = writeln!(
            md,
            "| split | model | n | AUC (95% CI) | accuracy | sensitivity | specificity | TP/FN/TN/FP |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for r in &self.table {
            let m = &r.metrics;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} ({:.3}–{:.3}) | {:.1}% | {:.1}% | {:.1}% | {}/{}/{}/{} |",
                r.split,
                r.model,
                r.n,
                r.auc.auc,
                r.auc.low,
                r.auc.high,
                100.0 * m.accuracy.value,
                100.0 * m.sensitivity.value,
                100.0 * m.specificity.value,
                r.confusion.tp,
                r.confusion.fn_,
                r.confusion.tn,
                r.confusion.fp
            );
        }
        let _ = writeln!(
            md,
            "\nEnsemble against each single model (paired DeLong test):\n"
        );
        let _ = writeln!(md, "| split | ensemble vs | ΔAUC | p |");
        let _ = writeln!(md, "|---|---|---|---|");
        for c in &self.comparisons {
            let _ = writeln!(
                md,
                "| {} | {} | {:+.3} | {} |",
                c.split,
                c.against,
                c.auc_difference,
                c.p.map_or("— (identical ranking)".into(), crate::stats::format_p)
            );
        }
        if !self.agreement.is_empty() {
            let _ = writeln!(
                md,
                "\nAgreement among the image members (Fleiss' κ of their calls):\n"
            );
            let _ = writeln!(md, "| split | κ | cases | members |");
            let _ = writeln!(md, "|---|---|---|---|");
            for a in &self.agreement {
                let _ = writeln!(
                    md,
                    "| {} | {:.3} | {} | {} |",
                    a.split, a.fleiss_kappa, a.n_cases, a.raters
                );
            }
        }
        let _ = writeln!(
            md,
            "\nWeight-only int8 members (shipped) against their f32 originals, ensemble AUC:\n"
        );
        let _ = writeln!(md, "| split | int8 | f32 | Δ | max Δp |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        for e in &self.int8 {
            let _ = writeln!(
                md,
                "| {} | {:.4} | {:.4} | {:+.4} | {:.2e} |",
                e.split, e.auc_int8, e.auc_f32, e.difference, e.max_probability_difference
            );
        }
        if let Some(s) = &self.study_table {
            let _ = writeln!(
                md,
                "\n## Clinical model on the study's public table\n\n`{}`: {} radiographs of {} \
                 patients (age, sex; no images). Patient-grouped {}-fold cross-validated AUC: \
                 logistic regression {:.3}, random forest {:.3}.",
                s.path, s.rows, s.patients, s.folds, s.lr_cv_auc, s.rf_cv_auc
            );
        }
        let _ = writeln!(md, "\n## Data\n");
        let _ = writeln!(
            md,
            "Table `{}`, data set SHA-256 `{}`.\n",
            self.labels_table, t.data.sha256
        );
        let _ = writeln!(md, "| split | images | patients |");
        let _ = writeln!(md, "|---|---|---|");
        for ((s, i), (_, p)) in t.data.images.iter().zip(&t.data.patients) {
            let _ = writeln!(md, "| {} | {i} | {p} |", split_name(*s));
        }
        let _ = writeln!(
            md,
            "\nThe image members trained on {} training radiographs; the stacker was fitted on \
             the other {} (one in {} training patients, held out of member training).",
            t.data.member_train_images, t.data.stacker_images, t.config.stacker_holdout
        );
        let _ = writeln!(md, "\n## Models and training\n");
        let _ = writeln!(
            md,
            "Seed {}, input {}×{}, batch {}, AdamW lr {} (×0.3 after two thirds of the epochs), \
             flips. Total training time {:.1} min (cropping {:.1} s). Stacker: {} (validation \
             AUC: {}); clinical model: {} (validation AUC: {}).\n",
            t.config.seed,
            t.config.input_size,
            t.config.input_size,
            t.config.batch_size,
            t.config.lr,
            t.seconds / 60.0,
            t.data.crop_seconds,
            kind_name(t.spec.stacker.kind),
            candidates(&t.stacker_candidates),
            kind_name(t.clinical_kind),
            candidates(&t.clinical_candidates),
        );
        let m = &self.machine;
        let _ = writeln!(
            md,
            "Trained on {} ({}, {} cores; training kernels at SIMD level {}).\n",
            m.cpu.as_deref().unwrap_or("an unnamed CPU"),
            m.arch,
            m.cores,
            m.simd
        );
        let _ = writeln!(
            md,
            "| member | params | epochs (best) | val AUC per epoch | train time | int8 / f32 bytes | tract parity f32 / int8 | heat-map weight |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for (m, spec) in t.members.iter().zip(&t.spec.members) {
            let aucs: Vec<String> = m
                .history
                .iter()
                .map(|h| format!("{:.3}", h.val_auc))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} ({}) | {} | {:.0} s | {} / {} | {:.1e} / {:.1e} | {:.3} |",
                m.kind,
                m.params,
                m.history.len(),
                m.best_epoch + 1,
                aucs.join(", "),
                m.train_seconds,
                m.bytes,
                m.f32_bytes,
                m.parity_f32,
                m.parity_int8,
                spec.cam_weight
            );
        }
        md.push('\n');
        md.push_str(&files_markdown(&self.files));
        md
    }
}

const FILES_HEADING: &str = "## Files\n";
const LOCALISER_HEADING: &str = "## Lesion localiser\n";

fn files_markdown(files: &[FileRow]) -> String {
    let mut md = format!("{FILES_HEADING}\n| file | bytes | SHA-256 |\n|---|---|---|\n");
    for f in files {
        let _ = writeln!(md, "| {} | {} | `{}` |", f.name, f.bytes, f.sha256);
    }
    md
}

/// Adds (or replaces) the lesion localiser in a trained bundle's model card: `localiser`
/// (what `tirp train-localiser` measured, see [`localiser_markdown`]) in `model_card.json`,
/// its section in `MODEL_CARD.md`, the spec as it now is, and every file's hash again (the
/// localiser and the golden pair changed).
pub fn add_localiser(dir: &Path, localiser: &serde_json::Value) -> Result<()> {
    put_section(
        dir,
        "localiser",
        localiser,
        LOCALISER_HEADING,
        &localiser_markdown(localiser),
    )
}

/// Adds (or replaces) the full-int8 members (what `tirp quantize` measured) in a trained
/// bundle's model card, as [`add_localiser`] does for the localiser.
pub fn add_full_int8(dir: &Path, report: &serde_json::Value) -> Result<()> {
    put_section(
        dir,
        "full_int8",
        report,
        FULL_INT8_HEADING,
        &full_int8_markdown(report),
    )
}

/// `value` under `key` in `model_card.json` and `body` (starting with `heading`) as that
/// section of `MODEL_CARD.md`, replacing an earlier one in place or going before the file
/// list; the spec as it now is and every file's hash again.
fn put_section(
    dir: &Path,
    key: &str,
    value: &serde_json::Value,
    heading: &str,
    body: &str,
) -> Result<()> {
    let json_path = dir.join(CARD_JSON);
    let md_path = dir.join(CARD_MD);
    let mut card: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&json_path).with_context(|| format!("reading {}", json_path.display()))?,
    )
    .with_context(|| format!("{}: not a model card", json_path.display()))?;
    let spec = tirp_firmware::ensemble::EnsembleSpec::load(dir)?;
    let files = file_rows(dir)?;
    let obj = card
        .as_object_mut()
        .with_context(|| format!("{}: not a model card", json_path.display()))?;
    obj.insert(key.into(), value.clone());
    obj.insert("files".into(), serde_json::to_value(&files)?);
    obj.get_mut("trained")
        .and_then(|t| t.as_object_mut())
        .with_context(|| format!("{}: no `trained` section", json_path.display()))?
        .insert("spec".into(), serde_json::to_value(&spec)?);
    let md = std::fs::read_to_string(&md_path)
        .with_context(|| format!("reading {}", md_path.display()))?;
    // The card up to its file list, without this section's old text; then both anew.
    let mut head = md[..md.find(FILES_HEADING).unwrap_or(md.len())].to_owned();
    if let Some(start) = head.find(heading) {
        let after = start + heading.len();
        let end = head[after..]
            .find("\n## ")
            .map_or(head.len(), |e| after + e + 1);
        head.replace_range(start..end, "");
    }
    let mut out = head.trim_end().to_owned();
    out.push_str("\n\n");
    out.push_str(body.trim_end());
    out.push_str("\n\n");
    out.push_str(&files_markdown(&files));
    std::fs::write(&json_path, serde_json::to_vec_pretty(&card)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&md_path, out).with_context(|| format!("writing {}", md_path.display()))?;
    Ok(())
}

pub const FULL_INT8_HEADING: &str = "## Full-int8 (QDQ) members";

/// The model card's full-int8 section from `tirp quantize`'s report.
pub fn full_int8_markdown(r: &serde_json::Value) -> String {
    let mut md = String::from(FULL_INT8_HEADING);
    let _ = writeln!(
        md,
        "\n\n`<member>.qdq.onnx`: the shipped files' per-channel int8 weights, and every \
         activation entering a Conv/MatMul/Gemm quantised per tensor (uint8) with its range \
         observed on {} training radiographs. The engine runs them only on boards whose \
         profile sets `full_int8_measured_faster` (none so far: tract 0.23 runs QDQ as f32 \
         plus the extra passes; `tirp predict bench` times both).\n",
        r["calibration_images"]
    );
    md.push_str("| member | file | bytes | activations quantised | max Δlogit vs f32 |\n|---|---|---|---|---|\n");
    for m in r["members"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.3} |",
            m["name"].as_str().unwrap_or("?"),
            m["file"].as_str().unwrap_or("?"),
            m["bytes"],
            m["activations"],
            m["max_logit_diff"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let _ = writeln!(
        md,
        "\n(max Δlogit: largest absolute logit difference in tract on {} validation crops.)",
        r["parity_images"]
    );
    if let Some(e) = r["ensemble"].as_object() {
        md.push_str(
            "\nEnsemble with full-int8 members against the shipped (weight-only int8) members, \
             recorded boxes:\n\n| split | n | AUC full int8 | AUC shipped | Δ | max Δp | flags changed |\n|---|---|---|---|---|---|---|\n",
        );
        for (split, v) in e {
            let _ = writeln!(
                md,
                "| {split} | {} | {:.4} | {:.4} | {:+.4} | {:.2e} | {} |",
                v["n"],
                v["auc_full_int8"]["auc"].as_f64().unwrap_or(f64::NAN),
                v["auc_default"]["auc"].as_f64().unwrap_or(f64::NAN),
                v["auc_delta"].as_f64().unwrap_or(f64::NAN),
                v["max_probability_diff"].as_f64().unwrap_or(f64::NAN),
                v["flag_changes"]
            );
        }
    }
    md
}

pub fn localiser_markdown(l: &serde_json::Value) -> String {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let pct = |v: &serde_json::Value| format!("{:.1}%", 100.0 * f(v));
    let mut md = String::from(LOCALISER_HEADING);
    let flips = if l["zoom_flips"].as_bool() == Some(true) {
        " (the mean box of the window and its three mirror images)"
    } else {
        ""
    };
    let zoom = match l["zoom"].as_f64() {
        Some(z) => format!(
            " Zoom pass: the same graph again on a square window {z}× the first box's longer \
             side; the final box is the window's{flips}, whether a lesion was found is the \
             first pass's."
        ),
        None => " No zoom pass.".to_owned(),
    };
    let _ = writeln!(
        md,
        "\n`{}` ({} parameters, {} bytes): {}. Input: the whole radiograph letterboxed to \
         {}×{}.{zoom} Trained from seed {} for {} epochs (best {} on validation recall), \
         {:.1} min; tract parity {:.1e}. Minimum confidence {:.3} (the 1st percentile of \
         validation's correct detections): below it the result is \"no lesion localised — \
         review\".\n",
        l["file"].as_str().unwrap_or("?"),
        l["params"],
        l["bytes"],
        l["architecture"].as_str().unwrap_or("?"),
        l["input_size"],
        l["input_size"],
        l["seed"],
        l["epochs"],
        l["best_epoch"].as_u64().map_or(0, |e| e + 1),
        f(&l["train_seconds"]) / 60.0,
        f(&l["tract_parity"]),
        f(&l["min_confidence"]),
    );
    let _ = writeln!(
        md,
        "Localisation against the recorded boxes (targets: recall at IoU ≥ 0.5 of 95% internal, \
         90% external):\n"
    );
    let _ = writeln!(
        md,
        "| split | n | recall IoU ≥ 0.5 | ≥ 0.3 | ≥ 0.7 | mean IoU | first pass: recall ≥ 0.5 / mean IoU | below min confidence |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for (name, key) in [
        ("validation", "validation"),
        ("internal test", "internal_test"),
        ("external", "external"),
    ] {
        let r = &l[key];
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {:.3} | {} / {:.3} | {} |",
            r["n"],
            pct(&r["recall_iou50"]),
            pct(&r["recall_iou30"]),
            pct(&r["recall_iou70"]),
            f(&r["mean_iou"]),
            pct(&r["first_pass_recall_iou50"]),
            f(&r["first_pass_mean_iou"]),
            pct(&r["below_min_confidence"]),
        );
    }
    if let Some(t) = l["task_effect"].as_object() {
        let _ = writeln!(
            md,
            "\nEffect on the task: the engine's ensemble AUC (DeLong 95% CI) with the localiser's \
             boxes, with the recorded boxes (target: within 0.01) and with the whole image (no \
             localiser), on the studies it localised:\n"
        );
        let _ = writeln!(
            md,
            "| split | studies | review | AUC automatic boxes | AUC recorded boxes | automatic − recorded | AUC whole image |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        let auc = |v: &serde_json::Value| {
            format!(
                "{:.3} ({:.3}–{:.3})",
                f(&v["auc"]),
                f(&v["ci_low"]),
                f(&v["ci_high"])
            )
        };
        for (name, e) in t {
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {:+.4} | {} |",
                e["n_studies"],
                e["n_review"],
                auc(&e["ensemble_auc_automatic_boxes"]),
                auc(&e["ensemble_auc_recorded_boxes"]),
                f(&e["ensemble_auc_delta"]),
                auc(&e["ensemble_auc_whole_image"]),
            );
        }
    }
    if let Some(ms) = l["latency_ms"].as_object() {
        let passes = match (
            l["zoom"].is_number(),
            l["zoom_flips"].as_bool() == Some(true),
        ) {
            (false, _) => "one pass",
            (true, false) => "both passes",
            (true, true) => "the first pass and four zoom passes",
        };
        let _ = writeln!(
            md,
            "\nAdded latency per study (the localiser, {passes}, one thread, on the golden \
             radiograph, {} runs on the training machine): p50 {:.1} ms, p95 {:.1} ms.",
            ms.get("runs").unwrap_or(&serde_json::Value::Null),
            ms.get("p50").map_or(f64::NAN, f),
            ms.get("p95").map_or(f64::NAN, f),
        );
    }
    md
}

fn kind_name(k: tirp_firmware::ensemble::StackerKind) -> &'static str {
    match k {
        tirp_firmware::ensemble::StackerKind::Lr => "logistic regression",
        tirp_firmware::ensemble::StackerKind::Rf => "random forest",
    }
}

fn candidates(c: &[(tirp_firmware::ensemble::StackerKind, f64)]) -> String {
    c.iter()
        .map(|(k, a)| format!("{} {a:.3}", kind_name(*k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fits the clinical LR and RF on a table (e.g. the study's public one, no images needed)
/// and reports their patient-grouped cross-validated AUC.
pub fn study_table(path: &Path, folds: usize, seed: u64) -> Result<StudyTable> {
    use tirp_models::stack::{self, TabularConfig};
    let table = tirp_models::table::LabelTable::load(path)?;
    if table.records.is_empty() {
        bail!("{}: no rows", path.display());
    }
    let x: Vec<[f32; 10]> = table
        .records
        .iter()
        .map(|r| tirp_models::features::clinical(r.age, r.sex, r.site))
        .collect();
    let y: Vec<f32> = table
        .records
        .iter()
        .map(|r| tirp_models::train::data::target(r.label))
        .collect();
    let groups: Vec<&str> = table
        .records
        .iter()
        .map(|r| r.patient_id.as_str())
        .collect();
    let mut patients = groups.clone();
    patients.sort_unstable();
    patients.dedup();
    let cfg = TabularConfig::default();
    let cv = |kind| -> Result<CvResult> {
        Ok(stack::cross_validate(
            kind, &x, &y, &groups, folds, seed, &cfg,
        )?)
    };
    Ok(StudyTable {
        path: path.display().to_string(),
        rows: x.len(),
        patients: patients.len(),
        folds,
        lr_cv_auc: cv(tirp_firmware::ensemble::StackerKind::Lr)?.pooled_auc,
        rf_cv_auc: cv(tirp_firmware::ensemble::StackerKind::Rf)?.pooled_auc,
    })
}
