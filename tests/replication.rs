//! `pgconvoy upgrade` on real replicating servers, black-box: native logical
//! replication (a publication on the master, a subscription on each of two
//! replicas) and a physical hot standby (`pg_basebackup -R`). Rows inserted on
//! the master while patches run must keep arriving on the replicas; a patch
//! applied in the wrong order, or a subscription that is already failing,
//! stops the run with the subscription and node named.

mod common;
use common::{strings, wait_for};

use std::fs::File;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{unique_db, Fixture};
use pgconvoy::localpg::{LocalServer, PgBinaries, ServerOptions};

/// Settings for many logical subscriptions at once (every test has two).
fn logical_options() -> ServerOptions {
    ServerOptions::default()
        .setting("max_logical_replication_workers", "16")
        .setting("max_worker_processes", "40")
        .setting("max_replication_slots", "40")
        .setting("max_wal_senders", "40")
        .setting("max_sync_workers_per_subscription", "2")
        .setting("wal_retrieve_retry_interval", "'500ms'")
}

/// Three servers shared by the logical-replication tests of this binary
/// (server 0 holds the masters, servers 1 and 2 the subscribers); never
/// dropped: the harness's watchdogs stop them when the process exits.
fn servers() -> &'static [LocalServer] {
    static SERVERS: OnceLock<Vec<LocalServer>> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let bins = PgBinaries::locate().expect("PostgreSQL server binaries");
        let opts = logical_options();
        std::thread::scope(|s| {
            let starting: Vec<_> = (0..3)
                .map(|_| s.spawn(|| LocalServer::start(&bins, &opts)))
                .collect();
            starting
                .into_iter()
                .map(|h| {
                    h.join()
                        .expect("server start thread")
                        .expect("start server")
                })
                .collect()
        })
    })
}

/// The last `n` lines of a server's log that report an error (the log is
/// gone once the test process exits, so failures quote it).
fn log_errors(server: &LocalServer, n: usize) -> String {
    let text = std::fs::read_to_string(server.log_path()).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| ["ERROR", "FATAL", "CONTEXT"].iter().any(|w| l.contains(w)))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The lines of a run's stderr that report the error.
