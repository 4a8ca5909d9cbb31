//! Waiting for the replicas to pass a WAL position of the master: subscribers
//! (logical replication) or standbys (physical), failing early when one breaks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::error::ReplicationError;
use super::subscriptions::{failing, subscriptions, Subscription};
use crate::config::NodeName;
use crate::db::cluster::Node;
use crate::db::pgerror::PgFailure;

/// The master's WAL position, read in a statement of its own (after a
/// commit). The insert position, not `pg_current_wal_lsn()`: with
/// asynchronous commit the latter (what has been written) can still be short
/// of the commit record just made.
pub async fn current_lsn(client: &Client) -> Result<String, PgFailure> {
    Ok(client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0))
}

/// Waits until every subscription of every replica has applied past `target`
/// (the master's `pg_stat_replication.replay_lsn` of its walsender, the way
/// PostgreSQL's own tests wait), failing early when one starts failing.
pub async fn wait_for_subscribers(
    master: &Node,
    replicas: &[&Node],
    before: &BTreeMap<NodeName, Vec<Subscription>>,
    target: &str,
    timeout: Duration,
    cause: &str,
) -> Result<Duration, ReplicationError> {
    let started = Instant::now();
    let master_session = master
        .session()
        .await
        .map_err(|e| ReplicationError::node(master.name(), "master node", None, e))?;
    loop {
        let mut lagging = Vec::new();
        for node in replicas {
            let session = node
                .session()
                .await
                .map_err(|e| ReplicationError::node(node.name(), "node", None, e))?;
            let subs = subscriptions(session.client()).await.map_err(|e| {
                ReplicationError::node(node.name(), "node", Some("cannot read subscriptions"), e)
            })?;
            let earlier = before.get(node.name());
            for sub in subs.iter().filter(|s| s.enabled) {
                let prior = earlier.and_then(|b| b.iter().find(|p| p.name == sub.name));
                if sub.apply_errors > prior.map_or(0, |p| p.apply_errors) {
                    return Err(failing(node.name(), sub, prior, cause));
                }
                let caught_up: Option<bool> = master_session
                    .query_opt(
                        "SELECT replay_lsn >= $1::text::pg_lsn FROM pg_stat_replication
                          WHERE application_name = $2 AND state = 'streaming' LIMIT 1",
                        &[&target, &sub.name],
                    )
                    .await
                    .map_err(|e| ReplicationError::node(master.name(), "master node", None, e))?
                    .and_then(|r| r.get(0));
                if caught_up != Some(true) {
                    lagging.push((node.name().clone(), sub.clone(), prior.cloned()));
                }
            }
        }
        if lagging.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            let (node, sub, prior) = &lagging[0];
            if !sub.worker_running {
                return Err(failing(node, sub, prior.as_ref(), cause));
            }
            return Err(ReplicationError::SubscribersBehind {
                lagging: lagging
                    .iter()
                    .map(|(n, s, _)| (s.name.clone(), n.clone()))
                    .collect(),
                target: target.to_string(),
                timeout,
                cause: cause.to_string(),
            });
        }
        crate::signal::sleep(Duration::from_millis(100))
            .await
            .map_err(|i| ReplicationError::Interrupted {
                signal: i.0,
                what: "subscribers",
                target: target.to_string(),
            })?;
    }
}

/// Waits until every standby has replayed past `target`; returns how long it took.
pub async fn wait_for_standbys(
    replicas: &[&Node],
    target: &str,
    timeout: Duration,
) -> Result<Duration, ReplicationError> {
    let started = Instant::now();
    loop {
        let mut behind = Vec::new();
        for node in replicas {
            let session = node
                .session()
                .await
                .map_err(|e| ReplicationError::node(node.name(), "standby", None, e))?;
            let row = session
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false),
                            coalesce(pg_last_wal_replay_lsn()::text, '?')",
                    &[&target],
                )
                .await
                .map_err(|e| ReplicationError::node(node.name(), "standby", None, e))?;
            if !row.get::<_, bool>(0) {
                behind.push(format!(
                    "`{}` (replayed {})",
                    node.name(),
                    row.get::<_, String>(1)
                ));
            }
        }
        if behind.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(ReplicationError::StandbysBehind {
                behind,
                target: target.to_string(),
                timeout,
            });
        }
        crate::signal::sleep(Duration::from_millis(50))
            .await
            .map_err(|i| ReplicationError::Interrupted {
                signal: i.0,
                what: "standbys",
                target: target.to_string(),
            })?;
    }
}
