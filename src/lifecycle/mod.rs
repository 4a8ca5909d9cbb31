//! A cluster's life around `upgrade`: recording patches without running them
//! ([`stamp`]), adopting lazr.postgresql's ledger ([`adopt`]), accepting a patch file
//! fixed after it ran ([`repair`]), every ledger row of every node ([`history`]), and
//! ending a stuck coordinator's sessions ([`unlock`]).
//!
//! Commands that write take the cluster lock, read every node they work on first
//! (refusing before anything is written), then write each node in its own transaction
//! and commit only once every node's writes succeeded ([`write_all`]).

use std::time::SystemTime;

use futures::stream::{self, StreamExt};

use crate::config::{Config, NodeName, Replication, Role};
use crate::db::cluster::{Cluster, Dedicated};
use crate::db::ledger::{Book, Ledger, NodeLedger};
use crate::db::lock::acquire_lock;
use crate::db::pgerror::PgFailure;
use crate::db::transaction::Transaction;
use crate::error::Error;
use crate::patches::patch::{Patch, PatchOrder, PatchType};
use crate::progress::Silent;
use crate::replication::topology::topology_problems;

pub mod adopt;
pub mod baseline;
pub mod history;
pub mod repair;
pub mod schema;
pub mod stamp;
pub mod unlock;

/// The nodes a command works on, by index (master = 0): every node, or those `--node`
/// names (each once, in config order). An unknown name is bad input.
pub fn select(config: &Config, names: &[String]) -> Result<Vec<usize>, Error> {
    let known: Vec<NodeName> = config.nodes().map(|n| n.name.clone()).collect();
    if names.is_empty() {
        return Ok((0..known.len()).collect());
    }
    for name in names {
        if !known.iter().any(|k| k.as_str() == name) {
            return Err(Error::UnknownNode {
                node: name.clone(),
                known,
            });
        }
    }
    Ok(known
        .iter()
        .enumerate()
        .filter(|(_, k)| names.iter().any(|n| n == k.as_str()))
        .map(|(i, _)| i)
        .collect())
}

/// What a writing command read from one node first.
#[derive(Debug)]
pub struct NodeRead {
    /// Index in the cluster (master = 0).
    pub index: usize,
    pub name: NodeName,
    pub role: Role,
    pub in_recovery: bool,
    pub ledger: NodeLedger,
}

impl NodeRead {
    /// A hot standby: read-only, its ledger is the master's, replayed.
    pub fn is_standby(&self) -> bool {
        self.in_recovery
    }
}

/// What a ledger-writing lifecycle command (`stamp`, `stamp --from-lazr`, `repair`)
/// starts from: the cluster, its ledger, the cluster lock (none for a dry run, which
/// writes nothing) and the selected nodes, each read before anything is written.
pub struct Start {
    pub cluster: Cluster,
    pub ledger: Ledger,
    pub lock: Option<Dedicated>,
    pub reads: Vec<NodeRead>,
}

/// Selects the nodes `names` asks for (all when empty), takes the cluster lock unless
/// `dry_run`, and reads every selected node. A failed read drops the lock's session,
/// which frees the lock.
pub async fn open(config: &Config, names: &[String], dry_run: bool) -> Result<Start, Error> {
    let nodes = select(config, names)?;
    let cluster = Cluster::new(config);
    let ledger = Ledger::new(config.ledger.clone());
    let lock = if dry_run {
        None
    } else {
        Some(acquire_lock(&cluster, &ledger, false, &Silent).await?)
    };
    let reads = read(config, &cluster, &ledger, &nodes).await?;
    Ok(Start {
        cluster,
        ledger,
        lock,
        reads,
    })
}

