//! The state of one `upgrade` run shared by every per-patch step ([`Coordinator`]), and
//! its bookkeeping: which nodes need a patch, fanning work out to them (bounded),
//! timing each node's part, recording results, and turning failures into errors.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{self, StreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::GenericClient;

use super::plan;
use super::{NodeResult, RunReport};
use crate::config::{NodeName, Replication, Role};
use crate::db::cluster::{Cluster, Dedicated, Node, Session};
use crate::db::ledger::{Book, Ledger, LedgerStatements, NodeLedger, RowParams};
use crate::db::lock::LockWitness;
use crate::db::pgerror::PgFailure;
use crate::db::retry::RetryPolicy;
use crate::db::transaction::Transaction;
use crate::error::{Error, PatchFailure};
use crate::output::timestamp::rfc3339_millis;
use crate::patches::patch::{Patch, PatchType, PatchVersion};
use crate::progress::{Event, Reporter, StatementAt};
use crate::replication::slony::ops::SlonyOps;

/// The state of one run, shared by the per-patch steps.
pub(super) struct Coordinator<'a> {
    pub(super) cluster: &'a Cluster,
    pub(super) ledger: &'a Ledger,
    /// Ledgers as read at the start (index = node index).
    pub(super) ledgers: &'a [NodeLedger],
    /// The cluster lock's session, held for the whole run.
    pub(super) lock: &'a Dedicated,
    /// Its witness lock: claims check on the server that the lock's session still holds
    /// it, so still holds the cluster lock ([`crate::db::lock::held_sql`]). `None`: the
    /// run asks the lock's session before each patch instead.
    pub(super) lock_witness: Option<LockWitness>,
    /// The ledger statements patches' transactions run by name ([`Ledger::named`]).
    pub(super) statements: LedgerStatements,
    pub(super) reporter: &'a dyn Reporter,
    pub(super) applied_by: String,
    pub(super) policy: RetryPolicy,
    pub(super) atomic: bool,
    pub(super) replication: Replication,
    pub(super) replication_timeout: Duration,
    /// With `replication: slony`: the Slony steps of `std` patches.
    pub(super) slony: Option<&'a SlonyOps<'a>>,
    /// How long a decided commit is retried on a node that did not confirm it.
    pub(super) commit_retry: Duration,
    /// Nodes whose ledger table is known to exist.
    pub(super) ensured: Mutex<HashSet<(usize, bool)>>,
    /// Notes from node tasks (repairs), moved into the report after each patch.
    pub(super) notes: Mutex<Vec<String>>,
    /// `--node`: which nodes (by index) may run anything.
    pub(super) selected: Vec<bool>,
    /// The claim of the next patch, taken in the same round trip as the stamp and COMMIT
    /// of the one before it ([`NextClaim`]).
    pub(super) next_claim: Mutex<Option<NextClaim>>,
}

/// A claim sent behind the stamp and COMMIT of the patch before it: its transaction on
/// the master, open when the claim went through, and the claim's failure if it did not.
pub(super) struct NextClaim {
    pub(super) version: PatchVersion,
    pub(super) tx: Transaction,
    pub(super) failure: Option<PgFailure>,
}

/// A failure of a patch body (or its bookkeeping) on one node.
#[derive(Debug, Clone)]
pub(super) struct NodeFailure {
    pub(super) node: NodeName,
    /// What went wrong, in words.
    pub(super) what: String,
    /// The line in the patch file the server's error position points at.
    pub(super) line: Option<usize>,
    /// The server's report, when there was one.
    pub(super) pg: Option<PgFailure>,
}

impl NodeFailure {
    pub(super) fn of(node: &NodeName, failure: PgFailure) -> NodeFailure {
        NodeFailure {
            node: node.clone(),
            what: failure.to_string(),
            line: None,
            pg: Some(failure),
        }
    }

    pub(super) fn for_patch(&self, patch: &Patch) -> PatchFailure {
        PatchFailure {
            patch: patch.version,
            node: self.node.clone(),
            file: patch.file_name(),
            line: self.line,
            what: self.what.clone(),
            pg: self.pg.clone(),
        }
    }
}

/// One node's part of a patch: node index, when and how long, how it ended.
pub(super) type Outcome = (usize, Timing, Result<(), NodeFailure>);

/// When a node's part of a patch finished, and how long it took.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub(super) elapsed: Duration,
    pub(super) finished: SystemTime,
}

