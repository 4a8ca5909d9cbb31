//! Several `std` patches' transactions in one stream on the master (a batch), black-box,
//! against real PostgreSQL servers: a failure in the middle of a batch keeps what
//! committed before it, names the failing patch, and runs nothing after it; a SIGINT
//! stops the batch at once; a coordinator killed mid-batch leaves no stamp without its
//! effect and no effect without its stamp.

mod common;
use common::{finish, spawn, wait_for, Fixture};

/// A sequence (`nextval` is not transactional: a patch that ran at all, even rolled
/// back, leaves it moved) and an effects table, applied on their own.
fn fixture() -> Fixture {
    let f = Fixture::new(1);
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE SEQUENCE runs;\nCREATE TABLE effects (version text PRIMARY KEY);\n",
    );
    f.run(&["upgrade"]).expect(0);
    f
}

/// A small `std` patch `1-minor-0`: it records its effect and moves the sequence.
fn patch(f: &Fixture, minor: u32, extra: &str) {
    let v = format!("1-{minor}-0");
    f.patch(
        &format!("patch-{v}-std.sql"),
        &format!("INSERT INTO effects VALUES ('{v}');\n{extra}SELECT nextval('runs');\n"),
    );
}

fn done(f: &Fixture) -> Vec<String> {
    f.ledger(0)
}

#[test]
fn a_failure_in_the_middle_of_a_batch_keeps_what_committed_and_runs_nothing_after_it() {
    let f = fixture();
    for minor in 1..=5 {
        let extra = if minor == 3 {
            "INSERT INTO no_such_table VALUES (1);\n"
        } else {
            ""
        };
        patch(&f, minor, extra);
    }
    f.run(&["upgrade", "--all"])
        .expect(1)
        .says("1-3-0")
        .says("no_such_table")
        .says("patch-1-3-0-std.sql");
    assert_eq!(
        done(&f),
        ["1-0-0:std:done", "1-1-0:std:done", "1-2-0:std:done"],
        "1-1-0 and 1-2-0 applied and stamped, 1-3-0 not, nothing after it"
    );
    assert_eq!(
        f.psql(
            0,
            "SELECT string_agg(version, ',' ORDER BY version) FROM effects"
        ),
        "1-1-0,1-2-0"
    );
    // 1-1-0 and 1-2-0 moved the sequence; 1-3-0 failed before it and 1-4-0, 1-5-0 never ran.
    assert_eq!(f.psql(0, "SELECT last_value FROM runs"), "2");

    patch(&f, 3, "");
    f.run(&["upgrade", "--all"]).expect(0);
    assert_eq!(
        done(&f),
        [
            "1-0-0:std:done",
            "1-1-0:std:done",
            "1-2-0:std:done",
            "1-3-0:std:done",
            "1-4-0:std:done",
            "1-5-0:std:done"
        ]
    );
    assert_eq!(f.psql(0, "SELECT count(*) FROM effects"), "5");
    assert_eq!(
        f.psql(0, "SELECT last_value FROM runs"),
        "5",
        "each ran once"
    );
}

#[test]
fn a_failing_first_patch_of_a_batch_runs_nothing_after_it_and_json_names_it() {
    let f = fixture();
    patch(&f, 1, "SELECT 1/0;\n");
    for minor in 2..=4 {
        patch(&f, minor, "");
    }
    let run = f.run(&["upgrade", "--all", "--format", "json"]);
    run.expect(1);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout()).expect("json");
    assert_eq!(doc["error"]["patch"], "1-1-0", "{doc}");
    assert_eq!(doc["error"]["sqlstate"], "22012", "{doc}");
    assert_eq!(done(&f), ["1-0-0:std:done"]);
    assert_eq!(f.psql(0, "SELECT is_called FROM runs"), "f");
}

/// Rows of the ledger and of the effects that do not match: a stamp without its effect
/// or an effect without its stamp.
fn mismatches(f: &Fixture) -> String {
    f.psql(
        0,
        "SELECT count(*) FROM effects e FULL JOIN \
           (SELECT major || '-' || minor || '-' || patch AS version FROM pgconvoy.revision \
             WHERE minor > 0 AND end_time IS NOT NULL) r USING (version) \
          WHERE e.version IS NULL OR r.version IS NULL",
    )
}

