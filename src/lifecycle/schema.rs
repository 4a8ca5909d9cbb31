//! What a node's database holds besides pgconvoy's ledger: how many user relations, and
//! which of the relations some patches create exist already. Read-only. A node with no
//! ledger and no user relations is *new*; one with relations but no ledger predates
//! pgconvoy (the dry run suggests `stamp`).

use tokio_postgres::GenericClient;

use crate::db::pgerror::PgFailure;
use crate::db::quote::quote_ident;

/// What [`look`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaLook {
    /// Tables, views, materialized views, sequences and foreign tables outside the
    /// system schemas.
    pub user_relations: i64,
    /// Those of the names asked about that exist (as given).
    pub existing: Vec<String>,
}

/// Relations outside the system schemas, of the kinds a schema is made of.
const USER_RELATIONS: &str =
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";

/// Counts the user relations and checks which of `names` (`name` or `schema.name`, as
/// [`crate::patches::created::created_relation`] gives them) exist, in one round trip.
pub async fn look(client: &impl GenericClient, names: &[String]) -> Result<SchemaLook, PgFailure> {
    let quoted: Vec<String> = names
        .iter()
        .map(|n| n.split('.').map(quote_ident).collect::<Vec<_>>().join("."))
        .collect();
    let row = client
        .query_one(
            &format!(
                "SELECT ({USER_RELATIONS}),
                        array(SELECT i::int FROM unnest($1::text[]) WITH ORDINALITY AS u(name, i)
                               WHERE to_regclass(u.name) IS NOT NULL ORDER BY i)"
            ),
            &[&quoted],
        )
        .await?;
    let found: Vec<i32> = row.get(1);
    Ok(SchemaLook {
        user_relations: row.get(0),
        existing: found
            .into_iter()
            .filter_map(|i| usize::try_from(i - 1).ok())
            .filter_map(|i| names.get(i).cloned())
            .collect(),
    })
}
