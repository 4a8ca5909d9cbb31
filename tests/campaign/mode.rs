//! The replication mode a trial runs in (drawn from its seed): which fault kinds make
//! sense in which mode, the mode's cluster (subscriptions of node1/node2 to node0's
//! publication; or node0 and its streaming standby), the rows a logical trial feeds
//! through the publication, and the mode's own invariants (a standby's ledger is the
//! master's by replay; every fed row reaches every subscriber exactly once).

use std::time::Duration;

use crate::common::{self, Fixture};
use crate::fault::Kind;
use crate::lab::Lab;
use crate::trials::{self, NodeState, Rng};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Mode {
    None,
    Logical,
    Physical,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::None, Mode::Logical, Mode::Physical];

    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Logical => "logical",
            Mode::Physical => "physical",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }

    /// The trial's mode, from its seed (a stream of its own, so that the rest of a
    /// trial's plan is what the same seed drew before modes existed).
    pub fn of(seed: u64) -> Mode {
        let mut rng = Rng::new(seed ^ 0x6d6f_6465_7365_6564);
        Mode::ALL[rng.below(Mode::ALL.len() as u64) as usize]
    }

    /// The mode's keys in `cluster.yaml`.
    pub fn config(self) -> &'static str {
        match self {
            Mode::None => "",
            Mode::Logical => "replication: logical\nreplication_timeout: 15s\n",
            Mode::Physical => "replication: physical\nreplication_timeout: 15s\n",
        }
    }

    /// Why `kind` makes no sense in this mode (None: it does). Kinds not named here run
    /// with `replication: none` only.
    pub fn unfit(self, kind: Kind) -> Option<&'static str> {
        use Kind::*;
        match self {
            Mode::None => None,
            Mode::Logical => {
                let fits = matches!(
                    kind,
                    Sigkill
                        | Sigint
                        | Sigterm
                        | Terminate
                        | ReplicaRestart
                        | Second
                        | LockStorm
                        | Blackhole
                        | StopUnlock
                        | CatchUpRestart
                        | DeployKill
                );
                (!fits).then_some("written for replication: none")
            }
            Mode::Physical => match kind {
                Blackhole => Some(
                    "the standby runs outside the network namespace (it streams from node0 \
                     over loopback)",
                ),
                CatchUpRestart => Some(
                    "a standby never joins late: it is a copy of the primary, caught up by \
                     WAL, not by pgconvoy",
                ),
                Sigkill | Sigint | Sigterm | Terminate | ReplicaRestart | Second | LockStorm
                | StopUnlock | DeployKill => None,
                #[allow(unreachable_patterns)]
                _ => Some("written for replication: none"),
            },
        }
    }

    /// How many of the nodes take writes (a standby does not).
    pub fn writable(self) -> usize {
        match self {
            Mode::Physical => 1,
            _ => 3,
        }
    }
}

// --- logical: the publication, the subscriptions, the fed rows -----------------------

fn publication(f: &Fixture) -> String {
    format!("{}_pub", f.db)
}

fn subscription(f: &Fixture, n: usize) -> String {
    format!("{}_sub{n}", f.db)
}

/// `feed` on every node, published by node0 (FOR TABLE, never FOR ALL TABLES: the ledger
/// is each node's own), a subscription to it on node1 and node2 (node2 reaches node0
/// through its namespace's link when it has one), and waits until both copied the table
/// and their apply workers run.
pub fn subscribe(lab: &Lab, f: &Fixture) {
    let clients = lab.clients(f);
    for c in &clients {
        lab.pg
            .rows(c, "CREATE TABLE feed (id int PRIMARY KEY, at timestamptz)");
    }
    lab.pg.rows(
        &clients[0],
        &format!("CREATE PUBLICATION {} FOR TABLE feed", publication(f)),
    );
    for (n, c) in clients.iter().enumerate().skip(1) {
        let host = match (&lab.ns, n) {
            (Some(ns), 2) => ns.host_addr.to_string(),
            _ => "127.0.0.1".to_string(),
        };
        lab.pg.rows(
            c,
            &format!(
                "CREATE SUBSCRIPTION {} CONNECTION 'host={host} port={} dbname={} user=postgres' \
                 PUBLICATION {}",
                subscription(f, n),
                lab.servers[0].port(),
                f.db,
                publication(f)
            ),
        );
    }
    let problems = wait_subscribers(lab, f, 30);
    assert!(
        problems.is_empty(),
        "the trial's subscriptions did not start: {}",
        problems.join("; ")
    );
}

/// Waits up to `secs` until every subscription has copied its tables and its apply
/// worker runs; what is still wrong then.
pub fn wait_subscribers(lab: &Lab, f: &Fixture, secs: u64) -> Vec<String> {
    let mut problems = Vec::new();
    common::wait_for(secs, || {
        problems.clear();
        for n in 1..f.dsns.len() {
            let sub = subscription(f, n);
            let Ok(c) = lab.try_connect(&f.dsns[n]) else {
                problems.push(format!("node{n} does not answer"));
                continue;
            };
            let ok = lab.pg.value(
                &c,
                &format!(
                    "SELECT NOT EXISTS (SELECT FROM pg_subscription_rel sr JOIN pg_subscription s \
                            ON s.oid = sr.srsubid WHERE s.subname = '{sub}' AND sr.srsubstate <> 'r') \
                        AND EXISTS (SELECT FROM pg_stat_subscription \
                            WHERE subname = '{sub}' AND relid IS NULL AND pid IS NOT NULL)"
                ),
            );
            if ok != "t" {
                problems.push(format!("{sub} on node{n} is not running and synced"));
            }
        }
        problems.is_empty()
    });
    problems
}

