//! Owns an `upgrade` run: take the cluster lock, read every ledger, [`plan`], then
//! for each patch claim → fan out → stamp → commit ([`apply`]: `std` and `direct`;
//! [`concurrent`]; [`atomic`]: two-phase commit), watch replication after each group
//! ([`watch`]), and decide on failure. Ctrl-C / SIGTERM cancel what runs on the servers
//! and roll the claim back. [`recover`] resolves what a dead `--atomic` run left.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::GenericClient;

use crate::config::{Config, NodeName, Replication, Role};
use crate::db::cluster::{Cluster, Node};
use crate::db::ledger::{Book, Ledger, NodeLedger, RowParams};
use crate::db::lock::{acquire_lock, node_unreachable, release_lock};
use crate::db::pgerror::PgFailure;
use crate::db::pipeline::{self, Step};
use crate::db::prepared;
use crate::db::quote::{quote_ident, quote_literal};
use crate::db::retry::{self, RetryPolicy};
use crate::db::transaction::TxSession;
use crate::error::Error;
use crate::output::human;
use crate::patches::discover::PatchSet;
use crate::patches::patch::{Patch, PatchOrder, PatchType};
use crate::patches::sql;
use crate::progress::{Event, Reporter};
use crate::replication;
use plan::Selection;

mod apply;
mod atomic;
mod concurrent;
pub mod plan;
pub mod recover;
mod watch;

use atomic::{check_two_phase, refuse_leftover_prepared};
use watch::{master_lsn, ReplicationWatch};

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
    let problems = replication::topology::topology_problems(config.replication, &topology);
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

    let coordinator = Coordinator {
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
            let r = coordinator.apply(patch, report).await;
            report
                .notes
                .append(&mut coordinator.notes.lock().unwrap_or_else(|p| p.into_inner()));
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

/// The state of one run, shared by the per-patch steps.
struct Coordinator<'a> {
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
