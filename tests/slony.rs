//! Slony-I clusters, black-box: three PostgreSQL servers started once for this binary, a
//! fresh Slony-I 2.2 cluster (its own database and cluster name, slon daemons as watched
//! children) per test.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{strings, unique_db, wait_for, Fixture};
use pgconvoy::localpg::slony::{slony_pg_binaries, SlonyCluster, SlonySpec};
use pgconvoy::localpg::{LocalServer, ServerOptions};

/// Three servers from the PostgreSQL version that has Slony-I's module; never dropped (the
/// harness's watchdogs stop them when the process exits).
fn servers() -> Vec<&'static LocalServer> {
    static SERVERS: OnceLock<Vec<LocalServer>> = OnceLock::new();
    SERVERS
        .get_or_init(|| {
            let bins = slony_pg_binaries().expect("PostgreSQL with Slony-I");
            let opts = ServerOptions::default();
            std::thread::scope(|s| {
                let starting: Vec<_> = (0..3)
                    .map(|_| s.spawn(|| LocalServer::start(&bins, &opts)))
                    .collect();
                starting
                    .into_iter()
                    .map(|h| h.join().expect("start thread").expect("start server"))
                    .collect()
            })
        })
        .iter()
        .collect()
}

const BASE_SCHEMA: &str = "CREATE TABLE public.item (id int PRIMARY KEY, name text NOT NULL);";

/// A fresh 3-node Slony cluster replicating `public.item` in set 1.
fn slony_cluster() -> SlonyCluster<'static> {
    let db = unique_db("sl");
    let mut spec = SlonySpec::new(&format!("c{}", db.trim_start_matches("sl_")), &db);
    spec.schema_sql = BASE_SCHEMA.into();
    spec.tables = vec!["public.item".into()];
    let c = SlonyCluster::create(&servers(), spec).expect("slony cluster");
    eprintln!(
        "slony cluster {} up in {:?}: {:?}",
        c.name(),
        c.bring_up,
        c.phases
    );
    c
}

#[test]
fn lab_cluster_replicates_and_stops_its_daemons() {
    let mut c = slony_cluster();
    c.psql(0, "INSERT INTO public.item VALUES (1, 'one')")
        .unwrap();
    for i in 1..3 {
        assert!(
            wait_for(30, || c
                .psql(i, "SELECT count(*) FROM public.item")
                .unwrap()
                == "1"),
            "row reached node {}",
            i + 1
        );
    }
    let seq = c.sync_and_wait().unwrap();
    assert!(seq > 0);

    // A stopped slon leaves no connection behind; a restarted one catches up.
    c.stop_slon(2);
    assert!(!c.slon_running(2));
    assert!(wait_for(10, || {
        c.psql(
            2,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'slon.local_listen' \
             AND datname = current_database()",
        )
        .unwrap()
            == "0"
    }));
    c.psql(0, "INSERT INTO public.item VALUES (2, 'two')")
        .unwrap();
    let t = Instant::now();
    c.start_slon(2).unwrap();
    assert!(wait_for(30, || c
        .psql(2, "SELECT count(*) FROM public.item")
        .unwrap()
        == "2"));
    eprintln!("restarted slon caught up in {:?}", t.elapsed());

    let db = c.db().to_string();
    drop(c);
    // Dropping the cluster stops every slon: no session of it is left on any server.
    let sessions = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'slon.%' AND datname = '{db}'"
    );
    for (i, s) in servers().iter().enumerate() {
        assert!(
            wait_for(10, || s.psql("postgres", &sessions).unwrap() == "0"),
            "slon sessions left on server {i}"
        );
    }
}

/// `cluster.yaml` for the lab cluster `c` (node0 the origin), with `extra` appended.
fn slony_yaml(c: &SlonyCluster<'_>, extra: &str) -> String {
    format!(
        "patches: patches\nreplication: slony\nreplication_timeout: 30s\n\
         slony:\n  cluster: {}\n  set: 1\n  nodes: {{node0: 1, node1: 2, node2: 3}}\n\
         master:\n  name: node0\n  dsn: \"{}\"\nreplicas:\n  - name: node1\n    dsn: \"{}\"\n  - name: node2\n    dsn: \"{}\"\n{extra}",
        c.name(),
        c.dsn(0),
        c.dsn(1),
        c.dsn(2)
    )
}

