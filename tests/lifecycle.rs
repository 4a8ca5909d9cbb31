//! A cluster's life around `upgrade`, black-box against three real PostgreSQL servers:
//! `stamp` (and `--from-lazr`), `repair`, `history`, `unlock` of a stopped coordinator,
//! the ledger's attempt count and its migration, `-1` with `--all`.

mod common;
use common::{finish, pgconvoy_sleeping, spawn, strings, wait_for, Fixture};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// Patches 1-0-0 std, 1-1-0 direct, 1-2-0 concurrent, 1-3-0 direct.
fn four_patches(f: &Fixture) {
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE base_t (id int);\n");
    f.patch(
        "patch-1-1-0-direct.sql",
        "CREATE TABLE d_t (id int, v int);\n",
    );
    f.patch(
        "patch-1-2-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY d_t_v ON d_t (v);\n",
    );
    f.patch("patch-1-3-0-direct.sql", "CREATE TABLE later_t (id int);\n");
}

/// The schema of 1-0-0 … 1-2-0 made by hand, as in a database that predates pgconvoy.
fn existing_schema(f: &Fixture) {
    f.psql(0, "CREATE TABLE base_t (id int)");
    for n in 0..3 {
        f.psql(
            n,
            "CREATE TABLE d_t (id int, v int); CREATE INDEX d_t_v ON d_t (v)",
        );
    }
}

#[test]
fn stamp_records_an_existing_schema_and_upgrade_applies_only_later_patches() {
    let f = Fixture::new(3);
    four_patches(&f);
    existing_schema(&f);
    // The dry run sees tables but no ledger, and the first patch creating one of them.
    let dry = f.run(&["upgrade", "--all", "--dry-run"]);
    dry.expect(1)
        .says("no pgconvoy ledger")
        .says("`pgconvoy stamp 1-2-0`");
    let doc = json(
        &f.run(&["upgrade", "--all", "--dry-run", "--format", "json"])
            .stdout(),
    );
    let suggested: Vec<&str> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["kind"] == "existing-schema")
        .map(|x| x["node"].as_str().unwrap())
        .collect();
    assert_eq!(suggested, ["node0", "node1", "node2"]);
    // As a new user would find it: the first patch's table exists.
    f.run(&["upgrade", "--all"]).expect(1).says("42P07");

    // A version that is not in the directory: bad input, nothing written.
    f.run(&["stamp", "1-9-0"])
        .expect(2)
        .says("1-9-0")
        .says("nothing was written");
    f.run(&["stamp", "1-2-0", "--node", "node7"])
        .expect(2)
        .says("node7");
    for n in 0..3 {
        assert!(f.ledger(n).is_empty(), "node{n}: {:?}", f.ledger(n));
    }

    // The dry run shows the rows and writes nothing (not even the ledger's schema).
    let dry = f.run(&["stamp", "1-2-0", "--dry-run", "--format", "json"]);
    dry.expect(0);
    let doc = json(&dry.stdout());
    assert_eq!(doc["exit_code"], 0);
    let rows: Vec<String> = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}:{}:{}",
                r["node"].as_str().unwrap(),
                r["version"].as_str().unwrap(),
                r["book"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        rows,
        strings(&[
            "node0:1-0-0:main",
            "node0:1-1-0:main",
            "node0:1-2-0:main",
            "node0:1-2-0:local",
            "node1:1-1-0:main",
            "node1:1-2-0:main",
            "node2:1-1-0:main",
            "node2:1-2-0:main",
        ])
    );
    // (The failed upgrade created the master's ledger; the replicas have none.)
    assert!(f.ledger(0).is_empty());
    for n in 1..3 {
        assert!(
            !common::has_pgconvoy_schema(&f, n),
            "dry run wrote on node{n}"
        );
    }

    // --node: only that node.
    f.run(&["stamp", "1-2-0", "--node", "node2"])
        .expect(0)
        .says("recorded 2 ledger row(s)");
    assert!(f.ledger(0).is_empty());
    assert_eq!(
        f.ledger(2),
        strings(&["1-1-0:direct:done", "1-2-0:concurrent:done"])
    );

    f.run(&["stamp", "1-2-0"])
        .expect(0)
        .says("recorded 6 ledger row(s)");
    assert_eq!(
        f.ledger(0),
        strings(&[
            "1-0-0:std:done",
            "1-1-0:direct:done",
            "1-2-0:concurrent:done"
        ])
    );
    assert_eq!(f.local_ledger(), strings(&["1-2-0:concurrent:done"]));
    for n in 1..3 {
        assert_eq!(
            f.ledger(n),
            strings(&["1-1-0:direct:done", "1-2-0:concurrent:done"])
        );
    }
    let by = f.psql(
        0,
        "SELECT applied_by FROM pgconvoy.revision WHERE (major, minor, patch) = (1, 1, 0)",
    );
    assert!(by.contains(" stamp by "), "{by}");
    assert!(by.ends_with(" as postgres"), "{by}");
    let sum = f.psql(
        1,
        "SELECT checksum FROM pgconvoy.revision WHERE (major, minor, patch) = (1, 1, 0)",
    );
    let file = std::fs::read(f.scratch.path().join("patches/patch-1-1-0-direct.sql")).unwrap();
    assert_eq!(sum, pgconvoy::patches::patch::checksum(&file));

    // Stamping again writes nothing; status agrees; upgrade applies only 1-3-0.
    f.run(&["stamp", "1-2-0"])
        .expect(0)
        .says("recorded 0 ledger row(s)");
    let up = f.run(&["upgrade", "--all"]);
    up.expect(0).never_says("42P07");
    for n in 0..3 {
        assert!(f.has_relation(n, "later_t"), "later_t on node{n}");
        assert!(f.ledger(n).contains(&"1-3-0:direct:done".to_string()));
    }
    f.run(&["status"]).expect(0);
}

