//! Owns an `upgrade` run: take the cluster lock, read every ledger, plan, then
//! for each patch claim → fan out → stamp → commit, and decide on failure.
//! Ctrl-C / SIGTERM cancel what runs on the servers and roll the claim back.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::GenericClient;

use crate::cluster::{Cluster, Dedicated, Node};
use crate::config::{Config, NodeName, Replication, Role};
use crate::error::Error;
use crate::ledger::{quote_ident, Book, Ledger, NodeLedger, RowParams};
use crate::patch::{Patch, PatchOrder, PatchSet, PatchType};
use crate::pgerror::PgFailure;
use crate::pipeline::{self, Step, TxSession};
use crate::plan::{self, Selection};
use crate::recover;
use crate::replication;
use crate::report::{Event, Reporter};
use crate::retry::{self, RetryPolicy};
use crate::sql;

/// What the command line asked of an `upgrade`.
#[derive(Debug, Clone, Default)]
pub struct UpgradeOptions {
    pub selection: Selection,
    /// Wait for another coordinator to finish instead of exiting 3.
    pub wait: bool,
}

/// The outcome of one patch on one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeResult {
    pub patch: String,
    pub patch_type: PatchType,
    pub node: String,
    pub duration_ms: u128,
    pub ok: bool,
    pub error: Option<String>,
}

/// Everything a run did, for the summary.
#[derive(Debug, Default, serde::Serialize)]
pub struct RunReport {
    /// Patches stamped done on the master, in order.
    pub applied: Vec<String>,
    pub results: Vec<NodeResult>,
    /// Patches still pending on the cluster after the run.
    pub pending: Vec<String>,
    pub notes: Vec<String>,
    /// Whether the run got as far as planning (false: refused or failed before).
    pub planned: bool,
    /// Why the run failed, when it did.
    pub error: Option<String>,
    #[serde(skip)]
    pub failure: Option<Error>,
}

/// A failure of a patch body (or its bookkeeping) on one node.
#[derive(Debug, Clone)]
struct NodeFailure {
    node: NodeName,
    what: String,
    /// The line in the patch file the server's error position points at.
    line: Option<usize>,
}

impl NodeFailure {
    fn describe(&self, patch: &Patch) -> String {
        let mut s = format!(
            "patch `{}` failed on node `{}`: {}",
            patch.version, self.node, self.what
        );
        if let Some(line) = self.line {
            s.push_str(&format!(" ({} line {line})", patch.file_name()));
        }
        s
    }
}

type Outcome = (usize, Duration, Result<(), NodeFailure>);

/// How a pipelined transaction failed.
enum TxFailure {
    /// One of the steps before the body (BEGIN, the claim or ledger row).
    Before(PgFailure),
    /// The body, or the steps after it.
    Node(NodeFailure),
}

