//! One module per subcommand group of `tirp`.

pub mod audit;
pub mod bundle;
pub mod cohort;
pub mod device;
pub mod localiser;
pub mod predict;
pub mod progress;
pub mod quantize;
pub mod station;
pub mod train;

/// Global output settings shared by every subcommand.
pub struct Output {
    /// Print machine-readable JSON on stdout (human text and progress go to stderr).
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON when `--json` is set, otherwise the human text. A closed
    /// pipe (`tirp … | head`) ends the output quietly instead of panicking.
    pub fn emit(&self, value: &serde_json::Value, human: impl FnOnce() -> String) {
        use std::io::Write;
        let text = if self.json {
            serde_json::to_string_pretty(value).expect("JSON value serialises")
        } else {
            human()
        };
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, "{text}").and_then(|()| stdout.flush())
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            eprintln!("error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }
}
