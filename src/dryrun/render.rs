//! Renders a [`DryRunReport`] as text (a terminal), JSON (machines) or Markdown (a change
//! ticket): summary, plan, patch × node table, locks, blockers, warnings, lint.

use std::io::{self, Write};

use super::findings::{list, FindingKind, Level};
use super::rehearsal::{Outcome, PatchRehearsal};
use super::report::{DryRunReport, NodeReport, Verdict};
use crate::output;
use crate::output::human::{self, one_line};
use crate::output::table::{markdown_table, text_table};
use crate::output::ReportFormat;
use crate::patches::discover::Severity;
use crate::patches::lockmode::LockMode;

/// The widest line a text or Markdown report has: what a change ticket can show. Longer
/// lines are cut with "…" (the JSON report has everything).
pub const MAX_LINE: usize = 400;

/// Writes the report in `format`.
pub fn render(r: &DryRunReport, format: ReportFormat, out: &mut dyn Write) -> io::Result<()> {
    let mut buf = Vec::new();
    match format {
        ReportFormat::Json => return output::json(out, r),
        ReportFormat::Text => text(r, &mut buf)?,
        ReportFormat::Markdown => markdown(r, &mut buf)?,
    }
    for line in String::from_utf8_lossy(&buf).lines() {
        writeln!(out, "{}", cap(line, MAX_LINE))?;
    }
    Ok(())
}

/// `line`, cut to `max` characters with "…" when longer.
fn cap(line: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match line.char_indices().nth(max.saturating_sub(1)) {
        Some((at, _)) if line.chars().count() > max => format!("{}…", &line[..at]).into(),
        _ => line.into(),
    }
}

/// The one-line verdict.
pub fn verdict(r: &DryRunReport) -> String {
    let s = &r.summary;
    let counts = format!(
        "{} patch(es) to apply, {} rehearsal(s) ok, {} failed, {} not rehearsed after a failure, {} not rehearsable; {} blocking finding(s), {} warning(s), {} lint finding(s)",
        s.patches,
        s.rehearsed_ok,
        s.failed,
        s.not_rehearsed,
        s.not_rehearsable,
        s.blocking,
        s.warnings,
        s.lint
    );
    match r.verdict {
        Verdict::Ready => {
            format!("READY: every rehearsal succeeded and nothing blocks the run ({counts})")
        }
        Verdict::Blocked => format!("BLOCKED (exit 1): {counts}"),
        Verdict::Refused => format!(
            "REFUSED (exit 2): a real run would refuse this input: {}",
            r.refusal.as_deref().unwrap_or("bad input")
        ),
    }
}

/// A group's versions: all of them, or the first and the last of a long run.
fn versions(v: &[String]) -> String {
    match v {
        [first, .., last] if v.len() > 8 => format!("{first} … {last} ({} patches)", v.len()),
        _ => v.join(", "),
    }
}

/// `upgrade --all --patch-type std`, as typed.
fn command(r: &DryRunReport) -> String {
    let mut s = String::from("upgrade --dry-run");
    if r.selection.all {
        s.push_str(" --all");
    }
    if r.selection.one {
        s.push_str(" -1");
    }
    for t in &r.selection.patch_types {
        s.push_str(&format!(" --patch-type {t}"));
    }
    s
}

fn state(n: &NodeReport) -> String {
    let v = n.server_version.as_deref().unwrap_or("?");
    match (&n.error, n.in_recovery) {
        (Some(_), _) => "UNREACHABLE".into(),
        (None, Some(true)) => format!("up {v} (standby, in recovery)"),
        (None, _) => format!("up {v}"),
    }
}

fn cell(p: Option<&PatchRehearsal>) -> String {
    match p {
        None => "-".into(),
        Some(p) => match p.outcome {
            Outcome::Ok => format!(
                "ok {}",
                human::duration(std::time::Duration::from_millis(p.duration_ms))
            ),
            Outcome::Failed => match p.error.as_ref().and_then(|e| e.sqlstate.as_deref()) {
                Some(code) => format!("FAILED {code}"),
                None => "FAILED".into(),
            },
            Outcome::NotRehearsable => "not rehearsable".into(),
            Outcome::NotRehearsed => match &p.after {
                Some(root) => format!("not rehearsed (after {root})"),
                None => "NOT REHEARSED".into(),
            },
        },
    }
}

