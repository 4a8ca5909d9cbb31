//! Catch-up: a node that lacks `direct`/`concurrent` patches the cluster has finished (a
//! new or restored replica) runs them, in order, before any new patch. No claim on the
//! master — the cluster already has those patches — only the node's own ledger rows,
//! written the way a fan-out writes them, under the same cluster lock, lock timeout,
//! retries and reporting. What to catch up is [`super::plan::catch_up`].

use std::time::Duration;

use futures::stream::{self, StreamExt};

use super::coordinator::{Coordinator, NodeFailure, Outcome, Timing};
use super::{CaughtUp, RunReport};
use crate::db::ledger::Book;
use crate::error::Error;
use crate::patches::patch::{Patch, PatchType};

impl Coordinator<'_> {
    /// Brings each node of `work` (node index, patches in version order) up to date, the
    /// nodes at most `jobs` at once, each one's patches one after the other. A node stops
    /// at its first failure; any failure fails the run before a new patch starts.
    pub(super) async fn catch_up(
        &self,
        work: &[(usize, Vec<&Patch>)],
        report: &mut RunReport,
    ) -> Result<(), Error> {
        if work.is_empty() {
            return Ok(());
        }
        for (i, patches) in work {
            self.note(format!(
                "node `{}` lacks {}, which the cluster has applied: catching it up first",
                self.node(*i).name(),
                versions(patches)
            ));
        }
        let outcomes: Vec<(usize, Vec<(&Patch, Outcome)>)> = stream::iter(work)
            .map(|(i, patches)| async move { (*i, self.catch_up_node(*i, patches).await) })
            .buffer_unordered(self.cluster.jobs)
            .collect()
            .await;
        let mut outcomes = outcomes;
        outcomes.sort_by_key(|(i, _)| *i);
        let mut failures: Vec<crate::error::PatchFailure> = Vec::new();
        for ((i, done), (_, patches)) in outcomes.into_iter().zip(work) {
            let mut applied = Vec::new();
            for (patch, outcome) in done {
                let ok = outcome.2.is_ok();
                if let Some(failure) = self.record(patch, vec![outcome], report) {
                    failures.push(failure);
                }
                if ok {
                    applied.push(patch.version.to_string());
                }
            }
            let missing = patches
                .iter()
                .map(|p| p.version.to_string())
                .filter(|v| !applied.contains(v))
                .collect();
            report.caught_up.push(CaughtUp {
                node: self.node(i).name().to_string(),
                applied,
                missing,
            });
        }
        if failures.is_empty() {
            return Ok(());
        }
        Err(Error::CatchUpFailed { failures })
    }

    /// One node's catch-up, in version order, stopping at the first failure (a later
    /// patch may build on the failed one).
    async fn catch_up_node<'p>(
        &self,
        i: usize,
        patches: &[&'p Patch],
    ) -> Vec<(&'p Patch, Outcome)> {
        let mut out = Vec::with_capacity(patches.len());
        for &patch in patches {
            if let Some(why) = crate::signal::tripped() {
                let failure = NodeFailure {
                    node: self.node(i).name().clone(),
                    what: format!("{why}: not started"),
                    line: None,
                    pg: None,
                };
                out.push((patch, (i, Timing::now(Duration::ZERO), Err(failure))));
                break;
            }
            let outcome = match patch.kind {
                PatchType::Direct => {
                    self.timed(patch, i, self.direct_on(i, Book::Main, patch))
                        .await
                }
                PatchType::Concurrent => self.timed(patch, i, self.concurrent_on(i, patch)).await,
                // The planner never asks a replica to run a std body.
                PatchType::Std => continue,
            };
            let failed = outcome.2.is_err();
            out.push((patch, outcome));
            if failed {
                break;
            }
        }
        out
    }
}

fn versions(patches: &[&Patch]) -> String {
    patches
        .iter()
        .map(|p| format!("`{}`", p.version))
        .collect::<Vec<_>>()
        .join(", ")
}
