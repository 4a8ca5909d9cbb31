//! Publishing the tables a group created: the publication's scope on the master,
//! its tables, `ALTER PUBLICATION … ADD TABLE` and refreshing the subscriptions.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::subscriptions::subscriptions;
use crate::db::cluster::Node;
use crate::db::pgerror::PgFailure;
use crate::db::quote::quote_ident;

/// The tables of a publication's schemas on the master, for finding the ones a group created.
pub struct PublicationScope {
    pub name: String,
    pub all_tables: bool,
    pub schemas: Vec<String>,
}

pub async fn publication_scope(
    client: &Client,
    name: &str,
    ledger_schema: &str,
) -> Result<PublicationScope, String> {
    let row = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| PgFailure::from_pg(&e).to_string())?
        .ok_or_else(|| {
            format!("publication `{name}` (key `publication`) does not exist on the master")
        })?;
    let all_tables: bool = row.get(0);
    let rows = client
        .query(
            "SELECT DISTINCT schemaname::text FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| PgFailure::from_pg(&e).to_string())?;
    let mut schemas: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    if schemas.is_empty() {
        schemas.insert("public".into());
    }
    schemas.remove(ledger_schema);
    Ok(PublicationScope {
        name: name.to_string(),
        all_tables,
        schemas: schemas.into_iter().collect(),
    })
}

/// Ordinary and partitioned tables in the scope's schemas, qualified and quoted.
pub async fn tables(client: &Client, scope: &PublicationScope) -> Result<BTreeSet<String>, String> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = ANY ($1)",
            &[&scope.schemas],
        )
        .await
        .map_err(|e| PgFailure::from_pg(&e).to_string())?;
    Ok(rows
        .iter()
        .map(|r| format!("{}.{}", quote_ident(r.get(0)), quote_ident(r.get(1))))
        .collect())
}

/// Adds `new` tables to the publication (unless it is FOR ALL TABLES or already
/// has them), then refreshes every subscription to it, outside any transaction,
/// so the subscribers copy the tables' rows and follow them.
pub async fn publish(
    master: &Node,
    replicas: &[&Node],
    scope: &PublicationScope,
    new: &BTreeSet<String>,
) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    if new.is_empty() {
        return Ok(notes);
    }
    let session = master.session().await.map_err(|e| format!("master: {e}"))?;
    let mut added = Vec::new();
    if !scope.all_tables {
        for table in new {
            let present: bool = session
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                                     WHERE p.pubname = $1 AND pr.prrelid = $2::text::regclass)",
                    &[&scope.name, table],
                )
                .await
                .map_err(|e| PgFailure::from_pg(&e).to_string())?
                .get(0);
            if !present {
                added.push(table.clone());
            }
        }
        if !added.is_empty() {
            session
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(&scope.name),
                    added.join(", ")
                ))
                .await
                .map_err(|e| {
                    format!(
                        "ALTER PUBLICATION on the master: {}",
                        PgFailure::from_pg(&e)
                    )
                })?;
            notes.push(format!(
                "published {} on the master (publication `{}`)",
                added.join(", "),
                scope.name
            ));
        }
    }
    for node in replicas {
        let s = node
            .session()
            .await
            .map_err(|e| format!("node `{}`: {e}", node.name()))?;
        let subs = subscriptions(s.client())
            .await
            .map_err(|e| format!("node `{}`: {e}", node.name()))?;
        for sub in subs.iter().filter(|s| s.publications.contains(&scope.name)) {
            s.batch_execute(&format!(
                "ALTER SUBSCRIPTION {} REFRESH PUBLICATION",
                quote_ident(&sub.name)
            ))
            .await
            .map_err(|e| {
                format!(
                    "ALTER SUBSCRIPTION `{}` REFRESH PUBLICATION on node `{}`: {}",
                    sub.name,
                    node.name(),
                    PgFailure::from_pg(&e)
                )
            })?;
            notes.push(format!(
                "refreshed subscription `{}` on node `{}`",
                sub.name,
                node.name()
            ));
        }
    }
    Ok(notes)
}
