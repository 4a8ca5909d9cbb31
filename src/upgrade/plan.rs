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
mod tests {
    use super::*;
    use crate::db::ledger::LedgerRow;
    use std::path::PathBuf;

    fn patch(v: (u32, u32, u32), kind: PatchType) -> Patch {
        Patch {
            version: PatchVersion::new(v.0, v.1, v.2),
            kind,
            path: PathBuf::from(format!("p/{}-{}-{}", v.0, v.1, v.2)),
            body: std::sync::Arc::new("SELECT 1;".into()),
            copies: Vec::new(),
            checksum: format!("sum{}{}{}", v.0, v.1, v.2),
            statements: Vec::new(),
            order: Default::default(),
        }
    }

    fn set(ps: Vec<Patch>) -> PatchSet {
        PatchSet {
            dir: PathBuf::from("p"),
            patches: ps,
            baselines: Vec::new(),
            findings: Vec::new(),
        }
    }

    fn row(p: &Patch, done: bool) -> LedgerRow {
        LedgerRow {
            version: p.version.to_string(),
            patch_type: p.kind.to_string(),
            checksum: p.checksum.clone(),
            start_time: "t".into(),
            end_time: done.then(|| "t".into()),
            applied_by: "x".into(),
        }
    }

    use PatchType::{Concurrent as C, Direct as D, Std as S};

    fn sample() -> PatchSet {
        set(vec![
            patch((1, 0, 0), S),
            patch((1, 1, 0), S),
            patch((1, 2, 0), D),
            patch((1, 3, 0), C),
            patch((1, 4, 0), C),
            patch((1, 5, 0), S),
        ])
    }

    type Shape = Vec<(PatchType, usize)>;

    fn kinds(s: &Schedule) -> Shape {
        s.groups.iter().map(|g| (g.kind, g.patches.len())).collect()
    }

    #[test]
    fn without_the_master_the_run_stops_where_the_master_acts_first() {
        let mut first = patch((1, 2, 0), D);
        first.order = PatchOrder::MasterFirst;
        let ps = set(vec![
            patch((1, 0, 0), D),
            patch((1, 1, 0), C),
            first,
            patch((1, 3, 0), D),
        ]);
        let pend = pending(&ps, &NodeLedger::default());
        let all = Selection {
            all: true,
            ..Default::default()
        };
        let mut s = schedule(groups(&pend), &all).unwrap();
        let stop = without_master(&mut s).map(|p| p.version.to_string());
        assert_eq!(stop.as_deref(), Some("1-2-0"));
        assert_eq!(kinds(&s), vec![(D, 1), (C, 1)]);
        let ps = sample();
        let pend = pending(&ps, &NodeLedger::default());
        let mut s = schedule(groups(&pend), &all).unwrap();
        assert_eq!(
            without_master(&mut s)
                .map(|p| p.version.to_string())
                .as_deref(),
            Some("1-0-0")
        );
        assert!(s.groups.is_empty());
        let ps = set(vec![patch((1, 0, 0), D), patch((1, 1, 0), C)]);
        let pend = pending(&ps, &NodeLedger::default());
        let mut s = schedule(groups(&pend), &all).unwrap();
        assert!(without_master(&mut s).is_none());
        assert_eq!(kinds(&s), vec![(D, 1), (C, 1)]);
    }

    #[test]
    fn grouping_and_selection() {
        let ps = sample();
        let master = NodeLedger::default();
        let pend = pending(&ps, &master);
        assert_eq!(pend.len(), 6);
        let table: Vec<(Selection, Result<Shape, PatchVersion>)> = vec![
            (Selection::default(), Ok(vec![(S, 2)])),
            (
                Selection {
                    all: true,
                    ..Default::default()
                },
                Ok(vec![(S, 2), (D, 1), (C, 2), (S, 1)]),
            ),
            (
                Selection {
                    one: true,
                    ..Default::default()
                },
                Ok(vec![(S, 1)]),
            ),
            (
                Selection {
                    types: vec![D],
                    ..Default::default()
                },
                Err(PatchVersion::new(1, 0, 0)),
            ),
            (
                Selection {
                    all: true,
                    types: vec![S],
                    ..Default::default()
                },
                Ok(vec![(S, 2)]),
            ),
        ];
        for (sel, want) in table {
            let got = schedule(groups(&pend), &sel)
                .map(|s| kinds(&s))
                .map_err(|r| r.version);
            assert_eq!(got, want, "{sel:?}");
        }
    }

    #[test]
    fn pending_skips_done_claims_only() {
        let ps = sample();
        let mut master = NodeLedger::default();
        master
            .main
            .insert(ps.patches[0].version, row(&ps.patches[0], true));
        master
            .main
            .insert(ps.patches[1].version, row(&ps.patches[1], false));
        let pend: Vec<String> = pending(&ps, &master)
            .iter()
            .map(|p| p.version.to_string())
            .collect();
        assert_eq!(pend, ["1-1-0", "1-2-0", "1-3-0", "1-4-0", "1-5-0"]);
        assert!(schedule(groups(&[]), &Selection::default())
            .unwrap()
            .groups
            .is_empty());
    }

