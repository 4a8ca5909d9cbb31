//! `upgrade --dry-run`, the maintenance-window report: plans like a real run, rehearses on
//! every node ([`rehearsal`]), runs the preflight ([`preflight`]) and the lint
//! ([`crate::patches::lint`]), and gathers it all, with its [`findings`] and exit status,
//! into one [`report::DryRunReport`], which [`render`] writes as text, JSON or Markdown.
//! Writes nothing on any node, not even the ledger's schema.

use futures::stream::{self, StreamExt};

use crate::config::{Config, Replication};
use crate::db::cluster::{Cluster, Node};
use crate::db::ledger::Ledger;
use crate::db::probe::{probe, NodeProbe};
use crate::error::Error;
use crate::patches::discover::PatchSet;
use crate::patches::lint::{self, LintFinding, Rule};
use crate::patches::patch::{Patch, PatchOrder, PatchType};
use crate::progress::{Event, Reporter};
use crate::replication::topology::topology_problems;
use crate::upgrade::plan::{self, Selection};
use findings::{finding, Finding, FindingKind, Level};
use outcomes::rehearsal_findings;
use preflight::{Inspection, Thresholds};
use rehearsal::PatchRehearsal;
use report::{DryRunReport, GroupPlan, LedgerView, NodeReport};

mod adoption;
pub mod findings;
mod newnodes;
mod outcomes;
pub mod preflight;
pub mod rehearsal;
pub mod render;
pub mod report;
mod slony;

/// Runs the dry run against the cluster of `config`. Ctrl-C or SIGTERM cancels what runs
/// on every server and stops it (the rehearsals' transactions die with their connections).
pub async fn dry_run(
    config: &Config,
    patches: &PatchSet,
    selection: &Selection,
    reporter: &dyn Reporter,
) -> Result<DryRunReport, Error> {
    let cluster = Cluster::new(config);
    let work = examine_cluster(&cluster, config, patches, selection, reporter);
    tokio::pin!(work);
    tokio::select! {
        report = &mut work => Ok(report),
        signal = crate::signal::interrupted() => {
            crate::signal::trip(signal);
            cluster.inflight.cancel_all().await;
            Err(Error::DryRunInterrupted { signal })
        }
    }
}

async fn examine_cluster(
    cluster: &Cluster,
    config: &Config,
    patches: &PatchSet,
    selection: &Selection,
    reporter: &dyn Reporter,
) -> DryRunReport {
    let ledger = Ledger::new(config.ledger.clone());
    let mut report = DryRunReport::new(config, patches, &ledger, selection);
    let mut probes: Vec<NodeProbe> = stream::iter(cluster.nodes.iter())
        .map(|n| probe(n, &ledger))
        .buffered(cluster.jobs)
        .collect()
        .await;
    first_look(&mut report, cluster, config, patches, &probes);
    if !probes[0].reachable() {
        // Without the master's ledger nothing can be planned.
        report.finish();
        return report;
    }
    let (new, found) = newnodes::baseline_new_nodes(cluster, config, patches, &mut probes).await;
    report.findings.extend(found);
    let Some(mut targets) =
        plan_run(&mut report, cluster, config, patches, selection, &probes).await
    else {
        report.finish();
        return report;
    };
    // The baseline comes before anything else on a new node.
    if let Some(file) = patches.newest_baseline() {
        for &i in &new {
            targets[i].insert(0, file);
        }
    }
    leftovers(cluster, &ledger, &mut report).await;
    if config.atomic_direct
        && report
            .groups
            .iter()
            .any(|g| g.patch_type == PatchType::Direct)
    {
        two_phase(cluster, &probes, &mut report).await;
    }
    rehearse_and_inspect(&mut report, cluster, config, &probes, &targets, reporter).await;
    refine_lint(&mut report.lint, cluster.master()).await;
    report.finish();
    report
}

/// What the first look at every node shows: each node, and what is wrong already
/// (unreachable, unfinished rows, divergence, a topology that contradicts the config,
/// drift, which a real run refuses).
fn first_look(
    report: &mut DryRunReport,
    cluster: &Cluster,
    config: &Config,
    patches: &PatchSet,
    probes: &[NodeProbe],
) {
    report.nodes = cluster
        .nodes
        .iter()
        .zip(probes)
        .map(|(n, p)| node_report(n, p, patches, &probes[0], config.replication))
        .collect();
    node_findings(report);
    let recovery = cluster
        .nodes
        .iter()
        .zip(probes)
        .map(|(n, p)| (&n.config, p.in_recovery));
    for problem in topology_problems(config.replication, recovery) {
        report.findings.push(finding(
            Level::Blocking,
            FindingKind::Topology,
            Some(problem.node.as_str()),
            None,
            problem.message,
        ));
    }
    let drift: Vec<String> = cluster
        .nodes
        .iter()
        .zip(probes)
        .filter(|(_, p)| p.reachable())
        .flat_map(|(n, p)| plan::drift(patches, n.name(), &p.ledger))
        .map(|d| {
            report.findings.push(finding(
                Level::Blocking,
                FindingKind::Drift,
                Some(d.node.as_str()),
                Some(&d.version.to_string()),
                d.to_string(),
            ));
            d.to_string()
        })
        .collect();
    if !drift.is_empty() {
        report.refusal = Some(format!("refusing to run: {}", drift.join("; ")));
    }
}

