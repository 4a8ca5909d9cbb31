//! Progress as one live spinner per node, when stderr is a terminal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::{Event, Reporter};
use crate::config::NodeName;
use crate::output::human;

/// One spinner per node showing the patch it is on and the elapsed time.
pub struct ProgressReporter {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl ProgressReporter {
    pub(super) fn new() -> ProgressReporter {
        ProgressReporter {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn bar(&self, node: &NodeName) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.entry(node.to_string())
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix:<12} {msg} [{elapsed}]")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(node.to_string());
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            })
            .clone()
    }
}

impl Reporter for ProgressReporter {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::Note(text) => {
                let _ = self.multi.println(*text);
            }
            Event::GroupStart { kind, versions } => {
                let _ = self
                    .multi
                    .println(format!("group: {kind} patch(es) {versions}"));
            }
            Event::NodeStart { version, node } => {
                let bar = self.bar(node);
                bar.reset_elapsed();
                bar.set_message(format!("{version} running"));
            }
            Event::NodeDone {
                version,
                node,
                elapsed,
                error,
            } => {
                let bar = self.bar(node);
                match error {
                    None => {
                        bar.set_message(format!("{version} done in {}", human::duration(*elapsed)))
                    }
                    Some(e) => bar.set_message(format!("{version} FAILED: {e}")),
                }
            }
            Event::PatchDone {
                version,
                elapsed,
                committed,
            } => {
                let text = if *committed {
                    format!(
                        "{version}: applied to the cluster in {}",
                        human::duration(*elapsed)
                    )
                } else {
                    format!("{version}: claim rolled back, not recorded as applied")
                };
                let _ = self.multi.println(text);
            }
        }
    }

    fn finish(&self) {
        let bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        for bar in bars.values() {
            bar.finish();
        }
    }
}
