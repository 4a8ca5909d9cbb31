//! The fault campaign (issue 18), run by `scripts/faults`, not by a plain `cargo test`
//! (its one test is ignored): seeded trials against PostgreSQL servers of its own, each
//! in a replication mode (none, logical, physical: `mode`) drawn from its seed, a random
//! patch set (or a package deploy) and ONE fault at a random moment or on a targeted
//! event, then the five invariants (`check`, `mode`). Every trial prints the `KIND:SEED`
//! that replays it. See docs/faults.md.
//!
//! Environment (set by scripts/faults): `FAULTS_TRIALS` (default 20), `FAULTS_SEED`
//! (decimal or 0x-hex; default from the clock), `FAULTS_KINDS` (comma-separated; default
//! all), `FAULTS_MODES` (comma-separated replication modes; default all),
//! `FAULTS_REPLAY` (`KIND:SEED`: that one trial), `FAULTS_REPORT` (a file for the
//! per-kind table in Markdown, rewritten after every trial), `FAULTS_MINUTES` (start no
//! trial after this many minutes), `FAULTS_LANES` (labs running trials side by side,
//! 1-4; default 1).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/trials.rs"]
mod trials;

mod baseline;
mod check;
mod fault;
mod lab;
mod mode;
mod packages;
mod slony;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fault::Kind;
use mode::Mode;
use trials::{Rng, PATCHES};

/// What `scripts/faults` asked for.
struct Settings {
    trials: u64,
    seed: u64,
    kinds: Vec<Kind>,
    modes: Vec<Mode>,
    replay: Option<(Kind, u64)>,
    report: Option<String>,
    minutes: Option<u64>,
    /// Labs running trials side by side (1-4).
    lanes: usize,
}

fn parse_u64(what: &str, s: &str) -> u64 {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .unwrap_or_else(|e| panic!("{what}={s:?}: {e}"))
}

fn parse_kind(s: &str) -> Kind {
    Kind::parse(s.trim()).unwrap_or_else(|| {
        let all: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        panic!("unknown fault kind {s:?}; kinds: {}", all.join(", "))
    })
}

impl Settings {
    fn from_env() -> Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let seed = var("FAULTS_SEED")
            .map(|s| parse_u64("FAULTS_SEED", &s))
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        let kinds = match var("FAULTS_KINDS") {
            Some(k) => k.split(',').map(parse_kind).collect(),
            None => Kind::ALL.to_vec(),
        };
        let modes = match var("FAULTS_MODES") {
            Some(m) => m
                .split(',')
                .map(|m| {
                    Mode::parse(m.trim()).unwrap_or_else(|| {
                        panic!("unknown replication mode {m:?}; modes: none, logical, physical")
                    })
                })
                .collect(),
            None => Mode::ALL.to_vec(),
        };
        let replay = var("FAULTS_REPLAY").map(|r| {
            let (k, s) = r
                .split_once(':')
                .unwrap_or_else(|| panic!("FAULTS_REPLAY={r:?}: expected KIND:SEED"));
            (parse_kind(k), parse_u64("FAULTS_REPLAY", s))
        });
        Settings {
            trials: var("FAULTS_TRIALS")
                .map(|t| parse_u64("FAULTS_TRIALS", &t))
                .unwrap_or(20),
            seed,
            kinds,
            modes,
            replay,
            report: var("FAULTS_REPORT"),
            minutes: var("FAULTS_MINUTES").map(|m| parse_u64("FAULTS_MINUTES", &m)),
            lanes: var("FAULTS_LANES")
                .map(|l| parse_u64("FAULTS_LANES", &l).clamp(1, 4) as usize)
                .unwrap_or(1),
        }
    }

    /// The trials: kinds in turn (so that every kind gets its share), each with a seed
    /// of its own drawn from the campaign's: the next one whose replication mode
    /// (`Mode::of`) was asked for and makes sense for the kind. A kind that fits none of
    /// the modes asked for gets no trials.
    fn schedule(&self) -> Vec<(Kind, u64)> {
        if let Some(r) = self.replay {
            return vec![r];
        }
        let mut rng = Rng::new(self.seed);
        (0..self.trials)
            .filter_map(|i| {
                let kind = self.kinds[i as usize % self.kinds.len()];
                (0..64)
                    .map(|_| rng.next())
                    .find(|&s| {
                        let m = Mode::of(s);
                        self.modes.contains(&m) && m.unfit(kind).is_none()
                    })
                    .map(|s| (kind, s))
            })
            .collect()
    }
}

