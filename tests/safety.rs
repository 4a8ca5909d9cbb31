//! Safety under load and faults, black-box, against three real PostgreSQL servers:
//! lock-timeout retries that never make other sessions queue, Ctrl-C and SIGTERM,
//! resuming a failed `CREATE [UNIQUE] INDEX CONCURRENTLY`, atomic `direct` patches by
//! two-phase commit, and `pgconvoy recover` of leftover prepared transactions.

mod common;
use common::{
    finish, has_pgconvoy_schema, index_valid, pgconvoy_backends, pgconvoy_sleeping, spawn,
    start_time, strings, wait_for,
};

use std::time::{Duration, Instant};

use common::cli::Run;
use common::{Fixture, Session};
use pgconvoy::localpg::{LocalServer, PgBinaries, ServerOptions};

/// pgconvoy backends of this database waiting for a lock (SQL for a monitor session).
const PGCONVOY_WAITING: &str = "SELECT count(*) FROM pg_locks l \
     JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE NOT l.granted AND a.application_name = 'pgconvoy' \
       AND a.datname = current_database()";

/// Whether the index exists on the node and is invalid (a failed concurrent build).
fn index_invalid(f: &Fixture, node: usize, index: &str) -> bool {
    f.psql(
        node,
        &format!(
            "SELECT coalesce((SELECT NOT indisvalid FROM pg_index \
             WHERE indexrelid = to_regclass('{index}')), false)"
        ),
    ) == "t"
}

fn has_column(f: &Fixture, node: usize, table: &str, column: &str) -> bool {
    f.psql(
        node,
        &format!(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass('{table}') \
             AND attname = '{column}' AND NOT attisdropped"
        ),
    ) == "1"
}

fn status_json(f: &Fixture) -> serde_json::Value {
    let run = f.run(&["status", "--format", "json"]);
    serde_json::from_str(&run.stdout()).unwrap_or_else(|e| {
        panic!(
            "status --format json is not JSON ({e}):\n{}\n{}",
            run.stdout(),
            run.stderr()
        )
    })
}

/// The gids `status --format json` lists under each node's `prepared`.
fn status_prepared(f: &Fixture) -> Vec<Vec<String>> {
    let v = status_json(f);
    v["nodes"]
        .as_array()
        .expect("nodes array")
        .iter()
        .map(|n| {
            n["prepared"]
                .as_array()
                .unwrap_or_else(|| panic!("node without a `prepared` list: {n}"))
                .iter()
                .map(|p| p["gid"].as_str().expect("gid").to_string())
                .collect()
        })
        .collect()
}

// --- 1. lock timeout with retries -------------------------------------------------------

