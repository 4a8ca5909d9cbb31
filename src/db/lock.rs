//! The cluster lock: a session advisory lock on the master that keeps coordinators
//! (`upgrade`, `recover`) out of each other's way, and who holds it.

use std::fmt;
use std::time::Duration;

use crate::db::cluster::{Cluster, Dedicated};
use crate::db::ledger::Ledger;
use crate::db::named::{Named, Prepares};
use crate::db::pgerror::{fail_when, PgFailure};
use crate::error::Error;
use crate::identity::{parse_lock_comment, Identity, RUN_LOCK_CLASS};
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
        .lock_session()
        .await
        .map_err(|e| master.unreachable(e))?;
    let key = ledger.advisory_key();
    // The comment names this coordinator in `pg_stat_activity.query` of the lock's
    // session for as long as it holds the lock (`pgconvoy unlock` reads it back).
    let try_lock_sql = format!(
        "/* {} */ SELECT pg_try_advisory_lock($1)",
        Identity::current().lock_comment(&command_line())
    );
    let failed = |e: tokio_postgres::Error| master.failed("take the coordinator lock", e.into());
    let try_lock = || async {
        let row = lock
            .client
            .query_one(&try_lock_sql, &[&key])
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
        .map(|h| h.to_string())
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

/// The session holding a cluster lock, as the master's catalog shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Holder {
    /// The server process of the lock's session.
    pub backend_pid: i32,
    pub application: String,
    /// The client's address as the server sees it (`local socket` for Unix sockets).
    pub client: String,
    pub db_user: String,
    /// RFC 3339 UTC: when the lock's session connected.
    pub connected_at: String,
    /// What the coordinator says about itself (command, OS user, host, pid, start);
    /// `None` when the query text is not visible to this role or names no pgconvoy.
    pub coordinator: Option<String>,
    /// The coordinator's run key: its sessions on every node hold it ([`crate::identity`]).
    pub run_key: Option<i64>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.coordinator {
            write!(f, "{c}; ")?;
        }
        write!(
            f,
            "server pid {} application `{}` from {} as `{}` connected {}",
            self.backend_pid, self.application, self.client, self.db_user, self.connected_at
        )
    }
}

/// Who holds the cluster lock `key` in the session's database, if anyone. Parts the role
/// may not see in `pg_stat_activity` show as `?`.
pub async fn holder(
    client: &tokio_postgres::Client,
    key: i64,
) -> Result<Option<Holder>, PgFailure> {
    let (hi, lo) = lock_key_parts(key);
    let row = client
        .query_opt(
            "SELECT l.pid, coalesce(a.application_name, '?'),
                    coalesce(host(a.client_addr), CASE WHEN a.pid IS NULL THEN '?' ELSE 'local socket' END),
                    coalesce(a.usename::text, '?'),
                    coalesce(to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '?'),
                    coalesce(a.query, ''),
                    (SELECT r.objid::bigint FROM pg_locks r
                      WHERE r.pid = l.pid AND r.locktype = 'advisory' AND r.granted AND r.objsubid = 2
                        AND r.database = l.database AND r.classid::bigint = $3
                      LIMIT 1)
               FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND l.classid::bigint = $1 AND l.objid::bigint = $2
              LIMIT 1",
            &[&hi, &lo, &i64::from(RUN_LOCK_CLASS)],
        )
        .await?;
    Ok(row.map(|r| Holder {
        backend_pid: r.get(0),
        application: r.get(1),
        client: r.get(2),
        db_user: r.get(3),
        connected_at: r.get(4),
        coordinator: parse_lock_comment(r.get(5)),
        run_key: r.get(6),
    }))
}

/// The first key of the lock session's witness lock (two-integer form): "PGCL". The
/// second key is this process's run key ([`Identity::run_key`]).
pub const WITNESS_CLASS: i32 = 0x5047_434C;

/// A second session advisory lock the lock's session takes right after the cluster
/// lock, on a key only this run uses: (`WITNESS_CLASS`, run key). Both go with the session
/// and pgconvoy never releases either early, so while the witness is held, so is the
/// cluster lock; and whether it is held costs one lock-table probe to ask from any other
/// session of the run ([`held_sql`]).
#[derive(Debug, Clone)]
pub struct LockWitness {
    class: i32,
    key: i32,
    /// [`held_sql`], run by name inside a claim's message.
    held: Named,
}

impl LockWitness {
    /// Prepares the check ([`held_sql`]) on `session` ([`Named::ready`]).
    pub async fn ready(&self, session: &impl Prepares) -> Result<(), PgFailure> {
        self.held.ready(session).await
    }

    /// The check ([`held_sql`]) as one statement of text
    /// ([`crate::db::pipeline::Step::One`]: it shares a message with the claim).
    pub fn held(&self) -> String {
        self.held
            .call(&[self.class.to_string(), self.key.to_string()])
    }
}

