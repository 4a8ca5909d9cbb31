//! `stamp --from-lazr`: adopt lazr.postgresql's ledger. On every node, the patches its
//! `lazrdatabaserevision` table lists as finished are recorded in pgconvoy's ledger with
//! lazr's start and end times (the rows a pgconvoy run would have left there); versions
//! lazr has that the patch directory lacks are reported, not recorded. Every node is read
//! before anything is written: one without the table refuses the whole command.
//!
//! lazr.postgresql's table (its upgrade.py): `major`, `minor`, `patch` (the primary key),
//! `start_time` and `end_time` as `timestamp without time zone` in UTC, and `branch_nick`,
//! `revno`, `revid`. Its own schema patches have major 0.

use std::time::SystemTime;

use futures::stream::{self, StreamExt};

use crate::config::{Config, LedgerTable, NodeName};
use crate::db::cluster::Cluster;
use crate::db::ledger::version_of;
use crate::db::lock::release_lock;
use crate::db::pgerror::PgFailure;
use crate::db::quote::quote_ident;
use crate::error::Error;
use crate::identity::Identity;
use crate::patches::discover::PatchSet;
use crate::patches::patch::PatchVersion;

use super::{books, done, open, write_all, Start, Write, Written};

/// lazr.postgresql's table name, as its upgrade.py creates it (in schema `public`).
pub const DEFAULT_LAZR_TABLE: &str = "public.lazrdatabaserevision";

/// What `stamp --from-lazr` was asked.
#[derive(Debug, Clone)]
pub struct AdoptRequest {
    pub table: LedgerTable,
    /// `--node` names (empty: every node).
    pub nodes: Vec<String>,
    pub dry_run: bool,
}

/// One row of lazr's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LazrRow {
    pub version: PatchVersion,
    pub start: Option<SystemTime>,
    /// `None`: lazr started the patch and did not finish it.
    pub end: Option<SystemTime>,
}

/// What adopting found and did on one node.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NodeAdoption {
    pub node: Option<NodeName>,
    /// Versions recorded in pgconvoy's ledger (in a dry run: that would be).
    pub adopted: Vec<String>,
    /// Versions pgconvoy's ledger already showed as done.
    pub already: Vec<String>,
    /// Versions lazr has that the patch directory lacks: not recorded.
    pub not_in_directory: Vec<String>,
    /// lazr.postgresql's own schema patches (major 0): not recorded.
    pub lazr_own: Vec<String>,
    /// Rows lazr started and never finished: not recorded (the patch is still pending).
    pub unfinished: Vec<String>,
    /// Patches of a type this node does not run itself (`std` on a replica).
    pub not_this_node: Vec<String>,
    pub standby: bool,
}

/// What `stamp --from-lazr` did (or would do).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdoptReport {
    pub table: String,
    pub dry_run: bool,
    pub nodes: Vec<NodeAdoption>,
}

/// Parses `--lazr-table` (`schema.table`, or `table` in schema `public`).
pub fn parse_table(text: &str) -> Result<LedgerTable, String> {
    if text.contains('.') {
        LedgerTable::parse(text)
    } else {
        LedgerTable::parse(&format!("public.{text}"))
    }
}