/// lazr.postgresql's table as its upgrade.py creates it, with rows for `versions`
/// (finished, an hour apart, starting 2020-01-0N 10:00 UTC).
fn lazr_table(
    f: &Fixture,
    node: usize,
    versions: &[(u32, u32, u32)],
    unfinished: Option<(u32, u32, u32)>,
) {
    let mut sql = String::from(
        "CREATE TABLE lazrdatabaserevision (
            major integer NOT NULL, minor integer NOT NULL, patch integer NOT NULL,
            start_time timestamp without time zone DEFAULT (transaction_timestamp() AT TIME ZONE 'UTC'),
            end_time timestamp without time zone DEFAULT (statement_timestamp() AT TIME ZONE 'UTC'),
            branch_nick text, revno integer, revid text,
            CONSTRAINT lazrdatabaserevision_pkey PRIMARY KEY (major, minor, patch));
         INSERT INTO lazrdatabaserevision VALUES (0, 0, 0, '2019-12-31 09:00', '2019-12-31 09:00:01');",
    );
    for (i, (a, b, c)) in versions.iter().enumerate() {
        sql.push_str(&format!(
            "INSERT INTO lazrdatabaserevision VALUES ({a}, {b}, {c}, '2020-01-0{d} 10:00:00.250', '2020-01-0{d} 10:00:03.5');",
            d = i + 1
        ));
    }
    if let Some((a, b, c)) = unfinished {
        sql.push_str(&format!(
            "INSERT INTO lazrdatabaserevision VALUES ({a}, {b}, {c}, '2020-02-01 10:00', NULL);"
        ));
    }
    f.psql(node, &sql);
}

#[test]
fn from_lazr_adopts_every_nodes_ledger_keeping_its_times() {
    let f = Fixture::new(3);
    four_patches(&f);
    existing_schema(&f);
    // lazr.postgresql's table on every node (replicated by Slony-I in Launchpad: std
    // patches too), plus a version the directory lacks on the master.
    lazr_table(&f, 0, &[(1, 0, 0), (1, 1, 0), (1, 2, 0), (0, 9, 0)], None);
    lazr_table(&f, 1, &[(1, 0, 0), (1, 1, 0), (1, 2, 0)], None);

    // node2 lacks the table: bad input naming node and table, nothing written anywhere.
    f.run(&["stamp", "--from-lazr"])
        .expect(2)
        .says("node2")
        .says("public.lazrdatabaserevision");
    for n in 0..3 {
        assert!(!common::has_pgconvoy_schema(&f, n), "node{n} written");
    }

    lazr_table(&f, 2, &[(1, 0, 0), (1, 1, 0), (1, 2, 0)], Some((1, 3, 0)));
    f.psql(
        0,
        "INSERT INTO lazrdatabaserevision VALUES (1, 7, 0, '2020-03-01', '2020-03-01 00:01')",
    );
    let run = f.run(&["stamp", "--from-lazr"]);
    run.expect(0)
        .says("1-7-0, which the patch directory lacks")
        .says("never finished");
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
            "node{n}"
        );
    }
    // lazr's times, kept to the microsecond (lazr writes UTC without a zone).
    let times = f.psql(
        1,
        "SELECT to_char(start_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || ' ' || \
                to_char(end_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || ' ' || applied_by \
           FROM pgconvoy.revision WHERE (major, minor, patch) = (1, 1, 0)",
    );
    assert!(
        times.starts_with("2020-01-02 10:00:00.250000 2020-01-02 10:00:03.500000 "),
        "{times}"
    );
    assert!(times.contains("from-lazr"), "{times}");

    // Only later patches apply.
    f.run(&["upgrade", "--all"]).expect(0).never_says("42P07");
    for n in 0..3 {
        assert!(f.has_relation(n, "later_t"), "later_t on node{n}");
    }
    // Adopting again changes nothing.
    f.run(&["stamp", "--from-lazr"])
        .expect(0)
        .says("nothing to adopt");
}

