//! `pgconvoy status`: the report as text (a table and one line per problem) or JSON.

use std::io::{self, Write};

use crate::config::Config;
use crate::error::Error;
use crate::output;
use crate::output::table::text_table;
use crate::output::StatusFormat;
use crate::patches::discover::PatchSet;
use crate::status::{NodeStatus, StatusReport};

use super::Invocation;

/// The report as text: a table, then one line per problem.
pub fn render_text(report: &StatusReport, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "cluster {} (patches in {}, ledger {}, replication {})",
        report.config, report.patches, report.ledger_table, report.replication
    )?;
    for p in &report.topology_problems {
        writeln!(out, "BLOCKING: {p}")?;
    }
    for f in &report.slony {
        let label = match f.gravity {
            crate::replication::slony::preflight::Gravity::Refused => "REFUSED",
            crate::replication::slony::preflight::Gravity::Blocking => "BLOCKING",
            crate::replication::slony::preflight::Gravity::Warning => "warning",
        };
        writeln!(out, "{label}: slony: {}", f.message)?;
    }
    let rows: Vec<Vec<String>> = report
        .nodes
        .iter()
        .map(|n| {
            let state = match (&n.error, n.in_recovery) {
                (Some(_), _) if n.reachable => format!(
                    "up {}, LEDGER UNREADABLE",
                    n.server_version.as_deref().unwrap_or("?")
                ),
                (Some(_), _) => "UNREACHABLE".to_string(),
                (None, Some(true)) => format!(
                    "up {} (in recovery)",
                    n.server_version.as_deref().unwrap_or("?")
                ),
                (None, _) => format!("up {}", n.server_version.as_deref().unwrap_or("?")),
            };
            vec![
                n.name.to_string(),
                format!("{:?}", n.role).to_lowercase(),
                endpoint(n),
                state,
                security(n),
                n.applied.len().to_string(),
                list(&n.pending),
            ]
        })
        .collect();
    text_table(
        &[
            "node", "role", "endpoint", "state", "tls", "applied", "pending",
        ],
        &rows,
        out,
    )?;
    for n in &report.nodes {
        if let Some(e) = &n.error {
            writeln!(out, "{e}")?;
        }
        if let Some(w) = &n.tls_warning {
            writeln!(out, "warning: node `{}`: {w}", n.name)?;
        }
        if !n.unfinished.is_empty() {
            writeln!(
                out,
                "node `{}`: started but not finished: {}",
                n.name,
                n.unfinished.join(", ")
            )?;
        }
        if !n.missing_from_master.is_empty() {
            writeln!(
                out,
                "node `{}`: behind the cluster, missing {} (applied to the cluster before it joined or was restored); `upgrade` catches it up",
                n.name,
                n.missing_from_master.join(", ")
            )?;
        }
        for s in &n.subscriptions {
            let state = if !s.enabled {
                "disabled".to_string()
            } else if s.worker_running {
                "apply worker running".to_string()
            } else {
                "APPLY WORKER NOT RUNNING".to_string()
            };
            writeln!(
                out,
                "node `{}`: subscription `{}` to {}: {state}, {} apply error(s)",
                n.name,
                s.name,
                s.publications.join(", "),
                s.apply_errors
            )?;
        }
        if let Some(lsn) = &n.replay_lsn {
            writeln!(out, "node `{}`: standby, replayed up to {lsn}", n.name)?;
        }
        for p in &n.prepared {
            writeln!(
                out,
                "node `{}`: prepared transaction '{}' since {} (interrupted --atomic run): run `pgconvoy recover`",
                n.name, p.gid, p.prepared_at
            )?;
        }
        for d in &n.drift {
            writeln!(out, "drift: {d}")?;
        }
        if !n.packages.is_empty() {
            let list: Vec<String> = n
                .packages
                .iter()
                .map(|p| format!("{} {}", p.name, p.version))
                .collect();
            writeln!(out, "node `{}`: packages {}", n.name, list.join(", "))?;
        }
        for d in &n.packages_differ {
            writeln!(out, "node `{}`: differs from the master: {d}", n.name)?;
        }
    }
    Ok(())
}

/// Where the node's session went (`host:port/db`), and which of several hosts that was.
fn endpoint(n: &NodeStatus) -> String {
    match &n.host {
        None => n.endpoint.clone(),
        Some(h) if n.hosts.len() > 1 => {
            let i = n.hosts.iter().position(|x| x == h).map_or(0, |i| i + 1);
            format!("{h}/{} (host {i} of {})", n.database, n.hosts.len())
        }
        Some(h) => format!("{h}/{}", n.database),
    }
}

/// The tls column: `TLSv1.3 verified` (chain and host name), `TLSv1.3 ca-verified`,
/// `TLSv1.3 unverified`, `no` for a plain session, `-` when not connected.
fn security(n: &NodeStatus) -> String {
    match (&n.tls, n.reachable) {
        (_, false) => "-".into(),
        (None, true) => "no".into(),
        (Some(t), true) => {
            let how = match (t.certificate_verified, t.host_name_verified) {
                (true, true) => "verified",
                (true, false) => "ca-verified",
                _ => "unverified",
            };
            format!("{} {how}", t.version)
        }
    }
}

fn list(v: &[String]) -> String {
    match v.len() {
        0 => "-".into(),
        1..=6 => v.join(", "),
        n => format!("{}, … {} ({n} in all)", v[..3].join(", "), v[n - 1]),
    }
}

/// `pgconvoy status`: reads every node, prints the report, exits by what it found.
pub fn status(
    config: &Config,
    patches: &PatchSet,
    format: StatusFormat,
    inv: &Invocation,
) -> Result<(), Error> {
    let report = super::runtime().block_on(crate::status::status(config, patches));
    let error = report.error();
    inv.write_metrics(error.as_ref(), 0, report.node_metrics());
    match format {
        StatusFormat::Json => inv.finish_json(Some(&report), error),
        StatusFormat::Text => {
            output::to_stdout(|out| render_text(&report, out)).map_err(Error::Output)?;
            error.map_or(Ok(()), Err)
        }
    }
}
