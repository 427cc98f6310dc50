//! `tirp`: the command line of field engineers and auditors.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "tirp",
    version,
    about = "DeepTIRP Edge host tool: cohort, models, provisioning, audit"
)]
struct Cli {
    /// Machine-readable JSON on stdout instead of human output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Synthetic multi-centre radiograph cohort: generate, preview, check its difficulty.
    #[command(subcommand)]
    Cohort(cli::cohort::CohortCommand),
    /// Audit performance with the study's statistics: ROC/AUC, κ, reader studies, HTML reports.
    #[command(subcommand)]
    Audit(cli::audit::AuditCommand),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let out = cli::Output { json: cli.json };
    match cli.command {
        Command::Cohort(cmd) => cli::cohort::run(cmd, &out),
        Command::Audit(cmd) => cli::audit::run(cmd, &out),
    }
}
