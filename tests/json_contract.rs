//! The JSON contract, black-box: every `--format json` document of every command —
//! succeeding, failing, refusing — is one object valid against `docs/schema/`, carries
//! the process's exit code, RFC 3339 UTC times and errors as objects.

mod common;

use common::contract::document;
use common::{finish, pgconvoy_sleeping, spawn, wait_for, Fixture};
use serde_json::Value;

fn versions(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// A fixture whose `1-0-0` is applied and whose file then changed (drift), with
/// `1-1-0` still pending.
fn drifted() -> Fixture {
    let f = Fixture::new(2);
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE drifting (id int);\n",
    );
    f.run(&["upgrade"]).expect(0);
    f.patch(
        "patch-1-0-0-direct.sql",
        "CREATE TABLE drifting (id int, changed int);\n",
    );
    f.patch(
        "patch-1-1-0-direct.sql",
        "CREATE TABLE after_drift (id int);\n",
    );
    f
}

#[test]
fn status_documents_success_unreachable_drift_and_bad_config() {
    let f = Fixture::new(2);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE st (id int);\n");
    let doc = document(f.run(&["status", "--format", "json"]).expect(0));
    assert_eq!(doc["schema_version"], 1);
    assert_eq!(doc["command"], "status");
    assert!(doc["error"].is_null());
    assert_eq!(versions(&doc["nodes"][1]["pending"]), ["1-0-0"]);
    assert!(doc["started_at"].as_str().unwrap() <= doc["finished_at"].as_str().unwrap());

    // An unreachable node: exit 1, its error an object naming it.
    let mut dsns = f.dsns.clone();
    dsns.push(format!(
        "host=127.0.0.1 port=1 dbname={} user=postgres",
        f.db
    ));
    let g = Fixture::with_dsns(f.db.clone(), dsns);
    g.patch("patch-1-0-0-direct.sql", "CREATE TABLE st (id int);\n");
    let doc = document(g.run(&["status", "--format", "json"]).expect(1));
    assert_eq!(doc["error"]["kind"], "node-unreachable");
    assert_eq!(doc["error"]["node"], "node2");
    let node = &doc["nodes"][2];
    assert_eq!(node["reachable"], false);
    assert_eq!(node["error"]["kind"], "node-unreachable");
    assert_eq!(node["error"]["node"], "node2");

    // Drift: exit 2; pending still says what is pending.
    let d = drifted();
    let doc = document(d.run(&["status", "--format", "json"]).expect(2));
    assert_eq!(doc["error"]["kind"], "drift");
    assert_eq!(doc["error"]["patch"], "1-0-0");
    assert_eq!(versions(&doc["nodes"][0]["pending"]), ["1-1-0"]);
    let drift = &doc["nodes"][0]["drift"][0];
    assert_eq!(drift["patch"], "1-0-0");
    assert_eq!(drift["kind"], "changed");

    // No config at all: the envelope alone, exit 2.
    let empty = common::cli::Scratch::new();
    let doc = document(empty.run(&["status", "--format", "json"]).expect(2));
    assert_eq!(doc["error"]["kind"], "config");
    assert!(doc.get("nodes").is_none());
}

#[test]
fn upgrade_documents_success_with_times_per_patch_and_node() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE ok1 (id int);\n");
    f.patch(
        "patch-1-1-0-concurrent.sql",
        "CREATE INDEX CONCURRENTLY ok1_id ON ok1 (id);\n",
    );
    f.patch("patch-1-2-0-std.sql", "INSERT INTO ok1 VALUES (1);\n");
    let doc = document(f.run(&["upgrade", "--all", "--format", "json"]).expect(0));
    assert_eq!(doc["dry_run"], false);
    assert_eq!(versions(&doc["applied"]), ["1-0-0", "1-1-0", "1-2-0"]);
    assert_eq!(versions(&doc["pending"]), Vec::<String>::new());
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 3 + 3 + 1);
    let (start, end) = (
        doc["started_at"].as_str().unwrap(),
        doc["finished_at"].as_str().unwrap(),
    );
    for r in results {
        let (s, e) = (
            r["started_at"].as_str().unwrap(),
            r["finished_at"].as_str().unwrap(),
        );
        assert!(
            start <= s && s <= e && e <= end,
            "{r} outside {start}..{end}"
        );
    }
    // Nothing to do: still a document, exit 0.
    let doc = document(f.run(&["upgrade", "--format", "json"]).expect(0));
    assert_eq!(versions(&doc["applied"]), Vec::<String>::new());
}

