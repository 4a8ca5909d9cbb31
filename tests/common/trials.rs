//! The fault trials' shared ground (`tests/fault_trials.rs`, `tests/campaign/`): a patch
//! set of mixed types whose bodies leave a marker and an effect on each node, seeded
//! randomness, the trials' own connections, and the ledger/effect invariants read off
//! the nodes.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgconvoy::localpg::LocalServer;

use crate::common::{self, Fixture};

// --- the patch set --------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Std,
    Direct,
    Concurrent,
}

pub struct PatchSpec {
    pub version: &'static str,
    pub kind: Kind,
    pub body: &'static str,
    /// A boolean SQL expression, true on a node where the patch's effect exists
    /// (never fails, whatever the state of the node).
    pub effect: &'static str,
}

impl PatchSpec {
    pub fn file(&self) -> String {
        let kind = match self.kind {
            Kind::Std => "std",
            Kind::Direct => "direct",
            Kind::Concurrent => "concurrent",
        };
        format!("patch-{}-{kind}.sql", self.version)
    }

    /// Whether the body inserts a marker into `body_runs` (transactional types).
    pub fn marks(&self) -> bool {
        self.kind != Kind::Concurrent
    }

    /// Whether node `n` runs the body.
    pub fn runs_on(&self, n: usize) -> bool {
        n == 0 || self.kind != Kind::Std
    }
}

/// Mixed groups — direct ×2, std ×2, concurrent ×2, direct, std, concurrent, and a
/// master-first direct — with short sleeps so that kills land mid-patch. Transactional bodies record a marker
/// in `body_runs` (created by the first patch) in the same transaction as the rest.
pub const PATCHES: &[PatchSpec] = &[
    PatchSpec {
        version: "1-0-0",
        kind: Kind::Direct,
        body: "CREATE TABLE body_runs (version text, node text);\n\
               CREATE TABLE items (id int, a int, b int);\n\
               INSERT INTO items SELECT g, g % 97, g % 89 FROM generate_series(1, 2000) g;\n\
               INSERT INTO body_runs VALUES ('1-0-0', current_setting('trial.node'));\n\
               SELECT pg_sleep(0.05);\n",
        effect: "to_regclass('items') IS NOT NULL AND to_regclass('body_runs') IS NOT NULL",
    },
    PatchSpec {
        version: "1-1-0",
        kind: Kind::Direct,
        body: "CREATE TABLE d1 (id int);\n\
               INSERT INTO body_runs VALUES ('1-1-0', current_setting('trial.node'));\n\
               SELECT pg_sleep(0.1);\n",
        effect: "to_regclass('d1') IS NOT NULL",
    },
    PatchSpec {
        version: "1-2-0",
        kind: Kind::Std,
        body: "CREATE TABLE s1 (id int);\n\
               INSERT INTO body_runs VALUES ('1-2-0', current_setting('trial.node'));\n\
               SELECT pg_sleep(0.1);\n",
        effect: "to_regclass('s1') IS NOT NULL",
    },
    PatchSpec {
        version: "1-3-0",
        kind: Kind::Std,
        body: "ALTER TABLE items ADD COLUMN c int;\n\
               UPDATE items SET c = a;\n\
               INSERT INTO body_runs VALUES ('1-3-0', current_setting('trial.node'));\n",
        effect: "EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass('items') \
                 AND attname = 'c' AND NOT attisdropped)",
    },
    PatchSpec {
        version: "1-4-0",
        kind: Kind::Concurrent,
        body: "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_a ON items (a);\n\
               SELECT pg_sleep(0.1);\n\
               CREATE INDEX CONCURRENTLY IF NOT EXISTS items_b ON items (b);\n",
        effect: "coalesce((SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('items_a')), false) \
                 AND coalesce((SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('items_b')), false)",
    },
    PatchSpec {
        version: "1-5-0",
        kind: Kind::Concurrent,
        body: "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS items_id ON items (id);\n",
        effect: "coalesce((SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('items_id')), false)",
    },
    PatchSpec {
        version: "1-6-0",
        kind: Kind::Direct,
        body: "CREATE TABLE d2 (id int, gone int);\n\
               INSERT INTO body_runs VALUES ('1-6-0', current_setting('trial.node'));\n\
               SELECT pg_sleep(0.05);\n",
        effect: "to_regclass('d2') IS NOT NULL",
    },
    PatchSpec {
        version: "1-7-0",
        kind: Kind::Std,
        body: "CREATE TABLE s2 (id int);\n\
               INSERT INTO body_runs VALUES ('1-7-0', current_setting('trial.node'));\n",
        effect: "to_regclass('s2') IS NOT NULL",
    },
    PatchSpec {
        version: "1-8-0",
        kind: Kind::Concurrent,
        body: "CREATE INDEX CONCURRENTLY IF NOT EXISTS d2_id ON d2 (id);\n",
        effect: "coalesce((SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('d2_id')), false)",
    },
    PatchSpec {
        version: "1-9-0",
        kind: Kind::Direct,
        // Destructive, so master first: the master commits its part on its own (its
        // local book), subscribers catch up past it, then the replicas change.
        body: "-- pgconvoy: order=master-first\n\
               ALTER TABLE d2 DROP COLUMN gone;\n\
               INSERT INTO body_runs VALUES ('1-9-0', current_setting('trial.node'));\n\
               SELECT pg_sleep(0.05);\n",
        effect: "to_regclass('d2') IS NOT NULL AND NOT EXISTS (SELECT FROM pg_attribute \
                 WHERE attrelid = to_regclass('d2') AND attname = 'gone' AND NOT attisdropped)",
    },
];

