//! The dry run's findings: what each is about, how much it matters, and the findings
//! read off a node's first look and off a rehearsal.

use super::rehearsal::{Outcome, PatchRehearsal};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The run would fail or wait: the dry run exits 1.
    Blocking,
    /// Worth knowing before the window; does not fail the dry run.
    Warning,
}

/// What a finding is about; the JSON report names it in kebab-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    Unreachable,
    /// A node's recovery state contradicts the configured topology (e.g. a standby where
    /// a writable node is expected).
    Topology,
    /// Another coordinator holds the cluster lock right now.
    CoordinatorRunning,
    RehearsalFailed,
    /// A session held a lock a patch needs past the rehearsal's lock timeout.
    LockConflict,
    /// A patch waited for a lock, then got it within the lock timeout.
    LockWait,
    LongRunningSession,
    IdleInTransaction,
    ReplicationLag,
    SubscriptionDown,
    InactiveSlot,
    InvalidIndex,
    PreparedTransaction,
    UnfinishedLedgerRow,
    /// A replica lacks `direct`/`concurrent` patches the master has applied.
    Divergence,
    Drift,
    /// `--patch-type` refuses the next group.
    Refused,
    /// Sessions to another machine whose server is not verified (`sslmode` below
    /// `verify-full`): a warning, never blocking.
    WeakTls,
}

/// One finding of the dry run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub severity: Level,
    pub kind: FindingKind,
    pub node: Option<String>,
    pub patch: Option<String>,
    pub message: String,
}

pub(super) fn finding(
    severity: Level,
    kind: FindingKind,
    node: Option<&str>,
    patch: Option<&str>,
    message: String,
) -> Finding {
    Finding {
        severity,
        kind,
        node: node.map(str::to_string),
        patch: patch.map(str::to_string),
        message,
    }
}

pub(super) fn rehearsal_findings(node: &str, p: &PatchRehearsal) -> Vec<Finding> {
    let mut out = Vec::new();
    let after = if p.after_failed.is_empty() {
        String::new()
    } else {
        format!(
            " (after the failure of {} earlier in this rehearsal, which it may depend on)",
            p.after_failed.join(", ")
        )
    };
    let error = p.error.as_ref().map(|e| e.text.as_str()).unwrap_or("");
    match p.outcome {
        Outcome::Failed if p.lock_timed_out() => out.push(finding(
            Level::Blocking,
            FindingKind::LockConflict,
            Some(node),
            Some(&p.patch),
            format!(
                "patch `{}` would be blocked on node `{node}`: {error}",
                p.patch
            ),
        )),
        Outcome::Failed | Outcome::NotRehearsed => out.push(finding(
            Level::Blocking,
            FindingKind::RehearsalFailed,
            Some(node),
            Some(&p.patch),
            format!("patch `{}` fails on node `{node}`: {error}{after}", p.patch),
        )),
        Outcome::Ok if !p.blockers.is_empty() => {
            let who: Vec<String> = p.blockers.iter().map(|b| b.describe()).collect();
            out.push(finding(
                Level::Warning,
                FindingKind::LockWait,
                Some(node),
                Some(&p.patch),
                format!(
                    "patch `{}` on node `{node}` waited for {} held by {}, and got it within the lock timeout",
                    p.patch,
                    p.blockers[0].waiting_for,
                    who.join("; ")
                ),
            ));
        }
        _ => {}
    }
    out
}