/// Rows of the patch × node table: one per patch the run would apply.
const NODE_HEADER: [&str; 6] = ["node", "role", "endpoint", "state", "applied", "would run"];

/// One row per node: who it is, its state, what it has and what would run there.
fn node_rows(r: &DryRunReport) -> Vec<Vec<String>> {
    r.nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                format!("{:?}", n.role).to_lowercase(),
                n.endpoint.clone(),
                state(n),
                n.ledger.applied.to_string(),
                n.patches.len().to_string(),
            ]
        })
        .collect()
}

fn matrix(r: &DryRunReport) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = vec!["patch".to_string(), "type".to_string()];
    header.extend(r.nodes.iter().map(|n| n.name.clone()));
    let rows = r
        .groups
        .iter()
        .flat_map(|g| g.patches.iter().map(move |v| (g.patch_type, v)))
        .map(|(kind, v)| {
            let mut row = vec![v.clone(), kind.to_string()];
            row.extend(
                r.nodes
                    .iter()
                    .map(|n| cell(n.patches.iter().find(|p| &p.patch == v))),
            );
            row
        })
        .collect();
    (header, rows)
}

/// Lock rows, identical ones across nodes merged: patch, nodes, relation, mode, note.
///
/// Readable rather than complete (the JSON report has every lock): relations the patch
/// creates block nobody and are left out, and so are index locks no stronger than a table
/// lock the same patch takes (they come with it).
fn lock_rows(r: &DryRunReport) -> Vec<Vec<String>> {
    let mut rows: Vec<(String, Vec<String>, String, String, String)> = Vec::new();
    for n in &r.nodes {
        for p in &n.patches {
            let strongest_table = p
                .locks
                .iter()
                .filter(|l| !l.kind.contains("index"))
                .filter_map(|l| LockMode::from_pg(&l.mode))
                .max();
            for l in p.locks.iter().filter(|l| !l.created) {
                let mode = LockMode::from_pg(&l.mode);
                if l.kind.contains("index") && strongest_table.is_some() && mode <= strongest_table
                {
                    continue;
                }
                let relation = if l.kind == "table" {
                    l.relation.clone()
                } else {
                    format!("{} ({})", l.relation, l.kind)
                };
                let mode = if l.inferred {
                    format!("{} (inferred)", l.mode)
                } else {
                    l.mode.clone()
                };
                match rows
                    .iter_mut()
                    .find(|(pv, _, rel, m, _)| *pv == p.patch && *rel == relation && *m == mode)
                {
                    Some(row) => row.1.push(n.name.clone()),
                    None => rows.push((
                        p.patch.clone(),
                        vec![n.name.clone()],
                        relation,
                        mode,
                        l.blocks.clone(),
                    )),
                }
            }
        }
    }
    rows.into_iter()
        .map(|(p, nodes, rel, mode, note)| vec![p, list(&nodes, 8), rel, mode, note])
        .collect()
}

/// `patch rewrites `t` on node0, node1`, merged across nodes.
fn rewrite_lines(r: &DryRunReport) -> Vec<String> {
    let mut rows: Vec<(String, String, Vec<String>)> = Vec::new();
    for n in &r.nodes {
        for p in &n.patches {
            for t in &p.rewrites {
                match rows
                    .iter_mut()
                    .find(|(pv, rel, _)| *pv == p.patch && rel == t)
                {
                    Some(row) => row.2.push(n.name.clone()),
                    None => rows.push((p.patch.clone(), t.clone(), vec![n.name.clone()])),
                }
            }
        }
    }
    rows.into_iter()
        .map(|(p, t, nodes)| {
            format!(
                "patch `{p}` rewrites `{t}` on {} (new storage: time and disk grow with its size, under the lock above)",
                list(&nodes, 8)
            )
        })
        .collect()
}

/// Concurrent patches with their statements and the nodes they would run on.
fn not_rehearsable(r: &DryRunReport) -> Vec<(String, String, Vec<String>, &PatchRehearsal)> {
    let mut out: Vec<(String, String, Vec<String>, &PatchRehearsal)> = Vec::new();
    for n in &r.nodes {
        for p in n.patches.iter().filter(|p| {
            p.outcome == Outcome::NotRehearsable
                && p.patch_type == crate::patches::patch::PatchType::Concurrent
        }) {
            match out.iter_mut().find(|(v, _, _, _)| *v == p.patch) {
                Some(e) => e.2.push(n.name.clone()),
                None => out.push((p.patch.clone(), p.file.clone(), vec![n.name.clone()], p)),
            }
        }
    }
    out
}

