//! Fault trials, black-box, against three real PostgreSQL servers: many times over,
//! a coordinator is killed (SIGKILL) at a random moment of a run of mixed patch
//! groups, or two coordinators race for the same cluster; after each trial the
//! ledgers and the patches' own effects must show that no body ran twice, that no
//! patch is recorded that did not complete, and that a re-run completes the cluster.
//!
//! `PGCONVOY_TRIALS` (default 50) sets the number of trials of each kind;
//! `PGCONVOY_SEED` (decimal or 0x-hex) replays a sequence of random kill moments
//! and race set-ups — every failure message prints the seed and the trial number.

mod common;
#[path = "common/trials.rs"]
mod trials;
use common::{finish, spawn};

use std::collections::BTreeMap;

use std::time::{Duration, Instant};

use common::cli::Run;
use common::Fixture;
use pgconvoy::localpg::LocalServer;
use trials::{
    completion_violations, dump, env_seed, env_trials, new_cluster, states, status_violations,
    violations, wait_quiet, Pg, Rng, NODES, PATCHES,
};

/// The shared servers the trials run on.
fn servers() -> Vec<&'static LocalServer> {
    common::servers().servers[..NODES].iter().collect()
}

fn admins(pg: &Pg) -> Vec<tokio_postgres::Client> {
    trials::admins(pg, &servers())
}

/// Re-runs `upgrade --all` and checks the cluster is complete: exit 0, status
/// clean, everything done everywhere, exactly one marker per (version, node).
fn rerun_completes(pg: &Pg, f: &Fixture, clients: &[tokio_postgres::Client], what: &str) {
    let run = finish(spawn(f, &["upgrade", "--all"]), 60);
    assert_eq!(
        run.code(),
        0,
        "{what}: the re-run failed\n{}\n{}",
        run.all(),
        dump(&states(pg, clients))
    );
    let left = wait_quiet(pg, clients, 5);
    assert!(left.is_empty(), "{what}: after the re-run: {left:?}");
    let after = states(pg, clients);
    let mut v = completion_violations(&after, PATCHES);
    v.extend(status_violations(f));
    assert!(
        v.is_empty(),
        "{what}: after the re-run:\n  {}\n{}\n--- re-run output\n{}",
        v.join("\n  "),
        dump(&after),
        run.all()
    );
}

/// How long a complete, undisturbed `upgrade --all` of the patch set takes here.
fn calibrate(pg: &Pg, admins: &[tokio_postgres::Client]) -> Duration {
    let f = new_cluster(pg, admins, &servers(), PATCHES, "cal");
    let clients: Vec<_> = f.dsns.iter().map(|d| pg.connect(d)).collect();
    let started = Instant::now();
    let run = finish(spawn(&f, &["upgrade", "--all"]), 60);
    let took = started.elapsed();
    assert_eq!(run.code(), 0, "calibration run failed:\n{}", run.all());
    let after = states(pg, &clients);
    let v = completion_violations(&after, PATCHES);
    assert!(
        v.is_empty(),
        "calibration run:\n  {}\n{}",
        v.join("\n  "),
        dump(&after)
    );
    took
}

// --- trial A: SIGKILL at a random moment ------------------------------------------

