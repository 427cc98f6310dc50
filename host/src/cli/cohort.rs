//! `tirp cohort …`: generate the synthetic cohort, preview it, measure how hard it is.

use super::Output;
use anyhow::{Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use tirp_models::cohort::{self, CohortConfig, ImageFormat};
use tirp_models::table::LabelTable;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Png,
    Dicom,
}

#[derive(Subcommand)]
pub enum CohortCommand {
    /// Render the cohort: 16-bit PNG radiographs plus DIR/labels.csv and DIR/cohort.json.
    Generate {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = CohortConfig::default().seed)]
        seed: u64,
        /// Number of patients (the study had 1,992), split in the study's proportions.
        #[arg(long, default_value_t = CohortConfig::default().patients)]
        patients: usize,
        /// Side of the square radiographs, pixels.
        #[arg(long, default_value_t = CohortConfig::default().image_size)]
        size: u32,
        /// Image files: 16-bit PNG, or DX DICOM with age, sex and body part in the header.
        #[arg(long, value_enum, default_value = "png")]
        format: Format,
    },
    /// Write a contact sheet PNG: examples per class and centre with lesion boxes drawn.
    Preview {
        /// The cohort's labels.csv (or any table in the cohort format).
        #[arg(long)]
        labels: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Examples per class and centre.
        #[arg(long, default_value_t = 5)]
        per_row: usize,
    },
    /// Simulate a seeded reader panel (junior, mid-level, senior radiologists, calibrated to the
    /// study's accuracies and κ) over a split: writes OUT/reads.csv and OUT/truth.csv.
    Readers(super::audit::CohortReadersArgs),
    /// Measure how hard a cohort is: logistic regressions on the latent signs and on the
    /// clinical characteristics (fitted on train, AUC with DeLong 95% CI on test/external).
    Difficulty {
        /// The cohort's labels.csv.
        #[arg(long)]
        labels: PathBuf,
    },
}

pub fn run(cmd: CohortCommand, out: &Output) -> Result<()> {
    match cmd {
        CohortCommand::Generate {
            out: dir,
            seed,
            patients,
            size,
            format,
        } => {
            let format = match format {
                Format::Png => ImageFormat::Png,
                Format::Dicom => ImageFormat::Dicom,
            };
            let cfg = CohortConfig {
                seed,
                patients,
                image_size: size,
                format,
            };
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} rendering [{bar:40}] {pos}/{len} radiographs {per_sec} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            let summary = cohort::generate(&cfg, &dir, &|done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })
            .with_context(|| format!("generating the cohort in {}", dir.display()))?;
            bar.finish_and_clear();
            out.emit(&serde_json::to_value(&summary)?, || {
                format!(
                    "{} patients, {} radiographs in {:.1} s ({:.0} radiographs/s)\nlabels: {} (sha256 {})",
                    summary.patients,
                    summary.images,
                    summary.seconds,
                    summary.images_per_second,
                    summary.labels.display(),
                    summary.labels_sha256
                )
            });
            Ok(())
        }
        CohortCommand::Readers(a) => super::audit::cohort_readers(a, out),
        CohortCommand::Preview {
            labels,
            out: path,
            per_row,
        } => {
            anyhow::ensure!(
                (1..=20).contains(&per_row),
                "--per-row must be between 1 and 20"
            );
            let (rows, tiles) = tirp_models::preview::contact_sheet(&labels, &path, per_row)
                .with_context(|| format!("previewing {}", labels.display()))?;
            out.emit(
                &serde_json::json!({ "out": path, "rows": rows, "tiles": tiles }),
                || {
                    format!(
                        "wrote {} ({rows} rows, {tiles} radiographs)",
                        path.display()
                    )
                },
            );
            Ok(())
        }
        CohortCommand::Difficulty { labels } => {
            let table = LabelTable::load(&labels)
                .with_context(|| format!("reading {}", labels.display()))?;
            let rows = tirp_host::difficulty::measure(&table.records)?;
            out.emit(&serde_json::to_value(&rows)?, || {
                let mut t = format!(
                    "{:<20} {:<9} {:>8} {:>6}  95% CI (DeLong)\n",
                    "features", "split", "patients", "AUC"
                );
                for r in &rows {
                    let name = serde_json::to_value(r.features)
                        .expect("enum")
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    t += &format!(
                        "{:<20} {:<9} {:>8} {:>6.3}  {:.3}–{:.3}\n",
                        name, r.split, r.patients, r.auc, r.ci_low, r.ci_high
                    );
                }
                t.trim_end().to_owned()
            });
            Ok(())
        }
    }
}