pub const NODES: usize = 3;

// --- randomness -----------------------------------------------------------------------

/// xorshift64*: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so that neighbouring seeds diverge at once.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn env_seed() -> u64 {
    match std::env::var("PGCONVOY_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("PGCONVOY_SEED={s:?}: {e}"))
        }
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

pub fn env_trials() -> u64 {
    std::env::var("PGCONVOY_TRIALS")
        .ok()
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|e| panic!("PGCONVOY_TRIALS={s:?}: {e}"))
        })
        .unwrap_or(50)
}

// --- talking to the nodes -------------------------------------------------------------

/// The test's own connections (not pgconvoy's), on a small runtime.
pub struct Pg {
    pub rt: tokio::runtime::Runtime,
}

impl Pg {
    pub fn new() -> Pg {
        Pg {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("tokio runtime"),
        }
    }

    pub fn connect(&self, dsn: &str) -> tokio_postgres::Client {
        let (client, conn) = self
            .rt
            .block_on(tokio_postgres::connect(
                &format!("{dsn} application_name=fault-trials"),
                tokio_postgres::NoTls,
            ))
            .unwrap_or_else(|e| panic!("connect {dsn}: {e:?}"));
        self.rt.spawn(conn);
        client
    }

    /// Rows of a query, every value as text.
    pub fn rows(&self, c: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
        let msgs = self
            .rt
            .block_on(c.simple_query(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        msgs.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect()
    }

    pub fn value(&self, c: &tokio_postgres::Client, sql: &str) -> String {
        self.rows(c, sql)
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default()
    }
}

/// A fresh cluster for one trial: a new database on each server (`admins` hold a
/// connection to each server's `postgres` database, `servers` are the same servers),
/// each knowing its node name (`trial.node`, for the markers), and the patch directory
/// holding `patches`.
pub fn new_cluster(
    pg: &Pg,
    admins: &[tokio_postgres::Client],
    servers: &[&LocalServer],
    patches: &[PatchSpec],
    tag: &str,
) -> Fixture {
    let db = common::unique_db(tag);
    for (n, admin) in admins.iter().enumerate() {
        pg.rows(admin, &format!("CREATE DATABASE {db}"));
        pg.rows(
            admin,
            &format!("ALTER DATABASE {db} SET trial.node = 'node{n}'"),
        );
    }
    let dsns = servers.iter().map(|s| s.dsn(&db)).collect();
    let f = Fixture::with_dsns(db, dsns);
    for p in patches {
        f.patch(&p.file(), p.body);
    }
    f
}

/// A connection to each server's `postgres` database.
pub fn admins(pg: &Pg, servers: &[&LocalServer]) -> Vec<tokio_postgres::Client> {
    servers
        .iter()
        .map(|s| pg.connect(&s.dsn("postgres")))
        .collect()
}

// --- what the nodes hold --------------------------------------------------------------

#[derive(Debug, Default)]
pub struct NodeState {
    /// Main ledger: version → done (false: open row).
    pub main: BTreeMap<String, bool>,
    /// The master's local book (concurrent patches' master part).
    pub local: BTreeMap<String, bool>,
    /// Markers in `body_runs`: version → count.
    pub markers: BTreeMap<String, i64>,
    /// Markers naming another node than this one (must be none).
    pub foreign_markers: i64,
    /// Each patch's effect on this node, by version.
    pub effects: BTreeMap<String, bool>,
}

pub const LEDGER_ROWS: &str = "major || '-' || minor || '-' || patch, (end_time IS NOT NULL)::text";

pub fn read_book(pg: &Pg, c: &tokio_postgres::Client, table: &str) -> BTreeMap<String, bool> {
    if pg.value(c, &format!("SELECT to_regclass('{table}') IS NOT NULL")) != "t" {
        return BTreeMap::new();
    }
    pg.rows(c, &format!("SELECT {LEDGER_ROWS} FROM {table}"))
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].as_deref() == Some("true"),
            )
        })
        .collect()
}

