//! The dry run's findings: what each is about, how much it matters, and the findings
//! read off a node's first look and off a rehearsal.

use super::rehearsal::{Outcome, PatchRehearsal};
use super::report::NodeReport;
use crate::patches::patch::PatchType;

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

/// `node `a``, or `nodes `a`, `b``.
fn on_nodes(nodes: &[String]) -> String {
    let quoted: Vec<String> = nodes.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [one] => format!("node {one}"),
        _ => format!("nodes {}", list(&quoted, 8)),
    }
}

/// Pushes `item` unless present, keeping first-seen order.
fn add(v: &mut Vec<String>, item: &str) {
    if !v.iter().any(|x| x == item) {
        v.push(item.to_string());
    }
}

/// The findings of every node's rehearsal, one per root cause: a patch that fails the same
/// way on several nodes is one finding naming them; the patches that failed after it are
/// one finding, "not rehearsed (after …)".
pub(super) fn rehearsal_findings(nodes: &[NodeReport]) -> Vec<Finding> {
    let mut out = Vec::new();
    // (patch, error text) -> nodes, in first-seen order.
    let mut failures: Vec<(&PatchRehearsal, Vec<String>)> = Vec::new();
    // why -> (nodes, patches): nodes that could not rehearse at all from some patch on.
    let mut unrehearsed: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    // root patch -> (nodes, patches after it).
    let mut after: Vec<(String, bool, Vec<String>, Vec<String>)> = Vec::new();
    // (patch, reason) -> nodes.
    let mut unrehearsable: Vec<(&PatchRehearsal, Vec<String>)> = Vec::new();
    for n in nodes {
        let node = n.name.as_str();
        for p in &n.patches {
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
                Outcome::NotRehearsed if p.after.is_some() => {
                    let root = p.after.clone().unwrap_or_default();
                    let unrehearsable_root = n
                        .patches
                        .iter()
                        .any(|q| q.patch == root && q.outcome == Outcome::NotRehearsable);
                    match after.iter_mut().find(|(r, _, _, _)| *r == root) {
                        Some((_, _, ns, ps)) => {
                            add(ns, node);
                            add(ps, &p.patch);
                        }
                        None => after.push((
                            root,
                            unrehearsable_root,
                            vec![node.to_string()],
                            vec![p.patch.clone()],
                        )),
                    }
                }
                Outcome::NotRehearsed if p.error.as_ref().is_some_and(|e| e.line.is_none()) => {
                    match unrehearsed.iter_mut().find(|(w, _, _)| w == error) {
                        Some((_, ns, ps)) => {
                            add(ns, node);
                            add(ps, &p.patch);
                        }
                        None => unrehearsed.push((
                            error.to_string(),
                            vec![node.to_string()],
                            vec![p.patch.clone()],
                        )),
                    }
                }
                Outcome::Failed | Outcome::NotRehearsed => {
                    match failures.iter_mut().find(|(q, _)| {
                        q.patch == p.patch
                            && q.error.as_ref().map(|e| &e.text)
                                == p.error.as_ref().map(|e| &e.text)
                    }) {
                        Some((_, ns)) => add(ns, node),
                        None => failures.push((p, vec![node.to_string()])),
                    }
                }
                Outcome::NotRehearsable
                    if p.reason.is_some() && p.patch_type != PatchType::Concurrent =>
                {
                    match unrehearsable
                        .iter_mut()
                        .find(|(q, _)| q.patch == p.patch && q.reason == p.reason)
                    {
                        Some((_, ns)) => add(ns, node),
                        None => unrehearsable.push((p, vec![node.to_string()])),
                    }
                }
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
        }
    }
    for (p, ns) in failures {
        let error = p.error.as_ref().map(|e| e.text.as_str()).unwrap_or("");
        let mut f = finding(
            Level::Blocking,
            FindingKind::RehearsalFailed,
            ns.first().map(String::as_str),
            Some(&p.patch),
            format!("patch `{}` fails on {}: {error}", p.patch, on_nodes(&ns)),
        );
        f.nodes = ns;
        out.push(f);
    }
    for (why, ns, ps) in unrehearsed {
        let mut f = finding(
            Level::Blocking,
            FindingKind::RehearsalFailed,
            ns.first().map(String::as_str),
            ps.first().map(String::as_str),
            format!(
                "{} patch(es) not rehearsed on {}: {why} ({})",
                ps.len(),
                on_nodes(&ns),
                list(&ps, 10)
            ),
        );
        f.nodes = ns;
        out.push(f);
    }
    for (p, ns) in unrehearsable {
        let mut f = finding(
            Level::Warning,
            FindingKind::NotRehearsable,
            ns.first().map(String::as_str),
            Some(&p.patch),
            format!(
                "patch `{}` on {}: {}",
                p.patch,
                on_nodes(&ns),
                p.reason
                    .as_deref()
                    .unwrap_or("not rehearsable in one transaction")
            ),
        );
        f.nodes = ns;
        out.push(f);
    }
    for (root, unrehearsable_root, ns, ps) in after {
        let because = if unrehearsable_root {
            format!("after `{root}`, which could not be rehearsed")
        } else {
            format!("after `{root}` failed")
        };
        let mut f = finding(
            Level::Warning,
            FindingKind::NotRehearsed,
            ns.first().map(String::as_str),
            Some(&root),
            format!(
                "not rehearsed ({because}): {} patch(es) failed after it on {}, most likely because of it: {}",
                ps.len(),
                on_nodes(&ns),
                list(&ps, 10)
            ),
        );
        f.nodes = ns;
        out.push(f);
    }
    out
}
