//! `pgconvoy upgrade` and `status`, black-box, against three real PostgreSQL servers:
//! where each patch type lands, grouping, ordering, failures and re-runs, drift,
//! `status --format json`, password hygiene and session identification.

mod common;
use common::{has_pgconvoy_schema, index_valid, start_time, strings, wait_for};

use std::process::Stdio;

use common::Fixture;

#[test]
fn each_patch_type_lands_where_the_contract_says() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE s_only (id int);\n");
    f.patch(
        "patch-1-1-0-direct.sql",
        "CREATE TABLE d_all (id int, v int);\n",
    );
    f.patch(
        "patch-1-2-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY d_all_v ON d_all (v);\n",
    );
    f.run(&["upgrade", "--all"]).expect(0);

    // std: the master only, one row on the master only.
    assert!(f.has_relation(0, "s_only"));
    assert!(!f.has_relation(1, "s_only"));
    assert!(!f.has_relation(2, "s_only"));
    // direct: every node, a row on every node.
    for n in 0..3 {
        assert!(f.has_relation(n, "d_all"), "d_all on node{n}");
    }
    // concurrent: a valid index on every node.
    for n in 0..3 {
        assert!(index_valid(&f, n, "d_all_v"), "valid d_all_v on node{n}");
    }
    assert_eq!(
        f.ledger(0),
        strings(&[
            "1-0-0:std:done",
            "1-1-0:direct:done",
            "1-2-0:concurrent:done"
        ])
    );
    for n in 1..3 {
        assert_eq!(
            f.ledger(n),
            strings(&["1-1-0:direct:done", "1-2-0:concurrent:done"]),
            "ledger of node{n}"
        );
    }
    assert_eq!(f.local_ledger(), strings(&["1-2-0:concurrent:done"]));
}

#[test]
fn one_group_per_run_and_all_loops_until_done() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE g1 (id int);\n");
    f.patch("patch-1-1-0-std.sql", "CREATE TABLE g2 (id int);\n");
    f.patch("patch-1-2-0-direct.sql", "CREATE TABLE g3 (id int);\n");
    f.patch(
        "patch-1-3-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY g3_id ON g3 (id);\n",
    );
    f.patch("patch-1-4-0-std.sql", "CREATE TABLE g5 (id int);\n");

    f.run(&["upgrade"]).expect(0);
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done", "1-1-0:std:done"]));
    assert!(!f.has_relation(0, "g3"));
    assert!(f.ledger(1).is_empty());

    f.run(&["upgrade"]).expect(0);
    assert_eq!(
        f.ledger(0),
        strings(&["1-0-0:std:done", "1-1-0:std:done", "1-2-0:direct:done"])
    );
    assert_eq!(f.ledger(1), strings(&["1-2-0:direct:done"]));
    assert!(!f.has_relation(0, "g3_id"));

    f.run(&["upgrade", "--all"]).expect(0);
    assert_eq!(
        f.ledger(0),
        strings(&[
            "1-0-0:std:done",
            "1-1-0:std:done",
            "1-2-0:direct:done",
            "1-3-0:concurrent:done",
            "1-4-0:std:done"
        ])
    );
    assert!(f.has_relation(0, "g5"));
    for n in 1..3 {
        assert_eq!(
            f.ledger(n),
            strings(&["1-2-0:direct:done", "1-3-0:concurrent:done"])
        );
    }

    f.run(&["upgrade", "--all"]).expect(0).says("nothing to do");
    assert_eq!(f.ledger(0).len(), 5);
}

#[test]
fn versions_are_applied_in_numeric_order() {
    let f = Fixture::new(3);
    // Textual order would run 1-10-0 first, and it needs the table 1-9-0 creates.
    f.patch(
        "patch-1-10-0-std.sql",
        "INSERT INTO ordered (v) VALUES ('1-10-0');\n",
    );
    f.patch(
        "patch-1-9-0-std.sql",
        "CREATE TABLE ordered (n serial, v text);\n",
    );
    f.patch("patch-1-2-0-std.sql", "CREATE TABLE first_one (id int);\n");
    f.run(&["upgrade", "--all"]).expect(0);
    assert_eq!(
        f.ledger(0),
        strings(&["1-2-0:std:done", "1-9-0:std:done", "1-10-0:std:done"])
    );
    assert_eq!(f.psql(0, "SELECT v FROM ordered"), "1-10-0");
    // The claims were made in numeric order too.
    let order = f.psql(
        0,
        "SELECT string_agg(major || '-' || minor || '-' || patch, ',' ORDER BY start_time) \
         FROM pgconvoy.revision",
    );
    assert_eq!(order, "1-2-0,1-9-0,1-10-0");
}

