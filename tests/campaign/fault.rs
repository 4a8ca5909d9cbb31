//! The fault kinds and one trial of each: a plan drawn from the trial's seed (patch set,
//! flags, moment), the run, ONE fault, then recovery and the invariants (`check`).

use std::time::{Duration, Instant};

use crate::check;
use crate::common::cli::Run;
use crate::common::{self, Fixture};
use crate::lab::Lab;
use crate::mode::{self, Mode};
use crate::trials::{self, PatchSpec, Rng, PATCHES};
use crate::{baseline, packages, slony};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Kind {
    Sigkill,
    Sigint,
    Sigterm,
    Terminate,
    ReplicaRestart,
    Second,
    LockStorm,
    Blackhole,
    StopUnlock,
    CatchUpRestart,
    DeployKill,
    BaselineKill,
    SlonyScriptKill,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Sigkill,
        Kind::Sigint,
        Kind::Sigterm,
        Kind::Terminate,
        Kind::ReplicaRestart,
        Kind::Second,
        Kind::LockStorm,
        Kind::Blackhole,
        Kind::StopUnlock,
        Kind::CatchUpRestart,
        Kind::DeployKill,
        Kind::BaselineKill,
        Kind::SlonyScriptKill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Sigkill => "sigkill",
            Kind::Sigint => "sigint",
            Kind::Sigterm => "sigterm",
            Kind::Terminate => "terminate",
            Kind::ReplicaRestart => "replica-restart",
            Kind::Second => "second-coordinator",
            Kind::LockStorm => "lock-storm",
            Kind::Blackhole => "blackhole",
            Kind::StopUnlock => "stop-unlock",
            Kind::CatchUpRestart => "catch-up-restart",
            Kind::DeployKill => "deploy-kill",
            Kind::BaselineKill => "baseline-kill",
            Kind::SlonyScriptKill => "slony-script-kill",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// When the fault lands.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// This long after the coordinator started.
    After(Duration),
    /// Once a pgconvoy session on the node runs a patch body's `pg_sleep`.
    Sleeping(usize),
    /// Once the node holds a prepared transaction of pgconvoy's (`--atomic`).
    Prepared(usize),
}

/// Everything a trial does, drawn from its seed.
struct Plan {
    /// How many patches of the set (a prefix: the first creates the tables).
    patches: usize,
    /// For the catch-up kind: how many of them node0 and node1 have before node2 joins.
    before_join: usize,
    atomic: bool,
    jobs1: bool,
    moment: Moment,
    /// The replica a restart or black hole hits (1 or 2).
    replica: usize,
    /// Kind-specific randomness (durations, choices).
    rng: Rng,
}

impl Plan {
    fn draw(kind: Kind, seed: u64, full: Duration) -> Plan {
        let mut rng = Rng::new(seed);
        let patches = 2 + rng.below(PATCHES.len() as u64 - 1) as usize;
        let before_join = 1 + rng.below(patches as u64) as usize;
        let atomic = rng.below(10) < 3;
        let jobs1 = rng.below(4) == 0;
        let replica = 1 + rng.below(2) as usize;
        // Random moments fall within an undisturbed run of this many patches.
        let full_ms = (full.as_millis() as u64 * patches as u64 / PATCHES.len() as u64).max(50);
        let moment = match rng.below(4) {
            0 | 1 => Moment::After(Duration::from_millis(rng.below(full_ms + 1))),
            2 if atomic => Moment::Prepared(rng.below(3) as usize),
            _ => Moment::Sleeping(match kind {
                Kind::CatchUpRestart => 2,
                _ => rng.below(3) as usize,
            }),
        };
        Plan {
            patches,
            before_join,
            atomic,
            jobs1,
            moment,
            replica,
            rng,
        }
    }