#[test]
fn repair_accepts_a_fixed_file_and_ends_drift() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE r_t (id int);\n");
    f.run(&["upgrade"]).expect(0);
    // Fixed after it ran (a comment, say): drift, exit 2, everywhere.
    f.patch(
        "patch-1-0-0-direct.sql",
        "-- fixed: id is the key\nCREATE TABLE r_t (id int);\n",
    );
    f.patch("patch-1-1-0-direct.sql", "CREATE TABLE r_u (id int);\n");
    f.run(&["status"]).expect(2).says("drift");
    f.run(&["upgrade"]).expect(2);
    f.run(&["repair", "1-5-0"]).expect(2).says("1-5-0");

    let run = f.run(&["repair", "1-0-0"]);
    run.expect(0)
        .says("`node0`")
        .says("`node1`")
        .says("`node2`");
    f.run(&["status"]).expect(0).never_says("drift");
    f.run(&["upgrade"]).expect(0);
    for n in 0..3 {
        assert!(f.has_relation(n, "r_u"), "r_u on node{n}");
    }
    // Nothing left to repair.
    f.run(&["repair", "1-0-0"])
        .expect(0)
        .says("nothing was written");
}

#[test]
fn history_lists_every_nodes_rows_and_counts_retries() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE h_s (id int);\n");
    f.patch("patch-1-1-0-direct.sql", "CREATE TABLE h_d (id int);\n");
    // node2 already has the table: the direct patch fails there first.
    f.psql(2, "CREATE TABLE h_d (id int)");
    f.run(&["upgrade", "--all"]).expect(1).says("node2");
    let first = common::start_time(&f, 2, "revision", (1, 1, 0));
    assert!(first.is_empty(), "the failed attempt rolled back: {first}");
    f.psql(2, "DROP TABLE h_d");
    f.run(&["upgrade", "--all"]).expect(0);

    let run = f.run(&["history", "--format", "json"]);
    run.expect(0);
    let doc = json(&run.stdout());
    assert_eq!(doc["exit_code"], 0);
    let rows = doc["rows"].as_array().unwrap();
    let seen: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["node"].as_str().unwrap(),
                r["version"].as_str().unwrap()
            )
        })
        .collect();
    for want in ["node0:1-0-0", "node0:1-1-0", "node1:1-1-0", "node2:1-1-0"] {
        assert!(seen.contains(&want.to_string()), "{want} missing: {seen:?}");
    }
    let mut last = String::new();
    for r in rows {
        let start = r["start_time"].as_str().unwrap();
        let end = r["end_time"].as_str().unwrap();
        for t in [start, end] {
            assert!(
                t.len() == 24 && t.ends_with('Z') && &t[10..11] == "T",
                "not RFC 3339 UTC: {t}"
            );
        }
        assert!(start >= last.as_str(), "not oldest first: {seen:?}");
        last = start.to_string();
        assert!(r["duration_ms"].as_i64().unwrap() >= 0);
        let by = r["applied_by"].as_str().unwrap();
        assert!(by.contains(" upgrade by root@"), "{by}");
        assert!(by.contains(" pid ") && by.ends_with(" as postgres"), "{by}");
    }
    let text = f.run(&["history", "--node", "node1"]);
    text.expect(0).says("node1").never_says("node0");

    // A retry after an unfinished attempt keeps the first start and counts attempts.
    f.patch(
        "patch-1-2-0-concurrent.sql",
        "CREATE UNIQUE INDEX CONCURRENTLY h_u ON h_d (id);\n",
    );
    f.psql(2, "INSERT INTO h_d VALUES (1), (1)");
    f.run(&["upgrade"]).expect(1).says("node2");
    let first = common::start_time(&f, 2, "revision", (1, 2, 0));
    f.psql(2, "DELETE FROM h_d");
    f.run(&["upgrade"]).expect(0);
    let row = f.psql(
        2,
        "SELECT attempts || ' ' || first_start::text || ' ' || (start_time > first_start)::text \
           FROM pgconvoy.revision WHERE (major, minor, patch) = (1, 2, 0)",
    );
    assert_eq!(row, format!("2 {first} true"));
    let doc = json(
        &f.run(&["history", "--node", "node2", "--format", "json"])
            .stdout(),
    );
    let retried = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "1-2-0")
        .unwrap();
    assert_eq!(retried["attempts"], 2);
    assert!(retried["first_start_time"].is_string());
}

