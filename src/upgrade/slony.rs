//! `upgrade` on a Slony-I cluster (`replication: slony`): the Slony preflight that refuses a
//! run before anything is written, a `std` patch as claim → slonik EXECUTE SCRIPT (unless
//! the origin already has it) → every receiver confirms → stamp → commit, and new tables
//! joining the set after each `std` group. The Slony steps themselves are
//! [`crate::replication::slony::ops`]; `docs/slony.md` has the crash windows.

use std::time::Instant;

use tokio_postgres::Statement;

use super::apply::Refused;
use super::coordinator::{Coordinator, NodeFailure, Outcome};
use super::{note, RunReport};
use crate::config::Config;
use crate::db::cluster::Cluster;
use crate::db::ledger::{Ledger, RowParams};
use crate::db::pipeline::{first_failure, Step};
use crate::db::transaction::Transaction;
use crate::error::Error;
use crate::output::human;
use crate::patches::lint;
use crate::patches::patch::Patch;
use crate::progress::{Event, Reporter};
use crate::replication::slony::error::SlonyError;
use crate::replication::slony::ops::{views, Executed, SlonyOps};
use crate::replication::slony::preflight::{assess, Gravity};

/// Refuses the run before anything is written: a topology that contradicts the config or a
/// replicated ledger (exit 2), a slon that is down, lag past `lag_threshold` or a
/// subscription still copying (exit 1), and under `strict` a pending `std` patch creating a
/// table Slony-I cannot replicate (exit 2).
pub(super) async fn refuse_unless_ready(
    config: &Config,
    cluster: &Cluster,
    ledger: &Ledger,
    pending: &[&Patch],
) -> Result<(), Error> {
    let Some(cfg) = config.slony.as_ref() else {
        return Ok(());
    };
    let copies = lint::slony::copy_from_stdin(pending);
    if !copies.is_empty() {
        return Err(SlonyError::CopyThroughSlonik { findings: copies }.into());
    }
    let (nodes, origin) = views(cfg, cluster, ledger).await?;
    let findings = assess(cfg, &nodes, origin.as_ref(), config.lag_threshold);
    let of = |g: Gravity| -> Vec<_> {
        findings
            .iter()
            .filter(|f| f.gravity == g)
            .cloned()
            .collect()
    };
    let refused = of(Gravity::Refused);
    if !refused.is_empty() {
        return Err(SlonyError::Refused {
            cluster: cfg.cluster.to_string(),
            findings: refused,
        }
        .into());
    }
    let blocking = of(Gravity::Blocking);
    if !blocking.is_empty() {
        return Err(SlonyError::NotReady {
            cluster: cfg.cluster.to_string(),
            findings: blocking,
        }
        .into());
    }
    if config.strict {
        let unkeyed = lint::slony::tables_without_primary_key(pending);
        if !unkeyed.is_empty() {
            return Err(SlonyError::Unkeyed { findings: unkeyed }.into());
        }
    }
    Ok(())
}

/// Tables and sequences the `std` patches created join the Slony set; tables without a
/// primary key are reported.
pub(super) async fn join_new_tables(
    ops: &SlonyOps<'_>,
    reporter: &dyn Reporter,
    report: &mut RunReport,
) -> Result<(), Error> {
    let joined = ops.join().await?;
    for w in joined.skipped {
        note(reporter, report, format!("warning: {w}"));
    }
    for j in &joined.joined {
        note(
            reporter,
            report,
            format!(
                "new tables joined: {j}, confirmed by every node ({})",
                human::duration(joined.waited)
            ),
        );
    }
    Ok(())
}

impl Coordinator<'_> {
    /// A `std` patch on a Slony cluster, in the claim transaction `claim` (not yet begun):
    /// claim → EXECUTE SCRIPT → every receiver confirms → stamp → commit.
    pub(super) async fn apply_slony(
        &self,
        ops: &SlonyOps<'_>,
        claim: &Transaction,
        (claim_st, stamp_st): &(Statement, Statement),
        patch: &Patch,
        report: &mut RunReport,
    ) -> Result<(), Refused> {
        let params = RowParams::new(patch, &self.applied_by);
        let master = self.cluster.master();
        // The claim first: it keeps every other coordinator away from this patch while
        // slonik works in a session of its own.
        let opened = claim
            .pipeline(&[Step::Begin, Step::Exec(claim_st, &params.row())])
            .await;
        if let Some((_, e)) = first_failure(&opened) {
            return Err(Refused::Claim(self.claim_error(patch, e.clone())));
        }

        self.reporter.event(&Event::NodeStart {
            version: patch.version,
            node: master.name(),
        });
        let t = Instant::now();
        let executed = ops.execute(patch).await;
        let origin = match &executed {
            Ok(_) => Ok(()),
            Err(SlonyError::Script {
                node,
                line,
                message,
                ..
            }) => Err(NodeFailure {
                node: node.clone(),
                what: format!("slonik EXECUTE SCRIPT: {message}"),
                line: *line,
                pg: None,
            }),
            Err(e) => Err(NodeFailure {
                node: master.name().clone(),
                what: e.to_string(),
                line: None,
                pg: None,
            }),
        };
        let outcome = self.node_done(patch, 0, t, origin);
        if let Some(failure) = self.record(patch, vec![outcome], report) {
            return Err(Refused::Failed(Error::PatchFailed(Box::new(failure))));
        }
        match executed {
            Ok(Executed::Earlier) => self.note(format!(
                "{}: an earlier run's slonik script had already committed it on the origin; not run again, confirming",
                patch.version
            )),
            Ok(Executed::Now(took)) => self.note(format!(
                "{}: slonik EXECUTE SCRIPT on the origin took {}",
                patch.version,
                human::duration(took)
            )),
            Err(_) => unreachable!("a failure returned above"),
        }

        let replicas: Vec<usize> = (1..self.cluster.nodes.len()).collect();
        for &i in &replicas {
            self.reporter.event(&Event::NodeStart {
                version: patch.version,
                node: self.node(i).name(),
            });
        }
        let t = Instant::now();
        let confirmed = ops.confirm(patch).await;
        let outcomes: Vec<Outcome> = replicas
            .iter()
            .map(|&i| {
                let r = match &confirmed {
                    Err(e) if e.node() == Some(self.node(i).name()) => Err(NodeFailure {
                        node: self.node(i).name().clone(),
                        what: e.to_string(),
                        line: None,
                        pg: None,
                    }),
                    _ => Ok(()),
                };
                self.node_done(patch, i, t, r)
            })
            .collect();
        let failure = self.record(patch, outcomes, report);
        if let Err(e) = confirmed {
            return Err(Refused::Failed(match failure {
                Some(f) => Error::PatchFailed(Box::new(f)),
                None => e.into(),
            }));
        }

        let stamped = claim
            .pipeline(&[Step::Exec(stamp_st, &params.key()), Step::Commit])
            .await;
        match first_failure(&stamped) {
            None => Ok(()),
            Some((_, e)) => Err(Refused::Claim(Error::Claim {
                patch: patch.version,
                node: master.name().clone(),
                action: "stamp and commit the claim",
                failure: Box::new(e.clone()),
            })),
        }
    }
}