#[test]
fn lock_retries_outlast_a_4s_holder_and_readers_never_queue_long() {
    let f = Fixture::new(3);
    f.psql(
        0,
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)",
    );
    f.patch("patch-1-0-0-std.sql", "ALTER TABLE t ADD COLUMN c int;\n");

    let holder = Session::connect(&f.dsns[0]);
    holder.exec("BEGIN; LOCK TABLE t IN ACCESS SHARE MODE");
    let held_at = Instant::now();
    let monitor = Session::connect(&f.dsns[0]);
    let reader = Session::connect(&f.dsns[0]);

    let started = Instant::now();
    let child = spawn(
        &f,
        &["upgrade", "--lock-timeout", "300ms", "--lock-retries", "40"],
    );

    // Readers of `t` started while the patch waits for its lock: none may queue
    // behind the pending ACCESS EXCLUSIVE request for longer than the lock timeout.
    let mut reads: Vec<(Duration, Duration)> = Vec::new();
    while held_at.elapsed() < Duration::from_millis(3600) {
        if monitor.value(PGCONVOY_WAITING) != "0" {
            let at = started.elapsed();
            let t0 = Instant::now();
            assert_eq!(reader.value("SELECT count(*) FROM t"), "1000");
            reads.push((at, t0.elapsed()));
            std::thread::sleep(Duration::from_millis(250));
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let remaining = Duration::from_secs(4).saturating_sub(held_at.elapsed());
    std::thread::sleep(remaining);
    holder.exec("COMMIT");

    let run = finish(child, 60);
    eprintln!("reads started while pgconvoy waited (at, took): {reads:?}");
    run.expect(0).says("lock timeout");
    assert!(
        !reads.is_empty(),
        "never saw pgconvoy waiting for its lock while the holder held it"
    );
    assert!(
        reads
            .iter()
            .any(|(at, _)| *at >= Duration::from_millis(900)),
        "no reader started a second or more into the wait: {reads:?}"
    );
    for (at, took) in &reads {
        assert!(
            *took < Duration::from_millis(1500),
            "a reader started {at:?} into the run waited {took:?}"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(3500),
        "the ALTER cannot have finished before the holder let go"
    );
    assert!(has_column(&f, 0, "t", "c"), "column c was not added");
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done"]));
}

#[test]
fn lock_retries_run_out_against_a_30s_holder_exit_1_naming_the_lock_and_record_nothing() {
    let f = Fixture::new(3);
    f.psql(0, "CREATE TABLE t (id int)");
    f.patch("patch-1-0-0-std.sql", "ALTER TABLE t ADD COLUMN c int;\n");

    // Held for the rest of the test (30 s at most): released when `holder` drops.
    let holder = Session::connect(&f.dsns[0]);
    holder.exec("BEGIN; LOCK TABLE t IN ACCESS SHARE MODE");
    let holder_pid = holder.value("SELECT pg_backend_pid()");

    let started = Instant::now();
    let run = finish(
        spawn(
            &f,
            &["upgrade", "--lock-timeout", "200ms", "--lock-retries", "3"],
        ),
        30,
    );
    let took = started.elapsed();
    run.expect(1)
        .says("patch `1-0-0` failed on node `node0`")
        .says("AccessExclusiveLock on `t`")
        .says(&format!("blocked by pid {holder_pid}"))
        .says("within the lock timeout of")
        .says("after 4 tries")
        .says("55P03");
    assert!(
        took < Duration::from_secs(8),
        "4 tries of 200 ms took {took:?}"
    );
    assert_eq!(
        holder.value(
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() \
             AND relation = 't'::regclass AND granted"
        ),
        "1",
        "the holder let go of its lock early (test premise)"
    );
    assert!(!has_column(&f, 0, "t", "c"), "the ALTER went through");
    assert!(f.ledger(0).is_empty(), "recorded: {:?}", f.ledger(0));
    for n in 1..3 {
        assert!(f.ledger(n).is_empty(), "node{n}: {:?}", f.ledger(n));
    }
    holder.exec("COMMIT");
}

// --- 2. Ctrl-C and SIGTERM -----------------------------------------------------------------

/// Sends `signal` to a running pgconvoy once its patch sleeps on `nodes`, and checks
/// that it exits non-zero within a few seconds leaving nothing running or recorded.
fn signal_mid_patch(f: &Fixture, signal: i32, nodes: &[usize], says: &str) -> Run {
    let child = spawn(f, &["upgrade"]);
    let sleeping = wait_for(15, || nodes.iter().all(|&n| pgconvoy_sleeping(f, n)));
    assert!(sleeping, "the patch never ran on nodes {nodes:?} at once");
    let sent = Instant::now();
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(r, 0, "kill({signal})");
    let run = finish(child, 15);
    let took = sent.elapsed();
    assert_ne!(run.code(), 0, "exit 0 after a signal:\n{}", run.all());
    run.expect(130).says(says).says("still pending: 1-0-0");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} to exit after the signal"
    );
    for n in 0..f.dsns.len() {
        assert!(
            wait_for(3, || pgconvoy_backends(f, n).is_empty()),
            "pgconvoy backends remain on node{n}: {:?}",
            pgconvoy_backends(f, n)
        );
    }
    run
}

