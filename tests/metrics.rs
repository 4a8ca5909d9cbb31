//! `--metrics-file`, black-box: Prometheus text format, written atomically, read by
//! `promtool check metrics` when it is installed and by a parser here always.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::Fixture;

/// Every sample of a text-format file: series (name and labels) → value. Panics on a
/// line that is neither a comment nor `series value`, or a sample without HELP and TYPE.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut described = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            described.push(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert_eq!(kind, "gauge", "{line}");
            assert!(
                described.iter().any(|d| d == name),
                "TYPE before HELP: {line}"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("pgconvoy_"), "{line}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert!(described.iter().any(|d| d == name), "no HELP for {line}");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_string(), v);
    }
    samples
}

/// `promtool check metrics` on the file, when promtool is installed (Debian's
/// `prometheus` package; .ci/run installs it).
fn promtool_accepts(path: &Path) {
    let Ok(file) = std::fs::File::open(path) else {
        panic!("no metrics file at {}", path.display());
    };
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(file)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check metrics refused {}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("skipped promtool: not installed (the parser test still ran)"),
    }
}

fn only_the_metrics_file(dir: &Path, name: &str) {
    let stray: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != name)
        .collect();
    assert!(stray.is_empty(), "left beside the metrics file: {stray:?}");
}

#[test]
fn upgrade_all_writes_metrics_after_success_and_after_failure() {
    let f = Fixture::new(3);
    let out = f.scratch.path().join("textfile");
    std::fs::create_dir(&out).unwrap();
    let prom = out.join("pgconvoy.prom");
    let prom_arg = prom.to_str().unwrap();
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE m1 (id int);\n");
    f.patch("patch-1-1-0-std.sql", "INSERT INTO m1 VALUES (1);\n");
    f.run(&["upgrade", "--all", "--metrics-file", prom_arg])
        .expect(0);
    let text = std::fs::read_to_string(&prom).unwrap();
    let m = parse(&text);
    assert_eq!(m["pgconvoy_last_run_success"], 1.0, "{text}");
    assert_eq!(m["pgconvoy_last_run_exit_code"], 0.0);
    assert_eq!(m["pgconvoy_patches_applied"], 2.0);
    assert_eq!(m["pgconvoy_pending_patches{node=\"node1\"}"], 0.0, "{text}");
    assert_eq!(m["pgconvoy_node_up{node=\"node2\"}"], 1.0);
    assert!(m["pgconvoy_run_duration_seconds"] > 0.0);
    assert!(m["pgconvoy_last_run_timestamp_seconds"] > 1.6e9);
    only_the_metrics_file(&out, "pgconvoy.prom");
    promtool_accepts(&prom);

    // A patch that fails on node1: the file says so, and what is still pending where.
    f.patch("patch-1-2-0-direct.sql", "CREATE TABLE m2 (id int);\n");
    f.psql(1, "CREATE TABLE m2 (id int)");
    f.run(&["upgrade", "--all", "--metrics-file", prom_arg])
        .expect(1);
    let text = std::fs::read_to_string(&prom).unwrap();
    let m = parse(&text);
    assert!(text.contains("\npgconvoy_last_run_success 0\n"), "{text}");
    assert_eq!(m["pgconvoy_last_run_exit_code"], 1.0);
    assert_eq!(m["pgconvoy_patches_applied"], 0.0);
    assert_eq!(m["pgconvoy_pending_patches{node=\"node1\"}"], 1.0, "{text}");
    assert_eq!(m["pgconvoy_pending_patches{node=\"node0\"}"], 1.0, "{text}");
    only_the_metrics_file(&out, "pgconvoy.prom");
    promtool_accepts(&prom);
}

#[test]
fn status_metrics_show_an_unreachable_node_down() {
    let f = Fixture::new(2);
    let mut dsns = f.dsns.clone();
    dsns.push(format!(
        "host=127.0.0.1 port=1 dbname={} user=postgres",
        f.db
    ));
    let g = Fixture::with_dsns(f.db.clone(), dsns);
    g.patch("patch-1-0-0-direct.sql", "CREATE TABLE s1 (id int);\n");
    let prom = g.scratch.path().join("status.prom");
    g.run(&["status", "--metrics-file", prom.to_str().unwrap()])
        .expect(1);
    let text = std::fs::read_to_string(&prom).unwrap();
    let m = parse(&text);
    assert_eq!(m["pgconvoy_node_up{node=\"node2\"}"], 0.0, "{text}");
    assert_eq!(m["pgconvoy_node_up{node=\"node0\"}"], 1.0);
    assert_eq!(m["pgconvoy_pending_patches{node=\"node1\"}"], 1.0);
    // Nothing pending is known of a node that did not answer.
    assert!(!m.contains_key("pgconvoy_pending_patches{node=\"node2\"}"));
    assert_eq!(m["pgconvoy_last_run_exit_code"], 1.0);
    assert_eq!(m["pgconvoy_last_run_info{command=\"status\"}"], 1.0);
    promtool_accepts(&prom);
}

#[test]
fn a_run_that_fails_before_reading_the_cluster_still_writes_its_outcome() {
    let s = common::cli::Scratch::new();
    let prom = s.path().join("m.prom");
    // No cluster.yaml: bad input, exit 2.
    s.run(&["upgrade", "--metrics-file", prom.to_str().unwrap()])
        .expect(2);
    let text = std::fs::read_to_string(&prom).unwrap();
    let m = parse(&text);
    assert_eq!(m["pgconvoy_last_run_success"], 0.0);
    assert_eq!(m["pgconvoy_last_run_exit_code"], 2.0);
    assert!(!text.contains("node=\""), "no node was read:\n{text}");
    promtool_accepts(&prom);
}

#[test]
fn an_unwritable_metrics_file_is_a_warning_not_a_failed_run() {
    let f = Fixture::new(1);
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE w1 (id int);\n");
    let prom = f.scratch.path().join("no/such/dir/m.prom");
    f.run(&["upgrade", "--metrics-file", prom.to_str().unwrap()])
        .expect(0)
        .says("cannot write metrics file");
    assert!(f.has_relation(0, "w1"));
}

#[test]
fn deploy_writes_metrics_too() {
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
        "packages/calc/functions/one.sql",
        "CREATE FUNCTION one() RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT 1 $$;\n",
    );
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE d1 (id int);\n");
    let prom = f.scratch.path().join("deploy.prom");
    f.run(&["deploy", "--metrics-file", prom.to_str().unwrap()])
        .expect(0);
    let text = std::fs::read_to_string(&prom).unwrap();
    let m = parse(&text);
    assert_eq!(
        m["pgconvoy_last_run_info{command=\"deploy\"}"], 1.0,
        "{text}"
    );
    assert_eq!(m["pgconvoy_last_run_success"], 1.0);
    assert_eq!(
        m["pgconvoy_patches_applied"], 1.0,
        "one package deployed:\n{text}"
    );
    assert_eq!(m["pgconvoy_pending_patches{node=\"node1\"}"], 1.0, "{text}");
    assert_eq!(m["pgconvoy_node_up{node=\"node0\"}"], 1.0);
    promtool_accepts(&prom);
}
