//! `tirp predict` (one radiograph → flag, probability, heat-map), `tirp eval` (a labelled
//! table → predictions CSV for `tirp audit` + AUC), and the hidden `tirp predict bench`.
//!
//! The bundle is `--bundle DIR`, else `$TIRP_BUNDLE`, else the workspace's `models/bundle`
//! (resolved when `tirp` was built).

use super::Output;
use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tirp_firmware::clinical::{Sex, Site, clinical as clinical_features};
use tirp_firmware::engine::cam::sigmoid;
use tirp_firmware::engine::{
    ClinicalInput, Engine, EngineOptions, Explain, MEMBER_FMAP, Plan, Prediction, RoiSource,
    load_input, overlay,
};
use tirp_firmware::ensemble::{ENSEMBLE_FILE, MEMBER_CAM, MEMBER_LOGIT, STACKER_OUTPUT};
use tirp_firmware::preprocess::Roi;
use tirp_firmware::radiograph::Photometric;
use tirp_host::stats::roc;
use tirp_models::table::{LabelTable, Split};

/// Where `tirp` looks for the bundle when neither `--bundle` nor `TIRP_BUNDLE` is given.
pub const DEFAULT_BUNDLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/bundle");
pub const BUNDLE_ENV: &str = "TIRP_BUNDLE";

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PredictArgs {
    #[command(subcommand)]
    bench: Option<PredictCommand>,
    /// The radiograph: PNG (8/16-bit), JPEG or DICOM.
    #[arg(required = true)]
    image: Option<PathBuf>,
    #[command(flatten)]
    bundle: BundleArgs,
    /// Patient age in years (0–120).
    #[arg(long, allow_negative_numbers = true)]
    age: Option<f32>,
    /// Patient sex: m or f.
    #[arg(long)]
    sex: Option<Sex>,
    /// Lesion site: femur, tibia, humerus, radius_ulna, fibula, pelvis.
    #[arg(long)]
    site: Option<Site>,
    /// Lesion box in image pixels, `x,y,w,h` (default: the bundle's localiser finds it, or
    /// the whole image when the bundle has none). A given box always wins.
    #[arg(long, value_parser = parse_roi)]
    roi: Option<Roi>,
    /// Heat-map method.
    #[arg(long, default_value = "gradcam")]
    explain: Explain,
    /// Write the overlay PNG (crop, heat-map, legend, flag) here.
    #[arg(long)]
    heatmap: Option<PathBuf>,
    /// How a PNG/JPEG was stored (DICOM files say so themselves).
    #[arg(long, value_parser = parse_photometric)]
    photometric: Option<Photometric>,
    /// Include the heat-map's values (side² numbers) in the JSON output.
    #[arg(long)]
    heatmap_values: bool,
}

#[derive(Subcommand)]
enum PredictCommand {
    /// Writes a random-initialised (untrained) bundle for trying and timing the engine.
    #[command(hide = true)]
    Fixture {
        #[arg(long)]
        out: PathBuf,
        /// Side of the members' input.
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The shipped member architectures instead of the small test ones.
        #[arg(long)]
        full_size: bool,
        /// Also write a hand-made localiser (finds the brightest region).
        #[arg(long)]
        localiser: bool,
    },
    /// Times the engine on a bundle: cold start, then p50/p95 per stage and end to end.
    #[command(hide = true)]
    Bench {
        #[command(flatten)]
        bundle: BundleArgs,
        #[arg(long, default_value_t = 50)]
        iters: usize,
        /// Radiograph to time on (default: a synthetic 512×512 image).
        #[arg(long)]
        image: Option<PathBuf>,
        #[arg(long, default_value = "gradcam")]
        explain: Explain,
        /// Write the member input (`x.f32`) and the stacker's clinical features
        /// (`clinical.f32`), raw little-endian f32, here (for `tools/bench_ort.py --inputs`).
        #[arg(long)]
        dump: Option<PathBuf>,
        /// Also time every node of each member's plan and list where each member spends its
        /// time, per tract operator (`--iters` runs each).
        #[arg(long)]
        profile: bool,
    },
}

#[derive(Args)]
pub struct BundleArgs {
    /// Model bundle directory (ensemble.json + ONNX files).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Threads (predict: members in parallel; eval: radiographs in parallel). Default: the
    /// machine's cores.
    #[arg(long)]
    threads: Option<usize>,
    /// tract intra-op workers per graph (a board profile's `cpu.intra_op_threads`).
    #[arg(long, default_value_t = 1)]
    intra_op_threads: usize,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Label table: a cohort's labels.csv or the DeepTIRP study's format.
    #[arg(long)]
    labels: PathBuf,
    /// Which records: test, external, val, train or all.
    #[arg(long, default_value = "test")]
    split: String,
    #[command(flatten)]
    bundle: BundleArgs,
    /// Predictions CSV for `tirp audit` (study_key, model, score, centre, model_version,
    /// device, time, label): one `ensemble` row and one row per member for each radiograph.
    #[arg(long, default_value = "predictions.csv")]
    out: PathBuf,
    /// Truth CSV (study_key, label) for `tirp audit --truth`; default: truth.csv beside --out.
    #[arg(long)]
    truth_out: Option<PathBuf>,
    /// Lesion boxes: `recorded` = the table's boxes (a record without one gets the engine's
    /// default: the bundle's localiser, else the whole image); `auto` = the bundle's
    /// localiser finds every box (the table's boxes are only compared with its boxes, and
    /// the ensemble AUC with the recorded boxes on the same studies is reported beside).
    /// Studies the localiser cannot localise ("no lesion localised — review") are left out
    /// of the predictions and the AUC, and counted. `whole` = the whole image, localiser or
    /// not (what a bundle without a localiser does with no box).
    #[arg(long, default_value = "recorded", value_parser = ["recorded", "auto", "whole"])]
    roi: String,
}

