//! Running SQL under `lock_timeout` with retries: a statement that fails with
//! lock-not-available (SQLSTATE 55P03, matched by code) is retried after a
//! jittered backoff — inside a transaction under a savepoint ([`Target`]), so the
//! claim is kept — and while it waits, a watcher notes which lock it waits for and who
//! holds it, so the final error can say so.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::{self, Either};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::db::cluster::Node;
use crate::db::pgerror::PgFailure;
use crate::db::pipeline::{self, Step};
use crate::db::transaction::Transaction;
use crate::signal::{self, Interrupt};

/// How lock waits are bounded and retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub lock_timeout: Duration,
    /// Retries after the first try.
    pub retries: u32,
}

impl RetryPolicy {
    /// The pause before retry `n` (1-based): exponential from 100 ms, capped at
    /// 2 s, with ±50 % jitter so coordinators and app traffic do not fall into step.
    pub fn backoff(&self, n: u32) -> Duration {
        backoff(n)
    }
}

/// The pause before retry `n` (1-based) of anything pgconvoy retries: exponential from
/// 100 ms, capped at 2 s, with ±50 % jitter.
pub fn backoff(n: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1u32 << n.saturating_sub(1).min(5));
    let base = base.min(Duration::from_secs(2));
    base.mul_f64(0.5 + jitter())
}

/// A pseudo-random number in [0, 1): no crate needed for jitter.
fn jitter() -> f64 {
    static STATE: Mutex<u64> = Mutex::new(0);
    let mut s = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if *s == 0 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        *s = nanos ^ (u64::from(std::process::id()) << 32) | 1;
    }
    // xorshift64*
    let mut x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
}

/// A failure after retries, with what the statement was waiting for.
#[derive(Debug, Clone)]
pub struct Exhausted {
    pub failure: PgFailure,
    /// "AccessExclusiveLock on `orders` (blocked by pid 42 …)" when it was seen.
    pub waiting_for: Option<String>,
    pub tries: u32,
}

impl Exhausted {
    pub fn is_lock_timeout(&self) -> bool {
        self.failure.is(&SqlState::LOCK_NOT_AVAILABLE)
    }

    /// The failure, with the lock it could not get when it was a lock timeout.
    pub fn describe(&self, policy: &RetryPolicy) -> String {
        if !self.is_lock_timeout() {
            return self.failure.to_string();
        }
        let lock = self
            .waiting_for
            .clone()
            .unwrap_or_else(|| "a lock".to_string());
        format!(
            "could not get {lock} within the lock timeout of {} after {} tries: {}",
            crate::output::human::duration(policy.lock_timeout),
            self.tries,
            self.failure
        )
    }
}

/// Where a statement runs.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// Outside any transaction.
    Session(&'a Client),
    /// Inside a transaction that must survive a failed try: each try runs under a
    /// savepoint of it.
    Transaction(&'a Transaction),
}

impl Target<'_> {
    fn client(&self) -> &Client {
        match self {
            Target::Session(c) => c,
            Target::Transaction(tx) => tx.client(),
        }
    }
}

