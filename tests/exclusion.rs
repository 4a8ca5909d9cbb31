//! Exclusion for the whole run, black-box, against real PostgreSQL servers: a coordinator
//! whose cluster lock session is terminated mid-run stops before its next patch and exits
//! 1, and a second coordinator started meanwhile never runs a patch at the same time as
//! it; `deploy` rolls back what it had not committed when its lock session ends.

mod common;
use common::{finish, spawn, wait_for};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Fixture, Session};

/// Terminates the session holding the cluster lock (the session advisory lock on the
/// master's database) and waits until its backend is gone (the lock with it); returns
/// how many it ended.
fn terminate_lock_session(f: &Fixture) -> String {
    f.psql(
        0,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 20000)) FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' AND objsubid = 1 \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
}

/// Watches the master from a thread of its own: the most pgconvoy sessions it ever saw
/// running a patch body (`pg_sleep`) at the same moment.
struct OverlapWatch {
    stop: Arc<AtomicBool>,
    most: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OverlapWatch {
    fn start(dsn: &str) -> OverlapWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicUsize::new(0));
        let dsn = dsn.to_string();
        let thread = {
            let (stop, most) = (Arc::clone(&stop), Arc::clone(&most));
            std::thread::spawn(move || {
                let s = Session::connect(&dsn);
                while !stop.load(Ordering::SeqCst) {
                    let n: usize = s
                        .value(
                            "SELECT count(*) FROM pg_stat_activity \
                             WHERE datname = current_database() AND application_name = 'pgconvoy' \
                               AND state = 'active' AND query ILIKE '%pg_sleep%'",
                        )
                        .parse()
                        .unwrap_or(0);
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        OverlapWatch {
            stop,
            most,
            thread: Some(thread),
        }
    }

    /// Stops watching; the most bodies seen running at once.
    fn most(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("watch thread");
        }
        self.most.load(Ordering::SeqCst)
    }
}

/// A cluster with `trace` applied and five slow std patches pending, each recording
/// when its body started and ended.
fn traced_fixture() -> Fixture {
    let f = Fixture::new(3);
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE trace (version text PRIMARY KEY, started timestamptz, ended timestamptz);\n",
    );
    f.run(&["upgrade"]).expect(0);
    for minor in 1..=5 {
        let v = format!("1-{minor}-0");
        f.patch(
            &format!("patch-{v}-std.sql"),
            &format!(
                "INSERT INTO trace VALUES ('{v}', clock_timestamp(), NULL);\n\
                 SELECT pg_sleep(0.8), '{v}';\n\
                 UPDATE trace SET ended = clock_timestamp() WHERE version = '{v}';\n"
            ),
        );
    }
    f
}

/// `version pid` of the master's ledger rows of the slow patches: who applied each.
fn applied_by_pid(f: &Fixture) -> Vec<(String, String)> {
    f.psql(
        0,
        "SELECT major || '-' || minor || '-' || patch, substring(applied_by from 'pid ([0-9]+)') \
         FROM pgconvoy.revision WHERE minor > 0 AND end_time IS NOT NULL ORDER BY 1",
    )
    .lines()
    .filter_map(|l| l.split_once('|'))
    .map(|(v, p)| (v.to_string(), p.to_string()))
    .collect()
}

/// Whether a pgconvoy backend on the master is running the body of `version`.
fn running(f: &Fixture, version: &str) -> bool {
    f.psql(
        0,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
               AND application_name = 'pgconvoy' AND state = 'active' \
               AND query LIKE '%pg_sleep(0.8), ''{version}''%'"
        ),
    ) != "0"
}

fn done_on_master(f: &Fixture, version: &str) -> bool {
    f.ledger(0).contains(&format!("{version}:std:done"))
}

#[test]
fn lock_session_terminated_mid_run_stops_before_the_next_patch_and_the_next_coordinator_runs_alone()
{
    let f = traced_fixture();
    let watch = OverlapWatch::start(&f.dsns[0]);
    let a = spawn(&f, &["upgrade", "--all"]);
    assert!(
        wait_for(20, || running(&f, "1-2-0")),
        "patch 1-2-0 never showed up running"
    );
    assert_eq!(terminate_lock_session(&f), "1", "one lock session to end");
    // A second coordinator starts once the patch in flight finished.
    assert!(wait_for(20, || done_on_master(&f, "1-2-0")));
    let b = spawn(&f, &["upgrade", "--all"]);
    let (a, b) = (finish(a, 60), finish(b, 60));
    let most = watch.most();

    b.expect(0);
    assert_eq!(
        most, 1,
        "two patch bodies ran at the same time on the master"
    );
    // The first coordinator finished the patch in flight when its lock session ended
    // (1-2-0, or 1-3-0 when the termination came late on a loaded machine) and stopped
    // before the next one; every later patch is the second coordinator's.
    let by = applied_by_pid(&f);
    let pid_of = |v: &str| by.iter().find(|(x, _)| x == v).map(|(_, p)| p.clone());
    let first = pid_of("1-1-0").expect("1-1-0 applied");
    assert_eq!(pid_of("1-2-0").as_ref(), Some(&first), "{by:?}");
    let versions = ["1-3-0", "1-4-0", "1-5-0"];
    let by_first = versions
        .iter()
        .take_while(|v| pid_of(v).as_ref() == Some(&first))
        .count();
    assert!(by_first <= 1, "the first coordinator went on: {by:?}");
    a.expect(1)
        .says("cluster lock")
        .says(&format!("stopped before patch `{}`", versions[by_first]));
    for v in &versions[by_first..] {
        let p = pid_of(v).unwrap_or_else(|| panic!("{v} not applied: {by:?}"));
        assert_ne!(
            p, first,
            "{v} applied by the coordinator that lost its lock"
        );
    }
    // Every body ran once, and the second coordinator's first began after the first
    // coordinator's last ended.
    assert_eq!(f.psql(0, "SELECT count(*), count(ended) FROM trace"), "5|5");
    let last_of_first = if by_first == 0 { "1-2-0" } else { versions[0] };
    assert_eq!(
        f.psql(
            0,
            &format!(
                "SELECT (SELECT max(ended) FROM trace WHERE version <= '{last_of_first}') \
                      < (SELECT min(started) FROM trace WHERE version > '{last_of_first}')"
            )
        ),
        "t"
    );
    f.run(&["upgrade", "--all"]).expect(0).says("nothing to do");
}

