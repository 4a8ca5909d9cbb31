//! The dry run's findings: what each is about and how much it matters (those read off
//! the rehearsals are made in [`super::outcomes`]).

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
    /// A patch that cannot be rehearsed in one transaction although a real run may apply it.
    NotRehearsable,
    /// Patches that failed after an earlier failure of the same rehearsal, most likely
    /// because of it: one finding for all of them.
    NotRehearsed,
    /// A session held a lock a patch needs past the rehearsal's lock timeout.
    LockConflict,
    /// A patch waited for a lock, then got it within the lock timeout.
    LockWait,
    LongRunningSession,
    IdleInTransaction,
    ReplicationLag,
    SubscriptionDown,
    /// A Slony-I node's slon daemon is not running.
    SlonDown,
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
    /// A node has user tables but no ledger, and the first pending patch creates one of
    /// them: `stamp` is suggested.
    ExistingSchema,
    /// A node is new (no ledger, no user relations): a run gives it the newest baseline.
    Baseline,
}

/// One finding of the dry run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub severity: Level,
    pub kind: FindingKind,
    pub node: Option<String>,
    pub patch: Option<String>,
    pub message: String,
    /// Every node the finding is about, when it is about several (`node` is the first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
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
        nodes: Vec::new(),
    }
}

/// `a, b, c` — or, past `max`, `a, b, … and 7 more`: a finding names a few, the JSON
/// report has them all.
pub(super) fn list(items: &[String], max: usize) -> String {
    if items.len() <= max {
        items.join(", ")
    } else {
        format!(
            "{}, … and {} more",
            items[..max].join(", "),
            items.len() - max
        )
    }
}