    fn args(&self) -> Vec<&'static str> {
        let mut a = vec!["upgrade", "--all"];
        if self.atomic {
            a.push("--atomic");
        }
        if self.jobs1 {
            a.extend(["--jobs", "1"]);
        }
        a
    }

    fn describe(&self) -> String {
        format!(
            "{} patches{}{}, fault {:?}",
            self.patches,
            if self.atomic { ", --atomic" } else { "" },
            if self.jobs1 { ", --jobs 1" } else { "" },
            self.moment
        )
    }
}

/// What a trial found.
pub struct Outcome {
    pub plan: String,
    /// Whether the fault hit a running coordinator (false: the run had ended first).
    pub landed: bool,
    /// The faulted runs' exit codes, `/`-joined.
    pub exits: String,
    pub violations: Vec<String>,
    /// Why the trial could not run here (the kind's prerequisite is missing).
    pub skipped: Option<String>,
}

/// One trial of `kind` from `seed`, in the replication mode the seed draws.
pub fn trial(lab: &mut Lab, kind: Kind, seed: u64) -> Outcome {
    let mode = Mode::of(seed);
    if let Some(why) = mode.unfit(kind) {
        return Outcome::skipped(format!("not in {} mode: {why}", mode.name()));
    }
    if kind == Kind::Blackhole {
        if let Some(why) = &lab.no_ns {
            return Outcome::skipped(why.clone());
        }
    }
    match kind {
        Kind::DeployKill => return packages::trial(lab, mode, seed),
        Kind::BaselineKill => return baseline::trial(lab, seed),
        Kind::SlonyScriptKill => return slony::trial(lab, seed),
        _ => {}
    }
    let mut plan = Plan::draw(kind, seed, lab.full[mode as usize]);
    if mode == Mode::Physical {
        // The standby runs no body and prepares nothing: targeted moments are on node0,
        // and the replica a fault hits is the standby.
        plan.moment = match plan.moment {
            Moment::Sleeping(_) => Moment::Sleeping(0),
            Moment::Prepared(_) => Moment::Prepared(0),
            m => m,
        };
        plan.replica = 1;
    }
    let patches = &PATCHES[..plan.patches];
    let mut f = lab.cluster_in(mode, patches, "fc");
    if kind == Kind::CatchUpRestart {
        // node2 joins a cluster that finished the first patches without it.
        let all = f.dsns.clone();
        f.dsns.truncate(2);
        for p in &patches[plan.before_join..] {
            f.scratch.remove_patch(&p.file());
        }
        f.write_config(mode.config());
        let run = f.run(&["upgrade", "--all"]);
        if run.code() != 0 {
            if mode == Mode::Logical {
                mode::unsubscribe(lab, &f);
            }
            lab.drop_cluster(mode, &f);
            return Outcome::failed(
                plan.describe(),
                format!(
                    "setup: the 2-node run failed:\n{}",
                    check::indent(&run.all())
                ),
            );
        }
        for p in &patches[plan.before_join..] {
            f.patch(&p.file(), p.body);
        }
        f.dsns = all;
        f.write_config(mode.config());
    }
    if kind == Kind::LockStorm && plan.rng.below(2) == 0 {
        // Short lock timeouts and few retries, so that the storm also fails runs.
        f.write_config(&format!(
            "{}lock_timeout: 200ms\nlock_retries: 2\n",
            mode.config()
        ));
    }

    // Logical: node0's own traffic goes on through the run, the fault and recovery.
    let feeding = mode == Mode::Logical;
    if feeding {
        mode::feed(lab, &f, 0, 50);
    }
    let started = Instant::now();
    let first = common::spawn(&f, &plan.args());
    let pid = first.id() as libc::pid_t;
    let (mut first, running) = wait_moment(lab, &f, plan.moment, started, first);
    let mut others: Vec<std::process::Child> = Vec::new();
    let mut ended: Vec<Option<Run>> = Vec::new();
    if running {
        inject(lab, &f, mode, kind, &mut plan, pid, &mut others, &mut ended);
    }
    if feeding {
        mode::feed(lab, &f, 1, 50);
    }
    let mut runs = vec![wait_run(&mut first, 180)];
    runs.append(&mut ended);
    for mut o in others {
        runs.push(wait_run(&mut o, 180));
    }
    lab.heal();
    if feeding {
        mode::feed(lab, &f, 2, 50);
    }
    let joined_late = match kind {
        Kind::CatchUpRestart => &patches[..plan.before_join],
        _ => &[],
    };
    let out = finish_trial(
        lab,
        &f,
        plan.describe(),
        running,
        runs,
        Expect {
            mode,
            patches,
            recovery: &["upgrade", "--all"],
            joined_late,
        },
    );
    // The caller's checks are done: the database goes (a long campaign fills the disk).
    lab.drop_cluster(mode, &f);
    out
}

