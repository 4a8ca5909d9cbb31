//! The Slony trial: a real 3-node Slony-I cluster (servers, slon daemons) built once per
//! campaign, the first time this kind is scheduled; each trial gets a ledger table of its
//! own and one to three `std` patches (markers, sometimes a new table that joins the set),
//! and the coordinator is SIGKILLed at a random moment or while the origin runs a body
//! inside `slonik EXECUTE SCRIPT`. Invariants (docs/slony.md): on each node a body ran at
//! most once and exactly when that node's own record says so; the master stamps a patch
//! only when every node has it; once a SYNC is confirmed, every node has what the origin
//! committed; after recovery every node has every patch once, no temporary set is left,
//! new tables replicate, the slons are healthy, nothing of pgconvoy's is left.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use pgconvoy::localpg::slony::{slony_pg_binaries, SlonyBinaries, SlonyCluster, SlonySpec};
use pgconvoy::localpg::{LocalServer, ServerOptions};

use crate::check;
use crate::common::{self, Fixture};
use crate::fault::{wait_run, wait_until, with_outputs, Outcome, Until};
use crate::lab::Lab;
use crate::trials::{self, Rng};

/// The campaign's Slony cluster and how long an undisturbed trial run takes on it.
struct SlonyLab {
    c: SlonyCluster<'static>,
    /// Trials run so far: names each trial's ledger and tables.
    next: u32,
    /// An undisturbed `upgrade --all` of one `std` patch.
    one: Duration,
    /// What a new table's join adds to it.
    join: Duration,
}

thread_local! {
    /// Built on first use; dropped when the campaign's thread ends, which stops the slons.
    static SLONY: RefCell<Option<Result<SlonyLab, String>>> = const { RefCell::new(None) };
}

const NODES: usize = 3;

fn build() -> Result<SlonyLab, String> {
    SlonyBinaries::locate().map_err(|e| format!("no Slony-I binaries: {e}"))?;
    let bins = slony_pg_binaries().map_err(|e| format!("no PostgreSQL with Slony-I: {e}"))?;
    let started = Instant::now();
    let opts = ServerOptions::default();
    let servers: Vec<LocalServer> = (0..NODES)
        .map(|_| LocalServer::start(&bins, &opts).map_err(|e| format!("start a server: {e}")))
        .collect::<Result<_, _>>()?;
    // The servers live as long as the process (the harness's watchdogs stop them at exit).
    let servers: &'static [LocalServer] = Vec::leak(servers);
    let refs: Vec<&'static LocalServer> = servers.iter().collect();
    let db = common::unique_db("fsl");
    let mut spec = SlonySpec::new(&format!("c{}", db.trim_start_matches("fsl_")), &db);
    // fault_runs: one row per body run, kept out of every set (no primary key), so a
    // node's rows come from the body replayed there, never from replication.
    spec.schema_sql = "CREATE TABLE public.item (id int PRIMARY KEY);\n\
                       CREATE TABLE public.fault_runs (ledger text, version text, node int);"
        .into();
    spec.tables = vec!["public.item".into()];
    let c = SlonyCluster::create(&refs, spec).map_err(|e| format!("build the cluster: {e}"))?;
    eprintln!(
        "slony cluster {} up in {:?} (servers and cluster)",
        c.name(),
        started.elapsed()
    );
    let mut lab = SlonyLab {
        c,
        next: 0,
        one: Duration::ZERO,
        join: Duration::ZERO,
    };
    // Calibration: one patch, then one with a new table (its join included), undisturbed.
    let mut took = Vec::new();
    for with_table in [false, true] {
        let t = lab.fresh(&[with_table]);
        let t0 = Instant::now();
        let run = t.f.run(&["upgrade", "--all"]);
        if run.code() != 0 {
            return Err(format!("calibration run failed:\n{}", run.all()));
        }
        took.push(t0.elapsed());
    }
    lab.one = took[0];
    lab.join = took[1].saturating_sub(took[0]);
    eprintln!(
        "an undisturbed Slony run of one std patch takes {:?}, a new table's join {:?} more; \
         random moments fall within them",
        lab.one, lab.join
    );
    Ok(lab)
}

/// One trial's ledger, patches and the tables they create.
struct TrialSet {
    f: Fixture,
    /// The trial's ledger table (`pgconvoy.NAME`), also the markers' key.
    ledger: String,
    versions: Vec<String>,
    tables: Vec<String>,
}

