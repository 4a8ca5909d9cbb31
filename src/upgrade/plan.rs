//! Pure planning: patches × per-node ledgers → drift, pending sets, groups,
//! the selection a run applies, and which nodes need each patch's body.
//! No database here: everything is table-tested.

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

/// In JSON, drift is its message (node and patch are named in it).
impl serde::Serialize for Drift {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
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

/// What a node's role still needs, as shown by `status`: on the master every
/// patch not applied to the cluster; on a replica every `direct`/`concurrent`
/// patch not finished there.
pub fn node_pending(patches: &PatchSet, role: Role, ledger: &NodeLedger) -> Vec<PatchVersion> {
    patches
        .patches
        .iter()
        .filter(|p| match role {
            Role::Master => !done(&ledger.main, p.version),
            Role::Replica => p.kind.runs_on_replicas() && !done(&ledger.main, p.version),
        })
        .map(|p| p.version)
        .collect()
}

/// Whether a node must still run the body of `patch`, the patch being pending on the
/// cluster. Standbys of physical replication never do: they replay the master's WAL.
pub fn needs_body(
    patch: &Patch,
    role: Role,
    replication: Replication,
    ledger: &NodeLedger,
) -> bool {
    if role == Role::Replica && replication == Replication::Physical {
        return false;
    }
    match (role, patch.kind) {
        // The master's part of std/direct runs inside the claim transaction:
        // pending on the cluster means not run on the master.
        (Role::Master, PatchType::Direct) if patch.order == PatchOrder::MasterFirst => {
            // Master first: its part commits on its own, recorded in its local book.
            !done(&ledger.local, patch.version) && !done(&ledger.main, patch.version)
        }
        (Role::Master, PatchType::Std | PatchType::Direct) => true,
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
    /// Replicas: `direct`/`concurrent` patches the master has applied and this node lacks.
    pub missing_from_master: Vec<String>,
}

/// Summarizes a node's ledger; `compare` says whether to look for what the master has
/// and the node lacks (a reachable replica of a reachable master).
pub fn summarize(
    patches: &PatchSet,
    role: Role,
    ledger: &NodeLedger,
    master: &NodeLedger,
    compare: bool,
) -> LedgerSummary {
    let missing_from_master = if role == Role::Replica && compare {
        master
            .main
            .iter()
            .filter(|(v, r)| {
                r.is_done() && patches.get(**v).is_some_and(|p| p.kind.runs_on_replicas())
            })
            .filter(|(v, _)| !done(&ledger.main, **v))
            .map(|(v, _)| v.to_string())
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
            body: "SELECT 1;".into(),
            checksum: format!("sum{}{}{}", v.0, v.1, v.2),
            statements: Vec::new(),
            order: Default::default(),
        }
    }

    fn set(ps: Vec<Patch>) -> PatchSet {
        PatchSet {
            dir: PathBuf::from("p"),
            patches: ps,
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
        let s = summarize(&ps, Role::Replica, &replica, &master, true);
        assert_eq!(s.applied, ["1-2-0"]);
        assert_eq!(s.unfinished, ["1-3-0"]);
        // 1-0-0 and 1-1-0 are std (the master only); 1-3-0 is direct-or-concurrent and unfinished.
        assert_eq!(s.missing_from_master, ["1-3-0"]);
        assert!(summarize(&ps, Role::Replica, &replica, &master, false)
            .missing_from_master
            .is_empty());
        assert_eq!(
            summarize(&ps, Role::Master, &master, &master, true)
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
        let r: Vec<String> = node_pending(&ps, Role::Replica, &l)
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(r, ["1-3-0", "1-4-0"]);
        assert_eq!(node_pending(&ps, Role::Master, &l).len(), 5);
    }
}
