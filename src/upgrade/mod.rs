//! Owns an `upgrade` run: take the cluster lock, read every ledger, [`plan`], bring
//! nodes that lack patches the cluster finished up to date ([`catch_up`]), then
//! for each patch claim → fan out → stamp → commit ([`apply`]; `concurrent` patches
//! statement by statement, [`concurrent`]; `--atomic` by two-phase commit, [`atomic`]),
//! watch replication after each group ([`watch`]), and decide on failure. The run's
//! shared state and bookkeeping are in [`coordinator`], running a body with retries in
//! [`body`]. Ctrl-C / SIGTERM end every wait, cancel what runs on the servers and roll
//! the claim back; the run exits 130.
//! [`recover`] resolves what a dead `--atomic` run left.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use futures::stream::{self, StreamExt};

use crate::config::Config;
use crate::db::cluster::{Cluster, Dedicated};
use crate::db::ledger::{Book, Ledger, NodeLedger};
use crate::db::lock::{
    acquire_lock, confirm_flag, confirm_held, release_lock, take_witness, LockWitness,
};
use crate::db::retry::RetryPolicy;
use crate::error::{Error, ErrorObject};
use crate::output::human;
use crate::patches::discover::PatchSet;
use crate::patches::patch::{Patch, PatchType};
use crate::progress::{Event, Reporter};
use crate::replication::slony::ops::SlonyOps;
use crate::replication::topology::topology_problems;
use atomic::{check_two_phase, refuse_leftover_prepared};
use coordinator::Coordinator;
use plan::{Drift, Schedule, Selection};
use watch::ReplicationWatch;

mod apply;
mod atomic;
mod baseline;
mod batch;
mod body;
mod catch_up;
mod concurrent;
mod coordinator;
mod index_watch;
pub mod offline;
pub mod plan;
pub mod recover;
mod slony;
mod watch;

/// What the command line asked of an `upgrade`.
#[derive(Debug, Clone, Default)]
pub struct UpgradeOptions {
    pub selection: Selection,
    /// Wait for another coordinator to finish instead of exiting 3.
    pub wait: bool,
    /// `--node`: only these nodes (indexes, master = 0) run anything; empty: every node.
    pub nodes: Vec<usize>,
}

/// The outcome of one patch on one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeResult {
    pub patch: String,
    pub patch_type: PatchType,
    pub node: String,
    /// When the node's part started and finished (RFC 3339 UTC, milliseconds).
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u128,
    pub ok: bool,
    pub error: Option<ErrorObject>,
}

/// What a run brought one node up to date with: patches the cluster had finished
/// before the node joined (or was restored).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaughtUp {
    pub node: String,
    /// Versions applied there, in order.
    pub applied: Vec<String>,
    /// Versions the node still lacks (the catch-up stopped at a failure).
    pub missing: Vec<String>,
}

/// A new node given the newest baseline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Baselined {
    pub node: String,
    /// The baseline file.
    pub baseline: String,
    /// Versions its (main) ledger records as applied by the baseline.
    pub recorded: Vec<String>,
}

/// Everything a run did, for the summary.
#[derive(Debug, Default, serde::Serialize)]
pub struct RunReport {
    /// Always false: the dry run's document says true (one `upgrade` schema for both).
    pub dry_run: bool,
    /// Patches stamped done on the master, in order.
    pub applied: Vec<String>,
    /// New nodes given the newest baseline, before anything else.
    pub baselined: Vec<Baselined>,
    /// Nodes brought up to date with patches the cluster had finished, before new ones.
    pub caught_up: Vec<CaughtUp>,
    pub results: Vec<NodeResult>,
    /// Patches still pending on the cluster after the run (also when the run refused:
    /// drift, `--patch-type`; empty only when the ledgers could not be read).
    pub pending: Vec<String>,
    pub notes: Vec<String>,
    /// `--atomic`: the nodes whose `COMMIT PREPARED` had to be retried, in words.
    pub commit_retries: Vec<String>,
    /// Whether the run got as far as planning (false: refused or failed before).
    pub planned: bool,
    /// Why the run failed, in words (the JSON document carries it as its `error` object).
    #[serde(skip)]
    pub error: Option<String>,
    #[serde(skip)]
    pub failure: Option<Error>,
}

