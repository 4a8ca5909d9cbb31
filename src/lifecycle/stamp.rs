//! `stamp VERSION`: record every patch up to VERSION as applied, on every node (or the
//! `--node` ones), running nothing: the rows a real run would have left, with the
//! current checksums and `applied_by` saying stamp.

use crate::config::{Config, NodeName, Replication, Role};
use crate::db::ledger::{Book, NodeLedger};
use crate::db::lock::release_lock;
use crate::error::Error;
use crate::identity::Identity;
use crate::patches::discover::PatchSet;
use crate::patches::patch::{Patch, PatchType, PatchVersion};

use super::{books, done, open, write_all, Start, Write, Written};

/// What `stamp` was asked.
#[derive(Debug, Clone)]
pub struct StampRequest {
    pub version: PatchVersion,
    /// `--node` names (empty: every node).
    pub nodes: Vec<String>,
    /// Show the rows, write nothing.
    pub dry_run: bool,
}

/// One ledger row `stamp` writes (or, in a dry run, would write).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StampRow {
    pub node: NodeName,
    pub book: Book,
    #[serde(serialize_with = "crate::db::ledger::as_string")]
    pub version: PatchVersion,
    pub patch_type: PatchType,
    pub checksum: String,
}

/// What `stamp` did (or would do).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StampReport {
    #[serde(serialize_with = "crate::db::ledger::as_string")]
    pub version: PatchVersion,
    pub dry_run: bool,
    pub rows: Vec<StampRow>,
    /// Lines for the operator: nodes skipped and why.
    pub notes: Vec<String>,
}

/// The rows a real run would have left on a node for every patch up to `upto`, which
/// its ledger does not already show as done, in version order.
pub fn rows_to_stamp<'a>(
    patches: &'a PatchSet,
    upto: PatchVersion,
    role: Role,
    replication: Replication,
    ledger: &NodeLedger,
) -> Vec<(Book, &'a Patch)> {
    patches
        .patches
        .iter()
        .filter(|p| p.version <= upto)
        .flat_map(|p| {
            books(p, role, replication)
                .into_iter()
                .filter(move |b| !done(ledger, *b, p))
                .map(move |b| (b, p))
        })
        .collect()
}

/// Runs `stamp` (see the module documentation).
pub async fn stamp(
    config: &Config,
    patches: &PatchSet,
    req: &StampRequest,
) -> Result<StampReport, Error> {
    if patches.get(req.version).is_none() {
        return Err(Error::UnknownVersion {
            version: req.version,
            dir: patches.dir.display().to_string(),
        });
    }
    let Start {
        cluster,
        ledger,
        lock,
        reads,
    } = open(config, &req.nodes, req.dry_run).await?;
    let mut report = StampReport {
        version: req.version,
        dry_run: req.dry_run,
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let mut work = Vec::new();
    for r in &reads {
        if r.is_standby() {
            report.notes.push(format!(
                "node `{}` is a hot standby: its ledger is the master's, replayed; nothing to write there",
                r.name
            ));
            continue;
        }
        let rows = rows_to_stamp(patches, req.version, r.role, config.replication, &r.ledger);
        if rows.is_empty() {
            report.notes.push(format!(
                "node `{}`: its ledger already shows every patch up to {} that it needs",
                r.name, req.version
            ));
            continue;
        }
        let writes: Vec<Write> = rows
            .iter()
            .map(|(book, patch)| Write::Done {
                book: *book,
                patch,
                start: None,
                end: None,
            })
            .collect();
        report
            .rows
            .extend(rows.iter().map(|(book, patch)| StampRow {
                node: r.name.clone(),
                book: *book,
                version: patch.version,
                patch_type: patch.kind,
                checksum: patch.checksum.clone(),
            }));
        work.push((r.index, writes));
    }
    let Some(lock) = lock else {
        return Ok(report);
    };
    if !work.is_empty() {
        let applied_by = Identity::current().applied_by("stamp");
        let written = write_all(&cluster, &ledger, &applied_by, work).await;
        release_lock(lock, &ledger).await;
        let written = written?;
        // A row finished between the read and the write (none can: the lock is held) is
        // not reported as written.
        let mut kept = Vec::new();
        let mut results = written.iter().flat_map(|(_, w)| w.iter());
        for row in report.rows.drain(..) {
            if results.next() != Some(&Written::Nothing) {
                kept.push(row);
            }
        }
        report.rows = kept;
    } else {
        release_lock(lock, &ledger).await;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::ledger::LedgerRow;
    use crate::patches::patch::PatchOrder;
    use std::path::PathBuf;

    fn set() -> PatchSet {
        let p = |v: (u32, u32, u32), kind| Patch {
            version: PatchVersion::new(v.0, v.1, v.2),
            kind,
            path: PathBuf::from("p"),
            body: std::sync::Arc::new(String::new()),
            copies: Vec::new(),
            checksum: format!("c{}{}{}", v.0, v.1, v.2),
            statements: Vec::new(),
            order: PatchOrder::default(),
        };
        PatchSet {
            dir: PathBuf::from("p"),
            baselines: Vec::new(),
            patches: vec![
                p((1, 0, 0), PatchType::Std),
                p((1, 1, 0), PatchType::Direct),
                p((1, 2, 0), PatchType::Concurrent),
                p((1, 3, 0), PatchType::Direct),
            ],
            findings: Vec::new(),
        }
    }

    fn shape(rows: &[(Book, &Patch)]) -> Vec<String> {
        rows.iter()
            .map(|(b, p)| format!("{}:{b:?}", p.version))
            .collect()
    }

    #[test]
    fn rows_up_to_the_version_by_role_skipping_done_ones() {
        let ps = set();
        let upto = PatchVersion::new(1, 2, 0);
        let empty = NodeLedger::default();
        assert_eq!(
            shape(&rows_to_stamp(
                &ps,
                upto,
                Role::Master,
                Replication::None,
                &empty
            )),
            ["1-0-0:Main", "1-1-0:Main", "1-2-0:Main", "1-2-0:Local"]
        );
        let mut replica = NodeLedger::default();
        replica.main.insert(
            PatchVersion::new(1, 1, 0),
            LedgerRow {
                version: "1-1-0".into(),
                patch_type: "direct".into(),
                checksum: "c110".into(),
                start_time: "t".into(),
                end_time: Some("t".into()),
                applied_by: "x".into(),
            },
        );
        assert_eq!(
            shape(&rows_to_stamp(
                &ps,
                upto,
                Role::Replica,
                Replication::None,
                &replica
            )),
            ["1-2-0:Main"]
        );
        assert!(rows_to_stamp(&ps, upto, Role::Replica, Replication::Physical, &empty).is_empty());
    }
}