    #[test]
    fn body_targets() {
        let ps = sample();
        let (std, direct, conc) = (&ps.patches[0], &ps.patches[2], &ps.patches[3]);
        let empty = NodeLedger::default();
        assert!(needs_body(std, Role::Master, Replication::None, &empty));
        assert!(!needs_body(std, Role::Replica, Replication::None, &empty));
        assert!(needs_body(direct, Role::Replica, Replication::None, &empty));
        let mut replica = NodeLedger::default();
        replica.main.insert(direct.version, row(direct, true));
        replica.main.insert(conc.version, row(conc, false));
        assert!(!needs_body(
            direct,
            Role::Replica,
            Replication::None,
            &replica
        ));
        assert!(
            needs_body(conc, Role::Replica, Replication::None, &replica),
            "unfinished row"
        );
        let mut master = NodeLedger::default();
        master.local.insert(conc.version, row(conc, true));
        assert!(
            !needs_body(conc, Role::Master, Replication::None, &master),
            "local part done"
        );
        let mut slony_origin = NodeLedger::default();
        slony_origin.local.insert(std.version, row(std, true));
        assert!(
            !needs_body(std, Role::Master, Replication::Slony, &slony_origin),
            "a slony script committed the std patch on the origin already"
        );
        assert!(needs_body(direct, Role::Master, Replication::None, &master));
        let mut first = direct.clone();
        first.order = PatchOrder::MasterFirst;
        master.local.insert(first.version, row(&first, true));
        assert!(
            !needs_body(&first, Role::Master, Replication::None, &master),
            "master-first part done"
        );
        assert!(
            !needs_body(direct, Role::Replica, Replication::Physical, &empty),
            "standbys take no DDL"
        );
        assert!(needs_body(
            direct,
            Role::Master,
            Replication::Physical,
            &empty
        ));
    }

    #[test]
    fn drift_on_changed_or_missing_files_only_when_done() {
        let ps = sample();
        let node = NodeName::parse("n").unwrap();
        let mut l = NodeLedger::default();
        let mut changed = row(&ps.patches[0], true);
        changed.checksum = "other".into();
        l.main.insert(ps.patches[0].version, changed);
        let mut gone = row(&ps.patches[1], true);
        gone.version = "9-0-0".into();
        l.main.insert(PatchVersion::new(9, 0, 0), gone);
        let mut unfinished = row(&ps.patches[2], false);
        unfinished.checksum = "old".into();
        l.main.insert(ps.patches[2].version, unfinished);
        let d = drift(&ps, &node, &l);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(matches!(d[0].kind, DriftKind::Changed { .. }));
        assert_eq!(d[1].kind, DriftKind::Missing);
        assert!(d[1].to_string().contains("`9-0-0`"));
    }

    #[test]
    fn summaries_compare_replicas_with_the_master() {
        let ps = sample();
        let mut master = NodeLedger::default();
        for p in &ps.patches[..4] {
            master.main.insert(p.version, row(p, true));
        }
        let mut replica = NodeLedger::default();
        replica
            .main
            .insert(ps.patches[2].version, row(&ps.patches[2], true));
        replica
            .main
            .insert(ps.patches[3].version, row(&ps.patches[3], false));
        let s = summarize(
            &ps,
            Replication::None,
            Role::Replica,
            &replica,
            &master,
            true,
        );
        assert_eq!(s.applied, ["1-2-0"]);
        assert_eq!(s.unfinished, ["1-3-0"]);
        // 1-0-0 and 1-1-0 are std (the master only); 1-3-0 is direct-or-concurrent and unfinished.
        assert_eq!(s.missing_from_master, ["1-3-0"]);
        assert!(summarize(
            &ps,
            Replication::None,
            Role::Replica,
            &replica,
            &master,
            false
        )
        .missing_from_master
        .is_empty());
        assert_eq!(
            summarize(&ps, Replication::None, Role::Master, &master, &master, true)
                .applied
                .len(),
            4
        );
    }

    #[test]
    fn node_pending_by_role() {
        let ps = sample();
        let mut l = NodeLedger::default();
        l.main
            .insert(ps.patches[2].version, row(&ps.patches[2], true));
        let r: Vec<String> = node_pending(&ps, Replication::None, Role::Replica, &l)
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(r, ["1-3-0", "1-4-0"]);
        assert_eq!(
            node_pending(&ps, Replication::Logical, Role::Replica, &l).len(),
            2
        );
        assert!(node_pending(&ps, Replication::Physical, Role::Replica, &l).is_empty());
        assert_eq!(
            node_pending(&ps, Replication::None, Role::Master, &l).len(),
            5
        );
        assert_eq!(
            node_pending(&ps, Replication::Physical, Role::Master, &l).len(),
            5
        );
        // On Slony a replica's ledger records std patches too.
        assert_eq!(
            node_pending(&ps, Replication::Slony, Role::Replica, &l).len(),
            r.len()
                + ps.patches
                    .iter()
                    .filter(|p| p.kind == PatchType::Std)
                    .count()
        );
    }