#[derive(Default)]
struct Tally {
    trials: u64,
    landed: u64,
    violations: u64,
    skipped: u64,
    exits: BTreeMap<String, u64>,
    took: Duration,
}

/// What the lanes share: the next trial to take, the tally, the failures.
struct Shared<'a> {
    settings: &'a Settings,
    schedule: &'a [(Kind, u64)],
    next: AtomicUsize,
    started: Instant,
    results: Mutex<Results>,
}

#[derive(Default)]
struct Results {
    tally: BTreeMap<(Kind, Mode), Tally>,
    failed: Vec<String>,
}

#[test]
#[ignore = "the fault campaign: run it with scripts/faults"]
fn campaign() {
    let settings = Settings::from_env();
    let schedule = settings.schedule();
    let lanes = if settings.replay.is_some() {
        1
    } else {
        settings.lanes
    };
    eprintln!(
        "fault campaign: {} trial(s), FAULTS_SEED={:#x}, {lanes} lane(s)",
        schedule.len(),
        settings.seed
    );
    let shared = Shared {
        settings: &settings,
        schedule: &schedule,
        next: AtomicUsize::new(0),
        started: Instant::now(),
        results: Mutex::new(Results::default()),
    };
    // Each lane is a lab of its own (servers, namespace) taking the next trial in turn:
    // trials mostly wait on servers and timeouts, so two labs use the cores better.
    std::thread::scope(|s| {
        for lane in 0..lanes {
            let shared = &shared;
            s.spawn(move || run_lane(lane, shared));
        }
    });
    let results = shared
        .results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let table = render(&results.tally, settings.seed, shared.started.elapsed());
    eprintln!("\n{table}");
    if let Some(path) = &settings.report {
        std::fs::write(path, &table).unwrap_or_else(|e| panic!("write {path}: {e}"));
    }
    assert!(
        results.failed.is_empty(),
        "{} trial(s) violated an invariant; replay each with scripts/faults --replay: {}",
        results.failed.len(),
        results.failed.join(" ")
    );
}

