//! `pgconvoy check` and config errors, black-box: no database needed.

mod common;
use common::cli::Scratch;

const CONFIG: &str = "patches: patches\nmaster:\n  name: node0\n  dsn: \"host=127.0.0.1 port=1 dbname=app\"\nreplicas:\n  - name: node1\n    dsn: \"postgresql://u:hunter2pw@127.0.0.1:2/app\"\n";

fn scratch() -> Scratch {
    let s = Scratch::new();
    s.write("cluster.yaml", CONFIG);
    s
}

#[test]
fn clean_directory_exits_0() {
    let s = scratch();
    s.patch("patch-1-0-0-std.sql", "CREATE TABLE a (id int);\n");
    s.patch("patch-1-1-0-direct.sql", "CREATE TABLE b (id int);\n");
    s.patch(
        "patch-1-1-1-concurrent.sql",
        "CREATE INDEX CONCURRENTLY b_i ON b (id);\n-- done\n",
    );
    s.write("patches/README.md", "not a patch");
    s.run(&["check"])
        .expect(0)
        .says("3 patch(es)")
        .says("1-0-0 to 1-1-1");
}

#[test]
fn bad_file_names_are_errors_naming_each_file() {
    let s = scratch();
    s.patch("patch-1-0-0-std.sql", "SELECT 1;\n");
    for bad in [
        "patch-1-5-std.sql",
        "patch-1-5-0-fast.sql",
        "fix-calendar.sql",
    ] {
        s.patch(bad, "SELECT 1;\n");
    }
    let r = s.run(&["check"]);
    r.expect(2)
        .says("patch-1-5-std.sql")
        .says("patch-1-5-0-fast.sql")
        .says("fix-calendar.sql")
        .says("3 error(s)");
}

#[test]
fn duplicate_versions_name_both_files() {
    let s = scratch();
    s.patch("patch-1-2-0-std.sql", "SELECT 1;\n");
    s.patch("patch-1-02-0-direct.sql", "SELECT 1;\n");
    s.patch("patch-1-1-0-std.sql", "SELECT 1;\n");
    s.run(&["check"])
        .expect(2)
        .says("patch-1-2-0-std.sql")
        .says("patch-1-02-0-direct.sql")
        .says("1-2-0");
}

#[test]
fn empty_and_unterminated_patches_are_errors() {
    let s = scratch();
    s.patch("patch-1-0-0-std.sql", "");
    s.patch(
        "patch-1-1-0-std.sql",
        "-- only a comment\n/* and another */\n",
    );
    s.patch(
        "patch-1-2-0-std.sql",
        "CREATE TABLE a (id int);\nCREATE TABLE b (id int)\n",
    );
    s.patch(
        "patch-1-3-0-std.sql",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$\n",
    );
    let r = s.run(&["check"]);
    r.expect(2)
        .says("patch-1-0-0-std.sql")
        .says("patch-1-1-0-std.sql")
        .says("patch-1-2-0-std.sql")
        .says("patch-1-3-0-std.sql")
        .says("4 error(s)");
}

#[test]
fn semicolons_inside_quotes_and_comments_do_not_terminate() {
    let s = scratch();
    s.patch(
        "patch-1-0-0-std.sql",
        "CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $fn$\nBEGIN\n  RETURN 'a;b';\nEND;\n$fn$;\nSELECT 'x;' AS \"y;\" /* ; */; -- trailing ; comment\n",
    );
    s.patch(
        "patch-1-1-0-std.sql",
        "SELECT 'unterminated; -- not a comment\n",
    );
    s.run(&["check"])
        .expect(2)
        .says("patch-1-1-0-std.sql")
        .never_says("patch-1-0-0-std.sql")
        .says("1 error(s)");
}

#[test]
fn gaps_warn_and_fail_under_strict() {
    let s = scratch();
    s.patch("patch-1-0-0-std.sql", "SELECT 1;\n");
    s.patch("patch-1-2-0-std.sql", "SELECT 1;\n");
    s.patch("patch-1-2-2-std.sql", "SELECT 1;\n");
    s.run(&["check"])
        .expect(0)
        .says("warning")
        .says("1-1-0")
        .says("1-2-1");
    s.run(&["check", "--strict"]).expect(2).says("1-1-0");
    s.write("cluster.yaml", &format!("strict: true\n{CONFIG}"));
    s.run(&["check"]).expect(2).says("1-1-0");
}

#[test]
fn numeric_order_not_textual() {
    let s = scratch();
    for m in 0..=10 {
        s.patch(&format!("patch-1-{m}-0-std.sql"), "SELECT 1;\n");
    }
    s.run(&["check", "--strict"])
        .expect(0)
        .says("1-0-0 to 1-10-0");
}

#[test]
fn config_flag_and_default() {
    let s = scratch();
    s.patch("patch-1-0-0-std.sql", "SELECT 1;\n");
    // Default: cluster.yaml in the current directory.
    s.run(&["check"]).expect(0);
    // -c resolves the patch dir against the config file's directory, not the cwd.
    let elsewhere = tempfile::tempdir().unwrap();
    let cfg = s.path().join("cluster.yaml");
    common::cli::run_in(
        elsewhere.path(),
        &["-c", cfg.to_str().unwrap(), "check"],
        &[],
    )
    .expect(0);
    common::cli::run_in(elsewhere.path(), &["check"], &[])
        .expect(2)
        .says("cluster.yaml");
}

