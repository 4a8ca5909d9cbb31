//! What a terminal shows of a run, as text: one line per node (its patch, statement,
//! elapsed time, index build phase and percentage), or with many nodes one line per
//! state. Pure: [`super::live`] redraws it on a timer.

use std::time::{Duration, Instant};

use super::{first_line, Event, StatementAt};
use crate::output::human;

/// Room for a statement on a node's line.
const STATEMENT_WIDTH: usize = 48;
/// Room for an error on a line.
const ERROR_WIDTH: usize = 90;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Done,
    Failed,
}

#[derive(Debug)]
struct NodeLine {
    name: String,
    patch: String,
    state: State,
    started: Instant,
    /// How long the last part took, once it ended.
    took: Option<Duration>,
    statement: Option<String>,
    index: Option<(String, Option<f64>)>,
    error: Option<String>,
}

/// The nodes seen so far, in the order they first appeared.
#[derive(Debug, Default)]
pub(super) struct Board {
    nodes: Vec<NodeLine>,
}

impl Board {
    /// Takes in an event that concerns a node (others are printed, not drawn).
    pub(super) fn apply(&mut self, event: &Event<'_>, now: Instant) {
        match event {
            Event::NodeStart { version, node } => {
                let line = self.line(node.as_str(), now);
                line.patch = version.to_string();
                line.state = State::Running;
                line.started = now;
                line.took = None;
                line.statement = None;
                line.index = None;
                line.error = None;
            }
            Event::Statement { node, text, at, .. } => {
                let line = self.line(node.as_str(), now);
                let text = first_line(text, STATEMENT_WIDTH);
                line.statement = Some(match at {
                    StatementAt::One { number, of } if *of > 1 => format!("[{number}/{of}] {text}"),
                    StatementAt::Body { statements } if *statements > 1 => {
                        format!("{text} (+{} more)", statements - 1)
                    }
                    _ => text,
                });
                line.index = None;
            }
            Event::IndexProgress {
                node,
                phase,
                percent,
                ..
            } => {
                self.line(node.as_str(), now).index = Some((phase.to_string(), *percent));
            }
            Event::NodeDone {
                node,
                elapsed,
                error,
                ..
            } => {
                let line = self.line(node.as_str(), now);
                line.took = Some(*elapsed);
                line.index = None;
                match error {
                    None => line.state = State::Done,
                    Some(e) => {
                        line.state = State::Failed;
                        line.error = Some(first_line(e, ERROR_WIDTH));
                    }
                }
            }
            Event::Note(_) | Event::GroupStart { .. } | Event::PatchDone { .. } => {}
        }
    }

