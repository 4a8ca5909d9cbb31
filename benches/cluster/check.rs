//! Figure 4: `check` on 10,000 patch files.

use crate::*;

impl Bench {
    pub(crate) fn check(&self, out: &mut Results) {
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
