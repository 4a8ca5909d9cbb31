//! `pgconvoy.package` on every node (in the ledger's schema): what was
//! deployed there, when, by whom, and what became of it. Rows are never
//! deleted: a deployment replaced by `--mode moderate` is marked `aside` (with
//! the schema it was renamed to), one replaced by `--mode unsafe` `dropped`,
//! one whose schema vanished by hand `vanished` — so the table is also the
//! node's deployment history.

use std::collections::BTreeSet;

use tokio_postgres::GenericClient;

use super::discover::Package;
use super::plan::{Action, Deployed, Mode, NodeState, Step};
use crate::db::pgerror::PgFailure;
use crate::db::quote::quote_ident;

/// The table's name in a ledger schema.
pub const TABLE: &str = "package";

/// The SQL names of a cluster's package records.
#[derive(Debug, Clone)]
pub struct PackageBook {
    schema: String,
}

/// One row of `pgconvoy.package`, for status and history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Deployment {
    pub name: String,
    pub version: String,
    /// The schema it was deployed into.
    pub schema: String,
    pub checksum: String,
    pub subclass: String,
    /// RFC 3339, UTC.
    pub deployed_at: String,
    pub deployed_by: String,
    pub mode: String,
    /// `live`, `aside`, `dropped` or `vanished`.
    pub state: String,
    /// Where `--mode moderate` renamed it to.
    pub aside_schema: Option<String>,
    pub retired_at: Option<String>,
}

impl PackageBook {
    /// Records live in the ledger's schema (`pgconvoy` by default).
    pub fn new(ledger_schema: &str) -> PackageBook {
        PackageBook {
            schema: ledger_schema.to_string(),
        }
    }

    pub fn name(&self) -> String {
        format!("{}.{TABLE}", self.schema)
    }

    fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(TABLE))
    }

    /// The DDL, idempotent; run by a coordinator holding the cluster lock,
    /// inside the node's deploy transaction.
    pub fn ensure_sql(&self) -> String {
        format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {table} (
                 name         text NOT NULL,
                 version      text NOT NULL,
                 schema       text NOT NULL,
                 checksum     text NOT NULL,
                 subclass     text NOT NULL CHECK (subclass IN ('versioned', 'basic')),
                 deployed_at  timestamptz NOT NULL,
                 deployed_by  text NOT NULL,
                 deploy_id    text NOT NULL,
                 mode         text NOT NULL CHECK (mode IN ('safe', 'moderate', 'unsafe')),
                 state        text NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'aside', 'dropped', 'vanished')),
                 aside_schema text,
                 retired_at   timestamptz
             );
             CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {table} (schema) WHERE state = 'live';
             COMMENT ON TABLE {table} IS 'pgconvoy: code packages deployed on this node; state live = in use, aside/dropped/vanished = replaced';",
            schema = quote_ident(&self.schema),
            table = self.qualified(),
            index = quote_ident("package_live_schema"),
        )
    }

    /// What the deploy plan needs from a node; reads only, so a read-only
    /// role will do (no table yet: nothing deployed).
    pub async fn read_state(&self, client: &impl GenericClient) -> Result<NodeState, PgFailure> {
        let mut state = NodeState::default();
        for row in client
            .query("SELECT nspname::text FROM pg_namespace", &[])
            .await?
        {
            state.schemas.insert(row.get(0));
        }
        if !self.exists(client).await? {
            return Ok(state);
        }
        let rows = client
            .query(
                &format!(
                    "SELECT name, version, schema, checksum FROM {} WHERE state = 'live'",
                    self.qualified()
                ),
                &[],
            )
            .await?;
        for row in rows {
            let d = Deployed {
                name: row.get(0),
                version: row.get(1),
                schema: row.get(2),
                checksum: row.get(3),
            };
            state.live.insert(d.schema.clone(), d);
        }
        Ok(state)
    }

    async fn exists(&self, client: &impl GenericClient) -> Result<bool, PgFailure> {
        Ok(client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.qualified()])
            .await?
            .get(0))
    }

    /// Every row, oldest first: the node's deployment history.
    pub async fn deployments(
        &self,
        client: &impl GenericClient,
    ) -> Result<Vec<Deployment>, PgFailure> {
        if !self.exists(client).await? {
            return Ok(Vec::new());
        }
        const UTC: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";
        let rows = client
            .query(
                &format!(
                    "SELECT name, version, schema, checksum, subclass,
                            to_char(deployed_at AT TIME ZONE 'UTC', {UTC}), deployed_by, mode, state,
                            aside_schema, to_char(retired_at AT TIME ZONE 'UTC', {UTC})
                       FROM {} ORDER BY deployed_at, name",
                    self.qualified()
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Deployment {
                name: r.get(0),
                version: r.get(1),
                schema: r.get(2),
                checksum: r.get(3),
                subclass: r.get(4),
                deployed_at: r.get(5),
                deployed_by: r.get(6),
                mode: r.get(7),
                state: r.get(8),
                aside_schema: r.get(9),
                retired_at: r.get(10),
            })
            .collect())
    }

    /// Records `step` of `package` as done on this node (inside its deploy
    /// transaction): the replaced deployment is retired, the new one is live.
    #[allow(clippy::too_many_arguments)]
    pub async fn record(
        &self,
        client: &impl GenericClient,
        package: &Package,
        step: &Step,
        mode: Mode,
        deploy_id: &str,
        deployed_by: &str,
    ) -> Result<(), PgFailure> {
        let (retired_as, aside): (&str, Option<&str>) = match &step.action {
            Action::UpToDate | Action::Refuse { .. } => return Ok(()),
            Action::Deploy { .. } => ("vanished", None),
            Action::RenameAside { to, .. } => ("aside", Some(to.as_str())),
            Action::Drop { .. } => ("dropped", None),
        };
        let table = self.qualified();
        client
            .execute(
                &format!(
                    "UPDATE {table} SET state = $2, aside_schema = $3, retired_at = clock_timestamp()
                      WHERE schema = $1 AND state = 'live'"
                ),
                &[&step.schema, &retired_as, &aside],
            )
            .await?;
        let m = &package.manifest;
        client
            .execute(
                &format!(
                    "INSERT INTO {table} (name, version, schema, checksum, subclass, deployed_at, deployed_by, deploy_id, mode)
                     VALUES ($1, $2, $3, $4, $5, clock_timestamp(), $6, $7, $8)"
                ),
                &[
                    &m.name.as_str(),
                    &m.version.to_string(),
                    &step.schema,
                    &package.checksum,
                    &m.subclass.to_string(),
                    &deployed_by,
                    &deploy_id,
                    &mode.as_str(),
                ],
            )
            .await?;
        Ok(())
    }

    /// Whether a deploy whose id is `deploy_id` committed on this node (for
    /// resolving the prepared transactions of an interrupted `--atomic` deploy).
    pub async fn committed(
        &self,
        client: &impl GenericClient,
        deploy_id: &str,
    ) -> Result<bool, PgFailure> {
        if !self.exists(client).await? {
            return Ok(false);
        }
        Ok(client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT FROM {} WHERE deploy_id = $1)",
                    self.qualified()
                ),
                &[&deploy_id],
            )
            .await?
            .get(0))
    }
}

/// The roles among `wanted` that do not exist on a node.
pub async fn missing_roles(
    client: &impl GenericClient,
    wanted: &BTreeSet<String>,
) -> Result<Vec<String>, PgFailure> {
    let list: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let rows = client
        .query(
            "SELECT r FROM unnest($1::text[]) r WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) ORDER BY r",
            &[&list],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