#[test]
fn a_failing_patch_is_an_error_object_with_node_patch_sqlstate_and_message() {
    let f = Fixture::new(3);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE fails (id int);\n");
    f.psql(2, "CREATE TABLE fails (id int)");
    let doc = document(f.run(&["upgrade", "--format", "json"]).expect(1));
    let e = &doc["error"];
    assert_eq!(e["kind"], "patch-failed");
    assert_eq!(e["node"], "node2");
    assert_eq!(e["patch"], "1-0-0");
    assert_eq!(e["sqlstate"], "42P07");
    assert_eq!(e["file"], "patch-1-0-0-direct.sql");
    assert_eq!(e["line"], 1);
    assert!(e["message"].as_str().unwrap().contains("already exists"));
    let failed: Vec<&Value> = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["ok"] == false)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["node"], "node2");
    assert_eq!(failed[0]["error"]["sqlstate"], "42P07");
    assert_eq!(versions(&doc["pending"]), ["1-0-0"]);
}

#[test]
fn refusals_print_their_document_drift_with_pending_and_a_broken_patch_directory() {
    let d = drifted();
    let doc = document(d.run(&["upgrade", "--format", "json"]).expect(2));
    assert_eq!(doc["error"]["kind"], "drift");
    assert_eq!(doc["error"]["node"], "node0");
    assert_eq!(doc["error"]["patch"], "1-0-0");
    // Pending is meaningful on drift too.
    assert_eq!(versions(&doc["pending"]), ["1-1-0"]);
    assert_eq!(doc["planned"], false);

    let f = Fixture::new(1);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE x (id int)\n");
    let doc = document(f.run(&["upgrade", "--format", "json"]).expect(2));
    assert_eq!(doc["error"]["kind"], "patch-directory");

    // --patch-type refuses the next group.
    let f = Fixture::new(1);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE y (id int);\n");
    let doc = document(
        f.run(&["upgrade", "--patch-type", "std", "--format", "json"])
            .expect(2),
    );
    assert_eq!(doc["error"]["kind"], "refused");
    assert_eq!(doc["error"]["patch"], "1-0-0");
}

#[test]
fn a_busy_cluster_prints_its_document_with_exit_3() {
    let f = Fixture::new(1);
    f.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE busy (id int);\nSELECT pg_sleep(4);\n",
    );
    let first = spawn(&f, &["upgrade"]);
    assert!(
        wait_for(20, || pgconvoy_sleeping(&f, 0)),
        "first run never slept"
    );
    let doc = document(f.run(&["upgrade", "--format", "json"]).expect(3));
    assert_eq!(doc["error"]["kind"], "busy");
    assert_eq!(doc["error"]["node"], "node0");
    finish(first, 60).expect(0);
}

#[test]
fn dry_run_documents_ready_blocked_and_refused() {
    let f = Fixture::new(2);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE dr (id int);\n");
    let doc = document(
        f.run(&["upgrade", "--dry-run", "--format", "json"])
            .expect(0),
    );
    assert_eq!(doc["dry_run"], true);
    assert_eq!(doc["verdict"], "ready");

    f.psql(1, "CREATE TABLE dr (id int)");
    let doc = document(
        f.run(&["upgrade", "--dry-run", "--format", "json"])
            .expect(1),
    );
    assert_eq!(doc["verdict"], "blocked");
    assert_eq!(doc["error"]["kind"], "dry-run-blocked");
    let e = &doc["nodes"][1]["patches"][0]["error"];
    assert_eq!(e["kind"], "rehearsal-failed");
    assert_eq!(e["node"], "node1");
    assert_eq!(e["patch"], "1-0-0");
    assert_eq!(e["sqlstate"], "42P07");

    let d = drifted();
    let doc = document(
        d.run(&["upgrade", "--dry-run", "--format", "json"])
            .expect(2),
    );
    assert_eq!(doc["verdict"], "refused");
    assert_eq!(versions(&doc["pending"]), ["1-1-0"]);
}

#[test]
fn a_bad_command_line_asking_for_json_gets_a_document_too() {
    let s = common::cli::Scratch::new();
    let doc = document(
        s.run(&["status", "--format", "json", "--no-such-flag"])
            .expect(2),
    );
    assert_eq!(doc["command"], "status");
    assert_eq!(doc["error"]["kind"], "usage");
    assert!(doc["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--no-such-flag"));
    // Without --format json, clap's message only.
    let run = s.run(&["status", "--no-such-flag"]);
    run.expect(2);
    assert!(run.stdout().is_empty());
}