/// Plans like a real run: another coordinator, pending patches and their lint, the
/// schedule, and what each node would receive (returned, in order; `None` when a real
/// run would refuse).
async fn plan_run<'p>(
    report: &mut DryRunReport,
    cluster: &Cluster,
    config: &Config,
    patches: &'p PatchSet,
    selection: &Selection,
    probes: &[NodeProbe],
) -> Option<Vec<Vec<&'p Patch>>> {
    let ledger = Ledger::new(config.ledger.clone());
    if let Some(holder) =
        preflight::coordinator_running(cluster.master(), ledger.advisory_key()).await
    {
        report.findings.push(finding(
            Level::Blocking,
            FindingKind::CoordinatorRunning,
            Some(cluster.master().name().as_str()),
            None,
            format!(
                "another coordinator holds the cluster right now ({holder}): a run now would exit 3"
            ),
        ));
    }
    let pending = plan::pending(patches, &probes[0].ledger);
    report.pending = pending.iter().map(|p| p.version.to_string()).collect();
    report.lint = lint::lint(&pending);
    let schedule = match plan::schedule(plan::groups(&pending), selection) {
        Ok(s) => s,
        Err(refusal) => {
            report.findings.push(finding(
                Level::Blocking,
                FindingKind::Refused,
                None,
                Some(&refusal.version.to_string()),
                refusal.to_string(),
            ));
            report.refusal.get_or_insert_with(|| refusal.to_string());
            return None;
        }
    };
    report.stopped_before = schedule.stopped_before.map(|p| p.version.to_string());
    if report.refusal.is_some() {
        return None;
    }
    let scheduled: Vec<&Patch> = schedule
        .groups
        .iter()
        .flat_map(|g| g.patches.iter().copied())
        .collect();
    slony::examine(config, cluster, &ledger, &scheduled, report).await;
    // A node behind the cluster first catches up (as `upgrade` does), then takes what is
    // scheduled.
    let targets: Vec<Vec<&Patch>> =
        cluster
            .nodes
            .iter()
            .zip(probes)
            .map(|(n, p)| {
                let view = plan::NodeView {
                    role: n.role(),
                    ledger: &p.ledger,
                };
                let mut t = if probes[0].reachable() && p.reachable() {
                    plan::catch_up(patches, config.replication, &probes[0].ledger, view)
                } else {
                    Vec::new()
                };
                t.extend(scheduled.iter().copied().filter(|patch| {
                    plan::needs_body(patch, n.role(), config.replication, &p.ledger)
                }));
                t
            })
            .collect();
    report.groups = schedule
        .groups
        .iter()
        .map(|g| GroupPlan {
            patch_type: g.kind,
            patches: g.patches.iter().map(|p| p.version.to_string()).collect(),
            nodes: cluster
                .nodes
                .iter()
                .zip(&targets)
                .filter(|(_, t)| {
                    t.iter()
                        .any(|p| g.patches.iter().any(|q| q.version == p.version))
                })
                .map(|(n, _)| n.name().to_string())
                .collect(),
            order: order(g.kind, &g.patches, config.replication),
        })
        .collect();
    report
        .findings
        .extend(adoption::stamp_suggestions(cluster, probes, &pending, config.replication).await);
    Some(targets)
}

