//! `unlock [--force]`: who holds the cluster — the coordinator holding the cluster lock on
//! the master (its command, OS user, host and pid, since when) and what each of its
//! sessions is doing on every node — and, with `--force`, ending every one of those
//! sessions: its claim rolls back, its patches' transactions roll back, the lock is freed.
//!
//! A coordinator's sessions are found by the run key they all hold as a shared advisory
//! lock ([`crate::identity`]). The stopped coordinator, when it resumes, finds its
//! sessions gone and writes nothing more ([`crate::db::cluster::Node::session`]).

use std::time::Duration;

use futures::stream::{self, StreamExt};

use crate::config::{Config, NodeName};
use crate::db::cluster::Cluster;
use crate::db::ledger::Ledger;
use crate::db::lock::{holder, Holder};
use crate::db::pgerror::PgFailure;
use crate::error::Error;
use crate::identity::RUN_LOCK_CLASS;
use crate::output::human;

/// One session of the holding coordinator.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldSession {
    /// The server process.
    pub pid: i32,
    /// `active`, `idle`, `idle in transaction`, …
    pub state: String,
    /// RFC 3339 UTC: when the state began.
    pub state_since: Option<String>,
    /// RFC 3339 UTC: when its open transaction began, if one is open.
    pub transaction_since: Option<String>,
    /// `type:event` when it waits.
    pub waiting_on: Option<String>,
    /// What it runs or last ran (one line, shortened).
    pub query: String,
    /// The session holding the cluster lock.
    pub holds_cluster_lock: bool,
}

/// The holder's sessions on one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeSessions {
    pub node: NodeName,
    pub sessions: Vec<HeldSession>,
    /// Server pids `--force` ended.
    pub ended: Vec<i32>,
    /// Why the node could not be looked at (or its sessions ended).
    pub error: Option<String>,
}

/// What `unlock` found and did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnlockReport {
    pub master: NodeName,
    pub holder: Option<Holder>,
    pub nodes: Vec<NodeSessions>,
    pub forced: bool,
    /// After `--force`: the lock was seen free (or held by someone else) afterwards.
    pub freed: bool,
}

impl UnlockReport {
    /// What `unlock --force` ends with: sessions that could not be ended, or a lock
    /// still held by the same session.
    pub fn error(&self) -> Option<Error> {
        if !self.forced || self.holder.is_none() {
            return None;
        }
        if !self.freed {
            return Some(Error::Unlock {
                node: self.master.clone(),
                what: "the cluster lock is still held after its sessions were ended".into(),
            });
        }
        self.nodes
            .iter()
            .find_map(|n| n.error.as_ref().map(|e| (n, e)))
            .map(|(n, e)| Error::Unlock {
                node: n.node.clone(),
                what: format!(
                    "could not end the coordinator's sessions on node `{}`: {e}",
                    n.node
                ),
            })
    }
}

const SESSIONS_SQL: &str = "
    SELECT a.pid, coalesce(a.state, ''),
           to_char(a.state_change AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
           to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
           a.wait_event_type || ':' || a.wait_event,
           coalesce(a.query, '')
      FROM pg_stat_activity a
     WHERE a.pid <> pg_backend_pid()
       AND (a.pid = $3
            OR a.pid IN (SELECT l.pid FROM pg_locks l
                          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                            AND l.classid::bigint = $1 AND l.objid::bigint = $2
                            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())))
     ORDER BY a.backend_start, a.pid";

/// Runs `unlock` (see the module documentation).
pub async fn unlock(config: &Config, force: bool) -> Result<UnlockReport, Error> {
    let cluster = Cluster::new(config);
    let ledger = Ledger::new(config.ledger.clone());
    let master = cluster.master();
    let failed = |failure: PgFailure| Error::Node {
        node: master.name().clone(),
        master: true,
        action: "read who holds the cluster lock",
        failure: Box::new(failure),
    };
    let session = master.session().await.map_err(|e| master.unreachable(e))?;
    let key = ledger.advisory_key();
    let held = holder(session.client(), key).await.map_err(failed)?;
    let mut report = UnlockReport {
        master: master.name().clone(),
        holder: held.clone(),
        nodes: Vec::new(),
        forced: force,
        freed: held.is_none(),
    };
    let Some(held) = held else {
        return Ok(report);
    };
    drop(session);
    let run_key = held.run_key.unwrap_or(-1);
    report.nodes = stream::iter(cluster.nodes.iter().enumerate())
        .map(|(i, node)| {
            let lock_pid = if i == 0 { held.backend_pid } else { -1 };
            async move {
                let mut out = NodeSessions {
                    node: node.name().clone(),
                    sessions: Vec::new(),
                    ended: Vec::new(),
                    error: None,
                };
                let r = async {
                    let s = node.session().await?;
                    let rows = s
                        .query(
                            SESSIONS_SQL,
                            &[&i64::from(RUN_LOCK_CLASS), &run_key, &lock_pid],
                        )
                        .await?;
                    out.sessions = rows
                        .iter()
                        .map(|r| HeldSession {
                            pid: r.get(0),
                            state: r.get(1),
                            state_since: r.get(2),
                            transaction_since: r.get(3),
                            waiting_on: r.get(4),
                            query: shorten(&human::one_line(r.get(5)), 160),
                            holds_cluster_lock: r.get::<_, i32>(0) == lock_pid,
                        })
                        .collect();
                    if force {
                        for s_ in &out.sessions {
                            let ended: bool = s
                                .query_one("SELECT pg_terminate_backend($1)", &[&s_.pid])
                                .await?
                                .get(0);
                            if ended {
                                out.ended.push(s_.pid);
                            }
                        }
                    }
                    Ok::<_, PgFailure>(())
                }
                .await;
                if let Err(e) = r {
                    out.error = Some(e.to_string());
                }
                out
            }
        })
        .buffered(cluster.jobs)
        .collect()
        .await;
    if force {
        report.freed = wait_until_free(&cluster, key, held.backend_pid).await;
    }
    Ok(report)
}

/// Polls the master for up to ten seconds until the lock is no longer held by `pid`
/// (backends end asynchronously after `pg_terminate_backend`).
async fn wait_until_free(cluster: &Cluster, key: i64, pid: i32) -> bool {
    let master = cluster.master();
    for _ in 0..100 {
        if let Ok(s) = master.session().await {
            match holder(s.client(), key).await {
                Ok(None) => return true,
                Ok(Some(h)) if h.backend_pid != pid => return true,
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
