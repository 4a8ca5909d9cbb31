//! What stops a deploy, as typed values the crate's [`crate::error::Error`] carries:
//! a refusal before anything is written (a schema that holds other content under
//! `--mode safe`, a role that does not exist), and a failure of one node's
//! transaction, with the package, file and line it points at. A leaf: nothing here
//! knows about the error enum or the run.

use std::fmt;

use crate::config::NodeName;
use crate::db::pgerror::PgFailure;

/// Why a deploy was refused, and on which nodes (the same reason once, naming them all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployRefusal {
    pub kind: RefusalKind,
    /// What is refused: "package `billing` 1.9.0", "role `app` (named by package `billing`)".
    pub subject: String,
    /// Why, with what to do about it.
    pub reason: String,
    pub package: Option<String>,
    pub nodes: Vec<NodeName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// `--mode safe` met a schema holding other content.
    Occupied,
    /// A role the package names does not exist.
    MissingRole,
}

impl fmt::Display for DeployRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.nodes.iter().map(|n| format!("`{n}`")).collect();
        write!(
            f,
            "{} on node{} {}: {}",
            self.subject,
            if self.nodes.len() == 1 { "" } else { "s" },
            names.join(", "),
            self.reason
        )
    }
}

/// A node's deploy transaction failed (and was rolled back).
#[derive(Debug, Clone)]
pub struct DeployFailure {
    pub node: NodeName,
    /// The package being deployed, when the failure was in one.
    pub package: Option<String>,
    /// The object file (path) and line the server's error points at.
    pub file: Option<String>,
    pub line: Option<usize>,
    /// What went wrong, in words (with the lock waited for, after a lock timeout).
    pub what: String,
    pub pg: Option<PgFailure>,
}

impl fmt::Display for DeployFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.package {
            Some(p) => write!(
                f,
                "package `{p}` failed on node `{}`: {}",
                self.node, self.what
            )?,
            None => write!(f, "deploy failed on node `{}`: {}", self.node, self.what)?,
        }
        if let Some(file) = &self.file {
            write!(f, " ({file}")?;
            if let Some(line) = self.line {
                write!(f, " line {line}")?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// A node's failure as the JSON documents carry errors.
impl serde::Serialize for DeployFailure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Object<'a> {
            kind: &'static str,
            node: &'a NodeName,
            /// Always null: a package is not a patch (the error object has every key).
            patch: Option<&'a str>,
            package: Option<&'a str>,
            sqlstate: Option<&'a str>,
            message: String,
            detail: Option<&'a str>,
            hint: Option<&'a str>,
            file: Option<&'a str>,
            line: Option<usize>,
        }
        let pg = self.pg.as_ref();
        Object {
            kind: "deploy-failed",
            node: &self.node,
            patch: None,
            package: self.package.as_deref(),
            sqlstate: pg.and_then(PgFailure::sqlstate),
            message: self.to_string(),
            detail: pg.and_then(|p| p.detail.as_deref()),
            hint: pg.and_then(|p| p.hint.as_deref()),
            file: self.file.as_deref(),
            line: self.line,
        }
        .serialize(s)
    }
}

/// What became of the other nodes when some failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Each node on its own: the others committed.
    OthersCommitted,
    /// `--atomic`: every node rolled back; `unresolved` prepared parts are left for `recover`.
    AllRolledBack { unresolved: Vec<String> },
    /// The dry run: every rehearsal was rolled back anyway.
    Rehearsal,
}

impl fmt::Display for AfterFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AfterFailure::OthersCommitted => {
                f.write_str("rolled back there; the other nodes committed")
            }
            AfterFailure::AllRolledBack { unresolved } if unresolved.is_empty() => {
                f.write_str("rolled back on every node (--atomic)")
            }
            AfterFailure::AllRolledBack { unresolved } => write!(
                f,
                "rolled back on every node (--atomic); could not roll back prepared transaction(s) {}: run `pgconvoy recover`",
                unresolved.join(", ")
            ),
            AfterFailure::Rehearsal => {
                f.write_str("the rehearsal was rolled back; nothing was changed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeName {
        NodeName::parse(n).unwrap()
    }

    #[test]
    fn refusals_name_every_node_once() {
        let r = DeployRefusal {
            kind: RefusalKind::Occupied,
            subject: "package `billing` 1.9.0".into(),
            reason: "schema `billing_1_9_0` already holds 1.9.0 with other files".into(),
            package: Some("billing".into()),
            nodes: vec![node("node0"), node("node2")],
        };
        assert_eq!(
            r.to_string(),
            "package `billing` 1.9.0 on nodes `node0`, `node2`: schema `billing_1_9_0` already holds 1.9.0 with other files"
        );
    }

    #[test]
    fn failures_point_at_file_and_line() {
        let f = DeployFailure {
            node: node("node1"),
            package: Some("billing".into()),
            file: Some("packages/billing/functions/rate.sql".into()),
            line: Some(3),
            what: "ERROR 42P01: relation \"settings\" does not exist".into(),
            pg: None,
        };
        assert_eq!(
            f.to_string(),
            "package `billing` failed on node `node1`: ERROR 42P01: relation \"settings\" does not exist (packages/billing/functions/rate.sql line 3)"
        );
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["kind"], "deploy-failed");
        assert_eq!(v["node"], "node1");
        assert_eq!(v["package"], "billing");
        assert_eq!(v["line"], 3);
    }
}