/// Every node's rehearsal and preflight, at most `jobs` nodes at once.
async fn rehearse_and_inspect(
    report: &mut DryRunReport,
    cluster: &Cluster,
    config: &Config,
    probes: &[NodeProbe],
    targets: &[Vec<&Patch>],
    reporter: &dyn Reporter,
) {
    // Catch-up included: the distinct patches some node rehearses.
    let rehearsing = targets
        .iter()
        .flatten()
        .map(|p| p.version)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if rehearsing == 0 {
        reporter.event(&Event::Note(
            "dry run: nothing to do, the cluster is up to date; checking the nodes",
        ));
    } else {
        reporter.event(&Event::Note(&format!(
            "dry run: rehearsing {} patch(es) on {} node(s) in transactions that are always rolled back; nothing is changed",
            rehearsing,
            cluster.nodes.len()
        )));
    }
    let limits = Thresholds {
        long_running: config.long_running_threshold,
        lag: config.lag_threshold,
    };
    let examined: Vec<Examined> = stream::iter(cluster.nodes.iter().zip(probes).zip(targets))
        .map(|((node, probe), targets)| examine(node, probe, targets, config, limits, reporter))
        .buffered(cluster.jobs)
        .collect()
        .await;
    for (n, e) in report.nodes.iter_mut().zip(examined) {
        n.patches = e.patches;
        for error in n.patches.iter_mut().filter_map(|p| p.error.as_mut()) {
            error.node.get_or_insert_with(|| n.name.clone());
        }
        n.preflight = e.inspection;
        report.findings.extend(e.findings);
    }
    report.findings.extend(rehearsal_findings(&report.nodes));
}

fn node_report(
    node: &Node,
    probe: &NodeProbe,
    patches: &PatchSet,
    master: &NodeProbe,
    replication: Replication,
) -> NodeReport {
    let summary = plan::summarize(
        patches,
        replication,
        node.role(),
        &probe.ledger,
        &master.ledger,
        probe.reachable() && master.reachable(),
    );
    NodeReport {
        name: node.name().to_string(),
        role: node.role(),
        endpoint: node.config.endpoint.clone(),
        reachable: probe.reachable(),
        error: probe.error.clone(),
        tls_warning: node.config.conn.weak_tls_warning(),
        server_version: probe.server_version.clone(),
        in_recovery: probe.in_recovery,
        ledger: LedgerView {
            exists: probe.ledger.exists,
            applied: summary.applied.len(),
            unfinished: summary.unfinished,
            missing_from_master: summary.missing_from_master,
        },
        patches: Vec::new(),
        preflight: None,
    }
}

/// Findings that come from the probe alone.
fn node_findings(report: &mut DryRunReport) {
    for n in &report.nodes {
        let node = Some(n.name.as_str());
        if let Some(w) = &n.tls_warning {
            report.findings.push(finding(
                Level::Warning,
                FindingKind::WeakTls,
                node,
                None,
                format!("node `{}`: {w}", n.name),
            ));
        }
        if let Some(e) = &n.error {
            report.findings.push(finding(
                Level::Blocking,
                FindingKind::Unreachable,
                node,
                None,
                e.message.clone(),
            ));
        }
        for v in &n.ledger.unfinished {
            report.findings.push(finding(
                Level::Warning,
                FindingKind::UnfinishedLedgerRow,
                node,
                Some(v),
                format!(
                    "node `{}`: patch `{v}` started there and did not finish (a failed or killed run); a run applies it again where it is missing",
                    n.name
                ),
            ));
        }
        if !n.ledger.missing_from_master.is_empty() {
            report.findings.push(finding(
                Level::Warning,
                FindingKind::Divergence,
                node,
                None,
                format!(
                    "node `{}` is behind the cluster: it lacks {}, which the cluster has applied; a run catches it up first (rehearsed below)",
                    n.name,
                    n.ledger.missing_from_master.join(", ")
                ),
            ));
        }
    }
}

/// One node's rehearsal and preflight.
struct Examined {
    patches: Vec<PatchRehearsal>,
    inspection: Option<Inspection>,
    findings: Vec<Finding>,
}

async fn examine(
    node: &Node,
    probe: &NodeProbe,
    targets: &[&Patch],
    config: &Config,
    limits: Thresholds,
    reporter: &dyn Reporter,
) -> Examined {
    let name = node.name().to_string();
    if !probe.reachable() {
        return Examined {
            patches: rehearsal::not_rehearsed(targets, &format!("node `{name}` is unreachable")),
            inspection: None,
            findings: Vec::new(),
        };
    }
    let mut findings = Vec::new();
    let in_recovery = probe.in_recovery == Some(true);
    let (patches, pids) = if in_recovery {
        // The topology check reports the node; nothing can be rehearsed on a standby.
        let why = format!("node `{name}` is a standby (in recovery): it cannot take DDL");
        (rehearsal::not_rehearsed(targets, &why), Vec::new())
    } else {
        let r = rehearsal::rehearse(node, targets, config.lock_timeout, reporter).await;
        (r.patches, r.pids)
    };
    let ctx = preflight::Context {
        own_pids: &pids,
        in_recovery,
        runs_concurrent: targets.iter().any(|p| p.kind == PatchType::Concurrent),
    };
    let (inspection, more) = preflight::inspect(node, &ctx, limits).await;
    findings.extend(more);
    Examined {
        patches,
        inspection: Some(inspection),
        findings,
    }
}

