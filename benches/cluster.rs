//! The benchmark suite: pgconvoy against the physical limit, on local servers started by
//! the project's harness (`pgconvoy::localpg`), every figure a ratio to a baseline
//! measured in the same run (medians of several repetitions), written as a Markdown
//! table to `bench/out/results.md`.
//!
//! `bench/run [--quick]` is the one command (it builds, then runs this). Directly:
//! `cargo bench --bench cluster -- [--quick] [--only 1,2,3,4,5]`.
//!
//! 1. fan-out: one `concurrent` patch (`CREATE INDEX CONCURRENTLY`) on 3 nodes vs `psql`
//!    on one node, on the 3 in parallel (the physical limit) and one after the other;
//! 2. per-patch overhead: tiny `std` patches on one node vs `psql -1 -f` of the same SQL,
//!    tiny `direct` patches on 3 nodes vs 3 parallel `psql -1 -f`;
//! 3. scale: `status` and one `direct` patch on 4, 16, 64 nodes (databases over 4
//!    servers): time per node, peak coordinator RSS, most connections held;
//! 4. planning: `check` on 10,000 patch files;
//! 5. where the time of figure 2 goes: statements and round trips per patch, counted in
//!    the server log (`log_min_duration_statement = 0` on that run's databases only).
//!
//! Coordinator memory is `ru_maxrss` from `wait4` on the coordinator's own pid;
//! connections are sampled from `pg_stat_activity` (`application_name = 'pgconvoy'`) on
//! every server by a monitor thread, in extra runs that are not timed.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use pgconvoy::localpg::{LocalServer, PgBinaries, ServerOptions};

/// What one invocation measures, and how hard.
#[derive(Debug, Clone)]
struct Settings {
    quick: bool,
    /// Repetitions of every timed measurement (the median is reported).
    reps: usize,
    /// Rows of the fan-out table on each node.
    fanout_rows: u64,
    /// Tiny patches in figure 2.
    tiny_patches: usize,
    /// Node counts of figure 3.
    scale_nodes: Vec<usize>,
    /// Patch files of figure 4.
    check_files: usize,
    /// Patches of the figure-5 breakdown run.
    breakdown_patches: usize,
    /// Figures to run (all when empty).
    only: Vec<u32>,
}

impl Settings {
    fn from_args() -> Settings {
        let mut quick = false;
        let mut only = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--only" => {
                    let list = args.next().unwrap_or_default();
                    only = list
                        .split(',')
                        .map(|s| s.trim().parse().expect("--only takes e.g. 1,3"))
                        .collect();
                }
                // `cargo bench` passes `--bench`; filters and the like mean nothing here.
                _ => {}
            }
        }
        Settings {
            quick,
            reps: if quick { 3 } else { 7 },
            fanout_rows: if quick { 200_000 } else { 2_000_000 },
            tiny_patches: 1000,
            scale_nodes: vec![4, 16, 64],
            check_files: 10_000,
            breakdown_patches: if quick { 100 } else { 200 },
            only,
        }
    }

    fn runs(&self, figure: u32) -> bool {
        self.only.is_empty() || self.only.contains(&figure)
    }
}

/// The pool size and jobs pgconvoy uses by default (`cluster.yaml` leaves them out).
const DEFAULT_POOL_SIZE: usize = 4;
const DEFAULT_JOBS: usize = 16;