/// The library's Slony steps on a real cluster, without the coordinator around them:
/// EXECUTE SCRIPT records the patch on every node with its body, a second script of the same
/// patch is not run, new tables join the set, the preflight sees a stopped slon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_execute_confirm_join_and_preflight() {
    use pgconvoy::config::Config;
    use pgconvoy::db::cluster::Cluster;
    use pgconvoy::db::ledger::Ledger;
    use pgconvoy::replication::slony::ops::{views, Executed, SlonyOps};
    use pgconvoy::replication::slony::preflight::{assess, Gravity};

    let mut c = tokio::task::block_in_place(slony_cluster);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("patches")).unwrap();
    std::fs::write(
        dir.path().join("patches/patch-1-0-0-std.sql"),
        "CREATE TABLE public.widget (id serial PRIMARY KEY, name text);\n\
         INSERT INTO public.widget (name) VALUES ('first');\n\
         CREATE TABLE public.loose (x int);\n",
    )
    .unwrap();
    let path = dir.path().join("cluster.yaml");
    std::fs::write(&path, slony_yaml(&c, "")).unwrap();
    let config = Config::load(&path, &Default::default()).unwrap();
    let patches = pgconvoy::patches::discover::discover(&config.patches, false).unwrap();
    let patch = &patches.patches[0];
    let cluster = Cluster::new(&config);
    let ledger = Ledger::new(config.ledger.clone());
    let slony = config.slony.as_ref().unwrap();
    let ops = SlonyOps::new(&config, slony, &cluster, &ledger, "pgconvoy test");

    let (nodes, origin) = views(slony, &cluster, &ledger).await.unwrap();
    assert_eq!(
        assess(slony, &nodes, origin.as_ref(), config.lag_threshold),
        vec![]
    );

    ops.prepare().await.unwrap();
    let t = std::time::Instant::now();
    let executed = ops.execute(patch).await.unwrap();
    assert!(matches!(executed, Executed::Now(_)), "{executed:?}");
    let waited = ops.confirm(patch).await.unwrap();
    eprintln!(
        "EXECUTE SCRIPT {executed:?}, confirmed by every node after {waited:?} (total {:?})",
        t.elapsed()
    );
    for i in 0..3 {
        assert_eq!(
            c.psql(i, "SELECT name FROM public.widget").unwrap(),
            "first"
        );
        let book = if i == 0 { "revision_local" } else { "revision" };
        assert_eq!(
            c.psql(
                i,
                &format!("SELECT patch_type || ':' || (end_time IS NOT NULL) FROM pgconvoy.{book}")
            )
            .unwrap(),
            "std:true",
            "ledger of node{i}"
        );
    }
    // The same patch again: the origin has it, so no second body.
    assert_eq!(ops.execute(patch).await.unwrap(), Executed::Earlier);
    assert_eq!(
        c.psql(0, "SELECT count(*) FROM public.widget").unwrap(),
        "1"
    );

    let plan = ops.join_plan().await.unwrap();
    assert_eq!(plan.sets.len(), 1, "{plan:?}");
    let t = std::time::Instant::now();
    let joined = ops.join().await.unwrap();
    eprintln!("join: {:?} in {:?}", joined.joined, t.elapsed());
    assert!(joined.joined[0].contains("public.widget"), "{joined:?}");
    assert!(
        joined.joined[0].contains("public.widget_id_seq"),
        "{joined:?}"
    );
    assert!(joined.skipped[0].contains("public.loose"), "{joined:?}");
    assert!(ops.join_plan().await.unwrap().is_empty());
    assert_eq!(
        c.psql(0, &format!("SELECT count(*) FROM {}.sl_set", c.schema()))
            .unwrap(),
        "1"
    );
    c.psql(0, "INSERT INTO public.widget (name) VALUES ('second')")
        .unwrap();
    for i in 1..3 {
        assert!(
            wait_for(30, || c
                .psql(i, "SELECT count(*) FROM public.widget")
                .unwrap()
                == "2"),
            "row inserted on the origin reached node{i}"
        );
    }

    tokio::task::block_in_place(|| c.stop_slon(2));
    // The stopped slon's backend goes once its server notices the closed socket (a moment
    // on a loaded machine): the preflight sees it within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (nodes, origin) = views(slony, &cluster, &ledger).await.unwrap();
        let f = assess(slony, &nodes, origin.as_ref(), config.lag_threshold);
        let blocked = f
            .iter()
            .any(|f| f.gravity == Gravity::Blocking && f.node.as_deref() == Some("node2"));
        if blocked {
            break;
        }
        assert!(Instant::now() < deadline, "{f:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Black-box: the binary on a real 3-node Slony-I cluster.

/// One test's Slony cluster and a scratch dir whose `cluster.yaml` describes it.
struct SlonyFixture {
    c: SlonyCluster<'static>,
    f: Fixture,
}

/// `replication: slony` with the block for `c`, a short replication timeout, and `extra`.
fn slony_block(c: &SlonyCluster<'_>, extra: &str) -> String {
    format!(
        "replication: slony\nreplication_timeout: 30s\n\
         slony:\n  cluster: {}\n  set: 1\n  nodes: {{node0: 1, node1: 2, node2: 3}}\n{extra}",
        c.name()
    )
}

fn slony_fixture(extra: &str) -> SlonyFixture {
    let c = slony_cluster();
    let f = Fixture::with_dsns(c.db().to_string(), (0..3).map(|i| c.dsn(i)).collect());
    f.write_config(&slony_block(&c, extra));
    SlonyFixture { c, f }
}

impl SlonyFixture {
    /// Waits until a query gives `want` on every node.
    fn everywhere(&self, sql: &str, want: &str) {
        for i in 0..3 {
            assert!(
                wait_for(30, || self.f.psql(i, sql) == want),
                "node{i}: `{sql}` gave `{}`, want `{want}`",
                self.f.psql(i, sql)
            );
        }
    }
}

#[test]
fn std_patches_create_fill_and_replicate_a_table() {
    let s = slony_fixture("");
    let f = &s.f;
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE public.widget (id int PRIMARY KEY, name text NOT NULL);\n",
    );
    f.patch(
        "patch-1-1-0-std.sql",
        "INSERT INTO public.widget VALUES (1, 'first');\n",
    );
    let r = f.run(&["upgrade", "--all"]);
    r.expect(0).says("widget");
    eprintln!("{}", r.all());
    for i in 0..3 {
        assert_eq!(
            f.psql(i, "SELECT name FROM public.widget"),
            "first",
            "node{i}"
        );
    }
    // The new table joined the set: a row written on the origin afterwards replicates.
    f.psql(0, "INSERT INTO public.widget VALUES (2, 'second')");
    s.everywhere("SELECT count(*) FROM public.widget", "2");
    // Every node's ledger records both std patches; the origin's own record is its local book.
    assert_eq!(f.ledger(0), strings(&["1-0-0:std:done", "1-1-0:std:done"]));
    assert_eq!(
        f.local_ledger(),
        strings(&["1-0-0:std:done", "1-1-0:std:done"])
    );
    for i in 1..3 {
        assert_eq!(
            f.ledger(i),
            strings(&["1-0-0:std:done", "1-1-0:std:done"]),
            "ledger of node{i}"
        );
    }
    let status = f.run(&["status", "--format", "json"]);
    status.expect(0);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout()).expect("status json");
    for node in doc["nodes"].as_array().expect("nodes") {
        assert_eq!(node["pending"], serde_json::json!([]), "{node}");
    }
    f.run(&["upgrade", "--all"]).expect(0).says("up to date");
}

