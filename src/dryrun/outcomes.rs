//! The findings read off every node's rehearsal, one per root cause: a patch that fails
//! the same way on several nodes is one finding naming them, and the patches that failed
//! after it are one more.

use super::findings::{finding, list, Finding, FindingKind, Level};
use super::rehearsal::{Outcome, PatchRehearsal};
use super::report::NodeReport;
use crate::patches::patch::PatchType;

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