fn main() {
    let settings = Settings::from_args();
    let started = Instant::now();
    let bench = Bench::start(settings);
    let mut out = Results::default();
    let s = bench.settings.clone();
    if s.runs(1) {
        bench.fanout(&mut out);
    }
    if s.runs(2) {
        bench.per_patch(&mut out);
    }
    if s.runs(3) {
        bench.scale(&mut out);
    }
    if s.runs(4) {
        bench.check(&mut out);
    }
    if s.runs(5) {
        bench.breakdown(&mut out);
    }
    let md = out.markdown(&bench, started.elapsed());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/out/results.md");
    std::fs::create_dir_all(path.parent().expect("has a parent")).expect("create bench/out");
    std::fs::write(&path, &md).expect("write bench/out/results.md");
    println!("{md}");
    eprintln!(
        "bench: wrote {} in {:.0} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// Running child processes and measuring them.

/// Wall time of a batch of processes and the largest peak RSS among them.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: Duration,
    max_rss_kb: u64,
    /// User + system CPU time of all the processes.
    cpu: Duration,
}

/// A process to run: the command and a label for error messages.
struct Job {
    label: String,
    cmd: Command,
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Waits for one child by pid with `wait4`, which reports that child's own rusage
/// (`RUSAGE_CHILDREN` would mix in every psql and pg_ctl this process ever ran).
fn wait_child(pid: u32) -> io::Result<(i32, libc::rusage)> {
    let pid = pid as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; pid is our own unwaited child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            return Ok((status, ru));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Runs one job to completion; panics with its stderr if it fails.
// The child is reaped by `wait_child` (wait4, for its own rusage), not `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_job(job: Job, logs: &Path, seq: usize) -> (u64, Duration) {
    let Job { label, mut cmd } = job;
    let err_path = logs.join(format!("{seq:05}.stderr"));
    let err = File::create(&err_path).expect("create a stderr file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(err));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("bench: cannot start {label}: {e}"));
    let (status, ru) = wait_child(child.id()).expect("wait4");
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let text = std::fs::read_to_string(&err_path).unwrap_or_default();
        let tail: String = text
            .chars()
            .rev()
            .take(3000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!("bench: {label} failed (wait status {status}):\n{tail}");
    }
    (
        u64::try_from(ru.ru_maxrss).unwrap_or(0),
        timeval(ru.ru_utime) + timeval(ru.ru_stime),
    )
}

/// Scrubs libpq's environment so nothing redirects the benchmark's clients.
fn scrub_pg_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
}

/// The median of the per-repetition ratios `ours[i] / base[i]`: every repetition runs
/// both back to back, so a ratio compares timings taken under the same load, and the
/// median drops repetitions that other work on the machine disturbed.
fn paired_ratio(ours: &[f64], base: &[f64]) -> f64 {
    assert_eq!(ours.len(), base.len(), "unpaired samples");
    median(ours.iter().zip(base).map(|(a, b)| a / b).collect())
}

/// Prints every repetition's time, for whoever wants more than the medians.
fn log_samples(figure: &str, name: &str, v: &[f64]) {
    let list: Vec<String> = v.iter().map(|x| format!("{:.1}", x * 1000.0)).collect();
    eprintln!(
        "bench: [{figure}] {name}, ms per repetition: {}",
        list.join(" ")
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------
// Sampling the coordinator's connections.

/// The most pgconvoy connections seen at once.
#[derive(Debug, Default, Clone)]
struct ConnPeak {
    /// All pgconvoy sessions on every server (idle ones included).
    held: usize,
    /// Sessions not idle: running a statement or inside a transaction.
    busy: usize,
    /// Sessions on one node (one database of one server).
    per_node: usize,
    samples: usize,
}

/// A thread polling `pg_stat_activity` on every server until stopped.
struct ConnMonitor {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<ConnPeak>,
}

impl ConnMonitor {
    /// Starts polling; returns once every server is connected.
    fn start(servers: &[LocalServer]) -> ConnMonitor {
        let dsns: Vec<String> = servers
            .iter()
            .map(|s| format!("{} application_name=pgconvoy-bench", s.dsn("postgres")))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let mut clients = Vec::new();
                for dsn in &dsns {
                    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
                        .await
                        .expect("monitor connects");
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            eprintln!("bench: monitor connection ended: {e}");
                        }
                    });
                    clients.push(client);
                }
                let query = "SELECT datname, count(*)::int8, \
                             count(*) FILTER (WHERE state IS DISTINCT FROM 'idle')::int8 \
                             FROM pg_stat_activity WHERE application_name = 'pgconvoy' GROUP BY 1";
                let mut stmts = Vec::new();
                for c in &clients {
                    stmts.push(c.prepare(query).await.expect("prepare monitor query"));
                }
                ready_tx.send(()).expect("announce readiness");
                let mut peak = ConnPeak::default();
                loop {
                    let last = flag.load(Ordering::SeqCst);
                    let (mut held, mut busy) = (0usize, 0usize);
                    for (c, st) in clients.iter().zip(&stmts) {
                        for row in c.query(st, &[]).await.expect("monitor query") {
                            let n = usize::try_from(row.get::<_, i64>(1)).unwrap_or(0);
                            let b = usize::try_from(row.get::<_, i64>(2)).unwrap_or(0);
                            held += n;
                            busy += b;
                            peak.per_node = peak.per_node.max(n);
                        }
                    }
                    peak.held = peak.held.max(held);
                    peak.busy = peak.busy.max(busy);
                    peak.samples += 1;
                    if last {
                        return peak;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        });
        ready_rx.recv().expect("monitor started");
        ConnMonitor { stop, handle }
    }

    fn finish(self) -> ConnPeak {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("monitor thread")
    }
}

// ---------------------------------------------------------------------------------------
// The bench: servers, scratch space, commands.

struct Bench {
    settings: Settings,
    bin: PathBuf,
    psql: PathBuf,
    pg_version: String,
    /// The load average when the bench started.
    load_before: String,
    /// Four servers: figures 1 and 2 use the first three, figure 3 all four, figure 5 the last.
    servers: Vec<LocalServer>,
    work: tempfile::TempDir,
    counter: AtomicUsize,
}

impl Bench {
    fn start(settings: Settings) -> Bench {
        let load_before = load_average();
        let bin = std::env::var_os("PGCONVOY_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pgconvoy")));
        assert!(
            bin.is_file(),
            "bench: no pgconvoy binary at {}",
            bin.display()
        );
        let bins = PgBinaries::locate().expect("postgresql server binaries");
        let psql = {
            let p = bins.tool("psql");
            if p.is_file() {
                p
            } else {
                PathBuf::from("psql")
            }
        };
        let pg_version = bins
            .version()
            .unwrap_or_else(|_| "postgres (unknown)".into());
        eprintln!("bench: starting 4 servers ({pg_version})");
        let t = Instant::now();
        // Data dirs in memory when the machine has a tmpfs: the figures are about CPU and
        // round trips, and a shared virtual disk made repetitions differ threefold.
        let shm = Path::new("/dev/shm");
        let options = ServerOptions {
            base_dir: shm.is_dir().then(|| shm.to_path_buf()),
            ..ServerOptions::default()
        };
        let servers: Vec<LocalServer> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| LocalServer::start(&bins, &options)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("start thread").expect("start a server"))
                .collect()
        });
        eprintln!(
            "bench: servers up in {:.1} s in {}; pgconvoy at {}",
            t.elapsed().as_secs_f64(),
            servers[0]
                .root_dir()
                .parent()
                .unwrap_or(Path::new("?"))
                .display(),
            bin.display()
        );
        let work = tempfile::Builder::new()
            .prefix("pgconvoy-bench-")
            .tempdir_in("/tmp")
            .expect("scratch dir");
        std::fs::create_dir(work.path().join("logs")).expect("logs dir");
        Bench {
            settings,
            bin,
            psql,
            pg_version,
            load_before,
            servers,
            work,
            counter: AtomicUsize::new(0),
        }
    }

    fn next(&self) -> usize {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A name no other database, schema or directory of this run uses.
    fn unique(&self, prefix: &str) -> String {
        format!("{prefix}_{}", self.next())
    }

    /// A fresh scratch directory.
    fn dir(&self, prefix: &str) -> PathBuf {
        let d = self.work.path().join(self.unique(prefix));
        std::fs::create_dir_all(d.join("patches")).expect("scratch dir");
        d
    }

    /// Runs `jobs`, at most `at_once` at a time; wall time from the first start to the
    /// last exit.
    fn run(&self, jobs: Vec<Job>, at_once: usize) -> Sample {
        let queue = Mutex::new(jobs.into_iter().collect::<VecDeque<Job>>());
        let logs = self.work.path().join("logs");
        let max_rss = AtomicUsize::new(0);
        let cpu = Mutex::new(Duration::ZERO);
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..at_once.max(1) {
                s.spawn(|| loop {
                    let Some(job) = queue.lock().expect("queue").pop_front() else {
                        return;
                    };
                    let (rss, used) = run_job(job, &logs, self.next());
                    max_rss.fetch_max(usize::try_from(rss).unwrap_or(0), Ordering::Relaxed);
                    *cpu.lock().expect("cpu") += used;
                });
            }
        });
        let wall = t.elapsed();
        let cpu = *cpu.lock().expect("cpu");
        Sample {
            wall,
            max_rss_kb: max_rss.load(Ordering::Relaxed) as u64,
            cpu,
        }
    }

    fn run_one(&self, job: Job) -> Sample {
        self.run(vec![job], 1)
    }

    /// `pgconvoy -c CONFIG ARGS...`
    fn pgconvoy(&self, config: &Path, args: &[&str]) -> Job {
        let mut cmd = Command::new(&self.bin);
        scrub_pg_env(&mut cmd);
        cmd.arg("-c").arg(config).args(args);
        Job {
            label: format!("pgconvoy {}", args.join(" ")),
            cmd,
        }
    }

    /// `psql -X -q -v ON_ERROR_STOP=1 [-1] -f FILE -d DSN`
    fn psql_file(&self, dsn: &str, file: &Path, one_transaction: bool) -> Job {
        let mut cmd = Command::new(&self.psql);
        scrub_pg_env(&mut cmd);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
        if one_transaction {
            cmd.arg("-1");
        }
        cmd.arg("-f").arg(file).arg("-d").arg(dsn);
        Job {
            label: format!("psql -f {} on {dsn}", file.display()),
            cmd,
        }
    }

    /// `psql -X -q -A -t -v ON_ERROR_STOP=1 -c SQL -d DSN`
    fn psql_command(&self, dsn: &str, sql: &str) -> Job {
        let mut cmd = Command::new(&self.psql);
        scrub_pg_env(&mut cmd);
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
            "-d",
            dsn,
        ]);
        Job {
            label: format!("psql -c on {dsn}"),
            cmd,
        }
    }

    /// Runs `sql` on `db` of each of `servers` (by index), the servers in parallel.
    fn on_servers(&self, servers: &[usize], db: &str, sql: &str) -> Vec<String> {
        std::thread::scope(|s| {
            let handles: Vec<_> = servers
                .iter()
                .map(|&i| s.spawn(move || self.servers[i].psql(db, sql)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("psql thread").expect("psql"))
                .collect()
        })
    }

    /// Drops a database the bench is done with, so that the servers' state (and their
    /// autovacuum's rounds) stays the same from one repetition to the next.
    fn drop_db(&self, servers: &[usize], db: &str) {
        std::thread::scope(|s| {
            for &i in servers {
                s.spawn(move || {
                    self.servers[i]
                        .psql("postgres", &format!("DROP DATABASE \"{db}\""))
                        .expect("drop database")
                });
            }
        });
    }

    fn create_db(&self, servers: &[usize], db: &str) {
        std::thread::scope(|s| {
            for &i in servers {
                s.spawn(move || {
                    self.servers[i]
                        .create_database(db)
                        .expect("create database")
                });
            }
        });
    }

    /// Asserts that `version` is done in the ledger `schema_table` on `dsn`'s node.
    fn assert_done(&self, server: usize, db: &str, ledger: &str, expect: usize) {
        let n = self.servers[server]
            .psql(
                db,
                &format!("SELECT count(*) FROM {ledger} WHERE end_time IS NOT NULL"),
            )
            .expect("read the ledger");
        assert_eq!(
            n.trim(),
            expect.to_string(),
            "bench: pgconvoy left {n} done rows in {ledger} on server {server} {db}, expected {expect}"
        );
    }
}

