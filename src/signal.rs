//! Ctrl-C and SIGTERM: the listener ([`interrupted`]) for the commands that cancel what
//! they started on the servers, and the process's interrupt, tripped by the first
//! signal ([`trip`]), which ends every wait that is not a statement on a server — the
//! wait for another coordinator (`--wait`), lock-timeout backoffs, replication waits —
//! so a run unwinds within moments. Statements on the servers are cancelled through
//! their cancel tokens.
//!
//! The interrupt is process-wide on purpose: a signal is, and the waits live in
//! primitives (retries, the cluster lock) that should not carry a handle through every
//! call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// Resolves on Ctrl-C or (on Unix) SIGTERM, naming which.
pub async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted (Ctrl-C)",
                _ = term.recv() => "terminated (SIGTERM)",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "interrupted (Ctrl-C)"
}

/// Set once, never cleared: after an interrupt the process only unwinds.
struct State {
    tripped: AtomicBool,
    why: Mutex<Option<&'static str>>,
    notify: Notify,
}

static STATE: State = State {
    tripped: AtomicBool::new(false),
    why: Mutex::new(None),
    notify: Notify::const_new(),
};

/// A wait ended by the interrupt; says which signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Interrupt(pub &'static str);

/// Trips the interrupt (`why`: what [`interrupted`] said). Returns whether it had
/// tripped already (a second signal).
pub fn trip(why: &'static str) -> bool {
    let was = STATE.tripped.swap(true, Ordering::SeqCst);
    if !was {
        *STATE.why.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }
    STATE.notify.notify_waiters();
    was
}

/// Whether the interrupt has tripped, and by which signal.
pub fn tripped() -> Option<Interrupt> {
    if !STATE.tripped.load(Ordering::SeqCst) {
        return None;
    }
    let why = STATE.why.lock().unwrap_or_else(|p| p.into_inner());
    Some(Interrupt(why.unwrap_or("interrupted")))
}

/// Resolves once the interrupt trips (at once if it has).
pub async fn wait() -> Interrupt {
    loop {
        let notified = STATE.notify.notified();
        tokio::pin!(notified);
        // Registered before the check, so a trip in between is not missed.
        notified.as_mut().enable();
        if let Some(i) = tripped() {
            return i;
        }
        notified.await;
    }
}

/// Sleeps for `how_long`, unless the interrupt trips first.
pub async fn sleep(how_long: Duration) -> Result<(), Interrupt> {
    tokio::select! {
        () = tokio::time::sleep(how_long) => Ok(()),
        i = wait() => Err(i),
    }
}