#[test]
fn ctrl_c_during_a_long_direct_patch_cancels_everywhere_and_records_nothing() {
    let f = Fixture::new(3);
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE ctrlc_t (id int);\nSELECT pg_sleep(30);\n",
    );
    let run = signal_mid_patch(&f, libc::SIGINT, &[0, 1, 2], "interrupted");
    run.says("cancel");
    for n in 0..3 {
        assert!(
            !f.ledger(n).iter().any(|r| r.ends_with(":done")),
            "node{n} records the interrupted patch: {:?}",
            f.ledger(n)
        );
        assert!(!f.has_relation(n, "ctrlc_t"), "ctrlc_t kept on node{n}");
        assert!(
            f.prepared_xacts(n).is_empty(),
            "node{n}: {:?}",
            f.prepared_xacts(n)
        );
    }

    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE ctrlc_t (id int);\n");
    f.run(&["upgrade"]).expect(0);
    for n in 0..3 {
        assert_eq!(f.ledger(n), strings(&["1-0-0:direct:done"]), "node{n}");
        assert!(f.has_relation(n, "ctrlc_t"), "ctrlc_t on node{n}");
    }
}

#[test]
fn sigterm_during_a_long_std_patch_cancels_and_records_nothing() {
    let f = Fixture::new(3);
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE term_t (id int);\nSELECT pg_sleep(30);\n",
    );
    signal_mid_patch(&f, libc::SIGTERM, &[0], "SIGTERM");
    assert!(f.ledger(0).is_empty(), "{:?}", f.ledger(0));
    assert!(!f.has_relation(0, "term_t"));
}

#[test]
fn sigint_during_a_long_concurrent_patch_exits_130_with_no_backend_left() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE conc_t (id int);\n");
    f.run(&["upgrade"]).expect(0);
    f.patch(
        "patch-1-1-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY conc_i ON conc_t (id);\nSELECT pg_sleep(60);\n",
    );
    let child = spawn(&f, &["upgrade"]);
    let sleeping = wait_for(15, || (0..3).all(|n| pgconvoy_sleeping(&f, n)));
    assert!(sleeping, "the patch never ran on every node at once");
    let sent = Instant::now();
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let run = finish(child, 15);
    let took = sent.elapsed();
    run.expect(130)
        .says("interrupted")
        .says("still pending: 1-1-0");
    assert!(took < Duration::from_secs(5), "took {took:?} to exit");
    eprintln!("SIGINT during a concurrent patch: exited 130 in {took:?}");
    for n in 0..3 {
        assert!(
            wait_for(3, || pgconvoy_backends(&f, n).is_empty()),
            "pgconvoy backends remain on node{n}: {:?}",
            pgconvoy_backends(&f, n)
        );
        assert!(
            !f.ledger(n).contains(&"1-1-0:concurrent:done".to_string()),
            "node{n}: {:?}",
            f.ledger(n)
        );
    }
    assert!(!f.local_ledger().iter().any(|r| r.ends_with(":done")));
}

/// The cluster lock's key for the default ledger, as pgconvoy computes it.
fn cluster_lock_key() -> i64 {
    use pgconvoy::config::LedgerTable;
    use pgconvoy::db::ledger::Ledger;
    Ledger::new(LedgerTable {
        schema: "pgconvoy".into(),
        table: "revision".into(),
    })
    .advisory_key()
}

#[test]
fn sigterm_and_sigint_end_upgrade_wait_with_130_writing_nothing() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE waited (id int);\n");
    let holder = Session::connect(&f.dsns[0]);
    holder.exec(&format!("SELECT pg_advisory_lock({})", cluster_lock_key()));
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let child = spawn(&f, &["upgrade", "--wait"]);
        // Waiting: its lock session is connected, and it keeps polling.
        assert!(
            wait_for(10, || !pgconvoy_backends(&f, 0).is_empty()),
            "pgconvoy never connected"
        );
        std::thread::sleep(Duration::from_millis(1200));
        let sent = Instant::now();
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
        let run = finish(child, 15);
        let took = sent.elapsed();
        run.expect(130)
            .says("waiting for another coordinator")
            .says("nothing was applied");
        assert!(
            took < Duration::from_secs(5),
            "signal {signal}: took {took:?}"
        );
        eprintln!("signal {signal}: --wait exited 130 in {took:?}");
    }
    for n in 0..3 {
        assert!(!has_pgconvoy_schema(&f, n), "node{n} got a ledger");
        assert!(!f.has_relation(n, "waited"));
        assert!(wait_for(3, || pgconvoy_backends(&f, n).is_empty()));
    }
}