    /// A ledger with these versions of `ps` done (`true`) or started only (`false`).
    fn ledger(ps: &PatchSet, rows: &[((u32, u32, u32), bool)]) -> NodeLedger {
        let mut l = NodeLedger {
            exists: !rows.is_empty(),
            ..Default::default()
        };
        for &(v, finished) in rows {
            let p = ps
                .get(PatchVersion::new(v.0, v.1, v.2))
                .expect("a sample patch");
            l.main.insert(p.version, row(p, finished));
        }
        l
    }

    fn versions(ps: &[&Patch]) -> Vec<String> {
        ps.iter().map(|p| p.version.to_string()).collect()
    }

    #[test]
    fn catch_up_table() {
        // 1-0-0 S, 1-1-0 S, 1-2-0 D, 1-3-0 C, 1-4-0 C, 1-5-0 S
        let ps = sample();
        let all_done = ledger(
            &ps,
            &[
                ((1, 0, 0), true),
                ((1, 1, 0), true),
                ((1, 2, 0), true),
                ((1, 3, 0), true),
                ((1, 4, 0), true),
                ((1, 5, 0), true),
            ],
        );
        let up_to_1_3 = ledger(
            &ps,
            &[
                ((1, 0, 0), true),
                ((1, 1, 0), true),
                ((1, 2, 0), true),
                ((1, 3, 0), true),
                ((1, 4, 0), false),
            ],
        );
        let empty = NodeLedger::default();
        let has_direct = ledger(&ps, &[((1, 2, 0), true)]);
        let started_direct = ledger(&ps, &[((1, 2, 0), false), ((1, 3, 0), true)]);
        let none = Replication::None;
        let logical = Replication::Logical;
        let physical = Replication::Physical;
        type Case<'a> = (
            &'a str,
            Replication,
            &'a NodeLedger,
            Role,
            &'a NodeLedger,
            Vec<&'a str>,
        );
        let table: Vec<Case<'_>> = vec![
            (
                "new replica, fleet",
                none,
                &all_done,
                Role::Replica,
                &empty,
                vec!["1-2-0", "1-3-0", "1-4-0"],
            ),
            (
                "new subscriber",
                logical,
                &all_done,
                Role::Replica,
                &empty,
                vec!["1-2-0", "1-3-0", "1-4-0"],
            ),
            (
                "standbys replay WAL",
                physical,
                &all_done,
                Role::Replica,
                &empty,
                vec![],
            ),
            (
                "the master never catches up",
                none,
                &all_done,
                Role::Master,
                &empty,
                vec![],
            ),
            (
                "up to date",
                none,
                &all_done,
                Role::Replica,
                &all_done,
                vec![],
            ),
            (
                "partly there",
                none,
                &all_done,
                Role::Replica,
                &has_direct,
                vec!["1-3-0", "1-4-0"],
            ),
            (
                "unfinished row counts as missing",
                none,
                &all_done,
                Role::Replica,
                &started_direct,
                vec!["1-2-0", "1-4-0"],
            ),
            // Only what the cluster finished: 1-4-0 is pending there (its claim not done).
            (
                "cluster still pending",
                none,
                &up_to_1_3,
                Role::Replica,
                &empty,
                vec!["1-2-0", "1-3-0"],
            ),
            (
                "nothing applied yet",
                none,
                &empty,
                Role::Replica,
                &empty,
                vec![],
            ),
        ];
        for (what, replication, master, role, node, want) in table {
            let got = catch_up(&ps, replication, master, NodeView { role, ledger: node });
            assert_eq!(versions(&got), want, "{what}");
            // What status shows as pending covers the catch-up, in the same order.
            let shown: Vec<String> = node_pending(&ps, replication, role, node)
                .iter()
                .map(|v| v.to_string())
                .collect();
            if role == Role::Replica {
                let mut it = shown.iter();
                for v in &want {
                    assert!(it.any(|s| s == v), "{what}: status lacks {v}: {shown:?}");
                }
            }
        }
    }

    #[test]
    fn catch_up_and_pending_partition_what_a_replica_needs() {
        let ps = sample();
        let master = ledger(
            &ps,
            &[((1, 0, 0), true), ((1, 1, 0), true), ((1, 2, 0), true)],
        );
        let node = NodeLedger::default();
        let view = NodeView {
            role: Role::Replica,
            ledger: &node,
        };
        let caught: Vec<&Patch> = catch_up(&ps, Replication::None, &master, view);
        let pend = pending(&ps, &master);
        let bodies: Vec<&Patch> = pend
            .iter()
            .copied()
            .filter(|p| needs_body(p, Role::Replica, Replication::None, &node))
            .collect();
        // Catch-up is below everything pending, and together they are what status lists.
        assert!(caught
            .iter()
            .all(|c| bodies.iter().all(|b| c.version < b.version)));
        let mut together = versions(&caught);
        together.extend(versions(&bodies));
        let shown: Vec<String> = node_pending(&ps, Replication::None, Role::Replica, &node)
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(together, shown);
        assert_eq!(together, ["1-2-0", "1-3-0", "1-4-0"]);
    }
}
