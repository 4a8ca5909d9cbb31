//! The dry run on a Slony-I cluster (`replication: slony`): the Slony preflight's findings
//! (topology against the config, a replicated ledger, slon daemons, lag), what slonik
//! EXECUTE SCRIPT would run for each `std` patch, and how new tables would join the set.
//! Reads only.

use super::findings::{finding, FindingKind, Level};
use super::report::{DryRunReport, SlonyPlan, SlonyScript};
use crate::config::Config;
use crate::db::cluster::Cluster;
use crate::db::ledger::Ledger;
use crate::patches::discover::Severity;
use crate::patches::lint;
use crate::patches::patch::{Patch, PatchType};
use crate::replication::slony::ops::{views, SlonyOps};
use crate::replication::slony::preflight::{assess, Concern, Gravity};

/// Adds the Slony findings, plan and lint to `report`; `scheduled` are the patches the run
/// would apply, in order.
pub(super) async fn examine(
    config: &Config,
    cluster: &Cluster,
    ledger: &Ledger,
    scheduled: &[&Patch],
    report: &mut DryRunReport,
) {
    let Some(cfg) = config.slony.as_ref() else {
        return;
    };
    match views(cfg, cluster, ledger).await {
        Ok((nodes, origin)) => {
            for f in assess(cfg, &nodes, origin.as_ref(), config.lag_threshold) {
                let (level, kind) = match (f.gravity, f.concern) {
                    (Gravity::Refused, _) => (Level::Blocking, FindingKind::Topology),
                    (_, Concern::SlonDown) => (Level::Blocking, FindingKind::SlonDown),
                    (_, Concern::Lag) => (Level::Blocking, FindingKind::ReplicationLag),
                    (_, Concern::SubscriptionInactive) => {
                        (Level::Blocking, FindingKind::SubscriptionDown)
                    }
                    (Gravity::Blocking, _) => (Level::Blocking, FindingKind::Topology),
                    (Gravity::Warning, _) => (Level::Warning, FindingKind::Topology),
                };
                if f.gravity == Gravity::Refused {
                    report
                        .refusal
                        .get_or_insert_with(|| format!("refusing to run: {}", f.message));
                }
                report
                    .findings
                    .push(finding(level, kind, f.node.as_deref(), None, f.message));
            }
        }
        Err(e) => report.findings.push(finding(
            Level::Blocking,
            FindingKind::Unreachable,
            None,
            None,
            format!("cannot read the slony catalog: {e}"),
        )),
    }

    let ops = SlonyOps::new(config, cfg, cluster, ledger, "pgconvoy dry run");
    let receivers: Vec<String> = cluster
        .replicas()
        .iter()
        .map(|n| n.name().to_string())
        .collect();
    let std: Vec<&Patch> = scheduled
        .iter()
        .copied()
        .filter(|p| p.kind == PatchType::Std)
        .collect();
    let mut plan = SlonyPlan {
        cluster: cfg.cluster.to_string(),
        set: cfg.set,
        origin: cluster.master().name().to_string(),
        origin_id: cfg.node_id(cluster.master().name()),
        scripts: std
            .iter()
            .map(|p| SlonyScript {
                patch: p.version.to_string(),
                file: p.file_name(),
                statements: p.statements.len(),
                receivers: receivers.clone(),
                slonik: ops.patch_script(p),
            })
            .collect(),
        set_changes: Vec::new(),
    };
    // An earlier run that died mid-join left work a run finishes first.
    if let Ok(left) = ops.join_plan().await {
        plan.set_changes.extend(
            left.describe()
                .into_iter()
                .map(|d| format!("left by an earlier run: {d}")),
        );
    }
    let tables = lint::slony::std_tables(&std);
    let keyed: Vec<String> = tables
        .iter()
        .filter(|t| t.keyed)
        .map(|t| format!("{} ({})", t.table, t.patch))
        .collect();
    if !keyed.is_empty() {
        plan.set_changes.push(format!(
            "after the std group: {} (and the sequences they own) join set {} through a temporary set: create set, set add table/sequence, subscribe set for {}, merge set",
            keyed.join(", "),
            cfg.set,
            receivers.join(", ")
        ));
    }
    let mut unkeyed = lint::slony::tables_without_primary_key(&std);
    if config.strict {
        for f in &mut unkeyed {
            f.severity = Severity::Error;
        }
        if let Some(f) = unkeyed.first() {
            report
                .refusal
                .get_or_insert_with(|| format!("refusing to run (strict): {f}"));
        }
    }
    report.lint.extend(unkeyed);
    let copies = lint::slony::copy_from_stdin(&std);
    if let Some(f) = copies.first() {
        report
            .refusal
            .get_or_insert_with(|| format!("refusing to run on slony: {f}"));
    }
    report.lint.extend(copies);
    if !plan.scripts.is_empty() || !plan.set_changes.is_empty() {
        report.slony = Some(plan);
    }
}
