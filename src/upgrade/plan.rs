//! Pure planning: patches × per-node ledgers → drift, pending sets, groups,
//! the selection a run applies, which nodes need each patch's body, and what
//! each node must catch up on. No database here: everything is table-tested.

use std::fmt;

use crate::config::{NodeName, Replication, Role};
use crate::db::ledger::NodeLedger;
use crate::patches::discover::PatchSet;
use crate::patches::patch::{Patch, PatchOrder, PatchType, PatchVersion};

/// An applied patch whose file has changed or disappeared since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub node: NodeName,
    pub version: PatchVersion,
    pub kind: DriftKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftKind {
    /// The file's checksum differs from the one recorded when it was applied.
    Changed { file: String },
    /// No file of that version exists any more.
    Missing,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DriftKind::Changed { file } => write!(
                f,
                "patch `{}` was applied on node `{}` but its file {file} has changed since (checksum differs from the ledger)",
                self.version, self.node
            ),
            DriftKind::Missing => write!(
                f,
                "patch `{}` was applied on node `{}` but no file of that version exists in the patch directory any more",
                self.version, self.node
            ),
        }
    }
}

impl Drift {
    /// The patch file that changed, when there still is one.
    pub fn file(&self) -> Option<String> {
        match &self.kind {
            DriftKind::Changed { file } => Some(file.clone()),
            DriftKind::Missing => None,
        }
    }
}

/// In JSON, drift is an object (`docs/schema/common.json#/$defs/drift`): `node`, `patch`,
/// `kind` (`changed` or `missing`), `file` and `message`.
impl serde::Serialize for Drift {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut o = s.serialize_struct("Drift", 5)?;
        o.serialize_field("node", &self.node)?;
        o.serialize_field("patch", &self.version.to_string())?;
        o.serialize_field(
            "kind",
            match self.kind {
                DriftKind::Changed { .. } => "changed",
                DriftKind::Missing => "missing",
            },
        )?;
        o.serialize_field("file", &self.file())?;
        o.serialize_field("message", &self.to_string())?;
        o.end()
    }
}

/// Finished rows whose file changed or vanished. Unfinished rows are not
/// drift: the patch is still to be (re)applied there, fixed file and all.
pub fn drift(patches: &PatchSet, node: &NodeName, ledger: &NodeLedger) -> Vec<Drift> {
    let mut out = Vec::new();
    for book in [&ledger.main, &ledger.local] {
        for (version, row) in book.iter().filter(|(_, r)| r.is_done()) {
            let kind = match patches.get(*version) {
                None => DriftKind::Missing,
                Some(p) if p.checksum != row.checksum => DriftKind::Changed {
                    file: p.path.display().to_string(),
                },
                Some(_) => continue,
            };
            let d = Drift {
                node: node.clone(),
                version: *version,
                kind,
            };
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out
}

/// Patches not yet applied to the cluster: no finished claim row on the master.
pub fn pending<'a>(patches: &'a PatchSet, master: &NodeLedger) -> Vec<&'a Patch> {
    patches
        .patches
        .iter()
        .filter(|p| !master.main.get(&p.version).is_some_and(|r| r.is_done()))
        .collect()
}

/// Whether a replica's ledger records patches of `kind`: `direct`/`concurrent` always (the
/// replica runs them); `std` too on a Slony cluster (the replayed script records itself,
/// which is why a replica is never caught up on a `std` patch: Slony delivers it).
pub fn recorded_on_replicas(kind: PatchType, replication: Replication) -> bool {
    kind.runs_on_replicas() || replication == Replication::Slony
}

/// What a node's role still needs, as shown by `status`: on the master every
/// patch not applied to the cluster; on a replica that takes DDL every patch its
/// ledger records ([`recorded_on_replicas`]) not finished there (what it must catch up
/// on, what is pending on the cluster, and on Slony what replication has yet to bring);
/// a physical standby takes none.
pub fn node_pending(
    patches: &PatchSet,
    replication: Replication,
    role: Role,
    ledger: &NodeLedger,
) -> Vec<PatchVersion> {
    if !takes_ddl(replication, role) {
        return Vec::new();
    }
    patches
        .patches
        .iter()
        .filter(|p| match role {
            Role::Master => !done(&ledger.main, p.version),
            Role::Replica => {
                recorded_on_replicas(p.kind, replication) && !done(&ledger.main, p.version)
            }
        })
        .map(|p| p.version)
        .collect()
}

