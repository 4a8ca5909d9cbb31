//! plan's tests: what each node needs, catch-up, summaries, --node, tables of cases.

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
