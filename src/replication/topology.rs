//! Whether each node's recovery state matches the configured replication mode.

use crate::config::{NodeName, Replication, Role};

/// What is wrong with the configured topology, given each node's
/// `pg_is_in_recovery()` (index = node index, master first).
pub fn topology_problems(mode: Replication, nodes: &[(NodeName, Role, bool)]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, role, in_recovery) in nodes {
        match (role, mode, in_recovery) {
            (Role::Master, _, true) => out.push(format!(
                "master node `{name}` is in recovery (a standby): it cannot take patches"
            )),
            (Role::Replica, Replication::None | Replication::Logical, true) => out.push(format!(
                "node `{name}` is a standby (in recovery), but `replication: {}` expects a writable node; set `replication: physical` if it follows the master by WAL",
                if mode == Replication::None { "none" } else { "logical" }
            )),
            (Role::Replica, Replication::Physical, false) => out.push(format!(
                "node `{name}` is not in recovery, but `replication: physical` expects a hot standby"
            )),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::parse(s).unwrap()
    }

    #[test]
    fn topology_mismatches() {
        let ok = [
            (n("m"), Role::Master, false),
            (n("r"), Role::Replica, false),
        ];
        assert!(topology_problems(Replication::None, &ok).is_empty());
        assert!(topology_problems(Replication::Logical, &ok).is_empty());
        let p = topology_problems(Replication::Physical, &ok);
        assert!(p[0].contains("`r`") && p[0].contains("physical"), "{p:?}");
        let standby = [(n("m"), Role::Master, false), (n("r"), Role::Replica, true)];
        assert!(topology_problems(Replication::Physical, &standby).is_empty());
        let p = topology_problems(Replication::None, &standby);
        assert!(p[0].contains("standby"), "{p:?}");
        let bad_master = [(n("m"), Role::Master, true)];
        assert!(topology_problems(Replication::Physical, &bad_master)[0].contains("master"));
    }
}
