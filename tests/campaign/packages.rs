//! The deploy trial: two code packages (the second depending on the first, many objects so
//! that a kill lands mid-deploy) deployed with or without `--atomic`, the coordinator
//! killed at a random moment; a package is on a node whole (schema and record) or not at
//! all, and a re-run deploys it everywhere exactly once.

use std::time::{Duration, Instant};

use crate::check;
use crate::common::{self, Fixture};
use crate::fault::{finish_trial, wait_run, wait_until, Expect, Outcome, Until};
use crate::lab::Lab;
use crate::mode::Mode;
use crate::trials::Rng;

const FUNCTIONS: usize = 40;

/// The packages of a trial: `calc` (a type and FUNCTIONS functions) and `report` (a view
/// and a function over calc's), owned by `fc_owner`, used by `fc_user`.
fn write_packages(f: &Fixture) {
    let yaml = |name: &str, depends: &str| {
        format!(
            "name: {name}\nversion: 1.0.0\ndescription: fault campaign\nsubclass: versioned\n\
             owner_role: fc_owner\nuser_roles: [fc_user]\ndepends: [{depends}]\n"
        )
    };
    f.scratch
        .write("packages/calc/package.yaml", &yaml("calc", ""));
    f.scratch.write(
        "packages/calc/types/pair.sql",
        "CREATE TYPE pair AS (a int, b int);\n",
    );
    for i in 0..FUNCTIONS {
        f.scratch.write(
            &format!("packages/calc/functions/f{i}.sql"),
            &format!(
                "CREATE FUNCTION f{i}(p pair) RETURNS int LANGUAGE sql IMMUTABLE \
                 AS $$ SELECT (p).a + (p).b + {i} $$;\n"
            ),
        );
    }
    f.scratch
        .write("packages/report/package.yaml", &yaml("report", "calc"));
    f.scratch.write(
        "packages/report/functions/total.sql",
        "CREATE FUNCTION total() RETURNS int LANGUAGE sql STABLE \
         AS $$ SELECT calc_1_0_0.f1(ROW(1, 2)::calc_1_0_0.pair) $$;\n",
    );
}

/// The roles the packages name, on every writable server (roles are per server; a
/// standby has its primary's).
fn ensure_roles(lab: &Lab, mode: Mode, f: &Fixture) {
    for c in lab.clients(f).iter().take(mode.writable()) {
        lab.pg.rows(
            c,
            "DO $$ BEGIN \
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fc_owner') THEN \
                 CREATE ROLE fc_owner NOLOGIN; END IF; \
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fc_user') THEN \
                 CREATE ROLE fc_user NOLOGIN; END IF; \
             EXCEPTION WHEN unique_violation OR duplicate_object THEN NULL; END $$",
        );
    }
}

/// How long an undisturbed deploy of the packages takes (once per campaign).
pub fn calibrate(lab: &Lab) -> Duration {
    let f = lab.cluster(&[], "fcal");
    ensure_roles(lab, Mode::None, &f);
    write_packages(&f);
    let started = Instant::now();
    let run = f.run(&["deploy"]);
    let took = started.elapsed();
    assert_eq!(run.code(), 0, "calibration deploy failed:\n{}", run.all());
    lab.drop_cluster(Mode::None, &f);
    took
}

