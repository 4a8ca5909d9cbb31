//! Rehearsal of the patches one node would receive, cumulatively and in order, inside one
//! transaction that is always rolled back: per patch its outcome, duration, the table locks
//! it took (from `pg_locks`, before the rollback), the tables it rewrote, and who held a
//! lock it could not get within a short `lock_timeout`.
//!
//! Each patch runs under its own savepoint, so a failing patch is rolled back alone and the
//! later patches still rehearse (and show whether they depend on it). A second session on
//! the node watches the rehearsing backend with `pg_blocking_pids()` while a patch runs, and
//! resolves relation names against the committed catalog (a relation the committed catalog
//! does not know was created by the rehearsal and blocks nobody).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

use crate::db::cluster::Node;
use crate::db::pgerror::PgFailure;
use crate::db::transaction::{RollbackOnly, Transaction};
use crate::output::human::{self, one_line, seconds};
use crate::patches::lockmode::LockMode;
use crate::patches::patch::{Patch, PatchType};
use crate::patches::sql;
use crate::progress::{Event, Reporter};

mod locks;

/// User relations have OIDs from here on (`FirstNormalObjectId`); below are the system catalogs.
const FIRST_NORMAL_OID: i64 = 16384;

/// What happened to one patch on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Rehearsed and rolled back without error.
    Ok,
    /// Rehearsed and failed; `error` says why.
    Failed,
    /// A `concurrent` patch: it runs outside any transaction, so it cannot be rehearsed.
    NotRehearsable,
    /// Not rehearsed: the node cannot rehearse (see the node's findings) or the patch would
    /// end the rehearsal's transaction; `error` says why. Counts as a failure.
    NotRehearsed,
}

impl Outcome {
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::NotRehearsed)
    }
}

/// A server error, with the line of the patch file it points at.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RehearsalError {
    pub sqlstate: Option<String>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based line in the patch file, when the server reported a position.
    pub line: Option<usize>,
    /// The whole error in one line, as the text report prints it.
    pub text: String,
}

/// A table-level lock a patch took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LockTaken {
    /// The relation's name (schema-qualified unless on the search path), as it was before the patch.
    pub relation: String,
    /// `table`, `index`, `sequence`, `view`, `materialized view`, …
    pub kind: String,
    /// `pg_locks.mode`, e.g. `AccessExclusiveLock`.
    pub mode: String,
    /// Created by the rehearsal itself: nobody else can see it before commit.
    pub created: bool,
    /// An earlier patch of this rehearsal already held this lock (one transaction holds
    /// them all), so it was inferred from what this patch did to the relation: writes mean
    /// `RowExclusiveLock`, reads `AccessShareLock`, and a schema change the strongest mode
    /// held, which may be stronger than the patch alone needs.
    pub inferred: bool,
    /// What holding the lock blocks, in plain words.
    pub blocks: String,
}

/// A session that held a lock the rehearsal waited for.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Blocker {
    /// Backend pid; 0 for a prepared transaction.
    pub pid: i32,
    pub user: String,
    pub application: String,
    pub client: String,
    pub state: String,
    /// Seconds since the blocker's transaction started.
    pub transaction_age_s: Option<f64>,
    pub query: String,
    /// What the rehearsal waited for, e.g. `AccessExclusiveLock on orders`.
    pub waiting_for: String,
    /// The modes the blocker holds on that relation, e.g. `AccessShareLock`.
    pub holds: String,
}

impl Blocker {
    /// `pid 123 (user app, application `psql`, idle in transaction, transaction open 12s): LOCK …`
    pub fn describe(&self) -> String {
        if self.pid == 0 {
            return "a prepared transaction (see pg_prepared_xacts)".into();
        }
        let mut s = format!(
            "pid {} (user `{}`, application `{}`, from {}, {}",
            self.pid, self.user, self.application, self.client, self.state
        );
        if let Some(age) = self.transaction_age_s {
            s.push_str(&format!(", transaction open {}", seconds(age)));
        }
        if !self.holds.is_empty() {
            s.push_str(&format!(", holds {}", self.holds));
        }
        s.push(')');
        if !self.query.is_empty() {
            s.push_str(&format!(", last query: {}", one_line(&self.query)));
        }
        s
    }
}

/// One statement of a patch, for patches that cannot be rehearsed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatementLine {
    pub line: usize,
    pub text: String,
}