#[test]
fn dash_one_applies_exactly_one_patch() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE o1 (id int);\n");
    f.patch("patch-1-1-0-std.sql", "CREATE TABLE o2 (id int);\n");
    f.patch("patch-1-2-0-std.sql", "CREATE TABLE o3 (id int);\n");
    f.run(&["upgrade", "-1"]).expect(0);
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done"]));
    assert!(f.has_relation(0, "o1"));
    assert!(!f.has_relation(0, "o2"));
    f.run(&["upgrade", "-1"]).expect(0);
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done", "1-1-0:std:done"]));
    assert!(!f.has_relation(0, "o3"));
}

#[test]
fn patch_type_refuses_another_type_and_changes_nothing() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE pt1 (id int);\n");
    f.patch("patch-1-1-0-direct.sql", "CREATE TABLE pt2 (id int);\n");
    f.run(&["upgrade", "--patch-type", "direct"])
        .expect(2)
        .says("1-0-0");
    for n in 0..3 {
        assert!(
            !has_pgconvoy_schema(&f, n),
            "a refused run created the ledger schema on node{n}"
        );
        assert!(!f.has_relation(n, "pt1"));
        assert!(!f.has_relation(n, "pt2"));
    }

    f.run(&["upgrade", "--patch-type", "std"]).expect(0);
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done"]));
    assert!(f.has_relation(0, "pt1"));
    assert!(!f.has_relation(0, "pt2"));
    // Repeatable: either type is accepted.
    f.run(&["upgrade", "--patch-type", "std", "--patch-type", "direct"])
        .expect(0);
    assert_eq!(
        f.ledger(0),
        strings(&["1-0-0:std:done", "1-1-0:direct:done"])
    );
}

#[test]
fn concurrent_patch_with_two_statements_builds_both_indexes_everywhere() {
    let f = Fixture::new(3);
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE two_idx (a int, b int);\nINSERT INTO two_idx SELECT g, g FROM generate_series(1, 1000) g;\n",
    );
    f.patch(
        "patch-1-1-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY two_idx_a ON two_idx (a);\n\
         -- the second one\n\
         CREATE INDEX CONCURRENTLY two_idx_b ON two_idx (b);\n",
    );
    f.run(&["upgrade", "--all"]).expect(0);
    for n in 0..3 {
        assert!(index_valid(&f, n, "two_idx_a"), "two_idx_a on node{n}");
        assert!(index_valid(&f, n, "two_idx_b"), "two_idx_b on node{n}");
        assert!(f.ledger(n).contains(&"1-1-0:concurrent:done".to_string()));
    }
}

#[test]
fn failing_std_patch_leaves_nothing_and_names_patch_node_and_line() {
    let f = Fixture::new(3);
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE half_done (id int);\n\nINSERT INTO no_such_table VALUES (1);\n",
    );
    f.run(&["upgrade"])
        .expect(1)
        .says("1-0-0")
        .says("node0")
        .says("line 3");
    assert!(!f.has_relation(0, "half_done"));
    assert!(f.ledger(0).is_empty(), "{:?}", f.ledger(0));

    f.patch("patch-1-0-0-std.sql", "CREATE TABLE half_done (id int);\n");
    f.run(&["upgrade"]).expect(0);
    assert!(f.has_relation(0, "half_done"));
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done"]));
}

