//! Rehearsal of the patches one node would receive, cumulatively and in order, inside one
//! transaction that is always rolled back: per patch its outcome, duration, the table locks
//! it took (from `pg_locks`, before the rollback), the tables it rewrote, and who held a
//! lock it could not get within a short `lock_timeout`.
//!
//! Each patch runs under its own savepoint, in one request with its probes, so a failing
//! patch is rolled back alone and the later patches still rehearse; a later failure is
//! then reported as following from the first (the real run stops there). What PostgreSQL
//! does not allow in one transaction although the real run (a transaction per patch) does
//! — using an enum value an earlier patch added (55P04) — is "not rehearsable", not a
//! failure. A second session on the node watches the rehearsing backend with
//! `pg_blocking_pids()` while a patch runs. Relations the committed catalog did not know
//! when the rehearsal began were created by it and block nobody; only patches that name
//! something that existed are probed for locks, since the probe scans every lock the
//! rehearsal holds and that grows with every patch.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

use crate::db::cluster::Node;
use crate::db::pgerror::PgFailure;
use crate::db::pipeline::{self, Step, SAVEPOINT as SAVEPOINT_NAME};
use crate::db::transaction::{RollbackOnly, Transaction};
use crate::output::human::{self, one_line, seconds};
use crate::patches::lockmode::LockMode;
use crate::patches::patch::{Patch, PatchType, StatementSpan};
use crate::patches::sql;
use crate::progress::{Event, Reporter};
use locks::{held_locks_sql, usage_row, Existing, USAGE};

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
    /// Cannot be rehearsed inside the rehearsal's one transaction, though the real run
    /// (a transaction per patch, or none) may well apply it: a `concurrent` patch, or one
    /// that uses what an earlier patch of the same rehearsal did in a way PostgreSQL only
    /// allows after a commit (an enum value added earlier: 55P04). `reason` says which.
    NotRehearsable,
    /// Not rehearsed. With `after`: it failed after an earlier patch of this rehearsal
    /// failed or could not be rehearsed, and most likely because of it (the real run stops
    /// at the first failure anyway): reported once, with that patch. Without `after`: the
    /// node cannot rehearse or the patch would end the rehearsal's transaction; `error`
    /// says why, and it counts as a failure.
    NotRehearsed,
}

