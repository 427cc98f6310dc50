//! `tirp train-localiser`: trains the lesion localiser on a cohort's recorded boxes into an
//! existing bundle directory: `localiser.onnx`, the `localiser` entry of `ensemble.json`
//! and the evaluation report `localiser.json`.

use super::Output;
use super::progress::TrainingBars;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use tirp_firmware::engine::{Engine, EngineOptions};
use tirp_firmware::ensemble::{EnsembleSpec, LocaliserSpec};
use tirp_host::modelcard;
use tirp_models::localiser::{self, LocEvent, LocaliserTrainConfig, RunEvent};
use tirp_models::table::{LabelTable, Split};

/// The localiser's time per study (all its passes) on the bundle's golden radiograph: one
/// thread, a warm-up run then 30 timed.
fn localise_latency(engine: &Engine, dir: &std::path::Path) -> Result<serde_json::Value> {
    let path = dir.join(super::train::GOLDEN_INPUT);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let image = tirp_firmware::radiograph::decode(&bytes)
        .with_context(|| format!("decoding {}", path.display()))?
        .image;
    engine.localise(&image)?;
    let mut ms: Vec<f64> = (0..30)
        .map(|_| {
            let t = std::time::Instant::now();
            engine
                .localise(&image)
                .map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_, _>>()?;
    ms.sort_by(f64::total_cmp);
    Ok(serde_json::json!({
        "runs": ms.len(),
        "p50": ms[ms.len() / 2],
        "p95": ms[(ms.len() * 95 / 100).min(ms.len() - 1)],
    }))
}

#[derive(Args)]
pub struct TrainLocaliserArgs {
    /// Label table with lesion boxes and splits (a cohort's labels.csv).
    #[arg(long)]
    labels: PathBuf,
    /// Bundle directory holding ensemble.json (its preprocessing percentiles are used).
    #[arg(long)]
    bundle: PathBuf,
    /// Side of the square letterboxed input, pixels (a multiple of 4).
    #[arg(long, default_value_t = LocaliserTrainConfig::default().net.input_size)]
    size: usize,
    #[arg(long, default_value_t = LocaliserTrainConfig::default().epochs)]
    epochs: usize,
    #[arg(long, default_value_t = LocaliserTrainConfig::default().seed)]
    seed: u64,
    #[arg(long, default_value_t = LocaliserTrainConfig::default().batch_size)]
    batch: usize,
    /// Peak learning rate (AdamW, warm-up then cosine).
    #[arg(long, default_value_t = LocaliserTrainConfig::default().lr)]
    lr: f64,
    /// Do not train: take the bundle's localiser and its localiser.json as they are and run
    /// the golden, task-effect, latency and model-card steps only.
    #[arg(long, conflicts_with = "no_card")]
    card_only: bool,
    /// Skip the task-effect evaluation (engine AUC with automatic vs recorded boxes on the
    /// internal test and external splits) and the model-card update.
    #[arg(long)]
    no_card: bool,
    /// The zoom pass's window, as a multiple of the first box's longer side (0: no zoom pass).
    #[arg(long, default_value_t = LocaliserTrainConfig::default().zoom.unwrap_or(0.0))]
    zoom: f32,
    /// Average the zoom pass's box over the window and its three mirror images (4 zoom passes
    /// instead of 1). With `--card-only` the bundle's localiser is re-scored this way.
    #[arg(long, default_value_t = LocaliserTrainConfig::default().zoom_flips, action = clap::ArgAction::Set)]
    zoom_flips: bool,
}

pub fn run(args: TrainLocaliserArgs, out: &Output) -> Result<()> {
    if args.size == 0 || !args.size.is_multiple_of(4) {
        anyhow::bail!("--size must be a positive multiple of 4, got {}", args.size);
    }
    let mut spec = EnsembleSpec::load(&args.bundle)
        .with_context(|| format!("reading the bundle spec in {}", args.bundle.display()))?;
    let table = LabelTable::load(&args.labels)?;
    let mut bars = TrainingBars::new();
    let percentiles = (
        spec.preprocess.low_percentile,
        spec.preprocess.high_percentile,
    );
    let mut on_event = |e: RunEvent| {
        match e {
        RunEvent::Stage(s) => bars.stage(s),
        RunEvent::Letterbox { done, total } => bars.count("letterbox", done, total),
        RunEvent::Train(LocEvent::Step {
            epoch,
            step,
            steps,
            loss,
        }) => bars.step(format!("localiser epoch {}", epoch + 1), step, steps, loss),
        RunEvent::Train(LocEvent::Epoch(s)) => bars.say(format!(
            "  localiser epoch {}: train loss {:.4} (focal {:.4}, offset {:.4}, log-size {:.4}), val recall@0.5 {:.4}, val mean IoU {:.4}, {:.0} s ({:.2} s/step)",
            s.epoch + 1,
            s.train_loss,
            s.train_focal,
            s.train_offset,
            s.train_size,
            s.val_recall50,
            s.val_mean_iou,
            s.seconds,
            s.seconds_per_step
        )),
    }
    };
    let report: localiser::LocaliserReport = if args.card_only {
        // The localiser already in the bundle: its training report, re-scored on the
        // held-out splits with the zoom pass asked for, for the card steps.
        anyhow::ensure!(
            spec.localiser.is_some(),
            "--card-only: {} has no localiser in its spec",
            args.bundle.display()
        );
        let path = args.bundle.join(localiser::REPORT_FILE);
        let trained: localiser::LocaliserReport = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{}: not a localiser report", path.display()))?;
        let report = localiser::rescore(
            &table,
            &args.bundle,
            percentiles,
            &trained,
            args.zoom_flips,
            &mut on_event,
        )?;
        bars.end_bar();
        report
    } else {
        let mut cfg = LocaliserTrainConfig {
            seed: args.seed,
            epochs: args.epochs,
            batch_size: args.batch,
            lr: args.lr,
            zoom: (args.zoom > 0.0).then_some(args.zoom),
            zoom_flips: args.zoom_flips,
            ..Default::default()
        };
        if !args.zoom.is_finite() || args.zoom < 0.0 || (args.zoom > 0.0 && args.zoom < 1.5) {
            anyhow::bail!("--zoom must be 0 (off) or at least 1.5, got {}", args.zoom);
        }
        cfg.net.input_size = args.size;

        let report = localiser::train_into(
            &table,
            &args.bundle,
            percentiles.0,
            percentiles.1,
            &cfg,
            &mut on_event,
        )?;
        bars.end_bar();
        report
    };
    // The spec's localiser entry is the report's, trained or re-scored.
    spec.localiser = Some(LocaliserSpec {
        file: report.file.clone(),
        input_size: report.input_size as u32,
        mean: report.mean,
        std: report.std,
        min_confidence: report.min_confidence,
        zoom: report.zoom,
        zoom_flips: report.zoom_flips,
    });
    spec.save(&args.bundle)
        .with_context(|| format!("writing the spec in {}", args.bundle.display()))?;
    let mut value = serde_json::to_value(&report)?;
    let card = args.bundle.join(modelcard::CARD_JSON);
    if !args.no_card && card.is_file() {
        // The bundle now localises: its golden answer is the localiser path's, and the card
        // gets the task-effect and latency figures.
        bars.stage("golden pair, task effect and latency for the model card");
        super::train::write_golden(&table, &args.bundle)?;
        let engine = Engine::load(
            &args.bundle,
            &EngineOptions {
                threads: 1,
                ..Default::default()
            },
        )?;
        value["latency_ms"] = localise_latency(&engine, &args.bundle)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .build()
            .context("starting the worker threads")?;
        let mut effect = serde_json::Map::new();
        for (name, split) in [
            ("internal test", Split::Test),
            ("external", Split::External),
        ] {
            let records = table.split(split);
            let mut e = super::predict::localiser_effect(&engine, &pool, &records, name)?;
            // The card keeps counts, not the list of study keys.
            if let Some(o) = e.as_object_mut() {
                o.remove("review");
            }
            effect.insert(name.to_owned(), e);
        }
        value["task_effect"] = serde_json::Value::Object(effect);
    }
    let report_path = args.bundle.join(localiser::REPORT_FILE);
    std::fs::write(&report_path, serde_json::to_vec_pretty(&value)?)
        .with_context(|| format!("writing {}", report_path.display()))?;
    if !args.no_card && card.is_file() {
        modelcard::add_localiser(&args.bundle, &value)?;
    }
    bars.finish();
    out.emit(&value, || {
        let line = |name: &str, r: &localiser::SplitReport| {
            format!(
                "{name:>14}: n {:>4}  recall@IoU≥0.5 {:.1}%  mean IoU {:.3}  below min confidence {:.1}%\n",
                r.n,
                100.0 * r.recall_iou50,
                r.mean_iou,
                100.0 * r.below_min_confidence
            )
        };
        let mut effect = String::new();
        if let Some(t) = value["task_effect"].as_object() {
            for (name, e) in t {
                effect += &format!(
                    "{name:>14}: ensemble AUC automatic boxes {:.3}, recorded {:.3} (Δ {:+.4}), whole image {:.3}; {} of {} to review\n",
                    e["ensemble_auc_automatic_boxes"]["auc"].as_f64().unwrap_or(f64::NAN),
                    e["ensemble_auc_recorded_boxes"]["auc"].as_f64().unwrap_or(f64::NAN),
                    e["ensemble_auc_delta"].as_f64().unwrap_or(f64::NAN),
                    e["ensemble_auc_whole_image"]["auc"].as_f64().unwrap_or(f64::NAN),
                    e["n_review"],
                    e["n_studies"],
                );
            }
            effect += &format!(
                "localiser latency p50 {:.1} ms; model card updated\n",
                value["latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN)
            );
        }
        format!(
            "localiser written to {} ({} params, {} bytes, {:.1} min training, best epoch {}, min confidence {:.3}, tract parity {:.1e}); report {}\n{}{}{}\n",
            args.bundle.join(&report.file).display(),
            report.params,
            report.bytes,
            report.train_seconds / 60.0,
            report.best_epoch + 1,
            report.min_confidence,
            report.tract_parity,
            report_path.display(),
            line("validation", &report.validation),
            line("internal test", &report.internal_test),
            line("external", &report.external),
        ) + &effect
    });
    Ok(())
}
