//! The one transaction type: a pooled session inside a transaction, ended by commit,
//! `PREPARE TRANSACTION` or rollback. Dropped while a transaction is open (or may be:
//! a lost connection leaves it unknown), it closes its connection, so the server rolls
//! back and no transaction ever goes back to the pool open.
//!
//! Savepoints are nested scopes ([`Savepoint`]), as in tokio-postgres's `Transaction`.
//! Pipelines may open and end transactions ([`Transaction::pipeline`]): the type follows
//! their `BEGIN` and `COMMIT`, so a claim, a body, its stamp and the `COMMIT` can go in
//! one round trip. A rehearsal's transaction is [`RollbackOnly`]: it has no way to commit.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_postgres::Client;

use crate::db::cluster::Session;
use crate::db::pgerror::PgFailure;
use crate::db::pipeline::{self, Step};
use crate::db::quote::quote_literal;

/// A transaction that may commit (or prepare).
pub struct Commit;

/// A transaction that can only be rolled back: the dry run's rehearsals.
pub struct RollbackOnly;

/// A pooled session inside a transaction (see the module documentation).
pub struct Transaction<Mode = Commit> {
    session: Option<Session>,
    /// A transaction is open on the session, or may be.
    open: AtomicBool,
    /// A savepoint scope ended without release or rollback: the transaction's state is
    /// unknown, so it must not commit.
    poisoned: AtomicBool,
    mode: PhantomData<Mode>,
}

impl<M> Transaction<M> {
    fn wrap(session: Session, open: bool) -> Transaction<M> {
        Transaction {
            session: Some(session),
            open: AtomicBool::new(open),
            poisoned: AtomicBool::new(false),
            mode: PhantomData,
        }
    }

    async fn begin_with(session: Session, sql: &str) -> Result<Transaction<M>, PgFailure> {
        let tx = Transaction::wrap(session, true);
        tx.client().batch_execute(sql).await?;
        Ok(tx)
    }

    pub fn client(&self) -> &Client {
        self.session().client()
    }

    /// The session the transaction runs on (its statement cache, for one).
    pub fn session(&self) -> &Session {
        self.session
            .as_ref()
            .expect("a transaction holds its session until it ends")
    }

    /// Closes the session's connection instead of returning it to the pool, whatever state
    /// it is in (the server rolls back anything still open): for a session whose settings
    /// the SQL it ran changed for good (a baseline's `SET search_path`, `SET lock_timeout`).
    pub fn close(mut self) {
        if let Some(session) = self.session.take() {
            session.discard();
        }
    }

    /// A savepoint: a nested scope that is released or rolled back on its own.
    pub async fn savepoint(&self) -> Result<Savepoint<'_, M>, PgFailure> {
        self.send(&[Step::Savepoint]).await?;
        Ok(Savepoint {
            tx: self,
            ended: false,
        })
    }

    /// Rolls the transaction back; if even that fails, dropping closes the connection.
    pub async fn rollback(self) {
        if self.open.load(Ordering::SeqCst) && self.client().batch_execute("ROLLBACK").await.is_ok()
        {
            self.ended();
        }
    }

    async fn send(&self, steps: &[Step<'_>]) -> Result<(), PgFailure> {
        let results = pipeline::send(self.client(), steps).await;
        match pipeline::first_failure(&results) {
            None => Ok(()),
            Some((_, e)) => Err(e.clone()),
        }
    }

    /// The server ended the transaction: the session may go back to the pool.
    fn ended(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.poisoned.store(false, Ordering::SeqCst);
    }

    /// After a failed COMMIT or PREPARE: a server error ended the transaction (it
    /// becomes a rollback); a lost connection leaves it unknown.
    fn ended_unless_lost(&self, e: &PgFailure) {
        if e.code.is_some() {
            self.ended();
        }
    }
}

impl Transaction<Commit> {
    /// A session on which a pipeline will open the transaction ([`Step::Begin`]).
    pub fn on(session: Session) -> Transaction {
        Transaction::wrap(session, false)
    }

    /// `BEGIN`, in a round trip of its own.
    pub async fn begin(session: Session) -> Result<Transaction, PgFailure> {
        Transaction::begin_with(session, "BEGIN").await
    }

    /// Sends `steps` in one round trip and returns each one's result. A [`Step::Begin`]
    /// that succeeds opens the transaction; a [`Step::Commit`] ends it (it commits when
    /// every step before it succeeded, else the server rolls back).
    pub async fn pipeline(&self, steps: &[Step<'_>]) -> Vec<Result<(), PgFailure>> {
        if self.poisoned.load(Ordering::SeqCst) && steps.iter().any(|s| matches!(s, Step::Commit)) {
            let refused = PgFailure::other(
                "transaction not committed: a savepoint in it was left neither released nor rolled back",
            );
            if self.client().batch_execute("ROLLBACK").await.is_ok() {
                self.ended();
            }
            return steps.iter().map(|_| Err(refused.clone())).collect();
        }
        let results = pipeline::send(self.client(), steps).await;
        for (step, r) in steps.iter().zip(&results) {
            match (step, r) {
                (Step::Begin, Ok(())) => self.open.store(true, Ordering::SeqCst),
                (Step::Commit, Ok(())) => self.ended(),
                (Step::Commit, Err(e)) => self.ended_unless_lost(e),
                _ => {}
            }
        }
        results
    }

    /// Sends `steps` through a bounded window ([`pipeline::send_all`]: a body of any size
    /// in bounded memory; nothing more is sent after the first failure, though what was in
    /// flight behind it runs). Follows [`Step::Begin`] and [`Step::Commit`] like
    /// [`Transaction::pipeline`]. `Err((index, failure))`: the first step that failed.
    pub async fn stream<'a>(
        &self,
        steps: impl IntoIterator<Item = Step<'a>>,
    ) -> Result<(), (usize, PgFailure)> {
        self.stream_seen(steps, |_, _| {}).await
    }

