//! `direct` patches by two-phase commit (`--atomic`), and the checks a run
//! makes first: two-phase commit enabled, no prepared transactions left over.

use super::*;

/// Prepared transactions of an interrupted `--atomic` run hold locks and
/// half a decision: resolve them first.
pub(super) async fn refuse_leftover_prepared(
    cluster: &Cluster,
    ledger: &Ledger,
) -> Result<(), Error> {
    for node in &cluster.nodes {
        let session = node
            .session()
            .await
            .map_err(|e| node_unreachable(node, &e))?;
        let left = prepared::list(session.client(), ledger)
            .await
            .map_err(|e| {
                Error::Failed(format!(
                    "cannot list prepared transactions on node `{}`: {e}",
                    node.name()
                ))
            })?;
        if let Some(p) = left.first() {
            return Err(Error::Failed(format!(
                "node `{}` holds prepared transaction '{}' (since {}) from an interrupted --atomic run; run `pgconvoy recover` first",
                node.name(),
                p.gid,
                p.prepared_at
            )));
        }
    }
    Ok(())
}

/// `--atomic` needs `max_prepared_transactions > 0` on every node.
pub(super) async fn check_two_phase(cluster: &Cluster) -> Result<(), Error> {
    let mut refused = Vec::new();
    for node in &cluster.nodes {
        let session = node
            .session()
            .await
            .map_err(|e| node_unreachable(node, &e))?;
        let n: String = session
            .query_one("SELECT current_setting('max_prepared_transactions')", &[])
            .await
            .map_err(|e| node_unreachable(node, &PgFailure::from_pg(&e)))?
            .get(0);
        if n.trim() == "0" {
            refused.push(format!("`{}`", node.name()));
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(Error::BadInput(format!(
            "--atomic (atomic_direct) needs two-phase commit, but max_prepared_transactions = 0 on node(s) {}; set it > 0 (a server restart) or run without --atomic; nothing was applied",
            refused.join(", ")
        )))
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
        let claim_session = master
            .session()
            .await
            .map_err(|e| node_unreachable(master, &e))?;
        let claim = claim_session.client();
        claim.batch_execute("BEGIN").await.map_err(|e| {
            Error::Failed(format!(
                "patch `{}`: cannot open the claim transaction on master node `{}`: {}",
                patch.version,
                master.name(),
                PgFailure::from_pg(&e)
            ))
        })?;
        if let Err(e) = self.claim(claim, patch).await {
            let _ = claim.batch_execute("ROLLBACK").await;
            return Err(e);
        }
        let replicas = self.replica_targets(patch);
        let master_part = async {
            self.body_in(claim, 0, patch).await?;
            self.ledger
                .stamp(claim, Book::Main, patch.version)
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
        let mut failure = self.record(patch, results, report);
        if failure.is_none() {
            let gid = prepared::gid(self.ledger, patch.version, &master.config);
            if let Err(e) = claim
                .batch_execute(&format!("PREPARE TRANSACTION {}", quote_literal(&gid)))
                .await
            {
                failure = Some(format!(
                    "patch `{}` failed on node `{}`: PREPARE TRANSACTION: {}",
                    patch.version,
                    master.name(),
                    PgFailure::from_pg(&e)
                ));
            }
        }
        if let Some(failure) = failure {
            let _ = claim.batch_execute("ROLLBACK").await;
            let mut left = Vec::new();
            for i in prepared {
                let gid = prepared::gid(self.ledger, patch.version, &self.node(i).config);
                if let Err(e) = prepared::resolve(self.node(i), &gid, false).await {
                    left.push(format!("'{gid}' on node `{}` ({e})", self.node(i).name()));
                }
            }
            self.patch_done(patch, started, false);
            let mut message = format!("{failure}; rolled back on every node (--atomic)");
            if !left.is_empty() {
                message.push_str(&format!(
                    "; could not roll back prepared transaction(s) {}: run `pgconvoy recover`",
                    left.join(", ")
                ));
            }
            return Err(Error::Failed(message));
        }

        // Every node has prepared: the decision is commit.
        let mut order: Vec<usize> = self.replica_targets(patch);
        order.push(0);
        let mut left = Vec::new();
        for i in order {
            let gid = prepared::gid(self.ledger, patch.version, &self.node(i).config);
            if let Err(e) = prepared::resolve(self.node(i), &gid, true).await {
                left.push(format!("'{gid}' on node `{}` ({e})", self.node(i).name()));
            }
        }
        if !left.is_empty() {
            return Err(Error::Failed(format!(
                "patch `{}`: prepared on every node, but COMMIT PREPARED failed for {}: run `pgconvoy recover` to finish the commit",
                patch.version,
                left.join(", ")
            )));
        }
        self.patch_done(patch, started, true);
        Ok(())
    }

    /// A replica's part of an atomic `direct` patch: body, ledger row, PREPARE.
    pub(super) async fn prepare_on_replica(
        &self,
        i: usize,
        patch: &Patch,
    ) -> Result<(), NodeFailure> {
        let session = self.node(i).session().await.map_err(self.fail(i))?;
        let client = session.client();
        self.ensure(i, client, Book::Main)
            .await
            .map_err(self.fail(i))?;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| self.fail(i)(e.into()))?;
        let work = async {
            self.ledger
                .record_start(client, Book::Main, patch, &self.applied_by)
                .await
                .map_err(self.fail(i))?;
            self.body_in(client, i, patch).await?;
            self.ledger
                .stamp(client, Book::Main, patch.version)
                .await
                .map_err(self.fail(i))?;
            let gid = prepared::gid(self.ledger, patch.version, &self.node(i).config);
            client
                .batch_execute(&format!("PREPARE TRANSACTION {}", quote_literal(&gid)))
                .await
                .map_err(|e| self.fail(i)(e.into()))
        };
        let r = work.await;
        if r.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        r
    }
}
