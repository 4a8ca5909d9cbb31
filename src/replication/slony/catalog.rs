//! Reading Slony-I's catalog (`_CLUSTER.sl_*`) over pgconvoy's own sessions: nodes, sets,
//! subscriptions, lag, slon liveness, the relations waiting to join, and the SYNC events a
//! run creates and waits for. Read-only except [`create_sync`].

use std::time::Duration;

use tokio_postgres::GenericClient;

use super::join::{Candidate, RelKind, SetCatalog, Subscription};
use super::script::joining_table;
use crate::config::SlonyClusterName;
use crate::db::ledger::{Book, Ledger};
use crate::db::pgerror::PgFailure;
use crate::db::quote::quote_ident;
use crate::patches::patch::PatchVersion;

type Result<T> = std::result::Result<T, PgFailure>;

fn schema(cluster: &SlonyClusterName) -> String {
    quote_ident(&cluster.schema())
}

fn id(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// Whether the node's database has the cluster's schema.
pub async fn has_cluster(c: &impl GenericClient, cluster: &SlonyClusterName) -> Result<bool> {
    Ok(c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
        &[&cluster.schema()],
    )
    .await?
    .get(0))
}

/// The Slony node id of the node's database.
pub async fn local_node_id(c: &impl GenericClient, cluster: &SlonyClusterName) -> Result<u32> {
    let row = c
        .query_one(
            &format!("SELECT {}.getLocalNodeId($1)", schema(cluster)),
            &[&cluster.schema()],
        )
        .await?;
    Ok(id(row.get(0)))
}

/// `sl_node`: the ids of every node the cluster knows.
pub async fn nodes(c: &impl GenericClient, cluster: &SlonyClusterName) -> Result<Vec<u32>> {
    let rows = c
        .query(
            &format!(
                "SELECT no_id FROM {}.sl_node WHERE NOT coalesce(no_failed, false) ORDER BY 1",
                schema(cluster)
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| id(r.get(0))).collect())
}

/// Sets, subscriptions and the highest table and sequence ids.
pub async fn sets(c: &impl GenericClient, cluster: &SlonyClusterName) -> Result<SetCatalog> {
    let s = schema(cluster);
    let sets = c
        .query(
            &format!(
                "SELECT set_id, set_origin, coalesce(set_comment, '') FROM {s}.sl_set ORDER BY 1"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| (id(r.get(0)), id(r.get(1)), r.get(2)))
        .collect();
    let subscriptions = c
        .query(
            &format!(
                "SELECT sub_set, sub_provider, sub_receiver, sub_forward, sub_active FROM {s}.sl_subscribe ORDER BY 1, 3"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| Subscription {
            set: id(r.get(0)),
            provider: id(r.get(1)),
            receiver: id(r.get(2)),
            forward: r.get(3),
            active: r.get(4),
        })
        .collect();
    let max = c
        .query_one(
            &format!(
                "SELECT coalesce((SELECT max(tab_id) FROM {s}.sl_table), 0),
                        coalesce((SELECT max(seq_id) FROM {s}.sl_sequence), 0)"
            ),
            &[],
        )
        .await?;
    Ok(SetCatalog {
        sets,
        subscriptions,
        max_table_id: id(max.get(0)),
        max_sequence_id: id(max.get(1)),
    })
}

/// One receiver's lag behind the origin, from the origin's `sl_status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Lag {
    pub receiver: u32,
    /// Events of the origin the receiver has not confirmed.
    pub events: i64,
    /// Age of the newest origin event the receiver confirmed (`st_lag_time`).
    pub time: Duration,
    /// How long ago the receiver last confirmed anything.
    pub since_confirmed: Duration,
}

/// Whether a subscription to `set` is still in progress as the origin sees it (an
/// ENABLE_SUBSCRIPTION event not yet confirmed: what slonik's `merge set` waits for).
pub async fn subscription_in_progress(
    c: &impl GenericClient,
    cluster: &SlonyClusterName,
    set: u32,
) -> Result<bool> {
    Ok(c.query_one(
        &format!("SELECT {}.isSubscriptionInProgress($1)", schema(cluster)),
        &[&(set as i32)],
    )
    .await?
    .get(0))
}

/// Whether the node's own record of its subscription to `set` is active (its copy finished).
pub async fn subscribed_here(
    c: &impl GenericClient,
    cluster: &SlonyClusterName,
    set: u32,
    receiver: u32,
) -> Result<bool> {
    Ok(c.query_one(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {}.sl_subscribe
                             WHERE sub_set = $1 AND sub_receiver = $2 AND sub_active)",
            schema(cluster)
        ),
        &[&(set as i32), &(receiver as i32)],
    )
    .await?
    .get(0))
}

/// `sl_status` on the origin: every receiver's lag.
pub async fn lag(c: &impl GenericClient, cluster: &SlonyClusterName) -> Result<Vec<Lag>> {
    let rows = c
        .query(
            &format!(
                "SELECT st_received, st_lag_num_events,
                        greatest(extract(epoch FROM st_lag_time), 0)::float8,
                        greatest(extract(epoch FROM now() - st_last_received_ts), 0)::float8
                   FROM {}.sl_status ORDER BY 1",
                schema(cluster)
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Lag {
            receiver: id(r.get(0)),
            events: r.get(1),
            time: Duration::from_secs_f64(r.get::<_, f64>(2)),
            since_confirmed: Duration::from_secs_f64(r.get::<_, f64>(3)),
        })
        .collect())
}

