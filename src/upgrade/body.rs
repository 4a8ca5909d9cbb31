//! Running a patch body on one node: pipelined with its ledger statements in one round
//! trip on the first try, retried under a savepoint when it hits the lock timeout, its
//! errors pinned to a line of the patch file.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use super::coordinator::{Coordinator, NodeFailure};
use crate::db::pgerror::PgFailure;
use crate::db::pipeline::{first_failure, Step};
use crate::db::retry::{self, Target};
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

impl Coordinator<'_> {
    /// Runs `sql` (the body or one statement of it) on `target` with lock-timeout
    /// retries; errors point at a line of the patch file (`first_line` is where `sql`
    /// starts). `failed_tries`: tries the caller already made that hit the lock timeout.
    pub(super) async fn execute(
        &self,
        target: Target<'_>,
        i: usize,
        patch: &Patch,
        (sql_text, first_line): (&str, usize),
        failed_tries: u32,
    ) -> Result<(), NodeFailure> {
        let node = self.node(i);
        let on_retry = |n: u32, pause: Duration| {
            self.reporter.event(&Event::Note(&format!(
                "{} on {}: lock timeout ({}), retry {n} of {} in {}",
                patch.version,
                node.name(),
                human::duration(self.policy.lock_timeout),
                self.policy.retries,
                human::duration(pause)
            )));
        };
        retry::execute(
            target,
            node,
            sql_text,
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

    /// The whole body in one request, inside transaction `tx`.
    pub(super) async fn body_in(
        &self,
        tx: &Transaction,
        i: usize,
        patch: &Patch,
    ) -> Result<(), NodeFailure> {
        self.execute(Target::Transaction(tx), i, patch, (&patch.body, 1), 0)
            .await
    }

    /// The first try of a body, pipelined in one round trip: `before`, the
    /// body's statements (one request each, so that an error without a server
    /// position is still pinned to its statement's line; under a savepoint
    /// when `savepoint`), then `after`. `Ok(false)`: the body hit the lock
    /// timeout and may be retried.
    async fn first_try(
        &self,
        tx: &Transaction,
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
            steps.push(Step::Savepoint);
        }
        let body_at = steps.len();
        steps.extend(statements.iter().map(|(text, _)| Step::Sql(text)));
        if savepoint {
            steps.push(Step::Release);
        }
        steps.extend_from_slice(after);
        let results = tx.pipeline(&steps).await;
        let Some((at, e)) = first_failure(&results) else {
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
        tx: &Transaction,
        i: usize,
        patch: &Patch,
        after: &[Step<'_>],
    ) -> Result<(), TxFailure> {
        self.execute(Target::Transaction(tx), i, patch, (&patch.body, 1), 1)
            .await
            .map_err(TxFailure::Node)?;
        let results = tx.pipeline(after).await;
        match first_failure(&results) {
            None => Ok(()),
            Some((_, e)) => Err(TxFailure::Node(self.fail(i)(e.clone()))),
        }
    }

    /// `before` (BEGIN and a ledger row), the body, `after` and COMMIT, all in
    /// one round trip: when any of them fails, the COMMIT rolls back. Only if
    /// the body hit the lock timeout is the transaction opened again, this time
    /// with the body under a savepoint, so that every further try keeps the
    /// ledger row (a claim: the coordinator lock keeps others out meanwhile).
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
        if self.first_try(tx, i, patch, before, false, &finish).await? {
            return Ok(());
        }
        let reopened = tx.pipeline(before).await;
        if let Some((_, e)) = first_failure(&reopened) {
            return Err(TxFailure::Before(e.clone()));
        }
        self.retry_body(tx, i, patch, &finish).await
    }

    /// The master's part of a `direct` patch, in the open claim transaction: the
    /// body under a savepoint in one round trip; a lock timeout rolls back to the
    /// savepoint and retries, so the transaction and its claim live on.
    pub(super) async fn body_in_claim(
        &self,
        claim: &Transaction,
        patch: &Patch,
    ) -> Result<(), NodeFailure> {
        let failure = |f| match f {
            TxFailure::Node(f) => f,
            TxFailure::Before(e) => self.fail(0)(e),
        };
        if self
            .first_try(claim, 0, patch, &[], true, &[])
            .await
            .map_err(failure)?
        {
            return Ok(());
        }
        let undone = claim.pipeline(&[Step::RollbackTo, Step::Release]).await;
        if let Some((_, e)) = first_failure(&undone) {
            return Err(self.fail(0)(e.clone()));
        }
        self.retry_body(claim, 0, patch, &[]).await.map_err(failure)
    }

    /// A body error, pointing at its line in the patch file.
    pub(super) fn body_failure(
        &self,
        i: usize,
        (sql_text, first_line): (&str, usize),
        e: PgFailure,
    ) -> NodeFailure {
        let line = e
            .position
            .map(|p| first_line + sql::line_at_char_position(sql_text, p as usize) - 1);
        NodeFailure {
            line,
            ..NodeFailure::of(self.node(i).name(), self.node(i).explain(e))
        }
    }
}
