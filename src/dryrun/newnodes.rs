//! New nodes in the dry run: the nodes a run would give the newest baseline (no ledger,
//! no user relations). The dry run says so, plans what follows on the ledger the baseline
//! leaves, and rehearses the baseline first on those nodes.

use super::findings::{finding, Finding, FindingKind, Level};
use crate::config::Config;
use crate::db::cluster::Cluster;
use crate::db::ledger::Book;
use crate::db::probe::NodeProbe;
use crate::lifecycle::baseline;
use crate::patches::discover::PatchSet;

/// The nodes (indexes) a run would baseline, with a finding for each; their probes'
/// ledgers become the ledgers the baseline leaves, for planning. Reads only.
pub(super) async fn baseline_new_nodes(
    cluster: &Cluster,
    config: &Config,
    patches: &PatchSet,
    probes: &mut [NodeProbe],
) -> (Vec<usize>, Vec<Finding>) {
    let Some(file) = patches.newest_baseline() else {
        return (Vec::new(), Vec::new());
    };
    let candidates: Vec<usize> = (0..cluster.nodes.len())
        .filter(|&i| probes[i].reachable() && probes[i].in_recovery != Some(true))
        .filter(|&i| {
            baseline::may_be_new(
                cluster.nodes[i].role(),
                config.replication,
                &probes[i].ledger,
            )
        })
        .collect();
    if candidates.is_empty() {
        return (Vec::new(), Vec::new());
    }
    // A node that cannot be looked at is left as it is; the rehearsal reports it.
    let Ok(new) = baseline::new_nodes(cluster, &candidates).await else {
        return (Vec::new(), Vec::new());
    };
    let mut findings = Vec::new();
    for &i in &new {
        let node = &cluster.nodes[i];
        let rows = baseline::rows(patches, file, node.role(), config.replication);
        let recorded: Vec<String> = rows
            .iter()
            .filter(|(book, _)| *book == Book::Main)
            .map(|(_, p)| p.version.to_string())
            .collect();
        findings.push(finding(
            Level::Warning,
            FindingKind::Baseline,
            Some(node.name().as_str()),
            Some(&file.version.to_string()),
            format!(
                "node `{}` is new (no ledger, no user relations): a run gives it `{}` in one transaction (rehearsed below), its ledger recording {}; later patches follow as usual",
                node.name(),
                file.file_name(),
                if recorded.is_empty() {
                    "nothing".to_string()
                } else {
                    recorded.join(", ")
                }
            ),
        ));
        probes[i].ledger = baseline::ledger_after(patches, file, node.role(), config.replication);
    }
    (new, findings)
}
