//! Subscriptions on the replicas (native logical replication): what they are, their
//! health before a run (the baseline), and how a failing one is described.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::Client;

use crate::config::NodeName;
use crate::db::cluster::Node;
use crate::db::pgerror::PgFailure;

use super::error::ReplicationError;

/// One subscription on a replica, as its worker sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Subscription {
    pub name: String,
    pub enabled: bool,
    /// The apply worker is running.
    pub worker_running: bool,
    /// `pg_stat_subscription_stats.apply_error_count` (PostgreSQL ≥ 15; 0 before).
    pub apply_errors: i64,
    pub sync_errors: i64,
    pub publications: Vec<String>,
}

/// The subscriptions in the replica's database.
pub async fn subscriptions(client: &Client) -> Result<Vec<Subscription>, PgFailure> {
    let v15: bool = client
        .query_one(
            "SELECT current_setting('server_version_num')::int >= 150000",
            &[],
        )
        .await?
        .get(0);
    let stats = if v15 {
        "LEFT JOIN pg_stat_subscription_stats ss ON ss.subid = s.oid"
    } else {
        "LEFT JOIN (SELECT NULL::oid AS subid, 0::bigint AS apply_error_count, 0::bigint AS sync_error_count) ss ON false"
    };
    let rows = client
        .query(
            &format!(
                "SELECT s.subname::text, s.subenabled,
                        EXISTS (SELECT 1 FROM pg_stat_subscription st
                                 WHERE st.subid = s.oid AND st.relid IS NULL AND st.pid IS NOT NULL),
                        coalesce(ss.apply_error_count, 0), coalesce(ss.sync_error_count, 0),
                        s.subpublications::text[]
                   FROM pg_subscription s {stats}
                  WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                  ORDER BY 1"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Subscription {
            name: r.get(0),
            enabled: r.get(1),
            worker_running: r.get(2),
            apply_errors: r.get(3),
            sync_errors: r.get(4),
            publications: r.get(5),
        })
        .collect())
}

/// A subscription that stopped keeping up, with what most likely broke it.
pub(super) fn failing(
    node: &NodeName,
    sub: &Subscription,
    before: Option<&Subscription>,
    cause: &str,
) -> ReplicationError {
    let errors = match before {
        Some(b) => format!(
            "apply_error_count {} → {}",
            b.apply_errors, sub.apply_errors
        ),
        None => format!("apply_error_count {}", sub.apply_errors),
    };
    let worker = if sub.worker_running {
        "apply worker running".to_string()
    } else if sub.enabled {
        "apply worker not running (it exits on an apply error and restarts every wal_retrieve_retry_interval)".to_string()
    } else {
        "subscription disabled".to_string()
    };
    ReplicationError::Failing {
        node: node.clone(),
        subscription: sub.name.clone(),
        worker,
        errors,
        cause: cause.to_string(),
    }
}

/// Health of every subscription before a run: returns the baseline to compare with later.
pub async fn baseline(
    replicas: &[&Node],
) -> Result<BTreeMap<NodeName, Vec<Subscription>>, ReplicationError> {
    let mut out = BTreeMap::new();
    for node in replicas {
        let session = node
            .session()
            .await
            .map_err(|e| ReplicationError::node(node.name(), "node", None, e))?;
        // A failing apply worker restarts every wal_retrieve_retry_interval and
        // is briefly alive each time: sample a few times, and count errors.
        let mut first: Option<Vec<Subscription>> = None;
        for round in 0..3 {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let subs = subscriptions(session.client()).await.map_err(|e| {
                ReplicationError::node(node.name(), "node", Some("cannot read subscriptions"), e)
            })?;
            for s in subs.iter().filter(|s| s.enabled) {
                let prior = first
                    .as_ref()
                    .and_then(|f| f.iter().find(|p| p.name == s.name));
                if !s.worker_running || prior.is_some_and(|p| s.apply_errors > p.apply_errors) {
                    return Err(failing(
                        node.name(),
                        s,
                        prior,
                        "something before this run (it was failing already)",
                    ));
                }
            }
            let none = subs.is_empty();
            first.get_or_insert(subs);
            if none {
                break;
            }
        }
        out.insert(node.name().clone(), first.unwrap_or_default());
    }
    Ok(out)
}