#[test]
fn every_schema_file_compiles_and_rejects_a_string_error() {
    // The envelope's error must be an object: a bare string is refused.
    let doc = serde_json::json!({
        "schema_version": 1, "command": "status", "exit_code": 1,
        "started_at": "2026-01-01T00:00:00.000Z", "finished_at": "2026-01-01T00:00:01.000Z",
        "duration_ms": 1000, "error": "patch failed"
    });
    for file in ["common.json", "status.json", "upgrade.json"] {
        assert!(
            !common::contract::problems(&doc, file).is_empty(),
            "{file} accepts a string error"
        );
    }
    // A command's own fields are checked too: a node without its fields, a run result
    // without times.
    let mut status = doc.clone();
    status["exit_code"] = 0.into();
    status["error"] = Value::Null;
    status["nodes"] = serde_json::json!([{ "name": "node0" }]);
    assert!(!common::contract::problems(&status, "status.json").is_empty());
    let mut run = status.clone();
    run["command"] = "upgrade".into();
    run.as_object_mut().unwrap().remove("nodes");
    for (k, v) in [
        ("dry_run", serde_json::json!(false)),
        ("applied", serde_json::json!([])),
        ("pending", serde_json::json!([])),
        ("notes", serde_json::json!([])),
        ("planned", serde_json::json!(true)),
        ("results", serde_json::json!([])),
    ] {
        run[k] = v;
    }
    assert!(common::contract::problems(&run, "upgrade.json").is_empty());
    run["results"] = serde_json::json!([{ "patch": "1-0-0", "patch_type": "std", "node": "n",
        "duration_ms": 1, "ok": true, "error": null }]);
    assert!(!common::contract::problems(&run, "upgrade.json").is_empty());
    // Local time is not UTC.
    let mut ok = doc.clone();
    ok["exit_code"] = 0.into();
    ok["error"] = Value::Null;
    assert!(common::contract::problems(&ok, "common.json").is_empty());
    ok["started_at"] = "2026-01-01T01:00:00+01:00".into();
    assert!(!common::contract::problems(&ok, "common.json").is_empty());
}

#[test]
fn deploy_documents_success_failure_and_a_missing_package() {
    let f = Fixture::new(2);
    let owner = format!("{}_owner", f.db);
    for n in 0..2 {
        f.psql(n, &format!("CREATE ROLE \"{owner}\" NOLOGIN"));
    }
    f.scratch.write(
        "packages/calc/package.yaml",
        &format!("name: calc\nversion: 1.0.0\nsubclass: versioned\nowner_role: {owner}\n"),
    );
    f.scratch.write(
        "packages/calc/functions/rate.sql",
        "CREATE FUNCTION rate() RETURNS numeric\nLANGUAGE sql STABLE\nAS $$ SELECT rate FROM public.settings $$;\n",
    );
    // node1 lacks the table the function reads: its transaction fails, node0 commits.
    f.psql(0, "CREATE TABLE public.settings (rate numeric)");
    let doc = document(f.run(&["deploy", "--format", "json"]).expect(1));
    assert_eq!(doc["command"], "deploy");
    assert_eq!(doc["error"]["node"], "node1");
    assert_eq!(doc["error"]["package"], "calc");
    assert_eq!(doc["error"]["sqlstate"], "42P01");
    assert_eq!(doc["nodes"][1]["error"]["kind"], "deploy-failed");

    f.psql(1, "CREATE TABLE public.settings (rate numeric)");
    let doc = document(f.run(&["deploy", "--format", "json"]).expect(0));
    assert!(doc["error"].is_null());
    let doc = document(
        f.run(&["deploy", "--dry-run", "--format", "json"])
            .expect(0),
    );
    assert_eq!(doc["dry_run"], true);
    let doc = document(f.run(&["deploy", "nosuch", "--format", "json"]).expect(2));
    assert_eq!(doc["error"]["kind"], "unknown-package");
}

#[test]
fn lifecycle_documents_share_the_envelope() {
    let f = Fixture::new(2);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE lc (id int);\n");
    f.run(&["upgrade"]).expect(0);
    for (args, command) in [
        (vec!["history", "--format", "json"], "history"),
        (
            vec!["stamp", "1-0-0", "--dry-run", "--format", "json"],
            "stamp",
        ),
        (vec!["repair", "1-0-0", "--format", "json"], "repair"),
        (vec!["unlock", "--format", "json"], "unlock"),
    ] {
        let run = f.run(&args);
        let doc = document(&run);
        assert_eq!(doc["schema_version"], 1, "{command}: {doc}");
        assert_eq!(doc["command"], command);
        assert!(doc["started_at"].as_str().unwrap() <= doc["finished_at"].as_str().unwrap());
    }
    // history's body: every node's rows, beside the envelope.
    let doc = document(f.run(&["history", "--format", "json"]).expect(0));
    assert!(doc["error"].is_null());
    // A refusal prints the document too, its error an object.
    let doc = document(f.run(&["stamp", "9-9-9", "--format", "json"]).expect(2));
    assert_eq!(doc["command"], "stamp");
    assert!(doc["error"]["kind"].is_string(), "{doc}");
}
