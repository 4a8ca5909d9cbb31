//! The ledger never lies (issue 12), against real servers: transaction control refused
//! before anything is written, the transaction guard for what slips past anyway,
//! `COPY ... FROM stdin` data blocks, catch-up of a node added later, privilege problems
//! named in `status`.

mod common;
use common::{has_pgconvoy_schema, start_time, strings, Fixture};

use std::sync::Arc;

use pgconvoy::config::{Config, Overrides};
use pgconvoy::patches::discover::discover;
use pgconvoy::patches::patch::StatementSpan;
use pgconvoy::patches::sql;
use pgconvoy::upgrade::plan::Selection;
use pgconvoy::upgrade::{upgrade, UpgradeOptions};

const TRANSACTION_CONTROL: [&str; 12] = [
    "BEGIN;",
    "START TRANSACTION;",
    "COMMIT;",
    "END;",
    "ROLLBACK;",
    "ABORT;",
    "SAVEPOINT a;",
    "RELEASE SAVEPOINT a;",
    "ROLLBACK TO SAVEPOINT a;",
    "PREPARE TRANSACTION 'x';",
    "COMMIT PREPARED 'x';",
    "ROLLBACK PREPARED 'x';",
];

#[test]
fn transaction_control_is_refused_by_upgrade_and_nothing_is_written() {
    let f = Fixture::new(3);
    for kind in ["std", "direct"] {
        for command in TRANSACTION_CONTROL {
            let name = format!("patch-1-0-0-{kind}.sql");
            f.patch(
                &name,
                &format!(
                    "CREATE TABLE escaped (id int);\n{command}\nCREATE TABLE later (id int);\n"
                ),
            );
            for args in [
                &["check"][..],
                &["upgrade", "--all"],
                &["upgrade", "--dry-run"],
            ] {
                f.run(args)
                    .expect(2)
                    .says(&format!("{name}: line 2: `"))
                    .says("transaction control");
            }
            f.scratch.remove_patch(&name);
        }
    }
    for n in 0..3 {
        assert!(!has_pgconvoy_schema(&f, n), "node{n} got a ledger");
        assert!(!f.has_relation(n, "escaped"), "node{n} ran the patch");
    }
}

#[test]
fn the_two_reproductions_leave_no_lie_and_no_stuck_claim() {
    let f = Fixture::new(3);
    // A COMMIT then a failure, in a std patch.
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE t1(id int); COMMIT; SELECT 1/0;\n",
    );
    f.run(&["upgrade"])
        .expect(2)
        .says("patch-1-0-0-std.sql: line 1: `COMMIT`");
    // A direct patch wrapped in BEGIN; … COMMIT;.
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE t1(id int);\n");
    f.patch(
        "patch-1-1-0-direct.sql",
        "BEGIN;\nCREATE TABLE t2(id int);\nCOMMIT;\n",
    );
    f.run(&["upgrade", "--all"])
        .expect(2)
        .says("patch-1-1-0-direct.sql: line 1: `BEGIN`")
        .says("patch-1-1-0-direct.sql: line 3: `COMMIT`");
    for n in 0..3 {
        assert!(!has_pgconvoy_schema(&f, n), "node{n} got a ledger");
        assert!(!f.has_relation(n, "t1") && !f.has_relation(n, "t2"));
    }
    // Fixed, the same run goes through: nothing was left claimed.
    f.patch("patch-1-1-0-direct.sql", "CREATE TABLE t2(id int);\n");
    f.run(&["upgrade", "--all"]).expect(0);
    assert_eq!(
        f.ledger(0),
        strings(&["1-0-0:std:done", "1-1-0:direct:done"])
    );
    for n in 1..3 {
        assert_eq!(f.ledger(n), strings(&["1-1-0:direct:done"]));
    }
}

#[test]
fn transaction_words_inside_bodies_strings_and_comments_still_apply() {
    let f = Fixture::new(3);
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$;\n\
         DO $$ BEGIN PERFORM 1; EXCEPTION WHEN others THEN RAISE; END $$;\n\
         SELECT 'BEGIN; COMMIT;' AS \"ROLLBACK\"; -- COMMIT;\n/* END; */\n",
    );
    f.patch(
        "patch-1-1-0-direct.sql",
        "CREATE FUNCTION two() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\n\
         CREATE FUNCTION rb() RETURNS text LANGUAGE plpgsql AS $fn$ BEGIN RETURN 'ROLLBACK'; END $fn$;\n",
    );
    f.run(&["upgrade", "--all"]).expect(0);
    for n in 0..3 {
        assert_eq!(f.psql(n, "SELECT two() || rb()"), "2ROLLBACK");
    }
    assert_eq!(
        f.psql(0, "SELECT count(*) FROM pg_proc WHERE proname = 'p'"),
        "1"
    );
}