impl SlonyLab {
    /// A trial's patches: one per entry of `with_table` (whether it creates a table).
    fn fresh(&mut self, with_table: &[bool]) -> TrialSet {
        self.next += 1;
        let ledger = format!("fsl{}", self.next);
        let cluster = self.c.name().to_string();
        let f = Fixture::with_dsns(
            self.c.db().to_string(),
            (0..NODES).map(|i| self.c.dsn(i)).collect(),
        );
        f.write_config(&format!(
            "ledger_table: pgconvoy.{ledger}\nreplication: slony\nreplication_timeout: 30s\n\
             slony:\n  cluster: {cluster}\n  set: 1\n  nodes: {{node0: 1, node1: 2, node2: 3}}\n"
        ));
        let mut versions = Vec::new();
        let mut tables = Vec::new();
        for (i, table) in with_table.iter().enumerate() {
            let version = format!("1-{i}-0");
            let mut body = format!(
                "INSERT INTO public.fault_runs VALUES ('{ledger}', '{version}', \
                 \"_{cluster}\".getLocalNodeId('_{cluster}'));\n"
            );
            if *table {
                let t = format!("public.{ledger}_t{i}");
                body.push_str(&format!("CREATE TABLE {t} (id int PRIMARY KEY);\n"));
                tables.push(t);
            }
            body.push_str("SELECT pg_sleep(0.2);\n");
            f.patch(&format!("patch-{version}-std.sql"), &body);
            versions.push(version);
        }
        TrialSet {
            f,
            ledger,
            versions,
            tables,
        }
    }
}

pub fn trial(_lab: &mut Lab, seed: u64) -> Outcome {
    SLONY.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(build());
        }
        match slot.as_mut().expect("built") {
            Ok(s) => run_trial(s, seed),
            Err(why) => Outcome::skipped(why.clone()),
        }
    })
}

fn run_trial(s: &mut SlonyLab, seed: u64) -> Outcome {
    let mut rng = Rng::new(seed);
    let count = 1 + rng.below(3) as usize;
    let with_table: Vec<bool> = (0..count).map(|_| rng.below(3) == 0).collect();
    let during_script = rng.below(2) == 0;
    let mut full = s.one.as_millis() as u64 * count as u64;
    if with_table.contains(&true) {
        full += s.join.as_millis() as u64;
    }
    let delay = Duration::from_millis(rng.below(full.max(100) + 1));
    let t = s.fresh(&with_table);
    let plan = format!(
        "{count} std patch(es), {} with a new table, SIGKILL {}",
        with_table.iter().filter(|w| **w).count(),
        if during_script {
            "while the origin runs a body (EXECUTE SCRIPT)".to_string()
        } else {
            format!("after {} ms", delay.as_millis())
        }
    );
    let pg = trials::Pg::new();

    let started = Instant::now();
    let mut child = common::spawn(&t.f, &["upgrade", "--all"]);
    // A session (slonik's) sleeping in a body on the origin (the wait event, not the query
    // text: slonik's statement can be longer than track_activity_query_size).
    let until = if during_script {
        Until::Seen {
            dsn: &t.f.dsns[0],
            sql: "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                  AND pid <> pg_backend_pid() AND wait_event = 'PgSleep'",
        }
    } else {
        Until::Elapsed(delay)
    };
    let landed = wait_until(&pg, &mut child, started, until);
    let _ = child.kill();
    let run = wait_run(&mut child, 60);

    let mut v = Vec::new();
    let clients: Vec<_> = t.f.dsns.iter().map(|d| pg.connect(d)).collect();
    // An orphaned slonik may still commit its script: wait for pgconvoy's sessions (slonik's
    // included) to end, then for a SYNC every node confirmed, so the subscribers have all
    // the origin committed.
    let left = wait_quiet(&pg, &clients, check::SETTLE.as_secs());
    if !left.is_empty() {
        v.push(format!(
            "invariant 4: pgconvoy or slonik sessions still there {} s after the kill: {left:?}",
            check::SETTLE.as_secs()
        ));
    }
    let settled = s.c.sync_and_wait();
    if let Err(e) = &settled {
        v.push(format!("slony: no SYNC confirmed after the kill: {e}"));
    }
    v.extend(after_kill(&pg, &clients, &t, settled.is_ok()));
    let (mut stamped, mut committed) = (0, 0);
    for version in &t.versions {
        if master_claim(&pg, &clients[0], &t, version).0 {
            stamped += 1;
        } else if node_view(&pg, &clients[0], 0, &t, version).1 {
            committed += 1;
        }
    }
    let plan = format!(
        "{plan}; at the kill {stamped} stamped, {committed} script(s) committed but not stamped"
    );

    let rec = t.f.run(&["upgrade", "--all"]);
    v.extend(check::recovery_run("upgrade --all", &rec));
    v.extend(after_recovery(s, &pg, &clients, &t));
    v.extend(
        trials::status_violations(&t.f)
            .into_iter()
            .map(|x| format!("invariant 2: {x}")),
    );
    v.extend(nothing_left(&pg, &clients));
    with_outputs(&mut v, &[("the killed run".into(), run.as_ref())], &rec);
    Outcome {
        plan,
        landed,
        exits: match &run {
            Some(r) => r.code().to_string(),
            None => "hung".into(),
        },
        violations: v,
        skipped: None,
    }
}

