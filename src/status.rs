//! `pgconvoy status`: every node at once — reachable, version, recovery, what
//! its ledger holds, what it still needs, and how it diverges from the master.
//! Reads only: safe for a read-only role.

use futures::stream::{self, StreamExt};

use crate::config::NodeName;
use crate::config::{Config, Role};
use crate::db::cluster::{Cluster, Node};
use crate::db::ledger::Ledger;
use crate::db::libpq::params::SslMode;
use crate::db::pgerror::LedgerUnreadable;
use crate::db::probe::{probe_keeping_session, NodeProbe};
use crate::db::tls::TlsInfo;
use crate::error::{exit, Error};
use crate::output::metrics::NodeMetrics;
use crate::packages::record::PackageBook;
use crate::patches::discover::PatchSet;
use crate::replication::slony::error::SlonyError;
use crate::replication::slony::ops::views;
use crate::replication::slony::preflight::{assess, Concern, Finding as SlonyFinding, Gravity};
use crate::replication::topology::{topology_problems, TopologyProblem};
use crate::upgrade::plan;
use crate::upgrade::plan::Drift;

#[derive(Debug, serde::Serialize)]
pub struct StatusReport {
    pub config: String,
    pub patches: String,
    pub ledger_table: String,
    /// `replication:` from the config.
    pub replication: crate::config::Replication,
    /// Where the nodes' recovery state contradicts the configured topology.
    pub topology_problems: Vec<TopologyProblem>,
    /// `replication: slony`: what the Slony preflight finds (topology against the config,
    /// a replicated ledger, slon daemons, lag); `refused` ones are a topology error (exit 2).
    pub slony: Vec<SlonyFinding>,
    /// The Slony cluster's name (`slony.cluster`).
    #[serde(skip)]
    pub slony_cluster: Option<String>,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, serde::Serialize)]
pub struct NodeStatus {
    pub name: NodeName,
    pub role: Role,
    pub endpoint: String,
    /// The node answered (its ledger may still be unreadable: see `ledger_unreadable`).
    pub reachable: bool,
    pub database: String,
    /// Every host of the DSN, in order (`host:port`, or the socket directory).
    pub hosts: Vec<String>,
    /// The host the session went to: with several hosts and `target_session_attrs`,
    /// the one that qualified.
    pub host: Option<String>,
    /// Whether the session is encrypted (TLS).
    pub encrypted: bool,
    /// The session's TLS: version, cipher, and what was verified.
    pub tls: Option<TlsInfo>,
    /// `sslmode` from the DSN (or its service, or `PGSSLMODE`).
    pub sslmode: SslMode,
    /// `sslmode` below `verify-full` to a host on another machine.
    pub tls_warning: Option<String>,
    /// The node answered but its ledger could not be read (e.g. a missing grant).
    pub ledger_unreadable: Option<LedgerUnreadable>,
    pub error: Option<crate::error::ErrorObject>,
    pub server_version: Option<String>,
    pub in_recovery: Option<bool>,
    pub ledger_exists: bool,
    /// Versions finished on this node (on the master: applied to the cluster).
    pub applied: Vec<String>,
    /// Versions this node's role still needs.
    pub pending: Vec<String>,
    /// Rows started and not finished (a failed or killed run).
    pub unfinished: Vec<String>,
    /// Replicas: direct/concurrent patches the cluster has applied that this node lacks;
    /// `upgrade` catches it up on them before anything new.
    pub missing_from_master: Vec<String>,
    /// Applied patches whose file changed or vanished.
    pub drift: Vec<Drift>,
    /// Prepared transactions left by an interrupted `--atomic` run (`pgconvoy recover` resolves them).
    pub prepared: Vec<crate::db::prepared::Prepared>,
    /// Logical subscriptions in this node's database.
    pub subscriptions: Vec<crate::replication::subscriptions::Subscription>,
    /// Standbys: the WAL position replayed so far.
    pub replay_lsn: Option<String>,
    /// Code packages deployed here (live rows of `pgconvoy.package`).
    pub packages: Vec<crate::packages::plan::Deployed>,
    /// Replicas: how this node's packages differ from the master's.
    pub packages_differ: Vec<String>,
    /// Seconds this node lags behind the master, where known: a standby's replay delay
    /// (0 when it has replayed all it received), a subscriber's from the master's
    /// `pg_stat_replication` (its subscription's walsender; 0 when caught up).
    pub replication_lag_seconds: Option<f64>,
}