#[test]
fn direct_patch_failing_on_one_replica_is_rerun_only_where_missing() {
    let f = Fixture::new(3);
    f.psql(2, "CREATE TABLE clash (id int)");
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE clash (id int);\n");
    f.run(&["upgrade"]).expect(1).says("node2").says("1-0-0");

    assert!(
        !f.ledger(0).contains(&"1-0-0:direct:done".to_string()),
        "master stamped a failed patch: {:?}",
        f.ledger(0)
    );
    assert!(
        !f.has_relation(0, "clash"),
        "master's part was not rolled back"
    );
    assert_eq!(f.ledger(1), strings(&["1-0-0:direct:done"]));
    assert!(f.has_relation(1, "clash"));
    assert!(
        !f.ledger(2).contains(&"1-0-0:direct:done".to_string()),
        "{:?}",
        f.ledger(2)
    );
    let node1_started = start_time(&f, 1, "revision", (1, 0, 0));
    assert!(!node1_started.is_empty());

    f.psql(2, "DROP TABLE clash");
    f.run(&["upgrade"]).expect(0);
    for n in 0..3 {
        assert_eq!(f.ledger(n), strings(&["1-0-0:direct:done"]), "node{n}");
        assert!(f.has_relation(n, "clash"));
    }
    assert_eq!(
        start_time(&f, 1, "revision", (1, 0, 0)),
        node1_started,
        "node1 was touched again"
    );
}

#[test]
fn concurrent_patch_failing_on_one_replica_keeps_masters_part() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE cc (id int);\n");
    f.run(&["upgrade"]).expect(0);
    // node2 already has an index of that name: the concurrent build fails there only.
    f.psql(2, "CREATE INDEX cc_id ON cc (id)");
    f.patch(
        "patch-1-1-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY cc_id ON cc (id);\n",
    );
    f.run(&["upgrade"]).expect(1).says("node2").says("1-1-0");

    assert!(
        !f.ledger(0).contains(&"1-1-0:concurrent:done".to_string()),
        "claim not rolled back: {:?}",
        f.ledger(0)
    );
    assert_eq!(f.local_ledger(), strings(&["1-1-0:concurrent:done"]));
    assert!(index_valid(&f, 0, "cc_id"));
    assert!(f.ledger(1).contains(&"1-1-0:concurrent:done".to_string()));
    let local_started = start_time(&f, 0, "revision_local", (1, 1, 0));
    let node1_started = start_time(&f, 1, "revision", (1, 1, 0));

    f.psql(2, "DROP INDEX cc_id");
    // Repeating the body where it already ran would fail (the index exists there).
    f.run(&["upgrade"]).expect(0);
    for n in 0..3 {
        assert!(index_valid(&f, n, "cc_id"), "cc_id on node{n}");
        assert!(
            f.ledger(n).contains(&"1-1-0:concurrent:done".to_string()),
            "node{n}: {:?}",
            f.ledger(n)
        );
    }
    assert_eq!(
        start_time(&f, 0, "revision_local", (1, 1, 0)),
        local_started
    );
    assert_eq!(start_time(&f, 1, "revision", (1, 1, 0)), node1_started);
}

#[test]
fn drift_refuses_to_run_and_status_reports_it() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE drifted (id int);\n");
    f.run(&["upgrade"]).expect(0);

    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE drifted (id int, extra int);\n",
    );
    f.patch(
        "patch-1-1-0-std.sql",
        "CREATE TABLE after_drift (id int);\n",
    );
    f.run(&["upgrade"]).expect(2).says("1-0-0");
    f.run(&["upgrade", "--all"]).expect(2).says("1-0-0");
    assert!(!f.has_relation(0, "after_drift"));
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done"]));
    f.run(&["status"]).expect(2).says("1-0-0");

    f.scratch.remove_patch("patch-1-0-0-std.sql");
    f.run(&["upgrade"]).expect(2).says("1-0-0");
    assert!(!f.has_relation(0, "after_drift"));
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done"]));
    f.run(&["status"]).expect(2).says("1-0-0");

    // Restored, the cluster moves on.
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE drifted (id int);\n");
    f.run(&["upgrade"]).expect(0);
    assert!(f.has_relation(0, "after_drift"));
}