/// Runs `upgrade` against the cluster of `config`. A first Ctrl-C or SIGTERM
/// cancels the statements running on every server and lets the run unwind
/// (claim rolled back, summary printed); a second one exits at once.
pub async fn upgrade(
    config: &Config,
    patches: &PatchSet,
    opts: &UpgradeOptions,
    reporter: &dyn Reporter,
) -> RunReport {
    let cluster = Cluster::new(config);
    let interrupted = AtomicBool::new(false);
    let mut report = RunReport::default();
    let result = {
        let run = upgrade_inner(
            config,
            &cluster,
            patches,
            opts,
            reporter,
            &interrupted,
            &mut report,
        );
        futures::pin_mut!(run);
        loop {
            tokio::select! {
                r = &mut run => break r,
                signal = interrupt() => {
                    if interrupted.swap(true, Ordering::SeqCst) {
                        eprintln!("pgconvoy: {signal} again: exiting at once (servers roll back what the lost connections had open)");
                        std::process::exit(i32::from(crate::error::exit::FAILED));
                    }
                    reporter.event(&Event::Note(&format!(
                        "{signal}: cancelling running statements on every node; the claim will be rolled back (again to exit at once)"
                    )));
                    let asked = cluster.inflight.cancel_all().await;
                    if !asked.is_empty() {
                        let names: Vec<String> = asked.iter().map(|n| format!("`{n}`")).collect();
                        reporter.event(&Event::Note(&format!("cancel sent to {}", names.join(", "))));
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        let e = if interrupted.load(Ordering::SeqCst) {
            Error::Failed(format!("interrupted: {e}"))
        } else {
            e
        };
        report.error = Some(e.to_string());
        report.failure = Some(e);
    }
    reporter.finish();
    report
}

/// Resolves on Ctrl-C or SIGTERM, naming which.
async fn interrupt() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted (Ctrl-C)",
                _ = term.recv() => "terminated (SIGTERM)",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "interrupted (Ctrl-C)"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupted (Ctrl-C)"
    }
}

async fn upgrade_inner(
    config: &Config,
    cluster: &Cluster,
    patches: &PatchSet,
    opts: &UpgradeOptions,
    reporter: &dyn Reporter,
    interrupted: &AtomicBool,
    report: &mut RunReport,
) -> Result<(), Error> {
    let ledger = Ledger::new(config.ledger.clone());
    let lock = acquire_lock(cluster, &ledger, opts.wait, reporter).await?;

    let (ledgers, in_recovery) = read_nodes(cluster, &ledger).await?;
    let topology: Vec<(NodeName, Role, bool)> = cluster
        .nodes
        .iter()
        .zip(&in_recovery)
        .map(|(n, r)| (n.name().clone(), n.role(), *r))
        .collect();
    let problems = replication::topology_problems(config.replication, &topology);
    if !problems.is_empty() {
        return Err(Error::BadInput(format!(
            "refusing to run: {}",
            problems.join("; ")
        )));
    }
    let drift: Vec<String> = cluster
        .nodes
        .iter()
        .zip(&ledgers)
        .flat_map(|(n, l)| plan::drift(patches, n.name(), l))
        .map(|d| d.to_string())
        .collect();
    if !drift.is_empty() {
        return Err(Error::BadInput(format!(
            "refusing to run: {}",
            drift.join("; ")
        )));
    }

    let pending = plan::pending(patches, &ledgers[0]);
    let schedule = plan::schedule(plan::groups(&pending), &opts.selection)
        .map_err(|r| Error::BadInput(r.to_string()))?;
    report.planned = true;
    report.pending = pending.iter().map(|p| p.version.to_string()).collect();
    let scheduled: usize = schedule.groups.iter().map(|g| g.patches.len()).sum();
    if scheduled == 0 {
        note(
            reporter,
            report,
            "nothing to do: the cluster is up to date".into(),
        );
        release_lock(lock, &ledger).await;
        return Ok(());
    }

    refuse_leftover_prepared(cluster, &ledger).await?;
    let atomic =
        config.atomic_direct && schedule.groups.iter().any(|g| g.kind == PatchType::Direct);
    if atomic {
        check_two_phase(cluster).await?;
    }

    note(
        reporter,
        report,
        format!(
            "{} patch(es) pending; applying {scheduled} in {} group(s)",
            pending.len(),
            schedule.groups.len()
        ),
    );
    {
        let master = cluster.master();
        let session = master
            .session()
            .await
            .map_err(|e| node_unreachable(master, &e))?;
        for book in [Book::Main, Book::Local] {
            ledger.ensure(session.client(), book).await.map_err(|e| {
                Error::Failed(format!(
                    "cannot create the ledger on master node `{}`: {e}",
                    master.name()
                ))
            })?;
        }
    }

    let run = Run {
        cluster,
        ledger: &ledger,
        ledgers: &ledgers,
        reporter,
        applied_by: applied_by(),
        policy: RetryPolicy {
            lock_timeout: config.lock_timeout,
            retries: config.lock_retries,
        },
        atomic: config.atomic_direct,
        replication: config.replication,
        replication_timeout: config.replication_timeout,
        ensured: Mutex::new(HashSet::new()),
        notes: Mutex::new(Vec::new()),
    };
    let watch = ReplicationWatch::start(config, cluster, &ledger).await?;
    let mut outcome = Ok(());
    'groups: for group in &schedule.groups {
        let before = watch.tables_before().await?;
        reporter.event(&Event::GroupStart {
            kind: group.kind,
            versions: &group.versions(),
        });
        for patch in &group.patches {
            if interrupted.load(Ordering::SeqCst) {
                outcome = Err(Error::Failed(format!(
                    "stopped before patch `{}`",
                    patch.version
                )));
                break 'groups;
            }
            let r = run.apply(patch, report).await;
            report
                .notes
                .append(&mut run.notes.lock().unwrap_or_else(|p| p.into_inner()));
            if let Err(e) = r {
                outcome = Err(e);
                break 'groups;
            }
            report.applied.push(patch.version.to_string());
        }
        match watch.after_group(group, before).await {
            Ok(notes) => {
                for n in notes {
                    note(reporter, report, n);
                }
            }
            Err(e) => {
                outcome = Err(e);
                break 'groups;
            }
        }
    }
    report.pending = still_pending(&pending, report);
    if outcome.is_ok() {
        if let Some(p) = schedule.stopped_before {
            note(
                reporter,
                report,
                format!(
                    "stopping before `{}`: it is `{}`, not allowed by --patch-type",
                    p.version, p.kind
                ),
            );
        }
    }
    release_lock(lock, &ledger).await;
    outcome
}

fn note(reporter: &dyn Reporter, report: &mut RunReport, text: String) {
    reporter.event(&Event::Note(&text));
    report.notes.push(text);
}

fn still_pending(pending: &[&Patch], report: &RunReport) -> Vec<String> {
    pending
        .iter()
        .map(|p| p.version.to_string())
        .filter(|v| !report.applied.contains(v))
        .collect()
}

/// `applied_by` in the ledger: the coordinator's host and pid.
fn applied_by() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!(
        "pgconvoy {} on {host} pid {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    )
}

fn node_unreachable(node: &Node, e: &PgFailure) -> Error {
    Error::Failed(format!(
        "node `{}` ({}) is unreachable: {e}",
        node.name(),
        node.config.endpoint
    ))
}

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
        .map_err(|e| node_unreachable(master, &e))?;
    let key = ledger.advisory_key();
    let failed = |e: tokio_postgres::Error| {
        Error::Failed(format!(
            "cannot take the coordinator lock on master node `{}`: {}",
            master.name(),
            PgFailure::from_pg(&e)
        ))
    };
    let got: bool = lock
        .client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .map_err(failed)?
        .get(0);
    if got {
        return Ok(lock);
    }
    let holder = lock_holder(&lock.client, key).await;
    if !wait {
        return Err(Error::Busy(format!(
            "cluster busy: another coordinator holds the lock on master node `{}` ({holder}); try again later or pass --wait",
            master.name()
        )));
    }
    reporter.event(&Event::Note(&format!(
        "waiting for another coordinator to finish ({holder})"
    )));
    // Poll rather than block in pg_advisory_lock: a statement waiting on the
    // lock holds a snapshot, and CREATE INDEX CONCURRENTLY on the master would
    // wait for it.
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got: bool = lock
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(failed)?
            .get(0);
        if got {
            break;
        }
    }
    reporter.event(&Event::Note("lock acquired"));
    Ok(lock)
}

async fn lock_holder(client: &tokio_postgres::Client, key: i64) -> String {
    let hi = key >> 32;
    let lo = key & 0xffff_ffff;
    let row = client
        .query_opt(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local socket'),
                    coalesce(a.usename::text, ''), to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND l.classid::bigint = $1 AND l.objid::bigint = $2
              LIMIT 1",
            &[&hi, &lo],
        )
        .await;
    match row {
        Ok(Some(r)) => format!(
            "pid {} application `{}` from {} as `{}` since {}",
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3),
            r.get::<_, String>(4)
        ),
        _ => "holder not visible to this role".into(),
    }
}

async fn release_lock(lock: Dedicated, ledger: &Ledger) {
    let _ = lock
        .client
        .execute("SELECT pg_advisory_unlock($1)", &[&ledger.advisory_key()])
        .await;
}

