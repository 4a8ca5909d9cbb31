//! Faults, black-box, against real PostgreSQL servers: a stopped replica, a coordinator
//! killed mid-patch, and two coordinators racing for the same cluster.

mod common;
use common::{finish, pgconvoy_backends, pgconvoy_sleeping, spawn, strings, wait_for};

use std::time::{Duration, Instant};

use common::cli::Run;
use common::Fixture;
use pgconvoy::localpg::{LocalServer, PgBinaries, ServerOptions};

#[test]
fn stopped_replica_fails_the_run_and_a_rerun_completes() {
    let s = common::servers();
    let mut dedicated = LocalServer::start(
        &PgBinaries::locate().expect("locate"),
        &ServerOptions::default(),
    )
    .expect("start a dedicated server");
    let db = common::unique_db("stopped");
    s.servers[0].create_database(&db).expect("create db");
    s.servers[1].create_database(&db).expect("create db");
    dedicated.create_database(&db).expect("create db");
    let f = Fixture::with_dsns(
        db.clone(),
        vec![
            s.servers[0].dsn(&db),
            s.servers[1].dsn(&db),
            dedicated.dsn(&db),
        ],
    );
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE everywhere (id int);\n",
    );

    dedicated.stop().expect("stop node2");
    let started = Instant::now();
    let run = finish(spawn(&f, &["upgrade"]), 20);
    let took = started.elapsed();
    run.expect(1).says("node2");
    assert!(
        took < Duration::from_secs(10),
        "a stopped replica took {took:?} to be reported"
    );
    assert!(
        !f.ledger(0).contains(&"1-0-0:direct:done".to_string()),
        "master stamped a patch node2 never got: {:?}",
        f.ledger(0)
    );

    dedicated.start_again().expect("start node2 again");
    f.run(&["upgrade"]).expect(0);
    for n in 0..3 {
        assert_eq!(f.ledger(n), strings(&["1-0-0:direct:done"]), "node{n}");
        assert!(f.has_relation(n, "everywhere"), "table on node{n}");
    }
    f.run(&["upgrade"]).expect(0).says("nothing to do");
    let _ = dedicated.stop();
}

#[test]
fn killed_coordinator_leaves_no_claim_and_nothing_running() {
    let f = Fixture::new(3);
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE slow_t ();\nSELECT pg_sleep(30);\n",
    );
    let mut child = spawn(&f, &["upgrade"]);
    let sleeping = wait_for(10, || pgconvoy_sleeping(&f, 0));
    child.kill().expect("SIGKILL the coordinator");
    let _ = child.wait();
    assert!(sleeping, "the patch never showed up running on node0");

    let killed_at = Instant::now();
    let gone = wait_for(5, || pgconvoy_backends(&f, 0).is_empty());
    assert!(
        gone,
        "5s after SIGKILL, pgconvoy backends remain on node0: {:?}",
        pgconvoy_backends(&f, 0)
    );
    assert!(killed_at.elapsed() < Duration::from_secs(5));
    for n in 1..3 {
        assert!(
            wait_for(5, || pgconvoy_backends(&f, n).is_empty()),
            "pgconvoy backends remain on node{n}: {:?}",
            pgconvoy_backends(&f, n)
        );
    }
    assert!(f.ledger(0).is_empty(), "{:?}", f.ledger(0));
    assert!(!f.has_relation(0, "slow_t"));
    assert_eq!(
        f.psql(
            0,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        "0",
        "an advisory lock survived the coordinator"
    );

    f.patch("patch-1-0-0-std.sql", "CREATE TABLE slow_t ();\n");
    f.run(&["upgrade"]).expect(0);
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done"]));
    assert!(f.has_relation(0, "slow_t"));
}

/// A cluster with `counter` applied, and a slow pending patch that adds one row to it.
fn counter_fixture() -> Fixture {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE counter (n int);\n");
    f.run(&["upgrade"]).expect(0);
    f.patch(
        "patch-1-1-0-std.sql",
        "INSERT INTO counter VALUES (1);\nSELECT pg_sleep(2);\n",
    );
    f
}

fn assert_one_winner(a: &Run, b: &Run) {
    let mut codes = [a.code(), b.code()];
    codes.sort();
    assert_eq!(
        codes,
        [0, 3],
        "expected one success and one busy\n--- first\n{}\n--- second\n{}",
        a.all(),
        b.all()
    );
    let busy = if a.code() == 3 { a } else { b };
    assert!(
        busy.all().to_lowercase().contains("busy"),
        "busy run lacks a busy message:\n{}",
        busy.all()
    );
}