impl Timing {
    /// A part that took `elapsed` and finished now.
    pub(super) fn now(elapsed: Duration) -> Timing {
        Timing {
            elapsed,
            finished: SystemTime::now(),
        }
    }
}

impl Coordinator<'_> {
    pub(super) fn node(&self, i: usize) -> &Node {
        &self.cluster.nodes[i]
    }

    pub(super) fn note(&self, text: String) {
        self.reporter.event(&Event::Note(&text));
        self.notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(text);
    }

    /// Inserts the claim row in the master's open transaction.
    pub(super) async fn claim(&self, tx: &impl GenericClient, patch: &Patch) -> Result<(), Error> {
        self.ledger
            .claim(tx, patch, &self.applied_by)
            .await
            .map_err(|e| self.claim_error(patch, e))
    }

    /// Why the claim could not be inserted: another coordinator has it, or worse.
    pub(super) fn claim_error(&self, patch: &Patch, e: PgFailure) -> Error {
        let node = self.cluster.master().name().clone();
        if e.is(&SqlState::INVALID_TEXT_REPRESENTATION) {
            // The lock check before the claim (nothing else in a claim's steps casts text).
            Error::LockLost {
                node,
                before: Some(patch.version),
                cause: None,
            }
        } else if e.is(&SqlState::UNIQUE_VIOLATION) || e.is(&SqlState::LOCK_NOT_AVAILABLE) {
            Error::Claimed {
                patch: patch.version,
                node,
            }
        } else {
            Error::Claim {
                patch: patch.version,
                node,
                action: "claim it",
                failure: Box::new(e),
            }
        }
    }

    /// Removes this run's unfinished claim row of `patch` after its transaction rolled
    /// back. Only the patch itself can have committed one (a transaction-control
    /// statement that slipped past `check` ended the claim's transaction), and it would
    /// block every later run as another coordinator's claim. Says so when it did.
    pub(super) async fn unclaim(&self, patch: &Patch) -> Option<String> {
        let master = self.cluster.master();
        let params = RowParams::new(patch, &self.applied_by);
        let key = params.key();
        let removed = async {
            let session = master.session().await?;
            let n = session
                .execute(
                    &self.ledger.unclaim_sql(),
                    &[key[0], key[1], key[2], &self.applied_by],
                )
                .await?;
            Ok::<_, PgFailure>(n)
        }
        .await;
        let more = match removed {
            Ok(0) => return None,
            Ok(_) => format!(
                "the patch ended the claim's transaction on master node `{}`, so its statements up to there are committed; this run's unfinished claim row was removed, nothing is recorded as applied",
                master.name()
            ),
            Err(e) => format!(
                "cannot check for an unfinished claim row of this run on master node `{}` ({e}); if `status` shows one, delete it before the next run",
                master.name()
            ),
        };
        self.note(format!("{}: {more}", patch.version));
        Some(more)
    }

    /// Whether `patch`'s claim checks on the server that the run still holds the cluster
    /// lock ([`crate::db::lock::held_sql`]), so the run need not ask the lock's session first.
    pub(super) fn claim_checks_lock(&self, patch: &Patch) -> bool {
        self.lock_witness.is_some()
            && self.selected[0]
            && match patch.kind {
                PatchType::Std => self.slony.is_none(),
                PatchType::Direct => !self.atomic,
                PatchType::Concurrent => true,
            }
    }

    /// Prepares on the master's `session` what a claim's transaction runs by name: the
    /// lock check (`witness`, when the claim makes it) and the ledger's statements.
    pub(super) async fn ready_to_claim(
        &self,
        session: &Session,
        witness: Option<&LockWitness>,
    ) -> Result<(), Error> {
        let ready = async {
            if let Some(w) = witness {
                w.ready(session).await?;
            }
            self.statements.ready_to_claim(session).await
        };
        ready.await.map_err(|e| {
            self.cluster
                .master()
                .failed("prepare the ledger statements", e)
        })
    }

    /// Rolls back a claim taken ahead for a patch the run does not go on with.
    pub(super) async fn abandon_next_claim(&self) {
        let next = self
            .next_claim
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(next) = next {
            next.tx.rollback().await;
        }
    }

    /// Whether the master must still run the patch's body.
    pub(super) fn master_needs(&self, patch: &Patch) -> bool {
        plan::needs_body(patch, Role::Master, self.replication, &self.ledgers[0])
    }

    /// The replicas that must still run the patch's body (of those `--node` selects).
    pub(super) fn replica_targets(&self, patch: &Patch) -> Vec<usize> {
        (1..self.cluster.nodes.len())
            .filter(|&i| self.selected[i])
            .filter(|&i| plan::needs_body(patch, Role::Replica, self.replication, &self.ledgers[i]))
            .collect()
    }

    pub(super) fn patch_done(&self, patch: &Patch, started: Instant, committed: bool) {
        self.reporter.event(&Event::PatchDone {
            version: patch.version,
            elapsed: started.elapsed(),
            committed,
        });
    }

    /// Adds the node results to the report; returns the first failure.
    pub(super) fn record(
        &self,
        patch: &Patch,
        mut results: Vec<Outcome>,
        report: &mut RunReport,
    ) -> Option<PatchFailure> {
        results.sort_by_key(|(i, _, _)| *i);
        let mut first_failure = None;
        for (i, timing, r) in &results {
            let failure = r.as_ref().err().map(|f| f.for_patch(patch));
            let error = failure
                .as_ref()
                .map(|f| Error::PatchFailed(Box::new(f.clone())).to_object());
            if first_failure.is_none() {
                first_failure = failure;
            }
            let started = timing.finished.checked_sub(timing.elapsed);
            report.results.push(NodeResult {
                patch: patch.version.to_string(),
                patch_type: patch.kind,
                node: self.node(*i).name().to_string(),
                started_at: rfc3339_millis(started.unwrap_or(timing.finished)),
                finished_at: rfc3339_millis(timing.finished),
                duration_ms: timing.elapsed.as_millis(),
                ok: error.is_none(),
                error,
            });
        }
        first_failure
    }

    /// Runs `work` on each target node, at most `jobs` at once.
    pub(super) async fn fan_out<'s, F, Fut>(
        &'s self,
        patch: &'s Patch,
        targets: &[usize],
        work: F,
    ) -> Vec<Outcome>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<(), NodeFailure>> + 's,
    {
        stream::iter(targets.iter().copied())
            .map(|i| self.timed(patch, i, work(i)))
            .buffer_unordered(self.cluster.jobs)
            .collect()
            .await
    }

    /// Reports a node's part as finished and returns its outcome.
    pub(super) fn node_done(
        &self,
        patch: &Patch,
        i: usize,
        started: Instant,
        r: Result<(), NodeFailure>,
    ) -> Outcome {
        let elapsed = started.elapsed();
        let error = r.as_ref().err().map(|f| f.for_patch(patch).to_string());
        self.reporter.event(&Event::NodeDone {
            version: patch.version,
            node: self.node(i).name(),
            elapsed,
            error: error.as_deref(),
        });
        (i, Timing::now(elapsed), r)
    }

    /// Reports a node's part as started (and, for a body sent whole, its first
    /// statement; a `concurrent` patch reports each of its statements as it runs it).
    pub(super) fn node_start(&self, patch: &Patch, i: usize) {
        let node = self.node(i).name();
        self.reporter.event(&Event::NodeStart {
            version: patch.version,
            node,
        });
        if patch.kind != PatchType::Concurrent {
            let statements = patch.statement_texts().count();
            if let Some((text, _)) = patch.statement_texts().next() {
                self.reporter.event(&Event::Statement {
                    version: patch.version,
                    node,
                    text,
                    at: StatementAt::Body { statements },
                });
            }
        }
    }

    /// Reports a node's part as started, runs it, reports it as finished.
    pub(super) async fn timed(
        &self,
        patch: &Patch,
        i: usize,
        work: impl Future<Output = Result<(), NodeFailure>>,
    ) -> Outcome {
        self.node_start(patch, i);
        let started = Instant::now();
        let r = work.await;
        self.node_done(patch, i, started, r)
    }

    /// Turns a node's failure into a [`NodeFailure`] naming node `i`.
    pub(super) fn fail(&self, i: usize) -> impl Fn(PgFailure) -> NodeFailure + '_ {
        move |failure| NodeFailure::of(self.node(i).name(), self.node(i).explain(failure))
    }

    /// Creates node `i`'s ledger table in `book` unless it is known to exist (the
    /// master's were created before the run).
    pub(super) async fn ensure(
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
}
