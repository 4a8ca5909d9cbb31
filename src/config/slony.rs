//! The `slony:` block of `cluster.yaml` → a checked [`SlonyConfig`]: the Slony-I cluster
//! name, the replication set new tables join, the Slony node id of every node of the file,
//! and which `slonik` to run.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::NodeName;

/// A Slony-I cluster name as slonik's `cluster name = NAME;` takes it; the cluster's schema
/// is `_NAME`. Lowercase so that the name, the schema and what `slon` is given agree
/// whether or not anyone quotes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlonyClusterName(String);

impl SlonyClusterName {
    pub fn parse(name: &str) -> Result<SlonyClusterName, String> {
        let ok = !name.is_empty()
            // The schema `_NAME` must fit in 63 bytes.
            && name.len() <= 62
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(SlonyClusterName(name.to_string()))
        } else {
            Err(format!(
                "`{name}` is not a slony cluster name (lowercase letters, digits and `_`, starting with a letter or `_`, at most 62 characters)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The cluster's schema name, `_NAME` (unquoted).
    pub fn schema(&self) -> String {
        format!("_{}", self.0)
    }
}

impl fmt::Display for SlonyClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Slony-I identifies nodes, sets, tables and sequences by positive `int4`s.
fn slony_id(key: &str, value: i64) -> Result<u32, String> {
    if (1..=i64::from(i32::MAX)).contains(&value) {
        Ok(value as u32)
    } else {
        Err(format!(
            "key `{key}`: {value} is not a slony id (1 to {})",
            i32::MAX
        ))
    }
}

/// The checked `slony:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlonyConfig {
    pub cluster: SlonyClusterName,
    /// The replication set that tables created by `std` patches join.
    pub set: u32,
    /// Slony node id of every node of the file (every node has one, ids are distinct).
    pub nodes: BTreeMap<NodeName, u32>,
    /// The `slonik` program (default: `slonik` on `PATH`).
    pub slonik: PathBuf,
}

impl SlonyConfig {
    /// The Slony node id of `node`.
    pub fn node_id(&self, node: &NodeName) -> u32 {
        // `check` made sure every node of the file has one.
        self.nodes[node]
    }

    /// The node of the file with Slony node id `id`, if any.
    pub fn node_named(&self, id: u32) -> Option<&NodeName> {
        self.nodes.iter().find(|(_, v)| **v == id).map(|(k, _)| k)
    }
}

/// The `slony:` block as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlony {
    cluster: Option<String>,
    set: Option<i64>,
    #[serde(default)]
    nodes: BTreeMap<String, i64>,
    slonik: Option<PathBuf>,
}

impl RawSlony {
    /// Checks the block against the nodes of the file (`names`, master first). Messages name
    /// the key.
    pub(super) fn check(self, names: &[&NodeName]) -> Result<SlonyConfig, String> {
        let cluster = self
            .cluster
            .ok_or("missing key `slony.cluster` (the slony cluster name, schema `_NAME`)")?;
        let cluster =
            SlonyClusterName::parse(&cluster).map_err(|m| format!("key `slony.cluster`: {m}"))?;
        let set = slony_id(
            "slony.set",
            self.set
                .ok_or("missing key `slony.set` (the replication set new tables join)")?,
        )?;
        let mut nodes = BTreeMap::new();
        let mut ids = HashSet::new();
        for (name, id) in self.nodes {
            let node = NodeName::parse(&name).map_err(|m| format!("key `slony.nodes`: {m}"))?;
            if !names.contains(&&node) {
                return Err(format!(
                    "key `slony.nodes`: `{name}` is not a node of this file (nodes: {})",
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let id = slony_id(&format!("slony.nodes.{name}"), id)?;
            if !ids.insert(id) {
                return Err(format!(
                    "key `slony.nodes`: slony node id {id} is given to more than one node"
                ));
            }
            nodes.insert(node, id);
        }
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !nodes.contains_key(**n))
            .map(|n| format!("`{n}`"))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "key `slony.nodes`: no slony node id for {} (every node needs one, e.g. `nodes: {{node0: 1, node1: 2}}`)",
                missing.join(", ")
            ));
        }
        let slonik = match self.slonik {
            Some(p) if p.as_os_str().is_empty() => {
                return Err("key `slony.slonik` is empty".into());
            }
            Some(p) => p,
            None => PathBuf::from("slonik"),
        };
        Ok(SlonyConfig {
            cluster,
            set,
            nodes,
            slonik,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawSlony {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn names() -> Vec<NodeName> {
        ["node0", "node1", "node2"]
            .iter()
            .map(|n| NodeName::parse(n).unwrap())
            .collect()
    }

    fn check(yaml: &str) -> Result<SlonyConfig, String> {
        let n = names();
        let refs: Vec<&NodeName> = n.iter().collect();
        raw(yaml).check(&refs)
    }

    const OK: &str = "cluster: convoy\nset: 1\nnodes: {node0: 1, node1: 2, node2: 3}\n";

    #[test]
    fn accepts_the_documented_block() {
        let c = check(OK).unwrap();
        assert_eq!(c.cluster.as_str(), "convoy");
        assert_eq!(c.cluster.schema(), "_convoy");
        assert_eq!(c.set, 1);
        assert_eq!(c.node_id(&NodeName::parse("node1").unwrap()), 2);
        assert_eq!(c.node_named(3).map(|n| n.as_str()), Some("node2"));
        assert_eq!(c.node_named(4), None);
        assert_eq!(c.slonik, PathBuf::from("slonik"));
        let c = check(&format!("{OK}slonik: /opt/slony/bin/slonik\n")).unwrap();
        assert_eq!(c.slonik, PathBuf::from("/opt/slony/bin/slonik"));
    }

    #[test]
    fn every_node_needs_a_distinct_id() {
        let e = check("cluster: convoy\nset: 1\nnodes: {node0: 1, node1: 2}\n").unwrap_err();
        assert!(e.contains("`node2`") && e.contains("slony.nodes"), "{e}");
        let e =
            check("cluster: convoy\nset: 1\nnodes: {node0: 1, node1: 2, node2: 2}\n").unwrap_err();
        assert!(e.contains("id 2"), "{e}");
        let e = check("cluster: convoy\nset: 1\nnodes: {node0: 1, node1: 2, node2: 3, node9: 4}\n")
            .unwrap_err();
        assert!(e.contains("`node9`") && e.contains("not a node"), "{e}");
        let e =
            check("cluster: convoy\nset: 1\nnodes: {node0: 0, node1: 2, node2: 3}\n").unwrap_err();
        assert!(e.contains("slony.nodes.node0"), "{e}");
    }

    #[test]
    fn names_and_ids_are_checked() {
        let e = check("set: 1\nnodes: {node0: 1, node1: 2, node2: 3}\n").unwrap_err();
        assert!(e.contains("slony.cluster"), "{e}");
        let e = check(&OK.replace("convoy", "Convoy")).unwrap_err();
        assert!(e.contains("slony.cluster"), "{e}");
        let e = check(&OK.replace("convoy", "a;drop")).unwrap_err();
        assert!(e.contains("slony.cluster"), "{e}");
        let e = check(&OK.replace("set: 1", "set: -3")).unwrap_err();
        assert!(e.contains("slony.set"), "{e}");
        let e = check("cluster: convoy\nnodes: {node0: 1, node1: 2, node2: 3}\n").unwrap_err();
        assert!(e.contains("slony.set"), "{e}");
        assert!(SlonyClusterName::parse(&"a".repeat(62)).is_ok());
        assert!(SlonyClusterName::parse(&"a".repeat(63)).is_err());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = serde_yaml::from_str::<RawSlony>("cluster: c\nset: 1\norigin: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("origin"), "{e}");
    }
}
