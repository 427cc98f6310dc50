//! `tirp`: the command line of field engineers and auditors.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "tirp",
    version,
    about = "DeepTIRP Edge host tool: cohort, models, provisioning, audit",
    after_help = cli::device::EXIT_CODES_HELP
)]
struct Cli {
    /// Machine-readable JSON on stdout instead of human output.
    #[arg(long, global = true)]
    json: bool,
    /// Serial connection to the device (`--port`, `--baud`, `--non-interactive`).
    #[command(flatten)]
    conn: cli::device::ConnArgs,
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
    /// Device over the serial link: ports, info, status, flash, activate, rollback, logs.
    #[command(flatten)]
    Device(cli::device::DeviceCommand),
    /// Signed model bundles: build, sign, verify, inspect.
    #[command(subcommand)]
    Bundle(cli::bundle::BundleCommand),
    /// Train the ensemble (members, clinical model, stacker) into a bundle with its model card.
    Train(cli::train::TrainArgs),
    /// Train the lesion localiser on a cohort's boxes into a bundle (localiser.onnx + report).
    TrainLocaliser(cli::localiser::TrainLocaliserArgs),
    /// Add full-int8 (QDQ) member files to a trained bundle, calibrated on its training images.
    Quantize(cli::quantize::QuantizeArgs),
    /// Flag one radiograph (PNG, JPEG, DICOM) with a model bundle: probability, heat-map.
    Predict(cli::predict::PredictArgs),
    /// Score a labelled table with a bundle: predictions CSV for `tirp audit`, AUC.
    Eval(cli::predict::EvalArgs),
    /// Act as a DR station towards a box: send studies by C-STORE; bench latency/throughput.
    #[command(subcommand)]
    Station(cli::station::StationCommand),
    /// Engineer and signing keys: generate; add to or remove from a device keyring.
    #[command(subcommand)]
    Keys(cli::bundle::KeysCommand),
}

fn main() -> std::process::ExitCode {
    cli::device::finish(run())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let out = cli::Output { json: cli.json };
    match cli.command {
        Command::Cohort(cmd) => cli::cohort::run(cmd, &out),
        Command::Audit(cmd) => cli::audit::run(cmd, &out),
        Command::Device(cmd) => cli::device::run(cmd, &cli.conn, &out),
        Command::Bundle(cmd) => cli::bundle::run_bundle(cmd, &out),
        Command::Train(args) => cli::train::run(args, &out),
        Command::TrainLocaliser(args) => cli::localiser::run(args, &out),
        Command::Quantize(args) => cli::quantize::run(args, &out),
        Command::Predict(args) => cli::predict::run_predict(args, &out),
        Command::Eval(args) => cli::predict::run_eval(args, &out),
        Command::Station(cmd) => cli::station::run(cmd, &out),
        Command::Keys(cmd) => cli::bundle::run_keys(cmd, &cli.conn, &out),
    }
}
