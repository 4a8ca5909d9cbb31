//! Figure 5: where the per-patch time of figure 2 goes (statements, round trips).

use crate::per_patch::{tiny_body, tiny_patches};
use crate::*;

/// The ledger as pgconvoy creates it, for the `psql` replays of its statements.
pub(crate) fn ledger_ddl() -> String {
    pgconvoy::db::ledger::Ledger::new(
        pgconvoy::config::LedgerTable::parse(pgconvoy::config::DEFAULT_LEDGER)
            .expect("the default ledger table is valid"),
    )
    .ddl(pgconvoy::db::ledger::Book::Main)
}

/// What a `psql` replay of pgconvoy's per-patch work includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Replay {
    /// `BEGIN; body; COMMIT;`, one request each.
    Transactions,
    /// … plus the claim row's insert before the body and its stamp after, one request each.
    Ledger,
    /// The same statements in one request per patch.
    OneRequest,
}

pub(crate) fn claim_sql(k: usize) -> String {
    format!(
        "INSERT INTO pgconvoy.revision (major, minor, patch, patch_type, checksum, start_time, end_time, applied_by) \
         VALUES (1, {k}, 0, 'std', '{}', clock_timestamp(), NULL, 'bench')",
        "0".repeat(64)
    )
}

pub(crate) fn stamp_sql(k: usize) -> String {
    format!(
        "UPDATE pgconvoy.revision SET end_time = clock_timestamp() WHERE major = 1 AND minor = {k} AND patch = 0"
    )
}

/// `n` tiny patches, each in its own transaction, as `what` says, as plain SQL.
pub(crate) fn replay_script(n: usize, what: Replay) -> String {
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
pub(crate) struct LogCount {
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
    pub(crate) fn statements(&self) -> usize {
        self.simple + self.parse + self.bind + self.execute
    }

    /// The statements seen about once per patch or more, in order, e.g.
    /// `` `BEGIN`, `INSERT INTO` (parse, bind, execute) ``.
    pub(crate) fn describe(&self, patches: usize) -> String {
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
pub(crate) fn count_log(text: &str, db: &str) -> LogCount {
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
    pub(crate) fn breakdown(&self, out: &mut Results) {
        self.breakdown_variants(out);
        self.breakdown_log(out);
    }

    /// Figure 5 timings: psql -1 -f → per-patch transactions → plus the ledger statements
    /// → pgconvoy, each in a fresh database on server 0.
    pub(crate) fn breakdown_variants(&self, out: &mut Results) {
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
                            self.on_servers(&servers, &db, &ledger_ddl());
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
    pub(crate) fn breakdown_log(&self, out: &mut Results) {
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
    pub(crate) fn socket_writes(&self, job: Job) -> usize {
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

pub(crate) fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Counts, in `strace -f` output, the writes to file descriptors that were `connect`ed
/// to an IP address (the client's connections to servers).
pub(crate) fn count_socket_writes(text: &str) -> usize {
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