#[test]
fn ledgers_of_the_old_shape_are_read_as_is_and_migrated_by_a_run() {
    let f = Fixture::new(2);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE m_t (id int);\n");
    f.patch("patch-1-1-0-direct.sql", "CREATE TABLE m_u (id int);\n");
    let sum = pgconvoy::patches::patch::checksum(b"CREATE TABLE m_t (id int);\n");
    for n in 0..2 {
        f.psql(
            n,
            &format!(
                "CREATE SCHEMA pgconvoy;
                 CREATE TABLE pgconvoy.revision (
                     major integer NOT NULL, minor integer NOT NULL, patch integer NOT NULL,
                     patch_type text NOT NULL, checksum text NOT NULL,
                     start_time timestamptz NOT NULL, end_time timestamptz,
                     applied_by text NOT NULL, PRIMARY KEY (major, minor, patch));
                 INSERT INTO pgconvoy.revision VALUES
                     (1, 0, 0, 'direct', '{sum}', now(), now(), 'pgconvoy 0.1.0 on vm pid 1');
                 CREATE TABLE m_t (id int);"
            ),
        );
    }
    // Read-only commands read the old shape and change nothing.
    f.run(&["status"]).expect(0);
    let doc = json(&f.run(&["history", "--format", "json"]).stdout());
    assert_eq!(doc["rows"].as_array().unwrap().len(), 2);
    assert_eq!(doc["rows"][0]["attempts"], 1);
    let columns = "SELECT count(*) FROM pg_attribute WHERE attrelid = 'pgconvoy.revision'::regclass AND attname IN ('attempts', 'first_start')";
    assert_eq!(f.psql(0, columns), "0");

    f.run(&["upgrade"]).expect(0);
    for n in 0..2 {
        assert_eq!(f.psql(n, columns), "2", "node{n} migrated");
        assert_eq!(
            f.ledger(n),
            strings(&["1-0-0:direct:done", "1-1-0:direct:done"])
        );
    }
}

#[test]
fn one_wins_over_all() {
    let f = Fixture::new(1);
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE o1 (id int);\n");
    f.patch("patch-1-1-0-std.sql", "CREATE TABLE o2 (id int);\n");
    f.run(&["upgrade", "--all", "-1"]).expect(0);
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done"]));
}

