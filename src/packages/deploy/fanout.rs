//! Fanning a deploy out: one transaction per node, committed each on its own,
//! by two-phase commit (`--atomic`), or rolled back (the dry run); and the
//! checks two-phase commit needs first.

use super::*;
use crate::db::decision::{commit_stages, evidence, Part};
use crate::db::lock::confirm_held;

impl Run<'_> {
    /// One transaction per node, concurrently; a node that fails rolls back
    /// alone, the others commit.
    pub(super) async fn apply(
        &self,
        targets: &[usize],
        plans: &[Vec<Step>],
        report: &mut DeployReport,
    ) -> Result<(), Error> {
        let results: Vec<(usize, Duration, Result<(), DeployFailure>)> = stream::iter(targets)
            .map(|&i| async move {
                let started = Instant::now();
                let r = self.on_node(i, &plans[i], Finish::Commit).await;
                self.node_done(i, started.elapsed(), r.as_ref().err(), "deployed");
                (i, started.elapsed(), r)
            })
            .buffer_unordered(self.cluster.jobs)
            .collect()
            .await;
        let mut failures = Vec::new();
        for (i, elapsed, r) in results {
            let n = &mut report.nodes[i];
            n.duration_ms = Some(elapsed.as_millis() as u64);
            match r {
                Ok(()) => n.outcome = NodeOutcome::Committed,
                Err(f) => {
                    n.outcome = NodeOutcome::RolledBack;
                    n.error = Some(f.clone());
                    failures.push((i, f));
                }
            }
        }
        fail_if_any(failures, AfterFailure::OthersCommitted)
    }

    /// `--atomic`: every node prepares; only when all have prepared are they
    /// committed (the master last). Before that, any failure rolls every part back.
    pub(super) async fn apply_atomic(
        &self,
        targets: &[usize],
        plans: &[Vec<Step>],
        report: &mut DeployReport,
    ) -> Result<(), Error> {
        let results: Vec<(usize, Duration, Result<(), DeployFailure>)> = stream::iter(targets)
            .map(|&i| async move {
                let started = Instant::now();
                let gid = self.gid(i);
                let r = self.on_node(i, &plans[i], Finish::Prepare(&gid)).await;
                self.node_done(i, started.elapsed(), r.as_ref().err(), "prepared");
                (i, started.elapsed(), r)
            })
            .buffer_unordered(self.cluster.jobs)
            .collect()
            .await;
        let mut failures = Vec::new();
        let mut prepared_nodes = Vec::new();
        for (i, elapsed, r) in results {
            report.nodes[i].duration_ms = Some(elapsed.as_millis() as u64);
            match r {
                Ok(()) => prepared_nodes.push(i),
                Err(f) => failures.push((i, f)),
            }
        }
        if !failures.is_empty() {
            let mut left = Vec::new();
            for &i in &prepared_nodes {
                report.nodes[i].outcome = NodeOutcome::RolledBackWithOthers;
                if let Err(e) = prepared::resolve(self.node(i), &self.gid(i), false).await {
                    left.push(format!(
                        "'{}' on node `{}` ({e})",
                        self.gid(i),
                        self.node(i).name()
                    ));
                }
            }
            for (i, f) in &failures {
                report.nodes[*i].outcome = NodeOutcome::RolledBack;
                report.nodes[*i].error = Some(f.clone());
            }
            return fail_if_any(failures, AfterFailure::AllRolledBack { unresolved: left });
        }
        // Every node has prepared. Before the first COMMIT PREPARED makes the decision
        // binding, prove the lock is still ours (`recover`, run by whoever holds it,
        // would roll back what no node has committed yet).
        if let Some(lock) = self.lock {
            if let Err(lost) = confirm_held(lock, self.cluster).await {
                for &i in &prepared_nodes {
                    report.nodes[i].outcome = NodeOutcome::RolledBackWithOthers;
                    if let Err(e) = prepared::resolve_fresh(self.node(i), &self.gid(i), false).await
                    {
                        note(
                            self.reporter,
                            report,
                            format!(
                                "left prepared for `pgconvoy recover`: '{}' on node `{}` ({e})",
                                self.gid(i),
                                self.node(i).name()
                            ),
                        );
                    }
                }
                return Err(lost);
            }
        }
        // The decision is commit: driven to completion, the master last.
        let (masters, replicas): (Vec<usize>, Vec<usize>) =
            prepared_nodes.iter().partition(|&&i| i == 0);
        let stage = |nodes: &[usize]| -> Vec<Part<'_>> {
            nodes
                .iter()
                .map(|&i| Part {
                    node: self.node(i),
                    gid: self.gid(i),
                })
                .collect()
        };
        let book = self.book.clone();
        let id = self.deploy_id.clone();
        let evidence = evidence(move |c| {
            let (book, id) = (book.clone(), id.clone());
            Box::pin(async move { book.committed(c, &id).await })
        });
        let completion = commit_stages(
            vec![stage(&replicas), stage(&masters)],
            self.commit_retry,
            &evidence,
            self.reporter,
        )
        .await;
        for n in completion.notes("deploy") {
            note(self.reporter, report, n);
        }
        for i in prepared_nodes {
            let gid = self.gid(i);
            if !completion.unresolved.iter().any(|u| u.gid == gid) {
                report.nodes[i].outcome = NodeOutcome::Committed;
            }
        }
        if !completion.unresolved.is_empty() {
            return Err(Error::DeployCommitPrepared {
                unresolved: completion.unresolved_lines(),
            });
        }
        Ok(())
    }

    /// The dry run: every node's transaction, rolled back whatever happens.
    pub(super) async fn rehearse(
        &self,
        targets: &[usize],
        plans: &[Vec<Step>],
        report: &mut DeployReport,
    ) -> Result<(), Error> {
        let results: Vec<(usize, Duration, Result<(), DeployFailure>)> = stream::iter(targets)
            .map(|&i| async move {
                let started = Instant::now();
                let r = self.on_node(i, &plans[i], Finish::Rehearse).await;
                self.node_done(i, started.elapsed(), r.as_ref().err(), "rehearsed");
                (i, started.elapsed(), r)
            })
            .buffer_unordered(self.cluster.jobs)
            .collect()
            .await;
        let mut failures = Vec::new();
        for (i, elapsed, r) in results {
            let n = &mut report.nodes[i];
            n.duration_ms = Some(elapsed.as_millis() as u64);
            match r {
                Ok(()) => n.outcome = NodeOutcome::Rehearsed,
                Err(f) => {
                    n.outcome = NodeOutcome::RehearsalFailed;
                    n.error = Some(f.clone());
                    failures.push((i, f));
                }
            }
        }
        fail_if_any(failures, AfterFailure::Rehearsal)
    }

    pub(super) fn node_done(
        &self,
        i: usize,
        elapsed: Duration,
        failure: Option<&DeployFailure>,
        done: &str,
    ) {
        let node = self.node(i).name();
        let line = match failure {
            None => format!("node `{node}`: {done} in {}", human::duration(elapsed)),
            Some(f) => format!(
                "node `{node}`: FAILED after {}: {f}",
                human::duration(elapsed)
            ),
        };
        self.reporter.event(&Event::Note(&line));
    }

    pub(super) fn gid(&self, i: usize) -> String {
        prepared::deploy_gid(&self.ledger, &self.deploy_id, &self.node(i).config)
    }

    /// Prepared transactions of an interrupted `--atomic` run hold locks and
    /// half a decision: resolve them first.
    pub(super) async fn refuse_leftover_prepared(&self, targets: &[usize]) -> Result<(), Error> {
        for &i in targets {
            let node = self.node(i);
            let session = node.session().await.map_err(|e| node.unreachable(e))?;
            let left = prepared::list(session.client(), &self.ledger)
                .await
                .map_err(|e| self.read_failed(node, "list prepared transactions", e))?;
            if let Some(p) = left.first() {
                return Err(Error::PreparedLeftover {
                    node: node.name().clone(),
                    gid: p.gid.clone(),
                    since: p.prepared_at.clone(),
                });
            }
        }
        Ok(())
    }

    /// `--atomic` needs `max_prepared_transactions > 0` on every node it deploys to.
    pub(super) async fn check_two_phase(&self, targets: &[usize]) -> Result<(), Error> {
        let mut refused = Vec::new();
        for &i in targets {
            let node = self.node(i);
            let session = node.session().await.map_err(|e| node.unreachable(e))?;
            let n: String = session
                .query_one("SELECT current_setting('max_prepared_transactions')", &[])
                .await
                .map_err(|e| self.read_failed(node, "read max_prepared_transactions", e.into()))?
                .get(0);
            if n.trim() == "0" {
                refused.push(node.name().clone());
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(Error::TwoPhaseDisabled { nodes: refused })
        }
    }
}

/// The run's error when some nodes failed: every failure, in node order, and what
/// became of the other nodes.
fn fail_if_any(
    mut failures: Vec<(usize, DeployFailure)>,
    after: AfterFailure,
) -> Result<(), Error> {
    if failures.is_empty() {
        return Ok(());
    }
    failures.sort_by_key(|(i, _)| *i);
    Err(Error::DeployFailed {
        failures: failures.into_iter().map(|(_, f)| f).collect(),
        after,
    })
}
