//! `tirp audit …`: the study's statistics on a box's predictions, for QA and auditors.

use super::Output;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tirp_host::audit::input::CsvTable;
use tirp_host::audit::readers::{self, Read, ReaderResult, ReaderStudy};
use tirp_host::audit::{report, store};
use tirp_host::stats::agreement;
use tirp_host::stats::confusion::Proportion;
use tirp_host::stats::roc::{self, AucCi};

const LEVEL: f64 = 0.95;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// AUC with 95% CI (DeLong, or stratified bootstrap) and the Youden point per score column;
    /// DeLong's paired test when there are two score columns. Higher score means positive.
    Roc {
        #[arg(long)]
        csv: PathBuf,
        /// Column of the truth label.
        #[arg(long)]
        label: String,
        /// Label value of the positive class (e.g. infection).
        #[arg(long)]
        positive: String,
        /// Label value of the negative class (default: the one other value present).
        #[arg(long)]
        negative: Option<String>,
        /// Score column(s), higher = more likely positive.
        #[arg(long, required = true)]
        score: Vec<String>,
        /// Stratified bootstrap replicates for the CI instead of DeLong.
        #[arg(long)]
        bootstrap: Option<usize>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Fleiss' κ (with its standard error) from long-format calls, one row per (case, rater).
    Kappa {
        #[arg(long)]
        csv: PathBuf,
        #[arg(long, default_value = "case")]
        case: String,
        #[arg(long, default_value = "rater")]
        rater: String,
        #[arg(long, default_value = "call")]
        call: String,
    },
    /// A reader study: readers and groups against the truth and the model ensemble.
    Readers(ReadersArgs),
    /// Self-contained HTML report (ROC with CI bands, confusion matrices, calibration,
    /// histograms, per-centre and per-version tables, drift).
    Report(ReportArgs),
    /// Import predictions (CSV or JSONL) and/or truth labels into the SQLite audit store;
    /// re-importing the same rows changes nothing.
    Import {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        predictions: Option<PathBuf>,
        #[arg(long)]
        truth: Option<PathBuf>,
        /// The positive class as it appears in the truth labels.
        #[arg(long, default_value = "infection")]
        positive: String,
    },
    /// Times AUC + DeLong CI on N seeded scores on one core (release build for real figures).
    #[command(hide = true)]
    Bench {
        #[arg(long, default_value_t = 1_000_000)]
        n: usize,
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
}

#[derive(Args)]
pub struct ReadersArgs {
    /// Reads: columns reader, group, case, call.
    #[arg(long)]
    reads: PathBuf,
    /// Truth: columns case, label.
    #[arg(long)]
    truth: PathBuf,
    /// Model calls: columns model, case, call (a model named `ensemble` is the ensemble).
    #[arg(long)]
    models: Option<PathBuf>,
    /// The positive class as it appears in calls and labels.
    #[arg(long, default_value = "infection")]
    positive: String,
}

/// `tirp cohort readers`: a seeded, simulated reader panel over a cohort split.
#[derive(Args)]
pub struct CohortReadersArgs {
    /// The cohort's labels.csv.
    #[arg(long)]
    labels: PathBuf,
    #[arg(long, default_value = "test")]
    split: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory for reads.csv and truth.csv (the inputs of `tirp audit readers`).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct ReportArgs {
    /// Predictions CSV: case, model, score [, centre, model_version, device, time].
    #[arg(long, conflicts_with = "db")]
    predictions: Option<PathBuf>,
    /// Truth CSV: case, label.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Report from the audit store instead of CSV files.
    #[arg(long)]
    db: Option<PathBuf>,
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    model_version: Option<String>,
    /// Inclusive start date (YYYY-MM-DD) of the window.
    #[arg(long)]
    since: Option<String>,
    /// Inclusive end date (YYYY-MM-DD).
    #[arg(long)]
    until: Option<String>,
    #[arg(long, default_value = "infection")]
    positive: String,
    /// The operating threshold (a score at or above it is flagged).
    #[arg(long, default_value_t = 0.5)]
    threshold: f64,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(cmd: AuditCommand, out: &Output) -> Result<()> {
    match cmd {
        AuditCommand::Roc {
            csv,
            label,
            positive,
            negative,
            score,
            bootstrap,
            seed,
        } => roc_cmd(
            &csv,
            &label,
            &positive,
            negative.as_deref(),
            &score,
            bootstrap,
            seed,
            out,
        ),
        AuditCommand::Kappa {
            csv,
            case,
            rater,
            call,
        } => kappa_cmd(&csv, &case, &rater, &call, out),
        AuditCommand::Readers(a) => readers_cmd(&a, out),
        AuditCommand::Report(a) => report_cmd(&a, out),
        AuditCommand::Import {
            db,
            predictions,
            truth,
            positive,
        } => import_cmd(&db, predictions, truth, &positive, out),
        AuditCommand::Bench { n, repeat } => bench_cmd(n, repeat, out),
    }
}

fn ci_json(name: &str, ci: &AucCi, n_pos: usize, n_neg: usize, y: &roc::RocPoint) -> Value {
    json!({
        "name": name, "auc": ci.auc, "ci_low": ci.low, "ci_high": ci.high,
        "ci_method": ci.method.as_str(), "n_pos": n_pos, "n_neg": n_neg,
        "youden": {"threshold": y.threshold, "sensitivity": y.sensitivity, "specificity": y.specificity},
    })
}

#[allow(clippy::too_many_arguments)]
fn roc_cmd(
    path: &Path,
    label: &str,
    positive: &str,
    negative: Option<&str>,
    scores: &[String],
    bootstrap: Option<usize>,
    seed: u64,
    out: &Output,
) -> Result<()> {
    let t = CsvTable::read(path)?;
    let labels = t.binary(label, positive, negative)?;
    let n_pos = labels.iter().filter(|&&l| l).count();
    let n_neg = labels.len() - n_pos;
    let mut rows = Vec::new();
    let mut columns = Vec::new();
    for name in scores {
        let s = t.floats(name)?;
        let ci = match bootstrap {
            Some(b) => {
                // Long on big files: a spinner on stderr (hidden when stderr is not a terminal).
                let spin = indicatif::ProgressBar::new_spinner()
                    .with_message(format!("'{name}': {b} stratified bootstrap replicates"));
                spin.enable_steady_tick(std::time::Duration::from_millis(120));
                let r = roc::auc_bootstrap_ci(&s, &labels, b, seed, LEVEL);
                spin.finish_and_clear();
                r
            }
            None => roc::auc_delong_ci(&s, &labels, LEVEL),
        }
        .with_context(|| format!("score column '{name}'"))?;
        let y = roc::youden(&roc::roc_curve(&s, &labels)?).context("empty ROC curve")?;
        rows.push((ci, y));
        columns.push(s);
    }
    let mut value = json!({
        "scores": scores.iter().zip(&rows).map(|(n, (ci, y))| ci_json(n, ci, n_pos, n_neg, y)).collect::<Vec<_>>(),
    });
    let comparison = if scores.len() == 2 {
        let c = roc::delong_test(&columns[0], &columns[1], &labels)
            .with_context(|| format!("DeLong test of '{}' against '{}'", scores[0], scores[1]))?;
        value["comparison"] = json!({"a": scores[0], "b": scores[1], "z": c.z, "p": c.p});
        Some(c)
    } else {
        None
    };
    out.emit(&value, || {
        let mut s = format!(
            "{n_pos} positive ({positive}), {n_neg} negative; 95% CI by {}\n",
            if bootstrap.is_some() {
                "stratified bootstrap"
            } else {
                "DeLong"
            }
        );
        s += &format!(
            "{:<20} {:>7} {:>17}   {:>10} {:>6} {:>6}\n",
            "score", "AUC", "95% CI", "Youden thr", "sens", "spec"
        );
        for (n, (ci, y)) in scores.iter().zip(&rows) {
            s += &format!(
                "{:<20} {:>7.4} {:>17}   {:>10.4} {:>6.3} {:>6.3}\n",
                n,
                ci.auc,
                format!("{:.4}–{:.4}", ci.low, ci.high),
                y.threshold,
                y.sensitivity,
                y.specificity
            );
        }
        if let Some(c) = comparison {
            s += &format!(
                "DeLong paired test {} vs {}: z = {:.4}, {}\n",
                scores[0],
                scores[1],
                c.z,
                tirp_host::stats::format_p(c.p)
            );
        }
        s.trim_end().to_string()
    });
    Ok(())
}

fn kappa_cmd(path: &Path, case: &str, rater: &str, call: &str, out: &Output) -> Result<()> {
    let t = CsvTable::read(path)?;
    let (cases, raters, calls) = (t.strings(case)?, t.strings(rater)?, t.strings(call)?);
    let mut categories: Vec<&str> = calls.iter().map(String::as_str).collect();
    categories.sort_unstable();
    categories.dedup();
    // case → (first row, counts per category, raters seen)
    let mut by_case: BTreeMap<&str, (usize, Vec<u64>, Vec<&str>)> = BTreeMap::new();
    for (row, ((c, r), k)) in cases.iter().zip(&raters).zip(&calls).enumerate() {
        let e = by_case
            .entry(c)
            .or_insert_with(|| (row, vec![0; categories.len()], Vec::new()));
        if e.2.contains(&r.as_str()) {
            return Err(t
                .bad(row, rater, format!("rater '{r}' calls case '{c}' twice"))
                .into());
        }
        e.2.push(r);
        e.1[categories
            .binary_search(&k.as_str())
            .expect("category listed")] += 1;
    }
    let expected = by_case
        .values()
        .next()
        .map(|e| e.2.len())
        .context("no calls")?;
    if let Some((c, e)) = by_case.iter().find(|(_, e)| e.2.len() != expected) {
        bail!(t.bad(
            e.0,
            case,
            format!(
                "case '{c}' has {} calls, the first case has {expected}; every case needs the same number of calls",
                e.2.len()
            )
        ));
    }
    let table: Vec<Vec<u64>> = by_case.values().map(|e| e.1.clone()).collect();
    let k = agreement::fleiss_kappa(&table).with_context(|| format!("{}", path.display()))?;
    let value = json!({
        "fleiss_kappa": k.kappa, "se": k.se, "n_cases": k.n_cases, "n_raters": k.n_raters,
        "categories": categories,
    });
    out.emit(&value, || {
        format!(
            "Fleiss' κ = {:.4} (SE {:.4}, z = {:.2}, p = {:.2e}); {} cases × {} raters; categories: {}",
            k.kappa,
            k.se,
            k.z,
            k.p,
            k.n_cases,
            k.n_raters,
            categories.join(", ")
        )
    });
    Ok(())
}

/// Long-format calls of `path` (the reader column named `who`).
fn load_reads(path: &Path, who: &str, group: Option<&str>, positive: &str) -> Result<Vec<Read>> {
    let t = CsvTable::read(path)?;
    let names = t.strings(who)?;
    let groups = match group {
        Some(g) => t.strings(g)?,
        None => vec!["models".to_string(); t.len()],
    };
    let cases = t.strings("case")?;
    let calls = t.binary("call", positive, None)?;
    Ok((0..t.len())
        .map(|i| Read {
            reader: names[i].clone(),
            group: groups[i].clone(),
            case: cases[i].clone(),
            positive: calls[i],
        })
        .collect())
}

fn load_truth(path: &Path, positive: &str) -> Result<HashMap<String, bool>> {
    let t = CsvTable::read(path)?;
    let labels = t.binary("label", positive, None)?;
    Ok(t.unique_map("case", &labels)?)
}

fn pct(p: &Proportion) -> String {
    format!(
        "{:5.1}% ({:.1}–{:.1})",
        100.0 * p.value,
        100.0 * p.ci_low,
        100.0 * p.ci_high
    )
}

fn reader_line(r: &ReaderResult) -> String {
    format!(
        "{:<14} {:<10} {:>22} {:>22} {:>22}",
        r.reader,
        r.group,
        pct(&r.metrics.accuracy),
        pct(&r.metrics.sensitivity),
        pct(&r.metrics.specificity)
    )
}

fn readers_human(s: &ReaderStudy) -> String {
    let mut o = format!(
        "{} cases\n{:<14} {:<10} {:>22} {:>22} {:>22}\n",
        s.n_cases, "reader", "group", "accuracy (95% CI)", "sensitivity", "specificity"
    );
    for r in s.models.iter().chain(&s.ensemble).chain(&s.readers) {
        o += &reader_line(r);
        o += "\n";
    }
    o += "\ngroup        readers  accuracy (95% CI)       Fleiss κ (SE)     McNemar ensemble vs group\n";
    for g in &s.groups {
        let k = g
            .fleiss
            .map_or("–".into(), |k| format!("{:.3} ({:.3})", k.kappa, k.se));
        let m = g.mcnemar_vs_ensemble.map_or("–".into(), |m| {
            format!(
                "only ensemble right {}, only group {}, {}",
                m.only_a,
                m.only_b,
                tirp_host::stats::format_p(m.p)
            )
        });
        o += &format!(
            "{:<12} {:>7}  {:>22}  {:<16}  {}\n",
            g.group,
            g.readers,
            pct(&g.metrics.accuracy),
            k,
            m
        );
    }
    if let Some(k) = s.readers_fleiss {
        o += &format!("all readers: Fleiss κ {:.3} (SE {:.3})\n", k.kappa, k.se);
    }
    if let Some(k) = s.models_fleiss {
        o += &format!("models: Fleiss κ {:.3} (SE {:.3})\n", k.kappa, k.se);
    }
    o.trim_end().to_string()
}

fn readers_cmd(a: &ReadersArgs, out: &Output) -> Result<()> {
    let reads = load_reads(&a.reads, "reader", Some("group"), &a.positive)?;
    let models = match &a.models {
        Some(m) => load_reads(m, "model", None, &a.positive)?,
        None => Vec::new(),
    };
    let truth = load_truth(&a.truth, &a.positive)?;
    let study = readers::analyse(&reads, &models, &truth)?;
    out.emit(&serde_json::to_value(&study)?, || readers_human(&study));
    Ok(())
}

/// Simulates the DeepTIRP radiologist panel (junior, mid-level, senior; 3 readers each) on one
/// split of a cohort and writes `reads.csv` and `truth.csv`.
pub fn cohort_readers(a: CohortReadersArgs, out: &Output) -> Result<()> {
    use tirp_host::audit::simulate;
    let split: tirp_models::table::Split = a.split.parse().map_err(anyhow::Error::msg)?;
    let table = tirp_models::table::LabelTable::load(&a.labels)
        .with_context(|| format!("reading {}", a.labels.display()))?;
    let cases = simulate::cohort_cases(&table, split).map_err(anyhow::Error::msg)?;
    let (groups, kappa) = simulate::deeptirp_radiologists();
    let reads = simulate::simulate_panel(&cases, &groups, kappa, a.seed);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let name = |p: bool| if p { "infection" } else { "pbt" };
    let reads_path = a.out.join("reads.csv");
    let mut w = csv::Writer::from_path(&reads_path)
        .with_context(|| format!("writing {}", reads_path.display()))?;
    w.write_record(["reader", "group", "case", "call"])?;
    for r in &reads {
        w.write_record([
            r.reader.as_str(),
            r.group.as_str(),
            r.case.as_str(),
            name(r.positive),
        ])?;
    }
    w.flush()?;
    let truth_path = a.out.join("truth.csv");
    let mut w = csv::Writer::from_path(&truth_path)
        .with_context(|| format!("writing {}", truth_path.display()))?;
    w.write_record(["case", "label"])?;
    for (c, t) in &cases {
        w.write_record([c.as_str(), name(*t)])?;
    }
    w.flush()?;
    let value = json!({"cases": cases.len(), "readers": groups.iter().map(|g| g.readers).sum::<usize>(),
                       "reads": reads_path, "truth": truth_path, "split": split.to_string(), "seed": a.seed});
    out.emit(&value, || {
        format!(
            "{} simulated reads of {} {} cases by {} groups → {}, {}",
            reads.len(),
            cases.len(),
            split,
            groups.len(),
            reads_path.display(),
            truth_path.display()
        )
    });
    Ok(())
}

fn report_cmd(a: &ReportArgs, out: &Output) -> Result<()> {
    let (predictions, source) = match (&a.db, &a.predictions) {
        (Some(db), _) => {
            let filter = store::Filter {
                device: a.device.clone(),
                model_version: a.model_version.clone(),
                since: a.since.clone(),
                until: a.until.clone(),
            };
            let mut s = store::AuditStore::open(db)?;
            if let Some(t) = &a.truth {
                s.import_truth(&store::read_truth_csv(t, &a.positive)?)?;
            }
            (
                s.joined(&filter)?,
                format!("audit store {} ({})", db.display(), filter.describe()),
            )
        }
        (None, Some(p)) => {
            let truth = a
                .truth
                .as_ref()
                .context("--truth is required with --predictions")?;
            (
                report::load_csv(p, truth, &a.positive)?,
                format!("{} with truth {}", p.display(), truth.display()),
            )
        }
        (None, None) => bail!("give --predictions F --truth F, or --db F"),
    };
    let opts = report::Options {
        threshold: a.threshold,
        seed: a.seed,
        source,
        positive: a.positive.clone(),
    };
    let r = report::build(&predictions, &opts)?;
    std::fs::write(&a.out, &r.html).with_context(|| format!("writing {}", a.out.display()))?;
    out.emit(&r.summary, || {
        format!("report written to {}\n{}", a.out.display(), r.human)
    });
    Ok(())
}

fn import_cmd(
    db: &Path,
    predictions: Option<PathBuf>,
    truth: Option<PathBuf>,
    positive: &str,
    out: &Output,
) -> Result<()> {
    if predictions.is_none() && truth.is_none() {
        bail!("nothing to import: give --predictions and/or --truth");
    }
    let mut s = store::AuditStore::open(db)?;
    let mut value = json!({});
    if let Some(p) = predictions {
        let rows = store::read_predictions(&p)?;
        let n = s.import_predictions(&rows)?;
        value["predictions"] = json!({"read": rows.len(), "new": n});
    }
    if let Some(t) = truth {
        let rows = store::read_truth_csv(&t, positive)?;
        let n = s.import_truth(&rows)?;
        value["truth"] = json!({"read": rows.len(), "new": n});
    }
    out.emit(&value, || {
        let mut s = String::new();
        for (k, v) in value.as_object().expect("object") {
            s += &format!("{k}: {} read, {} new\n", v["read"], v["new"]);
        }
        s.trim_end().to_string()
    });
    Ok(())
}

fn bench_cmd(n: usize, repeat: usize, out: &Output) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let labels: Vec<bool> = (0..n).map(|_| rng.random_bool(0.3)).collect();
    // Scores on a 1e-4 grid so that ties occur, as with a quantized model's outputs.
    let scores: Vec<f64> = labels
        .iter()
        .map(|&l| ((rng.random::<f64>() + if l { 0.3 } else { 0.0 }).min(1.0) * 1e4).round() / 1e4)
        .collect();
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let t0 = std::time::Instant::now();
        last = Some(roc::auc_delong_ci(&scores, &labels, LEVEL)?);
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let ci = last.expect("ran once");
    let value = json!({"n": n, "repeat": times.len(), "median_s": times[times.len() / 2], "min_s": times[0],
                       "auc": ci.auc, "ci_low": ci.low, "ci_high": ci.high,
                       "profile": if cfg!(debug_assertions) { "debug" } else { "release" }});
    out.emit(&value, || {
        format!(
            "AUC + DeLong CI on {n} scores, one core ({} build): median {:.3} s, best {:.3} s over {} runs (AUC {:.4}, CI {:.4}–{:.4})",
            value["profile"].as_str().unwrap_or(""),
            times[times.len() / 2],
            times[0],
            times.len(),
            ci.auc,
            ci.low,
            ci.high
        )
    });
    Ok(())
}
