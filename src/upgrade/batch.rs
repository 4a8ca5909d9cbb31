//! Several `std` patches in one stream on the master: each patch is still its own
//! transaction with its own claim and stamp (BEGIN, lock check, claim, body, stamp,
//! COMMIT), but the transactions go out back to back, so a batch of small patches costs
//! about one round trip instead of one per patch.
//!
//! What keeps this as exact as one patch at a time, whatever was already sent when
//! something failed: each claim after the first fails on the server unless the patch
//! before it is finished in the ledger ([`Ledger::claim_after_sql`]), so after a failure
//! every later transaction is aborted before its body and rolls back (checks made on the
//! client would come too late: the server runs what was sent); and each claim is preceded
//! by a check, on the server, that the run's lock session still holds the cluster lock
//! ([`held_sql`]), so a batch stops where one patch at a time would have stopped.
//! Patches committed before a failure stay committed and stamped.
//!
//! [`Ledger::claim_after_sql`]: crate::db::ledger::Ledger::claim_after_sql
//! [`held_sql`]: crate::db::lock::held_sql

use std::cell::{Cell, RefCell};
use std::time::Instant;

use tokio_postgres::error::SqlState;

use super::coordinator::{Coordinator, Outcome};
use super::RunReport;
use crate::db::ledger::{Book, RowParams};
use crate::db::pgerror::PgFailure;
use crate::db::pipeline::{self, Step};
use crate::db::transaction::Transaction;
use crate::error::Error;
use crate::patches::patch::{Patch, PatchType};

/// At most this many patches in one batch: a signal stops sending new patches at once,
/// but what is already in flight runs (or is cancelled), so batches stay short.
const MAX_PATCHES: usize = 32;
/// At most this many bytes of patch bodies in one batch; a bigger patch runs alone.
const MAX_BYTES: usize = 1 << 20;
/// Steps before a patch's body: BEGIN, the lock check, the claim.
const BEFORE: usize = 3;
/// Steps after it: the stamp, COMMIT.
const AFTER: usize = 2;

