//! Whether each node's recovery state matches the configured replication mode.

use std::fmt;

use crate::config::{NodeConfig, NodeName, Replication, Role};

/// A node whose recovery state contradicts `replication:` in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyProblem {
    pub node: NodeName,
    pub message: String,
}

impl fmt::Display for TopologyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// In JSON, a problem is an object: `node` and `message`.
impl serde::Serialize for TopologyProblem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut o = s.serialize_struct("TopologyProblem", 2)?;
        o.serialize_field("node", &self.node)?;
        o.serialize_field("message", &self.message)?;
        o.end()
    }
}

/// What is wrong with the configured topology, given each node's `pg_is_in_recovery()`
/// (`None`: not known, e.g. the node is unreachable).
pub fn topology_problems<'a>(
    mode: Replication,
    nodes: impl IntoIterator<Item = (&'a NodeConfig, Option<bool>)>,
) -> Vec<TopologyProblem> {
    let mut out = Vec::new();
    for (node, in_recovery) in nodes {
        let Some(in_recovery) = in_recovery else {
            continue;
        };
        let name = &node.name;
        let message = match (node.role, mode, in_recovery) {
            (Role::Master, _, true) => format!(
                "master node `{name}` is in recovery (a standby): it cannot take patches"
            ),
            (Role::Replica, Replication::None | Replication::Logical | Replication::Slony, true) => format!(
                "node `{name}` is a standby (in recovery), but `replication: {mode}` expects a writable node; set `replication: physical` if it follows the master by WAL"
            ),
            (Role::Replica, Replication::Physical, false) => format!(
                "node `{name}` is not in recovery, but `replication: physical` expects a hot standby"
            ),
            _ => continue,
        };
        out.push(TopologyProblem {
            node: name.clone(),
            message,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str, role: Role) -> NodeConfig {
        NodeConfig::for_tests(name, role)
    }

    #[test]
    fn topology_mismatches() {
        let (m, r) = (n("m", Role::Master), n("r", Role::Replica));
        let ok = [(&m, Some(false)), (&r, Some(false))];
        assert!(topology_problems(Replication::None, ok).is_empty());
        assert!(topology_problems(Replication::Logical, ok).is_empty());
        assert!(topology_problems(Replication::Slony, ok).is_empty());
        let p = topology_problems(Replication::Physical, ok);
        assert_eq!(p[0].node.as_str(), "r");
        assert!(
            p[0].message.contains("`r`") && p[0].message.contains("physical"),
            "{p:?}"
        );
        let standby = [(&m, Some(false)), (&r, Some(true))];
        assert!(topology_problems(Replication::Physical, standby).is_empty());
        let p = topology_problems(Replication::None, standby);
        assert!(p[0].message.contains("standby"), "{p:?}");
        let bad_master = [(&m, Some(true))];
        assert!(topology_problems(Replication::Physical, bad_master)[0]
            .message
            .contains("master"));
        let unknown = [(&m, None), (&r, None)];
        assert!(topology_problems(Replication::Physical, unknown).is_empty());
    }
}