    fn line(&mut self, node: &str, now: Instant) -> &mut NodeLine {
        let at = match self.nodes.iter().position(|n| n.name == node) {
            Some(at) => at,
            None => {
                self.nodes.push(NodeLine {
                    name: node.to_string(),
                    patch: String::new(),
                    state: State::Running,
                    started: now,
                    took: None,
                    statement: None,
                    index: None,
                    error: None,
                });
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[at]
    }

    /// One line per node.
    pub(super) fn node_lines(&self, now: Instant) -> Vec<String> {
        let width = self
            .nodes
            .iter()
            .map(|n| n.name.chars().count())
            .max()
            .unwrap_or(0);
        self.nodes
            .iter()
            .map(|n| {
                let what = match n.state {
                    State::Running => {
                        let mut s = format!(
                            "running {:>6}",
                            human::duration(now.saturating_duration_since(n.started))
                        );
                        // The index build's progress first: it is what changes, and a
                        // narrow terminal cuts the end of the line.
                        if let Some(ix) = index(n) {
                            s.push_str("  ");
                            s.push_str(&ix);
                            s.push_str(" ·");
                        }
                        if let Some(st) = &n.statement {
                            s.push_str("  ");
                            s.push_str(st);
                        }
                        s
                    }
                    State::Done => format!("done in {}", took(n)),
                    State::Failed => format!(
                        "FAILED after {}: {}",
                        took(n),
                        n.error.as_deref().unwrap_or("")
                    ),
                };
                format!("{:<width$}  {:<7} {what}", n.name, n.patch)
            })
            .collect()
    }

    /// One line per state, for many nodes: how many, on which patches, the longest
    /// running part and the first failure.
    pub(super) fn summary(&self, now: Instant) -> Vec<String> {
        let of = |state: State| self.nodes.iter().filter(move |n| n.state == state);
        let mut lines = Vec::new();
        let running: Vec<&NodeLine> = of(State::Running).collect();
        if !running.is_empty() {
            let mut patches: Vec<&str> = running.iter().map(|n| n.patch.as_str()).collect();
            patches.sort_unstable();
            patches.dedup();
            let mut s = format!("running {:>4}  {}", running.len(), patches.join(", "));
            if let Some(slowest) = running.iter().min_by_key(|n| n.started) {
                s.push_str(&format!(
                    "; longest: {} {}",
                    slowest.name,
                    human::duration(now.saturating_duration_since(slowest.started))
                ));
                if let Some(st) = &slowest.statement {
                    s.push_str(&format!(" {st}"));
                }
                if let Some(ix) = index(slowest) {
                    s.push_str(&format!(" · {ix}"));
                }
            }
            lines.push(s);
        }
        let done = of(State::Done).count();
        if done > 0 {
            lines.push(format!("done    {done:>4}"));
        }
        let failed: Vec<&NodeLine> = of(State::Failed).collect();
        if let Some(first) = failed.first() {
            lines.push(format!(
                "FAILED  {:>4}  first: {} {}: {}",
                failed.len(),
                first.name,
                first.patch,
                first.error.as_deref().unwrap_or("")
            ));
        }
        lines
    }
}

fn took(n: &NodeLine) -> String {
    n.took.map(human::duration).unwrap_or_default()
}

/// `building index: scanning table 42%`.
fn index(n: &NodeLine) -> Option<String> {
    let (phase, percent) = n.index.as_ref()?;
    Some(match percent {
        Some(p) => format!("{phase} {p:.0}%"),
        None => phase.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeName;
    use crate::patches::patch::PatchVersion;

    fn name(s: &str) -> NodeName {
        NodeName::parse(s).unwrap()
    }

    #[test]
    fn a_node_line_shows_patch_statement_elapsed_and_index_progress() {
        let t0 = Instant::now();
        let v = PatchVersion::new(1, 2, 0);
        let (n0, n1) = (name("node0"), name("node1"));
        let mut b = Board::default();
        b.apply(
            &Event::NodeStart {
                version: v,
                node: &n0,
            },
            t0,
        );
        b.apply(
            &Event::NodeStart {
                version: v,
                node: &n1,
            },
            t0,
        );
        b.apply(
            &Event::Statement {
                version: v,
                node: &n1,
                text: "CREATE INDEX CONCURRENTLY orders_customer_idx\n  ON orders (customer_id);",
                at: StatementAt::One { number: 2, of: 3 },
            },
            t0,
        );
        b.apply(
            &Event::IndexProgress {
                version: v,
                node: &n1,
                phase: "building index: scanning table",
                percent: Some(41.6),
            },
            t0,
        );
        b.apply(
            &Event::NodeDone {
                version: v,
                node: &n0,
                elapsed: Duration::from_millis(1200),
                error: None,
            },
            t0,
        );
        let lines = b.node_lines(t0 + Duration::from_secs(6));
        assert_eq!(lines[0], "node0  1-2-0   done in 1.2s");
        assert_eq!(
            lines[1],
            "node1  1-2-0   running   6.0s  building index: scanning table 42% ·  [2/3] CREATE INDEX CONCURRENTLY orders_customer_idx …"
        );
    }

    #[test]
    fn many_nodes_make_one_line_per_state() {
        let t0 = Instant::now();
        let v = PatchVersion::new(1, 3, 0);
        let names: Vec<NodeName> = (0..30).map(|i| name(&format!("n{i}"))).collect();
        let mut b = Board::default();
        for (i, n) in names.iter().enumerate() {
            b.apply(
                &Event::NodeStart {
                    version: v,
                    node: n,
                },
                t0 + Duration::from_millis(i as u64),
            );
        }
        for n in &names[..10] {
            b.apply(
                &Event::NodeDone {
                    version: v,
                    node: n,
                    elapsed: Duration::from_secs(1),
                    error: None,
                },
                t0,
            );
        }
        b.apply(
            &Event::NodeDone {
                version: v,
                node: &names[10],
                elapsed: Duration::from_secs(2),
                error: Some("patch `1-3-0` failed on node `n10`: ERROR 42P07: relation \"a\" already exists"),
            },
            t0,
        );
        let lines = b.summary(t0 + Duration::from_secs(5));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("running   19  1-3-0; longest: n11 5.0s"),
            "{lines:?}"
        );
        assert_eq!(lines[1], "done      10");
        assert!(
            lines[2].starts_with("FAILED     1  first: n10 1-3-0: patch `1-3-0` failed"),
            "{lines:?}"
        );
    }
}
