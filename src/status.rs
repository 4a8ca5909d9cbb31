//! `pgconvoy status`: every node at once — reachable, version, recovery, what
//! its ledger holds, what it still needs, and how it diverges from the master.
//! Reads only: safe for a read-only role.

use std::io::Write;

use futures::stream::{self, StreamExt};

use crate::cluster::{Cluster, Node};
use crate::config::{Config, Role};
use crate::error::Error;
use crate::ledger::Ledger;
use crate::patch::{PatchSet, PatchVersion};
use crate::plan;
use crate::report::text_table;

#[derive(Debug, serde::Serialize)]
pub struct StatusReport {
    pub config: String,
    pub patches: String,
    pub ledger_table: String,
    /// `replication:` from the config.
    pub replication: crate::config::Replication,
    /// Where the nodes' recovery state contradicts the configured topology.
    pub topology_problems: Vec<String>,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, serde::Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: Role,
    pub endpoint: String,
    pub reachable: bool,
    pub error: Option<String>,
    pub server_version: Option<String>,
    pub in_recovery: Option<bool>,
    pub ledger_exists: bool,
    /// Versions finished on this node (on the master: applied to the cluster).
    pub applied: Vec<String>,
    /// Versions this node's role still needs.
    pub pending: Vec<String>,
    /// Rows started and not finished (a failed or killed run).
    pub unfinished: Vec<String>,
    /// Replicas: direct/concurrent patches the master has applied that this node lacks.
    pub missing_from_master: Vec<String>,
    /// Applied patches whose file changed or vanished.
    pub drift: Vec<String>,
    /// Prepared transactions left by an interrupted `--atomic` run (`pgconvoy recover` resolves them).
    pub prepared: Vec<crate::recover::Prepared>,
    /// Logical subscriptions in this node's database.
    pub subscriptions: Vec<crate::replication::Subscription>,
    /// Standbys: the WAL position replayed so far.
    pub replay_lsn: Option<String>,
}

impl StatusReport {
    pub fn exit_code(&self) -> u8 {
        use crate::error::exit;
        if self.nodes.iter().any(|n| !n.reachable) {
            exit::FAILED
        } else if self.nodes.iter().any(|n| !n.drift.is_empty())
            || !self.topology_problems.is_empty()
        {
            exit::BAD_INPUT
        } else {
            exit::SUCCESS
        }
    }
}

pub async fn status(config: &Config, patches: &PatchSet) -> StatusReport {
    let cluster = Cluster::new(config);
    let ledger = Ledger::new(config.ledger.clone());
    let probes: Vec<Probe> = stream::iter(cluster.nodes.iter())
        .map(|n| probe(n, &ledger))
        .buffered(cluster.jobs)
        .collect()
        .await;
    let master_done: Vec<PatchVersion> = probes[0]
        .first
        .ledger
        .main
        .iter()
        .filter(|(_, r)| r.is_done())
        .map(|(v, _)| *v)
        .collect();
    let nodes = cluster
        .nodes
        .iter()
        .zip(probes)
        .map(|(node, probe)| {
            let Probe {
                first: p,
                prepared,
                subscriptions,
                replay_lsn,
            } = probe;
            let role = node.role();
            let l = &p.ledger;
            let done = |v: &PatchVersion| l.main.get(v).is_some_and(|r| r.is_done());
            let missing_from_master = if role == Role::Replica && p.error.is_none() {
                master_done
                    .iter()
                    .filter(|v| {
                        patches
                            .get(**v)
                            .is_some_and(|pt| pt.kind.runs_on_replicas())
                    })
                    .filter(|v| !done(v))
                    .map(|v| v.to_string())
                    .collect()
            } else {
                Vec::new()
            };
            let reachable = p.error.is_none();
            NodeStatus {
                name: node.name().to_string(),
                role,
                endpoint: node.config.endpoint.clone(),
                reachable,
                error: p.error,
                server_version: p.server_version,
                in_recovery: p.in_recovery,
                ledger_exists: l.exists,
                applied: l
                    .main
                    .values()
                    .filter(|r| r.is_done())
                    .map(|r| r.version.clone())
                    .collect(),
                pending: if reachable {
                    plan::node_pending(patches, role, l)
                        .iter()
                        .map(|v| v.to_string())
                        .collect()
                } else {
                    Vec::new()
                },
                unfinished: l
                    .main
                    .values()
                    .chain(l.local.values())
                    .filter(|r| !r.is_done())
                    .map(|r| r.version.clone())
                    .collect(),
                missing_from_master,
                drift: plan::drift(patches, node.name(), l)
                    .iter()
                    .map(|d| d.to_string())
                    .collect(),
                prepared,
                subscriptions,
                replay_lsn,
            }
        })
        .collect::<Vec<NodeStatus>>();
    let topology: Vec<(crate::config::NodeName, Role, bool)> = nodes
        .iter()
        .zip(cluster.nodes.iter())
        .filter_map(|(n, node): (&NodeStatus, _)| {
            n.in_recovery.map(|r| (node.name().clone(), n.role, r))
        })
        .collect();
    StatusReport {
        replication: config.replication,
        topology_problems: crate::replication::topology_problems(config.replication, &topology),
        config: config.path.display().to_string(),
        patches: patches.dir.display().to_string(),
        ledger_table: ledger.name(),
        nodes,
    }
}