/// Why a patch's rehearsal failed on a node, with the line of the patch file it points
/// at: an error object of the JSON contract (`docs/schema/common.json`), plus `text`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RehearsalError {
    /// `rehearsal-failed` (the server refused a statement) or `not-rehearsed`.
    pub kind: &'static str,
    pub node: Option<String>,
    pub patch: Option<String>,
    pub sqlstate: Option<String>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// The patch file's name.
    pub file: Option<String>,
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
    /// `not_rehearsable`: why it cannot be rehearsed in one transaction.
    pub reason: Option<String>,
    /// `not_rehearsed`: the earlier patch of this rehearsal that failed (or could not be
    /// rehearsed) and that this one most likely failed because of.
    pub after: Option<String>,
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
            reason: None,
            after: None,
            locks: Vec::new(),
            rewrites: Vec::new(),
            blockers: Vec::new(),
            statements: Vec::new(),
        }
    }

    /// A failure of its own: it failed first, or the node could not rehearse it. Patches
    /// that failed after an earlier failure (`after`) are not counted again.
    pub fn is_failure(&self) -> bool {
        match self.outcome {
            Outcome::Failed => true,
            Outcome::NotRehearsed => self.after.is_none(),
            Outcome::Ok | Outcome::NotRehearsable => false,
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
                kind: "not-rehearsed",
                // The node is filled in when the node's report is assembled.
                node: None,
                patch: Some(p.version.to_string()),
                sqlstate: None,
                message: why.to_string(),
                detail: None,
                hint: None,
                file: Some(p.file_name()),
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

/// The first patch of a node's rehearsal that failed (the real run stops there), and the
/// last one that could not be rehearsed in one transaction: later failures most likely
/// follow from them.
#[derive(Default)]
struct Roots {
    failed: Option<String>,
    unrehearsable: Option<String>,
}

/// What earlier patches of the rehearsal did that PostgreSQL lets later statements of the
/// same transaction use only after a commit.
#[derive(Default)]
struct Earlier {
    /// An enum value was added (`ALTER TYPE … ADD VALUE`).
    enum_value: bool,
    /// Rows were changed (deferred constraint triggers wait for the commit).
    rows: bool,
}

impl Earlier {
    fn note(&mut self, patch: &Patch) {
        for (text, _) in patch.statement_texts() {
            self.enum_value |= adds_enum_value(text);
            self.rows |= changes_rows(text);
        }
    }
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
        // Before the rehearsal changes anything: the relations and routines that exist.
        let existing = Existing::read(watch.client()).await?;
        let settings = format!(
            "ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '{}ms'",
            lock_timeout.as_millis()
        );
        // The type has no way to commit: whatever happens, the rehearsal is rolled back
        // (explicitly below, or by closing the connection if it is dropped first).
        let tx = Transaction::rollback_only(work, &settings).await?;
        // Prepared once, so that each patch's probes go out in its one request.
        let held_locks = tx.client().prepare(&held_locks_sql()).await?;
        let usage = tx.client().prepare(USAGE).await?;
        Ok::<_, PgFailure>((pids, existing, tx, held_locks, usage))
    }
    .await;
    let (pids, existing, tx, held_locks, usage) = match begun {
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
        held_locks,
        usage,
        held: HashSet::new(),
        storage: HashMap::new(),
        existing,
    };
    let mut roots = Roots::default();
    let mut earlier = Earlier::default();
    let mut broken: Option<String> = None;
    for patch in patches {
        let version = patch.version.to_string();
        if patch.kind == PatchType::Concurrent {
            out.patches.push(not_rehearsable(patch));
            roots.unrehearsable = Some(version);
            continue;
        }
        if let Some(why) = &broken {
            out.patches.extend(not_rehearsed(&[patch], why));
            continue;
        }
        if let Some((line, what)) = crate::patches::lint::ends_transaction(patch) {
            let why = format!(
                "not rehearsed: `{what}` at line {line} would end the transaction the patch runs in (see lint rule transaction-nesting)"
            );
            let mut pr = not_rehearsed(&[patch], &why).remove(0);
            if let Some(e) = pr.error.as_mut() {
                e.line = Some(line);
            }
            out.patches.push(pr);
            roots.failed.get_or_insert(version);
            continue;
        }
        reporter.event(&Event::NodeStart {
            version: patch.version,
            node: node.name(),
        });
        let mut pr = match r.patch(patch).await {
            Ok((mut pr, failed_at)) => {
                if let Some(at) = failed_at {
                    classify(&mut pr, patch, at, &earlier, &mut roots);
                } else {
                    earlier.note(patch);
                }
                pr
            }
            Err(e) => {
                // The session itself failed (connection lost, savepoint unusable).
                let why = format!("the rehearsal session failed: {e}");
                broken = Some(why.clone());
                not_rehearsed(&[patch], &why).remove(0)
            }
        };
        if pr.outcome == Outcome::NotRehearsed && pr.after.is_none() && broken.is_none() {
            pr.after = roots.failed.clone();
        }
        let error = pr
            .error
            .as_ref()
            .filter(|_| pr.is_failure())
            .map(|e| e.text.clone());
        reporter.event(&Event::NodeDone {
            version: patch.version,
            node: node.name(),
            elapsed: Duration::from_millis(pr.duration_ms),
            error: error.as_deref(),
        });
        out.patches.push(pr);
        if patch.is_baseline() && broken.is_none() {
            // A baseline from `pg_dump` sets `search_path` (to nothing) and the timeouts for
            // the session; a run closes that session, the rehearsal goes on in it.
            let reset = format!(
                "SET search_path TO DEFAULT; SET LOCAL lock_timeout = '{}ms'; SET statement_timeout TO DEFAULT",
                lock_timeout.as_millis()
            );
            if let Err(e) = tx.client().batch_execute(&reset).await {
                broken = Some(format!("the rehearsal session failed: {e}"));
            }
        }
    }
    drop(r);
    tx.rollback().await;
    out
}

/// Decides what a failed patch's failure means: a patch PostgreSQL cannot run in the same
/// transaction as an earlier one (not rehearsable), a consequence of an earlier failure
/// (not rehearsed, after it), or a failure of its own. `at`: the failing statement.
fn classify(
    pr: &mut PatchRehearsal,
    patch: &Patch,
    at: usize,
    earlier: &Earlier,
    roots: &mut Roots,
) {
    let code = pr.error.as_ref().and_then(|e| e.sqlstate.clone());
    let is = |s: &SqlState| code.as_deref() == Some(s.code());
    let upto: Vec<&str> = patch
        .statement_texts()
        .take(at + 1)
        .map(|(t, _)| t)
        .collect();
    let reason = if is(&SqlState::UNSAFE_NEW_ENUM_VALUE_USAGE)
        && earlier.enum_value
        && !upto.iter().any(|t| adds_enum_value(t))
    {
        Some(
            "it uses an enum value that an earlier pending patch adds (ALTER TYPE … ADD VALUE); \
             PostgreSQL allows that only once the adding transaction committed, which the real \
             run does (a transaction per patch) and a rehearsal in one transaction cannot (55P04)",
        )
    } else if is(&SqlState::OBJECT_IN_USE) && earlier.rows && !upto.iter().any(|t| changes_rows(t))
    {
        Some(
            "it changes a table with pending trigger events from rows an earlier pending patch \
             changed (deferred constraint triggers fire at commit, which the real run does per \
             patch and a rehearsal in one transaction cannot; 55006)",
        )
    } else {
        None
    };
    if let Some(why) = reason {
        pr.outcome = Outcome::NotRehearsable;
        pr.reason = Some(format!("not rehearsable in one transaction: {why}"));
        roots.unrehearsable = Some(pr.patch.clone());
        return;
    }
    // What a patch the rehearsal could not run leaves missing.
    let missing = [
        SqlState::UNDEFINED_TABLE,
        SqlState::UNDEFINED_COLUMN,
        SqlState::UNDEFINED_OBJECT,
        SqlState::UNDEFINED_FUNCTION,
        SqlState::INVALID_SCHEMA_NAME,
        SqlState::INVALID_TEXT_REPRESENTATION,
    ]
    .iter()
    .any(is);
    if let Some(root) = &roots.failed {
        pr.outcome = Outcome::NotRehearsed;
        pr.after = Some(root.clone());
    } else if let (Some(root), true) = (&roots.unrehearsable, missing) {
        pr.outcome = Outcome::NotRehearsed;
        pr.after = Some(root.clone());
    } else {
        roots.failed = Some(pr.patch.clone());
    }
}

/// `ALTER TYPE … ADD VALUE`.
fn adds_enum_value(statement: &str) -> bool {
    let toks: Vec<sql::Token<'_>> = sql::tokens(statement).take(64).collect();
    toks.first().is_some_and(|t| t.is_keyword("alter"))
        && toks.get(1).is_some_and(|t| t.is_keyword("type"))
        && toks
            .windows(2)
            .any(|w| w[0].is_keyword("add") && w[1].is_keyword("value"))
}

/// Statements that change rows (and so may queue deferred trigger events).
fn changes_rows(statement: &str) -> bool {
    let head = sql::leading_keywords(statement, 1);
    let first = head.first().map(|k| k.to_ascii_lowercase());
    let first = first.as_deref();
    matches!(
        first,
        Some("insert" | "update" | "delete" | "merge" | "copy")
    ) || (first == Some("with")
        && sql::tokens(statement).any(|t| {
            ["insert", "update", "delete"]
                .iter()
                .any(|k| t.is_keyword(k))
        }))
}

/// Every word of `text`, folded to lower case, comments, strings and quoted identifiers
/// included: what the patch may name. Over-inclusive on purpose (a DO block's body is a
/// string).
fn words(text: &str) -> HashSet<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
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
    /// [`held_locks_sql`] and [`USAGE`], prepared on the work session.
    held_locks: tokio_postgres::Statement,
    usage: tokio_postgres::Statement,
    /// `(relation oid, mode)` held by the rehearsal so far, as last seen.
    held: HashSet<(i64, LockMode)>,
    /// Last seen `relfilenode` of each relation the rehearsal locked.
    storage: HashMap<i64, i64>,
    /// What existed before the rehearsal.
    existing: Existing,
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
    /// Its storage (a new one: rewritten).
    relfilenode: i64,
}

