//! Two-phase commit decisions driven to completion, black-box, against real PostgreSQL
//! servers: once every node prepared an `--atomic` patch, a replica that restarts before
//! its `COMMIT PREPARED` gets it retried on fresh connections until it confirms (exit 0,
//! the summary names it), or the run exits 1 naming it when it stays down past
//! `commit_retry_timeout`, and `recover` finishes the commit when it is back.

mod common;
use common::{finish, spawn, strings, wait_for};

use std::time::{Duration, Instant};

use common::Fixture;
use pgconvoy::localpg::{LocalServer, PgBinaries, ServerOptions};

/// node0 and node1 on the shared servers, node2 on a server of the test's own (it is
/// stopped and started).
fn fixture_with_own_node2() -> (Fixture, LocalServer) {
    let s = common::servers();
    let own = LocalServer::start(
        &PgBinaries::locate().expect("locate"),
        &ServerOptions::default(),
    )
    .expect("start a server for node2");
    let db = common::unique_db("twopc");
    s.servers[0].create_database(&db).expect("create db");
    s.servers[1].create_database(&db).expect("create db");
    own.create_database(&db).expect("create db");
    let f = Fixture::with_dsns(
        db.clone(),
        vec![s.servers[0].dsn(&db), s.servers[1].dsn(&db), own.dsn(&db)],
    );
    (f, own)
}

/// A base patch applied, then an `--atomic` direct patch whose body sleeps 3 s on the
/// master only (a table only the master has), so that the replicas have prepared long
/// before the decision. Returns the running coordinator once node2 has prepared.
/// Each test uses its own MAJOR: gids are unique per server, and the servers are shared.
fn atomic_run_with_node2_prepared(
    f: &Fixture,
    major: u32,
    extra_args: &[&str],
) -> std::process::Child {
    f.patch(
        &format!("patch-{major}-0-0-direct.sql"),
        "CREATE TABLE base (id int);\n",
    );
    f.run(&["upgrade"]).expect(0);
    f.psql(0, "CREATE TABLE slow_here (id int)");
    f.patch(
        &format!("patch-{major}-1-0-direct.sql"),
        "CREATE TABLE atomic_t (id int);\n\
         SELECT pg_sleep(3) FROM pg_class WHERE relname = 'slow_here';\n",
    );
    let mut args = vec!["upgrade", "--atomic"];
    args.extend_from_slice(extra_args);
    let child = spawn(f, &args);
    assert!(
        wait_for(20, || f.prepared_xacts(2).len() == 1),
        "node2 never prepared its part"
    );
    child
}

#[test]
fn a_replica_restarted_before_commit_prepared_gets_it_retried_and_the_run_exits_0() {
    let (f, mut node2) = fixture_with_own_node2();
    let run = atomic_run_with_node2_prepared(&f, 1, &[]);
    // node2 goes down with its part prepared (a prepared transaction survives a restart)
    // and stays down past the moment the coordinator decides.
    node2.stop().expect("stop node2");
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    node2.start_again().expect("start node2 again");
    let run = finish(run, 60);
    run.expect(0)
        .says("COMMIT PREPARED on node `node2` needed")
        .never_says("recover");
    assert!(stopped.elapsed() < Duration::from_secs(40));
    for n in 0..3 {
        assert_eq!(
            f.ledger(n),
            strings(&["1-0-0:direct:done", "1-1-0:direct:done"]),
            "node{n}"
        );
        assert!(f.has_relation(n, "atomic_t"), "atomic_t on node{n}");
        assert!(
            f.prepared_xacts(n).is_empty(),
            "node{n}: {:?}",
            f.prepared_xacts(n)
        );
    }
    f.run(&["upgrade", "--atomic"])
        .expect(0)
        .says("nothing to do");
    let _ = node2.stop();
}

#[test]
fn a_replica_that_stays_down_past_the_retry_window_is_named_and_recover_finishes() {
    let (f, mut node2) = fixture_with_own_node2();
    f.write_config("commit_retry_timeout: 2s\n");
    let run = atomic_run_with_node2_prepared(&f, 2, &[]);
    node2.stop().expect("stop node2");
    let started = Instant::now();
    let run = finish(run, 60);
    run.expect(1)
        .says("node `node2`")
        .says("COMMIT PREPARED")
        .says("pgconvoy recover");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the retry window is 2 s; the run took {:?}",
        started.elapsed()
    );
    // The decision was commit: what could be committed was.
    for n in 0..2 {
        assert_eq!(
            f.ledger(n),
            strings(&["2-0-0:direct:done", "2-1-0:direct:done"]),
            "node{n}"
        );
        assert!(f.prepared_xacts(n).is_empty(), "node{n}");
    }
    node2.start_again().expect("start node2 again");
    assert_eq!(f.prepared_xacts(2).len(), 1, "node2 kept its part prepared");
    f.run(&["recover"]).expect(0).says("COMMIT PREPARED");
    assert_eq!(
        f.ledger(2),
        strings(&["2-0-0:direct:done", "2-1-0:direct:done"])
    );
    assert!(f.has_relation(2, "atomic_t"));
    assert!(f.prepared_xacts(2).is_empty());
    f.run(&["upgrade", "--atomic"])
        .expect(0)
        .says("nothing to do");
    let _ = node2.stop();
}
