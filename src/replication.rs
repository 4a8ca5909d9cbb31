//! What replication the cluster runs and whether it keeps up: topology checks,
//! subscription health, waiting for subscribers or standbys to pass a WAL
//! position, and publishing the tables a patch created.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::cluster::Node;
use crate::config::{NodeName, Replication, Role};
use crate::ledger::quote_ident;
use crate::pgerror::PgFailure;

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

/// A subscription that stopped keeping up, with what most likely broke it.
fn failing(
    node: &NodeName,
    sub: &Subscription,
    before: Option<&Subscription>,
    cause: &str,
) -> String {
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
    format!(
        "subscription `{}` on node `{node}` is failing: {worker}; {errors} (PostgreSQL keeps the error text only in node `{node}`'s server log); most likely caused by {cause}. Not skipping anything (ALTER SUBSCRIPTION … SKIP loses data): fix the subscriber, then re-run",
        sub.name
    )
}

/// Health of every subscription before a run: returns the baseline to compare with later.
pub async fn baseline(replicas: &[&Node]) -> Result<BTreeMap<NodeName, Vec<Subscription>>, String> {
    let mut out = BTreeMap::new();
    for node in replicas {
        let session = node
            .session()
            .await
            .map_err(|e| format!("node `{}`: {e}", node.name()))?;
        // A failing apply worker restarts every wal_retrieve_retry_interval and
        // is briefly alive each time: sample a few times, and count errors.
        let mut first: Option<Vec<Subscription>> = None;
        for round in 0..3 {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let subs = subscriptions(session.client())
                .await
                .map_err(|e| format!("node `{}`: cannot read subscriptions: {e}", node.name()))?;
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
) -> Result<Duration, String> {
    let started = Instant::now();
    let master_session = master
        .session()
        .await
        .map_err(|e| format!("master node `{}`: {e}", master.name()))?;
    loop {
        let mut lagging = Vec::new();
        for node in replicas {
            let session = node
                .session()
                .await
                .map_err(|e| format!("node `{}`: {e}", node.name()))?;
            let subs = subscriptions(session.client())
                .await
                .map_err(|e| format!("node `{}`: cannot read subscriptions: {e}", node.name()))?;
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
                    .map_err(|e| {
                        format!(
                            "master node `{}`: {}",
                            master.name(),
                            PgFailure::from_pg(&e)
                        )
                    })?
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
            let names: Vec<String> = lagging
                .iter()
                .map(|(n, s, _)| format!("`{}` on node `{n}`", s.name))
                .collect();
            return Err(format!(
                "subscription(s) {} did not apply past the master's WAL position {target} within {} (replication_timeout); last change: {cause}",
                names.join(", "),
                crate::report::human(timeout)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every standby has replayed past `target`; returns how long it took.
pub async fn wait_for_standbys(
    replicas: &[&Node],
    target: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let mut behind = Vec::new();
        for node in replicas {
            let session = node
                .session()
                .await
                .map_err(|e| format!("standby `{}`: {e}", node.name()))?;
            let row = session
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false),
                            coalesce(pg_last_wal_replay_lsn()::text, '?')",
                    &[&target],
                )
                .await
                .map_err(|e| format!("standby `{}`: {}", node.name(), PgFailure::from_pg(&e)))?;
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
            return Err(format!(
                "standby(s) {} did not replay past the master's WAL position {target} within {} (replication_timeout)",
                behind.join(", "),
                crate::report::human(timeout)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The tables of a publication's schemas on the master, for finding the ones a group created.
pub struct PublicationScope {
    pub name: String,
    pub all_tables: bool,
    pub schemas: Vec<String>,
}

pub async fn publication_scope(
    client: &Client,
    name: &str,
    ledger_schema: &str,
) -> Result<PublicationScope, String> {
    let row = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| PgFailure::from_pg(&e).to_string())?
        .ok_or_else(|| {
            format!("publication `{name}` (key `publication`) does not exist on the master")
        })?;
    let all_tables: bool = row.get(0);
    let rows = client
        .query(
            "SELECT DISTINCT schemaname::text FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| PgFailure::from_pg(&e).to_string())?;
    let mut schemas: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    if schemas.is_empty() {
        schemas.insert("public".into());
    }
    schemas.remove(ledger_schema);
    Ok(PublicationScope {
        name: name.to_string(),
        all_tables,
        schemas: schemas.into_iter().collect(),
    })
}

/// Ordinary and partitioned tables in the scope's schemas, qualified and quoted.
pub async fn tables(client: &Client, scope: &PublicationScope) -> Result<BTreeSet<String>, String> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = ANY ($1)",
            &[&scope.schemas],
        )
        .await
        .map_err(|e| PgFailure::from_pg(&e).to_string())?;
    Ok(rows
        .iter()
        .map(|r| format!("{}.{}", quote_ident(r.get(0)), quote_ident(r.get(1))))
        .collect())
}

/// Adds `new` tables to the publication (unless it is FOR ALL TABLES or already
/// has them), then refreshes every subscription to it, outside any transaction,
/// so the subscribers copy the tables' rows and follow them.
pub async fn publish(
    master: &Node,
    replicas: &[&Node],
    scope: &PublicationScope,
    new: &BTreeSet<String>,
) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    if new.is_empty() {
        return Ok(notes);
    }
    let session = master.session().await.map_err(|e| format!("master: {e}"))?;
    let mut added = Vec::new();
    if !scope.all_tables {
        for table in new {
            let present: bool = session
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                                     WHERE p.pubname = $1 AND pr.prrelid = $2::text::regclass)",
                    &[&scope.name, table],
                )
                .await
                .map_err(|e| PgFailure::from_pg(&e).to_string())?
                .get(0);
            if !present {
                added.push(table.clone());
            }
        }
        if !added.is_empty() {
            session
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(&scope.name),
                    added.join(", ")
                ))
                .await
                .map_err(|e| {
                    format!(
                        "ALTER PUBLICATION on the master: {}",
                        PgFailure::from_pg(&e)
                    )
                })?;
            notes.push(format!(
                "published {} on the master (publication `{}`)",
                added.join(", "),
                scope.name
            ));
        }
    }
    for node in replicas {
        let s = node
            .session()
            .await
            .map_err(|e| format!("node `{}`: {e}", node.name()))?;
        let subs = subscriptions(s.client())
            .await
            .map_err(|e| format!("node `{}`: {e}", node.name()))?;
        for sub in subs.iter().filter(|s| s.publications.contains(&scope.name)) {
            s.batch_execute(&format!(
                "ALTER SUBSCRIPTION {} REFRESH PUBLICATION",
                quote_ident(&sub.name)
            ))
            .await
            .map_err(|e| {
                format!(
                    "ALTER SUBSCRIPTION `{}` REFRESH PUBLICATION on node `{}`: {}",
                    sub.name,
                    node.name(),
                    PgFailure::from_pg(&e)
                )
            })?;
            notes.push(format!(
                "refreshed subscription `{}` on node `{}`",
                sub.name,
                node.name()
            ));
        }
    }
    Ok(notes)
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
