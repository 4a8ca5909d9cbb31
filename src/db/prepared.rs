//! Two-phase commit bookkeeping on the nodes: pgconvoy's global transaction ids
//! (gids), listing the prepared transactions of pgconvoy's on a node, and resolving one.
//! Used by `--atomic` runs, `recover`, `status` and the dry run.

use crate::config::NodeConfig;
use crate::db::cluster::Node;
use crate::db::ledger::Ledger;
use crate::db::pgerror::PgFailure;
use crate::db::quote::quote_literal;
use crate::patches::patch::PatchVersion;

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

/// Commits or rolls back one prepared transaction (outside any transaction block).
pub async fn resolve(node: &Node, gid: &str, commit: bool) -> Result<(), PgFailure> {
    let session = node.session().await?;
    session
        .batch_execute(&format!("{} {}", verb(commit), quote_literal(gid)))
        .await?;
    Ok(())
}

/// `COMMIT PREPARED` or `ROLLBACK PREPARED`.
pub fn verb(commit: bool) -> &'static str {
    if commit {
        "COMMIT PREPARED"
    } else {
        "ROLLBACK PREPARED"
    }
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
    }
}
