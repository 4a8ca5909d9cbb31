//! Progress as live lines on a terminal: the [`Board`] redrawn four times a second by a
//! thread of its own (so elapsed times move while a node waits on the server), below the
//! notes, which scroll up as they come.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::board::Board;
use super::{Event, Reporter};
use crate::output::human;

const REDRAW_EVERY: Duration = Duration::from_millis(250);

/// Live lines on stderr: one per node, or one per state when `compact`.
pub struct LiveReporter {
    shared: Arc<Shared>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    board: Mutex<Board>,
    multi: MultiProgress,
    bars: Mutex<Vec<ProgressBar>>,
    compact: bool,
    stop: AtomicBool,
}

impl Shared {
    fn redraw(&self) {
        let now = Instant::now();
        let lines = {
            let board = self.board.lock().unwrap_or_else(|p| p.into_inner());
            if self.compact {
                board.summary(now)
            } else {
                board.node_lines(now)
            }
        };
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        while bars.len() < lines.len() {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bars.push(bar);
        }
        for (bar, line) in bars.iter().zip(lines) {
            bar.set_message(line);
            bar.tick();
        }
    }
}

impl LiveReporter {
    /// Starts the redraw thread.
    pub fn start(compact: bool) -> LiveReporter {
        let shared = Arc::new(Shared {
            board: Mutex::new(Board::default()),
            multi: MultiProgress::new(),
            bars: Mutex::new(Vec::new()),
            compact,
            stop: AtomicBool::new(false),
        });
        let for_thread = Arc::clone(&shared);
        let ticker = std::thread::Builder::new()
            .name("pgconvoy-progress".into())
            .spawn(move || {
                while !for_thread.stop.load(Ordering::Relaxed) {
                    for_thread.redraw();
                    std::thread::park_timeout(REDRAW_EVERY);
                }
            })
            .ok();
        LiveReporter {
            shared,
            ticker: Mutex::new(ticker),
        }
    }

    fn println(&self, text: &str) {
        let _ = self.shared.multi.println(text);
    }
}

impl Reporter for LiveReporter {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::Note(text) => self.println(text),
            Event::GroupStart { kind, versions } => {
                self.println(&format!("group: {kind} patch(es) {versions}"))
            }
            Event::PatchDone {
                version,
                elapsed,
                committed,
            } => self.println(&if *committed {
                format!(
                    "{version}: applied to the cluster in {}",
                    human::duration(*elapsed)
                )
            } else {
                format!("{version}: claim rolled back, not recorded as applied")
            }),
            _ => {
                self.shared
                    .board
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .apply(event, Instant::now());
            }
        }
    }

    /// Stops the redraw thread and leaves the last state of every line on the screen.
    fn finish(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.thread().unpark();
            let _ = t.join();
        }
        self.shared.redraw();
        for bar in self
            .shared
            .bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            bar.finish();
        }
    }

    fn wants_index_progress(&self) -> bool {
        true
    }
}

impl Drop for LiveReporter {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