/// Writes `cluster.yaml` in `dir`: node0 = `dsns[0]` (master), node1.. replicas.
fn write_config(dir: &Path, dsns: &[String], extra: &str) -> PathBuf {
    let mut yaml = String::from("patches: patches\n");
    for (i, dsn) in dsns.iter().enumerate() {
        if i == 0 {
            let _ = write!(yaml, "master:\n  name: node0\n  dsn: \"{dsn}\"\n");
        } else {
            if i == 1 {
                yaml.push_str("replicas:\n");
            }
            let _ = write!(yaml, "  - name: node{i}\n    dsn: \"{dsn}\"\n");
        }
    }
    yaml.push_str(extra);
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, yaml).expect("write cluster.yaml");
    path
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------------------
// Results and their rendering.

#[derive(Debug, Default)]
struct Results {
    /// Rows of the main table: figure, what, pgconvoy, baseline, ratio, goal.
    rows: Vec<[String; 6]>,
    /// Rows of the scale table.
    scale: Vec<[String; 7]>,
    /// Rows of the variants table (figure 5, timings).
    variants: Vec<[String; 4]>,
    /// Rows of the breakdown table (figure 5, server log).
    breakdown: Vec<[String; 7]>,
    notes: Vec<String>,
}

/// `, at nice N` when the bench ran at another priority than the default (on a machine
/// shared with other work, `nice -n -10 bench/run` keeps that work from skewing figures).
fn niceness() -> String {
    // SAFETY: getpriority has no preconditions.
    let n = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    if n == 0 {
        String::new()
    } else {
        format!(", at nice {n}")
    }
}

/// The 1-minute load average: other work on the machine skews every figure.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// The commit the benchmarked binary was built from, and whether `src/` had changes.
fn source_revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain", "--", "src"]).is_some_and(|s| !s.is_empty());
            format!(
                "at commit `{rev}`{}",
                if dirty {
                    " with uncommitted changes in `src/`"
                } else {
                    ""
                }
            )
        }
        None => "(not a git checkout)".into(),
    }
}

fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `**1.05** ≤ 1.10 met` style goal cell.
fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

impl Results {
    fn row(
        &mut self,
        fig: &str,
        what: &str,
        ours: String,
        base: String,
        ratio: String,
        goal: String,
    ) {
        eprintln!("bench: [{fig}] {what}: {ours} | {base} | {ratio} | {goal}");
        self.rows
            .push([fig.into(), what.into(), ours, base, ratio, goal]);
    }

    fn markdown(&self, bench: &Bench, elapsed: Duration) -> String {
        let s = &bench.settings;
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown cpu".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let mut md = String::new();
        let _ = writeln!(
            md,
            "{} run, {date}: {cores} cores ({cpu}), {}, servers with the harness defaults \
             (fsync off); pgconvoy {}; times are medians of {} repetitions, each running every \
             variant back to back, and a ratio is the median of the per-repetition ratios; the \
             whole run took {:.0} s{}; load average {} before, {} after.\n",
            if s.quick { "Quick (`--quick`)" } else { "Full" },
            bench.pg_version,
            source_revision(),
            s.reps,
            elapsed.as_secs_f64(),
            niceness(),
            bench.load_before,
            load_average(),
        );
        if !self.rows.is_empty() {
            md.push_str("| # | figure | pgconvoy | baseline (same run) | ratio | goal |\n");
            md.push_str("|---|---|---|---|---|---|\n");
            for r in &self.rows {
                let _ = writeln!(md, "| {} |", r.join(" | "));
            }
            md.push('\n');
        }
        if !self.scale.is_empty() {
            md.push_str(
                "Figure 3 in detail (nodes = databases spread over 4 servers; baseline: one \
                 `psql` per node, 16 at once, like `xargs -P 16`):\n\n",
            );
            md.push_str(
                "| nodes | `status` | per node | ratio to psql | `upgrade`, one `direct` patch | per node | ratio to psql |\n",
            );
            md.push_str("|---|---|---|---|---|---|---|\n");
            for r in &self.scale {
                let _ = writeln!(md, "| {} |", r.join(" | "));
            }
            md.push('\n');
        }
        if !self.variants.is_empty() {
            md.push_str(
                "Figure 5, where the time of figure 2 goes: the same tiny patches, from \
                 `psql -1 -f` up to pgconvoy one step at a time (the steps between replay a \
                 claim and a stamp per patch through `psql -f` as plain SQL; \"added\" is the \
                 median of the per-repetition differences to the row above):\n\n",
            );
            md.push_str("| variant | wall | per patch | added per patch by this step |\n");
            md.push_str("|---|---|---|---|\n");
            for r in &self.variants {
                let _ = writeln!(md, "| {} |", r.join(" | "));
            }
            md.push('\n');
        }
        if !self.breakdown.is_empty() {
            md.push_str(
                "Figure 5, statements per patch, counted in the server log of a separate run \
                 with `log_min_duration_statement = 0` (per patch, the run's fixed costs \
                 included; logging slows both sides), and round trips per patch: the \
                 client's writes to its server sockets, counted by `strace -f` in runs of \
                 their own (pipelined requests leave in one write):\n\n",
            );
            md.push_str(
                "| run | statements per patch, in order, with their server time per patch | server time per patch | round trips per patch (the client's socket writes, strace) | wall per patch | wall − server time | client CPU per patch |\n",
            );
            md.push_str("|---|---|---|---|---|---|---|\n");
            for r in &self.breakdown {
                let _ = writeln!(md, "| {} |", r.join(" | "));
            }
            md.push('\n');
        }
        for n in &self.notes {
            let _ = writeln!(md, "- {n}");
        }
        md
    }
}

// ---------------------------------------------------------------------------------------
// Figure 1: fan-out of one concurrent patch.