#[test]
fn unlock_force_ends_a_stopped_coordinator_which_then_writes_nothing() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE u0 (id int);\n");
    f.run(&["upgrade"]).expect(0);
    // The master's part sleeps (its database is told apart by a marker table); the
    // replicas' parts commit at once.
    f.psql(0, "CREATE TABLE sleeper ()");
    f.patch(
        "patch-1-1-0-direct.sql",
        "CREATE TABLE u1 (id int);\nSELECT CASE WHEN to_regclass('sleeper') IS NOT NULL THEN pg_sleep(2) END;\n",
    );
    f.run(&["unlock"]).expect(0).says("nobody holds");

    let old = spawn(&f, &["upgrade"]);
    assert!(
        wait_for(20, || pgconvoy_sleeping(&f, 0)),
        "the master never started sleeping"
    );
    let pid = old.id().to_string();
    let stop = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    };
    stop("-STOP");
    // Every other run is refused meanwhile.
    f.run(&["upgrade"]).expect(3);

    let shown = f.run(&["unlock"]);
    shown
        .expect(0)
        .says(&format!("pid {pid}"))
        .says("upgrade")
        .says("holds the cluster lock")
        .says("unlock --force");
    let doc = json(&f.run(&["unlock", "--format", "json"]).stdout());
    assert!(doc["holder"]["coordinator"]
        .as_str()
        .unwrap()
        .contains(&format!("pid {pid}")));
    let forced = f.run(&["unlock", "--force"]);
    forced
        .expect(0)
        .says("ENDED")
        .says("the cluster lock is free");

    // A new run completes while the old one is still stopped.
    f.run(&["upgrade"]).expect(0);
    for n in 0..3 {
        assert!(
            f.ledger(n).contains(&"1-1-0:direct:done".to_string()),
            "node{n}"
        );
        assert!(f.has_relation(n, "u1"));
    }
    let ledgers: Vec<Vec<String>> = (0..3).map(|n| f.ledger(n)).collect();
    let starts: Vec<String> = (0..3)
        .map(|n| common::start_time(&f, n, "revision", (1, 1, 0)))
        .collect();

    // The old one resumes: it finds its sessions gone, exits non-zero, records nothing.
    stop("-CONT");
    let run = finish(old, 60);
    assert_ne!(run.code(), 0, "{}", run.all());
    for n in 0..3 {
        assert_eq!(f.ledger(n), ledgers[n], "node{n} changed by the old run");
        assert_eq!(
            common::start_time(&f, n, "revision", (1, 1, 0)),
            starts[n],
            "node{n} row rewritten by the old run"
        );
    }
    f.run(&["status"]).expect(0);
    f.run(&["unlock"]).expect(0).says("nobody holds");
}

/// One patch of every kind and order, as `upgrade --sql` must script them.
fn every_kind(f: &Fixture) {
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE q_s (id int primary key);\nINSERT INTO q_s VALUES (1), (2);\n",
    );
    f.patch(
        "patch-1-1-0-direct.sql",
        "CREATE TABLE q_d (id int, v text);\n",
    );
    f.patch(
        "patch-1-2-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY q_d_id ON q_d (id);\nCREATE INDEX CONCURRENTLY q_d_v ON q_d (v);\n",
    );
    f.patch(
        "patch-1-3-0-direct.sql",
        "-- pgconvoy: order=master-first\nALTER TABLE q_d DROP COLUMN v;\n",
    );
    f.patch(
        "patch-1-4-0-std.sql",
        "ALTER TABLE q_s ADD COLUMN note text DEFAULT 'x';\n",
    );
}

/// What a node looks like after a run: ledger rows (both books) and user relations.
fn shape(f: &Fixture, node: usize) -> Vec<String> {
    let mut out = f.ledger(node);
    if node == 0 {
        out.extend(f.local_ledger().into_iter().map(|r| format!("local {r}")));
    }
    out.extend(
        f.psql(
            node,
            "SELECT relname || ':' || relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE n.nspname = 'public' ORDER BY 1",
        )
        .lines()
        .map(str::to_string),
    );
    out
}

