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
//!
//! Inside a transaction, consecutive steps that are one statement of text each
//! ([`Step::One`] and the transaction-control steps) go to the server as one
//! simple-query message, up to [`MESSAGE_BYTES`] and never past a COMMIT: the server
//! runs them in order, stops at the first error (the rest of the message is skipped, so
//! nothing after a failure runs) and answers the whole message at once. A small patch's
//! BEGIN, ledger row, body, stamp and COMMIT then cost the server one message and one
//! reply instead of one each (the ledger statements run by name:
//! [`crate::db::named`]). Which step failed is known from the statements the server
//! reported complete before the error, and the error's position is made relative to
//! that step again.

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
    /// Exactly one statement as text: a patch's statement, or a ledger statement run by
    /// name ([`crate::db::named`]). Inside a transaction, several in a row go out as one
    /// message.
    One(&'a str),
    /// A claim: [`Step::One`] that ends its message, so that a claim waiting behind
    /// another coordinator's row shows alone in `pg_stat_activity`, never with the body it
    /// guards (which goes out in the next message, in the same round trip).
    Claim(&'a str),
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
            Step::Sql(_) | Step::One(_) | Step::Claim(_) | Step::Exec(..) | Step::Copy { .. } => {
                return None
            }
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
            None => Step::One(sql),
        }
    }

    /// The step as one statement of text, when it can share a message with others.
    fn script(&self) -> Option<&'a str> {
        match self {
            Step::One(sql) | Step::Claim(sql) => Some(sql),
            _ => self.control_sql(),
        }
    }

    /// Bytes of SQL this request puts on the wire (COPY data is streamed apart).
    fn weight(&self) -> usize {
        match self {
            Step::Sql(sql) | Step::One(sql) | Step::Claim(sql) | Step::Copy { sql, .. } => {
                sql.len()
            }
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
        Step::Sql(sql) | Step::One(sql) | Step::Claim(sql) => {
            client.batch_execute(sql).await.map_err(PgFailure::from)
        }
        Step::Exec(statement, params) => client
            .execute(statement, params)
            .await
            .map(drop)
            .map_err(PgFailure::from),
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
/// requests (a claim, a stamp, COMMIT); a body goes through [`send_all`]. Inside a
/// transaction only: steps of text share messages ([`messages`]).
pub(super) async fn send(client: &Client, steps: &[Step<'_>]) -> Vec<Result<(), PgFailure>> {
    let units = messages(steps.iter().copied());
    let sent = futures::future::join_all(units.iter().map(|unit| send_unit(client, unit))).await;
    sent.into_iter().flatten().collect()
}

/// At most this many bytes of SQL in one message of several steps.
pub const MESSAGE_BYTES: usize = 64 * 1024;
/// At most this many steps in one message.
const MESSAGE_STEPS: usize = 256;

/// `steps` cut into the messages they go out in ([`next_message`]).
fn messages<'a>(steps: impl IntoIterator<Item = Step<'a>>) -> Vec<Vec<Step<'a>>> {
    let mut steps = steps.into_iter().enumerate().peekable();
    std::iter::from_fn(|| next_message(&mut steps).map(|(_, unit)| unit)).collect()
}

/// The next message, with the index of its first step: a run of steps of text
/// ([`Step::script`]) up to [`MESSAGE_BYTES`] and [`MESSAGE_STEPS`], or any other step
/// alone. A message ends with a COMMIT: it holds at most one transaction's end, so
/// what `pg_stat_activity` shows of a running message is one patch's transaction (its
/// first kilobyte), and statements after a COMMIT never share an implicit transaction.
/// It also ends with a claim ([`Step::Claim`]).
fn next_message<'a, I: Iterator<Item = (usize, Step<'a>)>>(
    steps: &mut std::iter::Peekable<I>,
) -> Option<(usize, Vec<Step<'a>>)> {
    let (first, step) = steps.next()?;
    let mut unit = vec![step];
    let Some(text) = step.script() else {
        return Some((first, unit));
    };
    let mut bytes = text.len();
    while unit.len() < MESSAGE_STEPS
        && !matches!(unit[unit.len() - 1], Step::Commit | Step::Claim(_))
    {
        let fits = |next: &Step<'a>| {
            next.script()
                .is_some_and(|text| bytes + text.len() <= MESSAGE_BYTES)
        };
        let Some((_, next)) = steps.next_if(|(_, next)| fits(next)) else {
            break;
        };
        bytes += next.script().map_or(0, str::len);
        unit.push(next);
    }
    Some((first, unit))
}

