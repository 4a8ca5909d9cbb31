//! `direct` patches by two-phase commit (`--atomic`), and the checks a run
//! makes first: two-phase commit enabled, no prepared transactions left over.

use std::time::Instant;

use super::coordinator::{Coordinator, NodeFailure};
use super::RunReport;
use crate::db::cluster::Cluster;
use crate::db::decision::{commit_stages, evidence, Part};
use crate::db::ledger::{Book, Ledger};
use crate::db::lock::confirm_held;
use crate::db::prepared;
use crate::db::transaction::Transaction;
use crate::error::Error;
use crate::patches::patch::Patch;

/// Prepared transactions of an interrupted `--atomic` run hold locks and
/// half a decision: resolve them first.
pub(super) async fn refuse_leftover_prepared(
    cluster: &Cluster,
    ledger: &Ledger,
) -> Result<(), Error> {
    for node in &cluster.nodes {
        let session = node.session().await.map_err(|e| node.unreachable(e))?;
        let left = prepared::list(session.client(), ledger)
            .await
            .map_err(|failure| node.failed("list prepared transactions", failure))?;
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

/// `--atomic` needs `max_prepared_transactions > 0` on every node.
pub(super) async fn check_two_phase(cluster: &Cluster) -> Result<(), Error> {
    let mut refused = Vec::new();
    for node in &cluster.nodes {
        let session = node.session().await.map_err(|e| node.unreachable(e))?;
        let n: String = session
            .query_one("SELECT current_setting('max_prepared_transactions')", &[])
            .await
            .map_err(|e| node.unreachable(e.into()))?
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

impl Coordinator<'_> {
    /// A `direct` patch by two-phase commit: every node runs the body and
    /// prepares; only when all have prepared are they committed, the master's
    /// claim last. Before that, any failure rolls every part back.
    pub(super) async fn apply_atomic(
        &self,
        patch: &Patch,
        report: &mut RunReport,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let master = self.cluster.master();
        let session = master.session().await.map_err(|e| master.unreachable(e))?;
        let claim = Transaction::begin(session)
            .await
            .map_err(|e| Error::Claim {
                patch: patch.version,
                node: master.name().clone(),
                action: "open the claim transaction",
                failure: Box::new(e),
            })?;
        if let Err(e) = self.claim(claim.client(), patch).await {
            claim.rollback().await;
            return Err(e);
        }
        let replicas = self.replica_targets(patch);
        let master_part = async {
            self.body_in(&claim, 0, patch).await?;
            self.ledger
                .stamp_own(claim.client(), Book::Main, patch.version)
                .await
                .map_err(self.fail(0))
        };
        let (m, mut results) = tokio::join!(
            self.timed(patch, 0, master_part),
            self.fan_out(patch, &replicas, |i| self.prepare_on_replica(i, patch)),
        );
        results.push(m);
        let prepared: Vec<usize> = results
            .iter()
            .filter(|(i, _, r)| *i != 0 && r.is_ok())
            .map(|(i, _, _)| *i)
            .collect();
        let failure = match self.record(patch, results, report) {
            Some(failure) => {
                claim.rollback().await;
                Some(failure)
            }
            None => {
                let gid = prepared::gid(self.ledger, patch.version, &master.config);
                claim.prepare(&gid).await.err().map(|e| {
                    let mut f = NodeFailure::of(master.name(), e);
                    f.what = format!("PREPARE TRANSACTION: {}", f.what);
                    f.for_patch(patch)
                })
            }
        };
        if let Some(mut failure) = failure {
            if let Some(more) = self.unclaim(patch).await {
                failure.what = format!("{}; {more}", failure.what);
            }
            let unresolved = self.rollback_all(patch, prepared).await;
            self.patch_done(patch, started, false);
            return Err(Error::AtomicRolledBack {
                failure: Box::new(failure),
                unresolved,
            });
        }

        // Every node has prepared. Before the first COMMIT PREPARED makes the decision
        // binding, prove the lock is still ours: `recover`, run by whoever holds it, would
        // roll back what no node has committed yet.
        let mut order: Vec<usize> = replicas;
        if let Err(lost) = confirm_held(self.lock, self.cluster).await {
            order.push(0);
            for u in self.rollback_all(patch, order).await {
                self.note(format!(
                    "{}: left prepared for `pgconvoy recover`: {u}",
                    patch.version
                ));
            }
            self.patch_done(patch, started, false);
            return Err(lost);
        }
        // The decision is commit: driven to completion, the master's claim last.
        let stage = |nodes: &[usize]| -> Vec<Part<'_>> {
            nodes
                .iter()
                .map(|&i| Part {
                    node: self.node(i),
                    gid: prepared::gid(self.ledger, patch.version, &self.node(i).config),
                })
                .collect()
        };
        let ledger = self.ledger.clone();
        let version = patch.version;
        let evidence = evidence(move |c| {
            let ledger = ledger.clone();
            Box::pin(async move {
                let l = ledger.read(c).await?;
                Ok(l.main.get(&version).is_some_and(|r| r.is_done()))
            })
        });
        let completion = commit_stages(
            vec![stage(&order), stage(&[0])],
            self.commit_retry,
            &evidence,
            self.reporter,
        )
        .await;
        for n in completion.notes(&patch.version.to_string()) {
            self.note(n.clone());
            report.commit_retries.push(n);
        }
        if !completion.unresolved.is_empty() {
            return Err(Error::CommitPrepared {
                patch: patch.version,
                unresolved: completion.unresolved_lines(),
            });
        }
        self.patch_done(patch, started, true);
        Ok(())
    }

    /// Rolls back the prepared parts of `patch` on `nodes` (nothing committed anywhere:
    /// the decision is rollback); returns the ones that could not be resolved
    /// (`pgconvoy recover` finishes them). Once the run's lock session has ended the
    /// pool refuses sessions, so each gets a connection of its own: rolling back is what
    /// `recover` would decide too.
    async fn rollback_all(&self, patch: &Patch, nodes: Vec<usize>) -> Vec<String> {
        let mut left = Vec::new();
        for i in nodes {
            let gid = prepared::gid(self.ledger, patch.version, &self.node(i).config);
            let r = if self.cluster.inflight.lock_lost() {
                prepared::resolve_fresh(self.node(i), &gid, false).await
            } else {
                prepared::resolve(self.node(i), &gid, false).await
            };
            if let Err(e) = r {
                left.push(format!("'{gid}' on node `{}` ({e})", self.node(i).name()));
            }
        }
        left
    }

    /// A replica's part of an atomic `direct` patch: body, ledger row, PREPARE.
    async fn prepare_on_replica(&self, i: usize, patch: &Patch) -> Result<(), NodeFailure> {
        let session = self.node(i).session().await.map_err(self.fail(i))?;
        self.ensure(i, session.client(), Book::Main)
            .await
            .map_err(self.fail(i))?;
        let tx = Transaction::begin(session).await.map_err(self.fail(i))?;
        let work = async {
            self.ledger
                .record_start(tx.client(), Book::Main, patch, &self.applied_by)
                .await
                .map_err(self.fail(i))?;
            self.body_in(&tx, i, patch).await?;
            self.ledger
                .stamp_own(tx.client(), Book::Main, patch.version)
                .await
                .map_err(self.fail(i))
        };
        if let Err(f) = work.await {
            tx.rollback().await;
            return Err(f);
        }
        let gid = prepared::gid(self.ledger, patch.version, &self.node(i).config);
        tx.prepare(&gid).await.map_err(self.fail(i))
    }
}