fn text(r: &DryRunReport, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "pgconvoy {} on {} node(s), ledger {}: nothing is changed (every rehearsal is rolled back)",
        command(r),
        r.nodes.len(),
        r.ledger_table
    )?;
    writeln!(out)?;
    let rows = node_rows(r);
    text_table(&NODE_HEADER, &rows, out)?;
    writeln!(out)?;

    if r.pending.is_empty() {
        writeln!(out, "plan: nothing pending, the cluster is up to date")?;
    } else {
        writeln!(
            out,
            "plan: {} pending patch(es); this run would apply {} in {} group(s):",
            r.pending.len(),
            r.summary.patches,
            r.groups.len()
        )?;
        for (i, g) in r.groups.iter().enumerate() {
            writeln!(
                out,
                "  {}. {:<10} {} on {}",
                i + 1,
                g.patch_type.to_string(),
                versions(&g.patches),
                if g.nodes.is_empty() {
                    "no node".to_string()
                } else {
                    list(&g.nodes, 8)
                }
            )?;
        }
        if let Some(v) = &r.stopped_before {
            writeln!(out, "  then stops before `{v}` (--patch-type)")?;
        }
    }
    for line in slony_lines(r) {
        writeln!(out, "{line}")?;
    }

    let (header, rows) = matrix(r);
    if !rows.is_empty() {
        writeln!(out, "\nrehearsal (patch × node; `-`: does not run there):")?;
        let h: Vec<&str> = header.iter().map(String::as_str).collect();
        text_table(&h, &rows, out)?;
    }

    let locks = lock_rows(r);
    if !locks.is_empty() {
        writeln!(
            out,
            "\nlocks (each patch runs in its own transaction and holds these until it commits):"
        )?;
        text_table(
            &["patch", "nodes", "relation", "mode", "what it blocks"],
            &locks,
            out,
        )?;
    }
    for line in rewrite_lines(r) {
        writeln!(out, "{line}")?;
    }

    let concurrent = not_rehearsable(r);
    if !concurrent.is_empty() {
        writeln!(
            out,
            "\nnot rehearsable (`concurrent`: outside any transaction, one statement at a time):"
        )?;
        for (v, file, nodes, p) in concurrent {
            writeln!(out, "  {v} ({file}) on {}", list(&nodes, 8))?;
            for s in &p.statements {
                writeln!(out, "    line {}: {}", s.line, one_line(&s.text))?;
            }
        }
    }

    for (level, title) in [(Level::Blocking, "blocking"), (Level::Warning, "warnings")] {
        let list: Vec<_> = r.findings.iter().filter(|f| f.severity == level).collect();
        if list.is_empty() {
            continue;
        }
        writeln!(out, "\n{title} ({}):", list.len())?;
        for f in list {
            writeln!(out, "  - [{}] {}", kind(f.kind), f.message)?;
        }
    }
    if !r.lint.is_empty() {
        writeln!(out, "\nlint ({}):", r.lint.len())?;
        for l in &r.lint {
            writeln!(out, "  - {}: {l}", severity(l.severity))?;
        }
    }
    writeln!(out, "\n{}", verdict(r))
}

/// What slonik would run and how the set would change (`replication: slony`).
fn slony_lines(r: &DryRunReport) -> Vec<String> {
    let Some(p) = &r.slony else {
        return Vec::new();
    };
    let mut out = vec![format!(
        "\nslony cluster `{}`, set {}, origin `{}` (slony node {}):",
        p.cluster, p.set, p.origin, p.origin_id
    )];
    for s in &p.scripts {
        out.push(format!(
            "  {} ({}): slonik EXECUTE SCRIPT on `{}`, {} statement(s) between pgconvoy's ledger blocks; replayed and recorded on {}; then a SYNC every node must confirm",
            s.patch,
            s.file,
            p.origin,
            s.statements,
            if s.receivers.is_empty() {
                "no other node".to_string()
            } else {
                s.receivers.join(", ")
            }
        ));
    }
    for c in &p.set_changes {
        out.push(format!("  {c}"));
    }
    out
}