fn error_lines(r: &common::cli::Run) -> String {
    r.stderr()
        .lines()
        .filter(|l| l.contains("error"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `replication: logical` with a timeout that keeps a stuck test short.
const LOGICAL: &str = "replication: logical\nreplication_timeout: 15s\n";

/// One test's logically replicated cluster: database `db` on each of the three
/// shared servers, node0 (server 0) the master, node1 and node2 its
/// subscribers once [`LogicalCluster::subscribe`] ran. Dropping it drops the
/// subscriptions, which frees their slots on the master (also when a test fails).
struct LogicalCluster {
    f: Fixture,
    /// Subscriptions created so far: (replica node, subscription name).
    subs: Vec<(usize, String)>,
}

impl LogicalCluster {
    /// Creates the database on the three servers and applies `baseline` as the
    /// `direct` patch 1-0-0 with `replication: logical` — before any
    /// subscription exists, which the coordinator must handle too.
    fn new(baseline: &str) -> LogicalCluster {
        let db = unique_db("repl");
        let dsns = servers()
            .iter()
            .map(|s| {
                s.create_database(&db).expect("create database");
                s.dsn(&db)
            })
            .collect();
        let f = Fixture::with_dsns(db, dsns);
        f.write_config(LOGICAL);
        f.patch("patch-1-0-0-direct.sql", baseline);
        f.run(&["upgrade"])
            .expect(0)
            .says("subscriptions healthy and caught up");
        for n in 0..3 {
            assert_eq!(
                f.ledger(n),
                strings(&["1-0-0:direct:done"]),
                "baseline ledger of node{n}"
            );
        }
        LogicalCluster {
            f,
            subs: Vec::new(),
        }
    }

    fn db(&self) -> &str {
        &self.f.db
    }

    fn publication(&self) -> String {
        format!("pub_{}", self.db())
    }

    fn subscription(&self, node: usize) -> String {
        format!("sub_{}_node{node}", self.db())
    }

    /// `CREATE PUBLICATION pub_<db> FOR TABLE items` on the master (never FOR
    /// ALL TABLES: that would replicate the master's ledger into the
    /// replicas' own ledgers), a subscription to it on node1 and node2, and
    /// waits until both copied the table and their apply workers run.
    fn subscribe(&mut self) {
        let master = &servers()[0];
        self.f.psql(
            0,
            &format!("CREATE PUBLICATION {} FOR TABLE items", self.publication()),
        );
        for node in 1..3 {
            let sub = self.subscription(node);
            self.f.psql(
                node,
                &format!(
                    "CREATE SUBSCRIPTION {sub} CONNECTION 'host=127.0.0.1 port={} dbname={} user=postgres' PUBLICATION {}",
                    master.port(),
                    self.db(),
                    self.publication()
                ),
            );
            self.subs.push((node, sub));
        }
        for node in 1..3 {
            let sub = self.subscription(node);
            let synced = wait_for(20, || {
                self.f.psql(
                    node,
                    &format!(
                        "SELECT (SELECT count(*) FROM pg_subscription_rel sr \
                                   JOIN pg_subscription s ON s.oid = sr.srsubid \
                                  WHERE s.subname = '{sub}' AND sr.srsubstate = 'r') > 0 \
                            AND (SELECT count(*) FROM pg_subscription_rel sr \
                                   JOIN pg_subscription s ON s.oid = sr.srsubid \
                                  WHERE s.subname = '{sub}' AND sr.srsubstate <> 'r') = 0"
                    ),
                ) == "t"
                    && self.worker_running(node)
            });
            assert!(
                synced,
                "initial sync of {sub} on node{node} did not finish: {}",
                self.f.psql(
                    node,
                    "SELECT string_agg(srrelid::regclass || '=' || srsubstate, ', ') FROM pg_subscription_rel"
                )
            );
        }
    }

    /// Whether the node's subscription has a running apply worker.
    fn worker_running(&self, node: usize) -> bool {
        self.f.psql(
            node,
            &format!(
                "SELECT count(*) FROM pg_stat_subscription \
                  WHERE subname = '{}' AND relid IS NULL AND pid IS NOT NULL",
                self.subscription(node)
            ),
        ) == "1"
    }

    /// `pg_stat_subscription_stats.apply_error_count` of the node's subscription.
    fn apply_errors(&self, node: usize) -> i64 {
        self.f
            .psql(
                node,
                &format!(
                    "SELECT coalesce((SELECT apply_error_count FROM pg_stat_subscription_stats \
                                       WHERE subname = '{}'), 0)",
                    self.subscription(node)
                ),
            )
            .parse()
            .expect("apply_error_count")
    }

    /// Asserts that both subscriptions have a running worker and no apply error.
    #[track_caller]
    fn assert_healthy(&self) {
        for node in 1..3 {
            assert!(
                wait_for(5, || self.worker_running(node)),
                "no apply worker for {} on node{node}; its log:\n{}",
                self.subscription(node),
                log_errors(&servers()[node], 10)
            );
            assert_eq!(
                self.apply_errors(node),
                0,
                "apply errors on {} (node{node}); its log:\n{}",
                self.subscription(node),
                log_errors(&servers()[node], 10)
            );
        }
    }

    /// Waits until `sql` returns on both replicas what it returns on the master
    /// now; panics with the three values (and the logs to look at) if not.
    #[track_caller]
    fn assert_replicas_converge(&self, sql: &str, run: &common::cli::Run) {
        let want = self.f.psql(0, sql);
        for node in 1..3 {
            let mut got = String::new();
            let same = wait_for(15, || {
                got = self.f.try_psql(node, sql).unwrap_or_else(|e| e);
                got == want
            });
            assert!(
                same,
                "node{node} did not catch up with the master for `{sql}`:\n master: {want}\n node{node}: {got}\nerrors in node{node}'s log:\n{}\n--- the run said:\n{}",
                log_errors(&servers()[node], 10),
                run.all()
            );
        }
    }

    fn column_exists(&self, node: usize, column: &str) -> bool {
        self.f.psql(
            node,
            &format!(
                "SELECT count(*) FROM pg_attribute \
                  WHERE attrelid = 'items'::regclass AND attname = '{column}' AND NOT attisdropped"
            ),
        ) == "1"
    }
}

impl Drop for LogicalCluster {
    fn drop(&mut self) {
        for (node, sub) in &self.subs {
            // Best effort: frees the slot on the master.
            let _ =
                servers()[*node].psql(&self.f.db, &format!("DROP SUBSCRIPTION IF EXISTS {sub}"));
        }
    }
}

/// A psql session inserting a row (`v` only) into `items` on the master every
/// ~30 ms until stopped.
struct Inserter {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
    errors: tempfile::NamedTempFile,
}

impl Inserter {
    fn start(dsn: &str) -> Inserter {
        let errors = tempfile::NamedTempFile::new().expect("temp file");
        let mut child: Child = Command::new("psql")
            .args(["-X", "-q", "-d", dsn])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                File::create(errors.path()).expect("stderr file"),
            ))
            .spawn()
            .expect("spawn psql");
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut stdin = child.stdin.take().expect("psql stdin");
                while !stop.load(Ordering::SeqCst) {
                    if writeln!(stdin, "INSERT INTO items (v) VALUES ('bg');").is_err()
                        || stdin.flush().is_err()
                    {
                        break;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(30));
                }
                drop(stdin);
                let _ = child.wait();
            })
        };
        Inserter {
            stop,
            sent,
            thread: Some(thread),
            errors,
        }
    }

    /// Rows sent so far.
    fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// Stops inserting, waits until psql committed what it was sent and
    /// exited; returns the number of rows sent and psql's error output.
    fn finish(&mut self) -> (usize, String) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("inserter thread");
        }
        let errors = std::fs::read_to_string(self.errors.path()).unwrap_or_default();
        (self.sent(), errors)
    }
}