/// One message: a step alone ([`send_one`]), or several steps of text as one
/// simple-query message ([`send_script`]). One result per step, in order.
async fn send_unit(client: &Client, unit: &[Step<'_>]) -> Vec<Result<(), PgFailure>> {
    match unit {
        [step] => vec![send_one(client, *step).await],
        _ => send_script(client, unit).await,
    }
}

/// Steps of text ([`Step::script`]) as one simple-query message. The server runs them in
/// order and stops at the first error: the steps it reported complete succeeded, the
/// next one failed (its error position made relative to it again), the rest were not
/// run (failures without a SQLSTATE: a COMMIT among them did not end the transaction).
async fn send_script(client: &Client, unit: &[Step<'_>]) -> Vec<Result<(), PgFailure>> {
    let mut sql = String::with_capacity(unit.iter().map(|s| s.weight() + 2).sum());
    // Where each step starts, in characters (the server's error positions count those).
    let mut starts = Vec::with_capacity(unit.len());
    let mut chars = 0usize;
    for step in unit {
        let text = step.script().expect("only steps of text share a message");
        let len = text.chars().count();
        starts.push((chars, len));
        sql.push_str(text);
        chars += len;
        if !text.ends_with(';') {
            sql.push(';');
            chars += 1;
        }
        sql.push('\n');
        chars += 1;
    }
    let mut complete = 0usize;
    let failure = match client.simple_query_raw(&sql).await {
        Err(e) => Some(e),
        Ok(stream) => {
            futures::pin_mut!(stream);
            let mut failure = None;
            while let Some(message) = stream.next().await {
                match message {
                    Ok(tokio_postgres::SimpleQueryMessage::CommandComplete(_)) => complete += 1,
                    Ok(_) => {}
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            failure
        }
    };
    let Some(e) = failure else {
        return unit.iter().map(|_| Ok(())).collect();
    };
    let mut e = PgFailure::from(e);
    let failed = complete.min(unit.len() - 1);
    let (start, len) = starts[failed];
    e.position = e
        .position
        .and_then(|p| (p as usize).checked_sub(start))
        .filter(|p| (1..=len).contains(p))
        .and_then(|p| u32::try_from(p).ok());
    // Without a SQLSTATE the connection failed: whatever was not reported complete is
    // unknown, like a pipeline's requests still in flight.
    let skipped = match e.code {
        Some(_) => PgFailure::other("not run: an earlier statement of the same request failed"),
        None => e.clone(),
    };
    (0..unit.len())
        .map(|i| match i.cmp(&failed) {
            std::cmp::Ordering::Less => Ok(()),
            std::cmp::Ordering::Equal => Err(e.clone()),
            std::cmp::Ordering::Greater => Err(skipped.clone()),
        })
        .collect()
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
    let mut steps = steps.into_iter().enumerate().peekable();
    let mut in_flight = FuturesOrdered::new();
    let mut bytes = 0usize;
    let mut failed: Option<(usize, PgFailure)> = None;
    let mut waiting: Option<(usize, Vec<Step<'a>>)> = None;
    loop {
        while failed.is_none() && in_flight.len() < WINDOW_REQUESTS && bytes < WINDOW_BYTES {
            let Some((first, unit)) = waiting.take().or_else(|| next_message(&mut steps)) else {
                break;
            };
            if let [step @ Step::Copy { .. }] = unit[..] {
                if !in_flight.is_empty() {
                    waiting = Some((first, unit));
                    break;
                }
                let r = send_one(client, step).await;
                seen(first, &step, &r);
                if let Err(e) = r {
                    failed = Some((first, e));
                }
                continue;
            }
            let weight: usize = unit.iter().map(Step::weight).sum();
            bytes += weight;
            in_flight.push_back(async move {
                let results = send_unit(client, &unit).await;
                (first, unit, weight, results)
            });
        }
        let Some((first, unit, weight, results)) = in_flight.next().await else {
            break;
        };
        bytes -= weight;
        for (k, (step, result)) in unit.iter().zip(results).enumerate() {
            seen(first + k, step, &result);
            if let Err(e) = result {
                // Results arrive in order: the first error seen is the earliest.
                failed.get_or_insert((first + k, e));
            }
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

    /// The messages `steps` go out in, each as its steps' texts.
    fn shape<'a>(steps: Vec<Step<'a>>) -> Vec<Vec<&'a str>> {
        messages(steps)
            .into_iter()
            .map(|unit| {
                unit.iter()
                    .map(|s| s.script().unwrap_or("(alone)"))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn steps_of_text_share_a_message_that_ends_with_a_commit_or_a_claim() {
        assert_eq!(
            shape(vec![
                Step::Begin,
                Step::One("a"),
                Step::Claim("claim"),
                Step::One("body"),
                Step::One("stamp"),
                Step::Commit,
                Step::Begin,
                Step::One("c"),
            ]),
            vec![
                vec!["BEGIN", "a", "claim"],
                vec!["body", "stamp", "COMMIT"],
                vec!["BEGIN", "c"]
            ]
        );
        // Anything else goes alone, and cuts the run of text.
        assert_eq!(
            shape(vec![Step::One("a"), Step::Sql("x; y"), Step::One("b")]),
            vec![vec!["a"], vec!["(alone)"], vec!["b"]]
        );
    }

    #[test]
    fn a_message_holds_at_most_its_bytes_and_steps() {
        let big = "x".repeat(MESSAGE_BYTES / 2 + 1);
        assert_eq!(
            shape(vec![Step::One(&big), Step::One(&big), Step::One("z")]).len(),
            2
        );
        let many = vec![Step::One("s"); MESSAGE_STEPS + 1];
        let sizes: Vec<usize> = messages(many).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![MESSAGE_STEPS, 1]);
    }

    #[test]
    fn savepoint_steps_use_the_one_name() {
        for step in [Step::Savepoint, Step::Release, Step::RollbackTo] {
            assert!(step.control_sql().unwrap().ends_with(SAVEPOINT));
        }
        assert_eq!(Step::Sql("SELECT 1").control_sql(), None);
    }
}