/// Runs `step` (one statement, or a COPY with its data) on `target`, retrying lock
/// timeouts; the interrupt ends a backoff. `on_retry(try, pause)` is told
/// before each pause. `failed_tries`: tries the caller already made that hit the lock
/// timeout.
pub async fn execute(
    target: Target<'_>,
    node: &Node,
    step: Step<'_>,
    policy: &RetryPolicy,
    on_retry: &(dyn Fn(u32, Duration) + Sync),
    failed_tries: u32,
) -> Result<(), Exhausted> {
    let client = target.client();
    let mut tries = failed_tries;
    let mut pid: Option<i32> = None;
    let seen = Mutex::new(None);
    if failed_tries > 0 {
        // The caller's own (pipelined) first try hit the lock timeout.
        pid = backend_pid(client).await;
        let pause = policy.backoff(tries);
        on_retry(tries, pause);
        signal::sleep(pause)
            .await
            .map_err(|i| interrupted(i, tries))?;
    }
    loop {
        tries += 1;
        let savepoint = match target {
            Target::Transaction(tx) => Some(
                tx.savepoint()
                    .await
                    .map_err(|e| exhausted(e, None, tries))?,
            ),
            Target::Session(_) => None,
        };
        let attempt = pipeline::send_one(client, step);
        // The first try runs unwatched: watching costs a connection, and most
        // statements never wait for a lock.
        let result = match pid {
            None => attempt.await,
            Some(pid) => {
                let watch = watch_lock(node, pid, policy.lock_timeout, &seen);
                futures::pin_mut!(attempt);
                futures::pin_mut!(watch);
                match future::select(attempt, watch).await {
                    Either::Left((r, _)) => r,
                    Either::Right(((), attempt)) => attempt.await,
                }
            }
        };
        match result {
            Ok(()) => {
                if let Some(savepoint) = savepoint {
                    savepoint
                        .release()
                        .await
                        .map_err(|e| exhausted(e, None, tries))?;
                }
                return Ok(());
            }
            Err(e) => {
                if let Some(savepoint) = savepoint {
                    // Roll back the try; the transaction (and the claim) live on.
                    let _ = savepoint.rollback().await;
                }
                if !e.is(&SqlState::LOCK_NOT_AVAILABLE) || tries > policy.retries {
                    let waiting = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    return Err(exhausted(e, waiting, tries));
                }
                if pid.is_none() {
                    pid = backend_pid(client).await;
                }
                let pause = policy.backoff(tries);
                on_retry(tries, pause);
                signal::sleep(pause)
                    .await
                    .map_err(|i| interrupted(i, tries))?;
            }
        }
    }
}

/// The server process of `client`'s session (for [`watch_lock`]).
pub async fn backend_pid(client: &Client) -> Option<i32> {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

/// A retry given up because the run was interrupted during its backoff.
fn interrupted(i: Interrupt, tries: u32) -> Exhausted {
    exhausted(PgFailure::other(format!("{i}: not retried")), None, tries)
}

fn exhausted(failure: PgFailure, waiting_for: Option<String>, tries: u32) -> Exhausted {
    Exhausted {
        failure,
        waiting_for,
        tries,
    }
}

/// Polls, from a connection of its own, which lock backend `pid` waits for and
/// who blocks it; never returns (it is raced against the statement).
pub async fn watch_lock(
    node: &Node,
    pid: i32,
    lock_timeout: Duration,
    seen: &Mutex<Option<String>>,
) {
    let period = (lock_timeout / 3).clamp(Duration::from_millis(20), Duration::from_millis(500));
    if let Ok(watcher) = node.dedicated().await {
        let client = &watcher.client;
        loop {
            if let Ok(Some(row)) = client.query_opt(WAITING_FOR, &[&pid]).await {
                let what: String = row.get(0);
                let blockers: Option<String> = row.get(1);
                let text = match blockers {
                    Some(b) => format!("{what} (blocked by {b})"),
                    None => what,
                };
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
            }
            tokio::time::sleep(period).await;
        }
    }
    future::pending::<()>().await
}

const WAITING_FOR: &str = "
SELECT l.mode || ' on ' || CASE WHEN l.relation IS NOT NULL
                                THEN '`' || l.relation::regclass::text || '`'
                                ELSE l.locktype END,
       (SELECT string_agg(format('pid %s (application %L, user %s, %s, transaction open %s): %s',
                                 a.pid, a.application_name, a.usename, a.state,
                                 date_trunc('second', now() - a.xact_start), left(a.query, 120)), '; ')
          FROM pg_stat_activity a
         WHERE a.pid = ANY (pg_blocking_pids($1)))
  FROM pg_locks l
 WHERE l.pid = $1 AND NOT l.granted
 LIMIT 1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let p = RetryPolicy {
            lock_timeout: Duration::from_millis(300),
            retries: 5,
        };
        for n in 1..20 {
            let d = p.backoff(n);
            assert!(d >= Duration::from_millis(50), "{n}: {d:?}");
            assert!(d < Duration::from_secs(3), "{n}: {d:?}");
        }
        let first: Vec<Duration> = (0..20).map(|_| p.backoff(1)).collect();
        assert!(first.iter().any(|d| *d != first[0]), "jitter varies");
        assert!(first.iter().all(|d| *d < Duration::from_millis(150)));
    }
}
