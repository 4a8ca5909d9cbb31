//! The baseline trial: three empty nodes and a patch directory with a baseline (the
//! schema of the first one to four patches of the set, as one file) and later patches;
//! `upgrade --all` baselines every node, then applies the rest, and the coordinator is
//! killed (SIGKILL) at a random moment or while a node runs the baseline's body. A node has
//! the baseline whole (schema and every row it records, `applied_by` saying so) or nothing
//! of it (still new), and recovery baselines the rest exactly once.

use std::time::{Duration, Instant};

use crate::common;
use crate::fault::{finish_trial, wait_run, wait_until, Expect, Outcome, Until};
use crate::lab::Lab;
use crate::mode::Mode;
use crate::trials::{self, Kind, PatchSpec, Rng, PATCHES};

/// The statement the moment watches for: a node sleeps in the baseline's body (the
/// baseline may go as one query: its text alone says the baseline started, not where).
const BODY_MARK: &str = "baseline_body_running";

/// The baseline covering `PATCHES[..=last]`: their bodies in order, with the markers a
/// real run would have left (a `std` patch's only on the master), and a sleep of its
/// own (`sleeps[n]` ms on node n) so that a kill can land inside it.
fn baseline_body(last: usize, sleeps: [u32; 3]) -> String {
    let mut body = String::new();
    for p in &PATCHES[..=last] {
        let mut text = p.body.to_string();
        if p.kind == Kind::Std {
            let plain = format!(
                "INSERT INTO body_runs VALUES ('{}', current_setting('trial.node'));",
                p.version
            );
            assert!(text.contains(&plain), "{}: no marker to adapt", p.version);
            text = text.replace(
                &plain,
                &format!(
                    "INSERT INTO body_runs SELECT '{}', current_setting('trial.node') \
                     WHERE current_setting('trial.node') = 'node0';",
                    p.version
                ),
            );
        }
        assert!(
            p.kind != Kind::Concurrent,
            "a baseline of transactional patches"
        );
        body.push_str(&text);
    }
    // Each node sleeps for its own time, so that a kill can find some nodes baselined
    // (committed) and others not.
    body.push_str(&format!(
        "SELECT pg_sleep(CASE current_setting('trial.node') WHEN 'node0' THEN {} \
         WHEN 'node1' THEN {} ELSE {} END / 1000.0) AS {BODY_MARK};\n",
        sleeps[0], sleeps[1], sleeps[2]
    ));
    body
}

pub fn trial(lab: &mut Lab, seed: u64) -> Outcome {
    let mut rng = Rng::new(seed);
    // The first four patches are direct and std: a baseline of 1-0-0 .. 1-{last}-0.
    let last = rng.below(4) as usize;
    let count = last + 1 + rng.below((PATCHES.len() - last) as u64) as usize;
    let patches = &PATCHES[..count];
    let f = lab.cluster(patches, "fb");
    let version = PATCHES[last].version;
    let sleeps = [0, 0, 0].map(|_: u32| [50, 300, 600][rng.below(3) as usize]);
    f.patch(
        &format!("baseline-{version}.sql"),
        &baseline_body(last, sleeps),
    );

    let full = (lab.full[Mode::None as usize].as_millis() as u64).max(50);
    let target = rng.below(3) as usize;
    let during_body = rng.below(2) == 0;
    let delay = Duration::from_millis(rng.below(full + 1));
    let plan = format!(
        "baseline-{version} (sleeps {sleeps:?} ms) + {} later patch(es), SIGKILL {}",
        count - last - 1,
        if during_body {
            format!("while node{target} runs the baseline body")
        } else {
            format!("after {} ms", delay.as_millis())
        }
    );

    let started = Instant::now();
    let mut child = common::spawn(&f, &["upgrade", "--all"]);
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'pgconvoy' AND wait_event = 'PgSleep' \
         AND query LIKE '%{BODY_MARK}%'"
    );
    let until = if during_body {
        Until::Seen {
            dsn: &f.dsns[target],
            sql: &sql,
        }
    } else {
        Until::Elapsed(delay)
    };
    let landed = wait_until(&lab.pg, &mut child, started, until);
    let _ = child.kill();
    let run = wait_run(&mut child, 60);

    let clients = lab.clients(&f);
    let _ = trials::wait_quiet(&lab.pg, &clients, crate::check::SETTLE.as_secs());
    let (mut v, still_new) = whole_or_nothing(lab, &clients, last);
    let baselined = clients.len() - still_new.len();
    let mut out = finish_trial(
        lab,
        &f,
        plan,
        landed,
        vec![run],
        Expect {
            mode: Mode::None,
            patches,
            recovery: &["upgrade", "--all"],
            joined_late: &[],
        },
    );
    out.plan = format!(
        "{}; {baselined} of 3 node(s) baselined at the kill",
        out.plan
    );
    // Each node's baseline is its own transaction: a node still new (nothing of the
    // baseline, checked above) lacks what the master's baseline records, as a new replica
    // lacks what the master finished (PRODUCT.md, catch-up), until recovery baselines it.
    let excused: Vec<String> = still_new
        .iter()
        .flat_map(|n| {
            PATCHES[..=last].iter().flat_map(move |p| {
                [
                    format!(
                        "invariant 1: {} is done on the master but not finished on node{n}",
                        p.version
                    ),
                    format!(
                        "invariant 1: {} is done on the master but its effect is missing on node{n}",
                        p.version
                    ),
                ]
            })
        })
        .collect();
    out.violations.retain(|x| !excused.contains(x));
    if out.violations.iter().all(|x| x.starts_with("(output")) {
        // Only the runs' output, which finish_trial adds to violations, is left.
        out.violations.clear();
    }
    v.append(&mut out.violations);
    v.extend(baselined_once(lab, &lab.clients(&f), last));
    out.violations = v;
    lab.drop_cluster(Mode::None, &f);
    out
}