/// One patch on one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PatchRehearsal {
    pub patch: String,
    #[serde(rename = "type")]
    pub patch_type: PatchType,
    pub file: String,
    pub outcome: Outcome,
    pub duration_ms: u64,
    pub error: Option<RehearsalError>,
    /// Earlier patches that failed in this node's rehearsal (this one may depend on them).
    pub after_failed: Vec<String>,
    /// Table locks this patch takes, strongest first.
    pub locks: Vec<LockTaken>,
    /// Existing tables the patch gave new storage (a rewrite, or TRUNCATE).
    pub rewrites: Vec<String>,
    /// Sessions that held a lock this patch waited for.
    pub blockers: Vec<Blocker>,
    /// For `concurrent` patches: the statements, one by one.
    pub statements: Vec<StatementLine>,
}

impl PatchRehearsal {
    fn new(patch: &Patch, outcome: Outcome) -> PatchRehearsal {
        PatchRehearsal {
            patch: patch.version.to_string(),
            patch_type: patch.kind,
            file: patch.file_name(),
            outcome,
            duration_ms: 0,
            error: None,
            after_failed: Vec::new(),
            locks: Vec::new(),
            rewrites: Vec::new(),
            blockers: Vec::new(),
            statements: Vec::new(),
        }
    }

    /// Whether it failed because a lock was not granted within the lock timeout.
    pub fn lock_timed_out(&self) -> bool {
        self.error
            .as_ref()
            .and_then(|e| e.sqlstate.as_deref())
            .is_some_and(|s| s == SqlState::LOCK_NOT_AVAILABLE.code())
    }
}

/// Every patch of one node's rehearsal, in order, plus the backends it used.
#[derive(Debug, Default)]
pub struct NodeRehearsal {
    pub patches: Vec<PatchRehearsal>,
    /// The rehearsal's own backends, which preflight must not report as other sessions.
    pub pids: Vec<i32>,
}

/// Marks every patch as not rehearsed, for a node that cannot rehearse.
pub fn not_rehearsed(patches: &[&Patch], why: &str) -> Vec<PatchRehearsal> {
    patches
        .iter()
        .map(|p| {
            if p.kind == PatchType::Concurrent {
                return not_rehearsable(p);
            }
            let mut r = PatchRehearsal::new(p, Outcome::NotRehearsed);
            r.error = Some(RehearsalError {
                sqlstate: None,
                message: why.to_string(),
                detail: None,
                hint: None,
                line: None,
                text: why.to_string(),
            });
            r
        })
        .collect()
}

fn not_rehearsable(patch: &Patch) -> PatchRehearsal {
    let mut r = PatchRehearsal::new(patch, Outcome::NotRehearsable);
    r.statements = patch
        .statement_texts()
        .map(|(text, span)| StatementLine {
            line: span.line,
            text: text.to_string(),
        })
        .collect();
    r
}

/// Rehearses `patches` (the ones `node` would receive, in order) in one transaction that
/// is always rolled back.
pub async fn rehearse(
    node: &Node,
    patches: &[&Patch],
    lock_timeout: Duration,
    reporter: &dyn Reporter,
) -> NodeRehearsal {
    let mut out = NodeRehearsal::default();
    let sessions = async {
        let work = node.session().await?;
        let watch = node.session().await?;
        Ok::<_, PgFailure>((work, watch))
    }
    .await;
    let (work, watch) = match sessions {
        Ok(s) => s,
        Err(e) => {
            out.patches = not_rehearsed(patches, &format!("no session on the node: {e}"));
            return out;
        }
    };
    let begun = async {
        let pids = vec![
            backend_pid(work.client()).await?,
            backend_pid(watch.client()).await?,
        ];
        let settings = format!(
            "ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '{}ms'",
            lock_timeout.as_millis()
        );
        // The type has no way to commit: whatever happens, the rehearsal is rolled back
        // (explicitly below, or by closing the connection if it is dropped first).
        let tx = Transaction::rollback_only(work, &settings).await?;
        Ok::<_, PgFailure>((pids, tx))
    }
    .await;
    let (pids, tx) = match begun {
        Ok(b) => b,
        Err(e) => {
            out.patches = not_rehearsed(patches, &format!("cannot start the rehearsal: {e}"));
            return out;
        }
    };
    out.pids = pids;
    let mut r = Rehearsal {
        node,
        work: &tx,
        watch: watch.client(),
        pid: out.pids[0],
        lock_timeout,
        held: HashSet::new(),
        storage: HashMap::new(),
        committed: HashMap::new(),
    };
    let mut failed: Vec<String> = Vec::new();
    let mut broken: Option<String> = None;
    for patch in patches {
        if patch.kind == PatchType::Concurrent {
            out.patches.push(not_rehearsable(patch));
            continue;
        }
        if let Some(why) = &broken {
            out.patches.extend(not_rehearsed(&[patch], why));
            continue;
        }
        if let Some((line, what)) = crate::patches::lint::ends_transaction(patch) {
            let why = format!(
                "not rehearsed: `{what}` at line {line} would end the transaction the patch runs in (see lint rule transaction-control)"
            );
            let mut pr = not_rehearsed(&[patch], &why).remove(0);
            if let Some(e) = pr.error.as_mut() {
                e.line = Some(line);
            }
            out.patches.push(pr);
            failed.push(patch.version.to_string());
            continue;
        }
        reporter.event(&Event::NodeStart {
            version: patch.version,
            node: node.name(),
        });
        let mut pr = match r.patch(patch).await {
            Ok(pr) => pr,
            Err(e) => {
                // The session itself failed (connection lost, savepoint unusable).
                let why = format!("the rehearsal session failed: {e}");
                broken = Some(why.clone());
                not_rehearsed(&[patch], &why).remove(0)
            }
        };
        pr.after_failed.clone_from(&failed);
        let error = pr.error.as_ref().map(|e| e.text.clone());
        reporter.event(&Event::NodeDone {
            version: patch.version,
            node: node.name(),
            elapsed: Duration::from_millis(pr.duration_ms),
            error: error.as_deref(),
        });
        if pr.outcome.is_failure() {
            failed.push(pr.patch.clone());
        }
        out.patches.push(pr);
    }
    drop(r);
    tx.rollback().await;
    out
}

