//! Shared test support: running the binary, and real PostgreSQL servers
//! started once per test binary, with fresh databases for every test.

#![allow(dead_code)]

pub mod cli;
pub mod contract;
pub mod corpus;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use pgconvoy::localpg::{LocalCluster, LocalServer, ServerOptions};

use cli::{Run, Scratch};

/// Three servers shared by every test of the binary; never dropped (the
/// harness's watchdogs stop them when the test process exits).
pub fn servers() -> &'static LocalCluster {
    static SERVERS: OnceLock<LocalCluster> = OnceLock::new();
    SERVERS
        .get_or_init(|| LocalCluster::start(3, &ServerOptions::default()).expect("start 3 servers"))
}

/// A database name no other test of this run uses.
pub fn unique_db(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One test's cluster: a fresh database on each of N servers, a scratch dir
/// with `cluster.yaml` (node0 = master, node1.. = replicas) and `patches/`.
pub struct Fixture {
    pub scratch: Scratch,
    pub db: String,
    /// DSN of each node, in order.
    pub dsns: Vec<String>,
}

impl Fixture {
    /// Nodes on the shared servers (at most 3).
    pub fn new(nodes: usize) -> Fixture {
        let db = unique_db("t");
        let s = servers();
        for server in &s.servers[..nodes] {
            server.create_database(&db).expect("create database");
        }
        let dsns = s.servers[..nodes].iter().map(|srv| srv.dsn(&db)).collect();
        Fixture::with_dsns(db, dsns)
    }

    /// Nodes at the given DSNs (e.g. a dedicated server a test stops).
    pub fn with_dsns(db: String, dsns: Vec<String>) -> Fixture {
        let f = Fixture {
            scratch: Scratch::new(),
            db,
            dsns,
        };
        f.write_config("");
        f
    }

    /// Writes `cluster.yaml`, with `extra` top-level YAML appended.
    pub fn write_config(&self, extra: &str) {
        self.scratch.write(
            "cluster.yaml",
            &pgconvoy::localpg::cluster_yaml(&self.dsns, extra),
        );
    }

    pub fn patch(&self, name: &str, sql: &str) {
        self.scratch.patch(name, sql);
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.scratch.run(args)
    }

    /// The server a node lives on (shared-server fixtures only).
    pub fn server(&self, node: usize) -> &'static LocalServer {
        &servers().servers[node]
    }

    /// Prepared transactions of the fixture's database on a node (the servers are
    /// shared by every test of a binary, so other databases' are not counted).
    pub fn prepared_xacts(&self, node: usize) -> Vec<String> {
        self.psql(
            node,
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid",
        )
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
    }

    /// Runs SQL on a node's database through psql; returns its unaligned output.
    pub fn psql(&self, node: usize, sql: &str) -> String {
        self.try_psql(node, sql).expect("psql")
    }

    pub fn try_psql(&self, node: usize, sql: &str) -> Result<String, String> {
        let out = std::process::Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.dsns[node],
                "-c",
                sql,
            ])
            .env_remove("PGPASSWORD")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `M-m-p:type:done|open` for each row of a node's main ledger, in order
    /// (empty when the ledger does not exist).
    pub fn ledger(&self, node: usize) -> Vec<String> {
        self.book(node, "revision")
    }

    /// The master's local book (its own part of concurrent patches).
    pub fn local_ledger(&self) -> Vec<String> {
        self.book(0, "revision_local")
    }

    fn book(&self, node: usize, table: &str) -> Vec<String> {
        let exists = self.psql(
            node,
            &format!("SELECT to_regclass('pgconvoy.{table}') IS NOT NULL"),
        );
        if exists != "t" {
            return Vec::new();
        }
        let out = self.psql(
            node,
            &format!(
                "SELECT major || '-' || minor || '-' || patch || ':' || patch_type || ':' || \
                 CASE WHEN end_time IS NULL THEN 'open' ELSE 'done' END \
                 FROM pgconvoy.{table} ORDER BY major, minor, patch"
            ),
        );
        out.lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Whether a relation exists on a node.
    pub fn has_relation(&self, node: usize, name: &str) -> bool {
        self.psql(node, &format!("SELECT to_regclass('{name}') IS NOT NULL")) == "t"
    }
}

/// Polls `cond` every 50 ms until it holds or `secs` seconds have passed.
pub fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Starts `pgconvoy ARGS` in the fixture's directory, output captured.
pub fn spawn(f: &Fixture, args: &[&str]) -> std::process::Child {
    cli::command(f.scratch.path(), args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn pgconvoy")
}

/// Waits for a spawned run, killing it if it outlives `secs`.
pub fn finish(mut child: std::process::Child, secs: u64) -> Run {
    let done = wait_for(secs, || child.try_wait().expect("try_wait").is_some());
    if !done {
        let _ = child.kill();
    }
    let run = Run(child.wait_with_output().expect("wait"));
    assert!(
        done,
        "pgconvoy still running after {secs}s; killed it\n{}",
        run.all()
    );
    run
}

/// Backends of pgconvoy on the node's database: `state:query` of each.
pub fn pgconvoy_backends(f: &Fixture, node: usize) -> Vec<String> {
    f.psql(
        node,
        "SELECT coalesce(state, '') || ':' || query FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'pgconvoy' \
           AND pid <> pg_backend_pid()",
    )
    .lines()
    .filter(|l| !l.is_empty())
    .map(str::to_string)
    .collect()
}

/// Whether a pgconvoy backend on the node is running `pg_sleep`.
pub fn pgconvoy_sleeping(f: &Fixture, node: usize) -> bool {
    f.psql(
        node,
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'pgconvoy' \
           AND state = 'active' AND query ILIKE '%pg_sleep%'",
    ) != "0"
}

/// Whether the index exists on the node and is valid.
pub fn index_valid(f: &Fixture, node: usize, index: &str) -> bool {
    f.psql(
        node,
        &format!(
            "SELECT coalesce((SELECT indisvalid FROM pg_index \
             WHERE indexrelid = to_regclass('{index}')), false)"
        ),
    ) == "t"
}

pub fn has_pgconvoy_schema(f: &Fixture, node: usize) -> bool {
    f.psql(
        node,
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgconvoy'",
    ) != "0"
}

/// `start_time` of a patch's row in a node's ledger table (`revision` or `revision_local`).
pub fn start_time(f: &Fixture, node: usize, table: &str, version: (u32, u32, u32)) -> String {
    let (ma, mi, p) = version;
    f.psql(
        node,
        &format!(
            "SELECT start_time::text FROM pgconvoy.{table} \
             WHERE major = {ma} AND minor = {mi} AND patch = {p}"
        ),
    )
}

/// A session of the test's own (not pgconvoy's), kept open across calls: a lock
/// holder, a reader, a monitor. `application_name` is `pgconvoy-test`.
pub struct Session {
    pub rt: tokio::runtime::Runtime,
    pub client: tokio_postgres::Client,
}

impl Session {
    pub fn connect(dsn: &str) -> Session {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (client, conn) = rt
            .block_on(tokio_postgres::connect(
                &format!("{dsn} application_name=pgconvoy-test"),
                tokio_postgres::NoTls,
            ))
            .expect("connect");
        rt.spawn(conn);
        Session { rt, client }
    }

    pub fn exec(&self, sql: &str) {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// The first column of the first row, as text.
    pub fn value(&self, sql: &str) -> String {
        let msgs = self
            .rt
            .block_on(self.client.simple_query(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        msgs.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some(r.get(0).unwrap_or("").to_string())
                }
                _ => None,
            })
            .unwrap_or_default()
    }
}