#[test]
fn a_coordinator_killed_mid_batch_leaves_no_stamp_without_its_effect() {
    let f = fixture();
    for minor in 1..=8 {
        patch(&f, minor, "SELECT pg_sleep(0.3);\n");
    }
    let mut child = spawn(&f, &["upgrade", "--all"]);
    assert!(
        wait_for(30, || f
            .psql(0, "SELECT count(*) FROM effects")
            .parse::<u32>()
            .unwrap_or(0)
            >= 2),
        "two patches never committed"
    );
    child.kill().expect("kill -9 the coordinator");
    let _ = child.wait();
    // The server notices the lost client; what it was running rolls back.
    assert!(wait_for(30, || common::pgconvoy_backends(&f, 0).is_empty()));
    assert_eq!(mismatches(&f), "0");
    let open = f.psql(
        0,
        "SELECT count(*) FROM pgconvoy.revision WHERE end_time IS NULL",
    );
    assert_eq!(open, "0", "no claim left behind");
    let applied: u32 = f.psql(0, "SELECT count(*) FROM effects").parse().unwrap();
    assert!(applied < 8, "the kill came after the whole run");

    f.run(&["upgrade", "--all"]).expect(0);
    assert_eq!(mismatches(&f), "0");
    assert_eq!(f.psql(0, "SELECT count(*) FROM effects"), "8");
}

#[test]
fn sigint_mid_batch_stops_without_running_the_rest() {
    let f = fixture();
    for minor in 1..=8 {
        patch(&f, minor, "SELECT pg_sleep(0.5);\n");
    }
    let child = spawn(&f, &["upgrade", "--all"]);
    assert!(
        wait_for(30, || f
            .psql(0, "SELECT count(*) FROM effects")
            .parse::<u32>()
            .unwrap_or(0)
            >= 1),
        "no patch ever committed"
    );
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let run = finish(child, 30);
    run.expect(130);
    assert_eq!(mismatches(&f), "0");
    let applied: u32 = f.psql(0, "SELECT count(*) FROM effects").parse().unwrap();
    assert!(applied < 8, "the run went on after SIGINT: {}", run.all());
    // Every patch that did not commit never ran or rolled back: the sequence moved once
    // per committed patch, plus at most the one the signal cancelled.
    let moved: u32 = f.psql(0, "SELECT last_value FROM runs").parse().unwrap();
    assert!(moved <= applied + 1, "{moved} runs for {applied} patches");
    assert!(common::pgconvoy_backends(&f, 0).is_empty());
    f.run(&["upgrade", "--all"]).expect(0);
    assert_eq!(f.psql(0, "SELECT count(*) FROM effects"), "8");
}

/// Terminates the session holding the cluster lock and waits until its backend is gone.
fn terminate_lock_session(f: &Fixture) -> String {
    f.psql(
        0,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 20000)) FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' AND objsubid = 1 \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
}

#[test]
fn direct_patches_whose_lock_session_ends_stop_at_the_claim_taken_ahead() {
    let f = Fixture::new(3);
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE trace (version text PRIMARY KEY);\n",
    );
    f.run(&["upgrade"]).expect(0);
    for minor in 1..=5 {
        let v = format!("1-{minor}-0");
        f.patch(
            &format!("patch-{v}-direct.sql"),
            &format!("INSERT INTO trace VALUES ('{v}');\nSELECT pg_sleep(0.4);\n"),
        );
    }
    let a = spawn(&f, &["upgrade", "--all"]);
    assert!(wait_for(30, || f
        .ledger(0)
        .contains(&"1-1-0:direct:done".to_string())));
    assert_eq!(terminate_lock_session(&f), "1", "one lock session to end");
    let a = finish(a, 60);
    a.expect(1)
        .says("cluster lock")
        .says("stopped before patch");
    // What the run finished is finished everywhere; nothing after it started.
    let done = f.ledger(0);
    assert!(done.len() < 6, "the run went on: {done:?}");
    assert!(done.iter().all(|l| l.ends_with(":done")), "{done:?}");
    for n in 0..3 {
        assert_eq!(
            f.psql(n, "SELECT count(*) FROM trace")
                .parse::<usize>()
                .unwrap(),
            done.len() - 1,
            "node{n}: effects and the master's ledger disagree"
        );
    }
    f.run(&["upgrade", "--all"]).expect(0);
    for n in 0..3 {
        assert_eq!(f.psql(n, "SELECT count(*) FROM trace"), "5", "node{n}");
        assert_eq!(f.ledger(n).len(), 6, "node{n}");
    }
}
