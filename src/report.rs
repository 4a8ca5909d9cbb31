//! Rendering: the coordinator emits [`Event`]s; a reporter renders them as
//! progress bars (stderr is a terminal) or plain timestamped lines (cron, CI),
//! and the run's summary is rendered as text, JSON or Markdown.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::config::NodeName;
use crate::patch::{PatchType, PatchVersion};

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

/// Plain timestamped lines on stderr.
pub struct LineReporter;

impl Reporter for LineReporter {
    fn event(&self, event: &Event<'_>) {
        let line = match event {
            Event::Note(text) => text.to_string(),
            Event::GroupStart { kind, versions } => format!("group: {kind} patch(es) {versions}"),
            Event::NodeStart { version, node } => format!("{version} on {node}: started"),
            Event::NodeDone {
                version,
                node,
                elapsed,
                error,
            } => match error {
                None => format!("{version} on {node}: done in {}", human(*elapsed)),
                Some(e) => format!("{version} on {node}: FAILED after {}: {e}", human(*elapsed)),
            },
            Event::PatchDone {
                version,
                elapsed,
                committed,
            } => {
                if *committed {
                    format!("{version}: applied to the cluster in {}", human(*elapsed))
                } else {
                    format!("{version}: claim rolled back, not recorded as applied")
                }
            }
        };
        eprintln!("{} {line}", timestamp(SystemTime::now()));
    }
}

/// One spinner per node showing the patch it is on and the elapsed time.
pub struct ProgressReporter {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl ProgressReporter {
    fn new() -> ProgressReporter {
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
                    None => bar.set_message(format!("{version} done in {}", human(*elapsed))),
                    Some(e) => bar.set_message(format!("{version} FAILED: {e}")),
                }
            }
            Event::PatchDone {
                version,
                elapsed,
                committed,
            } => {
                let text = if *committed {
                    format!("{version}: applied to the cluster in {}", human(*elapsed))
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

/// A reporter that drops everything (JSON output, tests).
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _: &Event<'_>) {}
}

/// `12ms`, `3.4s`, `2m05s`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// RFC 3339 UTC, seconds precision.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Renders rows as an aligned plain-text table.
pub fn text_table(header: &[&str], rows: &[Vec<String>], out: &mut dyn Write) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// Renders rows as a Markdown table (pipes in cells escaped).
pub fn markdown_table(header: &[&str], rows: &[Vec<String>], out: &mut dyn Write) {
    let esc = |c: &str| c.replace('|', "\\|").replace('\n', " ");
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}|",
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| esc(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_305_600 + 3661);
        assert_eq!(timestamp(t), "2026-11-22T01:01:01Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn durations() {
        assert_eq!(human(Duration::from_millis(12)), "12ms");
        assert_eq!(human(Duration::from_millis(3400)), "3.4s");
        assert_eq!(human(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn tables() {
        let mut out = Vec::new();
        text_table(&["a", "bb"], &[vec!["xxx".into(), "y".into()]], &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "a    bb\nxxx  y\n");
        let mut out = Vec::new();
        markdown_table(&["a"], &[vec!["x|y".into()]], &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "| a |\n|---|\n| x\\|y |\n");
    }
}