impl StatusReport {
    /// What `status` ends with, read off the report (not off an exit code): unreachable
    /// nodes (exit 1) before a topology that contradicts the config, then drift (exit 2).
    pub fn error(&self) -> Option<Error> {
        let unreachable: Vec<NodeName> = self
            .nodes
            .iter()
            .filter(|n| !n.reachable)
            .map(|n| n.name.clone())
            .collect();
        if !unreachable.is_empty() {
            return Some(Error::Unreachable { nodes: unreachable });
        }
        if let Some(n) = self.nodes.iter().find(|n| n.ledger_unreadable.is_some()) {
            return Some(Error::LedgerUnreadable {
                node: n.name.clone(),
                unreadable: Box::new(n.ledger_unreadable.clone()?),
            });
        }
        if !self.topology_problems.is_empty() {
            return Some(Error::Topology {
                problems: self.topology_problems.clone(),
            });
        }
        let refused: Vec<SlonyFinding> = self
            .slony
            .iter()
            .filter(|f| f.gravity == Gravity::Refused)
            .cloned()
            .collect();
        if !refused.is_empty() {
            return Some(
                SlonyError::Refused {
                    cluster: self.slony_cluster.clone().unwrap_or_default(),
                    findings: refused,
                }
                .into(),
            );
        }
        let drift: Vec<Drift> = self
            .nodes
            .iter()
            .flat_map(|n| n.drift.iter().cloned())
            .collect();
        if !drift.is_empty() {
            return Some(Error::Drift { drift });
        }
        None
    }

    pub fn exit_code(&self) -> u8 {
        self.error().map_or(exit::SUCCESS, |e| e.exit_code())
    }

    /// Per node, what `--metrics-file` reports: up, pending, lag.
    pub fn node_metrics(&self) -> Vec<NodeMetrics> {
        self.nodes
            .iter()
            .map(|n| NodeMetrics {
                node: n.name.to_string(),
                up: n.reachable,
                pending: n.reachable.then_some(n.pending.len()),
                lag_seconds: n.replication_lag_seconds,
            })
            .collect()
    }
}

