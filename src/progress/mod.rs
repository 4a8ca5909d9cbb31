//! Progress on stderr while a command works: the coordinator and the dry run emit
//! [`Event`]s; a reporter renders them as progress bars (stderr is a terminal) or as
//! plain timestamped lines (cron, CI). The end-of-run summaries are rendered elsewhere.

use std::io::IsTerminal;
use std::time::Duration;

use crate::config::NodeName;
use crate::patches::patch::{PatchType, PatchVersion};

mod bars;
mod lines;

pub use bars::ProgressReporter;
pub use lines::LineReporter;

/// Something that happened during a run.
#[derive(Debug)]
pub enum Event<'a> {
    /// A line for the operator (plan, waiting for a lock, stopping).
    Note(&'a str),
    GroupStart {
        kind: PatchType,
        versions: &'a str,
    },
    NodeStart {
        version: PatchVersion,
        node: &'a NodeName,
    },
    NodeDone {
        version: PatchVersion,
        node: &'a NodeName,
        elapsed: Duration,
        error: Option<&'a str>,
    },
    PatchDone {
        version: PatchVersion,
        elapsed: Duration,
        committed: bool,
    },
}

/// Renders events as they happen.
pub trait Reporter: Sync {
    fn event(&self, event: &Event<'_>);
    /// Clears any live display before the summary is printed.
    fn finish(&self) {}
}

/// Picks progress bars when stderr is a terminal, plain lines otherwise.
pub fn for_stderr() -> Box<dyn Reporter> {
    if std::io::stderr().is_terminal() {
        Box::new(ProgressReporter::new())
    } else {
        Box::new(LineReporter)
    }
}

/// A reporter that drops everything (JSON output, tests).
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _: &Event<'_>) {}
}
