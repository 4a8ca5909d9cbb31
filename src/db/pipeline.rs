//! Pipelined requests: several requests sent back to back in one round trip.
//!
//! tokio-postgres sends requests that are polled together back to back, so a
//! claim, a body and its ledger stamps cost one round trip instead of one each.
//! An error in one request aborts the transaction, and the requests after it
//! fail harmlessly ("current transaction is aborted"); the caller looks at the
//! first failure. Pipelines that open or end transactions are sent through
//! [`crate::db::transaction::Transaction::pipeline`], which keeps track of them.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::db::pgerror::PgFailure;

/// The one savepoint name: PostgreSQL lets savepoints of the same name nest (RELEASE and
/// ROLLBACK TO act on the innermost), so scopes need no numbering.
macro_rules! savepoint_name {
    () => {
        "pgconvoy_savepoint"
    };
}
pub const SAVEPOINT: &str = savepoint_name!();

/// One request of a pipeline.
#[derive(Clone, Copy)]
pub enum Step<'a> {
    /// Simple-protocol SQL (may hold several statements).
    Sql(&'a str),
    /// A prepared statement with its parameters.
    Exec(&'a Statement, &'a [&'a (dyn ToSql + Sync)]),
    /// `BEGIN`.
    Begin,
    /// `COMMIT` (a rollback when the transaction failed earlier in the pipeline).
    Commit,
    /// `SAVEPOINT` of the one name.
    Savepoint,
    /// `RELEASE SAVEPOINT`.
    Release,
    /// `ROLLBACK TO SAVEPOINT`.
    RollbackTo,
}

impl Step<'_> {
    fn control_sql(&self) -> Option<&'static str> {
        Some(match self {
            Step::Begin => "BEGIN",
            Step::Commit => "COMMIT",
            Step::Savepoint => concat!("SAVEPOINT ", savepoint_name!()),
            Step::Release => concat!("RELEASE SAVEPOINT ", savepoint_name!()),
            Step::RollbackTo => concat!("ROLLBACK TO SAVEPOINT ", savepoint_name!()),
            Step::Sql(_) | Step::Exec(..) => return None,
        })
    }
}

/// Sends `steps` in one round trip and returns each one's result, in order.
pub(super) async fn send(client: &Client, steps: &[Step<'_>]) -> Vec<Result<(), PgFailure>> {
    futures::future::join_all(steps.iter().map(|step| async move {
        match *step {
            Step::Sql(sql) => client.batch_execute(sql).await,
            Step::Exec(statement, params) => client.execute(statement, params).await.map(drop),
            control => {
                let sql = control.control_sql().expect("a transaction-control step");
                client.batch_execute(sql).await
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn savepoint_steps_use_the_one_name() {
        for step in [Step::Savepoint, Step::Release, Step::RollbackTo] {
            assert!(step.control_sql().unwrap().ends_with(SAVEPOINT));
        }
        assert_eq!(Step::Sql("SELECT 1").control_sql(), None);
    }
}