pub async fn status(config: &Config, patches: &PatchSet) -> StatusReport {
    let cluster = Cluster::new(config);
    let ledger = Ledger::new(config.ledger.clone());
    let book = PackageBook::new(&config.ledger.schema);
    let observed: Vec<Observed> = stream::iter(cluster.nodes.iter())
        .map(|n| observe(n, &ledger, &book))
        .buffered(cluster.jobs)
        .collect()
        .await;
    // Subscribers' lag as the master's walsenders see it, by subscription name.
    let walsenders = observed[0].walsenders.clone();
    let master_ledger = observed[0].probe.ledger.clone();
    let master_packages = observed[0].packages.clone();
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
                packages: node_packages,
                replay_lag,
                walsenders: _,
            } = observed;
            let replication_lag_seconds = replay_lag.or_else(|| {
                subscriptions
                    .iter()
                    .filter_map(|s| walsenders.iter().find(|w| w.0 == s.name))
                    .filter_map(|w| w.1)
                    .reduce(f64::max)
            });
            let role = node.role();
            let l = &p.ledger;
            let reachable = p.reachable();
            let summary = plan::summarize(
                patches,
                config.replication,
                role,
                l,
                &master_ledger,
                reachable,
            );
            let packages_differ = if role == Role::Replica && reachable {
                crate::packages::status::differences(&master_packages, &node_packages)
            } else {
                Vec::new()
            };
            let reached = p.reached.clone();
            NodeStatus {
                name: node.name().clone(),
                role,
                endpoint: node.config.endpoint.clone(),
                reachable: p.connected,
                error: p.error,
                database: node.config.database().to_string(),
                hosts: node.config.conn.hosts.iter().map(|h| h.label()).collect(),
                host: reached.as_ref().map(|r| r.host.clone()),
                encrypted: reached.as_ref().is_some_and(|r| r.tls.is_some()),
                tls: reached.and_then(|r| r.tls),
                sslmode: node.config.conn.ssl.mode,
                tls_warning: node.config.conn.weak_tls_warning(),
                ledger_unreadable: p.ledger_unreadable,
                server_version: p.server_version,
                in_recovery: p.in_recovery,
                ledger_exists: l.exists,
                applied: summary.applied,
                pending: if reachable {
                    plan::node_pending(patches, config.replication, role, l)
                        .iter()
                        .map(|v| v.to_string())
                        .collect()
                } else {
                    Vec::new()
                },
                unfinished: summary.unfinished,
                missing_from_master: summary.missing_from_master,
                drift: plan::drift(patches, node.name(), l),
                prepared,
                subscriptions,
                replay_lsn,
                packages: node_packages,
                packages_differ,
                replication_lag_seconds,
            }
        })
        .collect::<Vec<NodeStatus>>();
    let topology_problems = topology_problems(
        config.replication,
        cluster
            .nodes
            .iter()
            .zip(&nodes)
            .map(|(node, n)| (&node.config, n.in_recovery)),
    );
    let slony = match (&config.slony, nodes.iter().all(|n| n.reachable)) {
        (Some(cfg), true) => match views(cfg, &cluster, &ledger).await {
            Ok((views, origin)) => assess(cfg, &views, origin.as_ref(), config.lag_threshold),
            Err(e) => vec![SlonyFinding {
                gravity: Gravity::Blocking,
                concern: Concern::Topology,
                node: e.node().map(ToString::to_string),
                message: format!("cannot read the slony catalog: {e}"),
            }],
        },
        _ => Vec::new(),
    };
    StatusReport {
        replication: config.replication,
        topology_problems,
        slony,
        slony_cluster: config.slony.as_ref().map(|c| c.cluster.to_string()),
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
    packages: Vec<crate::packages::plan::Deployed>,
    /// A standby's replay delay in seconds.
    replay_lag: Option<f64>,
    /// The master: its walsenders' (application name, lag in seconds).
    walsenders: Vec<(String, Option<f64>)>,
}

/// A standby's lag: 0 when it streams and has replayed everything it received (an idle
/// master writes nothing, and the age of the last replayed commit would grow without any
/// lag), else the age of the last transaction it replayed.
const STANDBY_LAG: &str = "
    SELECT pg_last_wal_replay_lsn()::text,
           CASE WHEN EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')
                 AND pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
                ELSE greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp())) END::float8";

/// The master's walsenders and their lag (NULL lag columns on a streaming sender: idle
/// and caught up, so 0).
const WALSENDERS: &str = "
    SELECT coalesce(application_name, ''),
           CASE WHEN coalesce(replay_lag, flush_lag, write_lag) IS NULL AND state = 'streaming' THEN 0
                ELSE extract(epoch FROM coalesce(replay_lag, flush_lag, write_lag)) END::float8
      FROM pg_stat_replication";

