//! Trains one image member on a cohort (generated here unless `--labels` names a table),
//! exports it to ONNX (f32 and weight-only int8) and checks it in tract; prints measured
//! step and epoch times. The groundwork of `tirp train` (issue 3).
//!
//!     cargo run --release -p tirp-models --example train_member -- --member resnet --patients 400

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;
use tirp_firmware::preprocess::PreprocessSpec;
use tirp_models::cohort::{self, CohortConfig};
use tirp_models::nets::{
    self, EffNet, EffNetConfig, Member, MemberKind, ResNet, ResNetConfig, Vit, VitConfig,
};
use tirp_models::onnx::check::TractMember;
use tirp_models::onnx::quant::weight_only_int8;
use tirp_models::table::{LabelTable, Split};
use tirp_models::train::{self, CropSet, TrainConfig, TrainEvent};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "resnet")]
    member: String,
    /// Label table (cohort labels.csv or DeepTIRP format); a cohort is generated if absent.
    #[arg(long)]
    labels: Option<PathBuf>,
    #[arg(long, default_value_t = 400)]
    patients: usize,
    #[arg(long, default_value_t = 128)]
    size: usize,
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 17)]
    seed: u64,
    #[arg(long, default_value = "target/train-member")]
    out: PathBuf,
}

fn bar(len: u64, prefix: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_owned());
    pb
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let labels = match &args.labels {
        Some(l) => l.clone(),
        None => {
            let dir = args.out.join("cohort");
            let cfg = CohortConfig {
                patients: args.patients,
                ..Default::default()
            };
            let pb = bar(0, "cohort");
            let summary = cohort::generate(&cfg, &dir, &|done, total| {
                pb.set_length(total as u64);
                pb.set_position(done as u64);
            })?;
            pb.finish_and_clear();
            eprintln!(
                "cohort: {} images in {:.1} s",
                summary.images, summary.seconds
            );
            summary.labels
        }
    };
    let table = LabelTable::load(&labels)?;
    let (train_recs, val_recs) = (table.split(Split::Train), table.split(Split::Validation));
    if val_recs.is_empty() {
        bail!(
            "{} has no validation split: the best epoch is chosen on it",
            labels.display()
        );
    }
    let mut spec = PreprocessSpec {
        input_size: args.size as u32,
        ..Default::default()
    };
    let t0 = Instant::now();
    let pb = bar((train_recs.len() + val_recs.len()) as u64, "crops");
    let mut train_set = CropSet::load(&train_recs, &spec, &|| pb.inc(1))?;
    let mut val_set = CropSet::load(&val_recs, &spec, &|| pb.inc(1))?;
    pb.finish_and_clear();
    let (mean, std) = train_set.mean_std();
    (spec.mean, spec.std) = (mean, std);
    train_set.standardise(mean, std);
    val_set.standardise(mean, std);
    eprintln!(
        "crops: {} train, {} validation in {:.1} s (mean {mean:.4}, std {std:.4})",
        train_set.len(),
        val_set.len(),
        t0.elapsed().as_secs_f64()
    );
    let cfg = TrainConfig {
        seed: args.seed,
        epochs: args.epochs,
        batch_size: args.batch,
        ..Default::default()
    };
    let s = args.size;
    let sets = (&train_set, &val_set, &spec);
    match args.member.as_str() {
        "resnet" => {
            let c = ResNetConfig {
                input_size: s,
                ..Default::default()
            };
            run(
                train::init(cfg.seed, |d| ResNet::new(&c, d)),
                sets,
                &cfg,
                &args,
            )
        }
        "effnet" => {
            let c = EffNetConfig {
                input_size: s,
                ..Default::default()
            };
            run(
                train::init(cfg.seed, |d| EffNet::new(&c, d)),
                sets,
                &cfg,
                &args,
            )
        }
        "vit" => {
            let c = VitConfig {
                input_size: s,
                ..Default::default()
            };
            run(
                train::init(cfg.seed, |d| Vit::new(&c, d)),
                sets,
                &cfg,
                &args,
            )
        }
        other => bail!(
            "unknown member `{other}`: one of {}",
            MemberKind::ALL.map(|k| k.as_str()).join(", ")
        ),
    }
}