#[test]
fn config_errors_exit_2_and_name_the_problem() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("unknown key", "paches: patches\nmaster:\n  name: a\n  dsn: host=x\n", &["paches"]),
        ("yaml syntax", "patches: patches\nmaster: [\n", &["line"]),
        ("missing master", "patches: patches\nreplicas: []\n", &["master"]),
        (
            "duplicate node",
            "patches: patches\nmaster:\n  name: a\n  dsn: host=x\nreplicas:\n  - name: a\n    dsn: host=y\n",
            &["duplicate", "`a`"],
        ),
        (
            "bad dsn",
            "patches: patches\nmaster:\n  name: a\n  dsn: host=x\nreplicas:\n  - name: b\n    dsn: \"host=y port=notaport password=hunter2pw\"\n",
            &["`b`", "dsn"],
        ),
        (
            "bad url scheme",
            "patches: patches\nmaster:\n  name: a\n  dsn: \"mysql://u:hunter2pw@h/db\"\n",
            &["`a`", "scheme"],
        ),
        ("missing patch dir", "patches: nope\nmaster:\n  name: a\n  dsn: host=x\n", &["patches", "nope"]),
        ("empty name", "patches: patches\nmaster:\n  name: ''\n  dsn: host=x\n", &["empty"]),
        (
            "missing password file",
            "patches: patches\nmaster:\n  name: a\n  dsn: host=x\n  password_file: nofile\n",
            &["`a`", "nofile"],
        ),
    ];
    for (what, yaml, needles) in cases {
        let s = Scratch::new();
        s.write("cluster.yaml", yaml);
        let r = s.run(&["check"]);
        assert_eq!(r.code(), 2, "{what}: {}", r.all());
        assert!(r.stderr().contains("cluster.yaml"), "{what}: {}", r.all());
        for n in *needles {
            assert!(r.stderr().contains(n), "{what}: lacks {n}: {}", r.all());
        }
        r.never_says("hunter2pw");
    }
}

#[test]
fn missing_config_file_exits_2() {
    let s = Scratch::new();
    s.run(&["check"]).expect(2).says("cluster.yaml");
}

#[test]
fn bad_command_line_exits_2() {
    let s = scratch();
    s.run(&["check", "--bogus"]).expect(2);
    s.run(&["frobnicate"]).expect(2);
}

#[test]
fn help_teaches_exit_codes_and_patch_types() {
    let s = scratch();
    s.run(&["--help"])
        .expect(0)
        .says("Exit codes")
        .says("concurrent");
}

#[test]
fn duplicates_are_named_even_when_a_file_is_also_broken() {
    let s = scratch();
    s.patch("patch-1-0-0-std.sql", "CREATE TABLE a (id int)\n");
    s.patch("patch-1-00-0-direct.sql", "SELECT 1;\n");
    s.run(&["check"])
        .expect(2)
        .says("patch-1-0-0-std.sql and")
        .says("patch-1-00-0-direct.sql")
        .says("both are version 1-0-0")
        .says("not terminated")
        .says("2 error(s)");
}

#[test]
fn transaction_control_is_refused_naming_file_and_line() {
    let commands = [
        "BEGIN;",
        "START TRANSACTION;",
        "COMMIT;",
        "END;",
        "ROLLBACK;",
        "ABORT;",
        "SAVEPOINT a;",
        "RELEASE SAVEPOINT a;",
        "ROLLBACK TO SAVEPOINT a;",
        "PREPARE TRANSACTION 'x';",
        "COMMIT PREPARED 'x';",
        "ROLLBACK PREPARED 'x';",
    ];
    for kind in ["std", "direct", "concurrent"] {
        for command in commands {
            let s = scratch();
            let name = format!("patch-1-0-0-{kind}.sql");
            s.patch(
                &name,
                &format!("-- why\nSELECT 1;\n  {command}\nSELECT 2;\n"),
            );
            let r = s.run(&["check"]);
            r.expect(2)
                .says(&name)
                .says("line 3")
                .says("transaction control")
                .says("1 error(s)");
        }
    }
}

#[test]
fn transaction_words_inside_bodies_strings_and_comments_are_fine() {
    let s = scratch();
    s.patch(
        "patch-1-0-0-std.sql",
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$;\n\
         DO $$ BEGIN PERFORM 1; EXCEPTION WHEN others THEN ROLLBACK; END $$;\n\
         CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\n\
         SELECT 'BEGIN; COMMIT;' AS \"ROLLBACK\"; -- COMMIT;\n/* END; */\n",
    );
    s.run(&["check"]).expect(0).says("0 error(s)");
}

#[test]
fn psql_meta_commands_are_refused_naming_the_line() {
    let s = scratch();
    s.patch("patch-1-0-0-std.sql", "\\set ON_ERROR_STOP on\nSELECT 1;\n");
    s.patch("patch-1-1-0-direct.sql", "SELECT 1;\n\\i other.sql\n");
    let r = s.run(&["check"]);
    r.expect(2)
        .says("patch-1-0-0-std.sql: line 1: `\\set`")
        .says("patch-1-1-0-direct.sql: line 2: `\\i`")
        .says("meta-command")
        .never_says("not terminated")
        .says("2 error(s)");
}

#[test]
fn copy_from_stdin_blocks_are_data() {
    let s = scratch();
    s.patch(
        "patch-1-0-0-std.sql",
        "CREATE TABLE t (a int, b text);\nCOPY t (a, b) FROM stdin;\n1\tsemi; colon 'quote\n2\t\\N\n\\.\nSELECT 1;\n",
    );
    s.patch(
        "patch-1-1-0-direct.sql",
        "COPY t FROM stdin;\n3\tno end marker\n",
    );
    s.run(&["check"])
        .expect(2)
        .never_says("patch-1-0-0-std.sql")
        .says("patch-1-1-0-direct.sql")
        .says("line 1")
        .says("1 error(s)");
}
