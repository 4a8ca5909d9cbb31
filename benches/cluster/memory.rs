//! Figure 6: peak coordinator memory for one large patch — 50 MB of INSERTs (10 MB with
//! `--quick`) as `std` on 1 node and as `direct` on 3 nodes — against `psql -X -1 -f` of
//! the same file. The goal: at most 64 MB + 2 × the patch, whatever the number of nodes.
//! Not repeated: peak RSS barely varies, and each run moves the whole patch to every node.

use crate::*;

impl Bench {
    pub(crate) fn memory(&self, out: &mut Results) {
        let mib = self.settings.memory_patch_mib;
        let dir = self.dir("memory");
        let file = dir.join("big.sql");
        let (size, statements) = {
            let (body, statements) = big_inserts(mib << 20);
            write(&file, &body);
            (body.len(), statements)
        };
        let goal_kb = (64 << 10) + 2 * (size as u64 >> 10);
        for (kind, nodes) in [("std", 1usize), ("direct", 3)] {
            eprintln!("bench: [6] a {mib} MiB `{kind}` patch on {nodes} node(s)");
            let servers: Vec<usize> = (0..nodes).collect();
            let db = self.unique("mem");
            self.create_db(&servers, &db);
            let d = self.dir("memory");
            std::fs::copy(&file, d.join(format!("patches/patch-1-0-0-{kind}.sql")))
                .expect("copy the patch");
            let dsns: Vec<String> = servers.iter().map(|&i| self.servers[i].dsn(&db)).collect();
            let config = write_config(&d, &dsns, "");
            let ours = self.run_one(self.pgconvoy(&config, &["upgrade"]));
            for &i in &servers {
                self.assert_done(i, &db, "pgconvoy.revision", 1);
            }
            self.drop_db(&servers, &db);
            let base_db = self.unique("mempsql");
            self.create_db(&[0], &base_db);
            let base = self.run_one(self.psql_file(&self.servers[0].dsn(&base_db), &file, true));
            self.drop_db(&[0], &base_db);
            out.row(
                "6",
                &format!(
                    "memory: one {mib} MiB patch of INSERTs ({} statements), `{kind}` on {nodes} node(s), peak coordinator RSS",
                    thousands(statements)
                ),
                format!("{} in {}", mb(ours.max_rss_kb), secs(ours.wall.as_secs_f64())),
                format!(
                    "`psql -X -1 -f` of the same file on one node: {} in {}",
                    mb(base.max_rss_kb),
                    secs(base.wall.as_secs_f64())
                ),
                "—".into(),
                format!(
                    "≤ 64 MB + 2 × patch = {}: {}",
                    mb(goal_kb),
                    verdict(ours.max_rss_kb <= goal_kb)
                ),
            );
        }
    }
}

/// A patch of about `bytes` bytes: a table and one INSERT per row (a data fix that grew),
/// and how many statements it holds.
fn big_inserts(bytes: usize) -> (String, u64) {
    let mut body = String::with_capacity(bytes + 128);
    body.push_str("CREATE TABLE big (id int PRIMARY KEY, payload text);\n");
    let pad = "x".repeat(60);
    let mut n = 0u64;
    while body.len() < bytes {
        let _ = writeln!(body, "INSERT INTO big VALUES ({n}, '{pad}{n}');");
        n += 1;
    }
    (body, n + 1)
}
