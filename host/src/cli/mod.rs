//! One module per subcommand group of `tirp`.

pub mod audit;
pub mod bundle;
pub mod cohort;
pub mod device;

/// Global output settings shared by every subcommand.
pub struct Output {
    /// Print machine-readable JSON on stdout (human text and progress go to stderr).
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON when `--json` is set, otherwise the human text.
    pub fn emit(&self, value: &serde_json::Value, human: impl FnOnce() -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("JSON value serialises")
            );
        } else {
            println!("{}", human());
        }
    }
}