/// Whether a node runs patch bodies itself: the master always, replicas unless they are
/// physical standbys (they replay the master's WAL and cannot take DDL).
pub fn takes_ddl(replication: Replication, role: Role) -> bool {
    role == Role::Master || replication != Replication::Physical
}

/// One node as the planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    pub role: Role,
    pub ledger: &'a NodeLedger,
}

/// The patches the cluster has finished (a done claim row on the master) that `node`
/// must still run itself, in version order: a new or restored replica lacks the
/// `direct` and `concurrent` patches applied before it joined. `std` patches never run
/// on a replica (replication carries their effects), a physical standby runs nothing,
/// and the master's own done claim means it ran the body. A run applies these before any
/// patch still pending on the cluster, so no node runs a patch before the ones below it;
/// they need no claim on the master, only a row in the node's own ledger.
pub fn catch_up<'a>(
    patches: &'a PatchSet,
    replication: Replication,
    master: &NodeLedger,
    node: NodeView<'_>,
) -> Vec<&'a Patch> {
    if node.role == Role::Master || !takes_ddl(replication, node.role) {
        return Vec::new();
    }
    patches
        .patches
        .iter()
        .filter(|p| p.kind.runs_on_replicas())
        .filter(|p| done(&master.main, p.version) && !done(&node.ledger.main, p.version))
        .collect()
}

/// `--node` leaving the master out: the schedule up to (not including) the first patch
/// whose master part must come first — a `std` patch (it runs on the master only, and
/// what follows may build on it) or a master-first `direct` one. Returns that patch.
pub fn without_master<'a>(schedule: &mut Schedule<'a>) -> Option<&'a Patch> {
    let master_first = |p: &&Patch| {
        p.kind == PatchType::Std
            || (p.kind == PatchType::Direct && p.order == PatchOrder::MasterFirst)
    };
    let (g, k) = schedule
        .groups
        .iter()
        .enumerate()
        .find_map(|(g, group)| group.patches.iter().position(master_first).map(|k| (g, k)))?;
    let stop = schedule.groups[g].patches[k];
    schedule.groups[g].patches.truncate(k);
    let keep = if k == 0 { g } else { g + 1 };
    schedule.groups.truncate(keep);
    Some(stop)
}

/// Whether a node must still run the body of `patch`, the patch being pending on the
/// cluster. Standbys of physical replication never do: they replay the master's WAL.
pub fn needs_body(
    patch: &Patch,
    role: Role,
    replication: Replication,
    ledger: &NodeLedger,
) -> bool {
    if !takes_ddl(replication, role) {
        return false;
    }
    match (role, patch.kind) {
        // The master's part of std/direct runs inside the claim transaction:
        // pending on the cluster means not run on the master.
        (Role::Master, PatchType::Direct) if patch.order == PatchOrder::MasterFirst => {
            // Master first: its part commits on its own, recorded in its local book.
            !done(&ledger.local, patch.version) && !done(&ledger.main, patch.version)
        }
        // On a Slony cluster a std patch's script records the origin's part in the local
        // book with the body: once there, it must not run again.
        (Role::Master, PatchType::Std) => {
            !done(&ledger.local, patch.version) && !done(&ledger.main, patch.version)
        }
        (Role::Master, PatchType::Direct) => true,
        (Role::Master, PatchType::Concurrent) => {
            !done(&ledger.local, patch.version) && !done(&ledger.main, patch.version)
        }
        (Role::Replica, PatchType::Std) => false,
        (Role::Replica, _) => !done(&ledger.main, patch.version),
    }
}

/// What a node's ledger says, compared with the master's: the view `status` and the
/// dry run both show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerSummary {
    /// Versions finished on the node (on the master: applied to the cluster).
    pub applied: Vec<String>,
    /// Rows started and not finished (a failed or killed run), in either book.
    pub unfinished: Vec<String>,
    /// Replicas: `direct`/`concurrent` patches the cluster has applied and this node lacks;
    /// `upgrade` catches it up on them before anything new.
    pub missing_from_master: Vec<String>,
}