impl Drop for Inserter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Starts the inserter and waits until it has sent a few rows.
fn start_inserting(c: &LogicalCluster) -> Inserter {
    let ins = Inserter::start(&c.f.dsns[0]);
    assert!(wait_for(10, || ins.sent() >= 5), "inserter did not start");
    ins
}

/// Stops the inserter; asserts it inserted during the run and never failed.
#[track_caller]
fn stop_inserting(mut ins: Inserter, sent_before_run: usize) -> usize {
    let (sent, errors) = ins.finish();
    assert!(
        sent > sent_before_run,
        "no row was inserted during the run ({sent} sent)"
    );
    assert!(errors.trim().is_empty(), "inserts failed:\n{errors}");
    sent
}

/// Count and sum of the ids: equal on two nodes when they hold the same rows.
const ROWS: &str = "SELECT count(*) || ' rows, id sum ' || coalesce(sum(id), 0) FROM items";

#[test]
fn add_column_in_default_order_keeps_replication_flowing() {
    let mut c = LogicalCluster::new("CREATE TABLE items (id serial PRIMARY KEY, v text);\n");
    c.f.psql(
        0,
        "INSERT INTO items (v) SELECT 'old' FROM generate_series(1, 10)",
    );
    c.subscribe();
    let ins = start_inserting(&c);
    let before = ins.sent();
    c.f.patch(
        "patch-1-1-0-direct.sql",
        "ALTER TABLE items ADD COLUMN note text;\n",
    );
    let r = c.f.run(&["upgrade"]);
    r.expect(0)
        .says("1-1-0")
        .says("subscriptions healthy and caught up");
    std::thread::sleep(Duration::from_millis(200));
    let sent = stop_inserting(ins, before);

    c.f.psql(
        0,
        "INSERT INTO items (v, note) SELECT 'after', 'note-' || g FROM generate_series(1, 5) g",
    );
    assert_eq!(
        c.f.psql(0, "SELECT count(*) FROM items WHERE v = 'bg'"),
        sent.to_string(),
        "every background insert landed on the master"
    );
    c.assert_replicas_converge(ROWS, &r);
    c.assert_replicas_converge(
        "SELECT string_agg(note, ',' ORDER BY id) FROM items WHERE note IS NOT NULL",
        &r,
    );
    assert_eq!(
        c.f.psql(
            1,
            "SELECT string_agg(note, ',' ORDER BY id) FROM items WHERE note IS NOT NULL"
        ),
        "note-1,note-2,note-3,note-4,note-5"
    );
    for n in 0..3 {
        assert_eq!(
            c.f.ledger(n),
            strings(&["1-0-0:direct:done", "1-1-0:direct:done"]),
            "ledger of node{n}"
        );
    }
    assert!(c.f.local_ledger().is_empty(), "{:?}", c.f.local_ledger());
    c.assert_healthy();
}