/// Waits for the moment; returns the child and whether it still runs at the moment.
fn wait_moment(
    lab: &Lab,
    f: &Fixture,
    moment: Moment,
    started: Instant,
    mut child: std::process::Child,
) -> (std::process::Child, bool) {
    let until = match moment {
        Moment::After(d) => Until::Elapsed(d),
        Moment::Prepared(n) => Until::Seen {
            dsn: &f.dsns[n],
            sql: "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
        },
        Moment::Sleeping(n) => Until::Seen {
            dsn: &f.dsns[n],
            sql: "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                  AND application_name = 'pgconvoy' AND state = 'active' \
                  AND query ILIKE '%pg_sleep%'",
        },
    };
    let still = wait_until(&lab.pg, &mut child, started, until);
    (child, still)
}

/// What a trial waits for before its fault.
pub enum Until<'a> {
    /// This long after the run started.
    Elapsed(Duration),
    /// Until `sql` (a count) on the node at `dsn` is not 0: a session sleeping in a body,
    /// a prepared transaction.
    Seen { dsn: &'a str, sql: &'a str },
}

/// Waits for `until` while the child runs; whether it still runs at that moment (the
/// fault lands mid-run).
pub fn wait_until(
    pg: &trials::Pg,
    child: &mut std::process::Child,
    started: Instant,
    until: Until<'_>,
) -> bool {
    let mut running = || child.try_wait().ok().flatten().is_none();
    let reached = match until {
        Until::Elapsed(d) => {
            while started.elapsed() < d && running() {
                std::thread::sleep(Duration::from_millis(5));
            }
            true
        }
        Until::Seen { dsn, sql } => {
            let c = pg.connect(dsn);
            loop {
                if !running() {
                    break false;
                }
                if pg.value(&c, sql) != "0" {
                    break true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    reached && running()
}

/// After a violation, the runs' output goes with it, so that the report explains itself.
pub fn with_outputs(v: &mut Vec<String>, runs: &[(String, Option<&Run>)], recovery: &Run) {
    if v.is_empty() {
        return;
    }
    for (name, r) in runs {
        if let Some(r) = r {
            v.push(format!("(output of {name}:)\n{}", check::indent(&r.all())));
        }
    }
    v.push(format!(
        "(output of the recovery run:)\n{}",
        check::indent(&recovery.all())
    ));
}

fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child this process spawned and has not reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The fault itself, on a running coordinator `pid`.
#[allow(clippy::too_many_arguments)]
fn inject(
    lab: &mut Lab,
    f: &Fixture,
    mode: Mode,
    kind: Kind,
    plan: &mut Plan,
    pid: libc::pid_t,
    others: &mut Vec<std::process::Child>,
    ended: &mut Vec<Option<Run>>,
) {
    match kind {
        Kind::Sigkill => signal(pid, libc::SIGKILL),
        Kind::Sigint => signal(pid, libc::SIGINT),
        Kind::Sigterm => signal(pid, libc::SIGTERM),
        Kind::Terminate => {
            // Any of pgconvoy's sessions, on any node: the lock's, a body's, a claim's.
            let mut sessions = Vec::new();
            for (n, dsn) in f.dsns.iter().enumerate() {
                let c = lab.pg.connect(dsn);
                for r in lab.pg.rows(
                    &c,
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                     AND application_name = 'pgconvoy'",
                ) {
                    sessions.push((n, r[0].clone().unwrap_or_default()));
                }
            }
            if !sessions.is_empty() {
                let (n, victim) = &sessions[plan.rng.below(sessions.len() as u64) as usize];
                let c = lab.pg.connect(&f.dsns[*n]);
                lab.pg
                    .rows(&c, &format!("SELECT pg_terminate_backend({victim})"));
            }
        }
        Kind::ReplicaRestart | Kind::CatchUpRestart => {
            let n = if kind == Kind::CatchUpRestart {
                2
            } else {
                plan.replica
            };
            lab.server_mut(mode, n)
                .restart()
                .expect("restart a replica");
        }
        Kind::Second => {
            let mut args = plan.args();
            if plan.rng.below(2) == 0 {
                args.push("--wait");
            }
            others.push(common::spawn(f, &args));
        }
        Kind::LockStorm => {
            // For 1-4 s, sessions on random nodes take the patches' table in ACCESS
            // EXCLUSIVE mode for 50-1500 ms at a time (not on a standby: it cannot).
            let until = Instant::now() + Duration::from_millis(1000 + plan.rng.below(3000));
            let clients: Vec<_> = f.dsns[..mode.writable()]
                .iter()
                .map(|d| lab.pg.connect(d))
                .collect();
            while Instant::now() < until {
                let c = &clients[plan.rng.below(clients.len() as u64) as usize];
                let hold = 50 + plan.rng.below(1450);
                let _ = lab.pg.rt.block_on(c.batch_execute(&format!(
                    "BEGIN; \
                     DO $$ BEGIN IF to_regclass('items') IS NOT NULL THEN \
                       LOCK TABLE items IN ACCESS EXCLUSIVE MODE; END IF; END $$; \
                     SELECT pg_sleep({}); COMMIT",
                    hold as f64 / 1000.0
                )));
                std::thread::sleep(Duration::from_millis(plan.rng.below(200)));
            }
        }
        Kind::Blackhole => {
            let ns = lab.ns.as_ref().expect("a namespace");
            ns.blackhole().expect("black-hole node2");
            std::thread::sleep(Duration::from_millis(1000 + plan.rng.below(5000)));
            ns.heal().expect("heal node2");
        }
        Kind::StopUnlock => {
            signal(pid, libc::SIGSTOP);
            if lab.has_unlock {
                let _ = f.run(&["unlock", "--force"]);
            } else {
                // `unlock --force` is not on this build: end the lock's session as it would.
                let _ = f.try_psql(
                    0,
                    "SELECT pg_terminate_backend(pid, 20000) FROM pg_locks \
                     WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' \
                       AND objsubid = 1 AND database = \
                       (SELECT oid FROM pg_database WHERE datname = current_database())",
                );
            }
            if plan.rng.below(2) == 0 {
                // A second coordinator takes the cluster while the first is stopped.
                let mut second = common::spawn(f, &plan.args());
                ended.push(wait_run(&mut second, 60));
            }
            std::thread::sleep(Duration::from_millis(plan.rng.below(1000)));
            signal(pid, libc::SIGCONT);
        }
        Kind::DeployKill | Kind::BaselineKill | Kind::SlonyScriptKill => {
            unreachable!("a trial of its own")
        }
    }
}

/// Waits for a run, killing it if it outlives `secs` (a hung coordinator).
pub fn wait_run(child: &mut std::process::Child, secs: u64) -> Option<Run> {
    let done = common::wait_for(secs, || child.try_wait().ok().flatten().is_some());
    if !done {
        let _ = child.kill();
    }
    let mut out = std::process::Output {
        status: child.wait().expect("wait"),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read;
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut out.stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut out.stderr);
    }
    done.then_some(Run(out))
}

/// What recovery expects of a trial's cluster.
pub struct Expect<'a> {
    pub mode: Mode,
    /// The patches a complete run leaves done (none: a deploy trial).
    pub patches: &'a [PatchSpec],
    /// The command that completes the cluster (`upgrade --all`, `deploy`).
    pub recovery: &'a [&'a str],
    /// Patches node2 may lack right after the fault (it joined late).
    pub joined_late: &'a [PatchSpec],
}

/// After the fault: invariant 1, recovery (`recover` when status reports prepared
/// transactions, then `expect.recovery`), invariants 2-5.
pub fn finish_trial(
    lab: &Lab,
    f: &Fixture,
    plan: String,
    landed: bool,
    runs: Vec<Option<Run>>,
    expect: Expect<'_>,
) -> Outcome {
    let Expect {
        mode,
        patches,
        recovery,
        joined_late,
    } = expect;
    let mut v = Vec::new();
    let mut exits = Vec::new();
    let mut window_ran_out = false;
    for r in &runs {
        match r {
            Some(r) => {
                exits.push(r.code().to_string());
                window_ran_out |= r.code() == 1 && r.all().contains("pgconvoy recover");
            }
            None => {
                exits.push("hung".into());
                v.push("a coordinator was still running 180 s after the fault".into());
            }
        }
    }
    let clients = lab.clients(f);
    // The dead coordinator's sessions go once their servers notice.
    let _ = crate::trials::wait_quiet(&lab.pg, &clients, check::SETTLE.as_secs());
    if !patches.is_empty() {
        v.extend(check::after_fault(
            lab,
            mode,
            &clients,
            window_ran_out,
            joined_late,
        ));
    }
    if mode == Mode::Logical {
        // As an operator would, recovery waits for the subscribers to be back (pgconvoy
        // refuses to start while a subscription is down); one that does not come back is
        // a broken cluster.
        v.extend(
            mode::wait_subscribers(lab, f, mode::CONVERGE.as_secs())
                .into_iter()
                .map(|p| format!("invariant 2 (logical): after the fault, {p}")),
        );
    }
    if check::status_says_prepared(f) {
        v.extend(check::recovery_run("recover", &f.run(&["recover"])));
    }
    let rec = f.run(recovery);
    v.extend(check::recovery_run(&recovery.join(" "), &rec));
    let clients = lab.clients(f);
    match mode {
        Mode::Physical if !mode::wait_replayed(lab, f, mode::CONVERGE.as_secs()) => {
            v.push(format!(
                "invariant 2 (physical): the standby did not replay the master's WAL within {} s",
                mode::CONVERGE.as_secs()
            ))
        }
        Mode::Logical => v.extend(mode::fed_everywhere(lab, f, mode::CONVERGE.as_secs())),
        _ => {}
    }
    if patches.is_empty() {
        v.extend(packages::completed(lab, &clients));
    } else {
        v.extend(check::completed(lab, mode, f, &clients, patches));
    }
    v.extend(check::nothing_left(lab, &clients, 10));
    if mode == Mode::Logical {
        mode::unsubscribe(lab, f);
    }
    let named: Vec<_> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("faulted run {i}"), r.as_ref()))
        .collect();
    with_outputs(&mut v, &named, &rec);
    Outcome {
        plan,
        landed,
        exits: exits.join("/"),
        violations: v,
        skipped: None,
    }
}

impl Outcome {
    pub fn skipped(why: String) -> Outcome {
        Outcome {
            plan: String::new(),
            landed: false,
            exits: String::new(),
            violations: Vec::new(),
            skipped: Some(why),
        }
    }

    fn failed(plan: String, why: String) -> Outcome {
        Outcome {
            plan,
            landed: false,
            exits: String::new(),
            violations: vec![why],
            skipped: None,
        }
    }
}