/// How the nodes get a group's patches, in words.
fn order(kind: PatchType, patches: &[&Patch], replication: Replication) -> String {
    let one = |p: &Patch| -> &'static str {
        match (kind, replication, p.order) {
            (PatchType::Std, Replication::Slony, _) => {
                "the origin through slonik EXECUTE SCRIPT; every subscriber replays it and records it in its ledger"
            }
            (PatchType::Std, _, _) => "master only (replication carries it)",
            (_, Replication::Physical, _) => "master only (the standbys replay it)",
            (_, _, PatchOrder::MasterFirst) => {
                "master first; the replicas once its change has replicated (order=master-first)"
            }
            (_, Replication::Logical, _) => "replicas first, the master last",
            (PatchType::Direct, _, _) => "every node at once",
            (PatchType::Concurrent, _, _) => "every node at once, statement by statement",
        }
    };
    let mut words: Vec<(&'static str, Vec<String>)> = Vec::new();
    for p in patches {
        let w = one(p);
        match words.iter_mut().find(|(x, _)| *x == w) {
            Some((_, vs)) => vs.push(p.version.to_string()),
            None => words.push((w, vec![p.version.to_string()])),
        }
    }
    match words.as_slice() {
        [(w, _)] => w.to_string(),
        _ => words
            .iter()
            .map(|(w, vs)| format!("{}: {w}", vs.join(", ")))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// pgconvoy's own prepared transactions from an interrupted `--atomic` run: a real run
/// refuses to start until `pgconvoy recover` resolved them.
async fn leftovers(cluster: &Cluster, ledger: &Ledger, report: &mut DryRunReport) {
    for (node, n) in cluster.nodes.iter().zip(&report.nodes) {
        if !n.reachable {
            continue;
        }
        let Ok(session) = node.session().await else {
            continue;
        };
        let Ok(left) = crate::db::prepared::list(session.client(), ledger).await else {
            continue;
        };
        for p in left {
            report.findings.push(finding(
                Level::Blocking,
                FindingKind::PreparedTransaction,
                Some(node.name().as_str()),
                None,
                format!(
                    "node `{}` holds prepared transaction '{}' (since {}) from an interrupted --atomic run: a run refuses to start; run `pgconvoy recover` first",
                    node.name(),
                    p.gid,
                    p.prepared_at
                ),
            ));
        }
    }
}

/// `--atomic` needs `max_prepared_transactions > 0` on every node; a real run refuses
/// (exit 2) otherwise.
async fn two_phase(cluster: &Cluster, probes: &[NodeProbe], report: &mut DryRunReport) {
    let mut refused = Vec::new();
    for (node, probe) in cluster.nodes.iter().zip(probes) {
        if !probe.reachable() {
            continue;
        }
        let Ok(session) = node.session().await else {
            continue;
        };
        let Ok(row) = session
            .query_one("SELECT current_setting('max_prepared_transactions')", &[])
            .await
        else {
            continue;
        };
        if row.get::<_, String>(0).trim() == "0" {
            refused.push(format!("`{}`", node.name()));
        }
    }
    if !refused.is_empty() {
        let message = format!(
            "--atomic (atomic_direct) needs two-phase commit, but max_prepared_transactions = 0 on node(s) {}; set it > 0 (a server restart) or run without --atomic",
            refused.join(", ")
        );
        report.findings.push(finding(
            Level::Blocking,
            FindingKind::Refused,
            None,
            None,
            message.clone(),
        ));
        report.refusal.get_or_insert(message);
    }
}

/// Drops `adding-not-nullable-field` findings the master's catalog makes moot: the column is already
/// NOT NULL, or a validated `CHECK (col IS NOT NULL)` exists (PostgreSQL then skips the scan).
async fn refine_lint(lint: &mut Vec<LintFinding>, master: &Node) {
    if !lint.iter().any(|f| f.rule == Rule::AddingNotNullableField) {
        return;
    }
    let Ok(session) = master.session().await else {
        return;
    };
    let mut keep = Vec::with_capacity(lint.len());
    for f in lint.drain(..) {
        let Some(col) = f
            .column
            .as_ref()
            .filter(|_| f.rule == Rule::AddingNotNullableField)
        else {
            keep.push(f);
            continue;
        };
        let moot: bool = session
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute
                                 WHERE attrelid = to_regclass($1) AND attname = $2 AND attnotnull)
                     OR EXISTS (SELECT 1 FROM pg_constraint
                                 WHERE conrelid = to_regclass($1) AND contype = 'c' AND convalidated
                                   AND pg_get_constraintdef(oid) = 'CHECK ((' || quote_ident($2) || ' IS NOT NULL))')",
                &[&col.table.quoted(), &col.column],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(false);
        if !moot {
            keep.push(f);
        }
    }
    *lint = keep;
}