#[test]
fn drop_column_master_first_keeps_replication_flowing() {
    let mut c =
        LogicalCluster::new("CREATE TABLE items (id serial PRIMARY KEY, v text, legacy text);\n");
    c.f.psql(
        0,
        "INSERT INTO items (v, legacy) SELECT 'old', 'x' || g FROM generate_series(1, 10) g",
    );
    c.subscribe();
    let ins = start_inserting(&c);
    let before = ins.sent();
    c.f.patch(
        "patch-1-1-0-direct.sql",
        "-- drop the old column: the publisher first\n\
         -- pgconvoy: order=master-first\n\
         ALTER TABLE items DROP COLUMN legacy;\n",
    );
    let r = c.f.run(&["upgrade"]);
    r.expect(0)
        .says("subscribers applied the master's part")
        .says("subscriptions healthy and caught up");
    std::thread::sleep(Duration::from_millis(200));
    let sent = stop_inserting(ins, before);

    c.f.psql(
        0,
        "INSERT INTO items (v) SELECT 'after' FROM generate_series(1, 5)",
    );
    assert_eq!(
        c.f.psql(0, "SELECT count(*) FROM items WHERE v = 'bg'"),
        sent.to_string()
    );
    c.assert_replicas_converge(ROWS, &r);
    for n in 0..3 {
        assert!(!c.column_exists(n, "legacy"), "legacy still on node{n}");
        assert_eq!(
            c.f.ledger(n),
            strings(&["1-0-0:direct:done", "1-1-0:direct:done"]),
            "ledger of node{n}"
        );
    }
    assert_eq!(c.f.local_ledger(), strings(&["1-1-0:direct:done"]));
    c.assert_healthy();
}

#[test]
fn drop_column_in_the_wrong_order_is_detected() {
    let mut c =
        LogicalCluster::new("CREATE TABLE items (id serial PRIMARY KEY, v text, legacy text);\n");
    c.subscribe();
    let ins = start_inserting(&c);
    let before = ins.sent();
    // Default order (replicas first): the subscribers drop the column while
    // the master still sends it with every row (legacy = NULL).
    c.f.patch(
        "patch-1-1-0-direct.sql",
        "ALTER TABLE items DROP COLUMN legacy;\nSELECT pg_sleep(1);\n",
    );
    let started = Instant::now();
    let r = c.f.run(&["upgrade"]);
    let took = started.elapsed();
    stop_inserting(ins, before);
    eprintln!("--- the run took {took:?} and said:\n{}", r.all());
    r.expect(1);
    let all = r.all();
    let error = error_lines(&r);
    let named =
        (1..3).any(|n| error.contains(&c.subscription(n)) && error.contains(&format!("`node{n}`")));
    assert!(
        named && error.contains("1-1-0"),
        "the error does not name the subscription, its node and the patch:\n{all}"
    );
    assert!(
        took < Duration::from_secs(15),
        "took {took:?}: the broken subscription should be caught before replication_timeout (15s)\n{all}"
    );
    // The subscription really is broken (what the run reported).
    assert!(
        (1..3).any(|n| c.apply_errors(n) > 0),
        "no apply error on either replica"
    );
}

#[test]
fn new_table_is_published_and_its_rows_arrive() {
    let mut c = LogicalCluster::new("CREATE TABLE items (id serial PRIMARY KEY, v text);\n");
    c.subscribe();
    c.f.write_config(&format!("{LOGICAL}publication: {}\n", c.publication()));
    // Only the master has a publication, so only the master inserts the row.
    c.f.patch(
        "patch-1-1-0-direct.sql",
        "CREATE TABLE extra (id int PRIMARY KEY, v text);\n\
         INSERT INTO extra SELECT 1, 'a' WHERE EXISTS (SELECT 1 FROM pg_publication);\n",
    );
    let r = c.f.run(&["upgrade"]);
    r.expect(0)
        .says(&c.subscription(1))
        .says(&c.subscription(2))
        .says("subscriptions healthy and caught up");
    assert_eq!(
        c.f.psql(
            0,
            &format!(
                "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables \
                  WHERE pubname = '{}'",
                c.publication()
            )
        ),
        "extra,items"
    );
    let rows = "SELECT coalesce(string_agg(id || '=' || v, ',' ORDER BY id), '') FROM extra";
    assert_eq!(c.f.psql(0, rows), "1=a");
    c.assert_replicas_converge(rows, &r);
    c.f.psql(0, "INSERT INTO extra VALUES (2, 'b')");
    c.assert_replicas_converge(rows, &r);
    assert_eq!(c.f.psql(2, rows), "1=a,2=b");
    for n in 0..3 {
        assert_eq!(
            c.f.ledger(n),
            strings(&["1-0-0:direct:done", "1-1-0:direct:done"]),
            "ledger of node{n}"
        );
    }
    c.assert_healthy();
}