fn parse_roi(s: &str) -> Result<Roi, String> {
    let v: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("expected x,y,w,h (four non-negative integers), got `{s}`"))?;
    match v[..] {
        [x, y, w, h] if w > 0 && h > 0 => Ok(Roi { x, y, w, h }),
        [_, _, _, _] => Err(format!("ROI `{s}` is empty (width and height must be > 0)")),
        _ => Err(format!("expected x,y,w,h (four numbers), got `{s}`")),
    }
}

fn parse_photometric(s: &str) -> Result<Photometric, String> {
    Photometric::parse(&s.to_ascii_uppercase())
}

impl BundleArgs {
    fn dir(&self) -> PathBuf {
        self.bundle
            .clone()
            .or_else(|| std::env::var_os(BUNDLE_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BUNDLE))
    }

    fn load(&self) -> Result<Engine> {
        let dir = self.dir();
        if !dir.join(ENSEMBLE_FILE).is_file() {
            bail!(
                "no model bundle at {} (no {ENSEMBLE_FILE}); make one with \
                 `tirp cohort generate --out out/cohort` and \
                 `tirp train --labels out/cohort/labels.csv --out {}`, or point --bundle or \
                 {BUNDLE_ENV} at a bundle directory",
                dir.display(),
                dir.display()
            );
        }
        let threads = match self.threads {
            Some(0) => bail!("--threads must be at least 1"),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.intra_op_threads == 0 {
            bail!("--intra-op-threads must be at least 1");
        }
        let opts = EngineOptions {
            threads,
            intra_op_threads: self.intra_op_threads,
            ..Default::default()
        };
        Engine::load(&dir, &opts).with_context(|| format!("loading the bundle {}", dir.display()))
    }
}

pub fn run_predict(args: PredictArgs, out: &Output) -> Result<()> {
    match args.bench {
        Some(PredictCommand::Bench {
            bundle,
            iters,
            image,
            explain,
            dump,
            profile,
        }) => {
            return bench(
                &bundle,
                iters,
                image.as_deref(),
                explain,
                dump.as_deref(),
                profile,
                out,
            );
        }
        Some(PredictCommand::Fixture {
            out: dir,
            size,
            seed,
            full_size,
            localiser,
        }) => {
            let cfg = tirp_models::fixture::FixtureConfig {
                input_size: size,
                seed,
                full_size,
                localiser: localiser.then(Default::default),
                ..Default::default()
            };
            let fx = tirp_models::fixture::write_bundle(&dir, &cfg)
                .with_context(|| format!("writing a fixture bundle to {}", dir.display()))?;
            out.emit(&json!({"out": dir, "spec": fx.spec}), || {
                format!(
                    "wrote an untrained fixture bundle ({} members, {size}×{size}) to {}",
                    fx.spec.members.len(),
                    dir.display()
                )
            });
            return Ok(());
        }
        None => {}
    }
    let path = args.image.expect("clap requires IMAGE");
    let engine = args.bundle.load()?;
    let input = load_input(&path, args.photometric)?;
    let clinical = ClinicalInput {
        age: args.age,
        sex: args.sex,
        site: args.site,
    };
    let p = engine.predict_input(&input, args.roi, clinical, args.explain)?;
    if let Some(png) = &args.heatmap {
        let bytes = overlay::render_png(&input.image, &p).context("encoding the overlay")?;
        std::fs::write(png, bytes).with_context(|| format!("writing {}", png.display()))?;
    }
    let mut value = serde_json::to_value(&p)?;
    if !args.heatmap_values {
        value["heatmap"]
            .as_object_mut()
            .expect("heat-map object")
            .remove("values");
    }
    value["input"] = json!({
        "path": path,
        "format": input.format,
        "width": input.image.width,
        "height": input.image.height,
    });
    value["heatmap"]["overlay"] = json!(args.heatmap);
    out.emit(&value, || human(&p, &path, args.heatmap.as_deref()));
    Ok(())
}

fn human(p: &Prediction, path: &Path, overlay: Option<&Path>) -> String {
    let members = p
        .members
        .iter()
        .map(|m| format!("{} {:.3}", m.name, m.probability))
        .collect::<Vec<_>>()
        .join(", ");
    let c = &p.clinical;
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut clinical = format!(
        "age {}, sex {}, site {}",
        opt(c.age.map(|a| format!("{a}"))),
        opt(c.sex.clone()),
        opt(c.site.clone())
    );
    if !c.missing.is_empty() {
        clinical += &format!(" (missing: {})", c.missing.join(", "));
    }
    if !c.from_dicom.is_empty() {
        clinical += &format!(" (from DICOM: {})", c.from_dicom.join(", "));
    }
    let t = &p.timings;
    let hm = &p.heatmap;
    let source = match (p.roi_source, &p.localiser) {
        (RoiSource::Caller, _) => "given".to_owned(),
        (RoiSource::WholeImage, _) => "whole image: no ROI given, no localiser".to_owned(),
        (RoiSource::Localiser, Some(l)) => format!(
            "localiser, confidence {:.3} (minimum {:.3})",
            l.confidence, l.min_confidence
        ),
        (RoiSource::Localiser, None) => "localiser".to_owned(),
    };
    if p.review {
        return format!(
            "{}: {}
  not classified: the localiser's best box {},{},{},{} has confidence              below the minimum ({source})
  clinical: {clinical}
  bundle {} {} on {};              {:.1} ms (decode {:.1}, localiser {:.1})
{}",
            path.display(),
            p.flag,
            p.roi.x,
            p.roi.y,
            p.roi.w,
            p.roi.h,
            p.bundle.name,
            p.bundle.version,
            p.backend,
            t.total_ms,
            t.decode_ms,
            t.localise_ms,
            p.notice
        );
    }
    let mut s = format!(
        "{}: {}\n  P(primary bone tumour) = {:.3} (threshold {:.3})\n  members: {members}\n  \
         clinical: {clinical}\n  ROI {},{},{},{} ({})\n  heat-map: {}, peak at ({:.0}, {:.0})",
        path.display(),
        p.flag,
        p.probability,
        p.threshold,
        p.roi.x,
        p.roi.y,
        p.roi.w,
        p.roi.h,
        source,
        hm.method,
        hm.peak.x,
        hm.peak.y,
    );
    if let Some(o) = overlay {
        s += &format!(" → {}", o.display());
    }
    s += &format!(
        "\n  bundle {} {} on {}; {:.1} ms (decode {:.1}, localiser {:.1}, preprocess {:.1}, \
         members {:.1}, stacker {:.2}, explain {:.1})\n{}",
        p.bundle.name,
        p.bundle.version,
        p.backend,
        t.total_ms,
        t.decode_ms,
        t.localise_ms,
        t.preprocess_ms,
        t.members_ms,
        t.stacker_ms,
        t.explain_ms,
        p.notice
    );
    s
}

fn parse_split(s: &str) -> Result<Option<Split>> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    s.parse::<Split>()
        .map(Some)
        .map_err(|e| anyhow::anyhow!("--split: {e}, or all"))
}

