//! `tirp train`: trains the whole ensemble from a label table into a bundle directory and
//! writes its model card.

use super::Output;
use super::progress::TrainingBars;
use anyhow::{Context, Result, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use tirp_firmware::bundle::GoldenOutput;
use tirp_firmware::engine::{ClinicalInput, Engine, EngineOptions, Explain};
use tirp_firmware::radiograph::Photometric;
use tirp_host::modelcard::{self, ModelCard};
use tirp_models::nets::MemberKind;
use tirp_models::pipeline::{self, MemberPlan, PipelineConfig, PipelineEvent};
use tirp_models::table::LabelTable;
use tirp_models::table::Split;
use tirp_models::train::TrainEvent;

#[derive(Args)]
pub struct TrainArgs {
    /// Label table: a cohort's labels.csv or the DeepTIRP study's format (with images).
    #[arg(long)]
    labels: PathBuf,
    /// Bundle directory to write (ensemble.json, ONNX files, model card).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = PipelineConfig::default().seed)]
    seed: u64,
    /// Side of the members' square input, pixels.
    #[arg(long, default_value_t = PipelineConfig::default().input_size)]
    size: usize,
    /// Members and their epochs, e.g. `resnet=6,effnet=4,vit=12`.
    #[arg(long, default_value_t = default_members())]
    members: String,
    #[arg(long, default_value_t = PipelineConfig::default().batch_size)]
    batch: usize,
    #[arg(long, default_value_t = PipelineConfig::default().version)]
    version: String,
    /// Also fit the clinical models on this table (e.g. the study's public train.csv; no
    /// images needed) and put their cross-validated AUC in the model card.
    #[arg(long)]
    study_table: Option<PathBuf>,
    /// Overwrite a non-empty output directory.
    #[arg(long)]
    force: bool,
}

/// File names of the golden pair in a bundle directory.
pub const GOLDEN_INPUT: &str = "golden.png";
pub const GOLDEN_OUTPUT: &str = "golden.json";

fn default_members() -> String {
    PipelineConfig::default()
        .members
        .iter()
        .map(|m| format!("{}={}", m.kind, m.epochs))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_members(s: &str) -> Result<Vec<MemberPlan>> {
    s.split(',')
        .map(|part| {
            let (name, epochs) = part
                .split_once('=')
                .with_context(|| format!("member `{part}`: expected NAME=EPOCHS"))?;
            let kind = MemberKind::ALL
                .into_iter()
                .find(|k| k.as_str() == name.trim())
                .with_context(|| {
                    format!("unknown member `{name}` (expected one of: resnet, effnet, vit)")
                })?;
            let epochs: usize = epochs
                .trim()
                .parse()
                .with_context(|| format!("member `{name}`: epochs `{epochs}` is not a number"))?;
            if epochs == 0 {
                bail!("member `{name}`: epochs must be at least 1");
            }
            Ok(MemberPlan { kind, epochs })
        })
        .collect()
}

/// The health check's golden pair: a validation radiograph stored MONOCHROME2 (copied as
/// is) and the engine's answer on it (no ROI given: the bundle's localiser when it has one,
/// else the whole image; clinical inputs missing), so a box can
/// check after activation that it computes what the training machine computed.
pub(crate) fn write_golden(table: &LabelTable, dir: &Path) -> Result<()> {
    let record = table
        .split(Split::Validation)
        .into_iter()
        .find(|r| r.photometric != Some(Photometric::Monochrome1))
        .context("no MONOCHROME2 validation radiograph for the golden health check")?;
    let input = std::fs::read(&record.path)
        .with_context(|| format!("reading {}", record.path.display()))?;
    let engine = Engine::load(dir, &EngineOptions::default())?;
    let image = tirp_firmware::radiograph::decode(&input)
        .with_context(|| format!("decoding {}", record.path.display()))?
        .image;
    let p = engine.predict(&image, None, ClinicalInput::default(), Explain::GradCam)?;
    let golden = GoldenOutput {
        probability: p.probability as f64,
        flag: p.pbt,
        tolerance: 1e-4,
        member_scores: p.members.iter().map(|m| m.probability as f64).collect(),
    };
    std::fs::write(dir.join(GOLDEN_INPUT), &input)?;
    std::fs::write(dir.join(GOLDEN_OUTPUT), serde_json::to_vec_pretty(&golden)?)?;
    Ok(())
}

/// The localiser of a bundle being retrained in place: the members are retrained, but the
/// localiser (trained apart, on whole radiographs) and its file and report stay, so
/// `--force` on a shipped bundle does not drop it.
fn kept_localiser(dir: &Path) -> Option<tirp_firmware::ensemble::LocaliserSpec> {
    let spec = tirp_firmware::ensemble::EnsembleSpec::load(dir).ok()?;
    spec.localiser.filter(|l| dir.join(&l.file).is_file())
}

pub fn run(args: TrainArgs, out: &Output) -> Result<()> {
    let cfg = PipelineConfig {
        seed: args.seed,
        input_size: args.size,
        batch_size: args.batch,
        version: args.version.clone(),
        members: parse_members(&args.members)?,
        ..Default::default()
    };
    if args.out.exists()
        && std::fs::read_dir(&args.out)
            .with_context(|| format!("reading {}", args.out.display()))?
            .next()
            .is_some()
        && !args.force
    {
        bail!(
            "{} is not empty; pass --force to overwrite the bundle there",
            args.out.display()
        );
    }
    let kept_localiser = kept_localiser(&args.out);
    let table = LabelTable::load(&args.labels)?;
    let study = match &args.study_table {
        Some(p) => Some(modelcard::study_table(p, 5, cfg.seed)?),
        None => None,
    };

    let mut bars = TrainingBars::new();
    let threshold = |s: &[f32], y: &[f32]| {
        // Youden on validation; a degenerate validation set falls back to ½.
        modelcard::youden_threshold(s, y).map_or(0.5, |t| t as f32)
    };
    let mut trained = pipeline::train_ensemble(
        &table,
        &cfg,
        &args.out,
        &threshold,
        &mut |e| match e {
            PipelineEvent::Stage(s) => bars.stage(s),
            PipelineEvent::Crops { done, total } => bars.count("crops", done, total),
            PipelineEvent::Member { kind, event } => match event {
                TrainEvent::Step {
                    epoch,
                    step,
                    steps,
                    loss,
                } => bars.step(format!("{kind} epoch {}", epoch + 1), step, steps, loss),
                TrainEvent::Epoch(stats) => bars.say(format!(
                    "  {kind} epoch {}: train loss {:.4}, val loss {:.4}, val AUC {:.4}, {:.0} s",
                    stats.epoch + 1,
                    stats.train_loss,
                    stats.val_loss,
                    stats.val_auc,
                    stats.seconds
                )),
            },
            PipelineEvent::MemberDone(r) => {
                bars.say(
                    format!(
                        "  {}: best epoch {} (val AUC {:.4}), {:.0} s, tract parity {:.1e} (f32) {:.1e} (int8)",
                        r.kind,
                        r.best_epoch + 1,
                        r.history[r.best_epoch].val_auc,
                        r.train_seconds,
                        r.parity_f32,
                        r.parity_int8
                    ),
                );
            }
        },
    )?;
    if let Some(l) = &kept_localiser {
        trained.spec.localiser = Some(l.clone());
        trained
            .spec
            .save(&args.out)
            .with_context(|| format!("writing the spec in {}", args.out.display()))?;
    }
    write_golden(&table, &args.out)?;
    let card = ModelCard::build(trained, &args.labels, &args.out, study)?;
    card.write(&args.out)?;
    // The full-int8 variants for boards where they are faster (`tirp quantize`).
    let (_, full_int8) = super::quantize::quantize_bundle(&args.out, &table, true, &mut bars)?;
    bars.finish();
    let value = serde_json::json!({
        "out": args.out,
        "threshold": card.trained.spec.threshold,
        "stacker": card.trained.spec.stacker.kind,
        "seconds": card.trained.seconds,
        "table": card.table,
        "int8": card.int8,
        "full_int8": full_int8,
        "localiser_kept": kept_localiser.is_some(),
    });
    out.emit(&value, || {
        let mut s = format!(
            "bundle written to {} in {:.1} min; model card {}\n",
            args.out.display(),
            card.trained.seconds / 60.0,
            args.out.join(modelcard::CARD_MD).display()
        );
        if kept_localiser.is_some() {
            s.push_str(&format!(
                "kept the bundle's lesion localiser; `tirp train-localiser --labels {} --bundle {} \
                 --card-only` scores it with these members for the model card\n",
                args.labels.display(),
                args.out.display()
            ));
        }
        for r in &card.table {
            s.push_str(&format!(
                "{:>14} {:<28} AUC {:.3} ({:.3}–{:.3})  acc {:.1}%\n",
                r.split,
                r.model,
                r.auc.auc,
                r.auc.low,
                r.auc.high,
                100.0 * r.metrics.accuracy.value
            ));
        }
        s
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_list_parses_and_rejects_typos() {
        let m = parse_members("resnet=2, vit=3").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[1].kind, m[1].epochs), (MemberKind::Vit, 3));
        assert!(parse_members(&default_members()).is_ok());
        let e = parse_members("resnt=2").unwrap_err().to_string();
        assert!(e.contains("unknown member `resnt`"), "{e}");
        assert!(parse_members("vit=0").is_err());
        assert!(parse_members("vit").is_err());
    }
}