fn run<M: Member>(
    model: M,
    (train_set, val, spec): (&CropSet, &CropSet, &PreprocessSpec),
    cfg: &TrainConfig,
    args: &Args,
) -> Result<()> {
    eprintln!("{}: {} parameters", M::KIND, model.num_params());
    let start = Instant::now();
    let mut pb: Option<ProgressBar> = None;
    let trained = train::fit(model, train_set, val, cfg, &mut |ev| match ev {
        TrainEvent::Step {
            epoch,
            step,
            steps,
            loss,
        } => {
            let p = pb.get_or_insert_with(|| bar(steps as u64, &format!("epoch {}", epoch + 1)));
            p.set_position(step as u64 + 1);
            p.set_message(format!("loss {loss:.4}"));
        }
        TrainEvent::Epoch(st) => {
            if let Some(p) = pb.take() {
                p.finish_and_clear();
            }
            eprintln!(
                "epoch {:>2}: lr {:.1e} train loss {:.4} val loss {:.4} val AUC {:.4} | {:.1} s, {:.3} s/step",
                st.epoch + 1,
                st.lr,
                st.train_loss,
                st.val_loss,
                st.val_auc,
                st.seconds,
                st.seconds_per_step
            );
        }
    })?;
    let total = start.elapsed().as_secs_f64();
    let best = &trained.history[trained.best_epoch];
    // What inference needs besides the graph: the preprocessing, standardisation included.
    let record = serde_json::json!({
        "member": M::KIND,
        "parameters": trained.model.num_params(),
        "preprocess": spec,
        "train": cfg,
        "best_epoch": trained.best_epoch,
        "history": trained.history,
        "training_seconds": total,
    });
    let json_path = args.out.join(format!("{}.json", M::KIND));
    std::fs::write(&json_path, serde_json::to_string_pretty(&record)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    eprintln!(
        "{}: best epoch {} (val AUC {:.4}); training {:.1} s",
        M::KIND,
        trained.best_epoch + 1,
        best.val_auc,
        total
    );
    let model = nets::export(&trained.model)?;
    let path = args.out.join(format!("{}.onnx", M::KIND));
    model.save(&path)?;
    let q = weight_only_int8(&model);
    let qpath = args.out.join(format!("{}.int8.onnx", M::KIND));
    q.save(&qpath)?;
    // Parity and the int8 effect on the whole validation split, through tract.
    let burn_logits = train::predict(&trained.model, val, 64)?;
    let f = TractMember::load(&model.to_bytes(), val.size)?;
    let i8m = TractMember::load(&q.to_bytes(), val.size)?;
    let (mut tf, mut tq) = (Vec::new(), Vec::new());
    let idx: Vec<usize> = (0..val.len()).collect();
    let t = Instant::now();
    for chunk in idx.chunks(16) {
        let (x, _) = val.batch::<rand_chacha::ChaCha8Rng>(chunk, None);
        tf.extend(f.run(&x, chunk.len())?.logits);
        tq.extend(i8m.run(&x, chunk.len())?.logits);
    }
    let tract_ms = t.elapsed().as_secs_f64() * 1e3 / (2 * val.len()) as f64;
    let diff = burn_logits
        .iter()
        .zip(&tf)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "export: {} ({} B), {} ({} B)\n  max |logit diff| burn vs tract {diff:.2e}; val AUC f32 {:.4}, weight-only int8 {:.4}; tract {tract_ms:.2} ms/image (batch 16)",
        path.display(),
        model.to_bytes().len(),
        qpath.display(),
        q.to_bytes().len(),
        train::auc(&tf, &val.labels),
        train::auc(&tq, &val.labels),
    );
    Ok(())
}