/// Inserts `rows` more rows into node0's `feed` (the publisher's own traffic while the
/// run and the fault go on).
pub fn feed(lab: &Lab, f: &Fixture, batch: u32, rows: u32) {
    let c = lab.pg.connect(&f.dsns[0]);
    let from = batch * rows + 1;
    lab.pg.rows(
        &c,
        &format!(
            "INSERT INTO feed SELECT g, now() FROM generate_series({from}, {}) g",
            from + rows - 1
        ),
    );
}

/// Every row node0 fed reached every subscriber exactly once (the primary key makes a
/// second copy an apply error, which stops the subscription): waits up to `secs`.
pub fn fed_everywhere(lab: &Lab, f: &Fixture, secs: u64) -> Vec<String> {
    let summary = "SELECT count(*) || '/' || coalesce(sum(id), 0) FROM feed";
    let c0 = lab.pg.connect(&f.dsns[0]);
    let want = lab.pg.value(&c0, summary);
    let mut v = Vec::new();
    for n in 1..f.dsns.len() {
        let c = lab.pg.connect(&f.dsns[n]);
        let mut got = String::new();
        let same = common::wait_for(secs, || {
            got = lab.pg.value(&c, summary);
            got == want
        });
        if !same {
            let errors = lab.pg.value(
                &c,
                &format!(
                    "SELECT coalesce(sum(apply_error_count), 0) FROM pg_stat_subscription_stats \
                     WHERE subname = '{}'",
                    subscription(f, n)
                ),
            );
            v.push(format!(
                "invariant 3 (logical): node{n}'s feed holds {got} (rows/sum of ids) after {secs} s, \
                 node0 fed {want}; {errors} apply error(s)"
            ));
        }
    }
    v
}

/// Drops the trial's subscriptions (which drops their slots on node0), so that slots do
/// not pile up over a campaign.
pub fn unsubscribe(lab: &Lab, f: &Fixture) {
    for n in 1..f.dsns.len() {
        let sub = subscription(f, n);
        let Ok(c) = lab.try_connect(&f.dsns[n]) else {
            continue;
        };
        if lab
            .pg
            .rt
            .block_on(c.batch_execute(&format!("DROP SUBSCRIPTION IF EXISTS {sub}")))
            .is_err()
        {
            // node0 unreachable: let go of the slot here, drop it there.
            let _ = lab.pg.rt.block_on(c.batch_execute(&format!(
                "ALTER SUBSCRIPTION {sub} DISABLE; \
                 ALTER SUBSCRIPTION {sub} SET (slot_name = NONE); DROP SUBSCRIPTION {sub}"
            )));
            let c0 = lab.pg.connect(&f.dsns[0]);
            let _ = lab.pg.rt.block_on(c0.batch_execute(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = '{sub}' AND NOT active"
            )));
        }
    }
}

// --- physical: the standby's replay ---------------------------------------------------

/// Waits up to `secs` until the standby (node1) replayed everything node0 has written;
/// false if it did not.
pub fn wait_replayed(lab: &Lab, f: &Fixture, secs: u64) -> bool {
    let c0 = lab.pg.connect(&f.dsns[0]);
    let target = lab.pg.value(&c0, "SELECT pg_current_wal_lsn()::text");
    let c1 = lab.pg.connect(&f.dsns[1]);
    common::wait_for(secs, || {
        lab.pg.value(
            &c1,
            &format!("SELECT coalesce(pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, false)"),
        ) == "t"
    })
}

/// What the nodes hold, each as the node whose markers it keeps: a standby keeps its
/// master's (node0's) markers, by replay. Each node is read in one snapshot: a standby
/// may still be replaying, and books read apart from markers would show half a commit.
pub fn states(lab: &Lab, mode: Mode, clients: &[tokio_postgres::Client]) -> Vec<NodeState> {
    clients
        .iter()
        .enumerate()
        .map(|(n, c)| {
            let as_node = if mode == Mode::Physical { 0 } else { n };
            lab.pg
                .rows(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
            let s = trials::read_node(&lab.pg, c, as_node);
            lab.pg.rows(c, "COMMIT");
            s
        })
        .collect()
}

/// The standby's books, markers and effects are the master's.
pub fn standby_is_master(states: &[NodeState]) -> Vec<String> {
    let (m, s) = (&states[0], &states[1]);
    let mut v = Vec::new();
    for (what, a, b) in [
        ("ledger", format!("{:?}", m.main), format!("{:?}", s.main)),
        (
            "local book",
            format!("{:?}", m.local),
            format!("{:?}", s.local),
        ),
        (
            "markers",
            format!("{:?}", m.markers),
            format!("{:?}", s.markers),
        ),
        (
            "effects",
            format!("{:?}", m.effects),
            format!("{:?}", s.effects),
        ),
    ] {
        if a != b {
            v.push(format!(
                "invariant 2 (physical): the standby's {what} is not the master's after replay: \
                 standby {b}, master {a}"
            ));
        }
    }
    v
}

/// How long the mode's convergence may take once recovery ran.
pub const CONVERGE: Duration = Duration::from_secs(30);