#[test]
fn physical_standby_waits_for_replay() {
    let bins = PgBinaries::locate().expect("PostgreSQL server binaries");
    let primary = LocalServer::start(&bins, &ServerOptions::default()).expect("start primary");
    let db = unique_db("phys");
    primary.create_database(&db).expect("create database");
    let standby =
        LocalServer::start_standby(&primary, &ServerOptions::default()).expect("start standby");
    let f = Fixture::with_dsns(db.clone(), vec![primary.dsn(&db), standby.dsn(&db)]);
    assert_eq!(f.psql(1, "SELECT pg_is_in_recovery()"), "t");
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE phys (id int, v int);\n",
    );
    f.patch(
        "patch-1-1-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY phys_v ON phys (v);\n",
    );

    // Configured as a writable replica, the standby refuses the run, which writes nothing.
    f.write_config("replication: none\n");
    f.run(&["upgrade", "--all"])
        .expect(2)
        .says("node1")
        .says("standby");
    assert_eq!(
        f.psql(
            0,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgconvoy'"
        ),
        "0"
    );
    assert!(!f.has_relation(0, "phys"));

    f.write_config("replication: physical\nreplication_timeout: 15s\n");
    let r = f.run(&["upgrade", "--all"]);
    // No polling: the run returned only once the standby had replayed it all.
    let seen = f.psql(
        1,
        "SELECT to_regclass('phys') IS NOT NULL, \
                coalesce((SELECT indisvalid FROM pg_index \
                           WHERE indexrelid = to_regclass('phys_v')), false), \
                pg_last_wal_replay_lsn()",
    );
    let primary_at = f.psql(0, "SELECT pg_current_wal_insert_lsn()");
    r.expect(0).says("standbys replayed");
    let seen: Vec<&str> = seen.split('|').collect();
    assert_eq!(
        seen[..2],
        ["t", "t"],
        "table phys and valid index phys_v not on the standby when the run returned: \
         the standby had replayed {}, the primary's WAL ends at {primary_at}; the run said:\n{}",
        seen[2],
        r.all()
    );
    assert_eq!(
        f.ledger(1),
        strings(&["1-0-0:direct:done", "1-1-0:concurrent:done"]),
        "the standby's ledger is the primary's, by WAL"
    );

    let r = f.run(&["status", "--format", "json"]);
    r.expect(0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout())
        .unwrap_or_else(|e| panic!("status json: {e}\n{}", r.stdout()));
    let nodes = v["nodes"].as_array().expect("nodes array");
    assert_eq!(nodes.len(), 2, "{v:#}");
    assert_eq!(nodes[0]["name"], "node0");
    assert_eq!(nodes[0]["in_recovery"], false, "{v:#}");
    assert_eq!(nodes[1]["name"], "node1");
    assert_eq!(nodes[1]["in_recovery"], true, "{v:#}");
    for n in nodes {
        assert_eq!(n["pending"], serde_json::json!([]), "{v:#}");
    }
    // The standby's lag is known (it has replayed all it received: 0, or a little).
    let lag = nodes[1]["replication_lag_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("no lag for the standby: {v:#}"));
    assert!(lag >= 0.0, "{v:#}");
    let prom = f.scratch.path().join("standby.prom");
    f.run(&["status", "--metrics-file", prom.to_str().unwrap()])
        .expect(0);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("pgconvoy_replication_lag_seconds{node=\"node1\"}"),
        "{text}"
    );
    drop(f);
    drop(standby);
    drop(primary);
}

#[test]
fn broken_subscription_refuses_to_start() {
    let mut c =
        LogicalCluster::new("CREATE TABLE items (id serial PRIMARY KEY, v text, legacy text);\n");
    c.subscribe();
    // node2 loses a column the master still sends: its subscription stops.
    c.f.psql(2, "ALTER TABLE items DROP COLUMN legacy");
    c.f.psql(0, "INSERT INTO items (v, legacy) VALUES ('breaks', 'x')");
    assert!(
        wait_for(15, || c.apply_errors(2) > 0),
        "the subscription on node2 did not fail; its log:\n{}",
        log_errors(&servers()[2], 10)
    );

    c.f.patch("patch-1-1-0-direct.sql", "CREATE TABLE never (id int);\n");
    let r = c.f.run(&["upgrade"]);
    eprintln!("--- the run said:\n{}", r.all());
    r.expect(1);
    let error = error_lines(&r);
    assert!(
        error.contains(&c.subscription(2)) && error.contains("`node2`"),
        "the error does not name the subscription and its node:\n{}",
        r.all()
    );
    for n in 0..3 {
        assert!(!c.f.has_relation(n, "never"), "the patch ran on node{n}");
        assert_eq!(
            c.f.ledger(n),
            strings(&["1-0-0:direct:done"]),
            "ledger of node{n}"
        );
    }
    assert!(c.f.local_ledger().is_empty());
}
