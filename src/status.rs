//! `pgconvoy status`: every node at once — reachable, version, recovery, what
//! its ledger holds, what it still needs, and how it diverges from the master.
//! Reads only: safe for a read-only role.

use futures::stream::{self, StreamExt};

use crate::config::{Config, Role};
use crate::db::cluster::{Cluster, Node};
use crate::db::ledger::Ledger;
use crate::db::probe::{probe_keeping_session, NodeProbe};
use crate::error::Error;
use crate::patches::discover::PatchSet;
use crate::patches::patch::PatchVersion;
use crate::upgrade::plan;

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
    pub prepared: Vec<crate::db::prepared::Prepared>,
    /// Logical subscriptions in this node's database.
    pub subscriptions: Vec<crate::replication::subscriptions::Subscription>,
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
    let observed: Vec<Observed> = stream::iter(cluster.nodes.iter())
        .map(|n| observe(n, &ledger))
        .buffered(cluster.jobs)
        .collect()
        .await;
    let master_done: Vec<PatchVersion> = observed[0]
        .probe
        .ledger
        .main
        .iter()
        .filter(|(_, r)| r.is_done())
        .map(|(v, _)| *v)
        .collect();
    let nodes = cluster
        .nodes
        .iter()
        .zip(observed)
        .map(|(node, observed)| {
            let Observed {
                probe: p,
                prepared,
                subscriptions,
                replay_lsn,
            } = observed;
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
        topology_problems: crate::replication::topology::topology_problems(
            config.replication,
            &topology,
        ),
        config: config.path.display().to_string(),
        patches: patches.dir.display().to_string(),
        ledger_table: ledger.name(),
        nodes,
    }
}

/// What `status` reads on one node: the first look, then what only status shows.
struct Observed {
    probe: NodeProbe,
    prepared: Vec<crate::db::prepared::Prepared>,
    subscriptions: Vec<crate::replication::subscriptions::Subscription>,
    replay_lsn: Option<String>,
}

async fn observe(node: &Node, ledger: &Ledger) -> Observed {
    let (probe, session) = probe_keeping_session(node, ledger).await;
    let mut p = Observed {
        probe,
        prepared: Vec::new(),
        subscriptions: Vec::new(),
        replay_lsn: None,
    };
    let Some(session) = session else {
        return p;
    };
    if let Ok(prepared) = crate::db::prepared::list(session.client(), ledger).await {
        p.prepared = prepared;
    }
    if let Ok(subs) = crate::replication::subscriptions::subscriptions(session.client()).await {
        p.subscriptions = subs;
    }
    if p.probe.in_recovery == Some(true) {
        if let Ok(row) = session
            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
            .await
        {
            p.replay_lsn = row.get(0);
        }
    }
    p
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
