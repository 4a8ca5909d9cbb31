//! A first look at a node, read-only: reachable, which host and how protected,
//! server version, recovery state and ledger. `status` and the dry run start from it.

use crate::db::cluster::{Node, Session};
use crate::db::connect::Reached;
use crate::db::ledger::{Ledger, NodeLedger};
use crate::db::pgerror::{LedgerUnreadable, PgFailure};
use crate::error::{Error, ErrorObject};

/// What a first look at a node found.
#[derive(Debug, Default)]
pub struct NodeProbe {
    /// Why the node cannot be used: unreachable, or its ledger unreadable.
    pub error: Option<ErrorObject>,
    /// The host the session went to, and its TLS.
    pub reached: Option<Reached>,
    /// The node answered (even if its ledger could not be read).
    pub connected: bool,
    /// The node answered but its ledger could not be read.
    pub ledger_unreadable: Option<LedgerUnreadable>,
    /// The short version, e.g. `15.18` of "15.18 (Debian 15.18-0+deb12u1)".
    pub server_version: Option<String>,
    pub in_recovery: Option<bool>,
    pub ledger: NodeLedger,
}

impl NodeProbe {
    /// Answered and its ledger was read: usable for planning.
    pub fn reachable(&self) -> bool {
        self.error.is_none()
    }
}

/// Connects, reads the version, recovery state and ledger; writes nothing.
pub async fn probe(node: &Node, ledger: &Ledger) -> NodeProbe {
    probe_keeping_session(node, ledger).await.0
}

/// [`probe`], keeping the session for further reads when the node answered.
pub async fn probe_keeping_session(node: &Node, ledger: &Ledger) -> (NodeProbe, Option<Session>) {
    let mut p = NodeProbe::default();
    let session = match node.session().await {
        Ok(s) => s,
        Err(e) => {
            p.error = Some(node.unreachable(e).to_object());
            return (p, None);
        }
    };
    p.reached = Some(session.reached().clone());
    match session
        .query_one(
            "SELECT current_setting('server_version'), pg_is_in_recovery()",
            &[],
        )
        .await
    {
        Ok(row) => {
            p.connected = true;
            let full: String = row.get(0);
            p.server_version = full.split_whitespace().next().map(str::to_string);
            p.in_recovery = Some(row.get(1));
        }
        Err(e) => {
            p.error = Some(read_failed(node, "read the server version", e.into()));
            return (p, None);
        }
    }
    match ledger.read(session.client()).await {
        Ok(l) => p.ledger = l,
        Err(e) => {
            let why = ledger.unreadable(&e, session.client()).await;
            let mut error = Error::LedgerUnreadable {
                node: node.name().clone(),
                unreadable: Box::new(why.clone()),
            }
            .to_object();
            error.sqlstate.clone_from(&why.sqlstate);
            p.error = Some(error);
            p.ledger_unreadable = Some(why);
            return (p, None);
        }
    }
    (p, Some(session))
}

fn read_failed(node: &Node, action: &'static str, failure: PgFailure) -> ErrorObject {
    Error::Node {
        node: node.name().clone(),
        master: node.role() == crate::config::Role::Master,
        action,
        failure: Box::new(failure),
    }
    .to_object()
}