/// Key of a radiograph in the predictions: its file name without extension (the synthetic
/// cohort's names carry no identifiers; a site with real names should pseudonymise first).
fn study_key(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

pub fn run_eval(args: EvalArgs, out: &Output) -> Result<()> {
    let split = parse_split(&args.split)?;
    let table = LabelTable::load(&args.labels)
        .with_context(|| format!("reading {}", args.labels.display()))?;
    let records: Vec<_> = match split {
        Some(s) => table.split(s),
        None => table.records.iter().collect(),
    };
    ensure!(
        !records.is_empty(),
        "{}: no records in split `{}`",
        args.labels.display(),
        args.split
    );
    // Radiographs run in parallel, each with sequential members.
    let workers = args
        .bundle
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let engine = BundleArgs {
        bundle: Some(args.bundle.dir()),
        threads: Some(1),
        intra_op_threads: args.bundle.intra_op_threads,
    }
    .load()?;
    let auto = args.roi == "auto";
    ensure!(
        !auto || engine.has_localiser(),
        "--roi auto: the bundle {} has no localiser (no `localiser` in its {ENSEMBLE_FILE})",
        engine.dir().display()
    );
    let start = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers.max(1))
        .build()
        .context("starting the worker threads")?;
    let boxes = match args.roi.as_str() {
        "auto" => Boxes::Engine,
        "whole" => Boxes::Whole,
        _ => Boxes::Recorded,
    };
    let all_preds = score_records(&engine, &pool, &records, boxes, "scoring")?;
    let n_all = all_preds.len();

    let mut sources = std::collections::BTreeMap::<String, usize>::new();
    for p in &all_preds {
        let src = serde_json::to_value(p.roi_source)?;
        *sources
            .entry(src.as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let any_localiser = all_preds.iter().any(|p| p.localiser.is_some());
    let all_records = records.clone();
    // "No lesion localised" studies have no score: left out of the predictions and the AUC.
    let (records, preds): (Vec<_>, Vec<Prediction>) = records
        .into_iter()
        .zip(all_preds.iter().cloned())
        .filter(|(_, p)| !p.review)
        .unzip();
    // With automatic boxes, the same studies again with the recorded ones, for the delta.
    let recorded_preds = if auto {
        Some(score_records(
            &engine,
            &pool,
            &records,
            Boxes::Recorded,
            "scoring with the recorded boxes",
        )?)
    } else {
        None
    };
    let seconds = start.elapsed().as_secs_f64();

    let spec = engine.spec();
    let time = tirp_host::audit::store::iso_utc(tirp_firmware::devlog::now_unix_ms());
    let mut w = csv::Writer::from_path(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    w.write_record([
        "study_key",
        "model",
        "score",
        "centre",
        "model_version",
        "device",
        "time",
        "label",
        "split",
    ])?;
    let truth_path = args.truth_out.clone().unwrap_or_else(|| {
        args.out
            .parent()
            .unwrap_or(Path::new("."))
            .join("truth.csv")
    });
    let mut t = csv::Writer::from_path(&truth_path)
        .with_context(|| format!("writing {}", truth_path.display()))?;
    t.write_record(["study_key", "label"])?;
    let mut keys = std::collections::HashSet::new();
    for (r, p) in records.iter().zip(&preds) {
        let key = study_key(&r.path);
        ensure!(
            keys.insert(key.clone()),
            "two radiographs share the key `{key}` ({})",
            r.path.display()
        );
        let centre = r.centre.map(|c| c.to_string()).unwrap_or_default();
        let split = r.split.map(|s| s.to_string()).unwrap_or_default();
        let label = r.label.to_string();
        let rows = std::iter::once(("ensemble".to_owned(), p.probability))
            .chain(p.members.iter().map(|m| (m.name.clone(), m.probability)));
        for (model, score) in rows {
            w.write_record([
                key.as_str(),
                &model,
                &format!("{score:.6}"),
                &centre,
                &spec.version,
                "tirp-eval",
                &time,
                &label,
                &split,
            ])?;
        }
        t.write_record([key.as_str(), &label])?;
    }
    w.flush()?;
    t.flush()?;

    let truth: Vec<bool> = records.iter().map(|r| is_pbt(r)).collect();
    let n_pos = truth.iter().filter(|&&v| v).count();
    let auc_of = |scores: Vec<f64>| auc_json(&scores, &truth);
    let mut aucs = serde_json::Map::new();
    aucs.insert(
        "ensemble".into(),
        auc_of(preds.iter().map(|p| p.probability as f64).collect()),
    );
    let localiser = (auto || any_localiser)
        .then(|| localiser_summary(&all_records, &all_preds, recorded_preds.as_deref()));
    for (i, m) in spec.members.iter().enumerate() {
        aucs.insert(
            m.name.clone(),
            auc_of(
                preds
                    .iter()
                    .map(|p| p.members[i].probability as f64)
                    .collect(),
            ),
        );
    }
    let (mut tp, mut tn) = (0usize, 0usize);
    for (p, &y) in preds.iter().zip(&truth) {
        match (p.pbt, y) {
            (true, true) => tp += 1,
            (false, false) => tn += 1,
            _ => {}
        }
    }
    let n = preds.len();
    let frac = |k: usize, d: usize| {
        if d > 0 {
            Some(k as f64 / d as f64)
        } else {
            None
        }
    };
    let summary = json!({
        "labels": args.labels,
        "split": args.split,
        "bundle": {"name": spec.name, "version": spec.version, "dir": engine.dir()},
        "roi": args.roi,
        "roi_sources": sources,
        "localiser": localiser,
        "n_studies": n_all,
        "n": n,
        "n_pbt": n_pos,
        "n_infection": n - n_pos,
        "threshold": spec.threshold,
        "accuracy": frac(tp + tn, n),
        "sensitivity": frac(tp, n_pos),
        "specificity": frac(tn, n - n_pos),
        "auc": aucs,
        "seconds": seconds,
        "predictions": args.out,
        "truth": truth_path,
    });
    out.emit(&summary, || {
        let mut s = format!(
            "{n} radiographs ({n_pos} PBT, {} infection) from {} [{}] in {seconds:.1} s\n",
            n - n_pos,
            args.labels.display(),
            args.split
        );
        let order = std::iter::once("ensemble").chain(spec.members.iter().map(|m| m.name.as_str()));
        for name in order {
            let v = &aucs[name];
            match v["auc"].as_f64() {
                Some(a) => {
                    s += &format!(
                        "  AUC {name:<9} {a:.3} (95% CI {:.3}–{:.3}, DeLong)\n",
                        v["ci_low"].as_f64().unwrap_or(f64::NAN),
                        v["ci_high"].as_f64().unwrap_or(f64::NAN)
                    )
                }
                None => s += &format!("  AUC {name:<9} n/a ({})\n", v["why"]),
            }
        }
        if let Some(l) = &localiser {
            let iou = &l["iou_with_recorded"];
            s += &format!(
                "  boxes: {} ({}); {} of {n_all} not localised (review), left out\n",
                args.roi,
                sources
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                l["n_review"],
            );
            if let Some(m) = iou["mean"].as_f64() {
                s += &format!(
                    "  localiser vs recorded boxes: IoU mean {m:.3}, median {:.3}, ≥ 0.5 in \
                     {:.1}% of {}\n",
                    iou["median"].as_f64().unwrap_or(f64::NAN),
                    100.0 * iou["fraction_ge_0_5"].as_f64().unwrap_or(f64::NAN),
                    iou["n"]
                );
            }
            if let Some(a) = l["ensemble_auc_recorded_boxes"]["auc"].as_f64() {
                s += &format!(
                    "  AUC ensemble with the recorded boxes on the same studies {a:.3}: \
                     automatic − recorded = {:+.4}\n",
                    l["ensemble_auc_delta"].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
        let pct = |v: Option<f64>| v.map_or("n/a".into(), |x| format!("{:.1}%", 100.0 * x));
        s += &format!(
            "  at threshold {:.3}: accuracy {}, sensitivity {}, specificity {}\n",
            spec.threshold,
            pct(frac(tp + tn, n)),
            pct(frac(tp, n_pos)),
            pct(frac(tn, n - n_pos))
        );
        s += &format!(
            "predictions: {} (truth: {}); audit with `tirp audit report --predictions {} \
             --truth {} --positive pbt --out report.html`",
            args.out.display(),
            truth_path.display(),
            args.out.display(),
            truth_path.display()
        );
        s
    });
    Ok(())
}

/// AUC with its DeLong 95% CI as JSON (`auc: null` and why, when it cannot be computed).
pub(crate) fn auc_json(scores: &[f64], truth: &[bool]) -> Value {
    match roc::auc_delong_ci(scores, truth, 0.95) {
        Ok(ci) => json!({"auc": ci.auc, "ci_low": ci.low, "ci_high": ci.high}),
        Err(e) => json!({"auc": null, "why": e.to_string()}),
    }
}

pub(crate) fn is_pbt(r: &tirp_models::table::Record) -> bool {
    r.label == tirp_firmware::clinical::Label::Pbt
}

/// What the localiser did on `records` (`preds`, one per record, automatic boxes): review
/// count and keys, IoU with the table's boxes where it has them, and — given `recorded`, the
/// predictions with the recorded boxes on the localised (non-review) records in order — the
/// ensemble AUC with both and their difference (automatic − recorded) on those records.
pub(crate) fn localiser_summary(
    records: &[&tirp_models::table::Record],
    preds: &[Prediction],
    recorded: Option<&[Prediction]>,
) -> Value {
    let mut ious: Vec<f64> = Vec::new();
    let mut review_keys = Vec::new();
    for (r, p) in records.iter().zip(preds) {
        if let (Some(l), Some(rec)) = (&p.localiser, r.roi) {
            ious.push(tirp_firmware::localise::iou(l.roi, rec) as f64);
        }
        if p.review {
            review_keys.push(study_key(&r.path));
        }
    }
    let (kept, auto): (Vec<&tirp_models::table::Record>, Vec<f64>) = records
        .iter()
        .zip(preds)
        .filter(|(_, p)| !p.review)
        .map(|(r, p)| (*r, p.probability as f64))
        .unzip();
    let truth: Vec<bool> = kept.iter().map(|r| is_pbt(r)).collect();
    let auc_of = |scores: &[f64]| auc_json(scores, &truth);
    let auto_auc = auc_of(&auto);
    let recorded_auc = recorded.map(|r| {
        assert_eq!(
            r.len(),
            kept.len(),
            "recorded predictions for the localised records"
        );
        auc_of(&r.iter().map(|p| p.probability as f64).collect::<Vec<_>>())
    });
    let delta = match (&recorded_auc, auto_auc["auc"].as_f64()) {
        (Some(r), Some(a)) => r["auc"].as_f64().map(|r| a - r),
        _ => None,
    };
    let mut sorted = ious.clone();
    sorted.sort_by(f64::total_cmp);
    let hits = ious.iter().filter(|&&v| v >= 0.5).count();
    json!({
        "n_studies": records.len(),
        "n_review": review_keys.len(),
        "review": review_keys,
        "iou_with_recorded": {
            "n": ious.len(),
            "mean": (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64),
            "median": (!sorted.is_empty()).then(|| percentile(&sorted, 0.5)),
            "fraction_ge_0_5": frac_opt(hits, ious.len()),
        },
        "ensemble_auc_automatic_boxes": auto_auc,
        "ensemble_auc_recorded_boxes": recorded_auc,
        "ensemble_auc_delta": delta,
    })
}

/// The localiser's effect on the task over `records`: every record with automatic boxes,
/// then the localised ones with the recorded boxes and with the whole image (what the
/// engine does without a localiser); see [`localiser_summary`].
pub(crate) fn localiser_effect(
    engine: &Engine,
    pool: &rayon::ThreadPool,
    records: &[&tirp_models::table::Record],
    what: &str,
) -> Result<Value> {
    let auto = score_records(
        engine,
        pool,
        records,
        Boxes::Engine,
        &format!("{what}: automatic boxes"),
    )?;
    let localised: Vec<&tirp_models::table::Record> = records
        .iter()
        .zip(&auto)
        .filter(|(_, p)| !p.review)
        .map(|(r, _)| *r)
        .collect();
    let recorded = score_records(
        engine,
        pool,
        &localised,
        Boxes::Recorded,
        &format!("{what}: recorded boxes"),
    )?;
    let whole = score_records(
        engine,
        pool,
        &localised,
        Boxes::Whole,
        &format!("{what}: whole image"),
    )?;
    let mut v = localiser_summary(records, &auto, Some(&recorded));
    let truth: Vec<bool> = localised.iter().map(|r| is_pbt(r)).collect();
    let scores: Vec<f64> = whole.iter().map(|p| p.probability as f64).collect();
    v["ensemble_auc_whole_image"] = auc_json(&scores, &truth);
    Ok(v)
}

/// A `kB` line of /proc/self/status (`VmRSS`, `VmHWM`), where there is one.
fn memory_kb(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

fn frac_opt(k: usize, d: usize) -> Option<f64> {
    (d > 0).then(|| k as f64 / d as f64)
}

/// Which lesion box each radiograph is scored with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Boxes {
    /// The table's (none where it has none: as `Engine`).
    Recorded,
    /// None given: the engine's localiser, else the whole image.
    Engine,
    /// The whole image.
    Whole,
}

/// Predictions for `records` in parallel on `pool` (each with sequential members).
pub(crate) fn score_records(
    engine: &Engine,
    pool: &rayon::ThreadPool,
    records: &[&tirp_models::table::Record],
    boxes: Boxes,
    what: &str,
) -> Result<Vec<Prediction>> {
    let bar = ProgressBar::new(records.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:40}}] {{pos}}/{{len}} radiographs {{per_sec}} ETA {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    let preds = pool.install(|| {
        records
            .par_iter()
            .map(|r| {
                let img = tirp_models::radiograph::load_record(r)?;
                let clinical = ClinicalInput {
                    age: r.age,
                    sex: r.sex,
                    site: r.site,
                };
                let roi = match boxes {
                    Boxes::Recorded => r.roi,
                    Boxes::Engine => None,
                    Boxes::Whole => Some(img.full_roi()),
                };
                let p = engine
                    .predict(&img, roi, clinical, Explain::GradCam)
                    .with_context(|| format!("{}", r.path.display()))?;
                bar.inc(1);
                Ok(p)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    bar.finish_and_clear();
    Ok(preds)
}

/// A synthetic 512×512 radiograph-like image with a bright cortex and a lytic spot.
fn bench_image() -> tirp_firmware::preprocess::GrayImage {
    let n = 512u32;
    let pixels = (0..n * n)
        .map(|i| {
            let (x, y) = ((i % n) as f32, (i / n) as f32);
            let bone = if (200.0..312.0).contains(&x) {
                1500.0
            } else {
                300.0
            };
            let d2 = (x - 256.0).powi(2) + (y - 240.0).powi(2);
            bone - 800.0 * (-d2 / 900.0).exp() + ((i * 7919) % 97) as f32
        })
        .collect();
    tirp_firmware::preprocess::GrayImage::new(n, n, pixels).expect("square image")
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn bench(
    bundle: &BundleArgs,
    iters: usize,
    image: Option<&Path>,
    explain: Explain,
    dump: Option<&Path>,
    profile: bool,
    out: &Output,
) -> Result<()> {
    ensure!(iters >= 1, "--iters must be at least 1");
    let rss_before_kb = memory_kb("VmRSS");
    let engine = bundle.load()?;
    let cold_ms = engine.load_ms();
    let rss_loaded_kb = memory_kb("VmRSS");
    let (img, decode_ms) = match image {
        Some(p) => {
            let input = load_input(p, None)?;
            (input.image, input.decode_ms)
        }
        None => (bench_image(), 0.0),
    };
    let roi = Roi {
        x: img.width / 4,
        y: img.height / 4,
        w: img.width / 2,
        h: img.height / 2,
    };
    let clinical = ClinicalInput {
        age: Some(30.0),
        sex: Some(Sex::Female),
        site: Some(Site::Tibia),
    };
    // One warm-up run, not counted.
    let first = engine.predict(&img, Some(roi), clinical, explain)?;
    let mut stages: Vec<[f64; 5]> = Vec::with_capacity(iters);
    for _ in 0..iters {
        let p = engine.predict(&img, Some(roi), clinical, explain)?;
        let t = p.timings;
        stages.push([
            t.preprocess_ms,
            t.members_ms,
            t.stacker_ms,
            t.explain_ms,
            t.total_ms,
        ]);
    }
    let mut names = vec!["preprocess", "members", "stacker", "explain", "end_to_end"];
    // The localiser (only when no ROI is given): alone, and end to end without a ROI.
    let mut localiser = Value::Null;
    let mut auto_stages: Vec<[f64; 2]> = Vec::new();
    if let Some(first_loc) = engine.localise(&img)? {
        let mut review_runs = 0usize;
        engine.predict(&img, None, clinical, explain)?;
        for _ in 0..iters {
            let l = engine.localise(&img)?.expect("the bundle has a localiser");
            let p = engine.predict(&img, None, clinical, explain)?;
            review_runs += p.review as usize;
            auto_stages.push([l.ms, p.timings.total_ms]);
        }
        names.extend(["localiser", "end_to_end_auto_roi"]);
        let spec = engine.spec().localiser.as_ref().expect("has a localiser");
        localiser = json!({
            "file": spec.file,
            "input_size": spec.input_size,
            "confidence": first_loc.confidence,
            "min_confidence": first_loc.min_confidence,
            "roi": first_loc.roi,
            "review_runs": review_runs,
        });
    }
    let x = engine.spec().preprocess.model_input(&img, roi)?;
    let tail = clinical_features(clinical.age, clinical.sex, clinical.site);
    if let Some(dir) = dump {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, values) in [("x.f32", &x[..]), ("clinical.f32", &tail[..])] {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let path = dir.join(name);
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let mut graphs = graph_bench(&engine, &x, &tail, iters)?;
    if profile {
        graphs["profile"] = profile_members(&engine, &x, iters)?;
    }
    let mut table = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        let mut v: Vec<f64> = if i < 5 {
            stages.iter().map(|s| s[i]).collect()
        } else {
            auto_stages.iter().map(|s| s[i - 5]).collect()
        };
        v.sort_by(f64::total_cmp);
        table.insert(
            name.to_string(),
            json!({"p50_ms": percentile(&v, 0.5), "p95_ms": percentile(&v, 0.95)}),
        );
    }
    // Resident memory: the process before and after loading the bundle, at the end, and its
    // peak (Linux /proc; null elsewhere).
    let memory = json!({
        "rss_before_load_kb": rss_before_kb,
        "rss_after_load_kb": rss_loaded_kb,
        "rss_end_kb": memory_kb("VmRSS"),
        "peak_rss_kb": memory_kb("VmHWM"),
    });
    let value = json!({
        "bundle": {"name": engine.spec().name, "version": engine.spec().version, "dir": engine.dir()},
        "backend": engine.backend(),
        "memory": memory,
        "threads": engine.threads(),
        "intra_op_threads": engine.intra_op_threads(),
        "members": engine.spec().members.len(),
        "input_size": engine.spec().preprocess.input_size,
        "explain": explain,
        "iters": iters,
        "image": {"width": img.width, "height": img.height, "decode_ms": decode_ms},
        "cold_start_ms": cold_ms,
        "first_run_ms": first.timings.total_ms,
        "stages": table,
        "localiser": localiser,
        "engine_logits": first.members,
        "engine_probability": first.probability,
        "graphs": graphs,
    });
    out.emit(&value, || {
        let mb = |k: &str| {
            memory[k].as_u64().map_or("n/a".to_owned(), |kb| {
                format!("{:.1} MiB", kb as f64 / 1024.0)
            })
        };
        let mut s = format!(
            "bundle {} {} ({} members, {}×{} input) on {}, {} thread(s) ({} intra-op), \
             {explain}, {iters} runs\n\
             cold start (load + optimise + plan): {cold_ms:.1} ms; first run {:.1} ms\n\
             resident memory: {} before load, {} loaded, {} at the end, peak {}\n",
            engine.spec().name,
            engine.spec().version,
            engine.spec().members.len(),
            engine.spec().preprocess.input_size,
            engine.spec().preprocess.input_size,
            engine.backend(),
            engine.threads(),
            engine.intra_op_threads(),
            first.timings.total_ms,
            mb("rss_before_load_kb"),
            mb("rss_after_load_kb"),
            mb("rss_end_kb"),
            mb("peak_rss_kb"),
        );
        for &name in &names {
            let v = &table[name];
            s += &format!(
                "  {name:<11} p50 {:>8.2} ms   p95 {:>8.2} ms\n",
                v["p50_ms"].as_f64().unwrap_or(f64::NAN),
                v["p95_ms"].as_f64().unwrap_or(f64::NAN)
            );
        }
        if !localiser.is_null() {
            let added = table["end_to_end_auto_roi"]["p50_ms"]
                .as_f64()
                .unwrap_or(f64::NAN)
                - table["end_to_end"]["p50_ms"].as_f64().unwrap_or(f64::NAN);
            s += &format!(
                "  (stages above end_to_end: with a given ROI; localiser and end_to_end_auto_roi: \
                 none given) added latency per study p50 {added:+.2} ms; localiser box {} \
                 confidence {:.3}, {} of {iters} runs not localised\n",
                localiser["roi"], localiser["confidence"], localiser["review_runs"]
            );
        }
        if decode_ms > 0.0 {
            s += &format!("  decode      {decode_ms:.2} ms (once)\n");
        }
        s += "each graph alone, batch 1, one after another on one thread (tract plans):\n";
        let row = |name: &str, v: &Value, extra: String| {
            format!(
                "  {name:<11} p50 {:>8.2} ms   p95 {:>8.2} ms{extra}\n",
                v["p50_ms"].as_f64().unwrap_or(f64::NAN),
                v["p95_ms"].as_f64().unwrap_or(f64::NAN)
            )
        };
        for m in graphs["members"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap_or("?");
            s += &row(name, m, format!("   logit {}", m["logit"]));
        }
        s += &row("stacker", &graphs["stacker"], String::new());
        let e = &graphs["ensemble_sequential"];
        s += &row(
            "ensemble",
            e,
            format!("   probability {}", e["probability"]),
        );
        s += "quantization variants, each alone (p50 / p95 ms, logit):\n";
        for m in graphs["quantization"].as_array().into_iter().flatten() {
            s += &format!("  {:<11}", m["name"].as_str().unwrap_or("?"));
            for kind in ["f32", "shipped", "full_int8"] {
                let v = &m[kind];
                if v.is_object() {
                    s += &format!(
                        "  {kind} {:.2} / {:.2} ({:.4})",
                        v["p50_ms"].as_f64().unwrap_or(f64::NAN),
                        v["p95_ms"].as_f64().unwrap_or(f64::NAN),
                        v["logit"].as_f64().unwrap_or(f64::NAN)
                    );
                } else {
                    s += &format!("  {kind} n/a");
                }
            }
            s += "\n";
        }
        for m in graphs["profile"].as_array().into_iter().flatten() {
            let total = m["total_ms"].as_f64().unwrap_or(f64::NAN);
            s += &format!(
                "{} per tract operator (mean of {iters} runs, {total:.2} ms timed):\n",
                m["name"].as_str().unwrap_or("?")
            );
            for op in m["ops"].as_array().into_iter().flatten() {
                let ms = op["ms"].as_f64().unwrap_or(f64::NAN);
                s += &format!(
                    "  {:<22} {:>4} nodes {ms:>8.3} ms {:>5.1}%\n",
                    op["op"].as_str().unwrap_or("?"),
                    op["nodes"],
                    100.0 * ms / total
                );
            }
        }
        s.trim_end().to_owned()
    });
    Ok(())
}

/// Where each member's plan (as the engine loads it) spends its time on `x`, per tract
/// operator, over `iters` runs.
fn profile_members(engine: &Engine, x: &[f32], iters: usize) -> Result<Value> {
    let spec = engine.spec();
    let s = spec.preprocess.input_size as usize;
    let mut rows = Vec::new();
    for m in &spec.members {
        let plan = Plan::load(
            &engine.dir().join(&m.file),
            &[1, s, s],
            &[MEMBER_LOGIT, MEMBER_CAM],
            &[MEMBER_FMAP],
            false,
        )?;
        plan.run(x, 1, &[1, s, s])?;
        let ops = plan.profile(x, &[1, s, s], iters)?;
        let total: f64 = ops.iter().map(|o| o.ms).sum();
        rows.push(json!({"name": m.name, "file": m.file, "total_ms": total, "ops": ops}));
    }
    Ok(json!(rows))
}

/// Each graph alone, as a runtime comparison needs it (`tools/bench_ort.py` times the same
/// files the same way): the members' plans and the stacker's, loaded as the engine loads
/// them, run at batch 1 on `x` one after another on this thread (tract runs a plan on one
/// thread), `iters` times after one warm-up run. `ensemble_sequential` is the whole
/// sequence: members, σ, the stacker.
fn graph_bench(engine: &Engine, x: &[f32], clinical: &[f32], iters: usize) -> Result<Value> {
    let spec = engine.spec();
    let s = spec.preprocess.input_size as usize;
    let plans = spec
        .members
        .iter()
        .map(|m| {
            Plan::load(
                &engine.dir().join(&m.file),
                &[1, s, s],
                &[MEMBER_LOGIT, MEMBER_CAM],
                &[MEMBER_FMAP],
                false,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let k = spec.stacker.features.len();
    let stacker = Plan::load(
        &engine.dir().join(&spec.stacker.file),
        &[k],
        &[STACKER_OUTPUT],
        &[],
        false,
    )?;
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let n = plans.len();
    // Per run: n member times, the stacker's, the whole sequence's.
    let run = |times: &mut Vec<f64>| -> Result<(Vec<f32>, f32)> {
        let start = Instant::now();
        let mut logits = Vec::with_capacity(n);
        for plan in &plans {
            let t = Instant::now();
            let out = plan.run(x, 1, &[1, s, s])?;
            times.push(ms(t));
            logits.push(out[0].values[0]);
        }
        let mut features: Vec<f32> = logits.iter().map(|&l| sigmoid(l)).collect();
        features.extend_from_slice(clinical);
        let t = Instant::now();
        let p = stacker.run(&features, 1, &[k])?[0].values[0];
        times.push(ms(t));
        times.push(ms(start));
        Ok((logits, p))
    };
    let (logits, probability) = run(&mut Vec::new())?;
    let mut times: Vec<Vec<f64>> = Vec::with_capacity(iters);
    for _ in 0..iters {
        let mut t = Vec::with_capacity(n + 2);
        run(&mut t)?;
        times.push(t);
    }
    let stats = |i: usize| {
        let mut v: Vec<f64> = times.iter().map(|t| t[i]).collect();
        v.sort_by(f64::total_cmp);
        json!({"p50_ms": percentile(&v, 0.5), "p95_ms": percentile(&v, 0.95)})
    };
    let members: Vec<Value> = spec
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut v = stats(i);
            v["name"] = json!(m.name);
            v["file"] = json!(m.file);
            v["logit"] = json!(logits[i]);
            v
        })
        .collect();
    let mut stacker_v = stats(n);
    stacker_v["file"] = json!(spec.stacker.file);
    let mut ensemble = stats(n + 1);
    ensemble["probability"] = json!(probability);
    Ok(json!({
        "runtime": "tract",
        "threads": 1,
        "batch": 1,
        "members": members,
        "stacker": stacker_v,
        "ensemble_sequential": ensemble,
        "quantization": quantization_bench(engine, x, iters)?,
    }))
}

/// Each member's f32 original, its shipped (weight-only int8) file and its full-int8 (QDQ)
/// file, where the bundle has them, timed alone at batch 1 on this thread, the variants
/// interleaved run by run so load drifts hit them alike.
fn quantization_bench(engine: &Engine, x: &[f32], iters: usize) -> Result<Vec<Value>> {
    let spec = engine.spec();
    let s = spec.preprocess.input_size as usize;
    let mut rows = Vec::new();
    for m in &spec.members {
        let files = [
            ("f32", Some(tirp_models::quantize::f32_file(&m.name))),
            ("shipped", Some(m.file.clone())),
            ("full_int8", m.full_int8_file.clone()),
        ];
        let mut variants = Vec::new();
        for (kind, file) in files {
            let Some(file) = file else { continue };
            let path = engine.dir().join(&file);
            if !path.is_file() {
                continue;
            }
            let plan = Plan::load(&path, &[1, s, s], &[MEMBER_LOGIT, MEMBER_CAM], &[], false)?;
            let logit = plan.run(x, 1, &[1, s, s])?[0].values[0];
            variants.push((kind, file, plan, logit, Vec::with_capacity(iters)));
        }
        for _ in 0..iters {
            for (_, _, plan, _, times) in &mut variants {
                let t = Instant::now();
                plan.run(x, 1, &[1, s, s])?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let mut row = json!({"name": m.name});
        for (kind, file, _, logit, mut times) in variants {
            times.sort_by(f64::total_cmp);
            row[kind] = json!({
                "file": file,
                "logit": logit,
                "p50_ms": percentile(&times, 0.5),
                "p95_ms": percentile(&times, 0.95),
            });
        }
        rows.push(row);
    }
    Ok(rows)
}
