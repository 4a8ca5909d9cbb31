//! Pipelined requests: several requests sent back to back in one round trip.
//!
//! tokio-postgres sends requests that are polled together back to back, so a
//! claim, a body and its ledger stamps cost one round trip instead of one each.
//! An error in one request aborts the transaction, and the requests after it
//! fail harmlessly ("current transaction is aborted"); the caller looks at the
//! first failure. Pipelines that open or end transactions are sent through
//! [`crate::db::transaction::Transaction::pipeline`], which keeps track of them.
//!
//! A patch body can be half a million statements: [`send_all`] keeps only a bounded
//! window of them in flight and stops sending at the first failure, so memory does not
//! grow with the patch, and `COPY ... FROM stdin` data is streamed from the patch's
//! shared text in slices, never copied.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::SinkExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::db::pgerror::PgFailure;
use crate::patches::patch::Patch;

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
    /// A prepared statement that must change exactly one row; any other count fails
    /// the step with `what` (a ledger stamp whose row is not the one this transaction
    /// wrote: the transaction guard).
    ExecOne(&'a Statement, &'a [&'a (dyn ToSql + Sync)], &'a str),
    /// `COPY ... FROM STDIN` and its inline data: `len` bytes at `offset` of `text`.
    Copy {
        sql: &'a str,
        text: &'a Arc<String>,
        offset: usize,
        len: usize,
    },
}

impl<'a> Step<'a> {
    fn control_sql(&self) -> Option<&'static str> {
        Some(match self {
            Step::Begin => "BEGIN",
            Step::Commit => "COMMIT",
            Step::Savepoint => concat!("SAVEPOINT ", savepoint_name!()),
            Step::Release => concat!("RELEASE SAVEPOINT ", savepoint_name!()),
            Step::RollbackTo => concat!("ROLLBACK TO SAVEPOINT ", savepoint_name!()),
            Step::Sql(_) | Step::Exec(..) | Step::ExecOne(..) | Step::Copy { .. } => return None,
        })
    }

    /// Statement `index` of `patch` as a request: its SQL, or a COPY with its data block.
    pub fn statement(patch: &'a Patch, index: usize) -> Step<'a> {
        let span = patch.statements[index];
        let sql = &patch.body[span.offset..span.offset + span.len];
        match patch.copy_block(index) {
            Some(block) => Step::Copy {
                sql,
                text: &patch.body,
                offset: block.offset,
                len: block.len,
            },
            None => Step::Sql(sql),
        }
    }

    /// Bytes of SQL this request puts on the wire (COPY data is streamed apart).
    fn weight(&self) -> usize {
        match self {
            Step::Sql(sql) | Step::Copy { sql, .. } => sql.len(),
            _ => 64,
        }
    }
}

/// The statements of a patch body, in order, as requests.
pub fn body(patch: &Patch) -> impl Iterator<Item = Step<'_>> + '_ {
    (0..patch.statements.len()).map(move |i| Step::statement(patch, i))
}

/// Runs one request and waits for its result.
pub async fn send_one(client: &Client, step: Step<'_>) -> Result<(), PgFailure> {
    match step {
        Step::Sql(sql) => client.batch_execute(sql).await.map_err(PgFailure::from),
        Step::Exec(statement, params) => client
            .execute(statement, params)
            .await
            .map(drop)
            .map_err(PgFailure::from),
        Step::ExecOne(statement, params, what) => match client.execute(statement, params).await {
            Ok(1) => Ok(()),
            Ok(_) => Err(PgFailure::other(what)),
            Err(e) => Err(e.into()),
        },
        Step::Copy {
            sql,
            text,
            offset,
            len,
        } => copy_in(client, sql, shared(text).slice(offset..offset + len))
            .await
            .map_err(PgFailure::from),
        control => {
            let sql = control.control_sql().expect("a transaction-control step");
            client.batch_execute(sql).await.map_err(PgFailure::from)
        }
    }
}

/// Sends `steps` in one round trip and returns each one's result, in order. For a few
/// requests (a claim, a stamp, COMMIT); a body goes through [`send_all`].
pub(super) async fn send(client: &Client, steps: &[Step<'_>]) -> Vec<Result<(), PgFailure>> {
    futures::future::join_all(steps.iter().map(|step| send_one(client, *step))).await
}

/// At most this many requests in flight on one connection.
const WINDOW_REQUESTS: usize = 256;
/// About at most this many bytes of SQL in flight on one connection.
const WINDOW_BYTES: usize = 1 << 20;

/// Sends `steps` in order, pipelined: a bounded window of requests in flight (enough to
/// keep the connection busy, never the whole body). After the first failure nothing more
/// is sent; the requests already in flight are awaited, so the connection is idle again
/// on return. `seen(index, step, result)` is told every result, in order (transactions
/// follow their BEGIN and COMMIT with it). `Err((index, failure))` names the first step that
/// failed.
///
/// Requests reach the server in the order they are first polled: new ones join the
/// window in order behind the ones in flight. A COPY waits for the window to empty and
/// runs alone, since it takes a round trip of its own (its prepare) before its data goes
/// out, and requests queued meanwhile would overtake it.
pub(super) async fn send_all<'a>(
    client: &Client,
    steps: impl IntoIterator<Item = Step<'a>>,
    mut seen: impl FnMut(usize, &Step<'a>, &Result<(), PgFailure>),
) -> Result<(), (usize, PgFailure)> {
    let mut steps = steps.into_iter().enumerate();
    let mut in_flight = FuturesOrdered::new();
    let mut bytes = 0usize;
    let mut failed: Option<(usize, PgFailure)> = None;
    let mut waiting: Option<(usize, Step<'a>)> = None;
    loop {
        while failed.is_none() && in_flight.len() < WINDOW_REQUESTS && bytes < WINDOW_BYTES {
            let Some((i, step)) = waiting.take().or_else(|| steps.next()) else {
                break;
            };
            if let Step::Copy { .. } = step {
                if !in_flight.is_empty() {
                    waiting = Some((i, step));
                    break;
                }
                let r = send_one(client, step).await;
                seen(i, &step, &r);
                if let Err(e) = r {
                    failed = Some((i, e));
                }
                continue;
            }
            let weight = step.weight();
            bytes += weight;
            in_flight.push_back(async move { (i, step, weight, send_one(client, step).await) });
        }
        let Some((i, step, weight, result)) = in_flight.next().await else {
            break;
        };
        bytes -= weight;
        seen(i, &step, &result);
        if let Err(e) = result {
            // Results arrive in order: the first error seen is the earliest.
            failed.get_or_insert((i, e));
        }
    }
    match failed {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// The first failure of a pipeline, with its index.
pub fn first_failure(results: &[Result<(), PgFailure>]) -> Option<(usize, &PgFailure)> {
    results
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
}

/// Pieces of COPY data handed to the connection one at a time.
const COPY_CHUNK: usize = 64 * 1024;

/// `COPY ... FROM STDIN` with `data`, sent in slices of the shared text.
async fn copy_in(client: &Client, sql: &str, mut data: Bytes) -> Result<(), tokio_postgres::Error> {
    let sink = client.copy_in::<str, Bytes>(sql).await?;
    futures::pin_mut!(sink);
    while !data.is_empty() {
        let chunk = data.split_to(data.len().min(COPY_CHUNK));
        sink.send(chunk).await?;
    }
    sink.finish().await.map(drop)
}

/// The patch text as `Bytes` sharing its allocation, so slices of it can be sent.
fn shared(text: &Arc<String>) -> Bytes {
    Bytes::from_owner(SharedText(Arc::clone(text)))
}

struct SharedText(Arc<String>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
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