#[test]
fn a_failing_std_patch_leaves_nothing_anywhere() {
    let s = slony_fixture("");
    let f = &s.f;
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE public.half (id int PRIMARY KEY);\nINSERT INTO public.nope VALUES (1);\n",
    );
    f.run(&["upgrade"])
        .expect(1)
        .says("1-0-0")
        .says("node0")
        .says("line 2")
        .never_says("PGRES");
    for i in 0..3 {
        assert!(!f.has_relation(i, "public.half"), "node{i}");
        assert!(
            f.ledger(i).is_empty() || f.ledger(i).iter().all(|r| !r.starts_with("1-0-0")),
            "ledger of node{i}: {:?}",
            f.ledger(i)
        );
    }
    assert!(f.local_ledger().is_empty());
    // Replication of the existing table still flows.
    f.psql(0, "INSERT INTO public.item VALUES (10, 'after')");
    s.everywhere("SELECT count(*) FROM public.item WHERE id = 10", "1");
    // Fixed, it applies.
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE public.half (id int PRIMARY KEY);\nINSERT INTO public.half VALUES (1);\n",
    );
    f.run(&["upgrade"]).expect(0);
    s.everywhere("SELECT count(*) FROM public.half", "1");
}

#[test]
fn std_add_column_replicates_rows_using_it() {
    let s = slony_fixture("");
    let f = &s.f;
    f.patch(
        "patch-1-0-0-std.sql",
        "ALTER TABLE public.item ADD COLUMN note text;\n",
    );
    f.run(&["upgrade"]).expect(0);
    s.everywhere(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'item' AND column_name = 'note'",
        "1",
    );
    f.psql(
        0,
        "INSERT INTO public.item (id, name, note) VALUES (5, 'five', 'noted')",
    );
    s.everywhere("SELECT note FROM public.item WHERE id = 5", "noted");
}

