//! `tirp quantize`: adds the full-int8 (QDQ) member files to a trained bundle
//! (`tirp_models::quantize`), measures the ensemble with them against the bundle's default
//! (weight-only int8) members on the held-out splits, and writes both into the model card.

use super::Output;
use super::predict::{Boxes, auc_json, is_pbt, score_records};
use super::progress::TrainingBars;
use anyhow::{Context, Result};
use clap::Args;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use tirp_firmware::engine::{Engine, EngineOptions};
use tirp_host::modelcard;
use tirp_models::quantize;
use tirp_models::table::{LabelTable, Split};

/// The report written beside the files.
pub const REPORT_FILE: &str = "full_int8.json";

#[derive(Args)]
pub struct QuantizeArgs {
    /// Label table the bundle was trained on (calibration: its training split; parity:
    /// validation; evaluation: validation, internal test and external, recorded boxes).
    #[arg(long)]
    labels: PathBuf,
    /// Trained bundle directory (with the members' `<name>.f32.onnx` originals).
    #[arg(long)]
    bundle: PathBuf,
    /// Write the files only: no ensemble evaluation, no model-card update.
    #[arg(long)]
    no_card: bool,
}

/// Ensemble AUC with the full-int8 members against the default members, per held-out split
/// (recorded boxes, so the localiser is not part of the comparison).
fn ensemble_effect(dir: &Path, table: &LabelTable) -> Result<Value> {
    let load = |full_int8: bool| {
        Engine::load(
            dir,
            &EngineOptions {
                threads: 1,
                full_int8,
                ..Default::default()
            },
        )
    };
    let (default, full) = (load(false)?, load(true)?);
    let pool = rayon::ThreadPoolBuilder::new()
        .build()
        .context("starting the worker threads")?;
    let mut rows = serde_json::Map::new();
    for (name, split) in [
        ("validation", Split::Validation),
        ("internal test", Split::Test),
        ("external", Split::External),
    ] {
        let records = table.split(split);
        if records.is_empty() {
            continue;
        }
        let a = score_records(
            &default,
            &pool,
            &records,
            Boxes::Recorded,
            &format!("{name}: shipped members"),
        )?;
        let b = score_records(
            &full,
            &pool,
            &records,
            Boxes::Recorded,
            &format!("{name}: full int8"),
        )?;
        let truth: Vec<bool> = records.iter().map(|r| is_pbt(r)).collect();
        let p = |v: &[tirp_firmware::engine::Prediction]| -> Vec<f64> {
            v.iter().map(|p| p.probability as f64).collect()
        };
        let (pa, pb) = (p(&a), p(&b));
        let (auc_a, auc_b) = (auc_json(&pa, &truth), auc_json(&pb, &truth));
        let max_dp = pa
            .iter()
            .zip(&pb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        let flips = a.iter().zip(&b).filter(|(x, y)| x.pbt != y.pbt).count();
        let delta = match (auc_b["auc"].as_f64(), auc_a["auc"].as_f64()) {
            (Some(x), Some(y)) => json!(x - y),
            _ => Value::Null,
        };
        rows.insert(
            name.to_owned(),
            json!({
                "n": records.len(),
                "auc_full_int8": auc_b,
                "auc_default": auc_a,
                "auc_delta": delta,
                "max_probability_diff": max_dp,
                "flag_changes": flips,
            }),
        );
    }
    Ok(Value::Object(rows))
}

/// The whole step on a trained bundle: the files and spec, `full_int8.json`, and, with
/// `with_card` and a model card present, the ensemble comparison in the card. `tirp train`
/// ends with it too.
pub(crate) fn quantize_bundle(
    dir: &Path,
    table: &LabelTable,
    with_card: bool,
    bars: &mut TrainingBars,
) -> Result<(quantize::FullInt8Report, Value)> {
    let start = std::time::Instant::now();
    bars.stage("calibrating and writing the full-int8 members");
    let report = quantize::write_full_int8(dir, table, &|| {})
        .with_context(|| format!("quantising the members of {}", dir.display()))?;
    let mut value = serde_json::to_value(&report)?;
    let card = with_card && dir.join(modelcard::CARD_JSON).is_file();
    if card {
        bars.stage("ensemble with full-int8 members vs the shipped members");
        value["ensemble"] = ensemble_effect(dir, table)?;
    }
    value["seconds"] = json!(start.elapsed().as_secs_f64());
    let path = dir.join(REPORT_FILE);
    std::fs::write(&path, serde_json::to_vec_pretty(&value)?)
        .with_context(|| format!("writing {}", path.display()))?;
    if card {
        modelcard::add_full_int8(dir, &value)?;
    }
    Ok((report, value))
}

pub fn run(args: QuantizeArgs, out: &Output) -> Result<()> {
    let table = LabelTable::load(&args.labels)
        .with_context(|| format!("reading {}", args.labels.display()))?;
    let mut bars = TrainingBars::new();
    let (report, value) = quantize_bundle(&args.bundle, &table, !args.no_card, &mut bars)?;
    bars.finish();
    out.emit(&value, || {
        let mut s = String::new();
        for m in &report.members {
            s.push_str(&format!(
                "{:>7}: {} ({} bytes, {} activations quantised, max |Δlogit| vs f32 {:.3})\n",
                m.name, m.file, m.bytes, m.activations, m.max_logit_diff
            ));
        }
        if let Some(e) = value["ensemble"].as_object() {
            for (split, r) in e {
                s.push_str(&format!(
                    "{split:>14}: ensemble AUC full int8 {:.4}, shipped {:.4} (Δ {:+.4}), max |Δp| {:.3}, {} flags changed of {}\n",
                    r["auc_full_int8"]["auc"].as_f64().unwrap_or(f64::NAN),
                    r["auc_default"]["auc"].as_f64().unwrap_or(f64::NAN),
                    r["auc_delta"].as_f64().unwrap_or(f64::NAN),
                    r["max_probability_diff"].as_f64().unwrap_or(f64::NAN),
                    r["flag_changes"],
                    r["n"],
                ));
            }
        }
        s.push_str(&format!(
            "calibrated on {} training radiographs; spec and {REPORT_FILE} written in {}",
            report.calibration_images,
            args.bundle.display()
        ));
        s
    });
    Ok(())
}