/// Runs `upgrade --all` in this process on patches whose bodies were changed after
/// loading, as only a bug in the splitter could: `check` would refuse these files.
fn upgrade_smuggled(f: &Fixture, smuggle: &str, into: &str) -> pgconvoy::upgrade::RunReport {
    let config = Config::load(
        &f.scratch.path().join("cluster.yaml"),
        &Overrides::default(),
    )
    .expect("config");
    let mut set = discover(&config.patches, false).expect("patches");
    for p in &mut set.patches {
        let body = p.body.replace(into, smuggle);
        p.statements = sql::split(&body)
            .expect("splits")
            .iter()
            .map(|s| StatementSpan {
                offset: s.offset,
                len: s.text.len(),
                line: s.line,
            })
            .collect();
        p.body = Arc::new(body);
    }
    let opts = UpgradeOptions {
        selection: Selection {
            all: true,
            ..Selection::default()
        },
        wait: false,
        nodes: Vec::new(),
    };
    let reporter = pgconvoy::progress::for_stderr(pgconvoy::progress::ProgressMode::Plain, 3);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(upgrade(&config, &set, &opts, &*reporter))
}

#[test]
fn the_transaction_guard_fails_a_std_patch_that_ended_its_transaction() {
    let f = Fixture::new(3);
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE IF NOT EXISTS g1 (id int);\nSELECT 1;\nSELECT 2;\n",
    );
    let report = upgrade_smuggled(&f, "COMMIT;", "SELECT 1;");
    let error = report.error.clone().expect("the run failed");
    assert_eq!(report.failure.as_ref().map(|e| e.exit_code()), Some(1));
    assert!(error.contains("ended the"), "{error}");
    assert!(report.applied.is_empty());
    // No row claims the patch done or started: the run removed its own claim.
    assert!(f.ledger(0).is_empty(), "{:?}", f.ledger(0));
    // What ran before the COMMIT is committed, and the failure said so.
    assert!(f.has_relation(0, "g1"));
    f.run(&["upgrade"]).expect(0);
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done"]));
}

#[test]
fn the_transaction_guard_fails_a_direct_patch_on_every_node_that_lost_it() {
    let f = Fixture::new(3);
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE IF NOT EXISTS g2 (id int);\nSELECT 1;\n",
    );
    let report = upgrade_smuggled(&f, "COMMIT;", "SELECT 1;");
    assert_eq!(report.failure.as_ref().map(|e| e.exit_code()), Some(1));
    assert!(report.applied.is_empty());
    assert!(f.ledger(0).is_empty(), "master: {:?}", f.ledger(0));
    for n in 1..3 {
        // Started there and not finished: true, and a re-run applies it again.
        for row in f.ledger(n) {
            assert!(row.ends_with(":open"), "node{n}: {row}");
        }
    }
    f.run(&["upgrade"]).expect(0);
    for n in 0..3 {
        assert_eq!(f.ledger(n), strings(&["1-0-0:direct:done"]), "node{n}");
    }
}

#[test]
fn copy_from_stdin_blocks_apply_in_std_and_direct_patches() {
    let f = Fixture::new(3);
    // Larger than one 64 KiB slice of COPY data.
    let many: String = (0..20_000).map(|i| format!("{i}\tv{i}\n")).collect();
    f.patch(
        "patch-1-0-0-direct.sql",
        &format!(
            "CREATE TABLE d (id int, v text);\nCOPY d (id, v) FROM stdin;\n1\tone; 'a'\n2\t\\N\n\\.\nINSERT INTO d VALUES (3, 'after');\n\
             CREATE TABLE big (id int, v text);\nCOPY big FROM stdin;\n{many}\\.\n"
        ),
    );
    f.patch(
        "patch-1-1-0-std.sql",
        "CREATE TABLE s (id int);\nCOPY s FROM stdin;\n10\n20\n\\.\nCOPY s FROM stdin WITH (FORMAT csv);\n30\n\\.\nUPDATE s SET id = id + 1;\n",
    );
    f.run(&["upgrade", "--all"]).expect(0);
    for n in 0..3 {
        assert_eq!(
            f.psql(
                n,
                "SELECT string_agg(id || ':' || coalesce(v, 'NULL'), ',' ORDER BY id) FROM d"
            ),
            "1:one; 'a',2:NULL,3:after",
            "node{n}"
        );
        assert_eq!(
            f.psql(n, "SELECT count(*) || ' ' || sum(id) FROM big"),
            "20000 199990000",
            "node{n}"
        );
    }
    assert_eq!(
        f.psql(0, "SELECT string_agg(id::text, ',' ORDER BY id) FROM s"),
        "11,21,31"
    );
    for n in 1..3 {
        assert!(!f.has_relation(n, "s"), "std ran on node{n}");
    }
    assert_eq!(
        f.ledger(0),
        strings(&["1-0-0:direct:done", "1-1-0:std:done"])
    );
}

