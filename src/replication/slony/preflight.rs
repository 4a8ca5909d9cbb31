//! The Slony preflight (pure): what `status`, the dry run and `upgrade` check before a run —
//! the configured topology against the cluster's (`sl_node`, each node's own id, the set and
//! its origin and subscribers), the ledger kept out of replication, slon liveness, and lag
//! (`sl_status`) against `lag_threshold`.

use std::fmt;
use std::time::Duration;

use super::catalog::Lag;
use super::join::SetCatalog;
use crate::config::{NodeName, SlonyConfig};

/// What one node's database says about the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: NodeName,
    /// The cluster's schema exists there.
    pub has_cluster: bool,
    /// `getLocalNodeId` there (when the schema exists).
    pub local_id: Option<u32>,
    /// Its own slon is connected (when the schema exists).
    pub slon_alive: Option<bool>,
}

/// What the origin (the master) says about the whole cluster.
#[derive(Debug, Clone, Default)]
pub struct OriginView {
    /// `sl_node` ids.
    pub nodes: Vec<u32>,
    pub sets: SetCatalog,
    pub lag: Vec<Lag>,
    /// Ledger tables found in a set: `(schema.table, set)`.
    pub ledger_in_sets: Vec<(String, u32)>,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gravity {
    /// Worth knowing; nothing stops.
    Warning,
    /// A run now would stall or wait in vain (lag, a slon down): the dry run exits 1 and
    /// `upgrade` refuses before writing anything.
    Blocking,
    /// The configuration does not describe this cluster, or it is set up in a way pgconvoy
    /// refuses (the ledger replicated): exit 2.
    Refused,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Concern {
    /// The config and the cluster disagree (nodes, ids, the set, its origin, subscribers).
    Topology,
    /// A ledger table is in a replicated set.
    LedgerReplicated,
    /// A node's slon daemon is not running.
    SlonDown,
    /// A subscription is not active yet.
    SubscriptionInactive,
    /// A receiver lags the origin (`sl_status`).
    Lag,
}

/// One finding, naming the node it is about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub gravity: Gravity,
    pub concern: Concern,
    pub node: Option<String>,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn secs(d: Duration) -> String {
    if d.as_secs() >= 120 {
        format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Everything the preflight finds; `nodes` is every node of the file, master first, and
/// `origin` is `None` when the master has no cluster schema (already a finding).
pub fn assess(
    cfg: &SlonyConfig,
    nodes: &[NodeView],
    origin: Option<&OriginView>,
    lag_threshold: Duration,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |gravity, concern, node: Option<&NodeName>, message: String| {
        out.push(Finding {
            gravity,
            concern,
            node: node.map(|n| n.to_string()),
            message,
        });
    };
    let cluster = &cfg.cluster;
    for n in nodes {
        let want = cfg.node_id(&n.name);
        if !n.has_cluster {
            push(
                Gravity::Refused,
                Concern::Topology,
                Some(&n.name),
                format!(
                    "node `{}` has no slony cluster `{cluster}` (schema `{}` is missing): it is not a slony node, or `slony.cluster` is wrong",
                    n.name,
                    cluster.schema()
                ),
            );
            continue;
        }
        if let Some(got) = n.local_id.filter(|got| *got != want) {
            push(
                Gravity::Refused,
                Concern::Topology,
                Some(&n.name),
                format!(
                    "node `{}` is slony node {got}, but `slony.nodes` says {want}",
                    n.name
                ),
            );
        }
        if n.slon_alive == Some(false) {
            push(
                Gravity::Blocking,
                Concern::SlonDown,
                Some(&n.name),
                format!(
                    "the slon daemon of node `{}` (slony node {want}) is not running: nothing would replicate to or confirm from it",
                    n.name
                ),
            );
        }
    }
    let Some(origin) = origin else {
        return out;
    };
    let master = &nodes[0].name;
    let master_id = cfg.node_id(master);
    for (name, id) in &cfg.nodes {
        if !origin.nodes.contains(id) {
            push(
                Gravity::Refused,
                Concern::Topology,
                Some(name),
                format!(
                    "node `{name}` is slony node {id} in the config, but cluster `{cluster}` has no node {id} (sl_node on the master)"
                ),
            );
        }
    }
    for id in &origin.nodes {
        if cfg.node_named(*id).is_none() {
            push(
                Gravity::Refused,
                Concern::Topology,
                None,
                format!(
                    "cluster `{cluster}` has slony node {id}, which no node of the config is: pgconvoy would not wait for it nor keep its ledger (add it to the config and `slony.nodes`)"
                ),
            );
        }
    }
    let set = cfg.set;
    match origin.sets.sets.iter().find(|(id, _, _)| *id == set) {
        None => push(
            Gravity::Refused,
            Concern::Topology,
            None,
            format!("replication set {set} (key `slony.set`) does not exist in cluster `{cluster}`"),
        ),
        Some((_, set_origin, _)) if *set_origin != master_id => push(
            Gravity::Refused,
            Concern::Topology,
            Some(master),
            format!(
                "replication set {set} has origin slony node {set_origin}, but the master `{master}` is slony node {master_id}: std patches must run on the set's origin"
            ),
        ),
        Some(_) => {
            for n in &nodes[1..] {
                let id = cfg.node_id(&n.name);
                match origin
                    .sets
                    .subscriptions
                    .iter()
                    .find(|s| s.set == set && s.receiver == id)
                {
                    None => push(
                        Gravity::Refused,
                        Concern::Topology,
                        Some(&n.name),
                        format!(
                            "node `{}` (slony node {id}) does not subscribe to set {set}: it would not receive std patches",
                            n.name
                        ),
                    ),
                    Some(s) if !s.active => push(
                        Gravity::Blocking,
                        Concern::SubscriptionInactive,
                        Some(&n.name),
                        format!(
                            "the subscription of node `{}` to set {set} is not active yet (still copying?)",
                            n.name
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
    }
    for (table, in_set) in &origin.ledger_in_sets {
        push(
            Gravity::Refused,
            Concern::LedgerReplicated,
            Some(master),
            format!(
                "ledger table `{table}` is in replication set {in_set}: each node keeps its own ledger; drop it from the set (slonik `set drop table`)"
            ),
        );
    }
    for lag in &origin.lag {
        let Some(name) = cfg.node_named(lag.receiver) else {
            continue;
        };
        if lag.time > lag_threshold || lag.since_confirmed > lag_threshold {
            push(
                Gravity::Blocking,
                Concern::Lag,
                Some(name),
                format!(
                    "node `{name}` lags the origin by {} event(s), {} (lag_threshold {}); it last confirmed an event {} ago",
                    lag.events,
                    secs(lag.time),
                    secs(lag_threshold),
                    secs(lag.since_confirmed)
                ),
            );
        }
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.gravity));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SlonyClusterName;
    use crate::replication::slony::join::Subscription;
    use std::collections::BTreeMap;

    fn n(s: &str) -> NodeName {
        NodeName::parse(s).unwrap()
    }

    fn cfg() -> SlonyConfig {
        SlonyConfig {
            cluster: SlonyClusterName::parse("convoy").unwrap(),
            set: 1,
            nodes: BTreeMap::from([(n("node0"), 1), (n("node1"), 2), (n("node2"), 3)]),
            slonik: "slonik".into(),
        }
    }

    fn view(name: &str, id: u32) -> NodeView {
        NodeView {
            name: n(name),
            has_cluster: true,
            local_id: Some(id),
            slon_alive: Some(true),
        }
    }

    fn sub(receiver: u32, active: bool) -> Subscription {
        Subscription {
            set: 1,
            provider: 1,
            receiver,
            forward: true,
            active,
        }
    }

    fn lag(receiver: u32, secs: u64) -> Lag {
        Lag {
            receiver,
            events: i64::try_from(secs).unwrap(),
            time: Duration::from_secs(secs),
            since_confirmed: Duration::from_secs(secs),
        }
    }

    fn healthy() -> (Vec<NodeView>, OriginView) {
        (
            vec![view("node0", 1), view("node1", 2), view("node2", 3)],
            OriginView {
                nodes: vec![1, 2, 3],
                sets: SetCatalog {
                    sets: vec![(1, 1, "app".into())],
                    subscriptions: vec![sub(2, true), sub(3, true)],
                    max_table_id: 1,
                    max_sequence_id: 0,
                },
                lag: vec![lag(2, 1), lag(3, 1)],
                ledger_in_sets: Vec::new(),
            },
        )
    }

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn a_healthy_cluster_has_no_findings() {
        let (nodes, origin) = healthy();
        assert_eq!(assess(&cfg(), &nodes, Some(&origin), T), vec![]);
    }

    #[test]
    fn a_stopped_slon_and_lag_block() {
        let (mut nodes, mut origin) = healthy();
        nodes[2].slon_alive = Some(false);
        origin.lag[1] = lag(3, 45);
        let f = assess(&cfg(), &nodes, Some(&origin), T);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f
            .iter()
            .all(|f| f.gravity == Gravity::Blocking && f.node.as_deref() == Some("node2")));
        assert!(f[1].message.contains("45 event(s)"), "{f:?}");
    }

    #[test]
    fn topology_mismatches_are_refused() {
        let (mut nodes, mut origin) = healthy();
        origin.nodes.push(4);
        nodes[1].local_id = Some(5);
        let f = assess(&cfg(), &nodes, Some(&origin), T);
        assert!(f.iter().all(|f| f.gravity == Gravity::Refused), "{f:?}");
        assert!(f.iter().any(|f| f.message.contains("slony node 4")));
        assert!(f
            .iter()
            .any(|f| f.node.as_deref() == Some("node1") && f.message.contains("slony node 5")));

        let (nodes, mut origin) = healthy();
        origin.nodes.retain(|id| *id != 3);
        origin.sets.subscriptions.retain(|s| s.receiver != 3);
        let f = assess(&cfg(), &nodes, Some(&origin), T);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f.iter().all(|f| f.node.as_deref() == Some("node2")));

        let (mut nodes, _) = healthy();
        nodes[1].has_cluster = false;
        let f = assess(&cfg(), &nodes, None, T);
        assert_eq!(f[0].gravity, Gravity::Refused);
        assert!(f[0].message.contains("_convoy"));
    }

    #[test]
    fn the_set_must_start_at_the_master_and_the_ledger_stay_out() {
        let (nodes, mut origin) = healthy();
        origin.sets.sets[0].1 = 2;
        origin.ledger_in_sets.push(("pgconvoy.revision".into(), 1));
        let f = assess(&cfg(), &nodes, Some(&origin), T);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f.iter().any(|f| f.message.contains("origin slony node 2")));
        assert!(f.iter().any(|f| f.message.contains("pgconvoy.revision")));

        let (nodes, mut origin) = healthy();
        origin.sets.subscriptions[0].active = false;
        let f = assess(&cfg(), &nodes, Some(&origin), T);
        assert_eq!(f[0].gravity, Gravity::Blocking);
        let (nodes, mut origin) = healthy();
        origin.sets.sets.clear();
        let f = assess(&cfg(), &nodes, Some(&origin), T);
        assert!(f[0].message.contains("set 1"));
    }
}