#[test]
fn two_coordinators_one_runs_the_other_is_busy() {
    let f = counter_fixture();
    let a = spawn(&f, &["upgrade"]);
    let b = spawn(&f, &["upgrade"]);
    let (a, b) = (finish(a, 15), finish(b, 15));
    assert_one_winner(&a, &b);
    assert_eq!(f.psql(0, "SELECT count(*) FROM counter"), "1");
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done", "1-1-0:std:done"]));
}

#[test]
fn two_coordinators_on_a_fresh_cluster_one_runs_the_other_is_busy() {
    // No ledger yet on any node: both race to create it too.
    let f = Fixture::new(3);
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE counter (n int);\nINSERT INTO counter VALUES (1);\nSELECT pg_sleep(2);\n",
    );
    let a = spawn(&f, &["upgrade"]);
    let b = spawn(&f, &["upgrade"]);
    let (a, b) = (finish(a, 15), finish(b, 15));
    assert_one_winner(&a, &b);
    assert_eq!(f.psql(0, "SELECT count(*) FROM counter"), "1");
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done"]));
}

#[test]
fn wait_lets_the_second_coordinator_find_nothing_to_do() {
    let f = counter_fixture();
    let first = spawn(&f, &["upgrade"]);
    let sleeping = wait_for(10, || pgconvoy_sleeping(&f, 0));
    let second = spawn(&f, &["upgrade", "--wait"]);
    let first = finish(first, 15);
    let second = finish(second, 15);
    assert!(sleeping, "the first coordinator never ran its patch");
    first.expect(0);
    second.expect(0).says("nothing to do");
    assert_eq!(f.psql(0, "SELECT count(*) FROM counter"), "1");
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done", "1-1-0:std:done"]));
}

/// Kills the coordinator while `patch` (sleeping via `SELECT pg_sleep(secs) FROM nap`) runs
/// on every node, then checks that nothing is left running anywhere and that a re-run of the
/// same, now fast, file completes.
fn kill_mid_patch_on_every_node(name: &str, body: &str, table: &str) {
    let f = Fixture::new(3);
    for n in 0..3 {
        f.psql(
            n,
            "CREATE TABLE nap (secs float8); INSERT INTO nap VALUES (30)",
        );
        f.psql(n, &format!("CREATE TABLE {table} (id int)"));
    }
    f.patch(name, body);
    let mut child = spawn(&f, &["upgrade"]);
    let sleeping = wait_for(10, || (0..3).all(|n| pgconvoy_sleeping(&f, n)));
    child.kill().expect("SIGKILL the coordinator");
    let _ = child.wait();
    assert!(sleeping, "the patch never ran on all three nodes at once");

    for n in 0..3 {
        assert!(
            wait_for(5, || pgconvoy_backends(&f, n).is_empty()),
            "5s after SIGKILL, pgconvoy backends remain on node{n}: {:?}",
            pgconvoy_backends(&f, n)
        );
    }
    for n in 0..3 {
        assert!(
            !f.ledger(n).iter().any(|r| r.ends_with(":done")),
            "node{n} shows a killed patch as done: {:?}",
            f.ledger(n)
        );
    }

    for n in 0..3 {
        f.psql(n, "UPDATE nap SET secs = 0");
    }
    f.run(&["upgrade"]).expect(0);
    for n in 0..3 {
        assert!(
            f.ledger(n).iter().all(|r| r.ends_with(":done")) && f.ledger(n).len() == 1,
            "node{n}: {:?}",
            f.ledger(n)
        );
    }
}

#[test]
fn killed_coordinator_during_a_direct_patch_leaves_nothing_running_anywhere() {
    kill_mid_patch_on_every_node(
        "patch-1-0-0-direct.sql",
        "ALTER TABLE kd ADD COLUMN v int;\nSELECT pg_sleep(secs) FROM nap;\n",
        "kd",
    );
}

#[test]
fn killed_coordinator_during_a_concurrent_patch_leaves_nothing_running_anywhere() {
    kill_mid_patch_on_every_node(
        "patch-1-0-0-concurrent.sql",
        "SELECT pg_sleep(secs) FROM nap;\nCREATE INDEX CONCURRENTLY kc_id ON kc (id);\n",
        "kc",
    );
}