#[test]
fn direct_and_concurrent_patches_run_on_every_node() {
    let s = slony_fixture("");
    let f = &s.f;
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE public.node_cache (k text PRIMARY KEY, v text);\n",
    );
    f.patch(
        "patch-1-1-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY item_name_idx ON public.item (name);\n",
    );
    f.run(&["upgrade", "--all"]).expect(0);
    for i in 0..3 {
        assert!(f.has_relation(i, "public.node_cache"), "node{i}");
        assert!(common::index_valid(f, i, "public.item_name_idx"), "node{i}");
        assert_eq!(
            f.ledger(i),
            strings(&["1-0-0:direct:done", "1-1-0:concurrent:done"]),
            "ledger of node{i}"
        );
    }
    // Replication still flows after the index.
    f.psql(0, "INSERT INTO public.item VALUES (3, 'three')");
    s.everywhere("SELECT count(*) FROM public.item WHERE id = 3", "1");
}

#[test]
fn a_stopped_slon_blocks_the_dry_run_and_the_upgrade() {
    let mut s = slony_fixture("lag_threshold: 2s\n");
    s.f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE public.later (id int PRIMARY KEY);\n",
    );
    s.c.stop_slon(2);
    // Let the lag pass the threshold too.
    std::thread::sleep(Duration::from_secs(3));
    let f = &s.f;
    f.run(&["upgrade", "--dry-run"])
        .expect(1)
        .says("node2")
        .says("slon");
    let r = f.run(&["upgrade"]);
    assert_ne!(r.code(), 0, "{}", r.all());
    r.says("node2");
    for i in 0..3 {
        assert!(!f.has_relation(i, "public.later"), "node{i}");
        assert!(!common::has_pgconvoy_schema(f, i), "node{i} was written to");
    }
    s.c.start_slon(2).unwrap();
    let f = &s.f;
    assert!(
        wait_for(60, || f.run(&["upgrade"]).code() == 0),
        "upgrade after the slon came back"
    );
    s.everywhere("SELECT count(*) FROM public.later", "0");
}

#[test]
fn topology_that_contradicts_the_config_is_refused() {
    let s = slony_fixture("");
    let f = &s.f;
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE public.never (id int PRIMARY KEY);\n",
    );
    // node1 and node2 swapped in the config.
    f.write_config(&slony_block(&s.c, "").replace(
        "{node0: 1, node1: 2, node2: 3}",
        "{node0: 1, node1: 3, node2: 2}",
    ));
    f.run(&["upgrade", "--dry-run"]).expect(2).says("node1");
    f.run(&["upgrade"]).expect(2).says("node1");
    f.run(&["status"]).expect(2).says("node1");
    // A psql script would run std bodies outside slonik: refused before reading anything.
    f.run(&["upgrade", "--sql"]).expect(2).says("slonik");
    for i in 0..3 {
        assert!(!f.has_relation(i, "public.never"), "node{i}");
    }
}