#[test]
fn sigterm_during_lock_timeout_retries_exits_130_promptly() {
    let f = Fixture::new(3);
    f.psql(0, "CREATE TABLE t (id int)");
    f.patch("patch-1-0-0-std.sql", "ALTER TABLE t ADD COLUMN c int;\n");
    let holder = Session::connect(&f.dsns[0]);
    holder.exec("BEGIN; LOCK TABLE t IN ACCESS SHARE MODE");
    let child = spawn(
        &f,
        &[
            "upgrade",
            "--lock-timeout",
            "200ms",
            "--lock-retries",
            "1000",
        ],
    );
    // Several tries in: it is between lock waits and backoffs.
    std::thread::sleep(Duration::from_secs(3));
    let sent = Instant::now();
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let run = finish(child, 15);
    let took = sent.elapsed();
    run.expect(130).says("SIGTERM").says("still pending: 1-0-0");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    eprintln!("SIGTERM during lock retries: exited 130 in {took:?}");
    assert!(!has_column(&f, 0, "t", "c"));
    assert!(f.ledger(0).is_empty(), "{:?}", f.ledger(0));
    for n in 0..3 {
        assert!(wait_for(3, || pgconvoy_backends(&f, n).is_empty()));
    }
    holder.exec("COMMIT");
}

// --- 3. resume of a failed concurrent index build ---------------------------------------

#[test]
fn failed_unique_index_build_is_repaired_and_rebuilt_only_where_it_failed() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE t (a int);\n");
    f.run(&["upgrade"]).expect(0);
    for n in 0..3 {
        f.psql(n, "INSERT INTO t SELECT generate_series(1, 100)");
    }
    f.psql(2, "INSERT INTO t VALUES (7), (42)");
    f.patch(
        "patch-1-1-0-concurrent.sql",
        "CREATE UNIQUE INDEX CONCURRENTLY u ON t (a);\n",
    );

    let run = f.run(&["upgrade"]);
    run.expect(1).says("failed on node `node2`").says("23505");
    assert!(
        index_invalid(&f, 2, "u"),
        "the failed build left no invalid index on node2 (test premise)"
    );
    for n in 0..2 {
        assert!(index_valid(&f, n, "u"), "u on node{n}");
    }
    assert_eq!(f.ledger(0), strings(&["1-0-0:direct:done"]));
    assert_eq!(f.local_ledger(), strings(&["1-1-0:concurrent:done"]));
    assert_eq!(
        f.ledger(1),
        strings(&["1-0-0:direct:done", "1-1-0:concurrent:done"])
    );
    assert_eq!(
        f.ledger(2),
        strings(&["1-0-0:direct:done", "1-1-0:concurrent:open"])
    );
    let master_started = start_time(&f, 0, "revision_local", (1, 1, 0));
    let node1_started = start_time(&f, 1, "revision", (1, 1, 0));

    f.psql(
        2,
        "DELETE FROM t WHERE ctid IN (SELECT max(ctid) FROM t GROUP BY a HAVING count(*) > 1)",
    );
    let run = f.run(&["upgrade"]);
    run.expect(0)
        .says("dropping invalid index `u`")
        .says("node2");
    for n in 0..3 {
        assert!(index_valid(&f, n, "u"), "u valid on node{n}");
        assert_eq!(
            f.psql(n, "SELECT count(*) FROM pg_class WHERE relname = 'u'"),
            "1",
            "exactly one index u on node{n}"
        );
    }
    assert_eq!(
        f.ledger(0),
        strings(&["1-0-0:direct:done", "1-1-0:concurrent:done"])
    );
    for n in 1..3 {
        assert_eq!(
            f.ledger(n),
            strings(&["1-0-0:direct:done", "1-1-0:concurrent:done"]),
            "node{n}"
        );
    }
    assert_eq!(
        start_time(&f, 0, "revision_local", (1, 1, 0)),
        master_started,
        "the master's part was run again"
    );
    assert_eq!(
        start_time(&f, 1, "revision", (1, 1, 0)),
        node1_started,
        "node1's part was run again"
    );
    f.run(&["upgrade"]).expect(0).says("nothing to do");
}