/// On node `n`: how many times `version`'s body ran there, whether the node's own record
/// (the origin's local book, a subscriber's main book) says done, and how many open rows
/// that book has for it — read in one snapshot.
fn node_view(
    pg: &trials::Pg,
    c: &tokio_postgres::Client,
    n: usize,
    t: &TrialSet,
    version: &str,
) -> (i64, bool, i64) {
    let book = if n == 0 {
        format!("{}_local", t.ledger)
    } else {
        t.ledger.clone()
    };
    let rec = book_query(pg, c, &book, version);
    let row = pg.rows(
        c,
        &format!(
            "SELECT (SELECT count(*) FROM public.fault_runs WHERE ledger = '{l}' AND version = '{version}'), \
             {rec}",
            l = t.ledger,
        ),
    );
    let runs = row[0][0].as_deref().unwrap_or("-1").parse().unwrap_or(-1);
    let (done, open) = parse_book(row[0][1].as_deref());
    (runs, done, open)
}

/// `done:open` for a version in `pgconvoy.BOOK` (`'false:0'` when the book does not
/// exist: the query names it only then, since a missing relation fails at parse time).
fn book_query(pg: &trials::Pg, c: &tokio_postgres::Client, book: &str, version: &str) -> String {
    if pg.value(
        c,
        &format!("SELECT to_regclass('pgconvoy.{book}') IS NOT NULL"),
    ) != "t"
    {
        return "'false:0'".into();
    }
    let (ma, mi, p) = split(version);
    format!(
        "(SELECT (count(*) FILTER (WHERE end_time IS NOT NULL) > 0) || ':' || \
                 count(*) FILTER (WHERE end_time IS NULL) \
          FROM pgconvoy.{book} WHERE major = {ma} AND minor = {mi} AND patch = {p})"
    )
}

fn parse_book(s: Option<&str>) -> (bool, i64) {
    let (done, open) = s
        .unwrap_or("false:0")
        .split_once(':')
        .unwrap_or(("false", "0"));
    (done == "true", open.parse().unwrap_or(-1))
}

fn split(version: &str) -> (&str, &str, &str) {
    let mut it = version.split('-');
    (
        it.next().unwrap_or("0"),
        it.next().unwrap_or("0"),
        it.next().unwrap_or("0"),
    )
}

/// Whether the master's main book (the claim) records `version` done, and its open rows.
fn master_claim(
    pg: &trials::Pg,
    c: &tokio_postgres::Client,
    t: &TrialSet,
    version: &str,
) -> (bool, i64) {
    let rec = book_query(pg, c, &t.ledger, version);
    parse_book(Some(&pg.value(c, &format!("SELECT {rec}"))))
}

/// Right after the kill (sessions gone; `settled`: a SYNC confirmed everywhere since).
fn after_kill(
    pg: &trials::Pg,
    clients: &[tokio_postgres::Client],
    t: &TrialSet,
    settled: bool,
) -> Vec<String> {
    let mut v = Vec::new();
    for version in &t.versions {
        let (stamped, open_claims) = master_claim(pg, &clients[0], t, version);
        if open_claims != 0 {
            v.push(format!(
                "invariant 1: {version}: an open claim row on the master after the kill"
            ));
        }
        let views: Vec<_> = (0..NODES)
            .map(|n| node_view(pg, &clients[n], n, t, version))
            .collect();
        for (n, (runs, done, open)) in views.iter().enumerate() {
            if *runs > 1 {
                v.push(format!(
                    "invariant 3: {version}: the body ran {runs} times on node{n}"
                ));
            }
            if (*runs == 1) != *done {
                v.push(format!(
                    "invariant 1: {version}: node{n} ran the body {runs} time(s) but its record says done={done}"
                ));
            }
            if *open != 0 && n > 0 {
                v.push(format!("invariant 1: {version}: an open row on node{n}"));
            }
            if stamped && *runs != 1 {
                v.push(format!(
                    "invariant 1: {version} is stamped on the master but node{n} ran its body {runs} time(s)"
                ));
            }
        }
        if settled && views[0].1 {
            for (n, (_, done, _)) in views.iter().enumerate().skip(1) {
                if !done {
                    v.push(format!(
                        "invariant 1: {version}: the origin committed the script but node{n} lacks it \
                         after a SYNC every node confirmed"
                    ));
                }
            }
        }
    }
    v
}

