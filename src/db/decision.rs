//! Driving a two-phase commit decision to completion: once every part is prepared and
//! the coordinator decided to commit, `COMMIT PREPARED` is retried on fresh connections
//! to every node that did not confirm, for a bounded time, before `recover` is left to
//! finish. A transaction manager that gives up at the first lost connection leaves a
//! node holding a prepared transaction (and its locks) while the rest of the cluster
//! already has the change.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::config::NodeName;
use crate::db::cluster::Node;
use crate::db::pgerror::PgFailure;
use crate::db::prepared::verb;
use crate::db::quote::quote_literal;
use crate::db::retry::backoff;
use crate::progress::{Event, Reporter};

/// One prepared part of a decided commit: the node and the gid it prepared under.
pub struct Part<'a> {
    pub node: &'a Node,
    pub gid: String,
}

/// Whether a part whose prepared transaction is gone from its node did commit, judged
/// from its own effect on that node (a ledger row done, package records), asked on the
/// retry's connection. A `COMMIT PREPARED` whose answer was lost with its connection
/// may well have committed.
pub type Evidence<'e> = dyn for<'c> Fn(&'c tokio_postgres::Client) -> BoxFuture<'c, Result<bool, PgFailure>>
    + Send
    + Sync
    + 'e;

/// Gives a closure the signature [`Evidence`] needs (closures do not infer a return type
/// that borrows from their argument on their own).
pub fn evidence<F>(f: F) -> F
where
    F: for<'c> Fn(&'c tokio_postgres::Client) -> BoxFuture<'c, Result<bool, PgFailure>>
        + Send
        + Sync,
{
    f
}

/// A part whose first `COMMIT PREPARED` did not confirm and a later try did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Retried {
    pub node: NodeName,
    pub gid: String,
    /// Tries in all, the first included.
    pub attempts: u32,
    /// From the first failure to the confirmation.
    pub waited_ms: u128,
    /// Why the first try failed.
    pub first_error: String,
}

/// How driving the decision went.
#[derive(Debug, Default)]
pub struct Completion {
    /// Parts that needed more than one try, in the order they confirmed.
    pub retried: Vec<Retried>,
    /// Parts not confirmed when the time ran out (or that can no longer be committed),
    /// for `recover` to finish.
    pub unresolved: Vec<Unconfirmed>,
}

/// A part a decided commit could not confirm.
#[derive(Debug, Clone)]
pub struct Unconfirmed {
    pub node: NodeName,
    pub gid: String,
    /// The last failure, in words.
    pub why: String,
}

impl std::fmt::Display for Unconfirmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "'{}' on node `{}` ({})", self.gid, self.node, self.why)
    }
}

impl Completion {
    /// The unconfirmed parts in words, as the errors carry them.
    pub fn unresolved_lines(&self) -> Vec<String> {
        self.unresolved.iter().map(ToString::to_string).collect()
    }

    /// One line per retried part, for a run's notes.
    pub fn notes(&self, what: &str) -> Vec<String> {
        self.retried
            .iter()
            .map(|r| {
                format!(
                    "{what}: COMMIT PREPARED on node `{}` needed {} tries over {} ms (first: {})",
                    r.node, r.attempts, r.waited_ms, r.first_error
                )
            })
            .collect()
    }
}

/// A part still to confirm.
struct Open<'a> {
    part: Part<'a>,
    attempts: u32,
    first_failed: Instant,
    first_error: String,
    last_error: String,
}

