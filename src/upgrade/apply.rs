//! Applying one patch: claim → fan out → stamp → commit. A `std` patch does it all in
//! one round trip on the master; `direct` and `concurrent` patches take the claim
//! first, then run on the nodes in the order the replication needs, then stamp and
//! commit the claim. (`--atomic` `direct` patches: [`super::atomic`].)

use std::time::Instant;

use super::body::TxFailure;
use super::coordinator::{Coordinator, NextClaim, NodeFailure, Outcome};
use super::watch::master_lsn;
use super::RunReport;
use crate::config::Replication;
use crate::db::cluster::Node;
use crate::db::ledger::{Book, RowParams};
use crate::db::lock::LockWitness;
use crate::db::pgerror::PgFailure;
use crate::db::pipeline::{first_failure, Step};
use crate::db::transaction::Transaction;
use crate::error::Error;
use crate::output::human;
use crate::patches::patch::{Patch, PatchOrder, PatchType, PatchVersion};
use crate::replication;

/// Why a patch was not applied, for what the run reports about it.
pub(super) enum Refused {
    /// The claim could not be taken or committed: no node's part was reported.
    Claim(Error),
    /// A node's part failed: the patch is reported as rolled back.
    Failed(Error),
}

/// Whether the claim of a patch was taken ahead, behind the COMMIT of the one before it
/// (and its failure if it was refused).
enum Claimed {
    Not,
    Ahead(Option<PgFailure>),
}

/// The claim of the next patch, sent behind this one's COMMIT: its version, and its
/// failure if it was refused.
type Ahead = Option<(PatchVersion, Option<PgFailure>)>;

impl Refused {
    fn into_error(self) -> Error {
        match self {
            Refused::Claim(e) | Refused::Failed(e) => e,
        }
    }
}

/// BEGIN, the lock check on the server when there is one (see
/// [`crate::db::lock::held_sql`]: the run need not ask its lock's session first), the
/// claim: one message.
fn claim_steps<'a>(claim: &'a str, held: Option<&'a str>) -> Vec<Step<'a>> {
    let mut steps = vec![Step::Begin];
    steps.extend(held.map(Step::One));
    steps.push(Step::Claim(claim));
    steps
}