#[test]
fn valid_index_left_by_a_failed_concurrent_patch_is_treated_as_done() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE t (a int);\n");
    f.run(&["upgrade"]).expect(0);
    // The patch's second statement fails on node1 only, after its first built `u` there.
    for n in [0, 2] {
        f.psql(n, "CREATE TABLE t2 (b int)");
    }
    f.patch(
        "patch-1-1-0-concurrent.sql",
        "CREATE UNIQUE INDEX CONCURRENTLY u ON t (a);\nCREATE INDEX CONCURRENTLY w ON t2 (b);\n",
    );
    f.run(&["upgrade"])
        .expect(1)
        .says("failed on node `node1`")
        .says("42P01");
    assert!(index_valid(&f, 1, "u"), "u built on node1 (test premise)");
    assert_eq!(
        f.ledger(1),
        strings(&["1-0-0:direct:done", "1-1-0:concurrent:open"])
    );
    let oid_before = f.psql(1, "SELECT to_regclass('u')::oid");

    f.psql(1, "CREATE TABLE t2 (b int)");
    f.run(&["upgrade"])
        .expect(0)
        .says("index `u` already exists and is valid")
        .never_says("dropping invalid index");
    assert_eq!(
        f.psql(1, "SELECT to_regclass('u')::oid"),
        oid_before,
        "u was rebuilt on node1"
    );
    for n in 0..3 {
        assert!(index_valid(&f, n, "u"), "u on node{n}");
        assert!(index_valid(&f, n, "w"), "w on node{n}");
    }
    for n in 1..3 {
        assert_eq!(
            f.ledger(n),
            strings(&["1-0-0:direct:done", "1-1-0:concurrent:done"]),
            "node{n}"
        );
    }
}

// --- 4. atomic direct patches -----------------------------------------------------------

/// `upgrade --atomic` of a direct patch `M-1-0` that fails on `failing` (a table of
/// the same name already exists there) after the other nodes could prepare.
/// Each test uses its own MAJOR: gids are unique per server, not per database, and
/// the tests of this binary share their servers.
fn atomic_failure_leaves_nothing_anywhere(major: u32, failing: usize) {
    let f = Fixture::new(3);
    f.patch(
        &format!("patch-{major}-0-0-direct.sql"),
        "CREATE TABLE base (id int);\n",
    );
    f.run(&["upgrade"]).expect(0);
    let base = format!("{major}-0-0:direct:done");
    let atomic = format!("{major}-1-0:direct:done");
    f.psql(failing, "CREATE TABLE clash (id int)");
    // On the failing node the body sleeps first, so the others have prepared by
    // the time it fails.
    f.patch(
        &format!("patch-{major}-1-0-direct.sql"),
        "CREATE TABLE atomic_t (id int);\n\
         SELECT pg_sleep(1) FROM pg_class WHERE relname = 'clash';\n\
         CREATE TABLE clash (id int);\n",
    );
    let run = f.run(&["upgrade", "--atomic"]);
    run.expect(1)
        .says(&format!(
            "patch `{major}-1-0` failed on node `node{failing}`"
        ))
        .says("42P07");
    for n in 0..3 {
        assert!(!f.has_relation(n, "atomic_t"), "node{n} kept atomic_t");
        assert_eq!(
            f.ledger(n),
            vec![base.clone()],
            "node{n} recorded part of the failed atomic patch"
        );
        assert_eq!(
            f.prepared_xacts(n),
            Vec::<String>::new(),
            "node{n} keeps a prepared transaction"
        );
    }
    assert!(f.has_relation(failing, "clash"));
    for n in (0..3).filter(|&n| n != failing) {
        assert!(!f.has_relation(n, "clash"), "node{n} kept clash");
    }

    f.psql(failing, "DROP TABLE clash");
    f.run(&["upgrade", "--atomic"]).expect(0);
    for n in 0..3 {
        assert!(f.has_relation(n, "atomic_t"), "atomic_t on node{n}");
        assert!(f.has_relation(n, "clash"), "clash on node{n}");
        assert_eq!(f.ledger(n), vec![base.clone(), atomic.clone()], "node{n}");
        assert!(f.prepared_xacts(n).is_empty(), "node{n}");
    }
    f.run(&["upgrade", "--atomic"])
        .expect(0)
        .says("nothing to do");
}

#[test]
fn atomic_direct_patch_failing_on_a_replica_is_kept_nowhere_then_applies_everywhere() {
    atomic_failure_leaves_nothing_anywhere(2, 2);
}