/// Reads each node's recovery state and ledger, all before anything is written; an
/// unreachable node, or a topology that contradicts the config, refuses the command.
pub async fn read(
    config: &Config,
    cluster: &Cluster,
    ledger: &Ledger,
    nodes: &[usize],
) -> Result<Vec<NodeRead>, Error> {
    let results: Vec<Result<NodeRead, Error>> = stream::iter(nodes.iter().copied())
        .map(|i| async move {
            let node = &cluster.nodes[i];
            let session = node.session().await.map_err(|e| node.unreachable(e))?;
            let failed = |failure: PgFailure| Error::Node {
                node: node.name().clone(),
                master: i == 0,
                action: "read the ledger",
                failure: Box::new(failure),
            };
            let in_recovery: bool = session
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(|e| failed(e.into()))?
                .get(0);
            let l = ledger.read(session.client()).await.map_err(failed)?;
            Ok(NodeRead {
                index: i,
                name: node.name().clone(),
                role: node.role(),
                in_recovery,
                ledger: l,
            })
        })
        .buffered(cluster.jobs)
        .collect()
        .await;
    let reads: Vec<NodeRead> = results.into_iter().collect::<Result<_, _>>()?;
    let problems = topology_problems(
        config.replication,
        reads
            .iter()
            .map(|r| (&cluster.nodes[r.index].config, Some(r.in_recovery))),
    );
    if !problems.is_empty() {
        return Err(Error::Topology { problems });
    }
    Ok(reads)
}

/// The ledger books a real run leaves a row in for `patch` on a node of `role`: the
/// master's main book for every patch (the claim) and its local book for its own part
/// of `concurrent` and master-first `direct` patches; a replica's main book for the
/// patches it runs itself. Hot standbys keep none of their own.
pub fn books(patch: &Patch, role: Role, replication: Replication) -> Vec<Book> {
    match (role, replication) {
        (Role::Master, _) => {
            // On Slony-I a std patch's script records the origin's part in the local book.
            let own_part = patch.kind == PatchType::Concurrent
                || (patch.kind == PatchType::Direct && patch.order == PatchOrder::MasterFirst)
                || (patch.kind == PatchType::Std && replication == Replication::Slony);
            if own_part {
                vec![Book::Main, Book::Local]
            } else {
                vec![Book::Main]
            }
        }
        (Role::Replica, Replication::Physical) => Vec::new(),
        // Every Slony-I node keeps its own record of std patches too (the replayed script
        // writes it).
        (Role::Replica, Replication::Slony) => vec![Book::Main],
        (Role::Replica, Replication::None | Replication::Logical) => {
            if patch.kind.runs_on_replicas() {
                vec![Book::Main]
            } else {
                Vec::new()
            }
        }
    }
}

/// Whether `book` of a node's ledger shows `patch` as done.
pub fn done(ledger: &NodeLedger, book: Book, patch: &Patch) -> bool {
    let rows = match book {
        Book::Main => &ledger.main,
        Book::Local => &ledger.local,
    };
    rows.get(&patch.version).is_some_and(|r| r.is_done())
}

/// One write of a lifecycle command on one node.
#[derive(Debug, Clone)]
pub enum Write<'a> {
    /// A ledger row saying the patch is done, without running it (start and end:
    /// `None` is the transaction's time).
    Done {
        book: Book,
        patch: &'a Patch,
        start: Option<SystemTime>,
        end: Option<SystemTime>,
    },
    /// The current checksum of the patch's file, where the row holds another.
    Repair { book: Book, patch: &'a Patch },
}

impl Write<'_> {
    fn book(&self) -> Book {
        match self {
            Write::Done { book, .. } | Write::Repair { book, .. } => *book,
        }
    }
}

/// What one [`Write`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Nothing (the row was already done, or already held the checksum).
    Nothing,
    /// A row recorded (or an unfinished one taken over).
    Row,
    /// The checksum replaced; the one it held before.
    Repaired { old: String },
}

/// A node's transaction, open with its writes done, and what they changed.
type Opened = (usize, Transaction, Vec<Written>);

