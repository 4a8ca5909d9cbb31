//! Figure 2: per-patch overhead of tiny `std` and `direct` patches vs `psql -1 -f`.

use crate::*;

/// The `k`-th tiny patch body.
pub(crate) fn tiny_body(k: usize) -> String {
    format!("CREATE TABLE t_{k} (id integer PRIMARY KEY, note text);\n")
}

/// Writes `n` tiny patches of `kind` into `dir/patches` and their concatenation to
/// `dir/all.sql`.
pub(crate) fn tiny_patches(dir: &Path, n: usize, kind: &str) -> PathBuf {
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
    /// Figure 2 at the issue-16 side-by-side size (200 patches: goals ≤ 1.15× on one node,
    /// ≤ 1.2× on 3) and at the full size (1,000: ≤ 1.3× and ≤ 1.6×).
    pub(crate) fn per_patch(&self, out: &mut Results) {
        let sizes = [
            (self.settings.side_by_side_patches, 1.15, 1.2),
            (self.settings.tiny_patches, 1.3, 1.6),
        ];
        for (n, std_goal, direct_goal) in sizes {
            self.per_patch_of(out, n, std_goal, direct_goal);
        }
    }

    fn per_patch_of(&self, out: &mut Results, n: usize, std_goal: f64, direct_goal: f64) {
        eprintln!("bench: [2] {n} tiny patches");
        let std_dir = self.dir(&format!("tiny_std_{n}"));
        let std_all = tiny_patches(&std_dir, n, "std");
        let direct_dir = self.dir(&format!("tiny_direct_{n}"));
        let direct_all = tiny_patches(&direct_dir, n, "direct");

        // The lockstep's share: the same direct patches as 3 independent one-node runs.
        let alone: Vec<PathBuf> = (0..3)
            .map(|i| direct_dir.join(format!("node{i}-alone.yaml")))
            .collect();
        let mut t: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        for rep in 0..self.settings.reps {
            let mut order = [0, 1, 2, 3, 4];
            order.rotate_left(rep % 5);
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
                    3 => {
                        self.create_db(&[0, 1, 2], &db);
                        let jobs = (0..3)
                            .map(|i| self.psql_file(&self.servers[i].dsn(&db), &direct_all, true))
                            .collect();
                        ("direct psql", self.run(jobs, 3))
                    }
                    _ => {
                        self.create_db(&[0, 1, 2], &db);
                        let jobs = (0..3)
                            .map(|i| {
                                write(&alone[i], &cluster_yaml(&[self.servers[i].dsn(&db)], ""));
                                self.pgconvoy(&alone[i], &["upgrade", "--all"])
                            })
                            .collect();
                        let s = self.run(jobs, 3);
                        for i in 0..3 {
                            self.assert_done(i, &db, "pgconvoy.revision", n);
                        }
                        ("direct pgconvoy alone", s)
                    }
                };
                self.drop_db(on, &db);
                t.entry(key).or_default().push(s.wall.as_secs_f64());
            }
        }
        for (k, v) in &t {
            log_samples("2", &format!("{n} patches, {k}"), v);
        }
        let m = |k: &str| median(t[k].clone());
        let r = |a: &str, b: &str| paired_ratio(&t[a], &t[b]);
        let (ours, base) = (m("std pgconvoy"), m("std psql"));
        let ratio = r("std pgconvoy", "std psql");
        let patches = thousands(n as u64);
        out.row(
            "2",
            &format!(
                "per-patch overhead: {patches} tiny `std` patches (`CREATE TABLE t_K (id integer PRIMARY KEY, note text)`), 1 node, `upgrade --all`"
            ),
            format!("{} ({:.2} ms/patch)", secs(ours), ours * 1000.0 / n as f64),
            format!(
                "`psql -X -1 -f` of the same SQL concatenated: {} ({:.2} ms/patch)",
                secs(base),
                base * 1000.0 / n as f64
            ),
            format!("**{ratio:.2}**"),
            format!("≤ {std_goal}: {}", verdict(ratio <= std_goal)),
        );
        let (ours, base) = (m("direct pgconvoy"), m("direct psql"));
        let ratio = r("direct pgconvoy", "direct psql");
        out.row(
            "2",
            &format!("{patches} tiny `direct` patches, 3 nodes, `upgrade --all`"),
            format!("{} ({:.2} ms/patch)", secs(ours), ours * 1000.0 / n as f64),
            format!(
                "3 parallel `psql -X -1 -f`, one per node: {} ({:.2} ms/patch)",
                secs(base),
                base * 1000.0 / n as f64
            ),
            format!("**{ratio:.2}**"),
            format!("≤ {direct_goal}: {}", verdict(ratio <= direct_goal)),
        );
        let ours = m("direct pgconvoy alone");
        let ratio = r("direct pgconvoy alone", "direct psql");
        out.row(
            "2",
            &format!(
                "for reference, the same {patches} `direct` patches as 3 independent one-node `upgrade --all` runs in parallel: pgconvoy on each node without the lockstep (which costs the difference to the row above)"
            ),
            format!("{} ({:.2} ms/patch)", secs(ours), ours * 1000.0 / n as f64),
            "the 3 parallel `psql -X -1 -f` above".to_string(),
            format!("**{ratio:.2}**"),
            "—".to_string(),
        );
    }
}