/// How long a run may take to unwind after the first signal (its statements were
/// cancelled, its claim rolls back) before it is cut off: dropping it closes its
/// connections, and the servers roll back whatever they still had open.
const UNWIND_GRACE: Duration = Duration::from_secs(3);

/// Runs `upgrade` against the cluster of `config`. A first Ctrl-C or SIGTERM ends every
/// wait (`--wait`, lock-timeout backoffs, replication), cancels the statements running on
/// every server and lets the run unwind (claim rolled back, summary printed, exit 130); a
/// second one exits at once.
pub async fn upgrade(
    config: &Config,
    patches: &PatchSet,
    opts: &UpgradeOptions,
    reporter: &dyn Reporter,
) -> RunReport {
    let cluster = Cluster::new(config);
    let mut report = RunReport::default();
    let mut signalled: Option<&'static str> = None;
    let result = {
        let run = upgrade_inner(config, &cluster, patches, opts, reporter, &mut report);
        futures::pin_mut!(run);
        // Armed by the first signal.
        let cut_off = tokio::time::sleep(Duration::from_secs(86_400 * 365));
        futures::pin_mut!(cut_off);
        loop {
            tokio::select! {
                r = &mut run => break r,
                () = &mut cut_off, if signalled.is_some() => {
                    break Err(Error::CutOff {
                        signal: signalled.unwrap_or("interrupted"),
                        grace: human::duration(UNWIND_GRACE),
                    });
                }
                signal = crate::signal::interrupted() => {
                    if crate::signal::trip(signal) {
                        eprintln!("pgconvoy: {signal} again: exiting at once (servers roll back what the lost connections had open)");
                        std::process::exit(i32::from(crate::error::exit::INTERRUPTED));
                    }
                    signalled = Some(signal);
                    cut_off.as_mut().reset(tokio::time::Instant::now() + UNWIND_GRACE);
                    reporter.event(&Event::Note(&format!(
                        "{signal}: stopping; cancelling running statements on every node, the claim will be rolled back (again to exit at once)"
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
    let result = match result {
        // The lock's session ended during the last patch, which finished under its claim:
        // the run held the cluster alone until then, not to its end, so it says so.
        Ok(()) if cluster.inflight.lock_lost() => Err(Error::LockLost {
            node: cluster.master().name().clone(),
            before: None,
            cause: None,
        }),
        r => r,
    };
    if let Err(e) = result {
        let e = match (signalled, e) {
            (
                _,
                e @ (Error::Interrupted { .. }
                | Error::WaitInterrupted { .. }
                | Error::CutOff { .. }),
            ) => e,
            (Some(_), e) => Error::Interrupted { cause: Box::new(e) },
            (None, e @ Error::LockLost { .. }) => e,
            // Whatever failed after the lock's session ended (a refused session, most
            // likely) failed because of it.
            (None, e) if cluster.inflight.lock_lost() => Error::LockLost {
                node: cluster.master().name().clone(),
                before: None,
                cause: Some(Box::new(e)),
            },
            (None, e) => e,
        };
        report.error = Some(e.chain());
        report.failure = Some(e);
    }
    reporter.finish();
    report
}

/// The run under the cluster lock: refuse what must be refused, plan, apply.
async fn upgrade_inner(
    config: &Config,
    cluster: &Cluster,
    patches: &PatchSet,
    opts: &UpgradeOptions,
    reporter: &dyn Reporter,
    report: &mut RunReport,
) -> Result<(), Error> {
    let ledger = Ledger::new(config.ledger.clone());
    let lock = acquire_lock(cluster, &ledger, opts.wait, reporter).await?;

    let (mut ledgers, refusal) = read_and_judge(config, cluster, patches, &ledger).await?;
    // Pending is reported also when the run refuses.
    report.pending = pending_versions(patches, &ledgers[0]);
    if let Some(refusal) = refusal {
        return Err(refusal);
    }
    let selected: Vec<bool> = (0..cluster.nodes.len())
        .map(|i| opts.nodes.is_empty() || opts.nodes.contains(&i))
        .collect();
    if let Some(file) = patches.newest_baseline() {
        let candidates: Vec<usize> = (0..cluster.nodes.len())
            .filter(|&i| selected[i])
            .filter(|&i| {
                crate::lifecycle::baseline::may_be_new(
                    cluster.nodes[i].role(),
                    config.replication,
                    &ledgers[i],
                )
            })
            .collect();
        let new = if candidates.is_empty() {
            Vec::new()
        } else {
            crate::lifecycle::baseline::new_nodes(cluster, &candidates).await?
        };
        if !new.is_empty() {
            let c = coordinator(
                config,
                cluster,
                &ledger,
                &ledgers,
                (&lock, None),
                reporter,
                &selected,
                None,
            );
            let r = c.baseline(file, patches, &new, report).await;
            report
                .notes
                .append(&mut c.notes.lock().unwrap_or_else(|p| p.into_inner()));
            if let Err(e) = r {
                release_lock(lock, &ledger).await;
                return Err(e);
            }
            // Plan on what the baselines recorded.
            ledgers = refuse_or_read(config, cluster, patches, &ledger).await?;
        }
    }
    let pending = plan::pending(patches, &ledgers[0]);
    report.pending = pending.iter().map(|p| p.version.to_string()).collect();
    let mut schedule =
        plan::schedule(plan::groups(&pending), &opts.selection).map_err(Error::Refused)?;
    // Without the master, the run stops where the master must act first.
    let master_left_out = if selected[0] {
        None
    } else {
        plan::without_master(&mut schedule)
    };
    let catch_up: Vec<(usize, Vec<&Patch>)> = cluster
        .nodes
        .iter()
        .zip(&ledgers)
        .map(|(n, l)| plan::NodeView {
            role: n.role(),
            ledger: l,
        })
        .map(|view| plan::catch_up(patches, config.replication, &ledgers[0], view))
        .enumerate()
        .filter(|(i, c)| selected[*i] && !c.is_empty())
        .collect();
    report.planned = true;
    let scheduled: usize = schedule.groups.iter().map(|g| g.patches.len()).sum();
    let applied_by = applied_by();
    let slony_ops = config
        .slony
        .as_ref()
        .map(|cfg| SlonyOps::new(config, cfg, cluster, &ledger, &applied_by));
    if let Some(p) = master_left_out {
        note(
            reporter,
            report,
            format!(
                "stopping before `{}`: its `{}` part runs on the master first, and --node leaves the master out",
                p.version, p.kind
            ),
        );
    }
    if scheduled == 0 && catch_up.is_empty() {
        let what = if !report.baselined.is_empty() {
            "nothing else to do"
        } else if opts.nodes.is_empty() {
            "nothing to do: the cluster is up to date"
        } else {
            "nothing to do on the nodes --node names"
        };
        note(reporter, report, what.into());
        if let Some(ops) = &slony_ops {
            // An earlier run died while new tables were joining the set: finish that.
            if !ops.join_plan().await?.is_empty() {
                slony::refuse_unless_ready(config, cluster, &ledger, &[]).await?;
                slony::join_new_tables(ops, reporter, report).await?;
            }
        }
        release_lock(lock, &ledger).await;
        return Ok(());
    }
    slony::refuse_unless_ready(config, cluster, &ledger, &pending).await?;

    refuse_leftover_prepared(cluster, &ledger).await?;
    let atomic =
        config.atomic_direct && schedule.groups.iter().any(|g| g.kind == PatchType::Direct);
    if atomic {
        check_two_phase(cluster).await?;
    }
    if scheduled > 0 {
        note(
            reporter,
            report,
            format!(
                "{} patch(es) pending; applying {scheduled} in {} group(s)",
                pending.len(),
                schedule.groups.len()
            ),
        );
    }
    match &slony_ops {
        Some(ops) => ops.prepare().await?,
        None => ensure_master_ledger(cluster, &ledger).await?,
    }

    let lock_witness = take_witness(&lock).await;
    let coordinator = coordinator(
        config,
        cluster,
        &ledger,
        &ledgers,
        (&lock, lock_witness),
        reporter,
        &selected,
        slony_ops.as_ref(),
    );
    // Below everything pending: no node may run a patch before the ones under it.
    let caught = coordinator.catch_up(&catch_up, report).await;
    report
        .notes
        .append(&mut coordinator.notes.lock().unwrap_or_else(|p| p.into_inner()));
    if let Err(e) = caught {
        release_lock(lock, &ledger).await;
        return Err(e);
    }
    let watch = ReplicationWatch::start(config, cluster, &ledger).await?;
    let outcome = apply_groups(&coordinator, &watch, &schedule, report).await;
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

/// The run's shared state, on the ledgers as read.
#[allow(clippy::too_many_arguments)] // each is one piece of the run's state, passed once
fn coordinator<'a>(
    config: &Config,
    cluster: &'a Cluster,
    ledger: &'a Ledger,
    ledgers: &'a [NodeLedger],
    lock: (&'a Dedicated, Option<LockWitness>),
    reporter: &'a dyn Reporter,
    selected: &[bool],
    slony: Option<&'a SlonyOps<'a>>,
) -> Coordinator<'a> {
    let (lock, lock_witness) = lock;
    Coordinator {
        cluster,
        ledger,
        ledgers,
        lock,
        lock_witness,
        statements: ledger.named(),
        reporter,
        applied_by: applied_by(),
        policy: RetryPolicy {
            lock_timeout: config.lock_timeout,
            retries: config.lock_retries,
        },
        atomic: config.atomic_direct,
        replication: config.replication,
        replication_timeout: config.replication_timeout,
        slony,
        commit_retry: config.commit_retry_timeout,
        ensured: Mutex::new(HashSet::new()),
        notes: Mutex::new(Vec::new()),
        selected: selected.to_vec(),
        next_claim: Mutex::new(None),
    }
}

/// [`read_and_judge`], its refusal an error.
async fn refuse_or_read(
    config: &Config,
    cluster: &Cluster,
    patches: &PatchSet,
    ledger: &Ledger,
) -> Result<Vec<NodeLedger>, Error> {
    match read_and_judge(config, cluster, patches, ledger).await? {
        (_, Some(refusal)) => Err(refusal),
        (ledgers, None) => Ok(ledgers),
    }
}

fn pending_versions(patches: &PatchSet, master: &NodeLedger) -> Vec<String> {
    plan::pending(patches, master)
        .iter()
        .map(|p| p.version.to_string())
        .collect()
}

/// Reads every node; judges (before anything is written) a topology that contradicts
/// the config and applied patches whose files changed, which refuse the run. Returns the
/// ledgers and the refusal, so that a refused run still reports what is pending.
async fn read_and_judge(
    config: &Config,
    cluster: &Cluster,
    patches: &PatchSet,
    ledger: &Ledger,
) -> Result<(Vec<NodeLedger>, Option<Error>), Error> {
    let (ledgers, in_recovery) = read_nodes(cluster, ledger).await?;
    let recovery = cluster
        .nodes
        .iter()
        .zip(&in_recovery)
        .map(|(n, r)| (&n.config, Some(*r)));
    let problems = topology_problems(config.replication, recovery);
    if !problems.is_empty() {
        return Ok((ledgers, Some(Error::Topology { problems })));
    }
    let drift: Vec<Drift> = cluster
        .nodes
        .iter()
        .zip(&ledgers)
        .flat_map(|(n, l)| plan::drift(patches, n.name(), l))
        .collect();
    if !drift.is_empty() {
        return Ok((ledgers, Some(Error::Drift { drift })));
    }
    Ok((ledgers, None))
}

/// The master's ledger tables, created if need be (by the lock holder only).
async fn ensure_master_ledger(cluster: &Cluster, ledger: &Ledger) -> Result<(), Error> {
    let master = cluster.master();
    let session = master.session().await.map_err(|e| master.unreachable(e))?;
    for book in [Book::Main, Book::Local] {
        ledger
            .ensure(session.client(), book)
            .await
            .map_err(|failure| master.failed("create the ledger", failure))?;
    }
    Ok(())
}

/// Group after group, patch after patch, until done, failed or interrupted.
async fn apply_groups(
    coordinator: &Coordinator<'_>,
    watch: &ReplicationWatch<'_>,
    schedule: &Schedule<'_>,
    report: &mut RunReport,
) -> Result<(), Error> {
    for group in &schedule.groups {
        let before = watch.tables_before().await?;
        coordinator.reporter.event(&Event::GroupStart {
            kind: group.kind,
            versions: &group.versions(),
        });
        let mut at = 0;
        // The next patch must run alone (its body hit the lock timeout in a batch).
        let mut alone = false;
        while let Some(&patch) = group.patches.get(at) {
            if crate::signal::tripped().is_some() {
                coordinator.abandon_next_claim().await;
                return Err(Error::Stopped {
                    patch: patch.version,
                });
            }
            // Exclusion for the whole run: without the lock, another coordinator may
            // hold the cluster by now, so nothing new starts. A round trip on the lock's
            // session proves it, where the flag alone waits for the connection's task to
            // see the session end (late on a loaded machine); a claim that checks the
            // lock on the server, in its own transaction, proves it as well (and later).
            let held = if coordinator.claim_checks_lock(patch) {
                confirm_flag(coordinator.lock, coordinator.cluster)
            } else {
                confirm_held(coordinator.lock, coordinator.cluster).await
            };
            if let Err(e) = held {
                coordinator.abandon_next_claim().await;
                return Err(match e {
                    Error::LockLost { node, cause, .. } => Error::LockLost {
                        node,
                        before: Some(patch.version),
                        cause,
                    },
                    e => e,
                });
            }
            let batch = if alone {
                0
            } else {
                coordinator.batch_len(&group.patches[at..])
            };
            alone = false;
            if batch >= 2 {
                let r = coordinator
                    .apply_batch(&group.patches[at..at + batch], report)
                    .await;
                report
                    .notes
                    .append(&mut coordinator.notes.lock().unwrap_or_else(|p| p.into_inner()));
                let done = r?;
                at += done;
                alone = done < batch;
                continue;
            }
            at += 1;
            let r = coordinator
                .apply(patch, group.patches.get(at).copied(), report)
                .await;
            report
                .notes
                .append(&mut coordinator.notes.lock().unwrap_or_else(|p| p.into_inner()));
            r?;
            if coordinator.selected[0] {
                report.applied.push(patch.version.to_string());
            } else {
                note(
                    coordinator.reporter,
                    report,
                    format!(
                        "{}: applied on the nodes --node names that needed it; the master is left out, so the cluster records it once the master runs it",
                        patch.version
                    ),
                );
            }
        }
        if let (Some(ops), PatchType::Std) = (coordinator.slony, group.kind) {
            slony::join_new_tables(ops, coordinator.reporter, report).await?;
        }
        for n in watch.after_group(group, before).await? {
            note(coordinator.reporter, report, n);
        }
    }
    Ok(())
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

/// `applied_by` in the ledger: the coordinator's OS user, host and pid (the ledger
/// statements add the database user).
fn applied_by() -> String {
    crate::identity::Identity::current().applied_by("upgrade")
}

/// Reads every node's ledger and recovery state concurrently; any unreachable
/// node fails the run before anything is written.
pub async fn read_nodes(
    cluster: &Cluster,
    ledger: &Ledger,
) -> Result<(Vec<NodeLedger>, Vec<bool>), Error> {
    let results: Vec<Result<(NodeLedger, bool), Error>> = stream::iter(cluster.nodes.iter())
        .map(|node| async move {
            let session = node.session().await.map_err(|e| node.unreachable(e))?;
            let failed = |failure| node.failed("read the ledger", failure);
            let in_recovery: bool = session
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(|e| failed(e.into()))?
                .get(0);
            let l = match ledger.read(session.client()).await {
                Ok(l) => l,
                Err(e) => {
                    let why = ledger.unreadable(&e, session.client()).await;
                    return Err(Error::LedgerUnreadable {
                        node: node.name().clone(),
                        unreadable: Box::new(why),
                    });
                }
            };
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