impl Bench {
    fn fanout(&self, out: &mut Results) {
        let rows = self.settings.fanout_rows;
        eprintln!("bench: [1] loading {rows} rows on each of 3 servers");
        let nodes = [0usize, 1, 2];
        let db = self.unique("fanout");
        self.create_db(&nodes, &db);
        let t = Instant::now();
        self.on_servers(
            &nodes,
            &db,
            &format!(
                "CREATE TABLE big (id integer, v integer, note text);
                 INSERT INTO big SELECT g, hashint4(g), 'row ' || g FROM generate_series(1, {rows}) g;
                 VACUUM ANALYZE big;"
            ),
        );
        eprintln!("bench: [1] loaded in {:.1} s", t.elapsed().as_secs_f64());
        let dsns: Vec<String> = nodes.iter().map(|&i| self.servers[i].dsn(&db)).collect();
        let sql = "CREATE INDEX CONCURRENTLY big_v_idx ON big (v);\n";
        let sql_file = self.work.path().join("fanout.sql");
        write(&sql_file, sql);
        let drop_index = |which: &[usize]| {
            self.on_servers(which, &db, "DROP INDEX big_v_idx");
        };

        #[derive(Clone, Copy)]
        enum V {
            One,
            Parallel,
            Sequential,
            Pgconvoy,
        }
        let mut times: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        for rep in 0..self.settings.reps {
            // Rotate the order so no variant always runs first (or after a given one).
            let mut variants = [V::One, V::Parallel, V::Sequential, V::Pgconvoy];
            variants.rotate_left(rep % 4);
            for v in variants {
                let (key, sample) = match v {
                    V::One => {
                        let s = self.run_one(self.psql_file(&dsns[0], &sql_file, false));
                        drop_index(&nodes[..1]);
                        ("one", s)
                    }
                    V::Parallel => {
                        let jobs = dsns
                            .iter()
                            .map(|d| self.psql_file(d, &sql_file, false))
                            .collect();
                        let s = self.run(jobs, 3);
                        drop_index(&nodes);
                        ("parallel", s)
                    }
                    V::Sequential => {
                        let jobs = dsns
                            .iter()
                            .map(|d| self.psql_file(d, &sql_file, false))
                            .collect();
                        let s = self.run(jobs, 1);
                        drop_index(&nodes);
                        ("sequential", s)
                    }
                    V::Pgconvoy => {
                        let dir = self.dir("fanout");
                        write(&dir.join("patches/patch-1-0-0-concurrent.sql"), sql);
                        // A fresh ledger per run: the same state as a fresh database, without
                        // reloading the table.
                        let ledger = self.unique("fanout_ledger");
                        let cfg = write_config(
                            &dir,
                            &dsns,
                            &format!("ledger_table: {ledger}.revision\n"),
                        );
                        let s = self.run_one(self.pgconvoy(&cfg, &["upgrade", "--all"]));
                        self.assert_done(0, &db, &format!("{ledger}.revision"), 1);
                        drop_index(&nodes);
                        ("pgconvoy", s)
                    }
                };
                times
                    .entry(key)
                    .or_default()
                    .push(sample.wall.as_secs_f64());
            }
        }
        self.drop_db(&nodes, &db);
        for (k, v) in &times {
            log_samples("1", k, v);
        }
        let m = |k: &str| median(times[k].clone());
        let r = |k: &str| paired_ratio(&times["pgconvoy"], &times[k]);
        let (ours, one, par, seq) = (m("pgconvoy"), m("one"), m("parallel"), m("sequential"));
        let what = format!(
            "fan-out: one `concurrent` patch, `CREATE INDEX CONCURRENTLY` on {} rows, on each of 3 nodes{}",
            thousands(rows),
            if self.settings.quick {
                " (`--quick`: fewer rows than the full run's 2,000,000)"
            } else {
                ""
            }
        );
        let ratio = r("parallel");
        out.row(
            "1",
            &what,
            secs(ours),
            format!(
                "`psql` on the 3 nodes in parallel (the physical limit): {}",
                secs(par)
            ),
            format!("**{ratio:.2}**"),
            format!("≤ 1.10: {}", verdict(ratio <= 1.10)),
        );
        out.row(
            "1",
            "〃",
            String::new(),
            format!(
                "`psql` on the 3 nodes one after another (a shell loop): {}",
                secs(seq)
            ),
            format!("{:.2}", r("sequential")),
            "—".into(),
        );
        out.row(
            "1",
            "〃",
            String::new(),
            format!("`psql` on one node alone: {}", secs(one)),
            format!("{:.2}", r("one")),
            "— (3 nodes share 2 cores)".into(),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Figure 2: per-patch overhead.

/// The `k`-th tiny patch body.
fn tiny_body(k: usize) -> String {
    format!("CREATE TABLE t_{k} (id integer PRIMARY KEY, note text);\n")
}

/// Writes `n` tiny patches of `kind` into `dir/patches` and their concatenation to
/// `dir/all.sql`.
fn tiny_patches(dir: &Path, n: usize, kind: &str) -> PathBuf {
    let mut all = String::new();
    for k in 0..n {
        let body = tiny_body(k);
        write(
            &dir.join(format!("patches/patch-1-{k}-0-{kind}.sql")),
            &body,
        );
        all.push_str(&body);
    }
    let path = dir.join("all.sql");
    write(&path, &all);
    path
}

impl Bench {
    fn per_patch(&self, out: &mut Results) {
        let n = self.settings.tiny_patches;
        eprintln!("bench: [2] {n} tiny patches");
        let std_dir = self.dir("tiny_std");
        let std_all = tiny_patches(&std_dir, n, "std");
        let direct_dir = self.dir("tiny_direct");
        let direct_all = tiny_patches(&direct_dir, n, "direct");

        let mut t: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        for rep in 0..self.settings.reps {
            let mut order = [0, 1, 2, 3];
            order.rotate_left(rep % 4);
            for v in order {
                let db = self.unique("tiny");
                let on = if v < 2 { &[0][..] } else { &[0, 1, 2][..] };
                let (key, s) = match v {
                    0 => {
                        self.create_db(&[0], &db);
                        let cfg = write_config(&std_dir, &[self.servers[0].dsn(&db)], "");
                        let s = self.run_one(self.pgconvoy(&cfg, &["upgrade", "--all"]));
                        self.assert_done(0, &db, "pgconvoy.revision", n);
                        ("std pgconvoy", s)
                    }
                    1 => {
                        self.create_db(&[0], &db);
                        let s =
                            self.run_one(self.psql_file(&self.servers[0].dsn(&db), &std_all, true));
                        ("std psql", s)
                    }
                    2 => {
                        self.create_db(&[0, 1, 2], &db);
                        let dsns: Vec<String> = (0..3).map(|i| self.servers[i].dsn(&db)).collect();
                        let cfg = write_config(&direct_dir, &dsns, "");
                        let s = self.run_one(self.pgconvoy(&cfg, &["upgrade", "--all"]));
                        for i in 0..3 {
                            self.assert_done(i, &db, "pgconvoy.revision", n);
                        }
                        ("direct pgconvoy", s)
                    }
                    _ => {
                        self.create_db(&[0, 1, 2], &db);
                        let jobs = (0..3)
                            .map(|i| self.psql_file(&self.servers[i].dsn(&db), &direct_all, true))
                            .collect();
                        ("direct psql", self.run(jobs, 3))
                    }
                };
                self.drop_db(on, &db);
                t.entry(key).or_default().push(s.wall.as_secs_f64());
            }
        }
        for (k, v) in &t {
            log_samples("2", k, v);
        }
        let m = |k: &str| median(t[k].clone());
        let r = |a: &str, b: &str| paired_ratio(&t[a], &t[b]);
        let (ours, base) = (m("std pgconvoy"), m("std psql"));
        let ratio = r("std pgconvoy", "std psql");
        let patches = thousands(n as u64);
        let quick_note = if n < 1000 {
            " (fewer than the full run's 1,000)"
        } else {
            ""
        };
        out.row(
            "2",
            &format!(
                "per-patch overhead: {patches} tiny `std` patches (`CREATE TABLE t_K (id integer PRIMARY KEY, note text)`), 1 node, `upgrade --all`{quick_note}"
            ),
            format!("{} ({:.2} ms/patch)", secs(ours), ours * 1000.0 / n as f64),
            format!(
                "`psql -X -1 -f` of the same SQL concatenated: {} ({:.2} ms/patch)",
                secs(base),
                base * 1000.0 / n as f64
            ),
            format!("**{ratio:.2}**"),
            format!("≤ 1.3: {}", verdict(ratio <= 1.3)),
        );
        let (ours, base) = (m("direct pgconvoy"), m("direct psql"));
        let ratio = r("direct pgconvoy", "direct psql");
        out.row(
            "2",
            &format!("{patches} tiny `direct` patches, 3 nodes, `upgrade --all`{quick_note}"),
            format!("{} ({:.2} ms/patch)", secs(ours), ours * 1000.0 / n as f64),
            format!(
                "3 parallel `psql -X -1 -f`, one per node: {} ({:.2} ms/patch)",
                secs(base),
                base * 1000.0 / n as f64
            ),
            format!("**{ratio:.2}**"),
            format!("≤ 1.3 (the `std` bar): {}", verdict(ratio <= 1.3)),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Figure 3: scale in nodes.

impl Bench {
    fn scale(&self, out: &mut Results) {
        let max_nodes = *self.settings.scale_nodes.iter().max().expect("node counts");
        let servers = self.servers.len();
        eprintln!("bench: [3] creating {max_nodes} databases over {servers} servers");
        let base = self.unique("scale");
        // Node i is database `{base}_{i}` on server i % 4: every count spreads evenly.
        let node_db = |i: usize| format!("{base}_{i}");
        let node_server = |i: usize| i % servers;
        std::thread::scope(|s| {
            for srv in 0..servers {
                let sql: String = (0..max_nodes)
                    .filter(|&i| node_server(i) == srv)
                    .map(|i| format!("CREATE DATABASE \"{}\";\n", node_db(i)))
                    .collect();
                s.spawn(move || {
                    self.servers[srv]
                        .psql("postgres", &sql)
                        .expect("create dbs")
                });
            }
        });
        let dsns: Vec<String> = (0..max_nodes)
            .map(|i| self.servers[node_server(i)].dsn(&node_db(i)))
            .collect();
        // The untimed runs that sample connections put every node on one server: one
        // `pg_stat_activity` query is then one consistent snapshot (samples of several
        // servers, taken one after the other, can count a session that just finished on
        // one server together with the one that replaced it on the next).
        let mon_server = servers - 1;
        let mon_base = self.unique("scale_mon");
        let sql: String = (0..max_nodes)
            .map(|i| format!("CREATE DATABASE \"{mon_base}_{i}\";\n"))
            .collect();
        self.servers[mon_server]
            .psql("postgres", &sql)
            .expect("create dbs");
        let mon_dsns: Vec<String> = (0..max_nodes)
            .map(|i| self.servers[mon_server].dsn(&format!("{mon_base}_{i}")))
            .collect();
        let jobs = DEFAULT_JOBS;
        let ledger_columns =
            "major, minor, patch, patch_type, checksum, start_time, end_time, applied_by";

        // One run of each variant on `nodes`; returns (key, sample, connections) triples.
        // With `monitor`, only pgconvoy runs, sampled by a monitor of `mon_server`.
        let run_at = |nodes: &[String], extra: &str, monitor: bool| {
            let ledger = self.unique("scale_ledger");
            let dir = self.dir("scale");
            let table = self.unique("conv");
            write(
                &dir.join("patches/patch-1-0-0-direct.sql"),
                &format!("CREATE TABLE {table} (id integer PRIMARY KEY, note text);\n"),
            );
            let cfg = write_config(
                &dir,
                nodes,
                &format!("ledger_table: {ledger}.revision\n{extra}"),
            );
            let mut got: Vec<(&'static str, Sample, Option<ConnPeak>)> = Vec::new();
            let measure = |job: Job| {
                let mon = monitor.then(|| ConnMonitor::start(&self.servers[mon_server..]));
                let s = self.run_one(job);
                (s, mon.map(ConnMonitor::finish))
            };
            // Baseline first half: the same DDL by psql on every node, 16 at once.
            let psql_sql = dir.join("psql.sql");
            let psql_table = self.unique("psql");
            write(
                &psql_sql,
                &format!("CREATE TABLE {psql_table} (id integer PRIMARY KEY, note text);\n"),
            );
            if !monitor {
                let jobs_v = nodes
                    .iter()
                    .map(|d| self.psql_file(d, &psql_sql, true))
                    .collect();
                got.push(("direct psql", self.run(jobs_v, jobs), None));
            }
            let (s, peak) = measure(self.pgconvoy(&cfg, &["upgrade", "--all"]));
            got.push(("direct pgconvoy", s, peak));
            if !monitor {
                // Every node's ledger now exists: read it the way status does.
                let sql =
                    format!("SELECT {ledger_columns} FROM {ledger}.revision ORDER BY 1, 2, 3");
                let jobs_v = nodes.iter().map(|d| self.psql_command(d, &sql)).collect();
                got.push(("status psql", self.run(jobs_v, jobs), None));
            }
            let (s, peak) = measure(self.pgconvoy(&cfg, &["status"]));
            got.push(("status pgconvoy", s, peak));
            got
        };

        let mut t: BTreeMap<(usize, &'static str), Vec<f64>> = BTreeMap::new();
        let mut max_rss = 0u64;
        for _ in 0..self.settings.reps {
            for &n in &self.settings.scale_nodes {
                for (key, s, _) in run_at(&dsns[..n], "", false) {
                    t.entry((n, key)).or_default().push(s.wall.as_secs_f64());
                    if n == max_nodes && key.ends_with("pgconvoy") {
                        max_rss = max_rss.max(s.max_rss_kb);
                    }
                }
            }
        }
        for ((n, k), v) in &t {
            log_samples("3", &format!("{n} nodes, {k}"), v);
        }
        let m = |n: usize, k: &'static str| median(t[&(n, k)].clone());
        let r = |n: usize, a: &'static str, b: &'static str| paired_ratio(&t[&(n, a)], &t[&(n, b)]);
        let first = self.settings.scale_nodes[0];
        // Time per node at `n` ÷ time per node at the smallest count (paired by repetition).
        let growth = |n: usize, k: &'static str| {
            paired_ratio(&t[&(n, k)], &t[&(first, k)]) * first as f64 / n as f64
        };
        for &n in &self.settings.scale_nodes {
            let cell = |k: &'static str| {
                let per = m(n, k) / n as f64;
                let growth = growth(n, k);
                (
                    secs(m(n, k)),
                    format!("{:.1} ms ({growth:.2}× the 4-node figure)", per * 1000.0),
                )
            };
            let (st, st_per) = cell("status pgconvoy");
            let (up, up_per) = cell("direct pgconvoy");
            out.scale.push([
                n.to_string(),
                st,
                st_per,
                format!("{:.2}", r(n, "status pgconvoy", "status psql")),
                up,
                up_per,
                format!("{:.2}", r(n, "direct pgconvoy", "direct psql")),
            ]);
        }

        // Connections, sampled in runs that are not timed: default jobs, then --jobs 4.
        let mut peaks = Vec::new();
        for (label, jobs_now, extra) in [
            ("jobs 16 (default)", DEFAULT_JOBS, ""),
            ("jobs 4", 4, "jobs: 4\n"),
        ] {
            for (key, s, peak) in run_at(&mon_dsns, extra, true) {
                max_rss = max_rss.max(s.max_rss_kb);
                peaks.push((label, jobs_now, key, peak.expect("monitored")));
            }
        }

        out.row(
            "3",
            &format!("scale: `status`, time per node at {max_nodes} nodes"),
            format!(
                "{:.1} ms/node ({:.1} at {first})",
                m(max_nodes, "status pgconvoy") * 1000.0 / max_nodes as f64,
                m(first, "status pgconvoy") * 1000.0 / first as f64
            ),
            format!(
                "one `psql` per node reading its ledger, {jobs} at once: {:.1} ms/node",
                m(max_nodes, "status psql") * 1000.0 / max_nodes as f64
            ),
            format!(
                "**{:.2}** (growth per node from {first} to {max_nodes}: {:.2}×)",
                r(max_nodes, "status pgconvoy", "status psql"),
                growth(max_nodes, "status pgconvoy")
            ),
            "—".into(),
        );
        out.row(
            "3",
            &format!("scale: `upgrade`, one `direct` patch, time per node at {max_nodes} nodes"),
            format!(
                "{:.1} ms/node ({:.1} at {first})",
                m(max_nodes, "direct pgconvoy") * 1000.0 / max_nodes as f64,
                m(first, "direct pgconvoy") * 1000.0 / first as f64
            ),
            format!(
                "`psql -1 -f` on every node, {jobs} at once: {:.1} ms/node",
                m(max_nodes, "direct psql") * 1000.0 / max_nodes as f64
            ),
            format!(
                "**{:.2}** (growth per node from {first} to {max_nodes}: {:.2}×)",
                r(max_nodes, "direct pgconvoy", "direct psql"),
                growth(max_nodes, "direct pgconvoy")
            ),
            "—".into(),
        );
        out.row(
            "3",
            &format!("peak coordinator memory (RSS), {max_nodes} nodes, `status` and `upgrade`"),
            mb(max_rss),
            "—".into(),
            "—".into(),
            format!("< 64 MB: {}", verdict(max_rss < 64 * 1024)),
        );
        for (label, jobs_now, key, p) in &peaks {
            let command = if key.starts_with("status") {
                "`status`"
            } else {
                "`upgrade` (`direct`)"
            };
            // The master also holds the coordinator's lock session (upgrade only).
            let lock = usize::from(!key.starts_with("status"));
            let per_node_limit = DEFAULT_POOL_SIZE + lock;
            // Busy: the fan-out's sessions plus, for upgrade, the master's claim transaction.
            let busy_limit = jobs_now + lock;
            // The strict reading of `--jobs`: no more nodes connected than are worked on.
            let held_limit = jobs_now * DEFAULT_POOL_SIZE + lock;
            let check = |got: usize, limit: usize| {
                if got <= limit {
                    format!("{got} ≤ {limit} met")
                } else {
                    format!("{got} > {limit} **missed**")
                }
            };
            out.row(
                "3",
                &format!("most connections at once, {max_nodes} nodes, {command}, {label}"),
                format!(
                    "{} held in all ({} busy), at most {} on one node; {} samples",
                    p.held, p.busy, p.per_node, p.samples
                ),
                format!(
                    "limits: pool_size {DEFAULT_POOL_SIZE} per node{}; jobs {jobs_now} nodes at once{}",
                    if lock == 1 { " (+1: the lock session on the master)" } else { "" },
                    if lock == 1 { " (+1: the claim)" } else { "" }
                ),
                "—".into(),
                format!(
                    "per node: {}; busy ≤ jobs: {}; held in all ≤ jobs × pool_size: {}",
                    check(p.per_node, per_node_limit),
                    check(p.busy, busy_limit),
                    check(p.held, held_limit)
                ),
            );
        }
        out.notes.push(format!(
            "Figure 3: \"held\" counts every pgconvoy session, idle pooled ones included; \
             \"busy\" counts those running a statement or inside a transaction. \
             Connections are sampled every 5 ms in separate, untimed runs with all {max_nodes} \
             databases on one server, so that each sample is one consistent snapshot. \
             Each run gets a fresh ledger table (`ledger_table:`), the same state as fresh \
             databases without creating {max_nodes} databases per repetition."
        ));
    }
}

// ---------------------------------------------------------------------------------------
// Figure 4: check on 10,000 patch files.

impl Bench {
    fn check(&self, out: &mut Results) {
        let n = self.settings.check_files;
        eprintln!("bench: [4] check on {n} patch files");
        let dir = self.dir("check");
        for m in 0..n {
            write(
                &dir.join(format!("patches/patch-1-{m}-0-std.sql")),
                &format!(
                    "-- patch {m}\nCREATE TABLE t_{m} (id bigint PRIMARY KEY, note text DEFAULT $$a;b$$);\nCOMMENT ON TABLE t_{m} IS 'x;y';\n"
                ),
            );
        }
        let cfg = write_config(&dir, &["host=127.0.0.1 port=1 dbname=x".into()], "");
        let reps = self.settings.reps * 2 + 1;
        let (mut ours, mut base, mut rss) = (Vec::new(), Vec::new(), 0u64);
        for _ in 0..reps {
            let s = self.run_one(self.pgconvoy(&cfg, &["check"]));
            ours.push(s.wall.as_secs_f64());
            rss = rss.max(s.max_rss_kb);
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg("cat patches/*.sql | sha256sum")
                .current_dir(&dir);
            base.push(
                self.run_one(Job {
                    label: "cat | sha256sum".into(),
                    cmd,
                })
                .wall
                .as_secs_f64(),
            );
        }
        let ratio = paired_ratio(&ours, &base);
        let (ours, base) = (median(ours), median(base));
        out.row(
            "4",
            &format!("planning: `check` on {} patch files", thousands(n as u64)),
            format!("{}, peak RSS {}", secs(ours), mb(rss)),
            format!(
                "reading and hashing the same files (`cat patches/*.sql \\| sha256sum`): {}",
                secs(base)
            ),
            format!("{ratio:.2}"),
            format!("< 0.2 s: {}", verdict(ours < 0.2)),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Figure 5: where the per-patch time of figure 2 goes.

/// The ledger as pgconvoy creates it, for the `psql` replays of its statements.
const LEDGER_DDL: &str = "CREATE SCHEMA pgconvoy;
CREATE TABLE pgconvoy.revision (
    major integer NOT NULL, minor integer NOT NULL, patch integer NOT NULL,
    patch_type text NOT NULL CHECK (patch_type IN ('std', 'direct', 'concurrent')),
    checksum text NOT NULL, start_time timestamptz NOT NULL, end_time timestamptz,
    applied_by text NOT NULL, PRIMARY KEY (major, minor, patch));";

/// What a `psql` replay of pgconvoy's per-patch work includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Replay {
    /// `BEGIN; body; COMMIT;`, one request each.
    Transactions,
    /// … plus the claim row's insert before the body and its stamp after, one request each.
    Ledger,
    /// The same statements in one request per patch.
    OneRequest,
}

fn claim_sql(k: usize) -> String {
    format!(
        "INSERT INTO pgconvoy.revision (major, minor, patch, patch_type, checksum, start_time, end_time, applied_by) \
         VALUES (1, {k}, 0, 'std', '{}', clock_timestamp(), NULL, 'bench')",
        "0".repeat(64)
    )
}

fn stamp_sql(k: usize) -> String {
    format!(
        "UPDATE pgconvoy.revision SET end_time = clock_timestamp() WHERE major = 1 AND minor = {k} AND patch = 0"
    )
}

/// `n` tiny patches, each in its own transaction, as `what` says, as plain SQL.
fn replay_script(n: usize, what: Replay) -> String {
    let mut s = String::new();
    for k in 0..n {
        let body = tiny_body(k);
        let body = body.trim_end().trim_end_matches(';');
        let _ = match what {
            Replay::Transactions => writeln!(s, "BEGIN;\n{body};\nCOMMIT;"),
            Replay::Ledger => writeln!(
                s,
                "BEGIN;\n{};\n{body};\n{};\nCOMMIT;",
                claim_sql(k),
                stamp_sql(k)
            ),
            // psql sends statements joined by `\;` as one request.
            Replay::OneRequest => writeln!(
                s,
                "BEGIN \\; {} \\; {body} \\; {} \\; COMMIT;",
                claim_sql(k),
                stamp_sql(k)
            ),
        };
    }
    s
}

/// Statements logged by `log_min_duration_statement = 0` for one database.
#[derive(Debug, Default)]
struct LogCount {
    simple: usize,
    parse: usize,
    bind: usize,
    execute: usize,
    server_ms: f64,
    /// Each statement (its first words) with its protocol steps, how often each was seen,
    /// and the server time of all of them, in order of first appearance.
    kinds: Vec<(String, BTreeMap<&'static str, usize>, f64)>,
}

impl LogCount {
    fn statements(&self) -> usize {
        self.simple + self.parse + self.bind + self.execute
    }

    /// The statements seen about once per patch or more, in order, e.g.
    /// `` `BEGIN`, `INSERT INTO` (parse, bind, execute) ``.
    fn describe(&self, patches: usize) -> String {
        self.kinds
            .iter()
            .filter(|(_, steps, _)| steps.values().max().copied().unwrap_or(0) * 10 >= patches * 9)
            .map(|(sql, steps, ms)| {
                let count = *steps.values().max().unwrap_or(&0) as f64 / patches as f64;
                let times = if (count - 1.0).abs() < 0.05 {
                    String::new()
                } else {
                    format!(" ×{count:.1}")
                };
                let how: Vec<&str> = ["parse", "bind", "execute"]
                    .into_iter()
                    .filter(|k| steps.get(k).is_some_and(|&c| c * 10 >= patches * 9))
                    .collect();
                let ms = ms / patches as f64;
                if how.is_empty() {
                    format!("`{sql}`{times} {ms:.3} ms")
                } else {
                    format!("`{sql}` ({}){times} {ms:.3} ms", how.join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Counts the statements of database `db` in the server log text (prefix `... [pid] db `).
fn count_log(text: &str, db: &str) -> LogCount {
    let mut c = LogCount::default();
    let marker = format!(" {db} LOG:  duration: ");
    for line in text.lines() {
        let Some(at) = line.find(&marker) else {
            continue;
        };
        let rest = &line[at + marker.len()..];
        let Some((ms, what)) = rest.split_once(" ms  ") else {
            continue;
        };
        let ms = ms.trim().parse::<f64>().unwrap_or(0.0);
        c.server_ms += ms;
        let (step, sql) = if let Some(s) = what.strip_prefix("statement: ") {
            c.simple += 1;
            ("simple", s)
        } else if let Some((head, s)) = what.split_once(": ") {
            if head.starts_with("parse") {
                c.parse += 1;
                ("parse", s)
            } else if head.starts_with("bind") {
                c.bind += 1;
                ("bind", s)
            } else if head.starts_with("execute") {
                c.execute += 1;
                ("execute", s)
            } else {
                continue;
            }
        } else {
            continue;
        };
        let words: Vec<&str> = sql.split_whitespace().take(2).collect();
        let key = words.join(" ");
        let i = match c.kinds.iter().position(|(k, _, _)| *k == key) {
            Some(i) => i,
            None => {
                c.kinds.push((key, BTreeMap::new(), 0.0));
                c.kinds.len() - 1
            }
        };
        *c.kinds[i].1.entry(step).or_default() += 1;
        c.kinds[i].2 += ms;
    }
    c
}

impl Bench {
    fn breakdown(&self, out: &mut Results) {
        self.breakdown_variants(out);
        self.breakdown_log(out);
    }

    /// Figure 5 timings: psql -1 -f → per-patch transactions → plus the ledger statements
    /// → pgconvoy, each in a fresh database on server 0.
    fn breakdown_variants(&self, out: &mut Results) {
        let n = self.settings.tiny_patches;
        eprintln!("bench: [5] {n} tiny patches, step by step");
        let std_dir = self.dir("steps_std");
        let std_all = tiny_patches(&std_dir, n, "std");
        let direct_dir = self.dir("steps_direct");
        tiny_patches(&direct_dir, n, "direct");
        let replays: Vec<PathBuf> = [Replay::Transactions, Replay::Ledger, Replay::OneRequest]
            .iter()
            .map(|&r| {
                let path = std_dir.join(format!("replay_{r:?}.sql"));
                write(&path, &replay_script(n, r));
                path
            })
            .collect();

        /// How one step runs, on every node of its group at once.
        enum How<'p> {
            /// `psql -1 -f` of this script.
            OneTransaction(&'p Path),
            /// `psql -f` of this replay (the ledger created first when it uses it).
            Replay(&'p Path, bool),
            /// `pgconvoy upgrade --all` on the patches of this dir.
            Pgconvoy(&'p Path),
        }
        let steps: [(usize, &str, How); 8] = [
            (1, "`std`, 1 node: `psql -X -1 -f`, every body in one transaction (figure 2's baseline)", How::OneTransaction(&std_all)),
            (1, "〃 `psql -X -f`: `BEGIN; body; COMMIT;` per patch", How::Replay(&replays[0], false)),
            (1, "〃 `psql -X -f`: `BEGIN;` claim row `INSERT; body;` stamp `UPDATE; COMMIT;` per patch, one request each", How::Replay(&replays[1], true)),
            (1, "〃 `psql -X -f`: the same statements in one request per patch (`BEGIN \\; INSERT … \\; body \\; UPDATE … \\; COMMIT;`: psql sends statements joined by `\\;` as one request)", How::Replay(&replays[2], true)),
            (1, "〃 pgconvoy `upgrade --all`", How::Pgconvoy(&std_dir)),
            (3, "`direct`, 3 nodes: 3 parallel `psql -X -1 -f` (figure 2's baseline)", How::OneTransaction(&std_all)),
            (3, "〃 3 parallel `psql -X -f`, each node on its own, a transaction and a ledger row per patch in one request: the floor for per-patch transactions on every node", How::Replay(&replays[2], true)),
            (3, "〃 pgconvoy `upgrade --all`: the same per node, the nodes in lockstep patch by patch", How::Pgconvoy(&direct_dir)),
        ];
        let mut t: Vec<Vec<f64>> = vec![Vec::new(); steps.len()];
        for rep in 0..self.settings.reps {
            let mut order: Vec<usize> = (0..steps.len()).collect();
            order.rotate_left(rep % steps.len());
            for i in order {
                let (nodes, _, how) = &steps[i];
                let servers: Vec<usize> = (0..*nodes).collect();
                let db = self.unique("steps");
                self.create_db(&servers, &db);
                let dsns: Vec<String> = servers.iter().map(|&k| self.servers[k].dsn(&db)).collect();
                let s = match how {
                    How::OneTransaction(script) => {
                        let jobs = dsns
                            .iter()
                            .map(|d| self.psql_file(d, script, true))
                            .collect();
                        self.run(jobs, *nodes)
                    }
                    How::Replay(script, ledger) => {
                        if *ledger {
                            self.on_servers(&servers, &db, LEDGER_DDL);
                        }
                        let jobs = dsns
                            .iter()
                            .map(|d| self.psql_file(d, script, false))
                            .collect();
                        let s = self.run(jobs, *nodes);
                        if *ledger {
                            for &k in &servers {
                                self.assert_done(k, &db, "pgconvoy.revision", n);
                            }
                        }
                        s
                    }
                    How::Pgconvoy(dir) => {
                        let cfg = write_config(dir, &dsns, "");
                        let s = self.run_one(self.pgconvoy(&cfg, &["upgrade", "--all"]));
                        self.assert_done(0, &db, "pgconvoy.revision", n);
                        s
                    }
                };
                self.drop_db(&servers, &db);
                t[i].push(s.wall.as_secs_f64());
            }
        }
        for (i, (nodes, label, _)) in steps.iter().enumerate() {
            log_samples("5", &format!("step {}", i + 1), &t[i]);
            let m = median(t[i].clone());
            // The step's cost: the median of the per-repetition differences to the step
            // before (same group), both measured under the same load.
            let added = (i > 0 && steps[i - 1].0 == *nodes)
                .then(|| median(t[i].iter().zip(&t[i - 1]).map(|(a, b)| a - b).collect()));
            out.variants.push([
                (*label).to_string(),
                secs(m),
                format!("{:.2} ms", m * 1000.0 / n as f64),
                added.map_or("—".into(), |d| {
                    format!("{:+.2} ms", d * 1000.0 / n as f64)
                }),
            ]);
        }
    }

    /// Figure 5 statement counts, from the server log of the last server.
    fn breakdown_log(&self, out: &mut Results) {
        let n = self.settings.breakdown_patches;
        eprintln!("bench: [5] {n} tiny patches with statement logging");
        let srv = self.servers.len() - 1;
        let server = &self.servers[srv];
        // The database name in every log line, to tell the coordinator's nodes apart.
        server
            .psql(
                "postgres",
                "ALTER SYSTEM SET log_line_prefix = '%m [%p] %d '; SELECT pg_reload_conf();",
            )
            .expect("set log_line_prefix");
        std::thread::sleep(Duration::from_millis(300));
        let log_from = |offset: u64| {
            let mut f = File::open(server.log_path()).expect("open server log");
            f.seek(SeekFrom::Start(offset)).expect("seek server log");
            let mut s = String::new();
            f.read_to_string(&mut s).expect("read server log");
            s
        };
        let log_len = || {
            std::fs::metadata(server.log_path())
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let logged_db = |prefix: &str| {
            let db = self.unique(prefix);
            server.create_database(&db).expect("create database");
            server
                .psql(
                    "postgres",
                    &format!("ALTER DATABASE \"{db}\" SET log_min_duration_statement = 0"),
                )
                .expect("log statements");
            db
        };
        let per = |x: f64| x / n as f64;

        let std_dir = self.dir("brk_std");
        let all = tiny_patches(&std_dir, n, "std");
        let direct_dir = self.dir("brk_direct");
        tiny_patches(&direct_dir, n, "direct");

        // Round trips: socket writes of the client, counted by strace in runs of their own
        // (requests pipelined together leave in one write, which the server log cannot show).
        let traced = strace_available();
        let writes = |job: Job| -> String {
            if !traced {
                return "— (no strace)".into();
            }
            let w = self.socket_writes(job);
            format!("{:.1}", per(w as f64))
        };
        let db = self.unique("brk_trace");
        server.create_database(&db).expect("create database");
        let std_writes = writes(self.pgconvoy(
            &write_config(&std_dir, &[server.dsn(&db)], ""),
            &["upgrade", "--all"],
        ));
        let db = self.unique("brk_trace");
        server.create_database(&db).expect("create database");
        let psql_writes = writes(self.psql_file(&server.dsn(&db), &all, true));
        let (m, r) = (self.unique("brk_trace"), self.unique("brk_trace"));
        server.create_database(&m).expect("create database");
        server.create_database(&r).expect("create database");
        let direct_writes = writes(self.pgconvoy(
            &write_config(&direct_dir, &[server.dsn(&m), server.dsn(&r)], ""),
            &["upgrade", "--all"],
        ));

        let mut row = |label: String, c: &LogCount, s: &Sample, writes: &str| {
            let wall_ms = s.wall.as_secs_f64() * 1000.0;
            out.breakdown.push([
                label,
                format!("{:.1}: {}", per(c.statements() as f64), c.describe(n)),
                format!("{:.3} ms", per(c.server_ms)),
                writes.to_string(),
                format!("{:.3} ms", per(wall_ms)),
                format!("{:.3} ms", per(wall_ms - c.server_ms)),
                format!("{:.3} ms", per(s.cpu.as_secs_f64() * 1000.0)),
            ]);
        };

        // std on one node: pgconvoy vs psql -1 -f.
        let db = logged_db("brk_std");
        let cfg = write_config(&std_dir, &[server.dsn(&db)], "");
        let off = log_len();
        let s = self.run_one(self.pgconvoy(&cfg, &["upgrade", "--all"]));
        row(
            format!("pgconvoy, {n} `std` patches, 1 node"),
            &count_log(&log_from(off), &db),
            &s,
            &std_writes,
        );
        let db = logged_db("brk_psql");
        let off = log_len();
        let s = self.run_one(self.psql_file(&server.dsn(&db), &all, true));
        row(
            format!("`psql -1 -f`, the same {n} patches"),
            &count_log(&log_from(off), &db),
            &s,
            &psql_writes,
        );

        // direct on two nodes (both databases on this server): the master and a replica.
        let (m, r) = (logged_db("brk_master"), logged_db("brk_replica"));
        let cfg = write_config(&direct_dir, &[server.dsn(&m), server.dsn(&r)], "");
        let off = log_len();
        let s = self.run_one(self.pgconvoy(&cfg, &["upgrade", "--all"]));
        let text = log_from(off);
        let (cm, cr) = (count_log(&text, &m), count_log(&text, &r));
        row(
            format!("pgconvoy, {n} `direct` patches, 2 nodes: the master (wall: the whole run)"),
            &cm,
            &s,
            &format!("{direct_writes} (both nodes)"),
        );
        row("〃 the replica (same run)".to_string(), &cr, &s, "〃");
    }

    /// Runs `job` under `strace -f` and counts its writes to the sockets it connected.
    fn socket_writes(&self, job: Job) -> usize {
        let Job { label, cmd } = job;
        let trace = self.work.path().join(format!("strace_{}.txt", self.next()));
        let mut traced = Command::new("strace");
        traced
            .args([
                "-f",
                "-qq",
                "-e",
                "trace=connect,write,writev,sendto,sendmsg",
                "-o",
            ])
            .arg(&trace)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => traced.env(k, v),
                None => traced.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            traced.current_dir(d);
        }
        self.run_one(Job {
            label: format!("strace {label}"),
            cmd: traced,
        });
        let text = std::fs::read_to_string(&trace).expect("read the strace output");
        count_socket_writes(&text)
    }
}

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Counts, in `strace -f` output, the writes to file descriptors that were `connect`ed
/// to an IP address (the client's connections to servers).
fn count_socket_writes(text: &str) -> usize {
    let mut sockets = std::collections::HashSet::new();
    let mut writes = 0;
    for line in text.lines() {
        // `PID name(fd, ...` (a call split by another thread ends in `<unfinished ...>`;
        // its `<... name resumed>` line is not counted again).
        let call = line
            .split_once(' ')
            .map_or(line, |(_, rest)| rest)
            .trim_start();
        let Some((name, args)) = call.split_once('(') else {
            continue;
        };
        let Some(fd) = args
            .split(',')
            .next()
            .and_then(|f| f.trim().parse::<i32>().ok())
        else {
            continue;
        };
        match name {
            "connect" if args.contains("AF_INET") => {
                sockets.insert(fd);
            }
            "write" | "writev" | "sendto" | "sendmsg" if sockets.contains(&fd) => writes += 1,
            _ => {}
        }
    }
    writes
}