#[test]
fn atomic_direct_patch_failing_on_the_master_is_kept_nowhere_then_applies_everywhere() {
    atomic_failure_leaves_nothing_anywhere(3, 0);
}

#[test]
fn atomic_direct_by_config_key_on_a_fresh_cluster() {
    let f = Fixture::new(3);
    f.write_config("atomic_direct: true\n");
    f.psql(1, "CREATE TABLE clash (id int)");
    f.patch(
        "patch-4-0-0-direct.sql",
        "CREATE TABLE atomic_t (id int);\nCREATE TABLE clash (id int);\n",
    );
    f.run(&["upgrade"]).expect(1).says("node1");
    for n in 0..3 {
        assert!(!f.has_relation(n, "atomic_t"), "node{n} kept atomic_t");
        assert!(f.ledger(n).is_empty(), "node{n}: {:?}", f.ledger(n));
        assert!(f.prepared_xacts(n).is_empty(), "node{n}");
    }
    f.psql(1, "DROP TABLE clash");
    f.run(&["upgrade"]).expect(0);
    for n in 0..3 {
        assert_eq!(f.ledger(n), strings(&["4-0-0:direct:done"]), "node{n}");
        assert!(f.has_relation(n, "atomic_t"));
    }
}

/// Two clusters (two configs, two databases) on the same servers, with the same
/// node names: a prepared transaction one cluster's coordinator left (or holds
/// between PREPARE and COMMIT) must not make the other's atomic patch of the same
/// version fail. PostgreSQL's gids are unique per server, not per database.
#[test]
fn atomic_gids_of_two_clusters_sharing_servers_do_not_collide() {
    let a = Fixture::new(3);
    let gid = "pgconvoy:pgconvoy.revision:7-0-0:node1";
    a.psql(
        1,
        &format!("BEGIN; CREATE TABLE a_part (id int); PREPARE TRANSACTION '{gid}';"),
    );
    struct RollBack<'f>(&'f Fixture, &'static str);
    impl Drop for RollBack<'_> {
        fn drop(&mut self) {
            let _ = self
                .0
                .try_psql(1, &format!("ROLLBACK PREPARED '{}'", self.1));
        }
    }
    let _cleanup = RollBack(&a, gid);

    let b = Fixture::new(3);
    b.patch("patch-7-0-0-direct.sql", "CREATE TABLE b_t (id int);\n");
    b.run(&["upgrade", "--atomic"]).expect(0);
    for n in 0..3 {
        assert_eq!(b.ledger(n), strings(&["7-0-0:direct:done"]), "node{n}");
        assert!(b.has_relation(n, "b_t"), "b_t on node{n}");
    }
    assert_eq!(
        a.prepared_xacts(1),
        strings(&[gid]),
        "cluster a's is untouched"
    );
}

#[test]
fn atomic_is_refused_when_a_node_has_no_prepared_transactions() {
    let s = common::servers();
    let mut dedicated = LocalServer::start(
        &PgBinaries::locate().expect("locate"),
        &ServerOptions::default().setting("max_prepared_transactions", "0"),
    )
    .expect("start a server without two-phase commit");
    let db = common::unique_db("no2pc");
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
    assert_eq!(f.psql(2, "SHOW max_prepared_transactions"), "0");
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE d (id int);\n");

    f.run(&["upgrade", "--atomic"])
        .expect(2)
        .says("max_prepared_transactions")
        .says("node2")
        .never_says("node1`");
    f.write_config("atomic_direct: true\n");
    f.run(&["upgrade"])
        .expect(2)
        .says("max_prepared_transactions")
        .says("node2");
    for n in 0..3 {
        assert!(!has_pgconvoy_schema(&f, n), "node{n} has a pgconvoy schema");
        assert!(!f.has_relation(n, "d"), "node{n} has d");
    }

    // Without --atomic the same cluster upgrades.
    f.write_config("");
    f.run(&["upgrade"]).expect(0);
    for n in 0..3 {
        assert_eq!(f.ledger(n), strings(&["1-0-0:direct:done"]), "node{n}");
    }
    let _ = dedicated.stop();
}

// --- 5. leftover prepared transactions and `pgconvoy recover` -------------------------