async fn backend_pid(client: &tokio_postgres::Client) -> Result<i32, PgFailure> {
    Ok(client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0))
}

/// One node's rehearsal in progress.
struct Rehearsal<'a> {
    node: &'a Node,
    /// The rehearsal's transaction (on the work session): it can only be rolled back.
    work: &'a Transaction<RollbackOnly>,
    watch: &'a tokio_postgres::Client,
    /// The rehearsing backend.
    pid: i32,
    lock_timeout: Duration,
    /// `(relation oid, mode)` held by the rehearsal so far.
    held: HashSet<(i64, LockMode)>,
    /// Last seen `relfilenode` of each relation the rehearsal locked.
    storage: HashMap<i64, i64>,
    /// Committed-catalog facts about relations, by oid (`None`: not committed, i.e. new).
    committed: HashMap<i64, Option<Relation>>,
}

/// A relation as the committed catalog knows it.
#[derive(Debug, Clone)]
struct Relation {
    name: String,
    kind: String,
    system: bool,
    relfilenode: i64,
}

/// What a table looks like inside the rehearsal, to see whether a patch touched it.
#[derive(Debug, PartialEq, Eq)]
struct Usage {
    /// Versions (`xmin`, `ctid`) of its `pg_class`, `pg_attribute`, `pg_constraint`,
    /// `pg_index` and `pg_trigger` rows: any schema change alters one.
    catalog: String,
    /// Rows inserted, updated and deleted by this transaction (`pg_stat_xact_all_tables`).
    writes: i64,
    /// Sequential and index scans by this transaction.
    scans: i64,
}

/// A relation lock held by the rehearsing backend, as seen inside its transaction.
struct HeldLock {
    oid: i64,
    mode: LockMode,
    /// In-transaction name, kind, system-ness and storage; `None` when the rehearsal dropped it.
    inside: Option<Relation>,
}