/// One lane: its own lab, calibrated, then trials taken from the shared schedule until
/// it is done or the time is up.
fn run_lane(lane: usize, shared: &Shared<'_>) {
    let settings = shared.settings;
    // Namespace indexes 3, 2, 1, 0 (one per lane; this process makes no others).
    let mut lab = lab::Lab::start(3 - lane as u8);
    if let Some(why) = &lab.no_ns {
        eprintln!("lane {lane}: no network namespace ({why}): the blackhole kind is skipped");
    }
    for m in Mode::ALL {
        if settings.modes.contains(&m) || settings.replay.is_some() {
            lab.full[m as usize] = calibrate(&lab, m);
        }
    }
    lab.deploy_full = packages::calibrate(&lab);
    eprintln!(
        "lane {lane}: an undisturbed upgrade --all takes {:?} (none, logical, physical), a \
         deploy {:?}; random moments fall within them",
        lab.full, lab.deploy_full
    );
    loop {
        if let Some(m) = settings.minutes {
            if shared.started.elapsed() >= Duration::from_secs(m * 60) {
                eprintln!("lane {lane}: FAULTS_MINUTES={m} reached");
                return;
            }
        }
        let i = shared.next.fetch_add(1, Ordering::SeqCst);
        let Some((kind, seed)) = shared.schedule.get(i).copied() else {
            return;
        };
        let t0 = Instant::now();
        let out = fault::trial(&mut lab, kind, seed);
        let took = t0.elapsed();
        let mode = Mode::of(seed);
        let replay = format!("{}:{seed:#018x}", kind.name());
        let mut results = shared.results.lock().unwrap_or_else(|e| e.into_inner());
        let t = results.tally.entry((kind, mode)).or_default();
        if let Some(why) = out.skipped {
            t.skipped += 1;
            eprintln!("trial {i:4} {replay}: skipped ({why})");
            continue;
        }
        t.trials += 1;
        t.landed += u64::from(out.landed);
        t.took += took;
        *t.exits.entry(out.exits.clone()).or_default() += 1;
        let verdict = if out.violations.is_empty() {
            "ok".to_string()
        } else {
            t.violations += 1;
            format!("{} VIOLATION(S)", out.violations.len())
        };
        let mut line = format!(
            "trial {i:4} {replay}: {}, {}; fault {}; exit {}; {verdict} ({:.1}s{})",
            mode.name(),
            out.plan,
            if out.landed {
                "landed"
            } else {
                "missed (run over)"
            },
            out.exits,
            took.as_secs_f64(),
            if settings.lanes > 1 {
                format!(", lane {lane}")
            } else {
                String::new()
            }
        );
        for v in &out.violations {
            let _ = write!(line, "\n    {v}");
        }
        if !out.violations.is_empty() {
            let _ = write!(line, "\n    replay: scripts/faults --replay {replay}");
            results.failed.push(replay);
        }
        eprintln!("{line}");
        if let Some(path) = &settings.report {
            let table = render(&results.tally, settings.seed, shared.started.elapsed());
            std::fs::write(path, &table).unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
    }
}

/// How long an undisturbed `upgrade --all` of the whole patch set takes in `mode`.
fn calibrate(lab: &lab::Lab, mode: Mode) -> Duration {
    let f = lab.cluster_in(mode, PATCHES, "fcal");
    let started = Instant::now();
    let run = f.run(&["upgrade", "--all"]);
    let took = started.elapsed();
    assert_eq!(run.code(), 0, "calibration run failed:\n{}", run.all());
    if mode == Mode::Logical {
        mode::unsubscribe(lab, &f);
    }
    lab.drop_cluster(mode, &f);
    took
}

/// The per-kind table (Markdown): trials per replication mode (`n/a`: the kind makes no
/// sense in that mode), then the kind's totals.
fn render(tally: &BTreeMap<(Kind, Mode), Tally>, seed: u64, took: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| kind | none | logical | physical | trials | fault landed mid-run | violations | exit codes (trials) | mean trial |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---|---:|");
    let mut kinds: Vec<Kind> = tally.keys().map(|(k, _)| *k).collect();
    kinds.dedup();
    let mut total = Tally::default();
    let mut per_mode: BTreeMap<Mode, u64> = BTreeMap::new();
    for kind in kinds {
        let mut t = Tally::default();
        let mut cells = Vec::new();
        for m in Mode::ALL {
            let cell = match tally.get(&(kind, m)) {
                _ if m.unfit(kind).is_some() => "n/a".to_string(),
                None => "0".to_string(),
                Some(k) => {
                    t.trials += k.trials;
                    t.landed += k.landed;
                    t.violations += k.violations;
                    t.skipped += k.skipped;
                    t.took += k.took;
                    for (e, n) in &k.exits {
                        *t.exits.entry(e.clone()).or_default() += n;
                    }
                    *per_mode.entry(m).or_default() += k.trials;
                    if k.skipped > 0 {
                        format!("{} ({} skipped)", k.trials, k.skipped)
                    } else {
                        k.trials.to_string()
                    }
                }
            };
            cells.push(cell);
        }
        let exits: Vec<String> = t.exits.iter().map(|(e, n)| format!("{e}: {n}")).collect();
        let mean = if t.trials > 0 {
            format!("{:.1} s", t.took.as_secs_f64() / t.trials as f64)
        } else {
            "-".into()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {mean} |",
            kind.name(),
            cells[0],
            cells[1],
            cells[2],
            t.trials,
            t.landed,
            t.violations,
            exits.join(", ")
        );
        total.trials += t.trials;
        total.landed += t.landed;
        total.violations += t.violations;
    }
    let mode_total = |m: Mode| per_mode.get(&m).copied().unwrap_or(0);
    let _ = writeln!(
        s,
        "| **all** | **{}** | **{}** | **{}** | **{}** | **{}** | **{}** | | |",
        mode_total(Mode::None),
        mode_total(Mode::Logical),
        mode_total(Mode::Physical),
        total.trials,
        total.landed,
        total.violations
    );
    let _ = writeln!(
        s,
        "\nFAULTS_SEED={seed:#x}, {:.0} min in all.",
        took.as_secs_f64() / 60.0
    );
    s
}