/// Reads every node's ledger and recovery state concurrently; any unreachable
/// node fails the run before anything is written.
pub async fn read_nodes(
    cluster: &Cluster,
    ledger: &Ledger,
) -> Result<(Vec<NodeLedger>, Vec<bool>), Error> {
    let results: Vec<Result<(NodeLedger, bool), Error>> = stream::iter(cluster.nodes.iter())
        .map(|node| async move {
            let session = node
                .session()
                .await
                .map_err(|e| node_unreachable(node, &e))?;
            let failed = |e: PgFailure| {
                Error::Failed(format!(
                    "cannot read the ledger on node `{}`: {e}",
                    node.name()
                ))
            };
            let in_recovery: bool = session
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(|e| failed(e.into()))?
                .get(0);
            let l = ledger.read(session.client()).await.map_err(failed)?;
            Ok((l, in_recovery))
        })
        .buffered(cluster.jobs)
        .collect()
        .await;
    let mut ledgers = Vec::with_capacity(results.len());
    let mut recovery = Vec::with_capacity(results.len());
    for r in results {
        let (l, rec) = r?;
        ledgers.push(l);
        recovery.push(rec);
    }
    Ok((ledgers, recovery))
}

/// Prepared transactions of an interrupted `--atomic` run hold locks and
/// half a decision: resolve them first.
async fn refuse_leftover_prepared(cluster: &Cluster, ledger: &Ledger) -> Result<(), Error> {
    for node in &cluster.nodes {
        let session = node
            .session()
            .await
            .map_err(|e| node_unreachable(node, &e))?;
        let left = recover::list(session.client(), ledger).await.map_err(|e| {
            Error::Failed(format!(
                "cannot list prepared transactions on node `{}`: {e}",
                node.name()
            ))
        })?;
        if let Some(p) = left.first() {
            return Err(Error::Failed(format!(
                "node `{}` holds prepared transaction '{}' (since {}) from an interrupted --atomic run; run `pgconvoy recover` first",
                node.name(),
                p.gid,
                p.prepared_at
            )));
        }
    }
    Ok(())
}

/// `--atomic` needs `max_prepared_transactions > 0` on every node.
async fn check_two_phase(cluster: &Cluster) -> Result<(), Error> {
    let mut refused = Vec::new();
    for node in &cluster.nodes {
        let session = node
            .session()
            .await
            .map_err(|e| node_unreachable(node, &e))?;
        let n: String = session
            .query_one("SELECT current_setting('max_prepared_transactions')", &[])
            .await
            .map_err(|e| node_unreachable(node, &PgFailure::from_pg(&e)))?
            .get(0);
        if n.trim() == "0" {
            refused.push(format!("`{}`", node.name()));
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(Error::BadInput(format!(
            "--atomic (atomic_direct) needs two-phase commit, but max_prepared_transactions = 0 on node(s) {}; set it > 0 (a server restart) or run without --atomic; nothing was applied",
            refused.join(", ")
        )))
    }
}

/// The state of one run, shared by the per-patch steps.
struct Run<'a> {
    cluster: &'a Cluster,
    ledger: &'a Ledger,
    /// Ledgers as read at the start (index = node index).
    ledgers: &'a [NodeLedger],
    reporter: &'a dyn Reporter,
    applied_by: String,
    policy: RetryPolicy,
    atomic: bool,
    replication: Replication,
    replication_timeout: Duration,
    /// Nodes whose ledger table is known to exist.
    ensured: Mutex<HashSet<(usize, bool)>>,
    /// Notes from node tasks (repairs), moved into the report after each patch.
    notes: Mutex<Vec<String>>,
}