#[test]
fn passwords_reach_slonik_only_through_a_passfile() {
    let s = slony_fixture("");
    const PW: &str = "sl0ny-pw-Zq9";
    for i in 0..3 {
        s.f.psql(
            i,
            &format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'slony_migrator') THEN \
                 CREATE ROLE slony_migrator SUPERUSER LOGIN PASSWORD '{PW}'; END IF; END $$"
            ),
        );
    }
    // A slonik that records its arguments and environment, then runs the real one.
    let log = s.f.scratch.path().join("slonik-seen.txt");
    let wrapper = s.f.scratch.write(
        "slonik-wrapper",
        &format!(
            "#!/bin/sh\necho \"argv: $*\" >> '{}'\nenv >> '{}'\nexec slonik \"$@\"\n",
            log.display(),
            log.display()
        ),
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dsns: Vec<String> = (0..3)
        .map(|i| s.c.server(i).dsn_as(s.c.db(), "slony_migrator", PW))
        .collect();
    let f = Fixture::with_dsns(s.c.db().to_string(), dsns);
    f.write_config(&slony_block(
        &s.c,
        &format!("  slonik: {}\n", wrapper.display()),
    ));
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE public.secretive (id int PRIMARY KEY);\n",
    );
    let r = f.run(&["upgrade", "--all"]);
    r.expect(0).never_says(PW);
    let seen = std::fs::read_to_string(&log).expect("the wrapper ran");
    assert!(
        seen.contains("argv: \n") || seen.contains("argv: "),
        "{seen}"
    );
    assert!(
        !seen.contains(PW),
        "password handed to slonik in the open:\n{seen}"
    );
    assert!(seen.contains("PGPASSFILE="), "{seen}");
    s.everywhere("SELECT count(*) FROM public.secretive", "0");
    f.run(&["status"]).expect(0).never_says(PW);
}

/// EXECUTE SCRIPT replays DDL and DML everywhere; DML on a table that is already in the
/// set applies once on every node (Slony does not also apply the origin's logged rows).
#[test]
fn lab_execute_script_replays_ddl_and_dml_once() {
    let c = slony_cluster();
    let t = Instant::now();
    c.slonik(
        "execute script (event node = 1, sql = 'CREATE TABLE public.extra (id int PRIMARY KEY); \
         INSERT INTO public.extra VALUES (7); INSERT INTO public.item VALUES (100, ''scripted''); \
         UPDATE public.item SET name = name || ''!'' WHERE id = 100;');\n",
    )
    .unwrap();
    let script = t.elapsed();
    c.sync_and_wait().unwrap();
    eprintln!(
        "execute script {script:?}, confirmed everywhere after {:?}",
        t.elapsed()
    );
    c.psql(0, "INSERT INTO public.item VALUES (101, 'after')")
        .unwrap();
    c.sync_and_wait().unwrap();
    for i in 0..3 {
        assert_eq!(c.psql(i, "SELECT id FROM public.extra").unwrap(), "7");
        assert_eq!(
            c.psql(
                i,
                "SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM public.item"
            )
            .unwrap(),
            "100:scripted!,101:after",
            "node{i}"
        );
    }
}

/// slonik names its sessions `slonik` (it sets application_name after connecting, over
/// PGAPPNAME); the origin's session takes pgconvoy's name back before a `std` body runs, so
/// a DBA sees whose the body is (found by the fault campaign's slony-script-kill, issue 18).
#[test]
fn the_origin_runs_a_std_body_under_pgconvoys_name() {
    let s = slony_fixture("");
    let f = &s.f;
    f.patch("patch-1-0-0-std.sql", "SELECT pg_sleep(1.5);\n");
    let child = common::spawn(f, &["upgrade"]);
    let mut seen = String::new();
    let sleeping = wait_for(60, || {
        seen = f.psql(
            0,
            "SELECT coalesce(string_agg(application_name, ','), '') FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event = 'PgSleep'",
        );
        !seen.is_empty()
    });
    let run = common::finish(child, 60);
    assert!(
        sleeping,
        "no session seen in the body's sleep:\n{}",
        run.all()
    );
    assert_eq!(
        seen, "pgconvoy",
        "the session running the body on the origin"
    );
    run.expect(0);
}

