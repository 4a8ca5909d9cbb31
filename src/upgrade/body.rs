//! Running a patch body on one node: its statements pipelined with the ledger statements
//! through a bounded window (never the whole body in memory twice, whatever its size),
//! `COPY ... FROM stdin` blocks streamed, lock-timeout retries under a savepoint that
//! re-send only the statements, and errors pinned to a line of the patch file (inside a
//! COPY data block when the COPY failed).

use std::sync::Mutex;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use super::coordinator::{Coordinator, NodeFailure};
use crate::db::pgerror::PgFailure;
use crate::db::pipeline::{self, first_failure, Step};
use crate::db::retry::{self, Exhausted, Target};
use crate::db::transaction::Transaction;
use crate::output::human;
use crate::patches::patch::Patch;
use crate::patches::sql;
use crate::progress::Event;

/// How a pipelined transaction failed.
pub(super) enum TxFailure {
    /// One of the steps before the body (BEGIN, the claim or ledger row).
    Before(PgFailure),
    /// The body, or the steps after it.
    Node(NodeFailure),
}

/// How one try of a body ended, short of a failure.
enum Tried {
    Done,
    /// Statement `.0` hit the lock timeout and retries are allowed.
    LockTimeout(usize, PgFailure),
}

impl Coordinator<'_> {
    /// Statement `k` of `patch` on `target` (a `concurrent` patch runs one at a time),
    /// with lock-timeout retries; errors point at its line.
    pub(super) async fn execute(
        &self,
        target: Target<'_>,
        i: usize,
        patch: &Patch,
        k: usize,
    ) -> Result<(), NodeFailure> {
        let on_retry = |n: u32, pause: Duration| self.retry_note(patch, i, n, pause);
        retry::execute(
            target,
            self.node(i),
            Step::statement(patch, k),
            &self.policy,
            &on_retry,
            0,
        )
        .await
        .map_err(|x| {
            let mut f = self.statement_failure(i, patch, k, x.failure.clone());
            f.what = x.describe(&self.policy);
            f
        })
    }

    fn retry_note(&self, patch: &Patch, i: usize, n: u32, pause: Duration) {
        self.reporter.event(&Event::Note(&format!(
            "{} on {}: lock timeout ({}), retry {n} of {} in {}",
            patch.version,
            self.node(i).name(),
            human::duration(self.policy.lock_timeout),
            self.policy.retries,
            human::duration(pause)
        )));
    }

    /// The whole body inside open transaction `tx`, retried under a savepoint (the
    /// `--atomic` parts).
    pub(super) async fn body_in(
        &self,
        tx: &Transaction,
        i: usize,
        patch: &Patch,
    ) -> Result<(), NodeFailure> {
        match self.try_body(tx, i, patch, &[], true, &[]).await {
            Ok(Tried::Done) => Ok(()),
            Ok(Tried::LockTimeout(k, e)) => {
                self.roll_back_try(tx, i).await?;
                self.retry_body(tx, i, patch, &[], (k, e))
                    .await
                    .map_err(|f| self.node_failure(i, f))
            }
            Err(f) => Err(self.node_failure(i, f)),
        }
    }

    /// One try: `before` (BEGIN and a ledger row), the body (under a savepoint when
    /// `savepoint`), then `after`, streamed. Nothing more is sent once a failure is seen,
    /// but what was already in flight behind it runs (and fails: the transaction is
    /// aborted), a trailing COMMIT included, which then rolls back.
    async fn try_body(
        &self,
        tx: &Transaction,
        i: usize,
        patch: &Patch,
        before: &[Step<'_>],
        savepoint: bool,
        after: &[Step<'_>],
    ) -> Result<Tried, TxFailure> {
        let body_at = before.len() + usize::from(savepoint);
        let statements = patch.statements.len();
        let steps = before
            .iter()
            .copied()
            .chain(savepoint.then_some(Step::Savepoint))
            .chain(pipeline::body(patch))
            .chain(savepoint.then_some(Step::Release))
            .chain(after.iter().copied());
        let Err((at, e)) = tx.stream(steps).await else {
            return Ok(Tried::Done);
        };
        if at < before.len() {
            return Err(TxFailure::Before(e));
        }
        let Some(k) = at.checked_sub(body_at).filter(|k| *k < statements) else {
            // After the body: the savepoint's release, then `after` (stamps — a stamp that
            // changed no row is the transaction guard — and COMMIT).
            return Err(TxFailure::Node(self.fail(i)(e)));
        };
        if e.is(&SqlState::LOCK_NOT_AVAILABLE) && self.policy.retries > 0 {
            return Ok(Tried::LockTimeout(k, e));
        }
        Err(TxFailure::Node(self.statement_failure(i, patch, k, e)))
    }

    /// Undoes a try that timed out under its savepoint; the transaction lives on.
    async fn roll_back_try(&self, tx: &Transaction, i: usize) -> Result<(), NodeFailure> {
        let undone = tx.stream([Step::RollbackTo, Step::Release]).await;
        undone.map_err(|(_, e)| self.fail(i)(e))
    }

    /// Retries of a body that hit the lock timeout, inside the open transaction under a
    /// savepoint, then `after` once the body went through. `failed` is the statement that
    /// timed out. A pipelined try sends what follows a failure before it sees it, so
    /// `after` (a COMMIT) is never part of a try that may fail.
    async fn retry_body(
        &self,
        tx: &Transaction,
        i: usize,
        patch: &Patch,
        after: &[Step<'_>],
        failed: (usize, PgFailure),
    ) -> Result<(), TxFailure> {
        let node = self.node(i);
        let pid = retry::backend_pid(tx.client()).await;
        let seen = Mutex::new(None);
        let (mut k, mut e) = failed;
        let mut tries = 1;
        loop {
            if tries > self.policy.retries {
                let exhausted = Exhausted {
                    failure: e.clone(),
                    waiting_for: seen.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                    tries,
                };
                let mut f = self.statement_failure(i, patch, k, e);
                f.what = exhausted.describe(&self.policy);
                return Err(TxFailure::Node(f));
            }
            let pause = self.policy.backoff(tries);
            self.retry_note(patch, i, tries, pause);
            if let Err(interrupt) = crate::signal::sleep(pause).await {
                let mut f = self.statement_failure(i, patch, k, e);
                f.what = format!("{interrupt}: not retried after the lock timeout");
                return Err(TxFailure::Node(f));
            }
            tries += 1;
            let attempt = self.try_body(tx, i, patch, &[], true, &[]);
            let tried = match pid {
                None => attempt.await?,
                Some(pid) => {
                    let watch = retry::watch_lock(node, pid, self.policy.lock_timeout, &seen);
                    tokio::pin!(attempt);
                    tokio::pin!(watch);
                    tokio::select! {
                        r = &mut attempt => r?,
                        () = &mut watch => attempt.await?,
                    }
                }
            };
            match tried {
                Tried::Done => {
                    let results = tx.pipeline(after).await;
                    return match first_failure(&results) {
                        None => Ok(()),
                        Some((_, e)) => Err(TxFailure::Node(self.fail(i)(e.clone()))),
                    };
                }
                Tried::LockTimeout(at, failure) => {
                    (k, e) = (at, failure);
                    self.roll_back_try(tx, i).await.map_err(TxFailure::Node)?;
                }
            }
        }
    }

    /// `before` (BEGIN and a ledger row), the body, `after` and COMMIT, streamed in as
    /// few round trips as the window allows. Only if the body hit the lock timeout is the
    /// transaction rolled back and opened again, this time with the body under a
    /// savepoint, so that every further try keeps the ledger row (a claim: the
    /// coordinator lock keeps others out meanwhile).
    pub(super) async fn committed_transaction(
        &self,
        tx: &Transaction,
        i: usize,
        patch: &Patch,
        before: &[Step<'_>],
        after: &[Step<'_>],
    ) -> Result<(), TxFailure> {
        let mut finish: Vec<Step<'_>> = after.to_vec();
        finish.push(Step::Commit);
        let (k, e) = match self.try_body(tx, i, patch, before, false, &finish).await? {
            Tried::Done => return Ok(()),
            Tried::LockTimeout(k, e) => (k, e),
        };
        // The failed try's COMMIT may or may not have gone out (the window decides): a
        // ROLLBACK ends the transaction either way (outside one it only warns).
        if let Err(e) = tx.client().batch_execute("ROLLBACK").await {
            return Err(TxFailure::Before(e.into()));
        }
        let reopened = tx.pipeline(before).await;
        if let Some((_, e)) = first_failure(&reopened) {
            return Err(TxFailure::Before(e.clone()));
        }
        self.retry_body(tx, i, patch, &finish, (k, e)).await
    }

    /// The master's part of a `direct` patch, in the open claim transaction: the body
    /// under a savepoint; a lock timeout rolls back to the savepoint and retries, so the
    /// transaction and its claim live on.
    pub(super) async fn body_in_claim(
        &self,
        claim: &Transaction,
        patch: &Patch,
    ) -> Result<(), NodeFailure> {
        self.body_in(claim, 0, patch).await
    }

    fn node_failure(&self, i: usize, f: TxFailure) -> NodeFailure {
        match f {
            TxFailure::Node(f) => f,
            TxFailure::Before(e) => self.fail(i)(e),
        }
    }

    /// A failure of statement `k`, pinned to its line in the patch file: the server's
    /// error position within the statement, or the data line of a failed COPY.
    pub(super) fn statement_failure(
        &self,
        i: usize,
        patch: &Patch,
        k: usize,
        e: PgFailure,
    ) -> NodeFailure {
        let span = patch.statements[k];
        let text = &patch.body[span.offset..span.offset + span.len];
        let line = match (e.position, patch.copy_block(k), e.copy_line) {
            (Some(p), _, _) => span.line + sql::line_at_char_position(text, p as usize) - 1,
            (None, Some(block), Some(n)) => block.line + n as usize - 1,
            _ => span.line,
        };
        NodeFailure {
            line: Some(line),
            ..NodeFailure::of(self.node(i).name(), self.node(i).explain(e))
        }
    }
}
