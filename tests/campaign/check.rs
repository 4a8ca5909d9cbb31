//! The five invariants of a trial, read off the nodes: (1) right after the fault, a row
//! done has its effect, and the master never records a patch done while a node holds its
//! part only prepared (beyond the bounded retry); (2) after recovery every node has what
//! its role needs, nothing pending; (3) every effect exactly once; (4) nothing left over
//! (prepared transactions, pgconvoy backends, advisory locks); (5) no recovery run
//! refused by a dead coordinator's leftovers.

use std::time::Duration;

use crate::common::cli::Run;
use crate::common::Fixture;
use crate::lab::Lab;
use crate::mode::{self, Mode};
use crate::trials::{self, PatchSpec};

/// pgconvoy's prepared transactions in the trial's database on each node: (node, gid).
pub fn prepared(lab: &Lab, clients: &[tokio_postgres::Client]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, c) in clients.iter().enumerate() {
        for r in lab.pg.rows(
            c,
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() \
             AND gid LIKE 'pgconvoy:%' ORDER BY gid",
        ) {
            out.push((n, r[0].clone().unwrap_or_default()));
        }
    }
    out
}

/// The patch version a gid `pgconvoy:LEDGER:VERSION:NODE:DB` belongs to.
fn gid_version(gid: &str) -> Option<&str> {
    gid.split(':').nth(2)
}

/// Invariant 1, right after the fault (every coordinator has exited).
/// `window_ran_out`: a run said the commit retry window ran out (`recover` left to finish).
/// `joined_late`: patches node2 may lack (it joined after the cluster applied them, and
/// catching it up is what the fault interrupted).
/// A standby (physical) is checked as a copy of the master: whatever it replayed so far
/// keeps the master's invariants.
pub fn after_fault(
    lab: &Lab,
    mode: Mode,
    clients: &[tokio_postgres::Client],
    window_ran_out: bool,
    joined_late: &[PatchSpec],
) -> Vec<String> {
    let states = mode::states(lab, mode, clients);
    let excused: Vec<String> = joined_late
        .iter()
        .flat_map(|p| {
            [
                format!(
                    "{} is done on the master but not finished on node2",
                    p.version
                ),
                format!(
                    "{} is done on the master but its effect is missing on node2",
                    p.version
                ),
            ]
        })
        .collect();
    let mut v = match mode {
        Mode::Physical => {
            let mut v = trials::violations(&states[..1]);
            v.extend(
                trials::violations(&states[1..])
                    .into_iter()
                    .map(|s| format!("on the standby (node1), as a copy of node0: {s}")),
            );
            v
        }
        _ => trials::violations(&states),
    };
    v.retain(|s| !excused.contains(s));
    if !window_ran_out {
        // A standby shows the master's prepared transactions as far as it replayed.
        for (n, gid) in prepared(lab, &clients[..mode.writable()]) {
            let Some(ver) = gid_version(&gid) else {
                continue;
            };
            if states[0].main.get(ver) == Some(&true) {
                v.push(format!(
                    "invariant 1: {ver} is done on the master while node{n} holds it only prepared ({gid})"
                ));
            }
        }
    }
    v.into_iter()
        .map(|s| {
            if s.starts_with("invariant") {
                s
            } else {
                format!("invariant 1: {s}")
            }
        })
        .collect()
}

/// Invariants 2 and 3 after recovery: everything done everywhere, one marker each, every
/// index valid, `status` clean. Physical: the master's books complete, and the standby,
/// once it replayed, holds exactly the master's.
pub fn completed(
    lab: &Lab,
    mode: Mode,
    f: &Fixture,
    clients: &[tokio_postgres::Client],
    patches: &[PatchSpec],
) -> Vec<String> {
    let states = mode::states(lab, mode, clients);
    let writable = &states[..mode.writable()];
    let mut v: Vec<String> = trials::completion_violations(writable, patches)
        .into_iter()
        .map(|s| format!("invariant 2/3: {s}"))
        .collect();
    if mode == Mode::Physical {
        v.extend(mode::standby_is_master(&states));
    }
    v.extend(
        trials::status_violations(f)
            .into_iter()
            .map(|s| format!("invariant 2: {s}")),
    );
    v
}

/// Invariant 4: no prepared transaction, no pgconvoy backend (after `quiet`), no advisory
/// lock in the trial's database on any node.
pub fn nothing_left(lab: &Lab, clients: &[tokio_postgres::Client], quiet: u64) -> Vec<String> {
    let mut v: Vec<String> = prepared(lab, clients)
        .into_iter()
        .map(|(n, gid)| format!("invariant 4: node{n} still holds prepared {gid}"))
        .collect();
    v.extend(
        trials::wait_quiet(&lab.pg, clients, quiet)
            .into_iter()
            .map(|b| format!("invariant 4: pgconvoy backend left: {b}")),
    );
    for (n, c) in clients.iter().enumerate() {
        let locks = lab.pg.value(
            c,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        );
        if locks != "0" {
            v.push(format!(
                "invariant 4: node{n} has {locks} advisory lock(s) left"
            ));
        }
    }
    v
}

/// Invariant 5 (and 2): a recovery command run once the dead coordinators' sessions are
/// gone completes; exit 3 (refused: another coordinator, a claim, a leftover) is the
/// invariant's violation, any other failure invariant 2's.
pub fn recovery_run(what: &str, run: &Run) -> Vec<String> {
    match run.code() {
        0 => Vec::new(),
        3 => vec![format!(
            "invariant 5: `{what}` refused (exit 3) after the fault:\n{}",
            indent(&run.all())
        )],
        c => vec![format!(
            "invariant 2: `{what}` exited {c} after the fault:\n{}",
            indent(&run.all())
        )],
    }
}

/// Whether `status` reports prepared transactions on any node (then `recover` runs).
pub fn status_says_prepared(f: &Fixture) -> bool {
    let run = f.run(&["status", "--format", "json"]);
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&run.stdout()) else {
        return false;
    };
    json["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|n| n["prepared"].as_array().is_some_and(|p| !p.is_empty()))
}

pub fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("      | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How long a killed coordinator's sessions may take to go away before recovery starts
/// (the servers notice the closed sockets; a black-holed one needs its keepalives).
pub const SETTLE: Duration = Duration::from_secs(20);