fn pending_by_node(f: &Fixture) -> Vec<(String, Vec<String>)> {
    let r = f.run(&["status", "--format", "json"]);
    r.expect(0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout())
        .unwrap_or_else(|e| panic!("status json: {e}\n{}", r.stdout()));
    v["nodes"]
        .as_array()
        .expect("nodes array")
        .iter()
        .map(|n| {
            let name = n["name"].as_str().expect("name").to_string();
            let pending = n["pending"]
                .as_array()
                .expect("pending array")
                .iter()
                .map(|p| p.as_str().expect("version string").to_string())
                .collect();
            (name, pending)
        })
        .collect()
}

#[test]
fn status_json_lists_pending_per_node_and_writes_nothing() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE sj (id int);\n");
    f.patch("patch-1-1-0-direct.sql", "CREATE TABLE sj2 (id int);\n");
    f.patch(
        "patch-1-2-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY sj2_id ON sj2 (id);\n",
    );
    f.patch("patch-1-10-0-std.sql", "CREATE TABLE sj3 (id int);\n");

    let before = pending_by_node(&f);
    assert_eq!(
        before,
        vec![
            (
                "node0".to_string(),
                strings(&["1-0-0", "1-1-0", "1-2-0", "1-10-0"])
            ),
            ("node1".to_string(), strings(&["1-1-0", "1-2-0"])),
            ("node2".to_string(), strings(&["1-1-0", "1-2-0"])),
        ]
    );
    for n in 0..3 {
        assert!(
            !has_pgconvoy_schema(&f, n),
            "status created the ledger schema on node{n}"
        );
    }
    f.run(&["status"]).expect(0);
    for n in 0..3 {
        assert!(!has_pgconvoy_schema(&f, n));
    }

    f.run(&["upgrade", "--all"]).expect(0);
    let after = pending_by_node(&f);
    assert_eq!(after.len(), 3);
    for (name, pending) in after {
        assert!(pending.is_empty(), "{name} still pending {pending:?}");
    }
}

#[test]
fn passwords_never_appear_in_output() {
    let f0 = Fixture::new(3);
    let server = f0.server(0);
    let role = common::unique_db("pwrole");
    server
        .psql(
            "postgres",
            &format!("CREATE ROLE {role} LOGIN PASSWORD 'right'"),
        )
        .expect("create role");
    let secret = "wr0ngSecretPw";

    let kv = server.dsn_as(&f0.db, &role, secret);
    let url = format!(
        "postgresql://{role}:{secret}@{}:{}/{}",
        server.host(),
        server.port(),
        f0.db
    );
    for master_dsn in [kv, url] {
        // The bad credentials on the master, and on a replica too.
        let dsns = vec![master_dsn.clone(), f0.dsns[1].clone(), master_dsn];
        let f = Fixture::with_dsns(f0.db.clone(), dsns);
        f.patch("patch-1-0-0-direct.sql", "CREATE TABLE pw (id int);\n");
        f.run(&["check"]).expect(0).never_says(secret);
        f.run(&["status"]).expect(1).never_says(secret);
        f.run(&["status", "--format", "json"])
            .expect(1)
            .never_says(secret);
        f.run(&["upgrade"]).expect(1).never_says(secret);
        f.run(&["upgrade", "--all", "--format", "json"])
            .expect(1)
            .never_says(secret);
        f.run(&["upgrade", "--format", "markdown"])
            .expect(1)
            .never_says(secret);
    }
    assert!(!f0.has_relation(1, "pw"));
}

