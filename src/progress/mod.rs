//! Progress on stderr while a command works: the coordinator and the dry run emit
//! [`Event`]s; a reporter renders them: live lines per node, or one summary line per
//! state with many nodes, when stderr is a terminal ([`live`]); plain timestamped lines
//! otherwise (cron, CI: [`lines`]); one JSON object per line with `--progress json`
//! ([`json`]). The end-of-run summaries are rendered elsewhere.

use std::io::IsTerminal;
use std::time::Duration;

use crate::config::NodeName;
use crate::patches::patch::{PatchType, PatchVersion};

mod board;
mod json;
mod lines;
mod live;

pub use json::JsonReporter;
pub use lines::LineReporter;
pub use live::LiveReporter;

/// Above this many nodes a terminal shows one line per state, not one per node.
pub const COMPACT_ABOVE: usize = 20;

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
    /// A node starts a statement of the patch: one of a `concurrent` patch's, sent alone,
    /// or the first of a body sent as a whole.
    Statement {
        version: PatchVersion,
        node: &'a NodeName,
        /// Its first line, as written in the patch file.
        text: &'a str,
        at: StatementAt,
    },
    /// How far an index build on a node has got (`pg_stat_progress_create_index`).
    IndexProgress {
        version: PatchVersion,
        node: &'a NodeName,
        /// `building index: scanning table`, `waiting for old snapshots`, …
        phase: &'a str,
        /// Of the phase, when it counts blocks, tuples or lockers.
        percent: Option<f64>,
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

/// Which statement of a patch a [`Event::Statement`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementAt {
    /// Statement `number` of `of`, sent on its own.
    One { number: usize, of: usize },
    /// The first of a body of `statements` sent in one round trip.
    Body { statements: usize },
}

/// Renders events as they happen.
pub trait Reporter: Sync {
    fn event(&self, event: &Event<'_>);
    /// Clears any live display before the summary is printed.
    fn finish(&self) {}
    /// Whether index builds are worth polling for [`Event::IndexProgress`] (a second
    /// session per node while a build runs): only when someone watches them.
    fn wants_index_progress(&self) -> bool {
        false
    }
}

/// How progress is shown on stderr (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProgressMode {
    /// Live lines per node when stderr is a terminal, timestamped lines otherwise.
    #[default]
    Auto,
    /// Timestamped lines, also on a terminal.
    Plain,
    /// One JSON object per event and line.
    Json,
}

/// The reporter `mode` asks for, for a run on `nodes` nodes.
pub fn for_stderr(mode: ProgressMode, nodes: usize) -> Box<dyn Reporter> {
    match mode {
        ProgressMode::Json => Box::new(JsonReporter),
        ProgressMode::Plain => Box::new(LineReporter),
        ProgressMode::Auto if std::io::stderr().is_terminal() => {
            Box::new(LiveReporter::start(nodes > COMPACT_ABOVE))
        }
        ProgressMode::Auto => Box::new(LineReporter),
    }
}

/// A reporter that drops everything (JSON output, tests).
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _: &Event<'_>) {}
}

/// The first line of a statement, at most `max` characters (`…` marks a cut).
pub fn first_line(text: &str, max: usize) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .unwrap_or("");
    let more = line.chars().count() > max || text.trim().lines().count() > 1;
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    if line.chars().count() > max {
        cut.push('…');
    } else {
        cut = line.to_string();
        if more && !cut.ends_with(';') {
            cut.push_str(" …");
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_shown_by_their_first_line() {
        assert_eq!(first_line("SELECT 1;", 40), "SELECT 1;");
        assert_eq!(
            first_line("-- why\nCREATE INDEX CONCURRENTLY i\n  ON t (a);", 40),
            "CREATE INDEX CONCURRENTLY i …"
        );
        assert_eq!(
            first_line("CREATE TABLE abcdefghij (a int);", 10),
            "CREATE TA…"
        );
    }
}
