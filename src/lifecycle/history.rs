//! `history`: every ledger row of every node (or the `--node` ones), oldest first —
//! node, version, type, start, end, duration, attempts and who applied it — and every
//! node's code package deployments (`pgconvoy.package`), oldest first. Reads only.

use futures::stream::{self, StreamExt};

use crate::config::{Config, NodeName};
use crate::db::cluster::Cluster;
use crate::db::ledger::{HistoryRow, Ledger};
use crate::error::Error;
use crate::packages::record::{Deployment, PackageBook};

use super::select;

/// One row of one node's ledger.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeRow {
    pub node: NodeName,
    #[serde(flatten)]
    pub row: HistoryRow,
}

/// One deployment of a code package on one node (`deploy`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeDeployment {
    pub node: NodeName,
    #[serde(flatten)]
    pub deployment: Deployment,
}

/// Every row, oldest first, and the nodes that could not be read.
#[derive(Debug, Default, serde::Serialize)]
pub struct History {
    pub rows: Vec<NodeRow>,
    /// Package deployments of every node read, oldest first.
    pub deployments: Vec<NodeDeployment>,
    /// Nodes read (in config order).
    pub nodes: Vec<NodeName>,
    #[serde(skip)]
    pub failures: Vec<Error>,
}

impl History {
    /// Whether the history lacks nodes: the first failure (exit 1).
    pub fn error(&mut self) -> Option<Error> {
        if self.failures.is_empty() {
            None
        } else {
            Some(self.failures.remove(0))
        }
    }
}

/// Reads every selected node's ledger (both books) and merges the rows by start time.
pub async fn history(config: &Config, nodes: &[String]) -> Result<History, Error> {
    let nodes = select(config, nodes)?;
    let cluster = Cluster::new(config);
    let ledger = Ledger::new(config.ledger.clone());
    let book = PackageBook::new(&config.ledger.schema);
    type Read = (Vec<HistoryRow>, Vec<Deployment>);
    let results: Vec<(usize, Result<Read, Error>)> = stream::iter(nodes)
        .map(|i| {
            let cluster = &cluster;
            let ledger = &ledger;
            let book = &book;
            async move {
                let node = &cluster.nodes[i];
                let r = async {
                    let session = node.session().await.map_err(|e| node.unreachable(e))?;
                    let failed = |action, failure| Error::Node {
                        node: node.name().clone(),
                        master: i == 0,
                        action,
                        failure: Box::new(failure),
                    };
                    let rows = ledger
                        .history(session.client())
                        .await
                        .map_err(|f| failed("read the ledger", f))?;
                    let deployments = book
                        .deployments(session.client())
                        .await
                        .map_err(|f| failed("read the package records", f))?;
                    Ok((rows, deployments))
                }
                .await;
                (i, r)
            }
        })
        .buffered(cluster.jobs)
        .collect()
        .await;
    let mut out = History::default();
    let mut keyed = Vec::new();
    for (i, r) in results {
        let name = cluster.nodes[i].name().clone();
        match r {
            Ok((rows, deployments)) => {
                out.nodes.push(name.clone());
                keyed.extend(rows.into_iter().map(|row| (i, row)));
                out.deployments
                    .extend(deployments.into_iter().map(|deployment| NodeDeployment {
                        node: name.clone(),
                        deployment,
                    }));
            }
            Err(e) => out.failures.push(e),
        }
    }
    keyed.sort_by(|(a, x), (b, y)| {
        (
            x.start_us,
            *a,
            x.version,
            x.book == crate::db::ledger::Book::Local,
        )
            .cmp(&(
                y.start_us,
                *b,
                y.version,
                y.book == crate::db::ledger::Book::Local,
            ))
    });
    // RFC 3339 UTC to the second sorts as text; ties in config order (stable sort).
    out.deployments
        .sort_by(|a, b| a.deployment.deployed_at.cmp(&b.deployment.deployed_at));
    out.rows = keyed
        .into_iter()
        .map(|(i, row)| NodeRow {
            node: cluster.nodes[i].name().clone(),
            row,
        })
        .collect();
    Ok(out)
}
