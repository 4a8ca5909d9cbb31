//! Publishing the tables a group created: the publication's scope on the master,
//! its tables, `ALTER PUBLICATION … ADD TABLE` and refreshing the subscriptions.

use std::collections::BTreeSet;

use super::error::ReplicationError;
use super::subscriptions::subscriptions;
use crate::db::cluster::Node;
use crate::db::quote::quote_ident;

/// The tables of a publication's schemas on the master, for finding the ones a group created.
pub struct PublicationScope {
    pub name: String,
    pub all_tables: bool,
    pub schemas: Vec<String>,
}

/// The scope of publication `name` on the master, the ledger's schema left out.
pub async fn publication_scope(
    master: &Node,
    name: &str,
    ledger_schema: &str,
) -> Result<PublicationScope, ReplicationError> {
    let failed = |e| ReplicationError::node(master.name(), "master node", None, e);
    let session = master.session().await.map_err(failed)?;
    let row = session
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| failed(e.into()))?
        .ok_or_else(|| ReplicationError::NoPublication {
            name: name.to_string(),
        })?;
    let all_tables: bool = row.get(0);
    let rows = session
        .query(
            "SELECT DISTINCT schemaname::text FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| failed(e.into()))?;
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
pub async fn tables(
    master: &Node,
    scope: &PublicationScope,
) -> Result<BTreeSet<String>, ReplicationError> {
    let failed = |e| ReplicationError::node(master.name(), "master node", None, e);
    let session = master.session().await.map_err(failed)?;
    let rows = session
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = ANY ($1)",
            &[&scope.schemas],
        )
        .await
        .map_err(|e| failed(e.into()))?;
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
) -> Result<Vec<String>, ReplicationError> {
    let mut notes = Vec::new();
    if new.is_empty() {
        return Ok(notes);
    }
    let failed = |e| ReplicationError::node(master.name(), "master node", None, e);
    let session = master.session().await.map_err(failed)?;
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
                .map_err(|e| failed(e.into()))?
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
                .map_err(|e| ReplicationError::Statement {
                    node: master.name().clone(),
                    statement: "ALTER PUBLICATION on the master".into(),
                    failure: e.into(),
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
            .map_err(|e| ReplicationError::node(node.name(), "node", None, e))?;
        let subs = subscriptions(s.client())
            .await
            .map_err(|e| ReplicationError::node(node.name(), "node", None, e))?;
        for sub in subs.iter().filter(|s| s.publications.contains(&scope.name)) {
            s.batch_execute(&format!(
                "ALTER SUBSCRIPTION {} REFRESH PUBLICATION",
                quote_ident(&sub.name)
            ))
            .await
            .map_err(|e| ReplicationError::Statement {
                node: node.name().clone(),
                statement: format!(
                    "ALTER SUBSCRIPTION `{}` REFRESH PUBLICATION on node `{}`",
                    sub.name,
                    node.name()
                ),
                failure: e.into(),
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
