//! `pgconvoy recover`: resolves the prepared transactions a dead `--atomic`
//! coordinator left behind (gids and listing live in [`crate::db::prepared`]).
//!
//! The rule: the coordinator only starts `COMMIT PREPARED` once every node has
//! prepared, so if the patch committed on any node the decision was "commit"
//! and the rest are committed too; otherwise every prepared part is rolled back.

use std::collections::BTreeMap;
use std::io::Write;

use futures::stream::{self, StreamExt};

use crate::config::Config;
use crate::db::cluster::{Cluster, Node};
use crate::db::ledger::{Ledger, NodeLedger};
use crate::db::lock::acquire_lock;
use crate::db::pgerror::PgFailure;
use crate::db::prepared::{gid_version, list, resolve, Prepared};
use crate::error::Error;
use crate::patches::patch::PatchVersion;

/// `pgconvoy recover`.
pub async fn recover(config: &Config, out: &mut dyn Write) -> Result<(), Error> {
    let cluster = Cluster::new(config);
    let ledger = Ledger::new(config.ledger.clone());
    let _lock = acquire_lock(&cluster, &ledger, false, &crate::progress::Silent).await?;

    // Every node must answer: deciding without one could split the cluster.
    let states: Vec<(NodeLedger, Vec<Prepared>)> = stream::iter(cluster.nodes.iter())
        .map(|node| read_node(node, &ledger))
        .buffered(cluster.jobs)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;

    let mut committed_somewhere: BTreeMap<PatchVersion, bool> = BTreeMap::new();
    for (l, prepared) in &states {
        for p in prepared {
            if let Some(v) = gid_version(&ledger, &p.gid) {
                committed_somewhere.entry(v).or_insert(false);
            }
        }
        let _ = l;
    }
    for (v, committed) in committed_somewhere.iter_mut() {
        *committed = states
            .iter()
            .any(|(l, _)| l.main.get(v).is_some_and(|r| r.is_done()));
    }
    if committed_somewhere.is_empty() {
        let _ = writeln!(
            out,
            "no prepared transactions of pgconvoy on any node: nothing to recover"
        );
        return Ok(());
    }

    let mut failures = Vec::new();
    for (node, (_, prepared)) in cluster.nodes.iter().zip(&states) {
        for p in prepared {
            let Some(v) = gid_version(&ledger, &p.gid) else {
                continue;
            };
            let commit = committed_somewhere.get(&v).copied().unwrap_or(false);
            let verb = if commit {
                "COMMIT PREPARED"
            } else {
                "ROLLBACK PREPARED"
            };
            match resolve(node, &p.gid, commit).await {
                Ok(()) => {
                    let _ = writeln!(
                        out,
                        "node `{}`: {verb} '{}' (patch {v} {})",
                        node.name(),
                        p.gid,
                        if commit {
                            "committed elsewhere"
                        } else {
                            "committed nowhere"
                        }
                    );
                }
                Err(e) => failures.push(format!(
                    "node `{}`: {verb} '{}' failed: {e}",
                    node.name(),
                    p.gid
                )),
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Failed(failures.join("; ")))
    }
}

/// A node's ledger and its prepared transactions of pgconvoy's.
async fn read_node(node: &Node, ledger: &Ledger) -> Result<(NodeLedger, Vec<Prepared>), Error> {
    let unreachable = |e: PgFailure| {
        Error::Failed(format!(
            "node `{}` ({}): {e}",
            node.name(),
            node.config.endpoint
        ))
    };
    let session = node.session().await.map_err(unreachable)?;
    let l = ledger.read(session.client()).await.map_err(unreachable)?;
    let p = list(session.client(), ledger).await.map_err(unreachable)?;
    Ok((l, p))
}