/// A small deterministic generator (xorshift), so a failing trial can be replayed with
/// `PGCONVOY_SEED`.
struct Rng(u64);

impl Rng {
    fn from_env() -> (Rng, u64) {
        let seed = std::env::var("PGCONVOY_SEED")
            .ok()
            .and_then(|s| match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            })
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
                    | 1
            });
        (Rng(seed), seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// On node `i`, in one snapshot: how many times the body of `version` ran there, and whether
/// the node's own ledger (the origin's local book, a subscriber's main book) lists it done.
fn ran_and_recorded(f: &Fixture, i: usize, version: &str) -> (u32, bool) {
    let (ma, mi, p) = {
        let v: Vec<&str> = version.split('-').collect();
        (v[0], v[1], v[2])
    };
    let book = if i == 0 { "revision_local" } else { "revision" };
    let out = f.psql(
        i,
        &format!(
            "SELECT (SELECT count(*) FROM public.body_runs WHERE version = '{version}') || ':' || \
             (to_regclass('pgconvoy.{book}') IS NOT NULL AND EXISTS (SELECT 1 FROM pgconvoy.{book} \
              WHERE major = {ma} AND minor = {mi} AND patch = {p} AND end_time IS NOT NULL))"
        ),
    );
    let (n, done) = out.split_once(':').expect("two values");
    (n.parse().expect("a count"), done == "true")
}

/// Kills the coordinator (SIGKILL) at a random moment of a `std` patch on Slony, many times:
/// the body never runs twice on a node, no node records a patch whose body did not run
/// there, the master never stamps a patch some node lacks, and a re-run completes.
/// `PGCONVOY_SLONY_TRIALS` (default 20) and `PGCONVOY_SEED` as in tests/fault_trials.rs.
#[test]
fn killing_the_coordinator_during_std_patches_on_slony() {
    let trials: u32 = std::env::var("PGCONVOY_SLONY_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let (mut rng, seed) = Rng::from_env();
    let s = slony_fixture("");
    let f = &s.f;
    // No primary key on purpose: the marker table stays out of the set, so each node's row
    // comes from the body replayed there, never from replication.
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE public.body_runs (version text NOT NULL, node int NOT NULL);\n",
    );
    f.run(&["upgrade"]).expect(0).says("no primary key");
    let cluster = s.c.name().to_string();
    let mut kills_by_outcome: std::collections::BTreeMap<&str, u32> = Default::default();
    for trial in 1..=trials {
        let version = format!("1-{trial}-0");
        let with_table = trial % 4 == 0;
        let mut body = format!(
            "INSERT INTO public.body_runs VALUES ('{version}', \"_{cluster}\".getLocalNodeId('_{cluster}'));\n"
        );
        if with_table {
            body.push_str(&format!(
                "CREATE TABLE public.t{trial} (id int PRIMARY KEY);\n"
            ));
        }
        body.push_str("SELECT pg_sleep(0.2);\n");
        f.patch(&format!("patch-{version}-std.sql"), &body);
        // Spread over a whole run: start-up and preflight, claim, slonik, confirmation,
        // stamp (about a second) and, with a new table, the join (a few more).
        let delay = rng.below(if with_table { 4000 } else { 1500 });
        let ctx = format!("seed {seed:#x} trial {trial} ({version}, kill after {delay}ms)");

        let mut child = common::spawn(f, &["upgrade"]);
        std::thread::sleep(Duration::from_millis(delay));
        let finished = child.try_wait().expect("try_wait").is_some();
        let _ = child.kill();
        let _ = child.wait();

        // Right after the kill, in whatever state replication is: per node, the body and
        // the node's record go together, and never twice.
        let master_done = f.ledger(0).contains(&format!("{version}:std:done"));
        let origin_done = f.local_ledger().contains(&format!("{version}:std:done"));
        let window = match (finished, origin_done, master_done) {
            (true, _, _) => "run finished before the kill",
            (false, false, _) => "killed before the script committed",
            (false, true, false) => "killed after the script committed, before the stamp",
            (false, true, true) if with_table => "killed after the stamp (join may be unfinished)",
            (false, true, true) => "killed after the stamp",
        };
        *kills_by_outcome.entry(window).or_default() += 1;
        for i in 0..3 {
            let (runs, recorded) = ran_and_recorded(f, i, &version);
            assert!(runs <= 1, "{ctx}: body ran {runs} times on node{i}");
            assert_eq!(
                runs == 1,
                recorded,
                "{ctx}: node{i} ran the body {runs} time(s) but its ledger says done={recorded}"
            );
            if master_done {
                assert_eq!(runs, 1, "{ctx}: master stamped the patch, node{i} lacks it");
            }
        }

        let r = f.run(&["upgrade", "--all"]);
        assert_eq!(r.code(), 0, "{ctx}: re-run failed\n{}", r.all());
        for i in 0..3 {
            assert_eq!(
                ran_and_recorded(f, i, &version),
                (1, true),
                "{ctx}: after the re-run, node{i}"
            );
        }
        assert!(
            f.ledger(0).contains(&format!("{version}:std:done")),
            "{ctx}: not stamped on the master after the re-run"
        );
        if with_table {
            // Joined the set: a row written on the origin reaches every node.
            f.psql(0, &format!("INSERT INTO public.t{trial} VALUES (1)"));
            s.everywhere(&format!("SELECT count(*) FROM public.t{trial}"), "1");
        }
    }
    eprintln!("seed {seed:#x}: {trials} trials, {kills_by_outcome:?}");
    // No temporary set is left behind.
    assert_eq!(
        f.psql(0, &format!("SELECT count(*) FROM \"_{cluster}\".sl_set")),
        "1"
    );
}

/// `check` (no server needed): on a Slony cluster a std table without a primary key is a
/// warning, an error under --strict; elsewhere nothing.
#[test]
fn check_flags_std_tables_without_a_primary_key() {
    let f = Fixture::with_dsns(
        "app".into(),
        vec![
            "host=127.0.0.1 port=1 dbname=app".into(),
            "host=127.0.0.1 port=2 dbname=app".into(),
        ],
    );
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE public.keyed (id int PRIMARY KEY);\nCREATE TABLE public.loose (x int);\n",
    );
    f.run(&["check"]).expect(0).never_says("primary key");
    f.write_config(
        "replication: slony\nslony:\n  cluster: convoy\n  set: 1\n  nodes: {node0: 1, node1: 2}\n",
    );
    f.run(&["check"])
        .expect(0)
        .says("warning")
        .says("public.loose")
        .says("line 2")
        .never_says("public.keyed");
    f.run(&["check", "--strict"])
        .expect(2)
        .says("error")
        .says("public.loose");
}

/// `check` (no server needed): `COPY … FROM stdin` data cannot go through slonik, so a std
/// patch holding it is an error on a Slony cluster (a `direct` one is fine).
#[test]
fn check_refuses_copy_from_stdin_in_std_patches_on_slony() {
    let f = Fixture::with_dsns(
        "app".into(),
        vec![
            "host=127.0.0.1 port=1 dbname=app".into(),
            "host=127.0.0.1 port=2 dbname=app".into(),
        ],
    );
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE public.local (x int);\nCOPY public.local (x) FROM stdin;\n1\n\\.\n",
    );
    f.patch(
        "patch-1-1-0-std.sql",
        "CREATE TABLE public.t (x int PRIMARY KEY);\nCOPY public.t (x) FROM stdin;\n1\n2\n\\.\n",
    );
    f.run(&["check"]).expect(0).never_says("slonik");
    f.write_config(
        "replication: slony\nslony:\n  cluster: convoy\n  set: 1\n  nodes: {node0: 1, node1: 2}\n",
    );
    f.run(&["check"])
        .expect(2)
        .says("patch-1-1-0-std.sql line 2")
        .says("slonik")
        .never_says("patch-1-0-0-direct.sql line");
}