/// A relation lock held by the rehearsing backend, as seen inside its transaction.
struct HeldLock {
    oid: i64,
    mode: LockMode,
    /// In-transaction name, kind, system-ness and storage; `None` when the rehearsal dropped it.
    inside: Option<Relation>,
}

type Rows = Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>;

impl Rehearsal<'_> {
    /// One patch under its savepoint, in one request: the savepoint, the statements (one
    /// message each, so that a failure is pinned to its statement even when the server
    /// reports no position in it), the lock probes, the release. Returns the rehearsal and,
    /// when it failed, the index of the failing statement. `Err` only when the session
    /// itself is unusable.
    ///
    /// The probes cost a scan of every lock the rehearsal holds (`pg_locks`), which grows
    /// with every patch; they run only for patches that name a relation or routine that
    /// existed before the run, since only locks on those block anybody.
    async fn patch(&mut self, patch: &Patch) -> Result<(PatchRehearsal, Option<usize>), PgFailure> {
        let mut pr = PatchRehearsal::new(patch, Outcome::Ok);
        let words = words(&patch.body);
        // A relation the rehearsal already holds in ACCESS EXCLUSIVE mode can show no new
        // lock; what the patch does to it is inferred below.
        let probe = words.iter().any(|w| {
            self.existing.routines.contains(w)
                || self.existing.by_name.get(w).is_some_and(|oids| {
                    oids.iter()
                        .any(|o| !self.held.contains(&(*o, LockMode::AccessExclusive)))
                })
        });
        // Tables that existed, that an earlier patch locked, and that this one names: a
        // lock on them is already held, so whether this patch takes it is inferred from
        // what it did to them.
        let names_existing = words.iter().any(|w| self.existing.by_name.contains_key(w));
        let reused: Vec<i64> = if names_existing {
            self.held
                .iter()
                .map(|(oid, _)| *oid)
                .collect::<HashSet<_>>()
                .into_iter()
                .filter(|oid| {
                    self.existing.relations.get(oid).is_some_and(|r| {
                        matches!(
                            r.kind.as_str(),
                            "table" | "partitioned table" | "materialized view"
                        ) && words.contains(&bare_name(&r.name))
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let statements: Vec<(&str, StatementSpan)> = patch.statement_texts().collect();
        let client = self.work.client();
        let blockers = RefCell::new(Vec::new());
        let started = Instant::now();
        let (savepoint_sql, release_sql) = (
            format!("SAVEPOINT {SAVEPOINT_NAME}"),
            format!("RELEASE SAVEPOINT {SAVEPOINT_NAME}"),
        );
        let (before, savepoint, body, locks, after, released) = {
            let (usage_st, reused) = (&self.usage, &reused);
            let usage = || async move {
                if reused.is_empty() {
                    Ok(Vec::new())
                } else {
                    client.query(usage_st, &[reused]).await
                }
            };
            let held_locks = &self.held_locks;
            let probes = || async move {
                if probe {
                    client
                        .query(held_locks, &[&FIRST_NORMAL_OID])
                        .await
                        .map(Some)
                } else {
                    Ok(None)
                }
            };
            let all = async {
                if patch.copies.is_empty() {
                    // futures' join polls its futures in order, so they are sent in this
                    // order, back to back (tokio-postgres sends a request when it is first
                    // polled).
                    let body = statements.iter().map(|(text, _)| async move {
                        client.batch_execute(text).await.map_err(PgFailure::from)
                    });
                    futures::join!(
                        usage(),
                        client.batch_execute(&savepoint_sql),
                        futures::future::join_all(body),
                        probes(),
                        usage(),
                        client.batch_execute(&release_sql),
                    )
                } else {
                    // A COPY prepares its statement before its data goes out, so requests
                    // queued behind it would overtake it: such a patch's statements go one
                    // at a time, the probes and the release after them.
                    let before = usage().await;
                    let savepoint = client.batch_execute(&savepoint_sql).await;
                    let mut body = Vec::with_capacity(statements.len());
                    for k in 0..statements.len() {
                        let r = pipeline::send_one(client, Step::statement(patch, k)).await;
                        let failed = r.is_err();
                        body.push(r);
                        if failed {
                            break;
                        }
                    }
                    let (locks, after, released) =
                        futures::join!(probes(), usage(), client.batch_execute(&release_sql));
                    (before, savepoint, body, locks, after, released)
                }
            };
            let watch = self.watch_blockers(&blockers);
            tokio::pin!(all);
            tokio::pin!(watch);
            let mut watching = true;
            loop {
                tokio::select! {
                    r = &mut all => break r,
                    () = &mut watch, if watching => watching = false,
                }
            }
        };
        pr.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        pr.blockers = blockers.into_inner();
        savepoint?;
        let failed = body
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e)));
        let Some((at, e)) = failed else {
            let usage_of = |rows: Rows| -> Result<HashMap<i64, Usage>, PgFailure> {
                Ok(rows?.iter().map(usage_row).collect())
            };
            let (before, after) = (usage_of(before)?, usage_of(after)?);
            let rows = locks?;
            if rows.is_some() || !before.is_empty() {
                let (locks, rewrites) =
                    self.locks_taken(rows.as_deref().unwrap_or(&[]), &before, &after, &words);
                pr.locks = locks;
                pr.rewrites = rewrites;
            }
            released?;
            return Ok((pr, None));
        };
        let what = e.clone();
        if what.code.is_none() {
            return Err(what);
        }
        client
            .batch_execute(&format!(
                "ROLLBACK TO SAVEPOINT {SAVEPOINT_NAME}; RELEASE SAVEPOINT {SAVEPOINT_NAME}"
            ))
            .await?;
        pr.outcome = Outcome::Failed;
        let (text, span) = statements[at];
        let line = match (what.position, patch.copy_block(at), what.copy_line) {
            (Some(p), _, _) => span.line + sql::line_at_char_position(text, p as usize) - 1,
            (None, Some(block), Some(n)) => block.line + n as usize - 1,
            _ => span.line,
        };
        pr.error = Some(self.error(patch, &what, line, &pr.blockers));
        Ok((pr, Some(at)))
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
            kind: "rehearsal-failed",
            node: Some(self.node.name().to_string()),
            patch: Some(patch.version.to_string()),
            sqlstate: what.sqlstate().map(str::to_string),
            message: what.message.clone(),
            detail: what.detail.clone(),
            hint: what.hint.clone(),
            file: Some(patch.file_name()),
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

/// A relation's name without schema or quotes, in lower case, as [`words`] has it.
fn bare_name(name: &str) -> String {
    name.rsplit('.')
        .next()
        .unwrap_or(name)
        .trim_matches('"')
        .to_lowercase()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_matter_across_patches() {
        assert!(adds_enum_value("ALTER TYPE mood ADD VALUE 'x' BEFORE 'y'"));
        assert!(adds_enum_value(
            "alter type s.mood add value if not exists 'x'"
        ));
        assert!(!adds_enum_value("ALTER TYPE mood RENAME VALUE 'x' TO 'y'"));
        assert!(!adds_enum_value("ALTER TABLE t ADD COLUMN value int"));
        assert!(changes_rows("INSERT INTO t VALUES (1)"));
        assert!(changes_rows(
            "WITH x AS (DELETE FROM t RETURNING *) SELECT 1"
        ));
        assert!(!changes_rows("CREATE TABLE t (id int)"));
    }

    #[test]
    fn words_include_strings_and_quoted_names() {
        let w = words(
            "DO $$ BEGIN UPDATE Orders SET v = 1; END $$; SELECT \"Item\".x FROM s.\"Item\";",
        );
        for x in ["orders", "item", "s", "x", "update"] {
            assert!(w.contains(x), "{x}: {w:?}");
        }
        assert_eq!(bare_name("public.\"Item\""), "item");
        assert_eq!(bare_name("orders"), "orders");
    }
}
