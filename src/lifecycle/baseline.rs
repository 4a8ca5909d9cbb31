//! Baselines: `baseline-M-m-p.sql` in the patch directory is the whole schema as of
//! M-m-p (`pg_dump --schema-only` output, `COPY … FROM stdin` data allowed). A *new* node
//! — no ledger and no user relations in its database — gets the newest baseline in one
//! transaction, and its ledger records every patch up to M-m-p that its role records
//! (`applied_by` says baseline); later patches then apply as usual.
//!
//! What is new and what a baseline records is decided here; the run applies it
//! (`upgrade/baseline.rs`), the dry run rehearses it, `upgrade --sql` scripts it.

use futures::stream::{self, StreamExt};

use crate::config::{Replication, Role};
use crate::db::cluster::Cluster;
use crate::db::ledger::{Book, LedgerRow, NodeLedger};
use crate::error::Error;
use crate::patches::discover::PatchSet;
use crate::patches::patch::Patch;

use super::stamp::rows_to_stamp;

/// The rows a baseline records on a node of `role`: every patch up to the baseline's
/// version that the role records (the rows a real run would have left), in order.
pub fn rows<'a>(
    patches: &'a PatchSet,
    baseline: &Patch,
    role: Role,
    replication: Replication,
) -> Vec<(Book, &'a Patch)> {
    rows_to_stamp(
        patches,
        baseline.version,
        role,
        replication,
        &NodeLedger::default(),
    )
}

/// The ledger a new node has once baselined, for planning what follows (the dry run and
/// `upgrade --sql` plan on it before anything is written).
pub fn ledger_after(
    patches: &PatchSet,
    baseline: &Patch,
    role: Role,
    replication: Replication,
) -> NodeLedger {
    let mut l = NodeLedger {
        exists: true,
        current: true,
        ..NodeLedger::default()
    };
    for (book, patch) in rows(patches, baseline, role, replication) {
        let row = LedgerRow {
            version: patch.version.to_string(),
            patch_type: patch.kind.to_string(),
            checksum: patch.checksum.clone(),
            start_time: String::new(),
            end_time: Some(String::new()),
            applied_by: format!("baseline {}", baseline.file_name()),
        };
        match book {
            Book::Main => l.main.insert(patch.version, row),
            Book::Local => l.local.insert(patch.version, row),
        };
    }
    l
}

/// Whether a node can be new at all: hot standbys replay the master's WAL (its ledger
/// and schema included) and never take a baseline of their own.
pub fn may_be_new(role: Role, replication: Replication, ledger: &NodeLedger) -> bool {
    let standby = role == Role::Replica && replication == Replication::Physical;
    !ledger.exists && !standby
}

/// Of the nodes at `candidates` (indexes; those [`may_be_new`] allows), the ones whose
/// database holds no user relation: the new nodes. Reads only.
pub async fn new_nodes(cluster: &Cluster, candidates: &[usize]) -> Result<Vec<usize>, Error> {
    let looks: Vec<Result<(usize, i64), Error>> = stream::iter(candidates.iter().copied())
        .map(|i| async move {
            let node = &cluster.nodes[i];
            let session = node.session().await.map_err(|e| node.unreachable(e))?;
            let look = super::schema::look(session.client(), &[])
                .await
                .map_err(|failure| Error::Node {
                    node: node.name().clone(),
                    master: i == 0,
                    action: "count the user relations",
                    failure: Box::new(failure),
                })?;
            Ok((i, look.user_relations))
        })
        .buffered(cluster.jobs)
        .collect()
        .await;
    let mut out = Vec::new();
    for r in looks {
        let (i, relations) = r?;
        if relations == 0 {
            out.push(i);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patches::patch::{PatchOrder, PatchType, PatchVersion};
    use std::path::PathBuf;
    use std::sync::Arc;

    fn patch(v: (u32, u32, u32), kind: PatchType) -> Patch {
        Patch {
            version: PatchVersion::new(v.0, v.1, v.2),
            kind,
            path: PathBuf::from(format!("patch-{}-{}-{}-{kind}.sql", v.0, v.1, v.2)),
            body: Arc::new(String::new()),
            copies: Vec::new(),
            checksum: format!("c{}{}{}", v.0, v.1, v.2),
            statements: Vec::new(),
            order: PatchOrder::default(),
        }
    }

    #[test]
    fn a_baseline_records_what_the_role_records_up_to_its_version() {
        let set = PatchSet {
            dir: PathBuf::from("p"),
            patches: vec![
                patch((1, 0, 0), PatchType::Std),
                patch((1, 1, 0), PatchType::Direct),
                patch((1, 2, 0), PatchType::Concurrent),
                patch((1, 3, 0), PatchType::Direct),
            ],
            baselines: Vec::new(),
            findings: Vec::new(),
        };
        let mut b = patch((1, 2, 0), PatchType::Std);
        b.path = PathBuf::from("baseline-1-2-0.sql");
        let master = ledger_after(&set, &b, Role::Master, Replication::None);
        let versions = |m: &std::collections::BTreeMap<PatchVersion, LedgerRow>| {
            m.keys().map(|v| v.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(versions(&master.main), ["1-0-0", "1-1-0", "1-2-0"]);
        assert_eq!(versions(&master.local), ["1-2-0"]);
        assert!(master.main.values().all(LedgerRow::is_done));
        let replica = ledger_after(&set, &b, Role::Replica, Replication::Logical);
        assert_eq!(versions(&replica.main), ["1-1-0", "1-2-0"]);
        assert!(may_be_new(
            Role::Replica,
            Replication::None,
            &NodeLedger::default()
        ));
        assert!(!may_be_new(
            Role::Replica,
            Replication::Physical,
            &NodeLedger::default()
        ));
        assert!(!may_be_new(Role::Master, Replication::None, &master));
    }
}