/// Writes each node's list in a transaction of its own (creating or migrating its
/// ledger first), and commits every transaction only once every node's writes succeeded;
/// a failure rolls every one back. Returns what each write changed, per node.
pub async fn write_all<'a>(
    cluster: &Cluster,
    ledger: &Ledger,
    applied_by: &str,
    work: Vec<(usize, Vec<Write<'a>>)>,
) -> Result<Vec<(usize, Vec<Written>)>, Error> {
    let opened: Vec<Result<Opened, Error>> = stream::iter(work)
        .map(|(i, writes)| async move {
            let node = &cluster.nodes[i];
            let failed = |action: &'static str| {
                move |failure: PgFailure| Error::Node {
                    node: node.name().clone(),
                    master: i == 0,
                    action,
                    failure: Box::new(failure),
                }
            };
            let session = node.session().await.map_err(|e| node.unreachable(e))?;
            let tx = Transaction::begin(session)
                .await
                .map_err(failed("open a transaction"))?;
            let mut books: Vec<Book> = writes.iter().map(Write::book).collect();
            books.dedup();
            for book in [Book::Main, Book::Local] {
                if books.contains(&book) {
                    ledger
                        .ensure(tx.client(), book)
                        .await
                        .map_err(failed("create the ledger"))?;
                }
            }
            let mut out = Vec::with_capacity(writes.len());
            for w in &writes {
                let written = match w {
                    Write::Done {
                        book,
                        patch,
                        start,
                        end,
                    } => {
                        let wrote = ledger
                            .record_done(tx.client(), *book, patch, applied_by, *start, *end)
                            .await
                            .map_err(failed("record a patch in the ledger"))?;
                        if wrote {
                            Written::Row
                        } else {
                            Written::Nothing
                        }
                    }
                    Write::Repair { book, patch } => {
                        match ledger
                            .repair(tx.client(), *book, patch)
                            .await
                            .map_err(failed("record the checksum"))?
                        {
                            Some(old) => Written::Repaired { old },
                            None => Written::Nothing,
                        }
                    }
                };
                out.push(written);
            }
            Ok((i, tx, out))
        })
        .buffered(cluster.jobs)
        .collect()
        .await;
    // Every node's transaction is open, or the first failure rolls them all back (the
    // open ones are rolled back as they are dropped).
    let mut ready = Vec::with_capacity(opened.len());
    for r in opened {
        ready.push(r?);
    }
    let mut out = Vec::with_capacity(ready.len());
    for (i, tx, written) in ready {
        tx.commit().await.map_err(|failure| Error::Node {
            node: cluster.nodes[i].name().clone(),
            master: i == 0,
            action: "commit the ledger rows",
            failure: Box::new(failure),
        })?;
        out.push((i, written));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patches::patch::PatchVersion;
    use std::path::PathBuf;

    fn patch(kind: PatchType, order: PatchOrder) -> Patch {
        Patch {
            version: PatchVersion::new(1, 0, 0),
            kind,
            path: PathBuf::from("p"),
            body: std::sync::Arc::new(String::new()),
            copies: Vec::new(),
            checksum: String::new(),
            statements: Vec::new(),
            order,
        }
    }

    #[test]
    fn books_a_real_run_leaves() {
        use Book::{Local, Main};
        use PatchOrder::{MasterFirst, ReplicasFirst};
        use PatchType::{Concurrent, Direct, Std};
        let table = [
            (
                Std,
                ReplicasFirst,
                Role::Master,
                Replication::None,
                vec![Main],
            ),
            (Std, ReplicasFirst, Role::Replica, Replication::None, vec![]),
            (
                Direct,
                ReplicasFirst,
                Role::Master,
                Replication::None,
                vec![Main],
            ),
            (
                Direct,
                MasterFirst,
                Role::Master,
                Replication::Logical,
                vec![Main, Local],
            ),
            (
                Direct,
                ReplicasFirst,
                Role::Replica,
                Replication::Logical,
                vec![Main],
            ),
            (
                Concurrent,
                ReplicasFirst,
                Role::Master,
                Replication::None,
                vec![Main, Local],
            ),
            (
                Concurrent,
                ReplicasFirst,
                Role::Replica,
                Replication::None,
                vec![Main],
            ),
            (
                Direct,
                ReplicasFirst,
                Role::Replica,
                Replication::Physical,
                vec![],
            ),
        ];
        for (kind, order, role, replication, want) in table {
            assert_eq!(
                books(&patch(kind, order), role, replication),
                want,
                "{kind} {order:?} {role:?} {replication}"
            );
        }
    }
}