pub fn trial(lab: &mut Lab, mode: Mode, seed: u64) -> Outcome {
    let mut rng = Rng::new(seed);
    let f = lab.cluster_in(mode, &[], "fd");
    ensure_roles(lab, mode, &f);
    write_packages(&f);
    let atomic = rng.below(10) < 4;
    let full = lab.deploy_full.as_millis() as u64;
    let delay = Duration::from_millis(rng.below(full.max(50) + 1));
    let plan = format!(
        "deploy{}, SIGKILL after {} ms",
        if atomic { " --atomic" } else { "" },
        delay.as_millis()
    );
    let args: &[&str] = if atomic {
        &["deploy", "--atomic"]
    } else {
        &["deploy"]
    };
    let started = Instant::now();
    let mut child = common::spawn(&f, args);
    let landed = wait_until(&lab.pg, &mut child, started, Until::Elapsed(delay));
    let _ = child.kill();
    let run = wait_run(&mut child, 60);
    let clients = lab.clients(&f);
    let _ = crate::trials::wait_quiet(&lab.pg, &clients, check::SETTLE.as_secs());
    let mut early = whole_or_nothing(lab, mode, &clients);
    let mut out = finish_trial(
        lab,
        &f,
        plan,
        landed,
        vec![run],
        Expect {
            mode,
            patches: &[],
            recovery: &["deploy"],
            joined_late: &[],
        },
    );
    early.append(&mut out.violations);
    out.violations = early;
    lab.drop_cluster(mode, &f);
    out
}

/// Invariant 1 for packages: on each node a package's schema exists exactly when a live
/// record says so, and no node records a deploy whose part another node holds prepared.
fn whole_or_nothing(lab: &Lab, mode: Mode, clients: &[tokio_postgres::Client]) -> Vec<String> {
    let mut v = Vec::new();
    let mut recorded_ids = Vec::new();
    for (n, c) in clients.iter().enumerate() {
        for (pkg, schema) in [("calc", "calc_1_0_0"), ("report", "report_1_0_0")] {
            let has_schema = lab.pg.value(
                c,
                &format!("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = '{schema}')"),
            ) == "t";
            let rows = records(lab, c, pkg);
            if has_schema != (rows == 1) {
                v.push(format!(
                    "invariant 1: node{n}: schema {schema} {} but {rows} live record(s) of {pkg}",
                    if has_schema { "exists" } else { "is missing" }
                ));
            }
        }
        if lab
            .pg
            .value(c, "SELECT to_regclass('pgconvoy.package') IS NOT NULL")
            == "t"
        {
            for r in lab
                .pg
                .rows(c, "SELECT DISTINCT deploy_id FROM pgconvoy.package")
            {
                recorded_ids.push(r[0].clone().unwrap_or_default());
            }
        }
    }
    // A standby shows the master's prepared transactions as far as it replayed.
    for (n, gid) in check::prepared(lab, &clients[..mode.writable()]) {
        if recorded_ids
            .iter()
            .any(|id| gid.contains(&format!(":deploy-{id}:")))
        {
            v.push(format!(
                "invariant 1: a node recorded the deploy while node{n} holds its part prepared ({gid})"
            ));
        }
    }
    v
}

fn records(lab: &Lab, c: &tokio_postgres::Client, pkg: &str) -> i64 {
    if lab
        .pg
        .value(c, "SELECT to_regclass('pgconvoy.package') IS NOT NULL")
        != "t"
    {
        return 0;
    }
    lab.pg
        .value(
            c,
            &format!(
                "SELECT count(*) FROM pgconvoy.package WHERE name = '{pkg}' AND state = 'live'"
            ),
        )
        .parse()
        .unwrap_or(-1)
}

/// Invariants 2 and 3 after the re-run: both packages on every node, recorded once,
/// working.
pub fn completed(lab: &Lab, clients: &[tokio_postgres::Client]) -> Vec<String> {
    let mut v = Vec::new();
    for (n, c) in clients.iter().enumerate() {
        for pkg in ["calc", "report"] {
            let rows = records(lab, c, pkg);
            if rows != 1 {
                v.push(format!(
                    "invariant 2/3: node{n}: {rows} live record(s) of {pkg} after the re-run"
                ));
            }
        }
        let answer = lab
            .pg
            .rt
            .block_on(c.simple_query("SELECT report_1_0_0.total()::text"));
        let ok = matches!(&answer, Ok(m) if m.iter().any(|m| matches!(m,
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("4"))));
        if !ok {
            v.push(format!(
                "invariant 2: node{n}: report_1_0_0.total() does not answer 4: {answer:?}"
            ));
        }
    }
    v
}
