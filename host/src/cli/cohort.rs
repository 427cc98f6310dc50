//! `tirp cohort …` (work in progress in this session).

use super::Output;
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum CohortCommand {
    /// List the board profiles (placeholder until the cohort lands in this session).
    Boards {
        #[arg(long, default_value = "boards")]
        dir: std::path::PathBuf,
    },
}

pub fn run(cmd: CohortCommand, out: &Output) -> Result<()> {
    match cmd {
        CohortCommand::Boards { dir } => {
            let boards = tirp_firmware::board::BoardProfile::load_dir(&dir)?;
            let ids: Vec<_> = boards.iter().map(|b| b.id.clone()).collect();
            out.emit(&serde_json::json!(ids), || ids.join("\n"));
            Ok(())
        }
    }
}