/// After recovery: every patch stamped, on every node once with its record; no
/// temporary set; the new tables in set 1 and replicating; the slons healthy.
fn after_recovery(
    s: &mut SlonyLab,
    pg: &trials::Pg,
    clients: &[tokio_postgres::Client],
    t: &TrialSet,
) -> Vec<String> {
    let mut v = Vec::new();
    for version in &t.versions {
        let (stamped, open) = master_claim(pg, &clients[0], t, version);
        if !stamped || open != 0 {
            v.push(format!(
                "invariant 2: {version}: the master's ledger has it done={stamped} with {open} open row(s) after recovery"
            ));
        }
        for (n, c) in clients.iter().enumerate() {
            let (runs, done, open) = node_view(pg, c, n, t, version);
            if (runs, done, open) != (1, true, 0) {
                v.push(format!(
                    "invariant 2/3: {version}: node{n} ran the body {runs} time(s), record done={done}, \
                     {open} open row(s) after recovery"
                ));
            }
        }
    }
    let schema = s.c.schema();
    let temp = pg.value(
        &clients[0],
        &format!("SELECT count(*) FROM {schema}.sl_set WHERE set_comment LIKE 'pgconvoy:%'"),
    );
    if temp != "0" {
        v.push(format!(
            "slony: {temp} temporary set(s) left after recovery"
        ));
    }
    for i in 0..NODES {
        if !s.c.slon_running(i) {
            v.push(format!("slony: the slon of node{i} is not running"));
        }
    }
    for table in &t.tables {
        let (nsp, rel) = table.split_once('.').unwrap_or(("public", table));
        let set = pg.value(
            &clients[0],
            &format!(
                "SELECT coalesce(string_agg(tab_set::text, ','), '') FROM {schema}.sl_table \
                 WHERE tab_nspname = '{nsp}' AND tab_relname = '{rel}'"
            ),
        );
        if set != "1" {
            v.push(format!(
                "slony: {table} is in set(s) `{set}` after recovery, not 1"
            ));
        }
        pg.rows(&clients[0], &format!("INSERT INTO {table} VALUES (1)"));
    }
    match s.c.sync_and_wait() {
        Err(e) => v.push(format!("slony: no SYNC confirmed after recovery: {e}")),
        Ok(_) => {
            for table in &t.tables {
                for (n, c) in clients.iter().enumerate() {
                    let rows = pg.value(c, &format!("SELECT count(*) FROM {table}"));
                    if rows != "1" {
                        v.push(format!(
                            "slony: a row inserted into {table} on the origin: {rows} row(s) on node{n}"
                        ));
                    }
                }
            }
        }
    }
    v
}

/// Invariant 4 on the Slony cluster: no pgconvoy session, no prepared transaction, no
/// advisory lock (but the slons').
fn nothing_left(pg: &trials::Pg, clients: &[tokio_postgres::Client]) -> Vec<String> {
    let mut v: Vec<String> = wait_quiet(pg, clients, 10)
        .into_iter()
        .map(|b| format!("invariant 4: pgconvoy or slonik session left: {b}"))
        .collect();
    for (n, c) in clients.iter().enumerate() {
        let prepared = pg.value(
            c,
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
        );
        if prepared != "0" {
            v.push(format!(
                "invariant 4: node{n} holds {prepared} prepared transaction(s)"
            ));
        }
        let locks = pg.value(
            c,
            "SELECT count(*) FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND coalesce(a.application_name, '') NOT LIKE 'slon%' \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        );
        if locks != "0" {
            v.push(format!(
                "invariant 4: node{n} has {locks} advisory lock(s) left"
            ));
        }
    }
    v
}

/// Waits until no session of pgconvoy's or of its slonik is left on any node (slonik names
/// its sessions `slonik`, whatever PGAPPNAME says); what is left after `secs`.
fn wait_quiet(pg: &trials::Pg, clients: &[tokio_postgres::Client], secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut left = Vec::new();
        for (n, c) in clients.iter().enumerate() {
            for r in pg.rows(
                c,
                "SELECT application_name || ' ' || coalesce(state, '') || ': ' || left(query, 80) \
                 FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name IN ('pgconvoy', 'slonik')",
            ) {
                left.push(format!("node{n}: {}", r[0].clone().unwrap_or_default()));
            }
        }
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