pub fn read_node(pg: &Pg, c: &tokio_postgres::Client, n: usize) -> NodeState {
    let mut s = NodeState {
        main: read_book(pg, c, "pgconvoy.revision"),
        local: read_book(pg, c, "pgconvoy.revision_local"),
        ..NodeState::default()
    };
    if pg.value(c, "SELECT to_regclass('body_runs') IS NOT NULL") == "t" {
        for r in pg.rows(
            c,
            "SELECT version, count(*) FROM body_runs GROUP BY version",
        ) {
            s.markers.insert(
                r[0].clone().unwrap_or_default(),
                r[1].as_deref().unwrap_or("0").parse().unwrap(),
            );
        }
        s.foreign_markers = pg
            .value(
                c,
                &format!("SELECT count(*) FROM body_runs WHERE node IS DISTINCT FROM 'node{n}'"),
            )
            .parse()
            .unwrap();
    }
    let cols: Vec<String> = PATCHES
        .iter()
        .map(|p| format!("({})::text", p.effect))
        .collect();
    let row = pg.rows(c, &format!("SELECT {}", cols.join(", ")));
    for (p, v) in PATCHES.iter().zip(&row[0]) {
        s.effects
            .insert(p.version.to_string(), v.as_deref() == Some("true"));
    }
    s
}

/// pgconvoy's backends on a node's database.
pub fn pgconvoy_backends(pg: &Pg, c: &tokio_postgres::Client) -> Vec<String> {
    pg.rows(
        c,
        "SELECT coalesce(state, '') || ': ' || left(query, 80) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'pgconvoy'",
    )
    .into_iter()
    .map(|r| r[0].clone().unwrap_or_default())
    .collect()
}