/// The rows a node's role records up to the baseline (`std` ones on the master only).
fn recorded_by(n: usize, last: usize) -> Vec<&'static PatchSpec> {
    PATCHES[..=last].iter().filter(|p| p.runs_on(n)).collect()
}

/// Rows of the main book: version → applied_by (done rows only), and how many open rows.
fn book(lab: &Lab, c: &tokio_postgres::Client) -> (Vec<(String, String)>, usize) {
    if lab
        .pg
        .value(c, "SELECT to_regclass('pgconvoy.revision') IS NOT NULL")
        != "t"
    {
        return (Vec::new(), 0);
    }
    let rows = lab.pg.rows(
        c,
        &format!(
            "SELECT {}, coalesce(applied_by, '') FROM pgconvoy.revision",
            trials::LEDGER_ROWS
        ),
    );
    let open = rows
        .iter()
        .filter(|r| r[1].as_deref() != Some("true"))
        .count();
    let done = rows
        .into_iter()
        .filter(|r| r[1].as_deref() == Some("true"))
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[2].clone().unwrap_or_default(),
            )
        })
        .collect();
    (done, open)
}

/// Right after the kill, per node: either every row the baseline records there, with the
/// baseline's schema, or no ledger row and no user relation at all (the node is still new).
/// Also: the nodes still new (nothing of the baseline, nothing at all).
fn whole_or_nothing(
    lab: &Lab,
    clients: &[tokio_postgres::Client],
    last: usize,
) -> (Vec<String>, Vec<usize>) {
    let mut v = Vec::new();
    let mut still_new = Vec::new();
    for (n, c) in clients.iter().enumerate() {
        let (done, open) = book(lab, c);
        let wanted = recorded_by(n, last);
        let have: Vec<&PatchSpec> = wanted
            .iter()
            .copied()
            .filter(|p| done.iter().any(|(ver, _)| ver == p.version))
            .collect();
        let relations: i64 = lab
            .pg
            .value(
                c,
                "SELECT count(*) FROM pg_class k JOIN pg_namespace s ON s.oid = k.relnamespace \
                 WHERE k.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
                 AND s.nspname NOT IN ('pg_catalog', 'information_schema', 'pgconvoy') \
                 AND s.nspname NOT LIKE 'pg_toast%' AND s.nspname NOT LIKE 'pg_temp%'",
            )
            .parse()
            .unwrap_or(-1);
        if have.is_empty() {
            if relations != 0 || !done.is_empty() || open != 0 {
                v.push(format!(
                    "baseline: node{n} records none of the baseline's rows but has {relations} \
                     user relation(s), {} done and {open} open row(s): a partial baseline",
                    done.len()
                ));
            } else {
                still_new.push(n);
            }
            continue;
        }
        if have.len() != wanted.len() {
            v.push(format!(
                "baseline: node{n} records {} of the baseline's {} row(s): a partial baseline",
                have.len(),
                wanted.len()
            ));
        }
        for p in &wanted {
            let effect = lab.pg.value(c, &format!("SELECT ({})::text", p.effect));
            if effect != "true" {
                v.push(format!(
                    "baseline: node{n} records the baseline but the effect of {} is missing",
                    p.version
                ));
            }
        }
    }
    (v, still_new)
}

/// After recovery: on every node each row up to the baseline was written by a baseline
/// (the node was new, so no patch body replayed it), once.
fn baselined_once(lab: &Lab, clients: &[tokio_postgres::Client], last: usize) -> Vec<String> {
    let mut v = Vec::new();
    for (n, c) in clients.iter().enumerate() {
        let (done, _) = book(lab, c);
        for p in recorded_by(n, last) {
            let rows: Vec<&String> = done
                .iter()
                .filter(|(ver, _)| ver == p.version)
                .map(|(_, by)| by)
                .collect();
            if rows.len() != 1 || !rows[0].contains("baseline baseline-") {
                v.push(format!(
                    "baseline: node{n}: after recovery {} is recorded {} time(s), applied_by {rows:?}, \
                     not once by the baseline",
                    p.version,
                    rows.len()
                ));
            }
        }
    }
    v
}