#[test]
fn sessions_identify_themselves_as_pgconvoy() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-std.sql", "SELECT pg_sleep(3);\n");
    let mut child = common::cli::command(f.scratch.path(), &["upgrade"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pgconvoy");
    let seen = wait_for(10, || {
        f.psql(
            0,
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'pgconvoy' \
             AND query ILIKE '%pg_sleep%'",
        ) != "0"
    });
    let status = child.wait().expect("wait");
    assert!(
        seen,
        "no session with application_name pgconvoy running the patch on node0"
    );
    assert!(status.success(), "{status}");
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done"]));
}

#[test]
fn direct_patch_failing_on_the_master_keeps_replicas_and_reruns_on_master_only() {
    let f = Fixture::new(3);
    f.psql(0, "CREATE TABLE mclash (id int)");
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE mclash (id int);\n");
    f.run(&["upgrade"]).expect(1).says("node0").says("1-0-0");
    assert!(f.ledger(0).is_empty(), "{:?}", f.ledger(0));
    for n in 1..3 {
        assert_eq!(f.ledger(n), strings(&["1-0-0:direct:done"]), "node{n}");
    }
    let started: Vec<String> = (1..3)
        .map(|n| start_time(&f, n, "revision", (1, 0, 0)))
        .collect();

    f.psql(0, "DROP TABLE mclash");
    f.run(&["upgrade"]).expect(0);
    for n in 0..3 {
        assert_eq!(f.ledger(n), strings(&["1-0-0:direct:done"]), "node{n}");
        assert!(f.has_relation(n, "mclash"));
    }
    for n in 1..3 {
        assert_eq!(start_time(&f, n, "revision", (1, 0, 0)), started[n - 1]);
    }
}

#[test]
fn all_stops_at_the_first_failing_group() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE a1 (id int);\n");
    f.patch("patch-1-1-0-direct.sql", "CREATE TABLE a2 (id int);\n");
    f.patch("patch-1-2-0-std.sql", "INSERT INTO nowhere VALUES (1);\n");
    f.patch("patch-1-3-0-std.sql", "CREATE TABLE a4 (id int);\n");
    f.run(&["upgrade", "--all"]).expect(1).says("1-2-0");
    assert_eq!(
        f.ledger(0),
        strings(&["1-0-0:std:done", "1-1-0:direct:done"])
    );
    assert!(!f.has_relation(0, "a4"));
}

#[test]
fn working_passwords_are_not_printed_either() {
    let f0 = Fixture::new(3);
    let role = common::unique_db("pwok");
    let secret = "r1ghtSecretPw";
    password_role(&f0, &role, secret);
    let s0 = f0.server(0);
    let s1 = f0.server(1);
    let dsns = vec![
        s0.dsn_as(&f0.db, &role, secret),
        format!(
            "postgresql://{role}:{secret}@{}:{}/{}",
            s1.host(),
            s1.port(),
            f0.db
        ),
        // Nobody listens on port 1: unreachable, with a password in the URL.
        format!("postgresql://{role}:{secret}@127.0.0.1:1/{}", f0.db),
    ];
    let f = Fixture::with_dsns(f0.db.clone(), dsns);
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE pwok (id int);\n");
    f.run(&["check"]).expect(0).never_says(secret);
    f.run(&["status"]).expect(1).never_says(secret);
    f.run(&["status", "--format", "json"])
        .expect(1)
        .never_says(secret);
    f.run(&["upgrade"]).expect(1).never_says(secret);
    f.run(&["upgrade", "--format", "json"])
        .expect(1)
        .never_says(secret);

    // Without the unreachable node, everything works and still prints no password.
    let f = Fixture::with_dsns(f0.db.clone(), f.dsns[..2].to_vec());
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE pwok (id int);\n");
    f.run(&["status"]).expect(0).never_says(secret);
    f.run(&["status", "--format", "json"])
        .expect(0)
        .never_says(secret);
    f.run(&["upgrade", "--format", "markdown"])
        .expect(0)
        .never_says(secret);
    f.run(&["upgrade", "--format", "json"])
        .expect(0)
        .never_says(secret);
    f.run(&["status"]).expect(0).never_says(secret);
    assert!(f.has_relation(0, "pwok"));
}

#[test]
fn error_without_a_server_position_still_names_the_line() {
    // A foreign key to a missing table: the server reports no position, so the
    // line comes from the statement that failed.
    let f = Fixture::new(3);
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE a (id int PRIMARY KEY);\n\n-- the broken one\nCREATE TABLE b (a_id int REFERENCES missing (id));\nCREATE TABLE c (id int);\n",
    );
    f.run(&["upgrade"])
        .expect(1)
        .says("1-0-0")
        .says("node0")
        .says("42P01")
        .says("line 4");
    assert!(!f.has_relation(0, "a"), "nothing half-applied");
}

