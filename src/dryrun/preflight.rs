//! Preflight of one node for the dry run, read-only, after its first look
//! ([`crate::db::probe`]): other sessions (long-running, idle in transaction),
//! replication lag (standbys, subscriptions, slots), and leftovers (invalid indexes,
//! prepared transactions), each turned into findings against the configured thresholds.

use std::time::Duration;

use super::findings::{Finding, FindingKind, Level};
use crate::db::cluster::Node;
use crate::db::pgerror::PgFailure;
use crate::output::human::{bytes, one_line, seconds};

/// Thresholds from `cluster.yaml`.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Sessions whose transaction or query is older than this are reported.
    pub long_running: Duration,
    /// Replication lag above this blocks the run.
    pub lag: Duration,
}

/// Another session of the node's database.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Session {
    pub pid: i32,
    pub user: String,
    pub application: String,
    pub client: String,
    pub state: String,
    pub transaction_age_s: Option<f64>,
    pub query_age_s: Option<f64>,
    pub query: String,
}

/// A physical standby streaming from this node (`pg_stat_replication`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Standby {
    pub application: String,
    pub client: String,
    pub state: String,
    pub lag_s: Option<f64>,
    pub lag_bytes: Option<f64>,
}

/// A logical subscription on this node (`pg_subscription`, `pg_stat_subscription`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Subscription {
    pub name: String,
    pub enabled: bool,
    pub worker_running: bool,
    /// Seconds since the last message from the publisher.
    pub last_message_age_s: Option<f64>,
    /// `pg_stat_subscription_stats.apply_error_count` (PostgreSQL ≥ 15; else 0).
    pub apply_errors: i64,
}

/// A replication slot on this node (`pg_replication_slots`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Slot {
    pub name: String,
    pub slot_type: String,
    pub active: bool,
    /// WAL the slot holds back, in bytes.
    pub retained_bytes: Option<f64>,
}

/// Replication as seen from one node.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Replication {
    /// On a standby: seconds since the last replayed transaction.
    pub replay_delay_s: Option<f64>,
    pub standbys: Vec<Standby>,
    pub subscriptions: Vec<Subscription>,
    pub slots: Vec<Slot>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InvalidIndex {
    pub index: String,
    pub table: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PreparedTransaction {
    pub gid: String,
    pub owner: String,
    pub age_s: Option<f64>,
}

/// Everything the preflight read on one node.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Inspection {
    pub sessions: Vec<Session>,
    pub replication: Replication,
    pub invalid_indexes: Vec<InvalidIndex>,
    pub prepared_transactions: Vec<PreparedTransaction>,
    /// Checks that could not run (e.g. a view the role may not read), with the reason.
    pub unchecked: Vec<String>,
}

/// What the caller knows about the node when inspecting it.
pub struct Context<'a> {
    /// The rehearsal's own backends (not "other sessions").
    pub own_pids: &'a [i32],
    pub in_recovery: bool,
    /// Whether `concurrent` patches would run on the node (they wait for old transactions).
    pub runs_concurrent: bool,
}

/// Reads sessions, replication and leftovers; returns them with their findings.
pub async fn inspect(
    node: &Node,
    ctx: &Context<'_>,
    limits: Thresholds,
) -> (Inspection, Vec<Finding>) {
    let session = match node.session().await {
        Ok(s) => s,
        Err(e) => {
            let mut out = Inspection::default();
            out.unchecked
                .push(format!("no session for the preflight: {e}"));
            return (out, Vec::new());
        }
    };
    let mut i = Inspector {
        client: session.client(),
        node: node.name().to_string(),
        limits,
        out: Inspection::default(),
        findings: Vec::new(),
    };
    i.sessions(ctx).await;
    if ctx.in_recovery {
        i.replay_delay().await;
    } else {
        i.standbys().await;
        i.slots().await;
    }
    i.subscriptions().await;
    i.invalid_indexes().await;
    i.prepared_transactions().await;
    (i.out, i.findings)
}

/// One node's preflight in progress: each check adds what it read and its findings;
/// a check that cannot run is noted in `unchecked`.
struct Inspector<'a> {
    client: &'a tokio_postgres::Client,
    node: String,
    limits: Thresholds,
    out: Inspection,
    findings: Vec<Finding>,
}

