//! `pgconvoy recover`: resolves the prepared transactions a dead `--atomic`
//! coordinator left behind (gids and listing live in [`crate::db::prepared`]).
//!
//! The rule: the coordinator only starts `COMMIT PREPARED` once every node has
//! prepared, so if the patch (or the `--atomic` deploy) committed on any node the
//! decision was "commit" and the rest are committed too; otherwise every prepared
//! part is rolled back. A patch committed where the ledger has its row done; a
//! deploy where `pgconvoy.package` has rows with its id.

use std::collections::BTreeMap;
use std::fmt;

use futures::stream::{self, StreamExt};

use crate::config::{Config, NodeName};
use crate::db::cluster::{Cluster, Node};
use crate::db::ledger::{Ledger, NodeLedger};
use crate::db::lock::acquire_lock;
use crate::db::prepared::{gid_owner, list, resolve, verb, GidOwner, Prepared};
use crate::error::Error;
use crate::packages::record::PackageBook;

/// One prepared transaction resolved by `recover`.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub node: NodeName,
    pub gid: String,
    /// The patch or deploy it was part of.
    pub owner: GidOwner,
    /// Committed (the patch committed elsewhere), else rolled back.
    pub commit: bool,
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node `{}`: {} '{}' ({} {})",
            self.node,
            verb(self.commit),
            self.gid,
            self.owner,
            if self.commit {
                "committed elsewhere"
            } else {
                "committed nowhere"
            }
        )
    }
}

/// What `recover` did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Whether any prepared transaction of pgconvoy's was found.
    pub found: bool,
    pub resolved: Vec<Resolution>,
    /// `node `x`: COMMIT PREPARED 'gid' failed: …`
    pub unresolved: Vec<String>,
}

impl Recovery {
    /// The error `recover` ends with when some could not be resolved.
    pub fn error(&self) -> Option<Error> {
        (!self.unresolved.is_empty()).then(|| Error::Unresolved {
            unresolved: self.unresolved.clone(),
        })
    }
}

/// `pgconvoy recover`: takes the cluster lock, reads every node, resolves every prepared
/// transaction of pgconvoy's by the rule above.
pub async fn recover(config: &Config) -> Result<Recovery, Error> {
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

    let mut committed_somewhere: BTreeMap<GidOwner, bool> = BTreeMap::new();
    for (_, prepared) in &states {
        for p in prepared {
            if let Some(owner) = gid_owner(&ledger, &p.gid) {
                committed_somewhere.entry(owner).or_insert(false);
            }
        }
    }
    let book = PackageBook::new(&config.ledger.schema);
    for (owner, committed) in committed_somewhere.iter_mut() {
        *committed = match owner {
            GidOwner::Patch(v) => states
                .iter()
                .any(|(l, _)| l.main.get(v).is_some_and(|r| r.is_done())),
            GidOwner::Deploy(id) => deploy_committed(&cluster, &book, id).await?,
        };
    }
    let mut recovery = Recovery {
        found: !committed_somewhere.is_empty(),
        ..Recovery::default()
    };
    for (node, (_, prepared)) in cluster.nodes.iter().zip(&states) {
        for p in prepared {
            let Some(owner) = gid_owner(&ledger, &p.gid) else {
                continue;
            };
            let commit = committed_somewhere.get(&owner).copied().unwrap_or(false);
            match resolve(node, &p.gid, commit).await {
                Ok(()) => recovery.resolved.push(Resolution {
                    node: node.name().clone(),
                    gid: p.gid.clone(),
                    owner,
                    commit,
                }),
                Err(e) => recovery.unresolved.push(format!(
                    "node `{}`: {} '{}' failed: {e}",
                    node.name(),
                    verb(commit),
                    p.gid
                )),
            }
        }
    }
    Ok(recovery)
}

/// Whether the `--atomic` deploy `id` committed on any node (its records are there).
async fn deploy_committed(cluster: &Cluster, book: &PackageBook, id: &str) -> Result<bool, Error> {
    for node in &cluster.nodes {
        let session = node.session().await.map_err(|e| node.unreachable(e))?;
        let committed = book
            .committed(session.client(), id)
            .await
            .map_err(|failure| node.failed("read the package records", failure))?;
        if committed {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A node's ledger and its prepared transactions of pgconvoy's.
async fn read_node(node: &Node, ledger: &Ledger) -> Result<(NodeLedger, Vec<Prepared>), Error> {
    let session = node.session().await.map_err(|e| node.unreachable(e))?;
    let failed = |failure| node.failed("read the ledger and prepared transactions", failure);
    let l = ledger.read(session.client()).await.map_err(failed)?;
    let p = list(session.client(), ledger).await.map_err(failed)?;
    Ok((l, p))
}