impl Coordinator<'_> {
    /// Claim → fan out → stamp → commit, for one patch. `next`: the patch the run goes
    /// on with, whose claim may go out with this one's stamp and COMMIT.
    pub(super) async fn apply(
        &self,
        patch: &Patch,
        next: Option<&Patch>,
        report: &mut RunReport,
    ) -> Result<(), Error> {
        let ahead = self
            .next_claim
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let (ahead, claimed) = match ahead {
            Some(a) if a.version == patch.version && self.claims_ahead(patch) => {
                (Some(a.tx), Some(a.failure))
            }
            Some(a) => {
                a.tx.rollback().await;
                (None, None)
            }
            None => (None, None),
        };
        if !self.selected[0] {
            return self.apply_without_master(patch, report).await;
        }
        if patch.kind == PatchType::Direct && self.atomic {
            return self.apply_atomic(patch, report).await;
        }
        let started = Instant::now();
        let master = self.cluster.master();
        let claim = match ahead {
            Some(tx) => tx,
            None => Transaction::on(master.session().await.map_err(|e| master.unreachable(e))?),
        };
        let witness = self
            .lock_witness
            .as_ref()
            .filter(|_| self.claim_checks_lock(patch));
        // Slony-I's `std` patches go through slonik with statements of their own.
        let slony_std = self.slony.filter(|_| patch.kind == PatchType::Std);
        if slony_std.is_none() {
            self.ready_to_claim(claim.session(), witness).await?;
        }
        let held = witness.map(LockWitness::held);
        let held = held.as_deref();
        let next = next.filter(|n| self.claims_ahead(patch) && self.claims_ahead(n));
        let r = if let Some(ops) = slony_std {
            let session = claim.session();
            let statements = async {
                Ok::<_, tokio_postgres::Error>((
                    session.prepare_cached(&self.ledger.claim_sql()).await?,
                    session
                        .prepare_cached(&self.ledger.stamp_own_sql(Book::Main))
                        .await?,
                ))
            }
            .await
            .map_err(|e| master.unreachable(e.into()))?;
            self.apply_slony(ops, &claim, &statements, patch, report)
                .await
                .map(|()| None)
        } else if patch.kind == PatchType::Std {
            self.apply_std(&claim, held, patch, report)
                .await
                .map(|()| None)
        } else {
            let claimed = match claimed {
                Some(failure) => Claimed::Ahead(failure),
                None => Claimed::Not,
            };
            self.apply_claimed(&claim, claimed, held, next, patch, report)
                .await
        };
        match r {
            Ok(_) => self.patch_done(patch, started, true),
            Err(Refused::Claim(_)) => {}
            Err(Refused::Failed(_)) => self.patch_done(patch, started, false),
        }
        let refused = match r {
            Ok(None) => return Ok(()),
            Ok(Some((version, failure))) => {
                *self.next_claim.lock().unwrap_or_else(|p| p.into_inner()) = Some(NextClaim {
                    version,
                    tx: claim,
                    failure,
                });
                return Ok(());
            }
            Err(refused) => refused,
        };
        claim.rollback().await;
        let mut e = refused.into_error();
        // Only the patch itself can have committed this run's claim row (a
        // transaction-control statement that slipped past `check`); never leave it behind.
        if let Some(more) = self.unclaim(patch).await {
            if let Error::PatchFailed(f) = &mut e {
                f.what = format!("{}; {more}", f.what);
            }
        }
        Err(e)
    }

    /// Whether `patch` goes through [`Coordinator::apply_claimed`] with a claim that
    /// checks the lock on the server: only such a patch's claim may be taken ahead.
    fn claims_ahead(&self, patch: &Patch) -> bool {
        patch.kind != PatchType::Std && self.claim_checks_lock(patch)
    }

    /// `--node` leaving the master out, for a `direct` or `concurrent` patch the cluster
    /// has not finished: the claim is taken all the same (no other coordinator applies the
    /// patch meanwhile), the selected replicas run their part, each recorded in its own
    /// ledger, and the claim is rolled back: the master has not run the patch, so the
    /// cluster has not. A later run applies it on the master and skips those replicas.
    async fn apply_without_master(
        &self,
        patch: &Patch,
        report: &mut RunReport,
    ) -> Result<(), Error> {
        let master = self.cluster.master();
        let session = master.session().await.map_err(|e| master.unreachable(e))?;
        let claim_st = session
            .prepare_cached(&self.ledger.claim_sql())
            .await
            .map_err(|e| master.unreachable(e.into()))?;
        let params = RowParams::new(patch, &self.applied_by);
        let claim = Transaction::on(session);
        let opened = claim
            .pipeline(&[Step::Begin, Step::Exec(&claim_st, &params.row())])
            .await;
        if let Some((_, e)) = first_failure(&opened) {
            let e = self.claim_error(patch, e.clone());
            claim.rollback().await;
            return Err(e);
        }
        let replicas = self.replica_targets(patch);
        let results = self
            .fan_out(patch, &replicas, |i| self.own_part(i, patch))
            .await;
        let failure = self.record(patch, results, report);
        claim.rollback().await;
        match failure {
            Some(f) => Err(Error::PatchFailed(Box::new(f))),
            None => Ok(()),
        }
    }

    /// A `std` patch: BEGIN, claim, body, stamp, COMMIT in one round trip on the master.
    async fn apply_std(
        &self,
        claim: &Transaction,
        held: Option<&str>,
        patch: &Patch,
        report: &mut RunReport,
    ) -> Result<(), Refused> {
        let params = RowParams::new(patch, &self.applied_by);
        let claim_text = self.statements.claim(&params);
        let stamp = self.statements.stamp(Book::Main, &params);
        self.node_start(patch, 0);
        let t = Instant::now();
        let r = match self
            .committed_transaction(
                claim,
                0,
                patch,
                &claim_steps(&claim_text, held),
                &[Step::One(&stamp)],
            )
            .await
        {
            Err(TxFailure::Before(e)) => return Err(Refused::Claim(self.claim_error(patch, e))),
            Err(TxFailure::Node(f)) => Err(f),
            Ok(()) => Ok(()),
        };
        let outcome = self.node_done(patch, 0, t, r);
        match self.record(patch, vec![outcome], report) {
            Some(failure) => Err(Refused::Failed(Error::PatchFailed(Box::new(failure)))),
            None => Ok(()),
        }
    }

    /// A `direct` or `concurrent` patch: the claim first, on its own (nothing may run
    /// anywhere before it holds), then the nodes, then stamp and commit, with the claim
    /// of `next` behind them in the same round trip when there is one. That claim fails on
    /// the server unless this patch is finished in the ledger
    /// ([`crate::db::ledger::Ledger::claim_after_sql`]) and the run still holds the lock;
    /// returned for the next patch's run to take over ([`NextClaim`]).
    async fn apply_claimed(
        &self,
        claim: &Transaction,
        claimed: Claimed,
        held: Option<&str>,
        next: Option<&Patch>,
        patch: &Patch,
        report: &mut RunReport,
    ) -> Result<Ahead, Refused> {
        let params = RowParams::new(patch, &self.applied_by);
        match claimed {
            Claimed::Ahead(Some(e)) => return Err(Refused::Claim(self.claim_error(patch, e))),
            Claimed::Ahead(None) => {}
            Claimed::Not => {
                let claim_text = self.statements.claim(&params);
                let opened = claim.pipeline(&claim_steps(&claim_text, held)).await;
                if let Some((_, e)) = first_failure(&opened) {
                    return Err(Refused::Claim(self.claim_error(patch, e.clone())));
                }
            }
        }
        let results = match patch.order {
            PatchOrder::MasterFirst => match self.master_first(patch).await {
                Ok(results) => results,
                Err((results, e)) => {
                    self.record(patch, results, report);
                    return Err(Refused::Failed(e));
                }
            },
            PatchOrder::ReplicasFirst => self.replicas_first(claim, patch).await,
        };
        if let Some(failure) = self.record(patch, results, report) {
            return Err(Refused::Failed(Error::PatchFailed(Box::new(failure))));
        }
        let stamp = self.statements.stamp(Book::Main, &params);
        let mut steps = vec![Step::One(&stamp), Step::Commit];
        // Nothing new once the run is stopping.
        let next = next
            .filter(|_| crate::signal::tripped().is_none() && !self.cluster.inflight.lock_lost());
        let after = next.zip(held).map(|(n, _)| {
            self.statements
                .claim_after(&RowParams::new(n, &self.applied_by), &params)
        });
        if let (Some(after), Some(held)) = (&after, held) {
            steps.extend([Step::Begin, Step::One(held), Step::Claim(after)]);
        }
        let stamped = claim.pipeline(&steps).await;
        if let Some((_, e)) = first_failure(&stamped[..2]) {
            return Err(Refused::Claim(Error::Claim {
                patch: patch.version,
                node: self.cluster.master().name().clone(),
                action: "stamp and commit the claim",
                failure: Box::new(e.clone()),
            }));
        }
        Ok(match (next, stamped.len() > 2) {
            (Some(n), true) => Some((
                n.version,
                first_failure(&stamped[2..]).map(|(_, e)| e.clone()),
            )),
            _ => None,
        })
    }

    /// Destructive changes (`order=master-first`): the master commits its part first
    /// (outside the claim, in its local book), subscribers catch up past it, and only
    /// then do the replicas change.
    async fn master_first(&self, patch: &Patch) -> Result<Vec<Outcome>, (Vec<Outcome>, Error)> {
        let replicas = self.replica_targets(patch);
        let mut rs = Vec::new();
        if self.master_needs(patch) {
            rs.push(self.timed(patch, 0, self.own_part(0, patch)).await);
        }
        if rs.iter().any(|(_, _, r)| r.is_err()) {
            return Ok(rs);
        }
        if self.replication == Replication::Logical && !replicas.is_empty() {
            if let Err(e) = self.wait_for_subscribers(patch).await {
                return Err((rs, e));
            }
        }
        rs.extend(
            self.fan_out(patch, &replicas, |i| self.own_part(i, patch))
                .await,
        );
        Ok(rs)
    }

    /// Additive changes: the replicas first and the master last on a logical cluster
    /// (subscribers must have the new shape before the publisher sends rows in it),
    /// every node at once otherwise. The master's part of a `direct` patch runs in the
    /// claim transaction.
    async fn replicas_first(&self, claim: &Transaction, patch: &Patch) -> Vec<Outcome> {
        let replicas = self.replica_targets(patch);
        let logical = self.replication == Replication::Logical;
        let master_part = async {
            match patch.kind {
                PatchType::Direct => self.body_in_claim(claim, patch).await,
                _ => self.concurrent_on(0, patch).await,
            }
        };
        // The master's part of a direct patch is always due: the claim is its record.
        let master_needs = patch.kind == PatchType::Direct || self.master_needs(patch);
        if logical {
            let mut rs = self
                .fan_out(patch, &replicas, |i| self.own_part(i, patch))
                .await;
            if master_needs && rs.iter().all(|(_, _, r)| r.is_ok()) {
                rs.push(self.timed(patch, 0, master_part).await);
            }
            rs
        } else if patch.kind == PatchType::Direct {
            let (m, mut rs) = tokio::join!(
                self.timed(patch, 0, master_part),
                self.fan_out(patch, &replicas, |i| self.own_part(i, patch)),
            );
            rs.push(m);
            rs
        } else {
            let mut targets = replicas;
            if master_needs {
                targets.insert(0, 0);
            }
            self.fan_out(patch, &targets, |i| self.concurrent_on(i, patch))
                .await
        }
    }

    /// Node `i`'s part of a `direct` or `concurrent` patch outside the claim, recorded in
    /// its own ledger row (the master's: in its local book).
    async fn own_part(&self, i: usize, patch: &Patch) -> Result<(), NodeFailure> {
        let book = if i == 0 { Book::Local } else { Book::Main };
        match patch.kind {
            PatchType::Direct => self.direct_on(i, book, patch).await,
            _ => self.concurrent_on(i, patch).await,
        }
    }

    /// A `direct` patch on one node outside the claim: its own transaction with
    /// its own ledger row (a replica's main book, or the master's local book
    /// for a master-first patch).
    pub(super) async fn direct_on(
        &self,
        i: usize,
        book: Book,
        patch: &Patch,
    ) -> Result<(), NodeFailure> {
        let session = self.node(i).session().await.map_err(self.fail(i))?;
        self.ensure(i, session.client(), book)
            .await
            .map_err(self.fail(i))?;
        self.statements
            .ready_for_rows(&session, book)
            .await
            .map_err(self.fail(i))?;
        let params = RowParams::new(patch, &self.applied_by);
        let start = self.statements.start(book, &params);
        let stamp = self.statements.stamp(book, &params);
        let tx = Transaction::on(session);
        // BEGIN, ledger row, body, stamp, COMMIT: one message.
        let r = self
            .committed_transaction(
                &tx,
                i,
                patch,
                &[Step::Begin, Step::One(&start)],
                &[Step::One(&stamp)],
            )
            .await;
        if r.is_err() {
            tx.rollback().await;
        }
        r.map_err(|f| match f {
            TxFailure::Before(e) => self.fail(i)(e),
            TxFailure::Node(f) => f,
        })
    }

    /// After the master committed its part of a master-first patch: wait until
    /// every subscriber applied past the master's WAL position.
    async fn wait_for_subscribers(&self, patch: &Patch) -> Result<(), Error> {
        let master = self.cluster.master();
        let replicas: Vec<&Node> = self.cluster.replicas().iter().map(|n| &**n).collect();
        let lsn = master_lsn(master).await?;
        let before = replication::subscriptions::baseline(&replicas)
            .await
            .map_err(|error| Error::replication(None, error))?;
        let cause = format!("patch `{}` ({})", patch.version, patch.file_name());
        let waited = replication::wait::wait_for_subscribers(
            master,
            &replicas,
            &before,
            &lsn,
            self.replication_timeout,
            &cause,
        )
        .await
        .map_err(|error| Error::replication(Some(format!("patch `{}`", patch.version)), error))?;
        self.note(format!(
            "{}: subscribers applied the master's part (past {lsn}) in {}",
            patch.version,
            human::duration(waited)
        ));
        Ok(())
    }
}