/// Waits until no pgconvoy backend is left on any node; what is left after `secs`.
pub fn wait_quiet(pg: &Pg, clients: &[tokio_postgres::Client], secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left: Vec<String> = clients
            .iter()
            .enumerate()
            .flat_map(|(n, c)| {
                pgconvoy_backends(pg, c)
                    .into_iter()
                    .map(move |b| format!("node{n}: {b}"))
            })
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Every violation of the ledger/effect invariants, in words (empty: all hold).
///
/// * the master has no open claim row, and what it records done is a prefix of the patches;
/// * a patch done on the master is done on every node that runs it, with its effect;
/// * a row done on any node (main or local book) has its effect on that node;
/// * a transactional body left exactly one marker where its row is done, none elsewhere
///   (at most one per version and node: no body ran twice);
/// * no std row on a replica, no open direct row anywhere.
pub fn violations(states: &[NodeState]) -> Vec<String> {
    let mut v = Vec::new();
    let master = &states[0];
    for (ver, done) in &master.main {
        if !done {
            v.push(format!(
                "node0: open claim row {ver} in the master's ledger"
            ));
        }
    }
    let mut prefix = true;
    for p in PATCHES {
        let done0 = master.main.get(p.version) == Some(&true);
        if done0 && !prefix {
            v.push(format!(
                "node0: {} done after an earlier patch that is not",
                p.version
            ));
        }
        prefix &= done0;
        if done0 {
            for n in (0..states.len()).filter(|&n| p.runs_on(n)) {
                let row_done = if n == 0 && p.kind == Kind::Concurrent {
                    states[0].local.get(p.version) == Some(&true)
                } else {
                    states[n].main.get(p.version) == Some(&true)
                };
                if !row_done {
                    v.push(format!(
                        "{} is done on the master but not finished on node{n}",
                        p.version
                    ));
                }
                if !states[n].effects[p.version] {
                    v.push(format!(
                        "{} is done on the master but its effect is missing on node{n}",
                        p.version
                    ));
                }
            }
        }
    }
    for (n, s) in states.iter().enumerate() {
        for (book, rows) in [("main", &s.main), ("local", &s.local)] {
            for (ver, done) in rows {
                let Some(p) = PATCHES.iter().find(|p| p.version == ver) else {
                    v.push(format!("node{n}: {book} row for unknown version {ver}"));
                    continue;
                };
                if *done && !s.effects[p.version] {
                    v.push(format!(
                        "node{n}: {ver} recorded done ({book}) but its effect is missing"
                    ));
                }
                if n > 0 && p.kind == Kind::Std {
                    v.push(format!("node{n}: std patch {ver} in a replica's ledger"));
                }
                if !done && p.kind == Kind::Direct {
                    v.push(format!("node{n}: open row for direct patch {ver}"));
                }
            }
        }
        if s.foreign_markers != 0 {
            v.push(format!(
                "node{n}: {} marker(s) naming another node",
                s.foreign_markers
            ));
        }
        for (ver, count) in &s.markers {
            if *count > 1 {
                v.push(format!("node{n}: the body of {ver} ran {count} times"));
            }
            match PATCHES.iter().find(|p| p.version == ver) {
                Some(p) if p.marks() => {}
                _ => v.push(format!("node{n}: unexpected marker for {ver}")),
            }
        }
        for p in PATCHES.iter().filter(|p| p.marks()) {
            let count = s.markers.get(p.version).copied().unwrap_or(0);
            // A master-first patch's master part is done once its local row is, claim
            // stamped or not.
            let done = p.runs_on(n)
                && (s.main.get(p.version) == Some(&true)
                    || (n == 0 && s.local.get(p.version) == Some(&true)));
            if count != i64::from(done) {
                v.push(format!(
                    "node{n}: {} has {count} marker(s) but its row is {}",
                    p.version,
                    if done { "done" } else { "not done" }
                ));
            }
        }
    }
    v
}

/// The state once a run of `patches` completed: everything done everywhere, one marker
/// each.
pub fn completion_violations(states: &[NodeState], patches: &[PatchSpec]) -> Vec<String> {
    let mut v = violations(states);
    for p in patches {
        for (n, s) in states.iter().enumerate() {
            if !p.runs_on(n) {
                continue;
            }
            if s.main.get(p.version) != Some(&true) {
                v.push(format!(
                    "node{n}: {} not done after a complete run",
                    p.version
                ));
            }
            if p.marks() && s.markers.get(p.version).copied().unwrap_or(0) != 1 {
                v.push(format!(
                    "node{n}: {} has {} marker(s) after a complete run, not 1",
                    p.version,
                    s.markers.get(p.version).copied().unwrap_or(0)
                ));
            }
            if !s.effects[p.version] {
                v.push(format!(
                    "node{n}: {} has no effect after a complete run",
                    p.version
                ));
            }
        }
    }
    for ver in states[0].local.keys() {
        if states[0].local.get(ver) != Some(&true) {
            v.push(format!("node0: local row {ver} still open"));
        }
    }
    v
}

/// `status --format json` after a complete run: nothing pending, unfinished or
/// prepared on any node.
pub fn status_violations(f: &Fixture) -> Vec<String> {
    let run = f.run(&["status", "--format", "json"]);
    let mut v = Vec::new();
    if run.code() != 0 {
        v.push(format!("status exited {}: {}", run.code(), run.all()));
    }
    let json: serde_json::Value = match serde_json::from_str(&run.stdout()) {
        Ok(j) => j,
        Err(e) => {
            v.push(format!("status --format json: {e}: {}", run.all()));
            return v;
        }
    };
    for node in json["nodes"].as_array().into_iter().flatten() {
        for field in ["pending", "unfinished", "prepared", "drift"] {
            if node[field] != serde_json::json!([]) {
                v.push(format!(
                    "status: node {} has {field} {}",
                    node["name"], node[field]
                ));
            }
        }
    }
    v
}

pub fn states(pg: &Pg, clients: &[tokio_postgres::Client]) -> Vec<NodeState> {
    clients
        .iter()
        .enumerate()
        .map(|(n, c)| read_node(pg, c, n))
        .collect()
}

pub fn dump(states: &[NodeState]) -> String {
    states
        .iter()
        .enumerate()
        .map(|(n, s)| {
            format!(
                "node{n}: main {:?} local {:?} markers {:?} effects {:?}",
                s.main, s.local, s.markers, s.effects
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
