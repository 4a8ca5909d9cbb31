//! Pipelined requests: several requests sent back to back in one round trip.
//!
//! tokio-postgres sends requests that are polled together back to back, so a
//! claim, a body and its ledger stamps cost one round trip instead of one each.
//! An error in one request aborts the transaction, and the requests after it
//! fail harmlessly ("current transaction is aborted"); the caller looks at the
//! first failure.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::db::pgerror::PgFailure;

/// One request of a pipeline.
#[derive(Clone, Copy)]
pub enum Step<'a> {
    /// Simple-protocol SQL (may hold several statements).
    Sql(&'a str),
    /// A prepared statement with its parameters.
    Exec(&'a Statement, &'a [&'a (dyn ToSql + Sync)]),
}

/// Sends `steps` in one round trip and returns each one's result, in order.
pub async fn send(client: &Client, steps: &[Step<'_>]) -> Vec<Result<(), PgFailure>> {
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