#[test]
fn a_bad_copy_row_fails_naming_its_line_in_the_data_block() {
    let f = Fixture::new(2);
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE d (id int);\nCOPY d FROM stdin;\n1\n2\nnot a number\n4\n\\.\n",
    );
    f.run(&["upgrade"])
        .expect(1)
        .says("patch-1-0-0-direct.sql line 5")
        .says("22P02");
    for n in 0..2 {
        assert!(!f.has_relation(n, "d"), "node{n} kept the table");
        assert!(
            f.ledger(n).iter().all(|r| !r.ends_with(":done")),
            "node{n}: {:?}",
            f.ledger(n)
        );
    }
    // Through the dry run's rehearsal too.
    let dry = f.run(&["upgrade", "--dry-run"]);
    dry.expect(1).says("line 5");
}

/// Adds an empty fourth node (a new database on the third server) to the fixture's config.
fn add_fourth_node(f: &mut Fixture) {
    let db = format!("{}_n3", f.db);
    f.server(2).create_database(&db).expect("create database");
    f.dsns.push(f.server(2).dsn(&db));
    f.write_config("");
}

/// Every row of a node's main ledger, timestamps included.
fn full_ledger(f: &Fixture, node: usize) -> String {
    f.psql(
        node,
        "SELECT major, minor, patch, patch_type, checksum, start_time, end_time, applied_by \
         FROM pgconvoy.revision ORDER BY 1, 2, 3",
    )
}

fn status_json(f: &Fixture) -> serde_json::Value {
    let run = f.run(&["status", "--format", "json"]);
    serde_json::from_str(&run.stdout()).unwrap_or_else(|e| panic!("{e}: {}", run.all()))
}

fn pending_of(status: &serde_json::Value, node: usize) -> Vec<String> {
    status["nodes"][node]["pending"]
        .as_array()
        .expect("pending")
        .iter()
        .map(|v| v.as_str().expect("a version").to_string())
        .collect()
}

#[test]
fn a_fourth_node_added_later_is_caught_up_by_one_run() {
    let mut f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE d1 (id int);\n");
    f.patch("patch-1-1-0-std.sql", "CREATE TABLE s1 (id int);\n");
    f.patch(
        "patch-1-2-0-direct.sql",
        "CREATE TABLE d2 (id int, v int);\nCOPY d2 FROM stdin;\n1\t10\n2\t20\n\\.\n",
    );
    f.patch(
        "patch-1-3-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY d2_v ON d2 (v);\n",
    );
    f.run(&["upgrade", "--all"]).expect(0);
    let master_before = full_ledger(&f, 0);

    add_fourth_node(&mut f);
    // status, the dry run and upgrade agree on what the new node needs.
    let status = status_json(&f);
    let needs = strings(&["1-0-0", "1-2-0", "1-3-0"]);
    assert_eq!(pending_of(&status, 3), needs);
    assert_eq!(
        status["nodes"][3]["missing_from_master"],
        serde_json::json!(needs)
    );
    for n in 0..3 {
        assert!(pending_of(&status, n).is_empty(), "node{n}");
    }
    let dry = f.run(&["upgrade", "--all", "--dry-run", "--format", "json"]);
    dry.expect(0);
    let dry: serde_json::Value = serde_json::from_str(&dry.stdout()).expect("dry-run json");
    let rehearsed: Vec<String> = dry["nodes"][3]["patches"]
        .as_array()
        .expect("patches")
        .iter()
        .map(|p| p["patch"].as_str().expect("version").to_string())
        .collect();
    assert_eq!(rehearsed, needs, "{dry}");
    assert!(
        dry["nodes"][0]["patches"]
            .as_array()
            .expect("patches")
            .is_empty(),
        "{dry}"
    );
    assert!(!f.has_relation(3, "d1"), "the dry run changed the new node");

    f.run(&["upgrade", "--all"])
        .expect(0)
        .says("caught up node `node3`: 1-0-0, 1-2-0, 1-3-0");
    assert_eq!(
        f.ledger(3),
        strings(&[
            "1-0-0:direct:done",
            "1-2-0:direct:done",
            "1-3-0:concurrent:done"
        ])
    );
    assert!(f.has_relation(3, "d1"));
    assert!(!f.has_relation(3, "s1"), "a std body ran on the new node");
    assert_eq!(f.psql(3, "SELECT sum(v) FROM d2"), "30");
    assert!(common::index_valid(&f, 3, "d2_v"));
    assert_eq!(
        full_ledger(&f, 0),
        master_before,
        "the master's ledger changed"
    );
    let status = status_json(&f);
    for n in 0..4 {
        assert!(pending_of(&status, n).is_empty(), "node{n}: {status}");
    }
    f.run(&["upgrade", "--all"]).expect(0).says("nothing to do");
}