    /// [`Transaction::stream`], telling `seen(index, result)` every step's result as it
    /// arrives, in order: several patches' transactions in one stream learn which of them
    /// committed, and when.
    pub async fn stream_seen<'a>(
        &self,
        steps: impl IntoIterator<Item = Step<'a>>,
        mut seen: impl FnMut(usize, &Result<(), PgFailure>),
    ) -> Result<(), (usize, PgFailure)> {
        if self.poisoned.load(Ordering::SeqCst) {
            let refused = PgFailure::other(
                "transaction not continued: a savepoint in it was left neither released nor rolled back",
            );
            if self.client().batch_execute("ROLLBACK").await.is_ok() {
                self.ended();
            }
            return Err((0, refused));
        }
        pipeline::send_all(self.client(), steps, |i, step, r| {
            match (step, r) {
                (Step::Begin, Ok(())) => self.open.store(true, Ordering::SeqCst),
                (Step::Commit, Ok(())) => self.ended(),
                (Step::Commit, Err(e)) => self.ended_unless_lost(e),
                _ => {}
            }
            seen(i, r);
        })
        .await
    }

    /// `COMMIT`; the session goes back to the pool.
    pub async fn commit(self) -> Result<(), PgFailure> {
        let results = self.pipeline(&[Step::Commit]).await;
        match pipeline::first_failure(&results) {
            None => Ok(()),
            Some((_, e)) => Err(e.clone()),
        }
    }

    /// `PREPARE TRANSACTION gid`: the transaction lives on, prepared, apart from the
    /// session, which goes back to the pool. A failed PREPARE is a rollback.
    pub async fn prepare(self, gid: &str) -> Result<(), PgFailure> {
        if self.poisoned.load(Ordering::SeqCst) {
            self.rollback().await;
            return Err(PgFailure::other(
                "transaction not prepared: a savepoint in it was left neither released nor rolled back",
            ));
        }
        let sql = format!("PREPARE TRANSACTION {}", quote_literal(gid));
        match self.client().batch_execute(&sql).await {
            Ok(()) => {
                self.ended();
                Ok(())
            }
            Err(e) => {
                let e = PgFailure::from(e);
                self.ended_unless_lost(&e);
                Err(e)
            }
        }
    }
}

impl Transaction<RollbackOnly> {
    /// Opens a transaction that can only be rolled back; `settings` follow the `BEGIN`
    /// in the same request (e.g. `ISOLATION LEVEL READ COMMITTED; SET LOCAL …`).
    pub async fn rollback_only(
        session: Session,
        settings: &str,
    ) -> Result<Transaction<RollbackOnly>, PgFailure> {
        Transaction::begin_with(session, &format!("BEGIN {settings}")).await
    }
}

impl<M> Drop for Transaction<M> {
    fn drop(&mut self) {
        let unsure = self.open.load(Ordering::SeqCst) || self.poisoned.load(Ordering::SeqCst);
        if let Some(session) = self.session.take() {
            if unsure {
                session.discard();
            }
        }
    }
}

/// A savepoint inside a [`Transaction`]: released or rolled back on its own, the
/// transaction living on. Dropped without either, it leaves the transaction unable to
/// commit (and its connection closed when it ends).
pub struct Savepoint<'t, M> {
    tx: &'t Transaction<M>,
    ended: bool,
}

impl<M> Savepoint<'_, M> {
    pub fn client(&self) -> &Client {
        self.tx.client()
    }

    /// `RELEASE SAVEPOINT`: what ran under it stays in the transaction.
    pub async fn release(mut self) -> Result<(), PgFailure> {
        self.ended = true;
        let r = self.tx.send(&[Step::Release]).await;
        if r.is_err() {
            self.tx.poisoned.store(true, Ordering::SeqCst);
        }
        r
    }

    /// `ROLLBACK TO SAVEPOINT` and release it: what ran under it is undone, the
    /// transaction lives on.
    pub async fn rollback(mut self) -> Result<(), PgFailure> {
        self.ended = true;
        let r = self.tx.send(&[Step::RollbackTo, Step::Release]).await;
        if r.is_err() {
            self.tx.poisoned.store(true, Ordering::SeqCst);
        }
        r
    }
}

impl<M> Drop for Savepoint<'_, M> {
    fn drop(&mut self) {
        if !self.ended && self.tx.open.load(Ordering::SeqCst) {
            self.tx.poisoned.store(true, Ordering::SeqCst);
        }
    }
}