#[test]
fn trial_a_sigkill_at_random_moments_never_double_applies_or_falsely_records() {
    let trials = env_trials();
    let seed = env_seed();
    eprintln!("trial A: {trials} trials, PGCONVOY_SEED={seed:#x}");
    let pg = Pg::new();
    let admins = admins(&pg);
    let full = calibrate(&pg, &admins);
    // Kill moments spread over the whole of an undisturbed run (runs vary: some end first).
    let max_delay_ms = (full.as_millis() as u64).max(50);
    eprintln!("trial A: an undisturbed run takes {full:?}; kills land in 0..{max_delay_ms} ms");

    let started = Instant::now();
    let mut landed = 0;
    let mut done_at_kill: BTreeMap<usize, usize> = BTreeMap::new();
    for trial in 0..trials {
        let mut rng = Rng::new(seed ^ trial.wrapping_mul(0x1000_0000_01b3));
        let delay = Duration::from_millis(rng.below(max_delay_ms + 1));
        let what = format!(
            "trial A#{trial} (PGCONVOY_SEED={seed:#x}, kill after {}ms)",
            delay.as_millis()
        );
        let f = new_cluster(&pg, &admins, &servers(), PATCHES, "ta");
        let clients: Vec<_> = f.dsns.iter().map(|d| pg.connect(d)).collect();

        let mut child = spawn(&f, &["upgrade", "--all"]);
        std::thread::sleep(delay);
        let running = child.try_wait().expect("try_wait").is_none();
        child.kill().expect("SIGKILL");
        let out = child.wait_with_output().expect("wait");
        if running {
            landed += 1;
        } else {
            assert!(
                out.status.success(),
                "{what}: the run ended by itself, unsuccessfully:\n{}",
                Run(out).all()
            );
        }

        let left = wait_quiet(&pg, &clients, 10);
        assert!(
            left.is_empty(),
            "{what}: 10s after SIGKILL, pgconvoy backends remain: {left:?}"
        );
        let at_kill = states(&pg, &clients);
        let v = violations(&at_kill);
        assert!(
            v.is_empty(),
            "{what}: after the kill:\n  {}\n{}",
            v.join("\n  "),
            dump(&at_kill)
        );
        *done_at_kill
            .entry(at_kill[0].main.values().filter(|d| **d).count())
            .or_default() += 1;

        rerun_completes(&pg, &f, &clients, &what);
    }
    eprintln!(
        "trial A: {trials} trials in {:?}; {landed} kills landed mid-run; \
         patches done on the master at the kill -> trials: {done_at_kill:?}",
        started.elapsed()
    );
}

// --- trial B: two coordinators racing -----------------------------------------------

#[test]
fn trial_b_two_racing_coordinators_exit_0_or_3_and_never_double_apply() {
    let trials = env_trials();
    let seed = env_seed();
    eprintln!("trial B: {trials} trials, PGCONVOY_SEED={seed:#x}");
    let pg = Pg::new();
    let admins = admins(&pg);

    let started = Instant::now();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for trial in 0..trials {
        let mut rng = Rng::new(!seed ^ trial.wrapping_mul(0x1000_0000_01b3));
        // Started together a third of the time, else at any moment of the first's run
        // (an undisturbed run takes ~0.6 s here) or after it.
        let stagger = Duration::from_millis(if rng.below(3) == 0 {
            rng.below(20)
        } else {
            rng.below(900)
        });
        let first_waits = rng.below(4) == 0;
        let second_waits = rng.below(2) == 0;
        let args = |wait: bool| -> Vec<&'static str> {
            if wait {
                vec!["upgrade", "--all", "--wait"]
            } else {
                vec!["upgrade", "--all"]
            }
        };
        let what = format!(
            "trial B#{trial} (PGCONVOY_SEED={seed:#x}, second started {}ms later, --wait: first {first_waits}, second {second_waits})",
            stagger.as_millis()
        );
        let f = new_cluster(&pg, &admins, &servers(), PATCHES, "tb");
        let clients: Vec<_> = f.dsns.iter().map(|d| pg.connect(d)).collect();

        let a = spawn(&f, &args(first_waits));
        std::thread::sleep(stagger);
        let b = spawn(&f, &args(second_waits));
        let (a, b) = (finish(a, 60), finish(b, 60));
        for (name, r) in [("first", &a), ("second", &b)] {
            assert!(
                r.code() == 0 || r.code() == 3,
                "{what}: the {name} coordinator exited {}\n--- first\n{}\n--- second\n{}",
                r.code(),
                a.all(),
                b.all()
            );
        }
        *outcomes
            .entry(format!("{}/{}", a.code(), b.code()))
            .or_default() += 1;

        let left = wait_quiet(&pg, &clients, 5);
        assert!(left.is_empty(), "{what}: left running: {left:?}");
        let after = states(&pg, &clients);
        // At least one of them ran --all to the end.
        let v = completion_violations(&after, PATCHES);
        assert!(
            v.is_empty(),
            "{what}:\n  {}\n{}\n--- first\n{}\n--- second\n{}",
            v.join("\n  "),
            dump(&after),
            a.all(),
            b.all()
        );
        rerun_completes(&pg, &f, &clients, &what);
    }
    eprintln!(
        "trial B: {trials} trials in {:?}; exit codes first/second -> trials: {outcomes:?}",
        started.elapsed()
    );
}
