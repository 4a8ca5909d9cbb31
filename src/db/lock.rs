//! The cluster lock: a session advisory lock on the master that keeps coordinators
//! (`upgrade`, `recover`) out of each other's way, and who holds it.

use std::time::Duration;

use crate::db::cluster::{Cluster, Dedicated};
use crate::db::ledger::Ledger;
use crate::db::pgerror::PgFailure;
use crate::error::Error;
use crate::progress::{Event, Reporter};

/// The coordinators' mutual exclusion: a session advisory lock on the master,
/// held by a dedicated connection for the whole run. A killed coordinator's
/// lock goes with its connection.
pub async fn acquire_lock(
    cluster: &Cluster,
    ledger: &Ledger,
    wait: bool,
    reporter: &dyn Reporter,
) -> Result<Dedicated, Error> {
    let master = cluster.master();
    let lock = master
        .dedicated()
        .await
        .map_err(|e| master.unreachable(e))?;
    let key = ledger.advisory_key();
    let failed = |e: tokio_postgres::Error| master.failed("take the coordinator lock", e.into());
    let try_lock = || async {
        let row = lock
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(failed)?;
        Ok::<bool, Error>(row.get(0))
    };
    if try_lock().await? {
        return Ok(lock);
    }
    let holder = holder(&lock.client, key)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| "holder not visible to this role".into());
    if !wait {
        return Err(Error::Busy {
            node: master.name().clone(),
            holder,
        });
    }
    reporter.event(&Event::Note(&format!(
        "waiting for another coordinator to finish ({holder})"
    )));
    // Poll rather than block in pg_advisory_lock: a statement waiting on the
    // lock holds a snapshot, and CREATE INDEX CONCURRENTLY on the master would
    // wait for it.
    loop {
        crate::signal::sleep(Duration::from_millis(500))
            .await
            .map_err(|i| Error::WaitInterrupted {
                signal: i.0,
                node: master.name().clone(),
            })?;
        if try_lock().await? {
            break;
        }
    }
    reporter.event(&Event::Note("lock acquired"));
    Ok(lock)
}

/// Who holds the cluster lock right now, in words (`pid 42 application `pgconvoy` from
/// local socket as `app` since 2024-…`); `None` when nobody does. Parts the role may not
/// see in `pg_stat_activity` show as `?`.
pub async fn holder(
    client: &tokio_postgres::Client,
    key: i64,
) -> Result<Option<String>, PgFailure> {
    let (hi, lo) = (key >> 32, key & 0xffff_ffff);
    let row = client
        .query_opt(
            "SELECT l.pid, coalesce(a.application_name, '?'),
                    coalesce(host(a.client_addr), CASE WHEN a.pid IS NULL THEN '?' ELSE 'local socket' END),
                    coalesce(a.usename::text, '?'),
                    coalesce(to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '?')
               FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND l.classid::bigint = $1 AND l.objid::bigint = $2
              LIMIT 1",
            &[&hi, &lo],
        )
        .await?;
    Ok(row.map(|r| {
        format!(
            "pid {} application `{}` from {} as `{}` since {}",
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3),
            r.get::<_, String>(4)
        )
    }))
}

pub async fn release_lock(lock: Dedicated, ledger: &Ledger) {
    let _ = lock
        .client
        .execute("SELECT pg_advisory_unlock($1)", &[&ledger.advisory_key()])
        .await;
}