impl Coordinator<'_> {
    /// How many patches from the start of `rest` may go in one batch (fewer than 2: run
    /// the first alone). Only plain `std` patches on the master: Slony-I's go through
    /// slonik, `--node` without the master never claims, and a big body runs alone.
    pub(super) fn batch_len(&self, rest: &[&Patch]) -> usize {
        if self.slony.is_some() || !self.selected[0] || self.lock_witness.is_none() {
            return 0;
        }
        let mut bytes = 0;
        rest.iter()
            .take(MAX_PATCHES)
            .take_while(|p| {
                bytes += p.body.len();
                p.kind == PatchType::Std && bytes <= MAX_BYTES
            })
            .count()
    }

    /// Applies `patches` (from [`Coordinator::batch_len`]) in one stream on the master,
    /// each in its own transaction, each claim after a check on the server that the run's
    /// lock session still holds the lock.
    /// Each committed patch is recorded in `report` (and in `report.applied`). Returns how
    /// many committed: fewer than all without an error when the run must look again
    /// before the next one (a signal or the lock's loss noticed: nothing more was sent),
    /// or when the next one must run alone (its body hit the lock timeout and may be
    /// retried, which only the one-patch path does).
    pub(super) async fn apply_batch(
        &self,
        patches: &[&Patch],
        report: &mut RunReport,
    ) -> Result<usize, Error> {
        let Some(witness) = &self.lock_witness else {
            // No lock check on the server: the patches run one at a time.
            return Ok(0);
        };
        let master = self.cluster.master();
        let session = master.session().await.map_err(|e| master.unreachable(e))?;
        // The ledger statements run by name inside each patch's message
        // ([`crate::db::pipeline`], [`crate::db::named`]).
        self.ready_to_claim(&session, Some(witness)).await?;
        let params: Vec<RowParams> = patches
            .iter()
            .map(|p| RowParams::new(p, &self.applied_by))
            .collect();
        let claims: Vec<String> = params
            .iter()
            .enumerate()
            .map(|(j, p)| match j {
                0 => self.statements.claim(p),
                _ => self.statements.claim_after(p, &params[j - 1]),
            })
            .collect();
        let stamps: Vec<String> = params
            .iter()
            .map(|p| self.statements.stamp(Book::Main, p))
            .collect();
        let held = witness.held();
        // Where each patch's steps start in the stream.
        let starts: Vec<usize> = patches
            .iter()
            .scan(0, |at, p| {
                let start = *at;
                *at += BEFORE + p.statements.len() + AFTER;
                Some(start)
            })
            .collect();

        // A patch starts (for progress and its time) once it is sent and the one before
        // it committed: per-patch times add up to the batch's.
        let sent = Cell::new(0usize);
        let committed = Cell::new(0usize);
        let began: RefCell<Vec<Option<Instant>>> = RefCell::new(vec![None; patches.len()]);
        let outcomes: RefCell<Vec<Outcome>> = RefCell::new(Vec::new());
        let begin = |j: usize| {
            self.node_start(patches[j], 0);
            began.borrow_mut()[j] = Some(Instant::now());
        };
        let steps = patches
            .iter()
            .enumerate()
            .take_while(|(j, _)| {
                // Nothing new is sent once the run is stopping.
                let go = *j == 0
                    || (crate::signal::tripped().is_none() && !self.cluster.inflight.lock_lost());
                if go {
                    sent.set(j + 1);
                    if committed.get() == *j {
                        begin(*j);
                    }
                }
                go
            })
            .flat_map(|(j, p)| {
                [Step::Begin, Step::One(&held), Step::Claim(&claims[j])]
                    .into_iter()
                    .chain(pipeline::body(p))
                    .chain([Step::One(&stamps[j]), Step::Commit])
            });
        let failed = Cell::new(false);
        let seen = |i: usize, r: &Result<(), PgFailure>| {
            if r.is_err() {
                failed.set(true);
            }
            let j = committed.get();
            if failed.get() || j >= patches.len() {
                return;
            }
            if i + 1 == starts[j] + BEFORE + patches[j].statements.len() + AFTER {
                // Patch j's COMMIT, after every step before it succeeded: committed.
                let t = began.borrow()[j].unwrap_or_else(Instant::now);
                outcomes
                    .borrow_mut()
                    .push(self.node_done(patches[j], 0, t, Ok(())));
                self.patch_done(patches[j], t, true);
                committed.set(j + 1);
                if sent.get() > j + 1 {
                    begin(j + 1);
                }
            }
        };
        let claim = Transaction::on(session);
        let streamed = claim.stream_seen(steps, seen).await;

        let done = committed.get();
        for (patch, outcome) in patches.iter().zip(outcomes.into_inner()) {
            self.record(patch, vec![outcome], report);
            report.applied.push(patch.version.to_string());
        }
        let Err((at, e)) = streamed else {
            return Ok(done);
        };
        // The first failure is in the first patch that did not commit.
        let patch = patches[done];
        let rel = at.saturating_sub(starts[done]);
        let statements = patch.statements.len();
        let failure = if rel == 1 && e.is(&SqlState::INVALID_TEXT_REPRESENTATION) {
            claim.rollback().await;
            return Err(Error::LockLost {
                node: master.name().clone(),
                before: Some(patch.version),
                cause: None,
            });
        } else if rel < BEFORE {
            claim.rollback().await;
            return Err(self.claim_error(patch, e));
        } else if rel < BEFORE + statements {
            let k = rel - BEFORE;
            if e.is(&SqlState::LOCK_NOT_AVAILABLE) && self.policy.retries > 0 {
                claim.rollback().await;
                self.note(format!(
                    "{}: lock timeout in a batch; the patch is retried alone",
                    patch.version
                ));
                return Ok(done);
            }
            self.statement_failure(0, patch, k, e)
        } else {
            self.fail(0)(e)
        };
        let t = began.borrow()[done].unwrap_or_else(Instant::now);
        let mut reported = failure.for_patch(patch);
        let outcome = self.node_done(patch, 0, t, Err(failure));
        self.record(patch, vec![outcome], report);
        self.patch_done(patch, t, false);
        claim.rollback().await;
        // Only the patch itself can have committed its claim row (a transaction-control
        // statement that slipped past `check`); never leave it behind.
        if let Some(more) = self.unclaim(patch).await {
            reported.what = format!("{}; {more}", reported.what);
        }
        Err(Error::PatchFailed(Box::new(reported)))
    }
}