impl Rehearsal<'_> {
    /// One patch under its savepoint. `Err` only when the session itself is unusable.
    async fn patch(&mut self, patch: &Patch) -> Result<PatchRehearsal, PgFailure> {
        let mut pr = PatchRehearsal::new(patch, Outcome::Ok);
        let tables: Vec<i64> = self
            .held
            .iter()
            .map(|(oid, _)| *oid)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let before = self.usage(&tables).await?;
        let work = self.work;
        let savepoint = work.savepoint().await?;
        let blockers = RefCell::new(Vec::new());
        let started = Instant::now();
        let result = {
            // Statement by statement (the same as one batch inside a transaction block),
            // so a failure is pinned to its statement even when the server reports no
            // position in it.
            let body = async {
                for (text, span) in patch.statement_texts() {
                    if let Err(e) = savepoint.client().batch_execute(text).await {
                        return Err((e, text, span));
                    }
                }
                Ok(())
            };
            let watch = self.watch_blockers(&blockers);
            tokio::pin!(body);
            tokio::pin!(watch);
            let mut watching = true;
            loop {
                tokio::select! {
                    r = &mut body => break r,
                    () = &mut watch, if watching => watching = false,
                }
            }
        };
        pr.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        pr.blockers = blockers.into_inner();
        match result {
            Ok(()) => {
                let (locks, rewrites) = self.locks_taken(&before).await?;
                pr.locks = locks;
                pr.rewrites = rewrites;
                savepoint.release().await?;
            }
            Err((e, text, span)) => {
                let what = PgFailure::from_pg(&e);
                if e.as_db_error().is_none() {
                    return Err(what);
                }
                savepoint.rollback().await?;
                pr.outcome = Outcome::Failed;
                let line = match what.position {
                    Some(p) => span.line + sql::line_at_char_position(text, p as usize) - 1,
                    None => span.line,
                };
                pr.error = Some(self.error(patch, &what, line, &pr.blockers));
            }
        }
        Ok(pr)
    }

    fn error(
        &self,
        patch: &Patch,
        what: &PgFailure,
        line: usize,
        blockers: &[Blocker],
    ) -> RehearsalError {
        let mut text = what.to_string();
        text.push_str(&format!(" ({} line {line})", patch.file_name()));
        if what.is(&SqlState::LOCK_NOT_AVAILABLE) {
            let waited = blockers
                .first()
                .map(|b| b.waiting_for.clone())
                .unwrap_or_else(|| "a lock".into());
            text.push_str(&format!(
                ": could not get {waited} within the rehearsal's lock timeout ({})",
                human::duration(self.lock_timeout)
            ));
            if blockers.is_empty() {
                text.push_str("; the holder left before it could be identified");
            } else {
                let who: Vec<String> = blockers.iter().map(Blocker::describe).collect();
                text.push_str(&format!("; held by {}", who.join("; ")));
            }
        } else if what.is(&SqlState::INSUFFICIENT_PRIVILEGE) {
            text.push_str(&format!(
                " (the rehearsal runs with the privileges of the role in node `{}`'s dsn)",
                self.node.name()
            ));
        }
        RehearsalError {
            sqlstate: what.sqlstate().map(str::to_string),
            message: what.message.clone(),
            detail: what.detail.clone(),
            hint: what.hint.clone(),
            line: Some(line),
            text,
        }
    }

    /// Polls, from the second session, who the rehearsing backend waits for, keeping the
    /// latest non-empty answer. Returns only when the watch session fails.
    async fn watch_blockers(&self, found: &RefCell<Vec<Blocker>>) {
        let every =
            (self.lock_timeout / 5).clamp(Duration::from_millis(10), Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let rows = match self.watch.query(BLOCKERS, &[&self.pid]).await {
                Ok(rows) => rows,
                Err(_) => return,
            };
            if rows.is_empty() {
                continue;
            }
            let now: Vec<Blocker> = rows
                .iter()
                .map(|r| {
                    let relation: Option<String> = r.get(8);
                    let mode: Option<String> = r.get(9);
                    let locktype: Option<String> = r.get(10);
                    let waiting_for = match (mode, relation, locktype) {
                        (Some(m), Some(rel), _) => format!("{m} on `{rel}`"),
                        (Some(_), None, Some(t)) if t == "transactionid" || t == "tuple" => {
                            "a row lock".to_string()
                        }
                        (Some(m), None, Some(t)) => format!("{m} on a {t}"),
                        _ => "a lock".to_string(),
                    };
                    Blocker {
                        pid: r.get(0),
                        user: r.get(1),
                        application: r.get(2),
                        client: r.get(3),
                        state: r.get(4),
                        transaction_age_s: r.get(5),
                        query: r.get(6),
                        holds: r.get::<_, Option<String>>(7).unwrap_or_default(),
                        waiting_for,
                    }
                })
                .collect();
            let mut list = found.borrow_mut();
            for b in now {
                match list.iter_mut().find(|o| o.pid == b.pid) {
                    Some(o) => *o = b,
                    None => list.push(b),
                }
            }
        }
    }
}

/// Who blocks backend `$1`, and what it waits for.
const BLOCKERS: &str = "
    WITH w AS (SELECT locktype, relation, mode FROM pg_locks WHERE pid = $1 AND NOT granted LIMIT 1)
    SELECT b.pid,
           coalesce(a.usename::text, ''), coalesce(a.application_name, ''),
           CASE WHEN a.pid IS NULL THEN '' ELSE coalesce(host(a.client_addr), 'local socket') END,
           coalesce(a.state, ''),
           extract(epoch FROM now() - a.xact_start)::float8,
           left(coalesce(a.query, ''), 300),
           (SELECT string_agg(DISTINCT h.mode, ', ') FROM pg_locks h, w
             WHERE h.pid = b.pid AND h.granted AND h.relation = w.relation),
           (SELECT w.relation::regclass::text FROM w WHERE w.relation IS NOT NULL),
           (SELECT w.mode FROM w),
           (SELECT w.locktype FROM w)
      FROM unnest(pg_blocking_pids($1)) AS b(pid)
      LEFT JOIN pg_stat_activity a ON a.pid = b.pid";
