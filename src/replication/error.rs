//! What can go wrong with replication, typed: a node that cannot be read, a failing
//! subscription, replicas that do not catch up in time, a missing publication, a
//! publication or subscription statement that failed.

use std::time::Duration;

use crate::config::NodeName;
use crate::db::pgerror::PgFailure;
use crate::output::human;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicationError {
    /// A node could not be reached or read; `label` is `node`, `master node` or `standby`.
    #[error("{label} `{node}`: {}{failure}", action.map(|a| format!("{a}: ")).unwrap_or_default())]
    Node {
        node: NodeName,
        label: &'static str,
        action: Option<&'static str>,
        failure: Box<PgFailure>,
    },
    /// A subscription stopped keeping up, with what most likely broke it.
    #[error(
        "subscription `{subscription}` on node `{node}` is failing: {worker}; {errors} (PostgreSQL keeps the error text only in node `{node}`'s server log); most likely caused by {cause}. Not skipping anything (ALTER SUBSCRIPTION … SKIP loses data): fix the subscriber, then re-run"
    )]
    Failing {
        node: NodeName,
        subscription: String,
        worker: String,
        errors: String,
        cause: String,
    },
    /// Subscribers did not apply past the master's WAL position in time.
    #[error(
        "subscription(s) {} did not apply past the master's WAL position {target} within {} (replication_timeout); last change: {cause}",
        lagging.iter().map(|(s, n)| format!("`{s}` on node `{n}`")).collect::<Vec<_>>().join(", "),
        human::duration(*timeout)
    )]
    SubscribersBehind {
        /// (subscription, node)
        lagging: Vec<(String, NodeName)>,
        target: String,
        timeout: Duration,
        cause: String,
    },
    /// Standbys did not replay past the master's WAL position in time.
    #[error(
        "standby(s) {} did not replay past the master's WAL position {target} within {} (replication_timeout)",
        behind.join(", "),
        human::duration(*timeout)
    )]
    StandbysBehind {
        /// `` `node` (replayed LSN) ``
        behind: Vec<String>,
        target: String,
        timeout: Duration,
    },
    /// The interrupt (SIGINT/SIGTERM) ended a wait for replication.
    #[error("{signal} while waiting for {what} to reach {target}")]
    Interrupted {
        signal: &'static str,
        what: &'static str,
        target: String,
    },
    /// `publication:` names a publication the master does not have (bad input).
    #[error("publication `{name}` (key `publication`) does not exist on the master")]
    NoPublication { name: String },
    /// `ALTER PUBLICATION …` or `ALTER SUBSCRIPTION …` failed.
    #[error("{statement}: {failure}")]
    Statement {
        node: NodeName,
        statement: String,
        failure: Box<PgFailure>,
    },
}

impl ReplicationError {
    /// A node could not be reached or read.
    pub fn node(
        node: &NodeName,
        label: &'static str,
        action: Option<&'static str>,
        failure: impl Into<PgFailure>,
    ) -> ReplicationError {
        ReplicationError::Node {
            node: node.clone(),
            label,
            action,
            failure: Box::new(failure.into()),
        }
    }

    /// Bad input rather than a run-time failure: the config names something absent.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ReplicationError::NoPublication { .. })
    }

    /// The node the error is about.
    pub fn node_name(&self) -> Option<&NodeName> {
        match self {
            ReplicationError::Node { node, .. }
            | ReplicationError::Failing { node, .. }
            | ReplicationError::Statement { node, .. } => Some(node),
            ReplicationError::SubscribersBehind { lagging, .. } => lagging.first().map(|(_, n)| n),
            ReplicationError::StandbysBehind { .. }
            | ReplicationError::NoPublication { .. }
            | ReplicationError::Interrupted { .. } => None,
        }
    }

    /// What the server said, when it said something.
    pub fn pg(&self) -> Option<&PgFailure> {
        match self {
            ReplicationError::Node { failure, .. }
            | ReplicationError::Statement { failure, .. } => Some(failure),
            _ => None,
        }
    }
}
