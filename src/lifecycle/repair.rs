//! `repair VERSION`: accept the current file of a patch that was fixed after it ran
//! somewhere: its checksum is recorded on every node whose ledger has the patch (both
//! books), and nothing else is written. Drift of that patch ends.

use crate::config::{Config, NodeName};
use crate::db::ledger::Book;
use crate::db::lock::release_lock;
use crate::error::Error;
use crate::patches::discover::PatchSet;
use crate::patches::patch::PatchVersion;

use super::{open, write_all, Start, Write, Written};

/// One node whose ledger `repair` changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Repaired {
    pub node: NodeName,
    pub book: Book,
    /// The checksum the row held.
    pub old: String,
}

/// What `repair` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RepairReport {
    #[serde(serialize_with = "crate::db::ledger::as_string")]
    pub version: PatchVersion,
    /// The file's checksum, now on every node that has the patch.
    pub checksum: String,
    pub file: String,
    pub repaired: Vec<Repaired>,
    /// Nodes whose rows held the current checksum already.
    pub current: Vec<NodeName>,
    /// Nodes whose ledger does not have the patch.
    pub without: Vec<NodeName>,
}

/// Runs `repair` (see the module documentation).
pub async fn repair(
    config: &Config,
    patches: &PatchSet,
    version: PatchVersion,
) -> Result<RepairReport, Error> {
    let Some(patch) = patches.get(version) else {
        return Err(Error::UnknownVersion {
            version,
            dir: patches.dir.display().to_string(),
        });
    };
    let Start {
        cluster,
        ledger,
        lock,
        reads,
    } = open(config, &[], false).await?;
    let mut report = RepairReport {
        version,
        checksum: patch.checksum.clone(),
        file: patch.path.display().to_string(),
        repaired: Vec::new(),
        current: Vec::new(),
        without: Vec::new(),
    };
    let mut work = Vec::new();
    for r in reads.iter().filter(|r| !r.is_standby()) {
        let stale: Vec<Book> = [(Book::Main, &r.ledger.main), (Book::Local, &r.ledger.local)]
            .into_iter()
            .filter_map(|(book, rows)| rows.get(&version).map(|row| (book, row)))
            .filter(|(_, row)| row.checksum != patch.checksum)
            .map(|(book, _)| book)
            .collect();
        let has = r.ledger.main.contains_key(&version) || r.ledger.local.contains_key(&version);
        if !has {
            report.without.push(r.name.clone());
        } else if stale.is_empty() {
            report.current.push(r.name.clone());
        } else {
            work.push((
                r.index,
                stale
                    .into_iter()
                    .map(|book| Write::Repair { book, patch })
                    .collect::<Vec<_>>(),
            ));
        }
    }
    let books: Vec<(usize, Vec<Book>)> = work
        .iter()
        .map(|(i, w)| {
            (
                *i,
                w.iter()
                    .map(|x| match x {
                        Write::Repair { book, .. } | Write::Done { book, .. } => *book,
                    })
                    .collect(),
            )
        })
        .collect();
    let written = if work.is_empty() {
        Ok(Vec::new())
    } else {
        write_all(&cluster, &ledger, "", work).await
    };
    if let Some(lock) = lock {
        release_lock(lock, &ledger).await;
    }
    for ((i, written), (_, books)) in written?.into_iter().zip(books) {
        for (w, book) in written.into_iter().zip(books) {
            if let Written::Repaired { old } = w {
                report.repaired.push(Repaired {
                    node: cluster.nodes[i].name().clone(),
                    book,
                    old,
                });
            }
        }
    }
    Ok(report)
}
