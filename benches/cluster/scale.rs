//! Figure 3: `status` and one `direct` patch on 4 to 1,000 nodes (a fleet of same-schema
//! databases spread over the servers).

use crate::*;

impl Bench {
    pub(crate) fn scale(&self, out: &mut Results) {
        // Every database costs about 8 MB of the servers' data dirs, which are on tmpfs
        // (memory): 1,000 nodes take 8 GB. On a machine without that much to spare the
        // larger counts are left out (and the results say so) rather than starving it.
        let room = mem_available_kb() / 2 / DATABASE_KB;
        let counts: Vec<usize> = self
            .settings
            .scale_nodes
            .iter()
            .copied()
            .filter(|&n| n <= room)
            .collect();
        for &n in self.settings.scale_nodes.iter().filter(|&&n| n > room) {
            let msg = format!(
                "Figure 3 at {n} nodes was left out: {n} databases need about {} MB and \
                 the machine had {} MB available (the bench takes at most half).",
                n * DATABASE_KB / 1024,
                mem_available_kb() / 1024
            );
            eprintln!("bench: [3] {msg}");
            out.notes.push(msg);
        }
        if counts.is_empty() {
            return;
        }
        let max_nodes = *counts.iter().max().expect("node counts");
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
        // Those are the nodes that already live on `mon_server` (every 4th): a second set
        // of databases would double the memory the figure takes.
        let mon_server = servers - 1;
        let mut mon_dsns: Vec<String> = (0..max_nodes)
            .filter(|&i| node_server(i) == mon_server)
            .map(|i| dsns[i].clone())
            .collect();
        // At least 64 (the count where `jobs` bites): a few more when the fleet is small.
        let mon_base = self.unique("scale_mon");
        let more: Vec<String> = (mon_dsns.len()..max_nodes.min(64))
            .map(|i| format!("{mon_base}_{i}"))
            .collect();
        if !more.is_empty() {
            let sql: String = more
                .iter()
                .map(|d| format!("CREATE DATABASE \"{d}\";\n"))
                .collect();
            self.servers[mon_server]
                .psql("postgres", &sql)
                .expect("create dbs");
            mon_dsns.extend(more.iter().map(|d| self.servers[mon_server].dsn(d)));
        }
        let mon_nodes = mon_dsns.len();
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
            for &n in &counts {
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
        let first = counts[0];
        // Time per node at `n` ÷ time per node at the smallest count (paired by repetition).
        let growth = |n: usize, k: &'static str| {
            paired_ratio(&t[&(n, k)], &t[&(first, k)]) * first as f64 / n as f64
        };
        // The fleet goal: time per node at the largest count ÷ time per node at 64 nodes.
        let from = if counts.contains(&64) && max_nodes > 64 {
            64
        } else {
            first
        };
        let fleet = |k: &'static str| {
            let g =
                paired_ratio(&t[&(max_nodes, k)], &t[&(from, k)]) * from as f64 / max_nodes as f64;
            (
                format!("growth per node from {from} to {max_nodes}: {g:.2}×"),
                format!(
                    "growth from {from} to {max_nodes} nodes < 1.3×: {}",
                    verdict(g < 1.3)
                ),
            )
        };
        for &n in &counts {
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
                "**{:.2}** ({})",
                r(max_nodes, "status pgconvoy", "status psql"),
                fleet("status pgconvoy").0
            ),
            fleet("status pgconvoy").1,
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
                "**{:.2}** ({})",
                r(max_nodes, "direct pgconvoy", "direct psql"),
                fleet("direct pgconvoy").0
            ),
            fleet("direct pgconvoy").1,
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
                &format!("most connections at once, {mon_nodes} nodes, {command}, {label}"),
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
             Connections are sampled every 5 ms in separate, untimed runs with the {mon_nodes} \
             databases of one server, so that each sample is one consistent snapshot. \
             Each run gets a fresh ledger table (`ledger_table:`), the same state as fresh \
             databases without creating databases per repetition."
        ));
    }
}

/// About what one database of a fresh PostgreSQL 15 cluster takes on disk (7.5 MB), in kB.
const DATABASE_KB: usize = 8 * 1024;

/// `MemAvailable` from `/proc/meminfo`, in kB (0 when unknown: nothing fits).
fn mem_available_kb() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
