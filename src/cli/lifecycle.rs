//! `stamp`, `stamp --from-lazr`, `repair`, `history` and `unlock`: each runs its
//! [`crate::lifecycle`] service and renders the result as text or JSON.

use std::io::{self, Write};
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::error::Error;
use crate::lifecycle::adopt::{self, AdoptReport, AdoptRequest};
use crate::lifecycle::history::History;
use crate::lifecycle::repair::RepairReport;
use crate::lifecycle::stamp::{StampReport, StampRequest};
use crate::lifecycle::unlock::UnlockReport;
use crate::output::table::text_table;
use crate::output::{self, human, StatusFormat};
use crate::patches::discover::PatchSet;
use crate::patches::patch::PatchVersion;

use super::args::{HistoryArgs, StampArgs, UnlockArgs};
use super::{runtime, Invocation};

/// Prints a report and returns its error, if any: as text, or as the JSON document every
/// command shares (the envelope of [`Invocation::finish_json`] around the report).
fn finish<R: serde::Serialize>(
    inv: &Invocation,
    format: StatusFormat,
    report: &R,
    error: Option<Error>,
    text: impl FnOnce(&R, &mut dyn Write) -> io::Result<()>,
) -> Result<(), Error> {
    if format == StatusFormat::Json {
        return inv.finish_json(Some(report), error);
    }
    output::to_stdout(|out| text(report, out)).map_err(Error::Output)?;
    error.map_or(Ok(()), Err)
}

/// `stamp VERSION` or `stamp --from-lazr`.
pub fn stamp(
    config: &Config,
    patches: &PatchSet,
    args: &StampArgs,
    inv: &Invocation,
) -> Result<(), Error> {
    if args.from_lazr {
        let table = args
            .lazr_table
            .as_deref()
            .unwrap_or(adopt::DEFAULT_LAZR_TABLE);
        let table = adopt::parse_table(table).map_err(|message| {
            Error::Config(ConfigError::Flag {
                flag: "--lazr-table",
                message,
            })
        })?;
        let req = AdoptRequest {
            table,
            nodes: args.nodes.clone(),
            dry_run: args.dry_run,
        };
        let report = runtime().block_on(adopt::adopt(config, patches, &req))?;
        return finish(inv, args.format, &report, None, render_adopt);
    }
    let version = args
        .version
        .expect("clap requires VERSION unless --from-lazr");
    let req = StampRequest {
        version,
        nodes: args.nodes.clone(),
        dry_run: args.dry_run,
    };
    let report = runtime().block_on(crate::lifecycle::stamp::stamp(config, patches, &req))?;
    finish(inv, args.format, &report, None, render_stamp)
}

fn short(checksum: &str) -> String {
    checksum.chars().take(12).collect()
}

fn render_stamp(r: &StampReport, out: &mut dyn Write) -> io::Result<()> {
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| {
            vec![
                row.node.to_string(),
                format!("{:?}", row.book).to_lowercase(),
                row.version.to_string(),
                row.patch_type.to_string(),
                short(&row.checksum),
            ]
        })
        .collect();
    if !rows.is_empty() {
        text_table(&["node", "book", "version", "type", "checksum"], &rows, out)?;
    }
    for n in &r.notes {
        writeln!(out, "{n}")?;
    }
    if r.dry_run {
        writeln!(
            out,
            "stamp {} --dry-run: would record {} ledger row(s); nothing was written",
            r.version,
            r.rows.len()
        )
    } else {
        writeln!(
            out,
            "stamp {}: recorded {} ledger row(s) as applied (applied_by says stamp); nothing was run",
            r.version,
            r.rows.len()
        )
    }
}

fn list(v: &[String]) -> String {
    v.join(", ")
}

