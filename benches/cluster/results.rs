//! The results and their Markdown table (`bench/out/results.md`).

use crate::*;

#[derive(Debug, Default)]
pub(crate) struct Results {
    /// Rows of the main table: figure, what, pgconvoy, baseline, ratio, goal.
    pub(crate) rows: Vec<[String; 6]>,
    /// Rows of the scale table.
    pub(crate) scale: Vec<[String; 7]>,
    /// Rows of the variants table (figure 5, timings).
    pub(crate) variants: Vec<[String; 4]>,
    /// Rows of the breakdown table (figure 5, server log).
    pub(crate) breakdown: Vec<[String; 7]>,
    pub(crate) notes: Vec<String>,
    /// The README's performance summary: (figure, one line) for every row with a goal.
    pub(crate) summary: Vec<(String, String)>,
}

/// `what` without its parenthesized asides (the README's summary keeps to one short line).
fn without_parentheses(what: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in what.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" ,", ",")
}

/// The README section `bench/run` owns.
const README_BEGIN: &str = "<!-- performance summary: written by bench/run, do not edit -->";
const README_END: &str = "<!-- end of the performance summary -->";

/// Rewrites the README's performance summary: the lines of the figures this run measured
/// are replaced, those of figures it did not run are kept (with the date and load of the
/// run that measured them). Returns false when the README has no such section.
pub(crate) fn update_readme(readme: &Path, results: &Results, stamp: &str) -> io::Result<bool> {
    let text = std::fs::read_to_string(readme)?;
    let (Some(b), Some(e)) = (text.find(README_BEGIN), text.find(README_END)) else {
        return Ok(false);
    };
    let body_start = b + README_BEGIN.len();
    let ran: Vec<&str> = results.summary.iter().map(|(f, _)| f.as_str()).collect();
    // Kept lines: `- Figure N …` of figures not run this time.
    let mut lines: Vec<(u32, String)> = text[body_start..e]
        .lines()
        .filter_map(|l| {
            let n = l.strip_prefix("- Figure ")?.split([' ', ',']).next()?;
            (!ran.contains(&n)).then(|| (n.parse().unwrap_or(0), l.to_string()))
        })
        .collect();
    for (fig, line) in &results.summary {
        lines.push((
            fig.parse().unwrap_or(0),
            format!("- Figure {fig} ({stamp}): {line}"),
        ));
    }
    lines.sort_by_key(|(n, _)| *n);
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..body_start]);
    out.push('\n');
    for (_, l) in &lines {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(&text[e..]);
    std::fs::write(readme, out)?;
    Ok(true)
}

/// `, at nice N` when the bench ran at another priority than the default (on a machine
/// shared with other work, `nice -n -10 bench/run` keeps that work from skewing figures).
pub(crate) fn niceness() -> String {
    // SAFETY: getpriority has no preconditions.
    let n = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    if n == 0 {
        String::new()
    } else {
        format!(", at nice {n}")
    }
}

/// The 1-minute load average: other work on the machine skews every figure.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// The commit the benchmarked binary was built from, and whether `src/` had changes.
pub(crate) fn source_revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain", "--", "src"]).is_some_and(|s| !s.is_empty());
            format!(
                "at commit `{rev}`{}",
                if dirty {
                    " with uncommitted changes in `src/`"
                } else {
                    ""
                }
            )
        }
        None => "(not a git checkout)".into(),
    }
}

/// Today's date (UTC), `YYYY-MM-DD`.
pub(crate) fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

pub(crate) fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `**1.05** ≤ 1.10 met` style goal cell.
pub(crate) fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