impl Run<'_> {
    fn node(&self, i: usize) -> &Node {
        &self.cluster.nodes[i]
    }

    fn note(&self, text: String) {
        self.reporter.event(&Event::Note(&text));
        self.notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(text);
    }

    /// Claim → fan out → stamp → commit, for one patch.
    async fn apply(&self, patch: &Patch, report: &mut RunReport) -> Result<(), Error> {
        if patch.kind == PatchType::Direct && self.atomic {
            return self.apply_atomic(patch, report).await;
        }
        let started = Instant::now();
        let master = self.cluster.master();
        let session = master
            .session()
            .await
            .map_err(|e| node_unreachable(master, &e))?;
        let statements = async {
            Ok::<_, tokio_postgres::Error>((
                session.prepare_cached(&self.ledger.claim_sql()).await?,
                session
                    .prepare_cached(&self.ledger.stamp_sql(Book::Main))
                    .await?,
            ))
        }
        .await
        .map_err(|e| node_unreachable(master, &e.into()))?;
        let (claim_st, stamp_st) = statements;
        let params = RowParams::new(patch, &self.applied_by);
        let (row, key) = (params.row(), params.key());
        let claim = TxSession::new(session);
        if patch.kind == PatchType::Std {
            // BEGIN, claim, body, stamp, COMMIT: one round trip.
            self.reporter.event(&Event::NodeStart {
                version: patch.version,
                node: master.name(),
            });
            let t = Instant::now();
            let r = self
                .committed_transaction(
                    claim.client(),
                    0,
                    patch,
                    &[Step::Sql("BEGIN"), Step::Exec(&claim_st, &row)],
                    &[Step::Exec(&stamp_st, &key)],
                )
                .await;
            let r = match r {
                Err(TxFailure::Before(e)) => {
                    claim.rollback().await;
                    return Err(self.claim_error(patch, e));
                }
                Err(TxFailure::Node(f)) => Err(f),
                Ok(()) => Ok(()),
            };
            let outcome = self.node_done(patch, 0, t, r);
            if let Some(failure) = self.record(patch, vec![outcome], report) {
                claim.rollback().await;
                self.patch_done(patch, started, false);
                return Err(Error::Failed(failure));
            }
            claim.release();
            self.patch_done(patch, started, true);
            return Ok(());
        }
        // The claim first, on its own: nothing may run anywhere before it holds.
        let opened = pipeline::run(
            claim.client(),
            &[Step::Sql("BEGIN"), Step::Exec(&claim_st, &row)],
        )
        .await;
        if let Some((_, e)) = pipeline::first_failure(&opened) {
            let e = e.clone();
            claim.rollback().await;
            return Err(self.claim_error(patch, e));
        }

        let replicas = self.replica_targets(patch);
        let master_needs = plan::needs_body(patch, Role::Master, &self.ledgers[0]);
        let logical = self.replication == Replication::Logical;
        let results: Vec<Outcome> = match (patch.kind, patch.order) {
            (PatchType::Std, _) => unreachable!("std patches return above"),
            (PatchType::Direct | PatchType::Concurrent, PatchOrder::MasterFirst) => {
                // Destructive changes: the master commits its part first (outside
                // the claim, in its local book), subscribers catch up past it,
                // and only then do the replicas change.
                let mut rs = Vec::new();
                if master_needs {
                    let m = match patch.kind {
                        PatchType::Direct => {
                            self.timed(patch, 0, self.direct_on(0, Book::Local, patch))
                                .await
                        }
                        _ => self.timed(patch, 0, self.concurrent_on(0, patch)).await,
                    };
                    rs.push(m);
                }
                if rs.iter().all(|(_, _, r)| r.is_ok()) {
                    if logical && !replicas.is_empty() {
                        if let Err(e) = self.wait_for_subscribers(patch).await {
                            claim.rollback().await;
                            self.record(patch, rs, report);
                            self.patch_done(patch, started, false);
                            return Err(e);
                        }
                    }
                    let more = match patch.kind {
                        PatchType::Direct => {
                            self.fan_out(patch, &replicas, |i| self.direct_on(i, Book::Main, patch))
                                .await
                        }
                        _ => {
                            self.fan_out(patch, &replicas, |i| self.concurrent_on(i, patch))
                                .await
                        }
                    };
                    rs.extend(more);
                }
                rs
            }
            (PatchType::Direct, PatchOrder::ReplicasFirst) if logical => {
                // Additive changes on a logical cluster: subscribers must have the
                // new shape before the publisher sends rows in it.
                let mut rs = self
                    .fan_out(patch, &replicas, |i| self.direct_on(i, Book::Main, patch))
                    .await;
                if rs.iter().all(|(_, _, r)| r.is_ok()) {
                    rs.push(
                        self.timed(patch, 0, self.body_in_claim(claim.client(), patch))
                            .await,
                    );
                }
                rs
            }
            (PatchType::Direct, PatchOrder::ReplicasFirst) => {
                let (m, mut rs) = tokio::join!(
                    self.timed(patch, 0, self.body_in_claim(claim.client(), patch)),
                    self.fan_out(patch, &replicas, |i| self.direct_on(i, Book::Main, patch)),
                );
                rs.push(m);
                rs
            }
            (PatchType::Concurrent, PatchOrder::ReplicasFirst) if logical => {
                let mut rs = self
                    .fan_out(patch, &replicas, |i| self.concurrent_on(i, patch))
                    .await;
                if master_needs && rs.iter().all(|(_, _, r)| r.is_ok()) {
                    rs.push(self.timed(patch, 0, self.concurrent_on(0, patch)).await);
                }
                rs
            }
            (PatchType::Concurrent, PatchOrder::ReplicasFirst) => {
                let mut targets = replicas.clone();
                if master_needs {
                    targets.insert(0, 0);
                }
                self.fan_out(patch, &targets, |i| self.concurrent_on(i, patch))
                    .await
            }
        };

        if let Some(failure) = self.record(patch, results, report) {
            claim.rollback().await;
            self.patch_done(patch, started, false);
            return Err(Error::Failed(failure));
        }

        let stamped = pipeline::run(
            claim.client(),
            &[Step::Exec(&stamp_st, &key), Step::Sql("COMMIT")],
        )
        .await;
        let stamped = match pipeline::first_failure(&stamped) {
            None => Ok(()),
            Some((_, e)) => Err(e.clone()),
        };
        if stamped.is_ok() {
            claim.release();
        }
        if let Err(e) = stamped {
            return Err(Error::Failed(format!(
                "patch `{}`: cannot stamp and commit the claim on master node `{}`: {e}",
                patch.version,
                master.name()
            )));
        }
        self.patch_done(patch, started, true);
        Ok(())
    }

    /// Inserts the claim row in the master's open transaction.
    async fn claim(&self, tx: &impl GenericClient, patch: &Patch) -> Result<(), Error> {
        self.ledger
            .claim(tx, patch, &self.applied_by)
            .await
            .map_err(|e| self.claim_error(patch, e))
    }

    /// Why the claim could not be inserted: another coordinator has it, or worse.
    fn claim_error(&self, patch: &Patch, e: PgFailure) -> Error {
        let master = self.cluster.master();
        {
            if e.is(&SqlState::UNIQUE_VIOLATION) || e.is(&SqlState::LOCK_NOT_AVAILABLE) {
                Error::Busy(format!(
                    "patch `{}` is already claimed on master node `{}` by another coordinator",
                    patch.version,
                    master.name()
                ))
            } else {
                Error::Failed(format!(
                    "patch `{}`: cannot claim it on master node `{}`: {e}",
                    patch.version,
                    master.name()
                ))
            }
        }
    }

    fn replica_targets(&self, patch: &Patch) -> Vec<usize> {
        if self.replication == Replication::Physical {
            // Standbys take no DDL: they get every patch by replaying the master's WAL.
            return Vec::new();
        }
        (1..self.cluster.nodes.len())
            .filter(|&i| plan::needs_body(patch, Role::Replica, &self.ledgers[i]))
            .collect()
    }

    fn patch_done(&self, patch: &Patch, started: Instant, committed: bool) {
        self.reporter.event(&Event::PatchDone {
            version: patch.version,
            elapsed: started.elapsed(),
            committed,
        });
    }

    /// Adds the node results to the report; returns the first failure.
    fn record(
        &self,
        patch: &Patch,
        mut results: Vec<Outcome>,
        report: &mut RunReport,
    ) -> Option<String> {
        results.sort_by_key(|(i, _, _)| *i);
        let mut first_failure = None;
        for (i, elapsed, r) in &results {
            let error = r.as_ref().err().map(|f| f.describe(patch));
            if first_failure.is_none() {
                first_failure.clone_from(&error);
            }
            report.results.push(NodeResult {
                patch: patch.version.to_string(),
                patch_type: patch.kind,
                node: self.node(*i).name().to_string(),
                duration_ms: elapsed.as_millis(),
                ok: error.is_none(),
                error,
            });
        }
        first_failure
    }

    /// Runs `work` on each target node, at most `jobs` at once.
    async fn fan_out<'s, F, Fut>(
        &'s self,
        patch: &'s Patch,
        targets: &[usize],
        work: F,
    ) -> Vec<Outcome>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Result<(), NodeFailure>> + 's,
    {
        stream::iter(targets.iter().copied())
            .map(|i| self.timed(patch, i, work(i)))
            .buffer_unordered(self.cluster.jobs)
            .collect()
            .await
    }

    /// Reports a node's part as finished and returns its outcome.
    fn node_done(
        &self,
        patch: &Patch,
        i: usize,
        started: Instant,
        r: Result<(), NodeFailure>,
    ) -> Outcome {
        let elapsed = started.elapsed();
        let error = r.as_ref().err().map(|f| f.describe(patch));
        self.reporter.event(&Event::NodeDone {
            version: patch.version,
            node: self.node(i).name(),
            elapsed,
            error: error.as_deref(),
        });
        (i, elapsed, r)
    }

    async fn timed(
        &self,
        patch: &Patch,
        i: usize,
        work: impl std::future::Future<Output = Result<(), NodeFailure>>,
    ) -> Outcome {
        let node = self.node(i).name();
        self.reporter.event(&Event::NodeStart {
            version: patch.version,
            node,
        });
        let started = Instant::now();
        let r = work.await;
        let elapsed = started.elapsed();
        let error = r.as_ref().err().map(|f| f.describe(patch));
        self.reporter.event(&Event::NodeDone {
            version: patch.version,
            node,
            elapsed,
            error: error.as_deref(),
        });
        (i, elapsed, r)
    }

    fn fail(&self, i: usize) -> impl Fn(PgFailure) -> NodeFailure + '_ {
        move |what| NodeFailure {
            node: self.node(i).name().clone(),
            what: what.to_string(),
            line: None,
        }
    }

    /// Runs `sql` (the body or one statement of it) with lock-timeout retries;
    /// errors point at a line of the patch file (`first_line` is where `sql` starts).
    async fn execute(
        &self,
        client: &impl GenericClient,
        i: usize,
        patch: &Patch,
        (sql_text, first_line): (&str, usize),
        in_tx: bool,
        failed_tries: u32,
    ) -> Result<(), NodeFailure> {
        let node = self.node(i);
        let on_retry = |n: u32, pause: Duration| {
            self.reporter.event(&Event::Note(&format!(
                "{} on {}: lock timeout ({}), retry {n} of {} in {}",
                patch.version,
                node.name(),
                crate::report::human(self.policy.lock_timeout),
                self.policy.retries,
                crate::report::human(pause)
            )));
        };
        retry::execute(
            client,
            node,
            sql_text,
            in_tx,
            &self.policy,
            &on_retry,
            failed_tries,
        )
        .await
        .map_err(|x| {
            let mut f = self.body_failure(i, (sql_text, first_line), x.failure.clone());
            f.what = x.describe(&self.policy);
            f
        })
    }

    /// The whole body in one round trip, inside transaction `tx`.
    async fn body_in(
        &self,
        tx: &impl GenericClient,
        i: usize,
        patch: &Patch,
    ) -> Result<(), NodeFailure> {
        self.execute(tx, i, patch, (&patch.body, 1), true, 0).await
    }

    async fn ensure(
        &self,
        i: usize,
        client: &impl GenericClient,
        book: Book,
    ) -> Result<(), PgFailure> {
        let key = (i, book == Book::Local);
        if i == 0
            || self
                .ensured
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&key)
        {
            return Ok(());
        }
        self.ledger.ensure(client, book).await?;
        self.ensured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
        Ok(())
    }

    /// A `direct` patch on one node outside the claim: its own transaction with
    /// its own ledger row (a replica's main book, or the master's local book
    /// for a master-first patch).
    async fn direct_on(&self, i: usize, book: Book, patch: &Patch) -> Result<(), NodeFailure> {
        let session = self.node(i).session().await.map_err(self.fail(i))?;
        self.ensure(i, session.client(), book)
            .await
            .map_err(self.fail(i))?;
        let statements = async {
            Ok::<_, tokio_postgres::Error>((
                session
                    .prepare_cached(&self.ledger.record_start_sql(book))
                    .await?,
                session.prepare_cached(&self.ledger.stamp_sql(book)).await?,
            ))
        }
        .await
        .map_err(|e| self.fail(i)(e.into()))?;
        let (start_st, stamp_st) = statements;
        let params = RowParams::new(patch, &self.applied_by);
        let (row, key) = (params.row(), params.key());
        let tx = TxSession::new(session);
        // BEGIN, ledger row, body, stamp, COMMIT: one round trip.
        match self
            .committed_transaction(
                tx.client(),
                i,
                patch,
                &[Step::Sql("BEGIN"), Step::Exec(&start_st, &row)],
                &[Step::Exec(&stamp_st, &key)],
            )
            .await
        {
            Ok(()) => {
                tx.release();
                Ok(())
            }
            Err(TxFailure::Before(e)) => {
                tx.rollback().await;
                Err(self.fail(i)(e))
            }
            Err(TxFailure::Node(f)) => {
                tx.rollback().await;
                Err(f)
            }
        }
    }

    /// The first try of a body, pipelined in one round trip: `before`, the
    /// body's statements (one request each, so that an error without a server
    /// position is still pinned to its statement's line; under a savepoint
    /// when `savepoint`), then `after`. `Ok(false)`: the body hit the lock
    /// timeout and may be retried.
    async fn first_try(
        &self,
        client: &tokio_postgres::Client,
        i: usize,
        patch: &Patch,
        before: &[Step<'_>],
        savepoint: bool,
        after: &[Step<'_>],
    ) -> Result<bool, TxFailure> {
        let statements: Vec<(&str, usize)> = patch
            .statement_texts()
            .map(|(text, span)| (text, span.line))
            .collect();
        let mut steps: Vec<Step<'_>> = before.to_vec();
        if savepoint {
            steps.push(Step::Sql("SAVEPOINT pgconvoy_try"));
        }
        let body_at = steps.len();
        steps.extend(statements.iter().map(|(text, _)| Step::Sql(text)));
        if savepoint {
            steps.push(Step::Sql("RELEASE SAVEPOINT pgconvoy_try"));
        }
        steps.extend_from_slice(after);
        let results = pipeline::run(client, &steps).await;
        let Some((at, e)) = pipeline::first_failure(&results) else {
            return Ok(true);
        };
        if at < before.len() {
            return Err(TxFailure::Before(e.clone()));
        }
        let Some(&statement) = at.checked_sub(body_at).and_then(|k| statements.get(k)) else {
            return Err(TxFailure::Node(self.fail(i)(e.clone())));
        };
        if e.is(&SqlState::LOCK_NOT_AVAILABLE) && self.policy.retries > 0 {
            return Ok(false);
        }
        let mut f = self.body_failure(i, statement, e.clone());
        f.line = f.line.or(Some(statement.1));
        Err(TxFailure::Node(f))
    }

    /// Retries of a body that hit the lock timeout, inside the open
    /// transaction under a savepoint, then `after`.
    async fn retry_body(
        &self,
        client: &tokio_postgres::Client,
        i: usize,
        patch: &Patch,
        after: &[Step<'_>],
    ) -> Result<(), TxFailure> {
        self.execute(client, i, patch, (&patch.body, 1), true, 1)
            .await
            .map_err(TxFailure::Node)?;
        let results = pipeline::run(client, after).await;
        match pipeline::first_failure(&results) {
            None => Ok(()),
            Some((_, e)) => Err(TxFailure::Node(self.fail(i)(e.clone()))),
        }
    }

    /// In an open transaction (the claim): the body under a savepoint, then
    /// `after`, in one round trip; a lock timeout rolls back to the savepoint
    /// and retries, so the transaction and its claim live on. Does not commit.
    async fn body_pipeline(
        &self,
        client: &tokio_postgres::Client,
        i: usize,
        patch: &Patch,
        after: &[Step<'_>],
    ) -> Result<(), TxFailure> {
        if self.first_try(client, i, patch, &[], true, after).await? {
            return Ok(());
        }
        client
            .batch_execute("ROLLBACK TO SAVEPOINT pgconvoy_try")
            .await
            .map_err(|e| TxFailure::Node(self.fail(i)(e.into())))?;
        self.retry_body(client, i, patch, after).await
    }

    /// `before` (BEGIN and a ledger row), the body, `after` and COMMIT, all in
    /// one round trip: when any of them fails, the COMMIT rolls back. Only if
    /// the body hit the lock timeout is the transaction opened again, this time
    /// with the body under a savepoint, so that every further try keeps the
    /// ledger row (a claim: the coordinator lock keeps others out meanwhile).
    async fn committed_transaction(
        &self,
        client: &tokio_postgres::Client,
        i: usize,
        patch: &Patch,
        before: &[Step<'_>],
        after: &[Step<'_>],
    ) -> Result<(), TxFailure> {
        let mut finish: Vec<Step<'_>> = after.to_vec();
        finish.push(Step::Sql("COMMIT"));
        if self
            .first_try(client, i, patch, before, false, &finish)
            .await?
        {
            return Ok(());
        }
        let reopened = pipeline::run(client, before).await;
        if let Some((_, e)) = pipeline::first_failure(&reopened) {
            return Err(TxFailure::Before(e.clone()));
        }
        self.retry_body(client, i, patch, &finish).await
    }

    /// The master's part of a `direct` patch, in the open claim transaction.
    async fn body_in_claim(
        &self,
        client: &tokio_postgres::Client,
        patch: &Patch,
    ) -> Result<(), NodeFailure> {
        match self.body_pipeline(client, 0, patch, &[]).await {
            Ok(()) => Ok(()),
            Err(TxFailure::Node(f)) => Err(f),
            Err(TxFailure::Before(e)) => Err(self.fail(0)(e)),
        }
    }

    /// A body error, pointing at its line in the patch file.
    fn body_failure(
        &self,
        i: usize,
        (sql_text, first_line): (&str, usize),
        e: PgFailure,
    ) -> NodeFailure {
        let line = e
            .position
            .map(|p| first_line + sql::line_at_char_position(sql_text, p as usize) - 1);
        NodeFailure {
            node: self.node(i).name().clone(),
            what: e.to_string(),
            line,
        }
    }

    /// After the master committed its part of a master-first patch: wait until
    /// every subscriber applied past the master's WAL position.
    async fn wait_for_subscribers(&self, patch: &Patch) -> Result<(), Error> {
        let master = self.cluster.master();
        let replicas: Vec<&Node> = self.cluster.replicas().iter().map(|n| &**n).collect();
        let lsn = master_lsn(master).await?;
        let before = replication::baseline(&replicas)
            .await
            .map_err(Error::Failed)?;
        let cause = format!("patch `{}` ({})", patch.version, patch.file_name());
        let waited = replication::wait_for_subscribers(
            master,
            &replicas,
            &before,
            &lsn,
            self.replication_timeout,
            &cause,
        )
        .await
        .map_err(|e| Error::Failed(format!("patch `{}`: {e}", patch.version)))?;
        self.note(format!(
            "{}: subscribers applied the master's part (past {lsn}) in {}",
            patch.version,
            crate::report::human(waited)
        ));
        Ok(())
    }

    /// A `concurrent` patch on one node: outside any transaction, statement by
    /// statement, bracketed by the node's ledger row (the master's local book).
    /// Resuming an unfinished attempt first repairs what it left.
    async fn concurrent_on(&self, i: usize, patch: &Patch) -> Result<(), NodeFailure> {
        let node = self.node(i);
        let book = if i == 0 { Book::Local } else { Book::Main };
        let session = node.session().await.map_err(self.fail(i))?;
        let client = session.client();
        self.ensure(i, client, book).await.map_err(self.fail(i))?;
        let earlier = match book {
            Book::Main => self.ledgers[i].main.get(&patch.version),
            Book::Local => self.ledgers[i].local.get(&patch.version),
        };
        let resuming = earlier.is_some_and(|r| !r.is_done());
        self.ledger
            .record_start(client, book, patch, &self.applied_by)
            .await
            .map_err(self.fail(i))?;
        for (text, span) in patch.statement_texts() {
            match sql::create_index_concurrently_name(text) {
                Some(name) => {
                    self.build_index(client, i, patch, (text, span.line), &name, resuming)
                        .await?
                }
                None => {
                    self.execute(client, i, patch, (text, span.line), false, 0)
                        .await?
                }
            }
        }
        self.ledger
            .stamp(client, book, patch.version)
            .await
            .map_err(self.fail(i))
    }

    /// `CREATE [UNIQUE] INDEX CONCURRENTLY name …`, made safe to retry and
    /// resume: a failed build (a lock timeout included) leaves an invalid index
    /// behind, which is dropped concurrently before the next try; a valid index
    /// of that name in a resumed patch means an earlier attempt built it; and
    /// the index must be valid afterwards (IF NOT EXISTS would skip an invalid one).
    async fn build_index(
        &self,
        client: &tokio_postgres::Client,
        i: usize,
        patch: &Patch,
        (text, line): (&str, usize),
        name: &str,
        resuming: bool,
    ) -> Result<(), NodeFailure> {
        let node = self.node(i).name();
        let qualified: String = name
            .split('.')
            .map(quote_ident)
            .collect::<Vec<_>>()
            .join(".");
        let mut failed = 0;
        loop {
            match self.index_valid(client, i, &qualified).await? {
                Some(true) if resuming && failed == 0 => {
                    self.note(format!(
                        "{} on {node}: index `{name}` already exists and is valid (an earlier attempt built it); statement treated as done",
                        patch.version
                    ));
                    return Ok(());
                }
                _ => {}
            }
            let once = RetryPolicy {
                retries: 0,
                ..self.policy
            };
            let node_ref = self.node(i);
            let r = async {
                if self.index_valid(client, i, &qualified).await? == Some(false) {
                    self.note(format!(
                        "{} on {node}: dropping invalid index `{name}` left by a failed build, then rebuilding it",
                        patch.version
                    ));
                    let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS {qualified}");
                    if let Err(x) = retry::execute(client, node_ref, &drop, false, &once, &|_, _| {}, 0).await {
                        return Ok(Err(x));
                    }
                }
                Ok::<_, NodeFailure>(
                    retry::execute(client, node_ref, text, false, &once, &|_, _| {}, 0).await,
                )
            }
            .await?;
            match r {
                Ok(()) => break,
                Err(x) if x.is_lock_timeout() && failed < self.policy.retries => {
                    failed += 1;
                    let pause = self.policy.backoff(failed);
                    self.reporter.event(&Event::Note(&format!(
                        "{} on {node}: lock timeout building index `{name}`, retry {failed} of {} in {}",
                        patch.version,
                        self.policy.retries,
                        crate::report::human(pause)
                    )));
                    tokio::time::sleep(pause).await;
                }
                Err(x) => {
                    let mut f = self.body_failure(i, (text, line), x.failure.clone());
                    if x.is_lock_timeout() {
                        f.what = format!(
                            "could not build index `{name}` within the lock timeout of {} after {} tries: {}",
                            crate::report::human(self.policy.lock_timeout),
                            failed + 1,
                            x.failure
                        );
                    }
                    return Err(f);
                }
            }
        }
        if self.index_valid(client, i, &qualified).await? == Some(false) {
            return Err(NodeFailure {
                node: node.clone(),
                what: format!(
                    "index `{name}` is invalid after the statement (an invalid index of that name was left in place, e.g. by IF NOT EXISTS)"
                ),
                line: Some(line),
            });
        }
        Ok(())
    }

    /// `Some(indisvalid)` of the index called `qualified`, `None` when there is none.
    async fn index_valid(
        &self,
        client: &tokio_postgres::Client,
        i: usize,
        qualified: &str,
    ) -> Result<Option<bool>, NodeFailure> {
        Ok(client
            .query_opt(
                "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)",
                &[&qualified],
            )
            .await
            .map_err(|e| self.fail(i)(e.into()))?
            .map(|r| r.get(0)))
    }

    /// A `direct` patch by two-phase commit: every node runs the body and
    /// prepares; only when all have prepared are they committed, the master's
    /// claim last. Before that, any failure rolls every part back.
    async fn apply_atomic(&self, patch: &Patch, report: &mut RunReport) -> Result<(), Error> {
        let started = Instant::now();
        let master = self.cluster.master();
        let claim_session = master
            .session()
            .await
            .map_err(|e| node_unreachable(master, &e))?;
        let claim = claim_session.client();
        claim.batch_execute("BEGIN").await.map_err(|e| {
            Error::Failed(format!(
                "patch `{}`: cannot open the claim transaction on master node `{}`: {}",
                patch.version,
                master.name(),
                PgFailure::from_pg(&e)
            ))
        })?;
        if let Err(e) = self.claim(claim, patch).await {
            let _ = claim.batch_execute("ROLLBACK").await;
            return Err(e);
        }
        let replicas = self.replica_targets(patch);
        let master_part = async {
            self.body_in(claim, 0, patch).await?;
            self.ledger
                .stamp(claim, Book::Main, patch.version)
                .await
                .map_err(self.fail(0))
        };
        let (m, mut results) = tokio::join!(
            self.timed(patch, 0, master_part),
            self.fan_out(patch, &replicas, |i| self.prepare_on_replica(i, patch)),
        );
        results.push(m);
        let prepared: Vec<usize> = results
            .iter()
            .filter(|(i, _, r)| *i != 0 && r.is_ok())
            .map(|(i, _, _)| *i)
            .collect();
        let mut failure = self.record(patch, results, report);
        if failure.is_none() {
            let gid = recover::gid(self.ledger, patch.version, &master.config);
            if let Err(e) = claim
                .batch_execute(&format!(
                    "PREPARE TRANSACTION {}",
                    recover::quote_literal(&gid)
                ))
                .await
            {
                failure = Some(format!(
                    "patch `{}` failed on node `{}`: PREPARE TRANSACTION: {}",
                    patch.version,
                    master.name(),
                    PgFailure::from_pg(&e)
                ));
            }
        }
        if let Some(failure) = failure {
            let _ = claim.batch_execute("ROLLBACK").await;
            let mut left = Vec::new();
            for i in prepared {
                let gid = recover::gid(self.ledger, patch.version, &self.node(i).config);
                if let Err(e) = recover::resolve(self.node(i), &gid, false).await {
                    left.push(format!("'{gid}' on node `{}` ({e})", self.node(i).name()));
                }
            }
            self.patch_done(patch, started, false);
            let mut message = format!("{failure}; rolled back on every node (--atomic)");
            if !left.is_empty() {
                message.push_str(&format!(
                    "; could not roll back prepared transaction(s) {}: run `pgconvoy recover`",
                    left.join(", ")
                ));
            }
            return Err(Error::Failed(message));
        }

        // Every node has prepared: the decision is commit.
        let mut order: Vec<usize> = self.replica_targets(patch);
        order.push(0);
        let mut left = Vec::new();
        for i in order {
            let gid = recover::gid(self.ledger, patch.version, &self.node(i).config);
            if let Err(e) = recover::resolve(self.node(i), &gid, true).await {
                left.push(format!("'{gid}' on node `{}` ({e})", self.node(i).name()));
            }
        }
        if !left.is_empty() {
            return Err(Error::Failed(format!(
                "patch `{}`: prepared on every node, but COMMIT PREPARED failed for {}: run `pgconvoy recover` to finish the commit",
                patch.version,
                left.join(", ")
            )));
        }
        self.patch_done(patch, started, true);
        Ok(())
    }

    /// A replica's part of an atomic `direct` patch: body, ledger row, PREPARE.
    async fn prepare_on_replica(&self, i: usize, patch: &Patch) -> Result<(), NodeFailure> {
        let session = self.node(i).session().await.map_err(self.fail(i))?;
        let client = session.client();
        self.ensure(i, client, Book::Main)
            .await
            .map_err(self.fail(i))?;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| self.fail(i)(e.into()))?;
        let work = async {
            self.ledger
                .record_start(client, Book::Main, patch, &self.applied_by)
                .await
                .map_err(self.fail(i))?;
            self.body_in(client, i, patch).await?;
            self.ledger
                .stamp(client, Book::Main, patch.version)
                .await
                .map_err(self.fail(i))?;
            let gid = recover::gid(self.ledger, patch.version, &self.node(i).config);
            client
                .batch_execute(&format!(
                    "PREPARE TRANSACTION {}",
                    recover::quote_literal(&gid)
                ))
                .await
                .map_err(|e| self.fail(i)(e.into()))
        };
        let r = work.await;
        if r.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        r
    }
}

/// The master's WAL position, read in a statement of its own.
async fn master_lsn(master: &Node) -> Result<String, Error> {
    let s = master
        .session()
        .await
        .map_err(|e| node_unreachable(master, &e))?;
    replication::current_lsn(s.client())
        .await
        .map_err(|e| node_unreachable(master, &e))
}

/// Replication bookkeeping around groups: the subscription baseline taken
/// before the run, tables to publish, and the catch-up check after each group.
struct ReplicationWatch<'a> {
    cluster: &'a Cluster,
    mode: Replication,
    timeout: Duration,
    baseline: BTreeMap<NodeName, Vec<replication::Subscription>>,
    scope: Option<replication::PublicationScope>,
}

impl<'a> ReplicationWatch<'a> {
    async fn start(
        config: &Config,
        cluster: &'a Cluster,
        ledger: &Ledger,
    ) -> Result<ReplicationWatch<'a>, Error> {
        let mut w = ReplicationWatch {
            cluster,
            mode: config.replication,
            timeout: config.replication_timeout,
            baseline: BTreeMap::new(),
            scope: None,
        };
        if w.mode == Replication::Logical {
            w.baseline = replication::baseline(&w.replicas())
                .await
                .map_err(|e| Error::Failed(format!("refusing to start: {e}")))?;
            if let Some(name) = &config.publication {
                let master = cluster.master();
                let s = master
                    .session()
                    .await
                    .map_err(|e| node_unreachable(master, &e))?;
                let schema = ledger.name();
                let schema = schema.split('.').next().unwrap_or("pgconvoy");
                w.scope = Some(
                    replication::publication_scope(s.client(), name, schema)
                        .await
                        .map_err(Error::BadInput)?,
                );
            }
        }
        Ok(w)
    }

    fn replicas(&self) -> Vec<&'a Node> {
        self.cluster.replicas().iter().map(|n| &**n).collect()
    }

    /// Tables in the published schemas before a group (when a publication is configured).
    async fn tables_before(&self) -> Result<BTreeSet<String>, Error> {
        let Some(scope) = &self.scope else {
            return Ok(BTreeSet::new());
        };
        let master = self.cluster.master();
        let s = master
            .session()
            .await
            .map_err(|e| node_unreachable(master, &e))?;
        replication::tables(s.client(), scope)
            .await
            .map_err(|e| Error::Failed(format!("master node `{}`: {e}", master.name())))
    }

    /// Publishes what the group created, then checks that replication keeps up.
    async fn after_group(
        &self,
        group: &plan::Group<'_>,
        before: BTreeSet<String>,
    ) -> Result<Vec<String>, Error> {
        let master = self.cluster.master();
        let replicas = self.replicas();
        let mut notes = Vec::new();
        if self.mode == Replication::None || replicas.is_empty() {
            return Ok(notes);
        }
        let cause = match group.patches.last() {
            Some(p) => format!("patch `{}` ({})", p.version, p.file_name()),
            None => "the last group".into(),
        };
        if let Some(scope) = &self.scope {
            let after = self.tables_before().await?;
            let new: BTreeSet<String> = after.difference(&before).cloned().collect();
            notes.extend(
                replication::publish(master, &replicas, scope, &new)
                    .await
                    .map_err(|e| {
                        Error::Failed(format!("publishing new tables after {cause}: {e}"))
                    })?,
            );
        }
        let lsn = master_lsn(master).await?;
        match self.mode {
            Replication::Logical => {
                let waited = replication::wait_for_subscribers(
                    master,
                    &replicas,
                    &self.baseline,
                    &lsn,
                    self.timeout,
                    &cause,
                )
                .await
                .map_err(Error::Failed)?;
                notes.push(format!(
                    "subscriptions healthy and caught up past {lsn} in {}",
                    crate::report::human(waited)
                ));
            }
            Replication::Physical => {
                let waited = replication::wait_for_standbys(&replicas, &lsn, self.timeout)
                    .await
                    .map_err(Error::Failed)?;
                notes.push(format!(
                    "standbys replayed past {lsn} in {}",
                    crate::report::human(waited)
                ));
            }
            Replication::None => {}
        }
        Ok(notes)
    }
}