fn kind(k: FindingKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}

fn markdown(r: &DryRunReport, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "## pgconvoy {}\n", command(r))?;
    writeln!(out, "**Result:** {}\n", verdict(r))?;
    writeln!(
        out,
        "Nothing was changed on any node: every rehearsal ran in a transaction that was rolled back (lock timeout {}ms).\n",
        r.lock_timeout_ms
    )?;

    writeln!(out, "### Nodes\n")?;
    let rows = node_rows(r);
    markdown_table(&NODE_HEADER, &rows, out)?;

    writeln!(out, "\n### Plan\n")?;
    if r.groups.is_empty() {
        writeln!(out, "Nothing pending: the cluster is up to date.")?;
    } else {
        let rows: Vec<Vec<String>> = r
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                vec![
                    (i + 1).to_string(),
                    g.patch_type.to_string(),
                    versions(&g.patches),
                    list(&g.nodes, 8),
                ]
            })
            .collect();
        markdown_table(&["group", "type", "patches", "nodes"], &rows, out)?;
        let (header, rows) = matrix(r);
        writeln!(out, "\n### Rehearsal (patch × node)\n")?;
        let h: Vec<&str> = header.iter().map(String::as_str).collect();
        markdown_table(&h, &rows, out)?;
        writeln!(out, "\n`-`: the patch does not run on that node.")?;
    }

    let slony = slony_lines(r);
    if !slony.is_empty() {
        writeln!(out, "\n### Slony-I\n")?;
        for line in slony {
            writeln!(out, "- {}", line.trim())?;
        }
    }

    let locks = lock_rows(r);
    if !locks.is_empty() {
        writeln!(out, "\n### Locks\n")?;
        markdown_table(
            &["patch", "nodes", "relation", "mode", "what it blocks"],
            &locks,
            out,
        )?;
        for line in rewrite_lines(r) {
            writeln!(out, "\n- {line}")?;
        }
    }

    let concurrent = not_rehearsable(r);
    if !concurrent.is_empty() {
        writeln!(
            out,
            "\n### Not rehearsable (`concurrent`: outside any transaction)\n"
        )?;
        for (v, file, nodes, p) in concurrent {
            writeln!(out, "- `{v}` ({file}) on {}:", list(&nodes, 8))?;
            writeln!(out, "\n  ```sql")?;
            for s in &p.statements {
                for line in s.text.lines() {
                    writeln!(out, "  {line}")?;
                }
            }
            writeln!(out, "  ```")?;
        }
    }

    for (level, title) in [(Level::Blocking, "Blockers"), (Level::Warning, "Warnings")] {
        let list: Vec<_> = r.findings.iter().filter(|f| f.severity == level).collect();
        writeln!(out, "\n### {title}\n")?;
        if list.is_empty() {
            writeln!(out, "None.")?;
        }
        for f in list {
            writeln!(
                out,
                "- **{}** {}",
                kind(f.kind),
                f.message.replace('\n', " ")
            )?;
        }
    }
    writeln!(out, "\n### Lint\n")?;
    if r.lint.is_empty() {
        writeln!(out, "No findings.")?;
    } else {
        let rows: Vec<Vec<String>> = r
            .lint
            .iter()
            .map(|l| {
                vec![
                    l.file.clone(),
                    l.line.to_string(),
                    l.rule.to_string(),
                    severity(l.severity).to_string(),
                    l.message.clone(),
                ]
            })
            .collect();
        markdown_table(&["file", "line", "rule", "severity", "finding"], &rows, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_with_an_ellipsis() {
        assert_eq!(cap("short", 10), "short");
        assert_eq!(cap("abcdefghij", 10), "abcdefghij");
        assert_eq!(cap("abcdefghijk", 10), "abcdefghi…");
        assert_eq!(cap("ééééé", 3).chars().count(), 3);
    }

    #[test]
    fn long_runs_of_versions_are_shortened() {
        let v: Vec<String> = (0..300).map(|k| format!("1-{k}-0")).collect();
        assert_eq!(versions(&v), "1-0-0 … 1-299-0 (300 patches)");
        assert_eq!(versions(&v[..2]), "1-0-0, 1-1-0");
    }
}
