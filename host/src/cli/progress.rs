//! Progress for the training commands (`tirp train`, `tirp train-localiser`): a stage spinner,
//! one bar at a time under it (a count, or an epoch's steps), and lines printed above them —
//! or, when the bars are hidden (not a terminal: CI, logs), stages and lines on stderr.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("progress template")
        .progress_chars("=> ")
}

pub struct TrainingBars {
    bars: MultiProgress,
    stage: ProgressBar,
    current: Option<ProgressBar>,
}

impl TrainingBars {
    pub fn new() -> Self {
        let bars = MultiProgress::new();
        let stage = bars.add(ProgressBar::new_spinner());
        stage.set_style(style("{spinner} {elapsed_precise} {msg}"));
        stage.enable_steady_tick(std::time::Duration::from_millis(200));
        TrainingBars {
            bars,
            stage,
            current: None,
        }
    }

    /// A new stage: its name on the spinner (and stderr when hidden); the bar under it ends.
    pub fn stage(&mut self, s: &str) {
        if self.bars.is_hidden() {
            eprintln!("{s}");
        }
        self.stage.set_message(s.to_owned());
        self.end_bar();
    }

    /// `done` of `total` items (`what`: "crops", "letterbox").
    pub fn count(&mut self, what: &str, done: usize, total: usize) {
        let bars = &self.bars;
        let b = self.current.get_or_insert_with(|| {
            let b = bars.add(ProgressBar::new(total as u64));
            b.set_style(style(&format!(
                "  {what} [{{bar:30}}] {{pos}}/{{len}} {{elapsed_precise}}"
            )));
            b
        });
        b.set_position(done as u64);
    }

    /// Step `step` (0-based) of `steps` in the epoch named `prefix`, with its loss.
    pub fn step(&mut self, prefix: String, step: usize, steps: usize, loss: f32) {
        let bars = &self.bars;
        let b = self.current.get_or_insert_with(|| {
            let b = bars.add(ProgressBar::new(steps as u64));
            b.set_style(style(
                "  {prefix} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
            ));
            b
        });
        b.set_length(steps as u64);
        b.set_position(step as u64 + 1);
        b.set_prefix(prefix);
        b.set_message(format!("loss {loss:.3}"));
    }

    /// A line above the bars, or on stderr when they are hidden.
    pub fn say(&self, line: String) {
        if self.bars.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.bars.println(line);
        }
    }

    /// Ends the bar under the stage, if any.
    pub fn end_bar(&mut self) {
        if let Some(b) = self.current.take() {
            b.finish_and_clear();
        }
    }

    /// Ends everything.
    pub fn finish(&mut self) {
        self.end_bar();
        self.stage.finish_and_clear();
    }
}
