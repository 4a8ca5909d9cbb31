//! Pipelined requests and manually delimited transactions.
//!
//! tokio-postgres sends requests that are polled together back to back, so a
//! claim, a body and its ledger stamps cost one round trip instead of one each.
//! An error in one request aborts the transaction, and the requests after it
//! fail harmlessly ("current transaction is aborted"); the caller looks at the
//! first failure.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::cluster::Session;
use crate::pgerror::PgFailure;

/// One request of a pipeline.
#[derive(Clone, Copy)]
pub enum Step<'a> {
    /// Simple-protocol SQL (may hold several statements).
    Sql(&'a str),
    /// A prepared statement with its parameters.
    Exec(&'a Statement, &'a [&'a (dyn ToSql + Sync)]),
}

/// Sends `steps` in one round trip and returns each one's result, in order.
pub async fn run(client: &Client, steps: &[Step<'_>]) -> Vec<Result<(), PgFailure>> {
    futures::future::join_all(steps.iter().map(|step| async move {
        match *step {
            Step::Sql(sql) => client.batch_execute(sql).await,
            Step::Exec(statement, params) => client.execute(statement, params).await.map(drop),
        }
        .map_err(PgFailure::from)
    }))
    .await
}

/// The first failure of a pipeline, with its index.
pub fn first_failure(results: &[Result<(), PgFailure>]) -> Option<(usize, &PgFailure)> {
    results
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
}

/// A session inside a transaction opened with a plain `BEGIN`. Unless it is
/// committed or rolled back, dropping it closes the connection, so a
/// transaction can never go back to the pool open.
pub struct TxSession {
    session: Option<Session>,
}

impl TxSession {
    pub fn new(session: Session) -> TxSession {
        TxSession {
            session: Some(session),
        }
    }

    pub fn client(&self) -> &Client {
        self.session
            .as_ref()
            .expect("a TxSession holds its session until it is closed")
            .client()
    }

    /// Runs `COMMIT` (or `PREPARE TRANSACTION …`, or `ROLLBACK`) and releases the session.
    pub async fn finish(mut self, sql: &str) -> Result<(), PgFailure> {
        let r = self
            .client()
            .batch_execute(sql)
            .await
            .map_err(PgFailure::from);
        if r.is_ok() {
            // Back to the pool, outside any transaction.
            drop(self.session.take());
        }
        r
    }

    /// The transaction was ended by a pipelined COMMIT: back to the pool.
    pub fn release(mut self) {
        drop(self.session.take());
    }

    pub async fn rollback(self) {
        let _ = self.finish("ROLLBACK").await;
    }
}

impl Drop for TxSession {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            s.discard();
        }
    }
}