/// Whether the node's own slon is connected: its `local_listen` thread's session (recorded
/// in `sl_components`) is alive.
pub async fn slon_alive(c: &impl GenericClient, cluster: &SlonyClusterName) -> Result<bool> {
    Ok(c.query_one(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {}.sl_components k
                              JOIN pg_catalog.pg_stat_activity a ON a.pid = k.co_connection_pid
                             WHERE k.co_actor = 'local_listen')",
            schema(cluster)
        ),
        &[],
    )
    .await?
    .get(0))
}

/// Which of the ledger's tables are in a replicated set (each node must keep its own).
pub async fn ledger_in_sets(
    c: &impl GenericClient,
    cluster: &SlonyClusterName,
    ledger: &Ledger,
) -> Result<Vec<(String, u32)>> {
    let t = ledger.table();
    let names = vec![
        t.table.clone(),
        format!("{}_local", t.table),
        format!("{}_joining", t.table),
    ];
    let rows = c
        .query(
            &format!(
                "SELECT tab_nspname || '.' || tab_relname, tab_set FROM {}.sl_table
                  WHERE tab_nspname = $1 AND tab_relname = ANY ($2) ORDER BY 1",
                schema(cluster)
            ),
            &[&t.schema, &names],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), id(r.get(1)))).collect())
}

/// Creates a SYNC event on the origin, as slonik's `sync` does; everything committed before
/// it (a script included) reaches a receiver by the time it confirms it. Returns its seqno.
pub async fn create_sync(c: &impl GenericClient, cluster: &SlonyClusterName) -> Result<i64> {
    let s = schema(cluster);
    c.batch_execute(&format!("BEGIN; LOCK TABLE {s}.sl_event_lock"))
        .await?;
    let r = c
        .query_one(
            &format!("SELECT {s}.createEvent($1, 'SYNC')"),
            &[&cluster.schema()],
        )
        .await;
    match r {
        Ok(row) => {
            c.batch_execute("COMMIT").await?;
            Ok(row.get(0))
        }
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(e.into())
        }
    }
}

/// The newest event of `origin` the node `receiver` confirmed, read on the receiver itself
/// (its confirmation commits with the data it applied).
pub async fn confirmed(
    c: &impl GenericClient,
    cluster: &SlonyClusterName,
    origin: u32,
    receiver: u32,
) -> Result<i64> {
    let row = c
        .query_one(
            &format!(
                "SELECT coalesce(max(con_seqno), 0) FROM {}.sl_confirm
                  WHERE con_origin = $1 AND con_received = $2",
                schema(cluster)
            ),
            &[&(origin as i32), &(receiver as i32)],
        )
        .await?;
    Ok(row.get(0))
}

/// Whether a ledger book (which must exist) lists `version` as finished.
pub async fn ledger_has(
    c: &impl GenericClient,
    ledger: &Ledger,
    book: Book,
    version: PatchVersion,
) -> Result<bool> {
    let key =
        [version.major, version.minor, version.point].map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    Ok(c.query_one(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE major = $1 AND minor = $2 AND patch = $3
                                              AND end_time IS NOT NULL)",
            ledger.qualified(book)
        ),
        &[&key[0], &key[1], &key[2]],
    )
    .await?
    .get(0))
}

/// The relations the origin's joining table lists, as the origin sees them now.
pub async fn candidates(
    c: &impl GenericClient,
    cluster: &SlonyClusterName,
    ledger: &Ledger,
) -> Result<Vec<Candidate>> {
    let joining = joining_table(ledger);
    let exists: bool = c
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&joining])
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let s = schema(cluster);
    let rows = c
        .query(
            &format!(
                "SELECT j.major, j.minor, j.patch, j.schema_name, j.relation, j.relkind,
                        k.oid IS NOT NULL,
                        coalesce((SELECT tab_set FROM {s}.sl_table WHERE tab_reloid = k.oid),
                                 (SELECT seq_set FROM {s}.sl_sequence WHERE seq_reloid = k.oid)),
                        EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = k.oid AND i.indisprimary)
                   FROM {joining} j
                   LEFT JOIN (pg_catalog.pg_class k JOIN pg_catalog.pg_namespace n ON n.oid = k.relnamespace)
                          ON n.nspname = j.schema_name AND k.relname = j.relation
                  ORDER BY 1, 2, 3, 4, 5"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let kind = RelKind::from_relkind(r.get(5))?;
            let n = |i: usize| u32::try_from(r.get::<_, i32>(i)).unwrap_or(0);
            Some(Candidate {
                version: PatchVersion::new(n(0), n(1), n(2)),
                schema: r.get(3),
                name: r.get(4),
                kind,
                exists: r.get(6),
                in_set: r.get::<_, Option<i32>>(7).map(id),
                has_primary_key: r.get(8),
            })
        })
        .collect())
}

/// Forgets joining rows once their relations joined (or were skipped for good).
pub async fn forget_candidates(
    c: &impl GenericClient,
    ledger: &Ledger,
    done: &[Candidate],
) -> Result<()> {
    if done.is_empty() {
        return Ok(());
    }
    let schemas: Vec<&str> = done.iter().map(|d| d.schema.as_str()).collect();
    let names: Vec<&str> = done.iter().map(|d| d.name.as_str()).collect();
    c.execute(
        &format!(
            "DELETE FROM {} j USING unnest($1::text[], $2::text[]) AS d(s, r)
              WHERE j.schema_name = d.s AND j.relation = d.r",
            joining_table(ledger)
        ),
        &[&schemas, &names],
    )
    .await?;
    Ok(())
}
