//! The benchmark suite: pgconvoy against the physical limit, on local servers started by
//! the project's harness (`pgconvoy::localpg`), every figure a ratio to a baseline
//! measured in the same run (medians of several repetitions), written as a Markdown
//! table to `bench/out/results.md`.
//!
//! `bench/run [--quick]` is the one command (it builds, then runs this). Directly:
//! `cargo bench --bench cluster -- [--quick] [--only 1,2,3,4,5,6]`.
//!
//! 1. fan-out: one `concurrent` patch (`CREATE INDEX CONCURRENTLY`) on 3 nodes vs `psql`
//!    on one node, on the 3 in parallel (the physical limit) and one after the other;
//! 2. per-patch overhead: 200 and 1,000 tiny `std` patches on one node vs `psql -1 -f` of
//!    the same SQL, tiny `direct` patches on 3 nodes vs 3 parallel `psql -1 -f`;
//! 3. scale: `status` and one `direct` patch on 4, 16, 64 and 1,000 nodes (databases over
//!    4 servers; `--quick`: up to 64): time per node, peak coordinator RSS, most
//!    connections held;
//! 4. planning: `check` on 10,000 patch files;
//! 5. where the time of figure 2 goes: statements and round trips per patch, counted in
//!    the server log (`log_min_duration_statement = 0` on that run's databases only);
//! 6. memory: one 50 MB patch (10 MB with `--quick`) as `std` on 1 node and `direct` on 3
//!    nodes, peak coordinator RSS against `psql -1 -f`, goal ≤ 64 MB + 2 × the patch.
//! 7. rehearsal: the dry run against the real run of a generated history of mixed DDL on
//!    3 nodes, empty and on top of applied patches.
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

use pgconvoy::localpg::{cluster_yaml, scrub_pg_env, LocalServer, PgBinaries, ServerOptions};

mod bench;
mod breakdown;
mod check;
/// The generated patch history the tests use too.
#[path = "../../tests/common/corpus.rs"]
mod corpus;
mod fanout;
mod memory;
mod monitor;
mod per_patch;
mod rehearsal;
mod results;
mod run;
mod scale;

pub(crate) use bench::*;
pub(crate) use monitor::*;
pub(crate) use results::*;
pub(crate) use run::*;

/// What one invocation measures, and how hard.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) quick: bool,
    /// Repetitions of every timed measurement (the median is reported).
    pub(crate) reps: usize,
    /// Rows of the fan-out table on each node.
    pub(crate) fanout_rows: u64,
    /// Tiny patches in figure 2.
    pub(crate) tiny_patches: usize,
    /// Tiny patches in figure 2's side-by-side case (issue 16's goals for the lockstep and
    /// the per-patch overhead are set on 200).
    pub(crate) side_by_side_patches: usize,
    /// Node counts of figure 3.
    pub(crate) scale_nodes: Vec<usize>,
    /// Patch files of figure 4.
    pub(crate) check_files: usize,
    /// Patches of the figure-5 breakdown run.
    pub(crate) breakdown_patches: usize,
    /// Size of the figure-6 patch, in MiB.
    pub(crate) memory_patch_mib: usize,
    /// Figure 7: generated patches applied first, and rehearsed (then applied).
    pub(crate) corpus_applied: usize,
    pub(crate) corpus_pending: usize,
    /// Figures to run (all when empty).
    pub(crate) only: Vec<u32>,
}

impl Settings {
    pub(crate) fn from_args() -> Settings {
        let mut quick = false;
        let mut only = Vec::new();
        let mut reps = None;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--reps" => {
                    reps = args.next().and_then(|n| n.parse().ok());
                    assert!(reps.is_some_and(|n| n > 0), "--reps takes a count");
                }
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
            reps: reps.unwrap_or(if quick { 3 } else { 7 }),
            fanout_rows: if quick { 200_000 } else { 2_000_000 },
            tiny_patches: 1000,
            side_by_side_patches: 200,
            scale_nodes: if quick {
                vec![4, 16, 64]
            } else {
                vec![4, 16, 64, 1000]
            },
            check_files: 10_000,
            breakdown_patches: if quick { 100 } else { 200 },
            memory_patch_mib: if quick { 10 } else { 50 },
            corpus_applied: 100,
            corpus_pending: if quick { 100 } else { 300 },
            only,
        }
    }

    pub(crate) fn runs(&self, figure: u32) -> bool {
        self.only.is_empty() || self.only.contains(&figure)
    }
}

// The pool size and jobs pgconvoy uses by default (`cluster.yaml` leaves them out).
use pgconvoy::config::{DEFAULT_JOBS, DEFAULT_POOL_SIZE};

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
    if s.runs(6) {
        bench.memory(&mut out);
    }
    if s.runs(7) {
        bench.rehearsal(&mut out);
    }
    let md = out.markdown(&bench, started.elapsed());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/out/results.md");
    std::fs::create_dir_all(path.parent().expect("has a parent")).expect("create bench/out");
    std::fs::write(&path, &md).expect("write bench/out/results.md");
    println!("{md}");
    // The README's summary shows full-size figures only.
    if !bench.settings.quick {
        let stamp = format!(
            "{}, load average {} → {}{}",
            today(),
            bench.load_before,
            load_average(),
            niceness()
        );
        let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        match update_readme(&readme, &out, &stamp) {
            Ok(true) => eprintln!("bench: updated the performance summary in README.md"),
            Ok(false) => eprintln!("bench: README.md has no performance summary section"),
            Err(e) => eprintln!("bench: README.md: {e}"),
        }
    }
    eprintln!(
        "bench: wrote {} in {:.0} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
}
