//! Progress on stderr, black-box: `--progress json` (one object per event and line, index
//! builds included), plain timestamped lines off a terminal, and on a terminal (a pty from
//! util-linux `script`) live lines per node, or one line per state with many nodes.

mod common;

use std::process::Command;

use common::Fixture;
use serde_json::Value;

/// A table whose index takes a few seconds to build: its expression sleeps 10 ms a row.
fn slow_index_patches(f: &Fixture) {
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE slow (id int);\n\
         CREATE FUNCTION slow_id(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE\n\
           AS $$ BEGIN PERFORM pg_sleep(0.01); RETURN i; END $$;\n\
         INSERT INTO slow SELECT g FROM generate_series(1, 300) g;\n",
    );
    f.patch(
        "patch-1-1-0-concurrent.sql",
        "-- an index that takes a while\n\
         CREATE INDEX CONCURRENTLY slow_idx\n  ON slow (slow_id(id));\n",
    );
}

#[test]
fn progress_json_is_one_event_per_line_with_statements_and_index_progress() {
    let f = Fixture::new(1);
    slow_index_patches(&f);
    let run = f.run(&["upgrade", "--all", "--progress", "json"]);
    run.expect(0);
    let events: Vec<Value> = run
        .stderr()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for kind in [
        "note",
        "group_start",
        "node_start",
        "statement",
        "node_done",
        "patch_done",
    ] {
        assert!(kinds.contains(&kind), "no {kind} event in {kinds:?}");
    }
    for e in &events {
        let at = e["at"].as_str().expect("every event has `at`");
        assert!(at.ends_with('Z') && at.len() == 24, "{at}");
    }
    let statement = events
        .iter()
        .find(|e| e["event"] == "statement" && e["patch"] == "1-1-0")
        .expect("the index statement");
    assert_eq!(statement["node"], "node0");
    assert!(statement["statement"]
        .as_str()
        .unwrap()
        .starts_with("CREATE INDEX CONCURRENTLY slow_idx"));
    let index: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "index_progress")
        .collect();
    assert!(
        !index.is_empty(),
        "no index progress during a 3 s build: {kinds:?}"
    );
    assert_eq!(index[0]["patch"], "1-1-0");
    assert!(index[0]["phase"].as_str().unwrap().len() > 3);
    // stdout keeps the summary.
    assert!(run.stdout().contains("applied 2 patch(es)"));
}

#[test]
fn off_a_terminal_progress_is_plain_timestamped_lines() {
    let f = Fixture::new(2);
    f.patch(
        "patch-1-0-0-concurrent.sql",
        "CREATE TABLE p (id int);\nCREATE INDEX CONCURRENTLY p_id ON p (id);\n",
    );
    let run = f.run(&["upgrade"]);
    run.expect(0);
    let stderr = run.stderr();
    assert!(!stderr.is_empty());
    for line in stderr.lines() {
        let (at, _) = line.split_once(' ').unwrap();
        assert!(
            at.len() == 20 && at.ends_with('Z'),
            "untimestamped line {line:?}"
        );
    }
    assert!(
        stderr.contains("1-0-0 on node1: statement 2/2: CREATE INDEX CONCURRENTLY p_id"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "escape sequences off a terminal:\n{stderr}"
    );
}

/// Runs pgconvoy under a pseudo-terminal (`script`); returns what the terminal showed,
/// without escape sequences, or None when `script` is not installed.
fn on_a_terminal(f: &Fixture, args: &str) -> Option<String> {
    // A wide terminal, so that whole lines fit.
    let cmd = format!(
        "stty rows 50 cols 200 2>/dev/null; {} {args}",
        common::cli::bin()
    );
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .current_dir(f.scratch.path())
        .env("COLUMNS", "200")
        .env_remove("PGPASSWORD")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(_) => {
            eprintln!("skipped: util-linux `script` is not installed");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgconvoy {args} failed on a terminal:\n{text}"
    );
    Some(strip_escapes(&text))
}

/// Drops ANSI escape sequences (ESC [ … final byte) and carriage returns.
fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for d in chars.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                }
                out.push('\n');
            }
            '\r' => out.push('\n'),
            c => out.push(c),
        }
    }
    out
}

#[test]
fn on_a_terminal_each_node_line_shows_patch_statement_elapsed_and_index_phase() {
    let f = Fixture::new(2);
    slow_index_patches(&f);
    let Some(screen) = on_a_terminal(&f, "upgrade --all") else {
        return;
    };
    let running: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains("1-1-0") && l.contains("running"))
        .collect();
    let shows = |needle: &str| running.iter().any(|l| l.contains(needle));
    assert!(
        shows("node0") && shows("node1"),
        "no running line per node:\n{screen}"
    );
    assert!(
        shows("s  CREATE INDEX CONCURRENTLY slow_idx"),
        "no elapsed time and statement on the running lines:\n{}",
        running.join("\n")
    );
    assert!(
        shows("·  CREATE INDEX CONCURRENTLY slow_idx"),
        "no index phase before the statement:\n{}",
        running.join("\n")
    );
    assert!(
        shows("building index") || shows("waiting for"),
        "no index build phase:\n{}",
        running.join("\n")
    );
    assert!(screen.contains("done in"), "{screen}");
}

#[test]
fn on_a_terminal_many_nodes_show_one_line_per_state() {
    let s = common::servers();
    let db = common::unique_db("many");
    let mut dsns = Vec::new();
    for k in 0..7 {
        for server in &s.servers {
            let name = format!("{db}_{k}");
            server.create_database(&name).expect("create database");
            dsns.push(server.dsn(&name));
        }
    }
    let f = Fixture::with_dsns(db, dsns);
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE many (id int);\nSELECT pg_sleep(1);\n",
    );
    let Some(screen) = on_a_terminal(&f, "upgrade") else {
        return;
    };
    assert!(
        screen
            .lines()
            .any(|l| l.contains("running") && l.contains("1-0-0; longest:")),
        "no summary of the running nodes:\n{screen}"
    );
    assert!(screen.contains("done      21"), "{screen}");
    assert!(
        !screen.contains("node20  1-0-0"),
        "a line per node with 21 nodes:\n{screen}"
    );
}