struct Probe {
    first: crate::probe::Probe,
    prepared: Vec<crate::recover::Prepared>,
    subscriptions: Vec<crate::replication::Subscription>,
    replay_lsn: Option<String>,
}

async fn probe(node: &Node, ledger: &Ledger) -> Probe {
    let (first, session) = crate::probe::look(node, ledger).await;
    let mut p = Probe {
        first,
        prepared: Vec::new(),
        subscriptions: Vec::new(),
        replay_lsn: None,
    };
    let Some(session) = session else {
        return p;
    };
    if let Ok(prepared) = crate::recover::list(session.client(), ledger).await {
        p.prepared = prepared;
    }
    if let Ok(subs) = crate::replication::subscriptions(session.client()).await {
        p.subscriptions = subs;
    }
    if p.first.in_recovery == Some(true) {
        if let Ok(row) = session
            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
            .await
        {
            p.replay_lsn = row.get(0);
        }
    }
    p
}

pub fn render_text(report: &StatusReport, out: &mut dyn Write) {
    let _ = writeln!(
        out,
        "cluster {} (patches in {}, ledger {}, replication {})",
        report.config, report.patches, report.ledger_table, report.replication
    );
    for p in &report.topology_problems {
        let _ = writeln!(out, "BLOCKING: {p}");
    }
    let rows: Vec<Vec<String>> = report
        .nodes
        .iter()
        .map(|n| {
            let state = match (&n.error, n.in_recovery) {
                (Some(_), _) => "UNREACHABLE".to_string(),
                (None, Some(true)) => format!(
                    "up {} (in recovery)",
                    n.server_version.as_deref().unwrap_or("?")
                ),
                (None, _) => format!("up {}", n.server_version.as_deref().unwrap_or("?")),
            };
            vec![
                n.name.clone(),
                format!("{:?}", n.role).to_lowercase(),
                n.endpoint.clone(),
                state,
                n.applied.len().to_string(),
                list(&n.pending),
            ]
        })
        .collect();
    text_table(
        &["node", "role", "endpoint", "state", "applied", "pending"],
        &rows,
        out,
    );
    for n in &report.nodes {
        if let Some(e) = &n.error {
            let _ = writeln!(out, "node `{}`: {e}", n.name);
        }
        if !n.unfinished.is_empty() {
            let _ = writeln!(
                out,
                "node `{}`: started but not finished: {}",
                n.name,
                n.unfinished.join(", ")
            );
        }
        if !n.missing_from_master.is_empty() {
            let _ = writeln!(
                out,
                "node `{}`: diverges from the master, missing {}",
                n.name,
                n.missing_from_master.join(", ")
            );
        }
        for s in &n.subscriptions {
            let state = if !s.enabled {
                "disabled".to_string()
            } else if s.worker_running {
                "apply worker running".to_string()
            } else {
                "APPLY WORKER NOT RUNNING".to_string()
            };
            let _ = writeln!(
                out,
                "node `{}`: subscription `{}` to {}: {state}, {} apply error(s)",
                n.name,
                s.name,
                s.publications.join(", "),
                s.apply_errors
            );
        }
        if let Some(lsn) = &n.replay_lsn {
            let _ = writeln!(out, "node `{}`: standby, replayed up to {lsn}", n.name);
        }
        for p in &n.prepared {
            let _ = writeln!(
                out,
                "node `{}`: prepared transaction '{}' since {} (interrupted --atomic run): run `pgconvoy recover`",
                n.name, p.gid, p.prepared_at
            );
        }
        for d in &n.drift {
            let _ = writeln!(out, "drift: {d}");
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

/// Convenience for `run`: the error a status run maps to, if any.
pub fn as_error(report: &StatusReport) -> Option<Error> {
    match report.exit_code() {
        0 => None,
        1 => Some(Error::Failed("one or more nodes are unreachable".into())),
        _ => Some(Error::BadInput(
            "applied patches have changed on disk (drift)".into(),
        )),
    }
}