fn render_adopt(r: &AdoptReport, out: &mut dyn Write) -> io::Result<()> {
    let verb = if r.dry_run { "would adopt" } else { "adopted" };
    for n in &r.nodes {
        let name = n.node.as_ref().map(|n| n.as_str()).unwrap_or("?");
        if n.standby {
            writeln!(
                out,
                "node `{name}`: hot standby, its ledger is the master's (replayed); nothing to do"
            )?;
            continue;
        }
        if n.adopted.is_empty() {
            writeln!(out, "node `{name}`: nothing to adopt")?;
        } else {
            writeln!(
                out,
                "node `{name}`: {verb} {} from {} (lazr's start and end times kept)",
                list(&n.adopted),
                r.table
            )?;
        }
        if !n.already.is_empty() {
            writeln!(
                out,
                "node `{name}`: already in pgconvoy's ledger: {}",
                list(&n.already)
            )?;
        }
        if !n.not_in_directory.is_empty() {
            writeln!(
                out,
                "node `{name}`: lazr has {}, which the patch directory lacks: not recorded",
                list(&n.not_in_directory)
            )?;
        }
        if !n.unfinished.is_empty() {
            writeln!(
                out,
                "node `{name}`: lazr started {} and never finished: not recorded (still pending)",
                list(&n.unfinished)
            )?;
        }
        if !n.lazr_own.is_empty() {
            writeln!(
                out,
                "node `{name}`: lazr.postgresql's own schema patch(es) {}: not recorded",
                list(&n.lazr_own)
            )?;
        }
    }
    if r.dry_run {
        writeln!(out, "stamp --from-lazr --dry-run: nothing was written")?;
    }
    Ok(())
}

/// `repair VERSION`.
pub fn repair(
    config: &Config,
    patches: &PatchSet,
    version: PatchVersion,
    format: StatusFormat,
    inv: &Invocation,
) -> Result<(), Error> {
    let report = runtime().block_on(crate::lifecycle::repair::repair(config, patches, version))?;
    finish(inv, format, &report, None, render_repair)
}

fn render_repair(r: &RepairReport, out: &mut dyn Write) -> io::Result<()> {
    if r.repaired.is_empty() {
        writeln!(
            out,
            "repair {}: no node records another checksum than {}'s ({}); nothing was written",
            r.version,
            r.file,
            short(&r.checksum)
        )?;
    } else {
        let touched: Vec<String> = r
            .repaired
            .iter()
            .map(|x| {
                format!(
                    "`{}` ({} book, was {})",
                    x.node,
                    format!("{:?}", x.book).to_lowercase(),
                    short(&x.old)
                )
            })
            .collect();
        writeln!(
            out,
            "repair {}: recorded checksum {} of {} on node(s) {}",
            r.version,
            short(&r.checksum),
            r.file,
            touched.join(", ")
        )?;
    }
    if !r.current.is_empty() {
        let names: Vec<String> = r.current.iter().map(|n| format!("`{n}`")).collect();
        writeln!(out, "already current on: {}", names.join(", "))?;
    }
    if !r.without.is_empty() {
        let names: Vec<String> = r.without.iter().map(|n| format!("`{n}`")).collect();
        writeln!(out, "not in the ledger of: {}", names.join(", "))?;
    }
    Ok(())
}

/// `history`.
pub fn history(config: &Config, args: &HistoryArgs, inv: &Invocation) -> Result<(), Error> {
    let mut report = runtime().block_on(crate::lifecycle::history::history(config, &args.nodes))?;
    let error = report.error();
    finish(inv, args.format, &report, error, |r, out| {
        render_history(r, &report.failures, out)
    })
}