const GID_999_NODE1: &str = "pgconvoy:pgconvoy.revision:9-9-9:node1";

#[test]
fn leftover_prepared_transaction_committed_nowhere_blocks_upgrade_and_recover_rolls_it_back() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE base (id int);\n");
    f.run(&["upgrade"]).expect(0);
    f.psql(
        1,
        &format!(
            "BEGIN; INSERT INTO pgconvoy.revision VALUES (9,9,9,'direct','x',now(),now(),'t'); \
             PREPARE TRANSACTION '{GID_999_NODE1}';"
        ),
    );
    assert_eq!(f.prepared_xacts(1), strings(&[GID_999_NODE1]));

    assert_eq!(
        status_prepared(&f),
        vec![vec![], vec![GID_999_NODE1.to_string()], vec![]]
    );

    f.patch("patch-1-1-0-direct.sql", "CREATE TABLE after_t (id int);\n");
    f.run(&["upgrade"])
        .expect(1)
        .says("pgconvoy recover")
        .says("node1")
        .says(GID_999_NODE1);
    for n in 0..3 {
        assert!(!f.has_relation(n, "after_t"), "node{n} got after_t");
        assert_eq!(f.ledger(n), strings(&["1-0-0:direct:done"]), "node{n}");
    }

    f.run(&["recover"])
        .expect(0)
        .says("ROLLBACK PREPARED")
        .says(GID_999_NODE1)
        .never_says("COMMIT PREPARED");
    for n in 0..3 {
        assert!(f.prepared_xacts(n).is_empty(), "node{n}");
    }
    assert_eq!(f.ledger(1), strings(&["1-0-0:direct:done"]));
    assert_eq!(status_prepared(&f), vec![Vec::<String>::new(); 3]);
    f.run(&["recover"]).expect(0).says("nothing to recover");

    f.run(&["upgrade"]).expect(0);
    for n in 0..3 {
        assert!(f.has_relation(n, "after_t"), "after_t on node{n}");
        assert_eq!(
            f.ledger(n),
            strings(&["1-0-0:direct:done", "1-1-0:direct:done"]),
            "node{n}"
        );
    }
}

/// A coordinator that died while committing an atomic `M-1-0`: it committed on
/// `committed` and left it prepared on `prepared`. `recover` commits the rest.
/// Each test uses its own MAJOR (gids are unique per server).
fn leftover_committed_somewhere_is_committed(major: u32, committed: &[usize], prepared: &[usize]) {
    let f = Fixture::new(3);
    f.patch(
        &format!("patch-{major}-0-0-direct.sql"),
        "CREATE TABLE base (id int);\n",
    );
    f.run(&["upgrade"]).expect(0);
    let body = "CREATE TABLE t_m10 (id int);\n";
    let file = f
        .scratch
        .patch(&format!("patch-{major}-1-0-direct.sql"), body);
    let sum = pgconvoy::patches::patch::checksum(&std::fs::read(file).unwrap());
    let part = format!(
        "CREATE TABLE t_m10 (id int); \
         INSERT INTO pgconvoy.revision VALUES ({major},1,0,'direct','{sum}',now(),now(),'test');"
    );
    for &n in committed {
        f.psql(n, &format!("BEGIN; {part} COMMIT;"));
    }
    let gid = |n: usize| format!("pgconvoy:pgconvoy.revision:{major}-1-0:node{n}");
    for &n in prepared {
        f.psql(
            n,
            &format!("BEGIN; {part} PREPARE TRANSACTION '{}';", gid(n)),
        );
    }
    let listed = status_prepared(&f);
    for (n, listed) in listed.iter().enumerate() {
        let want: Vec<String> = if prepared.contains(&n) {
            vec![gid(n)]
        } else {
            vec![]
        };
        assert_eq!(
            *listed, want,
            "status lists node{n}'s prepared transactions"
        );
    }

    let run = f.run(&["recover"]);
    run.expect(0)
        .says("COMMIT PREPARED")
        .never_says("ROLLBACK PREPARED");
    for &n in prepared {
        run.says(&gid(n));
    }
    let want = vec![
        format!("{major}-0-0:direct:done"),
        format!("{major}-1-0:direct:done"),
    ];
    for n in 0..3 {
        assert!(f.prepared_xacts(n).is_empty(), "node{n}");
        assert!(f.has_relation(n, "t_m10"), "t_m10 on node{n}");
        assert_eq!(f.ledger(n), want, "node{n}");
    }
    let v = status_json(&f);
    for node in v["nodes"].as_array().unwrap() {
        assert_eq!(node["pending"], serde_json::json!([]), "{node}");
        assert_eq!(node["prepared"], serde_json::json!([]), "{node}");
        assert_eq!(node["drift"], serde_json::json!([]), "{node}");
    }
    f.run(&["upgrade"]).expect(0).says("nothing to do");
}

