//! Figure 7: the dry run against the real run of the same patches on the same 3 nodes, on
//! a generated history of mixed DDL and data (`tests/common/corpus.rs`): on an empty
//! cluster, and on top of applied patches (the rehearsal then probes its locks on the
//! tables that exist).

use crate::*;

impl Bench {
    pub(crate) fn rehearsal(&self, out: &mut Results) {
        let (applied, pending) = (self.settings.corpus_applied, self.settings.corpus_pending);
        eprintln!("bench: [7] dry run and real run of generated patches on 3 nodes");
        let nodes = [0usize, 1, 2];
        // Two patch directories: all the patches, and the ones applied first.
        let all_dir = self.dir("corpus_all");
        crate::corpus::write(&all_dir.join("patches"), 0, pending, "direct");
        let base_dir = self.dir("corpus_base");
        crate::corpus::write(&base_dir.join("patches"), 0, applied, "direct");
        let on_top_dir = self.dir("corpus_on_top");
        crate::corpus::write(&on_top_dir.join("patches"), 0, applied + pending, "direct");

        let mut t: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        for _ in 0..self.settings.reps {
            for (label, dir, base) in [
                ("empty", &all_dir, None),
                ("on top", &on_top_dir, Some(&base_dir)),
            ] {
                let db = self.unique("corpus");
                self.create_db(&nodes, &db);
                let dsns: Vec<String> = nodes.iter().map(|&i| self.servers[i].dsn(&db)).collect();
                if let Some(base) = base {
                    let cfg = write_config(base, &dsns, "");
                    self.run_one(self.pgconvoy(&cfg, &["upgrade", "--all"]));
                }
                let cfg = write_config(dir, &dsns, "");
                let dry = self.run_one(
                    self.pgconvoy(&cfg, &["upgrade", "--all", "--dry-run", "--format", "json"]),
                );
                let real = self.run_one(self.pgconvoy(&cfg, &["upgrade", "--all"]));
                let done = pending + base.map_or(0, |_| applied);
                self.assert_done(0, &db, "pgconvoy.revision", done);
                self.drop_db(&nodes, &db);
                let (d, r) = match label {
                    "empty" => ("empty dry", "empty real"),
                    _ => ("on top dry", "on top real"),
                };
                t.entry(d).or_default().push(dry.wall.as_secs_f64());
                t.entry(r).or_default().push(real.wall.as_secs_f64());
            }
        }
        for (k, v) in &t {
            log_samples("7", k, v);
        }
        let m = |k: &str| median(t[k].clone());
        for (what, dry, real) in [
            (
                format!(
                    "rehearsal: `upgrade --all --dry-run` of {pending} generated `direct` patches of mixed DDL and data (about 4 statements each), 3 empty nodes"
                ),
                "empty dry",
                "empty real",
            ),
            (
                format!(
                    "〃 {pending} patches on top of {applied} applied ones (most change existing tables: the rehearsal probes their locks)"
                ),
                "on top dry",
                "on top real",
            ),
        ] {
            let ratio = paired_ratio(&t[dry], &t[real]);
            out.row(
                "7",
                &what,
                secs(m(dry)),
                format!(
                    "the real run of the same patches on the same nodes (`upgrade --all`): {}",
                    secs(m(real))
                ),
                format!("**{ratio:.2}**"),
                format!("≤ 1.5: {}", verdict(ratio <= 1.5)),
            );
        }
    }
}
