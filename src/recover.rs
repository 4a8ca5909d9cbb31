//! Two-phase-commit bookkeeping: pgconvoy's global transaction ids, finding the
//! prepared transactions a dead `--atomic` coordinator left behind, and
//! `pgconvoy recover`, which resolves them.
//!
//! The rule: the coordinator only starts `COMMIT PREPARED` once every node has
//! prepared, so if the patch committed on any node the decision was "commit"
//! and the rest are committed too; otherwise every prepared part is rolled back.

use std::collections::BTreeMap;
use std::io::Write;

use futures::stream::{self, StreamExt};

use crate::cluster::{Cluster, Node};
use crate::config::{Config, NodeConfig};
use crate::error::Error;
use crate::ledger::{Ledger, NodeLedger};
use crate::patch::PatchVersion;
use crate::pgerror::PgFailure;

/// The gid of a node's part of patch `version`:
/// `pgconvoy:LEDGER:M-m-p:NODE:DATABASE`. Gids are unique per server, not per
/// database, so the database is part of it: two clusters sharing servers
/// must not collide.
pub fn gid(ledger: &Ledger, version: PatchVersion, node: &NodeConfig) -> String {
    format!(
        "{}{version}:{}:{}",
        gid_prefix(ledger),
        node.name,
        node.database()
    )
}

pub fn gid_prefix(ledger: &Ledger) -> String {
    format!("pgconvoy:{}:", ledger.name())
}

/// The version a pgconvoy gid belongs to.
pub fn gid_version(ledger: &Ledger, gid: &str) -> Option<PatchVersion> {
    let rest = gid.strip_prefix(&gid_prefix(ledger))?;
    let (version, _node) = rest.split_once(':')?;
    version.parse().ok()
}

/// A prepared transaction of pgconvoy's on a node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prepared {
    pub gid: String,
    pub prepared_at: String,
}

/// pgconvoy's prepared transactions in the node's database.
pub async fn list(
    client: &tokio_postgres::Client,
    ledger: &Ledger,
) -> Result<Vec<Prepared>, PgFailure> {
    let like = format!(
        "{}%",
        gid_prefix(ledger).replace('%', "\\%").replace('_', "\\_")
    );
    let rows = client
        .query(
            "SELECT gid, to_char(prepared AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
               FROM pg_prepared_xacts
              WHERE database = current_database() AND gid LIKE $1
              ORDER BY prepared",
            &[&like],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Prepared {
            gid: r.get(0),
            prepared_at: r.get(1),
        })
        .collect())
}

/// `pgconvoy recover`.
pub async fn recover(config: &Config, out: &mut dyn Write) -> Result<(), Error> {
    let cluster = Cluster::new(config);
    let ledger = Ledger::new(config.ledger.clone());
    let _lock =
        crate::coordinator::acquire_lock(&cluster, &ledger, false, &crate::report::Silent).await?;

    // Every node must answer: deciding without one could split the cluster.
    let states: Vec<(NodeLedger, Vec<Prepared>)> = stream::iter(cluster.nodes.iter())
        .map(|node| probe(node, &ledger))
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

async fn probe(node: &Node, ledger: &Ledger) -> Result<(NodeLedger, Vec<Prepared>), Error> {
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

/// Commits or rolls back one prepared transaction (outside any transaction block).
pub async fn resolve(node: &Node, gid: &str, commit: bool) -> Result<(), PgFailure> {
    let session = node.session().await?;
    let verb = if commit {
        "COMMIT PREPARED"
    } else {
        "ROLLBACK PREPARED"
    };
    session
        .batch_execute(&format!("{verb} {}", quote_literal(gid)))
        .await?;
    Ok(())
}

/// A SQL string literal (standard_conforming_strings). Gids are built from
/// checked node names and versions; this quoting is belt and braces.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LedgerTable;

    #[test]
    fn gids_round_trip() {
        let l = Ledger::new(LedgerTable::parse("pgconvoy.revision").unwrap());
        let node = NodeConfig {
            name: crate::config::NodeName::parse("node-1").unwrap(),
            role: crate::config::Role::Replica,
            pg: crate::config::parse_dsn("host=h dbname=app").unwrap(),
            endpoint: "h:5432/app".into(),
        };
        let g = gid(&l, PatchVersion::new(1, 10, 2), &node);
        assert_eq!(g, "pgconvoy:pgconvoy.revision:1-10-2:node-1:app");
        assert_eq!(gid_version(&l, &g), Some(PatchVersion::new(1, 10, 2)));
        assert_eq!(gid_version(&l, "other:1-0-0:x"), None);
        let other = Ledger::new(LedgerTable::parse("ops.ledger").unwrap());
        assert_eq!(gid_version(&other, &g), None);
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }
}