/// Runs `stamp --from-lazr` (see the module documentation).
pub async fn adopt(
    config: &Config,
    patches: &PatchSet,
    req: &AdoptRequest,
) -> Result<AdoptReport, Error> {
    let Start {
        cluster,
        ledger,
        lock,
        reads,
    } = open(config, &req.nodes, req.dry_run).await?;
    let writable: Vec<usize> = reads
        .iter()
        .filter(|r| !r.is_standby())
        .map(|r| r.index)
        .collect();
    let lazr = read_lazr(&cluster, &req.table, &writable).await?;

    let mut report = AdoptReport {
        table: req.table.to_string(),
        dry_run: req.dry_run,
        nodes: Vec::new(),
    };
    let mut work = Vec::new();
    let mut lazr = lazr.into_iter();
    for r in &reads {
        let mut node = NodeAdoption {
            node: Some(r.name.clone()),
            ..NodeAdoption::default()
        };
        if r.is_standby() {
            node.standby = true;
            report.nodes.push(node);
            continue;
        }
        let rows = lazr.next().unwrap_or_default();
        let mut writes = Vec::new();
        for row in rows {
            let v = row.version.to_string();
            let Some(patch) = patches.get(row.version) else {
                if row.version.major == 0 {
                    node.lazr_own.push(v);
                } else {
                    node.not_in_directory.push(v);
                }
                continue;
            };
            if row.end.is_none() {
                node.unfinished.push(v);
                continue;
            }
            let want = books(patch, r.role, config.replication);
            if want.is_empty() {
                node.not_this_node.push(v);
                continue;
            }
            let missing: Vec<_> = want
                .into_iter()
                .filter(|b| !done(&r.ledger, *b, patch))
                .collect();
            if missing.is_empty() {
                node.already.push(v);
                continue;
            }
            node.adopted.push(v);
            writes.extend(missing.into_iter().map(|book| Write::Done {
                book,
                patch,
                start: row.start,
                end: row.end,
            }));
        }
        if !writes.is_empty() {
            work.push((r.index, writes));
        }
        report.nodes.push(node);
    }
    let Some(lock) = lock else {
        return Ok(report);
    };
    let applied_by = Identity::current().applied_by(&format!(
        "stamp --from-lazr (adopted from lazr.postgresql's {})",
        req.table
    ));
    let written = if work.is_empty() {
        Ok(Vec::new())
    } else {
        write_all(&cluster, &ledger, &applied_by, work).await
    };
    release_lock(lock, &ledger).await;
    // Nothing can finish a row meanwhile (the lock is held), so every write wrote.
    debug_assert!(written
        .as_ref()
        .map(|w| w
            .iter()
            .all(|(_, w)| w.iter().all(|x| *x != Written::Nothing)))
        .unwrap_or(true));
    written?;
    Ok(report)
}

/// lazr's rows on each of `nodes`, in version order; the first node without the table
/// (or a column of it) is the error.
async fn read_lazr(
    cluster: &Cluster,
    table: &LedgerTable,
    nodes: &[usize],
) -> Result<Vec<Vec<LazrRow>>, Error> {
    let results: Vec<Result<Vec<LazrRow>, Error>> = stream::iter(nodes.iter().copied())
        .map(|i| async move {
            let node = &cluster.nodes[i];
            let failed = |failure: PgFailure| Error::Node {
                node: node.name().clone(),
                master: i == 0,
                action: "read lazr.postgresql's ledger",
                failure: Box::new(failure),
            };
            let session = node.session().await.map_err(|e| node.unreachable(e))?;
            let qualified = format!(
                "{}.{}",
                quote_ident(&table.schema),
                quote_ident(&table.table)
            );
            let columns: Vec<(String, String)> = session
                .query(
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
                       FROM pg_attribute a
                      WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                    &[&qualified],
                )
                .await
                .map_err(|e| failed(e.into()))?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let lacking = |missing: Option<&str>| Error::LazrTable {
                node: node.name().clone(),
                table: table.to_string(),
                missing: missing.map(str::to_string),
            };
            if columns.is_empty() {
                return Err(lacking(None));
            }
            let type_of = |name: &str| {
                columns
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t.as_str())
            };
            for c in ["major", "minor", "patch"] {
                if type_of(c).is_none() {
                    return Err(lacking(Some(c)));
                }
            }
            // lazr writes UTC wall-clock times without a zone; a converted table may
            // hold timestamptz already.
            let time = |c: &str| match type_of(c) {
                Some("timestamp with time zone") => Ok(quote_ident(c)),
                Some(_) => Ok(format!("{} AT TIME ZONE 'UTC'", quote_ident(c))),
                None => Err(lacking(Some(c))),
            };
            let sql = format!(
                "SELECT major::int, minor::int, patch::int, {}, {} FROM {qualified} ORDER BY 1, 2, 3",
                time("start_time")?,
                time("end_time")?
            );
            let rows = session.query(&sql, &[]).await.map_err(|e| failed(e.into()))?;
            Ok(rows
                .iter()
                .map(|r| LazrRow {
                    version: version_of(r.get(0), r.get(1), r.get(2)),
                    start: r.get(3),
                    end: r.get(4),
                })
                .collect())
        })
        .buffered(cluster.jobs)
        .collect()
        .await;
    results.into_iter().collect()
}