/// Summarizes a node's ledger; `compare` says whether to look for what the cluster has
/// finished and the node lacks (a reachable node of a reachable master): what a run
/// catches it up on ([`catch_up`]).
pub fn summarize(
    patches: &PatchSet,
    replication: Replication,
    role: Role,
    ledger: &NodeLedger,
    master: &NodeLedger,
    compare: bool,
) -> LedgerSummary {
    let missing_from_master = if compare {
        catch_up(patches, replication, master, NodeView { role, ledger })
            .iter()
            .map(|p| p.version.to_string())
            .collect()
    } else {
        Vec::new()
    };
    LedgerSummary {
        applied: ledger
            .main
            .values()
            .filter(|r| r.is_done())
            .map(|r| r.version.clone())
            .collect(),
        unfinished: ledger
            .main
            .values()
            .chain(ledger.local.values())
            .filter(|r| !r.is_done())
            .map(|r| r.version.clone())
            .collect(),
        missing_from_master,
    }
}

fn done(
    book: &std::collections::BTreeMap<PatchVersion, crate::db::ledger::LedgerRow>,
    v: PatchVersion,
) -> bool {
    book.get(&v).is_some_and(|r| r.is_done())
}

/// A run of consecutive pending patches of one type.
#[derive(Debug, Clone)]
pub struct Group<'a> {
    pub kind: PatchType,
    pub patches: Vec<&'a Patch>,
}

impl Group<'_> {
    pub fn versions(&self) -> String {
        match (self.patches.first(), self.patches.last()) {
            (Some(a), Some(b)) if a.version == b.version => a.version.to_string(),
            (Some(a), Some(b)) => format!("{} to {}", a.version, b.version),
            _ => String::new(),
        }
    }
}

pub fn groups<'a>(pending: &[&'a Patch]) -> Vec<Group<'a>> {
    let mut out: Vec<Group<'a>> = Vec::new();
    for p in pending {
        match out.last_mut() {
            Some(g) if g.kind == p.kind => g.patches.push(p),
            _ => out.push(Group {
                kind: p.kind,
                patches: vec![p],
            }),
        }
    }
    out
}

/// What the command line asked to apply.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Loop group after group until nothing is pending.
    pub all: bool,
    /// Apply one patch only.
    pub one: bool,
    /// Only groups of these types (empty: any).
    pub types: Vec<PatchType>,
}

/// The groups a run applies, in order.
#[derive(Debug, Clone)]
pub struct Schedule<'a> {
    pub groups: Vec<Group<'a>>,
    /// With `--all --patch-type`, the first patch of the group where the run stops.
    pub stopped_before: Option<&'a Patch>,
}

/// `--patch-type` was given and the next group has another type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub version: PatchVersion,
    pub kind: PatchType,
    pub allowed: Vec<PatchType>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allowed: Vec<&str> = self.allowed.iter().map(|t| t.as_str()).collect();
        write!(
            f,
            "refusing to start: the next pending patch `{}` is `{}`, but --patch-type allows only {}; nothing was applied",
            self.version,
            self.kind,
            allowed.join(", ")
        )
    }
}

pub fn schedule<'a>(groups: Vec<Group<'a>>, sel: &Selection) -> Result<Schedule<'a>, Refusal> {
    let allowed = |k: PatchType| sel.types.is_empty() || sel.types.contains(&k);
    let Some(first) = groups.first() else {
        return Ok(Schedule {
            groups: Vec::new(),
            stopped_before: None,
        });
    };
    if !allowed(first.kind) {
        return Err(Refusal {
            version: first.patches[0].version,
            kind: first.kind,
            allowed: sel.types.clone(),
        });
    }
    if sel.one {
        let g = Group {
            kind: first.kind,
            patches: vec![first.patches[0]],
        };
        return Ok(Schedule {
            groups: vec![g],
            stopped_before: None,
        });
    }
    if !sel.all {
        let mut groups = groups;
        groups.truncate(1);
        return Ok(Schedule {
            groups,
            stopped_before: None,
        });
    }
    let mut taken = Vec::new();
    let mut stopped_before = None;
    for g in groups {
        if !allowed(g.kind) {
            stopped_before = Some(g.patches[0]);
            break;
        }
        taken.push(g);
    }
    Ok(Schedule {
        groups: taken,
        stopped_before,
    })
}

#[cfg(test)]
mod tests;
