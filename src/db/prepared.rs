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

/// The gid of a node's part of an `--atomic` deploy run `deploy_id`:
/// `pgconvoy:LEDGER:deploy-ID:NODE:DATABASE`.
pub fn deploy_gid(ledger: &Ledger, deploy_id: &str, node: &NodeConfig) -> String {
    format!(
        "{}deploy-{deploy_id}:{}:{}",
        gid_prefix(ledger),
        node.name,
        node.database()
    )
}

/// What a prepared transaction of pgconvoy's was part of.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum GidOwner {
    /// An `--atomic` direct patch.
    Patch(PatchVersion),
    /// An `--atomic` deploy, by its id (`deploy_id` in `pgconvoy.package`).
    Deploy(String),
}

impl std::fmt::Display for GidOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GidOwner::Patch(v) => write!(f, "patch {v}"),
            GidOwner::Deploy(id) => write!(f, "deploy {id}"),
        }
    }
}

/// The patch or deploy a pgconvoy gid belongs to.
pub fn gid_owner(ledger: &Ledger, gid: &str) -> Option<GidOwner> {
    let rest = gid.strip_prefix(&gid_prefix(ledger))?;
    let (what, _node) = rest.split_once(':')?;
    match what.strip_prefix("deploy-") {
        Some(id) if !id.is_empty() => Some(GidOwner::Deploy(id.to_string())),
        Some(_) => None,
        None => what.parse().ok().map(GidOwner::Patch),
    }
}

pub fn gid_prefix(ledger: &Ledger) -> String {
    format!("pgconvoy:{}:", ledger.name())
}

/// The version a pgconvoy gid of a patch belongs to.
pub fn gid_version(ledger: &Ledger, gid: &str) -> Option<PatchVersion> {
    match gid_owner(ledger, gid)? {
        GidOwner::Patch(v) => Some(v),
        GidOwner::Deploy(_) => None,
    }
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

/// As [`resolve`], on a connection of its own rather than a pooled session (which a run
/// whose cluster lock session ended may no longer take).
pub async fn resolve_fresh(node: &Node, gid: &str, commit: bool) -> Result<(), PgFailure> {
    let c = node.dedicated().await?;
    c.client
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
        let node = NodeConfig::for_tests("node-1", crate::config::Role::Replica);
        let g = gid(&l, PatchVersion::new(1, 10, 2), &node);
        assert_eq!(g, "pgconvoy:pgconvoy.revision:1-10-2:node-1:app");
        assert_eq!(gid_version(&l, &g), Some(PatchVersion::new(1, 10, 2)));
        assert_eq!(gid_version(&l, "other:1-0-0:x"), None);
        let other = Ledger::new(LedgerTable::parse("ops.ledger").unwrap());
        assert_eq!(gid_version(&other, &g), None);
        let d = deploy_gid(&l, "1764601200000-42", &node);
        assert_eq!(
            d,
            "pgconvoy:pgconvoy.revision:deploy-1764601200000-42:node-1:app"
        );
        assert_eq!(
            gid_owner(&l, &d),
            Some(GidOwner::Deploy("1764601200000-42".into()))
        );
        assert_eq!(gid_version(&l, &d), None);
        assert_eq!(
            gid_owner(&l, &g),
            Some(GidOwner::Patch(PatchVersion::new(1, 10, 2)))
        );
    }
}