#[test]
fn leftover_prepared_transaction_of_a_patch_done_on_the_master_is_committed_by_recover() {
    leftover_committed_somewhere_is_committed(5, &[0, 2], &[1]);
}

#[test]
fn leftover_prepared_transactions_of_a_patch_committed_on_one_replica_are_committed_by_recover() {
    // The coordinator commits replicas first and the master's claim last: it died
    // after committing node1.
    leftover_committed_somewhere_is_committed(6, &[1], &[0, 2]);
}

/// A `CREATE INDEX CONCURRENTLY` that hits the lock timeout while it waits for a
/// writer's transaction (after it created its catalog entry) is retried, and
/// the retry ends with a valid index once the writer is gone.
fn concurrent_index_retried_after_lock_timeout(statement: &str) {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE t (a int);\n");
    f.run(&["upgrade"]).expect(0);
    f.patch("patch-1-1-0-concurrent.sql", statement);

    let writer = Session::connect(&f.dsns[1]);
    writer.exec("BEGIN; INSERT INTO t VALUES (1)");
    let child = spawn(
        &f,
        &["upgrade", "--lock-timeout", "300ms", "--lock-retries", "40"],
    );
    std::thread::sleep(Duration::from_secs(2));
    writer.exec("COMMIT");
    let run = finish(child, 60);
    run.expect(0);
    for n in 0..3 {
        assert!(
            index_valid(&f, n, "ix"),
            "ix is not a valid index on node{n} after a successful run:\n{}",
            run.all()
        );
        assert_eq!(
            f.ledger(n).last().map(String::as_str),
            Some("1-1-0:concurrent:done"),
            "node{n}"
        );
    }
}

#[test]
fn concurrent_index_build_retried_after_a_lock_timeout_ends_valid() {
    concurrent_index_retried_after_lock_timeout("CREATE INDEX CONCURRENTLY ix ON t (a);\n");
}

#[test]
fn concurrent_index_build_if_not_exists_retried_after_a_lock_timeout_ends_valid() {
    concurrent_index_retried_after_lock_timeout(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix ON t (a);\n",
    );
}

/// A second coordinator waiting with `--wait` must not stall the running one's
/// `CREATE INDEX CONCURRENTLY` on the master (which waits for every transaction
/// with an older snapshot in that database), let alone make it record an index
/// that is not valid.
#[test]
fn a_waiting_coordinator_does_not_stall_a_concurrent_index_build_on_the_master() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE t (a int);\n");
    f.patch("patch-1-1-0-std.sql", "SELECT pg_sleep(1);\n");
    f.patch(
        "patch-1-2-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix ON t (a);\n",
    );
    let first = spawn(
        &f,
        &[
            "upgrade",
            "--all",
            "--lock-timeout",
            "500ms",
            "--lock-retries",
            "3",
        ],
    );
    assert!(
        wait_for(15, || pgconvoy_sleeping(&f, 0)),
        "the first coordinator never ran 1-1-0"
    );
    let second = spawn(&f, &["upgrade", "--all", "--wait"]);
    let (first, second) = (finish(first, 60), finish(second, 60));
    let both = format!("--- first\n{}\n--- second\n{}", first.all(), second.all());
    assert_eq!(first.code(), 0, "{both}");
    assert_eq!(second.code(), 0, "{both}");
    for n in 0..3 {
        assert!(index_valid(&f, n, "ix"), "ix invalid on node{n}\n{both}");
    }
    assert_eq!(
        f.ledger(0),
        strings(&[
            "1-0-0:direct:done",
            "1-1-0:std:done",
            "1-2-0:concurrent:done"
        ])
    );
}