/// Takes the witness lock on the lock's session (just after [`acquire_lock`]). `None`
/// when it cannot be taken: the run then asks the lock's session before each patch
/// instead of checking on the server. Asked with the lock's comment, like every query on
/// that session: `pg_stat_activity.query` keeps naming this coordinator (`pgconvoy
/// unlock` reads it back).
pub async fn take_witness(lock: &Dedicated) -> Option<LockWitness> {
    let witness = LockWitness {
        class: WITNESS_CLASS,
        key: Identity::current().run_key,
        held: Named::new(held_sql()),
    };
    let take = format!(
        "/* {} */ SELECT pg_try_advisory_lock({}, {})",
        Identity::current().lock_comment(&command_line()),
        witness.class,
        witness.key
    );
    let rows = lock.client.simple_query(&take).await.ok()?;
    let taken = rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t")));
    taken.then_some(witness)
}

/// What the run already knows without asking: the lock's session ended, or its
/// connection closed. For a claim that checks the lock on the server ([`held_sql`]).
pub fn confirm_flag(lock: &Dedicated, cluster: &Cluster) -> Result<(), Error> {
    if cluster.inflight.lock_lost() || lock.client.is_closed() {
        return Err(Error::LockLost {
            node: cluster.master().name().clone(),
            before: None,
            cause: None,
        });
    }
    Ok(())
}

/// Proves the run still holds the cluster lock right now: a round trip on the lock's
/// own session (a session advisory lock lives exactly as long as its session). Asked
/// before a decision that another coordinator holding the lock could contradict — the
/// first `COMMIT PREPARED` of a two-phase commit, which `recover` would otherwise be
/// free to roll back. `Err` names the master; the run must stop.
pub async fn confirm_held(lock: &Dedicated, cluster: &Cluster) -> Result<(), Error> {
    let master = cluster.master();
    let lost = |cause: Option<Box<Error>>| Error::LockLost {
        node: master.name().clone(),
        before: None,
        cause,
    };
    confirm_flag(lock, cluster)?;
    // The same comment as the lock's query: `pg_stat_activity.query` of the lock's
    // session keeps naming this coordinator (`pgconvoy unlock` reads it back).
    let probe = format!(
        "/* {} */ SELECT 1",
        Identity::current().lock_comment(&command_line())
    );
    lock.client
        .simple_query(&probe)
        .await
        .map(|_| ())
        .map_err(|e| {
            lost(Some(Box::new(Error::Node {
                node: master.name().clone(),
                master: true,
                action: "check the cluster lock",
                failure: Box::new(master.explain(e.into())),
            })))
        })
}

/// Fails on the server ([`SqlState::INVALID_TEXT_REPRESENTATION`], naming [`NOT_HELD`])
/// unless the lock's session still holds its witness ([`LockWitness`]: `$1`, `$2`),
/// so still holds the cluster lock. Asked in the claim's transaction just before each
/// claim of a batch: an error aborts that transaction on the server, so a batch stops
/// where one patch at a time would have stopped, whatever the coordinator had already
/// sent.
///
/// It tries a shared transaction lock on the witness's key: refused while the lock's
/// session holds the witness (nothing is taken); granted once that session is gone,
/// and then the error aborts the transaction, which drops it again. One lock-table
/// probe: reading `pg_locks` instead walks the whole shared lock table, which cost more
/// per patch than the claim itself (docs/performance.md).
///
/// [`SqlState::INVALID_TEXT_REPRESENTATION`]: tokio_postgres::error::SqlState::INVALID_TEXT_REPRESENTATION
pub fn held_sql() -> String {
    format!(
        "SELECT {}",
        fail_when(
            "pg_try_advisory_xact_lock_shared($1::integer, $2::integer)",
            NOT_HELD
        )
    )
}

/// Why [`held_sql`] failed.
pub const NOT_HELD: &str = "the cluster lock's session no longer holds the lock";

/// The advisory lock key as `pg_locks` shows it: (`classid`, `objid`).
pub fn lock_key_parts(key: i64) -> (i64, i64) {
    (key >> 32, key & 0xffff_ffff)
}

pub async fn release_lock(lock: Dedicated, ledger: &Ledger) {
    let _ = lock
        .client
        .execute("SELECT pg_advisory_unlock($1)", &[&ledger.advisory_key()])
        .await;
}

/// What this process was asked to do (`upgrade --all`), for the lock's comment: the
/// arguments after the program name, without the config path, shortened.
fn command_line() -> String {
    let mut words = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "-c" || a == "--config" {
            args.next();
            continue;
        }
        if a.starts_with("--config=") {
            continue;
        }
        words.push(a);
    }
    let text = words.join(" ");
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}