fn psql_script(dsn: &str, script: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", "-"])
        .env_remove("PGPASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn sql_scripts_run_by_psql_leave_every_node_as_upgrade_would() {
    let f = Fixture::new(3);
    every_kind(&f);
    f.run(&["upgrade", "--all", "--sql", "--dry-run"]).expect(2);
    f.run(&["upgrade", "--sql", "--node", "node9"])
        .expect(2)
        .says("node9");

    // Every node's script, generated before any runs: reading the ledgers writes nothing.
    let scripts: Vec<String> = (0..3)
        .map(|n| {
            let node = format!("node{n}");
            let run = f.run(&["upgrade", "--all", "--sql", "--node", &node]);
            run.expect(0);
            let sql = run.stdout();
            assert!(sql.contains(&format!("node `{node}`")), "{sql}");
            assert!(sql.contains("dsn: host="), "{sql}");
            assert!(!sql.contains("\\connect"), "one node, no \\connect: {sql}");
            sql
        })
        .collect();
    for n in 0..3 {
        assert!(!common::has_pgconvoy_schema(&f, n), "node{n} written");
    }
    // The master's script claims and stamps every patch; std bodies only there.
    let master = &scripts[0];
    for v in ["(1, 0, 0, 'std'", "(1, 3, 0, 'direct'", "(1, 4, 0, 'std'"] {
        assert!(master.contains(v), "{v} missing from the master's script");
    }
    assert!(master.contains("pg_try_advisory_lock"));
    assert!(
        !scripts[1].contains("q_s"),
        "std patch in a replica's script"
    );
    assert!(scripts[1].contains("CREATE INDEX CONCURRENTLY q_d_id"));
    // Concurrent statements outside any transaction: no BEGIN between the row and the stamp.
    let conc = &scripts[1]
        [scripts[1].find("patch 1-2-0").unwrap()..scripts[1].find("patch 1-3-0").unwrap()];
    assert!(!conc.contains("BEGIN"), "{conc}");
    // All nodes at once: one script connecting to each in turn.
    let all = f.run(&["upgrade", "--all", "--sql"]);
    all.expect(0);
    assert_eq!(all.stdout().matches("\\connect").count(), 3);

    // The same cluster upgraded for real, to compare with.
    let real = Fixture::new(3);
    every_kind(&real);
    real.run(&["upgrade", "--all"]).expect(0);

    for (n, sql) in scripts.iter().enumerate() {
        let out = psql_script(&f.dsns[n], sql);
        assert!(
            out.status.success(),
            "node{n}'s script failed:\n{}\n{sql}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = f.run(&["status", "--format", "json"]);
    status.expect(0);
    let doc = json(&status.stdout());
    for node in doc["nodes"].as_array().unwrap() {
        assert_eq!(node["pending"].as_array().unwrap().len(), 0, "{node}");
    }
    for n in 0..3 {
        assert_eq!(
            shape(&f, n),
            shape(&real, n),
            "node{n} differs from a real run"
        );
    }
    let by = f.psql(
        1,
        "SELECT applied_by FROM pgconvoy.revision WHERE (major, minor, patch) = (1, 1, 0)",
    );
    assert!(
        by.contains("upgrade --sql script by ") && by.ends_with(" as postgres"),
        "{by}"
    );
    f.run(&["upgrade", "--all"]).expect(0).says("nothing to do");

    // Node by node, each script generated after the one before ran: once the master's
    // has run, the cluster has finished the patches and the replicas catch up.
    f.patch("patch-1-5-0-direct.sql", "CREATE TABLE q_e (id int);\n");
    f.patch(
        "patch-1-6-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY q_e_id ON q_e (id);\n",
    );
    for n in 0..3 {
        let node = format!("node{n}");
        let run = f.run(&["upgrade", "--all", "--sql", "--node", &node]);
        run.expect(0);
        if n > 0 {
            run.says("catch-up");
        }
        let out = psql_script(&f.dsns[n], &run.stdout());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let doc = json(&f.run(&["status", "--format", "json"]).stdout());
    for node in doc["nodes"].as_array().unwrap() {
        assert_eq!(node["pending"].as_array().unwrap().len(), 0, "{node}");
    }
    for n in 0..3 {
        assert!(common::index_valid(&f, n, "q_e_id"), "node{n}");
    }
    // Nothing pending: every script says so.
    f.run(&["upgrade", "--all", "--sql", "--node", "node1"])
        .expect(0)
        .says("nothing to do on this node");
}

#[test]
fn sql_script_headers_name_the_dsn_without_its_password() {
    let f = Fixture::new(1);
    let server = f.server(0);
    let role = common::unique_db("pw_role");
    server
        .psql(
            "postgres",
            &format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD 'hush-42'"),
        )
        .unwrap();
    let dsn = server.dsn_as(&f.db, &role, "hush-42");
    let f = Fixture::with_dsns(f.db.clone(), vec![dsn]);
    f.patch("patch-1-0-0-std.sql", "CREATE TABLE p_t (id int);\n");
    let run = f.run(&["upgrade", "--sql"]);
    run.expect(0)
        .never_says("hush-42")
        .says(&format!("user={role}"));
}

/// `cluster.yaml` naming only the first `n` nodes of the fixture.
fn config_of_first(f: &Fixture, n: usize) {
    let mut yaml = String::from("patches: patches\n");
    for (i, dsn) in f.dsns.iter().take(n).enumerate() {
        if i == 0 {
            yaml.push_str(&format!("master:\n  name: node0\n  dsn: \"{dsn}\"\n"));
        } else {
            if i == 1 {
                yaml.push_str("replicas:\n");
            }
            yaml.push_str(&format!("  - name: node{i}\n    dsn: \"{dsn}\"\n"));
        }
    }
    f.scratch.write("cluster.yaml", &yaml);
}

#[test]
fn node_limits_a_run_to_the_nodes_it_names() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE n_a (id int);\n");
    f.patch(
        "patch-1-1-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY n_a_id ON n_a (id);\n",
    );
    // The cluster had two nodes; node2 joins later.
    config_of_first(&f, 2);
    f.run(&["upgrade", "--all"]).expect(0);
    f.write_config("");
    let starts = |n: usize| common::start_time(&f, n, "revision", (1, 0, 0));
    let (s0, s1) = (starts(0), starts(1));

    // Catch-up of the new node alone; the others are not touched.
    f.run(&["upgrade", "--node", "node1"])
        .expect(0)
        .says("nothing to do");
    f.run(&["upgrade", "--node", "node2"]).expect(0);
    assert_eq!(
        f.ledger(2),
        strings(&["1-0-0:direct:done", "1-1-0:concurrent:done"])
    );
    assert!(common::index_valid(&f, 2, "n_a_id"));
    assert_eq!((starts(0), starts(1)), (s0.clone(), s1.clone()));

    // A pending patch on one replica only: the master's claim is taken and rolled back,
    // the master records nothing, node2 is not touched.
    f.patch("patch-1-2-0-direct.sql", "CREATE TABLE n_b (id int);\n");
    f.run(&["upgrade", "--node", "node1"])
        .expect(0)
        .says("the master is left out");
    assert!(f.has_relation(1, "n_b"));
    assert!(!f.has_relation(0, "n_b") && !f.has_relation(2, "n_b"));
    assert!(f.ledger(1).contains(&"1-2-0:direct:done".to_string()));
    assert!(!f.ledger(0).iter().any(|r| r.starts_with("1-2-0")));
    let doc = json(&f.run(&["status", "--format", "json"]).stdout());
    assert_eq!(doc["nodes"][0]["pending"][0], "1-2-0");
    let node1_started = common::start_time(&f, 1, "revision", (1, 2, 0));
    // The next full run applies it where it is missing only.
    f.run(&["upgrade"]).expect(0);
    for n in 0..3 {
        assert!(
            f.ledger(n).contains(&"1-2-0:direct:done".to_string()),
            "node{n}"
        );
    }
    assert_eq!(
        common::start_time(&f, 1, "revision", (1, 2, 0)),
        node1_started
    );

    // Without the master, a std patch stops the run before it.
    f.patch("patch-1-3-0-std.sql", "CREATE TABLE n_s (id int);\n");
    f.patch("patch-1-4-0-direct.sql", "CREATE TABLE n_c (id int);\n");
    f.run(&["upgrade", "--all", "--node", "node2"])
        .expect(0)
        .says("stopping before `1-3-0`");
    assert!(!f.has_relation(2, "n_c"));

    // The master and one replica: the cluster records the patch; the other replica is
    // caught up by the next run.
    f.run(&["upgrade", "--all", "--node", "node0", "--node", "node1"])
        .expect(0);
    assert!(f.ledger(0).contains(&"1-4-0:direct:done".to_string()));
    assert!(f.has_relation(1, "n_c") && !f.has_relation(2, "n_c"));
    f.run(&["upgrade"]).expect(0);
    assert!(f.has_relation(2, "n_c"));
    f.run(&["upgrade", "--node", "node9"])
        .expect(2)
        .says("node9");
    f.run(&["upgrade", "--node", "node1", "--dry-run"])
        .expect(2);
}

/// A baseline as `pg_dump --schema-only` writes one (session settings, an empty
/// `search_path`, qualified names), with data in a COPY block.
const BASELINE_1_2_0: &str = "SET statement_timeout = 0;
SET lock_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET client_min_messages = warning;

CREATE TABLE public.base_t (
    id integer
);

CREATE TABLE public.d_t (
    id integer,
    v integer
);

COPY public.d_t (id, v) FROM stdin;
1\t10
2\t20
\\.

CREATE INDEX d_t_v ON public.d_t USING btree (v);
";

#[test]
fn new_nodes_get_the_newest_baseline_then_later_patches() {
    let f = Fixture::new(3);
    four_patches(&f);
    f.patch("baseline-1-0-0.sql", "CREATE TABLE base_t (id int);\n");
    f.patch("baseline-1-2-0.sql", BASELINE_1_2_0);
    // node2 is not new: it holds a table of its own (and no ledger).
    f.psql(2, "CREATE TABLE own_t (id int)");

    // check validates baselines like patches.
    f.run(&["check"])
        .expect(0)
        .says("baseline baseline-1-2-0.sql");
    f.patch(
        "baseline-1-1-0.sql",
        "BEGIN;\nCREATE TABLE x (id int);\nCOMMIT;\n",
    );
    f.patch("baseline-1-1.sql", "CREATE TABLE x (id int);\n");
    f.run(&["check"])
        .expect(2)
        .says("baseline-1-1-0.sql: line 1")
        .says("baseline-1-1.sql: bad file name");
    f.scratch.remove_patch("baseline-1-1-0.sql");
    f.scratch.remove_patch("baseline-1-1.sql");

    // The dry run names the new nodes, rehearses the baseline and what follows, writes nothing.
    let dry = f.run(&["upgrade", "--all", "--dry-run", "--format", "json"]);
    let doc = json(&dry.stdout());
    dry.expect(0);
    let baselined: Vec<&str> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["kind"] == "baseline")
        .map(|x| x["node"].as_str().unwrap())
        .collect();
    assert_eq!(baselined, ["node0", "node1"]);
    let rehearsed: Vec<String> = doc["nodes"][1]["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}:{}", p["version"], p["outcome"]))
        .collect();
    assert_eq!(rehearsed.len(), 2, "{rehearsed:?}");
    for n in 0..3 {
        assert!(
            !common::has_pgconvoy_schema(&f, n),
            "dry run wrote on node{n}"
        );
    }

    assert_eq!(doc["summary"]["failed"], 0, "{doc}");

    // node1 by hand: its script gives it the baseline, then 1-3-0, as a run would.
    let script = f.run(&["upgrade", "--all", "--sql", "--node", "node1"]);
    script.expect(0).says("it gets baseline-1-2-0.sql first");
    let out = psql_script(&f.dsns[1], &script.stdout());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let up = f.run(&["upgrade", "--all"]);
    up.expect(0)
        .says("baselined node `node0` with baseline-1-2-0.sql")
        .never_says("baselined node `node1`")
        .never_says("baselined node `node2`");
    assert_eq!(
        f.ledger(0),
        strings(&[
            "1-0-0:std:done",
            "1-1-0:direct:done",
            "1-2-0:concurrent:done",
            "1-3-0:direct:done"
        ])
    );
    assert_eq!(f.local_ledger(), strings(&["1-2-0:concurrent:done"]));
    for n in 1..3 {
        assert_eq!(
            f.ledger(n),
            strings(&[
                "1-1-0:direct:done",
                "1-2-0:concurrent:done",
                "1-3-0:direct:done"
            ]),
            "node{n}"
        );
    }
    let by = |n: usize, v: &str| {
        f.psql(
            n,
            &format!(
                "SELECT applied_by FROM pgconvoy.revision WHERE format('%s-%s-%s', major, minor, patch) = '{v}'"
            ),
        )
    };
    for (n, v) in [(0, "1-0-0"), (0, "1-2-0"), (1, "1-1-0"), (1, "1-2-0")] {
        let who = by(n, v);
        assert!(
            who.contains(" baseline baseline-1-2-0.sql"),
            "node{n} {v}: {who}"
        );
        assert!(who.ends_with(" as postgres"), "{who}");
    }
    for n in 0..3 {
        assert!(!by(n, "1-3-0").contains("baseline"), "node{n}");
        assert!(f.has_relation(n, "later_t"), "later_t on node{n}");
    }
    // node2 replayed the patches: no baseline there, its own table kept.
    assert!(!by(2, "1-1-0").contains("baseline"));
    assert!(f.has_relation(2, "own_t"));
    // The COPY block's rows came with the baseline; the replayed node has none.
    for (n, rows) in [(0, "2"), (1, "2"), (2, "0")] {
        assert_eq!(f.psql(n, "SELECT count(*) FROM d_t"), rows, "node{n}");
    }
    assert_eq!(f.psql(1, "SELECT sum(v) FROM d_t"), "30");
    f.run(&["status"]).expect(0);
    f.run(&["upgrade", "--all"])
        .expect(0)
        .never_says("baselined");
}