impl Inspector<'_> {
    fn finding(&mut self, kind: FindingKind, blocking: bool, message: String) {
        self.findings.push(Finding {
            severity: if blocking {
                Level::Blocking
            } else {
                Level::Warning
            },
            kind,
            node: Some(self.node.clone()),
            patch: None,
            message,
            nodes: Vec::new(),
        });
    }

    /// Runs `sql`; on failure notes the check as not run and returns nothing.
    async fn rows(
        &mut self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Vec<tokio_postgres::Row> {
        match self.client.query(sql, params).await {
            Ok(rows) => rows,
            Err(e) => {
                self.out
                    .unchecked
                    .push(format!("{what}: {}", PgFailure::from_pg(&e)));
                Vec::new()
            }
        }
    }

    /// Other sessions of this database that are old enough to matter.
    async fn sessions(&mut self, ctx: &Context<'_>) {
        let long = self.limits.long_running.as_secs_f64();
        for r in self
            .rows("sessions", SESSIONS, &[&ctx.own_pids, &long])
            .await
        {
            let s = Session {
                pid: r.get(0),
                user: r.get(1),
                application: r.get(2),
                client: r.get(3),
                state: r.get(4),
                transaction_age_s: r.get(5),
                query_age_s: r.get(6),
                query: r.get(7),
            };
            let age = s.transaction_age_s.or(s.query_age_s).unwrap_or(0.0);
            let mut message = format!(
                "session pid {} (user `{}`, application `{}`, from {}) is {} with a transaction open {}: {}",
                s.pid,
                s.user,
                s.application,
                s.client,
                s.state,
                seconds(age),
                one_line(&s.query)
            );
            if ctx.runs_concurrent {
                message.push_str(
                    "; CREATE INDEX CONCURRENTLY in the `concurrent` patches waits for it to end",
                );
            }
            let kind = if s.state.starts_with("idle in transaction") {
                FindingKind::IdleInTransaction
            } else {
                FindingKind::LongRunningSession
            };
            self.finding(kind, false, message);
            self.out.sessions.push(s);
        }
    }

    /// On a standby: how far behind its replay is.
    async fn replay_delay(&mut self) {
        match self.client.query_one(REPLAY_DELAY, &[]).await {
            Ok(r) => self.out.replication.replay_delay_s = r.get(0),
            Err(e) => self
                .out
                .unchecked
                .push(format!("replay delay: {}", PgFailure::from_pg(&e))),
        }
    }

    /// Standbys streaming from this node, and their lag.
    async fn standbys(&mut self) {
        let lag_limit = self.limits.lag.as_secs_f64();
        for r in self.rows("standbys", STANDBYS, &[]).await {
            let s = Standby {
                application: r.get(0),
                client: r.get(1),
                state: r.get(2),
                lag_s: r.get(3),
                lag_bytes: r.get(4),
            };
            if let Some(lag) = s.lag_s.filter(|l| *l > lag_limit) {
                self.finding(
                    FindingKind::ReplicationLag,
                    true,
                    format!(
                        "standby `{}` ({}) lags {} behind (threshold {})",
                        s.application,
                        s.client,
                        seconds(lag),
                        seconds(lag_limit)
                    ),
                );
            } else if s.state != "streaming" {
                self.finding(
                    FindingKind::ReplicationLag,
                    false,
                    format!(
                        "standby `{}` ({}) is `{}`, not streaming",
                        s.application, s.client, s.state
                    ),
                );
            }
            self.out.replication.standbys.push(s);
        }
    }

    /// Replication slots, and the WAL the inactive ones hold back.
    async fn slots(&mut self) {
        for r in self.rows("replication slots", SLOTS, &[]).await {
            let s = Slot {
                name: r.get(0),
                slot_type: r.get(1),
                active: r.get(2),
                retained_bytes: r.get(3),
            };
            if !s.active {
                self.finding(
                    FindingKind::InactiveSlot,
                    false,
                    format!(
                        "{} replication slot `{}` is inactive and holds back {} of WAL",
                        s.slot_type,
                        s.name,
                        s.retained_bytes.map_or("an unknown amount".into(), bytes)
                    ),
                );
            }
            self.out.replication.slots.push(s);
        }
    }

    /// Subscriptions on this node: worker running, publisher heard from, apply errors.
    async fn subscriptions(&mut self) {
        let lag_limit = self.limits.lag.as_secs_f64();
        let health = crate::replication::subscriptions::subscriptions(self.client)
            .await
            .unwrap_or_default();
        for r in self.rows("subscriptions", SUBSCRIPTIONS, &[]).await {
            let name: String = r.get(0);
            let apply_errors = health
                .iter()
                .find(|h| h.name == name)
                .map_or(0, |h| h.apply_errors);
            let s = Subscription {
                name,
                enabled: r.get(1),
                worker_running: r.get(2),
                last_message_age_s: r.get(3),
                apply_errors,
            };
            if s.enabled && !s.worker_running {
                self.finding(
                    FindingKind::SubscriptionDown,
                    false,
                    format!(
                        "subscription `{}` is enabled but its apply worker is not running: replication to this node is stopped",
                        s.name
                    ),
                );
            } else if let Some(age) = s.last_message_age_s.filter(|a| *a > lag_limit) {
                self.finding(
                    FindingKind::ReplicationLag,
                    true,
                    format!(
                        "subscription `{}` has not heard from its publisher for {} (threshold {})",
                        s.name,
                        seconds(age),
                        seconds(lag_limit)
                    ),
                );
            }
            if s.apply_errors > 0 {
                self.finding(
                    FindingKind::SubscriptionDown,
                    false,
                    format!(
                        "subscription `{}` has had {} apply error(s) (the error text is in this node's server log)",
                        s.name, s.apply_errors
                    ),
                );
            }
            self.out.replication.subscriptions.push(s);
        }
    }

    /// Invalid indexes left by failed concurrent builds.
    async fn invalid_indexes(&mut self) {
        for r in self.rows("invalid indexes", INVALID_INDEXES, &[]).await {
            let i = InvalidIndex {
                index: r.get(0),
                table: r.get(1),
            };
            self.finding(
                FindingKind::InvalidIndex,
                false,
                format!(
                    "index `{}` on `{}` is invalid (a failed or running CREATE INDEX CONCURRENTLY?): it slows every write and is never used; drop or rebuild it",
                    i.index, i.table
                ),
            );
            self.out.invalid_indexes.push(i);
        }
    }

    /// Prepared transactions, which hold their locks until resolved.
    async fn prepared_transactions(&mut self) {
        for r in self.rows("prepared transactions", PREPARED, &[]).await {
            let p = PreparedTransaction {
                gid: r.get(0),
                owner: r.get(1),
                age_s: r.get(2),
            };
            self.finding(
                FindingKind::PreparedTransaction,
                false,
                format!(
                    "prepared transaction `{}` (owner `{}`, prepared {} ago) holds its locks until it is committed or rolled back",
                    p.gid,
                    p.owner,
                    seconds(p.age_s.unwrap_or(0.0))
                ),
            );
            self.out.prepared_transactions.push(p);
        }
    }
}