#[test]
fn lock_session_terminated_while_a_second_coordinator_races_for_the_patch_in_flight() {
    let f = traced_fixture();
    let watch = OverlapWatch::start(&f.dsns[0]);
    let a = spawn(&f, &["upgrade", "--all"]);
    assert!(
        wait_for(20, || running(&f, "1-2-0")),
        "patch 1-2-0 never showed up running"
    );
    assert_eq!(terminate_lock_session(&f), "1");
    // Started at once: it takes the free lock and goes for the patch still in flight,
    // whose claim keeps it out.
    let b = spawn(&f, &["upgrade", "--all"]);
    let (a, b) = (finish(a, 60), finish(b, 60));
    let most = watch.most();

    a.expect(1).says("cluster lock");
    assert!(
        b.code() == 0 || b.code() == 3,
        "the second coordinator exited {}\n{}",
        b.code(),
        b.all()
    );
    assert_eq!(
        most, 1,
        "two patch bodies ran at the same time on the master"
    );
    // The first coordinator applied nothing after the patch it had in flight (1-2-0, or
    // 1-3-0 when the termination came late on a loaded machine).
    let first = applied_by_pid(&f)
        .into_iter()
        .find(|(v, _)| v == "1-1-0")
        .map(|(_, p)| p)
        .expect("1-1-0 applied");
    let in_flight = if a.all().contains("stopped before patch `1-4-0`") {
        "1-3-0"
    } else {
        "1-2-0"
    };
    for (v, p) in applied_by_pid(&f) {
        if v.as_str() > in_flight {
            assert_ne!(
                p, first,
                "{v} applied by the coordinator that lost its lock"
            );
        }
    }
    f.run(&["upgrade", "--all"]).expect(0);
    assert_eq!(f.psql(0, "SELECT count(*), count(ended) FROM trace"), "5|5");
    assert!(common::pgconvoy_backends(&f, 0).is_empty());
}

#[test]
fn deploy_whose_lock_session_ends_rolls_back_what_it_had_not_committed() {
    let f = Fixture::new(3);
    let owner = format!("{}_owner", f.db);
    for n in 0..3 {
        f.psql(n, &format!("CREATE ROLE \"{owner}\" NOLOGIN"));
    }
    let package = |rate: &str| {
        f.scratch.write(
            "packages/billing/package.yaml",
            &format!(
                "name: billing\nversion: 1.0.0\ndescription: test package\nsubclass: versioned\nowner_role: {owner}\nuser_roles: []\ndepends: []\n"
            ),
        );
        f.scratch.write(
            "packages/billing/functions/tax.sql",
            &format!(
                "CREATE FUNCTION tax(amount numeric) RETURNS numeric\nLANGUAGE sql IMMUTABLE AS $$ SELECT round(amount * {rate}, 2) $$;\n"
            ),
        );
        f.scratch.write(
            "packages/billing/views/rates.sql",
            "CREATE VIEW rates AS SELECT tax(100) AS tax_on_100;\n",
        );
    };
    package("0.1");
    f.run(&["deploy"]).expect(0);
    // A reader of the view on node2 makes the redeploy wait there (lock-timeout retries).
    let reader = Session::connect(&f.dsns[2]);
    reader.exec("BEGIN; SELECT * FROM billing_1_0_0.rates");
    package("0.3");
    let run = spawn(
        &f,
        &[
            "deploy",
            "--mode",
            "unsafe",
            "--lock-timeout",
            "100ms",
            "--lock-retries",
            "100",
        ],
    );
    let waiting = wait_for(20, || {
        f.psql(
            2,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
               AND application_name = 'pgconvoy' AND xact_start IS NOT NULL",
        ) != "0"
            && f.psql(
                0,
                "SELECT count(*) FROM billing_1_0_0.rates WHERE tax_on_100 = 30",
            ) == "1"
    });
    assert!(waiting, "the deploy never got stuck on node2 only");
    assert_eq!(terminate_lock_session(&f), "1");
    std::thread::sleep(Duration::from_millis(300));
    reader.exec("COMMIT");
    let run = finish(run, 60);
    run.expect(1).says("cluster lock").says("node2");
    let tax = |n: usize| f.psql(n, "SELECT tax_on_100 FROM billing_1_0_0.rates");
    assert_eq!(tax(2), "10.00", "node2 committed after the lock was lost");
    assert_eq!(tax(0), "30.00");
    assert!(wait_for(5, || common::pgconvoy_backends(&f, 2).is_empty()));
    f.run(&["deploy", "--mode", "unsafe"]).expect(0);
    assert_eq!(tax(2), "30.00");
}