impl Results {
    pub(crate) fn row(
        &mut self,
        fig: &str,
        what: &str,
        ours: String,
        base: String,
        ratio: String,
        goal: String,
    ) {
        eprintln!("bench: [{fig}] {what}: {ours} | {base} | {ratio} | {goal}");
        if goal != "—" {
            let ratio = ratio.replace("**", "");
            let result = if ratio == "—" { ours.clone() } else { ratio };
            // A ditto row ("〃 …") names what it repeats: the README line stands alone.
            let what = match (what.strip_prefix('〃'), self.rows.last()) {
                (Some(rest), Some(prev)) => format!("{} —{rest}", without_parentheses(&prev[1])),
                _ => what.to_string(),
            };
            self.summary.push((
                fig.to_string(),
                format!(
                    "{}: {result}; goal {}",
                    without_parentheses(&what),
                    goal.replace("**", "")
                ),
            ));
        }
        self.rows
            .push([fig.into(), what.into(), ours, base, ratio, goal]);
    }

    pub(crate) fn markdown(&self, bench: &Bench, elapsed: Duration) -> String {
        let s = &bench.settings;
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown cpu".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let date = today();
        let mut md = String::new();
        let _ = writeln!(
            md,
            "{} run, {date}: {cores} cores ({cpu}), {}, servers with the harness defaults \
             (fsync off); pgconvoy {}; times are medians of {} repetitions, each running every \
             variant back to back, and a ratio is the median of the per-repetition ratios; the \
             whole run took {:.0} s{}; load average {} before, {} after.\n",
            if s.quick { "Quick (`--quick`)" } else { "Full" },
            bench.pg_version,
            source_revision(),
            s.reps,
            elapsed.as_secs_f64(),
            niceness(),
            bench.load_before,
            load_average(),
        );
        if !self.rows.is_empty() {
            md.push_str("| # | figure | pgconvoy | baseline (same run) | ratio | goal |\n");
            md.push_str("|---|---|---|---|---|---|\n");
            for r in &self.rows {
                let _ = writeln!(md, "| {} |", r.join(" | "));
            }
            md.push('\n');
        }
        if !self.scale.is_empty() {
            md.push_str(
                "Figure 3 in detail (nodes = databases spread over 4 servers; baseline: one \
                 `psql` per node, 16 at once, like `xargs -P 16`):\n\n",
            );
            md.push_str(
                "| nodes | `status` | per node | ratio to psql | `upgrade`, one `direct` patch | per node | ratio to psql |\n",
            );
            md.push_str("|---|---|---|---|---|---|---|\n");
            for r in &self.scale {
                let _ = writeln!(md, "| {} |", r.join(" | "));
            }
            md.push('\n');
        }
        if !self.variants.is_empty() {
            md.push_str(
                "Figure 5, where the time of figure 2 goes: the same tiny patches, from \
                 `psql -1 -f` up to pgconvoy one step at a time (the steps between replay a \
                 claim and a stamp per patch through `psql -f` as plain SQL; \"added\" is the \
                 median of the per-repetition differences to the row above):\n\n",
            );
            md.push_str("| variant | wall | per patch | added per patch by this step |\n");
            md.push_str("|---|---|---|---|\n");
            for r in &self.variants {
                let _ = writeln!(md, "| {} |", r.join(" | "));
            }
            md.push('\n');
        }
        if !self.breakdown.is_empty() {
            md.push_str(
                "Figure 5, statements per patch, counted in the server log of a separate run \
                 with `log_min_duration_statement = 0` (per patch, the run's fixed costs \
                 included; logging slows both sides), and round trips per patch: the \
                 client's writes to its server sockets, counted by `strace -f` in runs of \
                 their own (pipelined requests leave in one write):\n\n",
            );
            md.push_str(
                "| run | statements per patch, in order, with their server time per patch | server time per patch | round trips per patch (the client's socket writes, strace) | wall per patch | wall − server time | client CPU per patch |\n",
            );
            md.push_str("|---|---|---|---|---|---|---|\n");
            for r in &self.breakdown {
                let _ = writeln!(md, "| {} |", r.join(" | "));
            }
            md.push('\n');
        }
        for n in &self.notes {
            let _ = writeln!(md, "- {n}");
        }
        md
    }
}