/// Whether a coordinator holds the cluster lock on the master now, and who.
pub async fn coordinator_running(node: &Node, key: i64) -> Option<String> {
    let session = node.session().await.ok()?;
    crate::db::lock::holder(session.client(), key)
        .await
        .ok()
        .flatten()
        .map(|h| h.to_string())
}

/// Client backends of this database, other than ours, whose transaction (or, outside a
/// transaction, whose running query) is older than `$2` seconds.
const SESSIONS: &str = "
    SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''),
           coalesce(host(client_addr), 'local socket'), coalesce(state, ''),
           extract(epoch FROM now() - xact_start)::float8,
           extract(epoch FROM now() - query_start)::float8,
           left(coalesce(query, ''), 300)
      FROM pg_stat_activity
     WHERE datname = current_database() AND backend_type = 'client backend'
       AND pid <> pg_backend_pid() AND NOT (pid = ANY($1))
       AND (now() - xact_start > make_interval(secs => $2)
            OR (state = 'active' AND now() - query_start > make_interval(secs => $2)))
     ORDER BY xact_start NULLS LAST, pid";

const REPLAY_DELAY: &str =
    "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8";

const STANDBYS: &str = "
    SELECT coalesce(application_name, ''), coalesce(host(client_addr), 'local socket'),
           coalesce(state, ''),
           extract(epoch FROM coalesce(replay_lag, flush_lag, write_lag))::float8,
           CASE WHEN replay_lsn IS NULL THEN NULL
                ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 END
      FROM pg_stat_replication ORDER BY 1";

const SLOTS: &str = "
    SELECT slot_name::text, slot_type, active,
           CASE WHEN restart_lsn IS NULL THEN NULL
                ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 END
      FROM pg_replication_slots
     WHERE database IS NULL OR database = current_database() ORDER BY 1";

const SUBSCRIPTIONS: &str = "
    SELECT s.subname::text, s.subenabled, st.pid IS NOT NULL,
           extract(epoch FROM now() - st.last_msg_receipt_time)::float8
      FROM pg_subscription s
      LEFT JOIN pg_stat_subscription st ON st.subid = s.oid AND st.relid IS NULL
     WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
     ORDER BY 1";

const INVALID_INDEXES: &str = "
    SELECT i.indexrelid::regclass::text, i.indrelid::regclass::text
      FROM pg_index i
      JOIN pg_class c ON c.oid = i.indexrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE NOT i.indisvalid
       AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg\\_toast%'
     ORDER BY 1";

const PREPARED: &str = "
    SELECT gid, owner::text, extract(epoch FROM now() - prepared)::float8
      FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared";