#[test]
fn catch_up_runs_before_new_patches_in_the_same_run() {
    let mut f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE d1 (id int);\n");
    f.run(&["upgrade"]).expect(0);
    add_fourth_node(&mut f);
    // The new patch builds on the old one: on the new node it works only after catch-up.
    f.patch(
        "patch-1-1-0-direct.sql",
        "ALTER TABLE d1 ADD COLUMN v int;\n",
    );
    f.run(&["upgrade", "--all"]).expect(0);
    for n in 0..4 {
        assert_eq!(
            f.ledger(n),
            strings(&["1-0-0:direct:done", "1-1-0:direct:done"]),
            "node{n}"
        );
    }
    assert!(
        start_time(&f, 3, "revision", (1, 0, 0)) <= start_time(&f, 3, "revision", (1, 1, 0)),
        "catch-up ran after the new patch"
    );
}

#[test]
fn a_failing_catch_up_starts_nothing_new_and_is_retried() {
    let mut f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE d1 (id int);\n");
    f.run(&["upgrade"]).expect(0);
    add_fourth_node(&mut f);
    // Something on the new node is in the way of the old patch.
    f.psql(3, "CREATE TABLE d1 (other text)");
    f.patch("patch-1-1-0-std.sql", "CREATE TABLE s1 (id int);\n");
    f.run(&["upgrade", "--all"])
        .expect(1)
        .says("catch-up failed")
        .says("node `node3`")
        .says("patch-1-0-0-direct.sql line 1");
    assert!(f.ledger(3).iter().all(|r| !r.ends_with(":done")));
    assert!(
        !f.has_relation(0, "s1"),
        "a new patch ran after a failed catch-up"
    );
    assert_eq!(f.ledger(0), strings(&["1-0-0:direct:done"]));
    f.psql(3, "DROP TABLE d1");
    f.run(&["upgrade", "--all"]).expect(0);
    assert_eq!(f.ledger(3), strings(&["1-0-0:direct:done"]));
    assert_eq!(
        f.ledger(0),
        strings(&["1-0-0:direct:done", "1-1-0:std:done"])
    );
}

#[test]
fn a_role_that_cannot_read_the_ledger_is_reachable_and_told_the_missing_grant() {
    let mut f = Fixture::new(2);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE d1 (id int);\n");
    f.run(&["upgrade"]).expect(0);
    let role = format!("{}_reader", f.db);
    for n in 0..2 {
        f.psql(n, &format!("CREATE ROLE {role} LOGIN PASSWORD 'readerpw9'"));
    }
    // node1's reader may enter the schema but not read the table.
    f.psql(1, &format!("GRANT USAGE ON SCHEMA pgconvoy TO {role}"));
    let admin = f.dsns.clone();
    f.dsns = (0..2)
        .map(|n| f.server(n).dsn_as(&f.db, &role, "readerpw9"))
        .collect();
    f.write_config("");

    let run = f.run(&["status"]);
    run.expect(1)
        .says("LEDGER UNREADABLE")
        .says("lack of privilege")
        .says(&format!("GRANT USAGE ON SCHEMA \"pgconvoy\" TO \"{role}\""))
        .says(&format!(
            "GRANT SELECT ON \"pgconvoy\".\"revision\" TO \"{role}\""
        ))
        .never_says("UNREACHABLE")
        .never_says("readerpw9");
    let json = f.run(&["status", "--format", "json"]);
    json.expect(1);
    let status: serde_json::Value = serde_json::from_str(&json.stdout()).expect("json");
    for n in 0..2 {
        let node = &status["nodes"][n];
        assert_eq!(node["reachable"], true, "{node}");
        assert_eq!(node["ledger_unreadable"]["kind"], "privilege", "{node}");
        assert_eq!(node["ledger_unreadable"]["sqlstate"], "42501", "{node}");
    }
    let grants = |n: usize| status["nodes"][n]["ledger_unreadable"]["missing_grants"].clone();
    assert_eq!(
        grants(1),
        serde_json::json!([format!(
            "GRANT SELECT ON \"pgconvoy\".\"revision\" TO \"{role}\""
        )])
    );
    assert!(grants(0).to_string().contains("USAGE"), "{}", grants(0));
    // upgrade names it the same way, and writes nothing.
    f.run(&["upgrade"])
        .expect(1)
        .says("node `node0` is reachable, but its ledger is unreadable for lack of privilege");

    let reader = f.dsns.clone();
    f.dsns = admin;
    for n in 0..2 {
        f.psql(
            n,
            &format!("GRANT USAGE ON SCHEMA pgconvoy TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA pgconvoy TO {role}"),
        );
    }
    f.dsns = reader;
    f.run(&["status"]).expect(0).never_says("UNREADABLE");
}