#[test]
fn jobs_smaller_than_the_cluster_still_applies_everywhere() {
    // With more nodes than --jobs, replicas' connections are closed after use
    // (bounding what the coordinator holds); the work must be the same.
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE j (id int);\n");
    f.patch(
        "patch-1-1-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY j_id ON j (id);\n",
    );
    f.patch(
        "patch-1-2-0-direct.sql",
        "ALTER TABLE j ADD COLUMN v text;\n",
    );
    f.run(&["upgrade", "--all", "--jobs", "1"]).expect(0);
    for node in 0..3 {
        assert!(f.has_relation(node, "j_id"), "node{node}");
        assert_eq!(
            f.psql(node, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'j' AND column_name = 'v'"),
            "1",
            "node{node}"
        );
    }
    f.run(&["status", "--format", "json"]).expect(0);
}

#[test]
fn passwords_from_password_file_and_pgpassword_authenticate() {
    let f0 = Fixture::new(2);
    let role = common::unique_db("pwsrc");
    let secret = "fileOrEnvPw9";
    password_role(&f0, &role, secret);
    let (s0, s1) = (f0.server(0), f0.server(1));
    let f = Fixture::with_dsns(f0.db.clone(), Vec::new());
    f.scratch
        .write("secrets/node0.pass", &format!("{secret}\n"));
    let yaml = |file: &str| {
        format!(
            "patches: patches\nmaster:\n  name: node0\n  dsn: \"host=127.0.0.1 port={} user={role} dbname={}\"\n  password_file: {file}\nreplicas:\n  - name: node1\n    dsn: \"postgresql://{role}@127.0.0.1:{}/{}\"\n",
            s0.port(),
            f0.db,
            s1.port(),
            f0.db
        )
    };
    f.scratch.write("cluster.yaml", &yaml("secrets/node0.pass"));
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE pwsrc (id int);\n");
    // node0 from its password_file, node1 from PGPASSWORD.
    f.scratch
        .run_env(&["upgrade"], &[("PGPASSWORD", secret)])
        .expect(0)
        .never_says(secret);
    assert!(f0.has_relation(0, "pwsrc") && f0.has_relation(1, "pwsrc"));
    // Without PGPASSWORD node1 cannot log in, and says which node.
    f.run(&["status"])
        .expect(1)
        .says("node1")
        .never_says(secret);
    // A wrong password file: authentication fails, naming the node, printing no password.
    f.scratch.write("secrets/wrong.pass", "notTheSecret\n");
    f.scratch.write("cluster.yaml", &yaml("secrets/wrong.pass"));
    f.scratch
        .run_env(&["status"], &[("PGPASSWORD", secret)])
        .expect(1)
        .says("node0")
        .never_says("notTheSecret")
        .never_says(secret);
}

/// A superuser role that must log in with `secret`, on the first two servers.
fn password_role(f: &Fixture, role: &str, secret: &str) {
    for n in 0..2 {
        f.server(n)
            .psql(
                "postgres",
                &format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{secret}'"),
            )
            .expect("create role");
    }
}

#[test]
fn multi_action_rule_is_one_statement_and_an_unclosed_parenthesis_is_refused() {
    // psql keeps a `;` inside parentheses in the statement, so patch files written for
    // psql may hold a multi-action rule: it is sent whole and works on every node.
    let f = Fixture::new(3);
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE t (v int);\nCREATE TABLE log (v int);\nCREATE RULE t_log AS ON INSERT TO t\n  DO ALSO (INSERT INTO log VALUES (NEW.v); INSERT INTO log VALUES (NEW.v + 1));\n",
    );
    f.run(&["upgrade", "--all"]).expect(0);
    for n in 0..3 {
        f.psql(n, "INSERT INTO t VALUES (1)");
        assert_eq!(
            f.psql(n, "SELECT string_agg(v::text, ',' ORDER BY v) FROM log"),
            "1,2",
            "node{n}"
        );
    }
    // A `(` never closed would swallow the rest of the file: refused before anything
    // runs, naming the file and the line of the `(`.
    f.patch(
        "patch-1-1-0-direct.sql",
        "CREATE TABLE u (\n  id int;\nCREATE TABLE w (id int);\n",
    );
    f.run(&["check"])
        .expect(2)
        .says("patch-1-1-0-direct.sql")
        .says("line 1");
    f.run(&["upgrade", "--all"]).expect(2);
    assert!(!f.has_relation(0, "w"), "nothing ran");
}