/// Commits the parts stage by stage (a stage confirms, or runs out of time, before the
/// next one starts: the master's claim goes last so that the master's ledger never shows
/// a patch done while a replica's part is only prepared, unless `window` ran out). Each
/// part gets a first try on `first_try`'s session; the ones that fail are retried on
/// fresh connections with backoff until confirmed or `window` (counted from the first
/// failure) has passed; every part gets at least one try.
pub async fn commit_stages(
    stages: Vec<Vec<Part<'_>>>,
    window: Duration,
    evidence: &Evidence<'_>,
    reporter: &dyn Reporter,
) -> Completion {
    let mut completion = Completion::default();
    let mut deadline: Option<Instant> = None;
    for stage in stages {
        let mut open = Vec::new();
        for part in stage {
            if let Err(e) = first_try(&part).await {
                let why = e.to_string();
                reporter.event(&Event::Note(&format!(
                    "COMMIT PREPARED '{}' on node `{}` failed ({why}): retrying on fresh connections for up to {} s",
                    part.gid,
                    part.node.name(),
                    window.as_secs()
                )));
                let now = Instant::now();
                deadline.get_or_insert(now + window);
                open.push(Open {
                    part,
                    attempts: 1,
                    first_failed: now,
                    first_error: why.clone(),
                    last_error: why,
                });
            }
        }
        let deadline = deadline.unwrap_or_else(Instant::now);
        retry_until(&mut open, deadline, evidence, &mut completion).await;
        completion
            .unresolved
            .extend(open.iter().map(|o| unresolved(&o.part, &o.last_error)));
    }
    completion
}

/// The first try, on a pooled session as any other statement of the run.
async fn first_try(part: &Part<'_>) -> Result<(), PgFailure> {
    let session = part.node.session().await?;
    session
        .batch_execute(&format!("{} {}", verb(true), quote_literal(&part.gid)))
        .await
        .map_err(|e| part.node.explain(e.into()))
}

/// Retries the open parts round after round until each is confirmed or given up, or the
/// deadline passes (each part still gets one more try per round).
async fn retry_until(
    open: &mut Vec<Open<'_>>,
    deadline: Instant,
    evidence: &Evidence<'_>,
    completion: &mut Completion,
) {
    let mut round = 0;
    while !open.is_empty() {
        round += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(backoff(round).min(left)).await;
        let mut still = Vec::new();
        for mut o in open.drain(..) {
            o.attempts += 1;
            // A try never outlives the window: a node that dropped off the network would
            // otherwise hold it for as long as the keepalives take.
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(500));
            let tried = tokio::time::timeout(left, retry_once(&o.part, evidence)).await;
            match tried {
                Ok(Ok(Confirmed::Committed)) => completion.retried.push(Retried {
                    node: o.part.node.name().clone(),
                    gid: o.part.gid.clone(),
                    attempts: o.attempts,
                    waited_ms: o.first_failed.elapsed().as_millis(),
                    first_error: o.first_error.clone(),
                }),
                Ok(Ok(Confirmed::Vanished)) => completion.unresolved.push(unresolved(
                    &o.part,
                    "the prepared transaction is gone and its effect is not on the node: someone else rolled it back",
                )),
                Ok(Err(e)) => {
                    o.last_error = e.to_string();
                    still.push(o);
                }
                Err(_) => {
                    o.last_error = format!("no answer within {} ms", left.as_millis());
                    still.push(o);
                }
            }
        }
        *open = still;
    }
}

enum Confirmed {
    Committed,
    /// Gone from the node without its effect.
    Vanished,
}

/// One retry on a fresh connection (outside the pool, which may hold the dead one, and
/// not refused when the run's lock session has ended: the decision is already made).
/// Looks before it commits: a transaction no longer prepared was either committed by a
/// try whose answer was lost, or rolled back by someone else.
async fn retry_once(part: &Part<'_>, evidence: &Evidence<'_>) -> Result<Confirmed, PgFailure> {
    let c = part.node.dedicated().await?;
    let prepared: i64 = c
        .client
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1",
            &[&part.gid],
        )
        .await?
        .get(0);
    if prepared > 0 {
        c.client
            .batch_execute(&format!("{} {}", verb(true), quote_literal(&part.gid)))
            .await?;
        return Ok(Confirmed::Committed);
    }
    if evidence(&c.client).await? {
        Ok(Confirmed::Committed)
    } else {
        Ok(Confirmed::Vanished)
    }
}

fn unresolved(part: &Part<'_>, why: &str) -> Unconfirmed {
    Unconfirmed {
        node: part.node.name().clone(),
        gid: part.gid.clone(),
        why: why.to_string(),
    }
}
