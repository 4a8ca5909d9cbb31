//! Figure 1: fan-out of one `concurrent` patch to 3 nodes vs `psql`.

use crate::*;

impl Bench {
    pub(crate) fn fanout(&self, out: &mut Results) {
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
