//! Progress as plain timestamped lines on stderr (cron logs, CI).

use std::io::Write;
use std::time::SystemTime;

use super::{first_line, Event, Reporter, StatementAt};
use crate::output::human;
use crate::output::timestamp::rfc3339;

/// Plain timestamped lines on stderr.
pub struct LineReporter;

impl Reporter for LineReporter {
    fn event(&self, event: &Event<'_>) {
        let line = match event {
            Event::Note(text) => text.to_string(),
            Event::GroupStart { kind, versions } => format!("group: {kind} patch(es) {versions}"),
            Event::NodeStart { version, node } => format!("{version} on {node}: started"),
            // One line per statement of a concurrent patch (each may take long); a body
            // sent whole is said by its start line already.
            Event::Statement {
                version,
                node,
                text,
                at: StatementAt::One { number, of },
            } => format!(
                "{version} on {node}: statement {number}/{of}: {}",
                first_line(text, 100)
            ),
            Event::Statement { .. } | Event::IndexProgress { .. } => return,
            Event::NodeDone {
                version,
                node,
                elapsed,
                error,
            } => match error {
                None => format!("{version} on {node}: done in {}", human::duration(*elapsed)),
                Some(e) => format!(
                    "{version} on {node}: FAILED after {}: {e}",
                    human::duration(*elapsed)
                ),
            },
            Event::PatchDone {
                version,
                elapsed,
                committed,
            } => {
                if *committed {
                    format!(
                        "{version}: applied to the cluster in {}",
                        human::duration(*elapsed)
                    )
                } else {
                    format!("{version}: claim rolled back, not recorded as applied")
                }
            }
        };
        // One write per line (stderr is unbuffered: `eprintln!` writes each piece on its
        // own), so lines from concurrent nodes never interleave and a long run does not
        // spend its time in system calls.
        let line = format!("{} {line}\n", rfc3339(SystemTime::now()));
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}