async fn observe(node: &Node, ledger: &Ledger, book: &PackageBook) -> Observed {
    let (probe, session) = probe_keeping_session(node, ledger).await;
    let mut p = Observed {
        probe,
        prepared: Vec::new(),
        subscriptions: Vec::new(),
        replay_lsn: None,
        packages: Vec::new(),
        replay_lag: None,
        walsenders: Vec::new(),
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
    if let Ok(packages) = crate::packages::status::live(session.client(), book).await {
        p.packages = packages;
    }
    if p.probe.in_recovery == Some(true) {
        if let Ok(row) = session.query_one(STANDBY_LAG, &[]).await {
            p.replay_lsn = row.get(0);
            p.replay_lag = row.get(1);
        }
    } else if node.role() == Role::Master {
        // Reading another role's walsenders needs pg_read_all_stats; without it the
        // lag is simply unknown.
        if let Ok(rows) = session.query(WALSENDERS, &[]).await {
            p.walsenders = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit;

    fn node(name: &str, reachable: bool) -> NodeStatus {
        NodeStatus {
            name: NodeName::parse(name).unwrap(),
            role: Role::Replica,
            endpoint: "h:5432/app".into(),
            reachable,
            database: "app".into(),
            hosts: vec!["h:5432".into()],
            host: reachable.then(|| "h:5432".into()),
            encrypted: false,
            tls: None,
            sslmode: SslMode::Prefer,
            tls_warning: None,
            ledger_unreadable: None,
            error: (!reachable).then(|| {
                crate::error::ErrorObject::plain("node-unreachable", "connection refused")
            }),
            server_version: None,
            in_recovery: None,
            ledger_exists: false,
            applied: Vec::new(),
            pending: Vec::new(),
            unfinished: Vec::new(),
            missing_from_master: Vec::new(),
            drift: Vec::new(),
            prepared: Vec::new(),
            subscriptions: Vec::new(),
            replay_lsn: None,
            packages: Vec::new(),
            packages_differ: Vec::new(),
            replication_lag_seconds: None,
        }
    }

    fn report(nodes: Vec<NodeStatus>, topology: Vec<TopologyProblem>) -> StatusReport {
        StatusReport {
            config: "cluster.yaml".into(),
            patches: "patches".into(),
            ledger_table: "pgconvoy.revision".into(),
            replication: crate::config::Replication::Physical,
            topology_problems: topology,
            slony: Vec::new(),
            slony_cluster: None,
            nodes,
        }
    }

    #[test]
    fn errors_are_read_off_the_report_not_off_the_exit_code() {
        let problem = TopologyProblem {
            node: NodeName::parse("n1").unwrap(),
            message: "node `n1` is not in recovery".into(),
        };
        // A topology problem is reported as one, not as drift.
        let r = report(vec![node("n1", true)], vec![problem.clone()]);
        let e = r.error().unwrap();
        assert!(
            matches!(&e, Error::Topology { problems } if problems.len() == 1 && problems[0] == problem)
        );
        assert_eq!(r.exit_code(), exit::BAD_INPUT);
        // Unreachable nodes come first.
        let r = report(vec![node("n1", true), node("n2", false)], vec![problem]);
        let e = r.error().unwrap();
        assert!(matches!(&e, Error::Unreachable { nodes } if nodes[0].as_str() == "n2"));
        assert_eq!(r.exit_code(), exit::FAILED);
        assert!(report(vec![node("n1", true)], Vec::new()).error().is_none());
        // A node that answered but whose ledger its role cannot read.
        let mut locked = node("n3", true);
        locked.ledger_unreadable = Some(LedgerUnreadable {
            kind: "privilege",
            sqlstate: Some("42501".into()),
            message: "permission denied for schema pgconvoy".into(),
            missing_grants: vec!["GRANT USAGE ON SCHEMA \"pgconvoy\" TO \"r\"".into()],
        });
        let e = report(vec![node("n1", true), locked], Vec::new())
            .error()
            .unwrap();
        assert!(matches!(&e, Error::LedgerUnreadable { node, .. } if node.as_str() == "n3"));
        assert_eq!(e.exit_code(), exit::FAILED);
        assert_eq!(e.kind(), "ledger-privilege");
        assert!(e.to_string().contains("GRANT USAGE"), "{e}");
    }
}
