//! The bench: its servers, scratch space and the commands it runs.

use crate::*;

pub(crate) struct Bench {
    pub(crate) settings: Settings,
    pub(crate) bin: PathBuf,
    pub(crate) psql: PathBuf,
    pub(crate) pg_version: String,
    /// The load average when the bench started.
    pub(crate) load_before: String,
    /// Four servers: figures 1 and 2 use the first three, figure 3 all four, figure 5 the last.
    pub(crate) servers: Vec<LocalServer>,
    pub(crate) work: tempfile::TempDir,
    pub(crate) counter: AtomicUsize,
}

impl Bench {
    pub(crate) fn start(settings: Settings) -> Bench {
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

    pub(crate) fn next(&self) -> usize {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A name no other database, schema or directory of this run uses.
    pub(crate) fn unique(&self, prefix: &str) -> String {
        format!("{prefix}_{}", self.next())
    }

    /// A fresh scratch directory.
    pub(crate) fn dir(&self, prefix: &str) -> PathBuf {
        let d = self.work.path().join(self.unique(prefix));
        std::fs::create_dir_all(d.join("patches")).expect("scratch dir");
        d
    }

    /// Runs `jobs`, at most `at_once` at a time; wall time from the first start to the
    /// last exit.
    pub(crate) fn run(&self, jobs: Vec<Job>, at_once: usize) -> Sample {
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

    pub(crate) fn run_one(&self, job: Job) -> Sample {
        self.run(vec![job], 1)
    }

    /// `pgconvoy -c CONFIG ARGS...`
    pub(crate) fn pgconvoy(&self, config: &Path, args: &[&str]) -> Job {
        let mut cmd = Command::new(&self.bin);
        scrub_pg_env(&mut cmd);
        cmd.arg("-c").arg(config).args(args);
        Job {
            label: format!("pgconvoy {}", args.join(" ")),
            cmd,
        }
    }

    /// `psql -X -q -v ON_ERROR_STOP=1 [-1] -f FILE -d DSN`
    pub(crate) fn psql_file(&self, dsn: &str, file: &Path, one_transaction: bool) -> Job {
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
    pub(crate) fn psql_command(&self, dsn: &str, sql: &str) -> Job {
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
    pub(crate) fn on_servers(&self, servers: &[usize], db: &str, sql: &str) -> Vec<String> {
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
    pub(crate) fn drop_db(&self, servers: &[usize], db: &str) {
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

    pub(crate) fn create_db(&self, servers: &[usize], db: &str) {
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
    pub(crate) fn assert_done(&self, server: usize, db: &str, ledger: &str, expect: usize) {
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
pub(crate) fn write_config(dir: &Path, dsns: &[String], extra: &str) -> PathBuf {
    let path = dir.join("cluster.yaml");
    write(&path, &cluster_yaml(dsns, extra));
    path
}

pub(crate) fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