fn render_history(r: &History, failures: &[Error], out: &mut dyn Write) -> io::Result<()> {
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|n| {
            let row = &n.row;
            let kind = match row.book {
                crate::db::ledger::Book::Main => row.patch_type.clone(),
                crate::db::ledger::Book::Local => format!("{} (master's own part)", row.patch_type),
            };
            let attempts = match (&row.first_start_time, row.attempts) {
                (Some(first), n) if n > 1 => format!("{n} (first {first})"),
                (_, n) => n.to_string(),
            };
            vec![
                row.start_time.clone(),
                n.node.to_string(),
                row.version.to_string(),
                kind,
                row.end_time.clone().unwrap_or_else(|| "unfinished".into()),
                row.duration_ms
                    .map(|ms| human::duration(Duration::from_millis(ms.max(0) as u64)))
                    .unwrap_or_else(|| "-".into()),
                attempts,
                row.applied_by.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        writeln!(out, "no ledger rows on the node(s) read")?;
    } else {
        text_table(
            &[
                "start",
                "node",
                "version",
                "type",
                "end",
                "duration",
                "attempts",
                "applied_by",
            ],
            &rows,
            out,
        )?;
    }
    if !r.deployments.is_empty() {
        writeln!(out, "\npackage deployments:")?;
        let rows: Vec<Vec<String>> = r
            .deployments
            .iter()
            .map(|n| {
                let d = &n.deployment;
                let state = match (&d.aside_schema, &d.retired_at) {
                    (Some(aside), Some(at)) => format!("{} (as {aside}, {at})", d.state),
                    (None, Some(at)) => format!("{} ({at})", d.state),
                    _ => d.state.clone(),
                };
                vec![
                    d.deployed_at.clone(),
                    n.node.to_string(),
                    d.name.clone(),
                    d.version.clone(),
                    d.schema.clone(),
                    d.mode.clone(),
                    state,
                    d.deployed_by.clone(),
                ]
            })
            .collect();
        text_table(
            &[
                "deployed",
                "node",
                "package",
                "version",
                "schema",
                "mode",
                "state",
                "deployed_by",
            ],
            &rows,
            out,
        )?;
    }
    for e in failures {
        writeln!(out, "{}", e.chain())?;
    }
    Ok(())
}

/// `unlock [--force]`.
pub fn unlock(config: &Config, args: &UnlockArgs, inv: &Invocation) -> Result<(), Error> {
    let report = runtime().block_on(crate::lifecycle::unlock::unlock(config, args.force))?;
    let error = report.error();
    finish(inv, args.format, &report, error, render_unlock)
}

fn render_unlock(r: &UnlockReport, out: &mut dyn Write) -> io::Result<()> {
    let Some(h) = &r.holder else {
        return writeln!(
            out,
            "nobody holds the cluster lock on master node `{}`",
            r.master
        );
    };
    writeln!(
        out,
        "the cluster lock on master node `{}` is held by: {h}",
        r.master
    )?;
    for n in &r.nodes {
        if let Some(e) = &n.error {
            writeln!(out, "node `{}`: {e}", n.node)?;
            continue;
        }
        if n.sessions.is_empty() {
            writeln!(out, "node `{}`: no session of that coordinator", n.node)?;
            continue;
        }
        writeln!(out, "node `{}`:", n.node)?;
        for s in &n.sessions {
            let mut line = format!("  server pid {}: {}", s.pid, s.state);
            if let Some(t) = &s.state_since {
                line.push_str(&format!(" since {t}"));
            }
            if let Some(t) = &s.transaction_since {
                line.push_str(&format!(", transaction open since {t}"));
            }
            if let Some(w) = &s.waiting_on {
                line.push_str(&format!(", waiting on {w}"));
            }
            if s.holds_cluster_lock {
                line.push_str(" [holds the cluster lock]");
            }
            if !s.query.is_empty() {
                line.push_str(&format!(": {}", s.query));
            }
            if n.ended.contains(&s.pid) {
                line.push_str(" — ENDED");
            }
            writeln!(out, "{line}")?;
        }
    }
    if !r.forced {
        writeln!(
            out,
            "to end these sessions (the coordinator's claim and open transactions roll back, the lock is freed): pgconvoy unlock --force"
        )
    } else if r.freed {
        writeln!(
            out,
            "ended the coordinator's sessions; the cluster lock is free"
        )
    } else {
        Ok(())
    }
}
