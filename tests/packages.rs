//! Code packages (`deploy`), black-box, against three real PostgreSQL servers:
//! deploying on every node, version bumps side by side, the modes for changed
//! content, type order from the definitions, owner and grants, dependencies,
//! the dry run, a failure on one node, two-phase commit, lock timeouts, status,
//! and `check` of the packages directory.

mod common;
use common::cli::Scratch;
use common::{finish, has_pgconvoy_schema, spawn, Fixture, Session};

use std::time::{Duration, Instant};

/// Creates roles `{db}_{name}` on every node's server (roles are per server,
/// so each test's names are its own) and returns their names.
fn roles(f: &Fixture, names: &[&str]) -> Vec<String> {
    let full: Vec<String> = names.iter().map(|n| format!("{}_{n}", f.db)).collect();
    for node in 0..f.dsns.len() {
        for r in &full {
            f.psql(node, &format!("CREATE ROLE \"{r}\" NOLOGIN"));
        }
    }
    full
}

/// Writes `packages/NAME/package.yaml` and the object files (`types/x.sql`, …).
fn package(s: &Scratch, name: &str, yaml: &str, files: &[(&str, &str)]) {
    let dir = s.path().join("packages").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    s.write(&format!("packages/{name}/package.yaml"), yaml);
    for (rel, text) in files {
        s.write(&format!("packages/{name}/{rel}"), text);
    }
}

fn yaml(name: &str, version: &str, owner: &str, users: &[&str], depends: &[&str]) -> String {
    format!(
        "name: {name}\nversion: {version}\ndescription: test package\nsubclass: versioned\nowner_role: {owner}\nuser_roles: [{}]\ndepends: [{}]\n",
        users.join(", "),
        depends.join(", ")
    )
}

/// The billing package at `version`: a composite type, two functions (one
/// taking the type, calling the other unqualified) and a view. `rate` makes
/// each version's code answer differently.
fn billing(s: &Scratch, version: &str, rate: &str, owner: &str, users: &[&str]) {
    package(
        s,
        "billing",
        &yaml("billing", version, owner, users, &[]),
        &[
            (
                "types/invoice.sql",
                "-- What the application passes around.\nCREATE TYPE invoice AS (\n    id     bigint,\n    amount numeric(12, 2)\n);\n",
            ),
            (
                "functions/total.sql",
                "CREATE FUNCTION total(i invoice) RETURNS numeric\nLANGUAGE plpgsql STABLE AS $$\nBEGIN\n    RETURN i.amount + tax(i.amount);\nEND\n$$;\nCOMMENT ON FUNCTION total(invoice) IS 'amount plus tax';\n",
            ),
            (
                "functions/tax.sql",
                &format!(
                    "CREATE FUNCTION tax(amount numeric) RETURNS numeric\nLANGUAGE sql IMMUTABLE AS $$ SELECT round(amount * {rate}, 2) $$;\n"
                ),
            ),
            (
                "views/rates.sql",
                "CREATE VIEW rates AS SELECT tax(100) AS tax_on_100;\n",
            ),
        ],
    );
}

/// `total(ROW(1, 100))` in `schema`, as `role`, with the caller's `search_path`.
fn total_as(f: &Fixture, node: usize, role: &str, search_path: &str, schema: &str) -> String {
    f.psql(
        node,
        &format!(
            "SET ROLE \"{role}\"; SET search_path = {search_path}; \
             SELECT {schema}.total(ROW(1, 100)::{schema}.invoice)"
        ),
    )
}

/// Live rows of `pgconvoy.package` on a node: `name version schema`.
fn live(f: &Fixture, node: usize) -> Vec<String> {
    if !has_pgconvoy_schema(f, node) {
        return Vec::new();
    }
    f.psql(
        node,
        "SELECT name || ' ' || version || ' ' || schema FROM pgconvoy.package \
         WHERE state = 'live' ORDER BY deployed_at, name",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn schemas(f: &Fixture, node: usize, like: &str) -> Vec<String> {
    f.psql(
        node,
        &format!("SELECT nspname FROM pg_namespace WHERE nspname LIKE '{like}' ORDER BY 1"),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

// --- Done when: deploy, callable on every node, recorded on every node ----------------

#[test]
fn versioned_package_is_callable_and_recorded_on_every_node() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner", "app"]);
    billing(&f.scratch, "1.9.0", "0.1", &r[0], &[&r[1]]);
    let run = f.run(&["deploy"]);
    run.expect(0).says("committed on 3 node(s)");
    for n in 0..3 {
        assert_eq!(
            total_as(&f, n, &r[1], "public", "billing_1_9_0"),
            "110.00",
            "node{n}"
        );
        assert_eq!(
            f.psql(
                n,
                &format!(
                    "SET ROLE \"{}\"; SELECT tax_on_100 FROM billing_1_9_0.rates",
                    r[1]
                )
            ),
            "10.00"
        );
        assert_eq!(
            live(&f, n),
            vec!["billing 1.9.0 billing_1_9_0".to_string()],
            "node{n}"
        );
        let row = f.psql(
            n,
            "SELECT length(checksum), deployed_by LIKE 'pgconvoy % pid %', mode, \
             deployed_at <= now() FROM pgconvoy.package",
        );
        assert_eq!(row, "64|t|safe|t", "node{n}");
    }
    // Same version, same files: nothing to do.
    f.run(&["deploy"]).expect(0).says("nothing to do");
    assert_eq!(live(&f, 1).len(), 1);
    // `history` lists the deployments of every node.
    let h = f.run(&["history", "--format", "json"]);
    h.expect(0);
    let doc: serde_json::Value = serde_json::from_str(&h.stdout()).unwrap();
    let deployed: Vec<String> = doc["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{} {} {} {}",
                d["node"], d["name"], d["version"], d["state"]
            )
        })
        .collect();
    assert_eq!(deployed.len(), 3, "{deployed:?}");
    for n in 0..3 {
        assert!(
            deployed.contains(&format!("\"node{n}\" \"billing\" \"1.9.0\" \"live\"")),
            "{deployed:?}"
        );
    }
    f.run(&["history"])
        .expect(0)
        .says("package deployments:")
        .says("billing_1_9_0");
}

// --- Done when: version bump, both schemas, each with its own code -------------------

#[test]
fn version_bump_keeps_both_schemas_each_answering_with_its_own_code() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner", "app"]);
    billing(&f.scratch, "1.9.0", "0.1", &r[0], &[&r[1]]);
    f.run(&["deploy"]).expect(0);
    billing(&f.scratch, "2.0.0", "0.2", &r[0], &[&r[1]]);
    f.run(&["deploy", "billing"])
        .expect(0)
        .says("deploy into new schema `billing_2_0_0`");
    for n in 0..3 {
        assert_eq!(
            schemas(&f, n, "billing%"),
            ["billing_1_9_0", "billing_2_0_0"]
        );
        // An old client, whatever its search_path (even the new schema first),
        // gets 1.9.0's tax from 1.9.0's total: the helper is found through the
        // routine's own pinned search_path.
        for path in ["public", "billing_2_0_0, public", "billing_1_9_0"] {
            assert_eq!(
                total_as(&f, n, &r[1], path, "billing_1_9_0"),
                "110.00",
                "node{n} {path}"
            );
            assert_eq!(
                total_as(&f, n, &r[1], path, "billing_2_0_0"),
                "120.00",
                "node{n} {path}"
            );
        }
        assert_eq!(
            live(&f, n),
            ["billing 1.9.0 billing_1_9_0", "billing 2.0.0 billing_2_0_0"],
            "node{n}"
        );
        let config = f.psql(
            n,
            "SELECT proconfig[1] FROM pg_proc WHERE oid = 'billing_1_9_0.total(billing_1_9_0.invoice)'::regprocedure",
        );
        assert_eq!(config, "search_path=billing_1_9_0, pg_catalog, pg_temp");
    }
}

// --- Done when: same version, changed content, by mode ------------------------------

#[test]
fn changed_content_safe_refuses_and_changes_nothing() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner", "app"]);
    billing(&f.scratch, "1.9.0", "0.1", &r[0], &[&r[1]]);
    f.run(&["deploy"]).expect(0);
    let before: Vec<String> = (0..3)
        .map(|n| {
            f.psql(
                n,
                "SELECT string_agg(row(p.*)::text, ';') FROM pgconvoy.package p",
            )
        })
        .collect();
    billing(&f.scratch, "1.9.0", "0.3", &r[0], &[&r[1]]);
    let run = f.run(&["deploy"]);
    run.expect(2)
        .says("refusing to deploy, nothing was written on any node")
        .says("package `billing` 1.9.0 on nodes `node0`, `node1`, `node2`")
        .says("bump the version or choose a mode");
    let json = f.run(&["deploy", "--format", "json"]);
    json.expect(2);
    let v: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    assert_eq!(v["exit_code"], 2);
    assert_eq!(v["error"]["kind"], "deploy-refused");
    assert_eq!(v["error"]["package"], "billing");
    for (n, before) in before.iter().enumerate() {
        assert_eq!(total_as(&f, n, &r[1], "public", "billing_1_9_0"), "110.00");
        assert_eq!(schemas(&f, n, "billing%"), ["billing_1_9_0"]);
        let after = f.psql(
            n,
            "SELECT string_agg(row(p.*)::text, ';') FROM pgconvoy.package p",
        );
        assert_eq!(&after, before, "node{n}'s records changed");
    }
}

#[test]
fn changed_content_moderate_renames_the_old_schema_aside() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner", "app"]);
    billing(&f.scratch, "1.9.0", "0.1", &r[0], &[&r[1]]);
    f.run(&["deploy"]).expect(0);
    billing(&f.scratch, "1.9.0", "0.3", &r[0], &[&r[1]]);
    f.run(&["deploy", "--mode", "moderate"])
        .expect(0)
        .says("aside to `billing_1_9_0_1`");
    for n in 0..3 {
        assert_eq!(
            schemas(&f, n, "billing%"),
            ["billing_1_9_0", "billing_1_9_0_1"]
        );
        assert_eq!(
            total_as(&f, n, &r[1], "public", "billing_1_9_0"),
            "130.00",
            "new code live"
        );
        // The copy set aside still answers with its own code, not the new schema's helper.
        assert_eq!(
            total_as(&f, n, &r[1], "public", "billing_1_9_0_1"),
            "110.00",
            "old code kept aside on node{n}"
        );
        assert_eq!(
            f.psql(n, "SELECT state || ' ' || coalesce(aside_schema, '-') FROM pgconvoy.package ORDER BY deployed_at"),
            "aside billing_1_9_0_1\nlive -"
        );
    }
    // A second change goes aside to the next free name.
    billing(&f.scratch, "1.9.0", "0.4", &r[0], &[&r[1]]);
    f.run(&["deploy", "--mode", "moderate"])
        .expect(0)
        .says("aside to `billing_1_9_0_2`");
    assert_eq!(total_as(&f, 2, &r[1], "public", "billing_1_9_0"), "140.00");
}

#[test]
fn changed_content_unsafe_drops_the_old_schema_loudly() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner", "app"]);
    billing(&f.scratch, "1.9.0", "0.1", &r[0], &[&r[1]]);
    f.run(&["deploy"]).expect(0);
    // Something outside the package uses it on node1: CASCADE takes it too, and says so.
    f.psql(
        1,
        "CREATE VIEW public.report AS SELECT tax_on_100 FROM billing_1_9_0.rates",
    );
    billing(&f.scratch, "1.9.0", "0.3", &r[0], &[&r[1]]);
    let dry = f.run(&["deploy", "--dry-run"]);
    dry.expect(2)
        .says("--mode unsafe")
        .says("would also drop view report");
    assert!(
        f.has_relation(1, "public.report"),
        "the dry run dropped nothing"
    );
    f.run(&["deploy", "--mode", "unsafe"])
        .expect(0)
        .says("DROP SCHEMA `billing_1_9_0` CASCADE")
        .says("also dropped view report");
    for n in 0..3 {
        assert_eq!(
            schemas(&f, n, "billing%"),
            ["billing_1_9_0"],
            "old gone on node{n}"
        );
        assert_eq!(total_as(&f, n, &r[1], "public", "billing_1_9_0"), "130.00");
        assert_eq!(
            f.psql(n, "SELECT state FROM pgconvoy.package ORDER BY deployed_at"),
            "dropped\nlive"
        );
    }
    assert!(!f.has_relation(1, "public.report"));
}

// --- Done when: types whose file names sort against their dependency order -----------

#[test]
fn types_deploy_in_the_order_their_definitions_need() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner", "app"]);
    // File names sort a, b, c, d; the definitions need d, c, b, a.
    package(
        &f.scratch,
        "ledger",
        &yaml("ledger", "1.0.0", &r[0], &[&r[1]], &[]),
        &[
            ("types/a_invoice.sql", "CREATE TYPE invoice AS (id bigint, lines line_item[], total cents);\n"),
            ("types/b_line_item.sql", "CREATE TYPE line_item AS (description text, price cents);\n"),
            ("types/c_cents.sql", "CREATE DOMAIN cents AS amount CHECK (VALUE >= 0);\n"),
            ("types/d_amount.sql", "CREATE DOMAIN amount AS bigint;\n"),
            (
                "functions/sum_lines.sql",
                "CREATE FUNCTION sum_lines(i invoice) RETURNS cents LANGUAGE sql AS $$ SELECT sum((l).price)::cents FROM unnest(i.lines) l $$;\n",
            ),
        ],
    );
    f.run(&["check"]).expect(0).says("package ledger 1.0.0");
    f.run(&["deploy"]).expect(0);
    for n in 0..3 {
        let sum = f.psql(
            n,
            &format!(
                "SET ROLE \"{}\"; SELECT ledger_1_0_0.sum_lines(ROW(1, ARRAY[ROW('a', 5), ROW('b', 7)]::ledger_1_0_0.line_item[], 12)::ledger_1_0_0.invoice)",
                r[1]
            ),
        );
        assert_eq!(sum, "12", "node{n}");
    }
}

// --- Done when: owner and grants; a role not listed is denied ------------------------

#[test]
fn owner_owns_everything_users_may_use_it_and_nobody_else() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner", "app", "reporting", "stranger"]);
    billing(&f.scratch, "1.0.0", "0.1", &r[0], &[&r[1], &r[2]]);
    f.run(&["deploy"]).expect(0);
    for n in 0..3 {
        let owners = f.psql(
            n,
            "SELECT DISTINCT o FROM ( \
               SELECT nspowner::regrole::text o FROM pg_namespace WHERE nspname = 'billing_1_0_0' \
               UNION ALL SELECT proowner::regrole::text FROM pg_proc WHERE pronamespace = 'billing_1_0_0'::regnamespace \
               UNION ALL SELECT typowner::regrole::text FROM pg_type WHERE typnamespace = 'billing_1_0_0'::regnamespace \
               UNION ALL SELECT relowner::regrole::text FROM pg_class WHERE relnamespace = 'billing_1_0_0'::regnamespace) x",
        );
        assert_eq!(owners, r[0], "node{n}: everything owned by the owner role");
        for user in [&r[1], &r[2]] {
            assert_eq!(total_as(&f, n, user, "public", "billing_1_0_0"), "110.00");
            assert_eq!(
                f.psql(
                    n,
                    &format!("SET ROLE \"{user}\"; SELECT tax_on_100 FROM billing_1_0_0.rates")
                ),
                "10.00"
            );
        }
        let denied = f
            .try_psql(
                n,
                &format!("SET ROLE \"{}\"; SELECT billing_1_0_0.tax(1)", r[3]),
            )
            .unwrap_err();
        assert!(
            denied.contains("permission denied for schema billing_1_0_0"),
            "node{n}: {denied}"
        );
        // Not even with USAGE on the schema: PUBLIC's default EXECUTE was revoked.
        f.psql(
            n,
            &format!("GRANT USAGE ON SCHEMA billing_1_0_0 TO \"{}\"", r[3]),
        );
        let denied = f
            .try_psql(
                n,
                &format!("SET ROLE \"{}\"; SELECT billing_1_0_0.tax(1)", r[3]),
            )
            .unwrap_err();
        assert!(
            denied.contains("permission denied for function tax"),
            "node{n}: {denied}"
        );
        let denied = f
            .try_psql(
                n,
                &format!("SET ROLE \"{}\"; SELECT * FROM billing_1_0_0.rates", r[3]),
            )
            .unwrap_err();
        assert!(
            denied.contains("permission denied for view rates"),
            "node{n}: {denied}"
        );
    }
}

#[test]
fn a_role_that_does_not_exist_refuses_the_deploy_before_anything_is_written() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner"]);
    billing(&f.scratch, "1.0.0", "0.1", &r[0], &["nobody_by_that_name"]);
    f.run(&["deploy"])
        .expect(2)
        .says("role `nobody_by_that_name` (named by package `billing`) on nodes `node0`, `node1`, `node2`: does not exist");
    for n in 0..3 {
        assert!(!has_pgconvoy_schema(&f, n));
        assert!(schemas(&f, n, "billing%").is_empty());
    }
}

// --- Done when: dependencies ---------------------------------------------------------

#[test]
fn a_package_deploys_after_the_package_it_depends_on() {
    let f = Fixture::new(3);
    let r = roles(&f, &["money_owner", "billing_owner", "app"]);
    package(
        &f.scratch,
        "money",
        &yaml("money", "1.0.0", &r[0], &[], &[]),
        &[
            ("types/amount.sql", "CREATE DOMAIN amount AS numeric(12, 2) CHECK (VALUE >= 0);\n"),
            ("functions/with_tax.sql", "CREATE FUNCTION with_tax(a amount) RETURNS amount LANGUAGE sql AS $$ SELECT (a * 1.1)::amount $$;\n"),
        ],
    );
    // `billing` sorts before `money` and uses its type and function unqualified.
    package(
        &f.scratch,
        "billing",
        &yaml("billing", "1.0.0", &r[1], &[&r[2]], &["money"]),
        &[
            ("types/invoice.sql", "CREATE TYPE invoice AS (id bigint, net amount);\n"),
            ("functions/gross.sql", "CREATE FUNCTION gross(i invoice) RETURNS amount LANGUAGE plpgsql AS $$ BEGIN RETURN with_tax(i.net); END $$;\n"),
        ],
    );
    // Asking for `billing` brings `money` along, first.
    f.run(&["deploy", "billing"]).expect(0);
    for n in 0..3 {
        assert_eq!(
            live(&f, n),
            ["money 1.0.0 money_1_0_0", "billing 1.0.0 billing_1_0_0"],
            "node{n}"
        );
        let gross = f.psql(
            n,
            &format!(
                "SET ROLE \"{}\"; SELECT billing_1_0_0.gross(ROW(1, 100)::billing_1_0_0.invoice)",
                r[2]
            ),
        );
        assert_eq!(
            gross, "110.00",
            "node{n}: the user role of billing may use what billing uses"
        );
        let attr = f.psql(
            n,
            "SELECT atttypid::regtype FROM pg_attribute WHERE attrelid = 'billing_1_0_0.invoice'::regclass AND attname = 'net'",
        );
        assert_eq!(attr, "money_1_0_0.amount");
    }
}

#[test]
fn a_missing_dependency_is_bad_input_and_nothing_is_written() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner"]);
    package(
        &f.scratch,
        "billing",
        &yaml("billing", "1.0.0", &r[0], &[], &["money"]),
        &[("types/invoice.sql", "CREATE TYPE invoice AS (id bigint);\n")],
    );
    f.run(&["deploy"])
        .expect(2)
        .says("packages/billing/package.yaml")
        .says("depends on `money`, which is not in the packages directory");
    for n in 0..3 {
        assert!(!has_pgconvoy_schema(&f, n), "node{n}");
        assert!(schemas(&f, n, "billing%").is_empty(), "node{n}");
    }
}

// --- Done when: the dry run writes nothing; a failure on one node ---------------------

#[test]
fn dry_run_rehearses_everywhere_and_writes_nothing() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner", "app"]);
    billing(&f.scratch, "1.0.0", "0.1", &r[0], &[&r[1]]);
    let run = f.run(&["deploy", "--dry-run"]);
    run.expect(0)
        .says("rehearsed, rolled back")
        .says("dry run: 1 package(s), mode safe: rehearsed, rolled back on 3 node(s)");
    for n in 0..3 {
        assert!(
            !has_pgconvoy_schema(&f, n),
            "node{n}: the dry run created the records"
        );
        assert!(schemas(&f, n, "billing%").is_empty(), "node{n}");
    }
    // A rehearsal that fails says where, and still writes nothing.
    package(
        &f.scratch,
        "billing",
        &yaml("billing", "1.0.0", &r[0], &[&r[1]], &[]),
        &[("functions/broken.sql", "CREATE FUNCTION broken() RETURNS int\nLANGUAGE sql\nAS $$ SELECT no_such_column FROM pg_class $$;\n")],
    );
    f.run(&["deploy", "--dry-run"])
        .expect(1)
        .says("package `billing` failed on node `node0`")
        .says("42703")
        .says("functions/broken.sql line 3");
    for n in 0..3 {
        assert!(schemas(&f, n, "billing%").is_empty(), "node{n}");
    }
}

#[test]
fn a_failure_on_one_node_rolls_back_that_node_only_and_names_it() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner", "app"]);
    // The function reads a table node1 does not have: its body is checked at creation.
    for n in [0, 2] {
        f.psql(
            n,
            "CREATE TABLE public.settings (rate numeric); INSERT INTO public.settings VALUES (0.1)",
        );
    }
    package(
        &f.scratch,
        "billing",
        &yaml("billing", "1.0.0", &r[0], &[&r[1]], &[]),
        &[
            ("types/invoice.sql", "CREATE TYPE invoice AS (id bigint, amount numeric);\n"),
            ("functions/rate.sql", "CREATE FUNCTION rate() RETURNS numeric\nLANGUAGE sql STABLE\nAS $$ SELECT rate FROM public.settings $$;\n"),
        ],
    );
    let run = f.run(&["deploy", "--format", "json"]);
    run.expect(1)
        .says("package `billing` failed on node `node1`")
        .says("the other nodes committed");
    let v: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["error"]["node"], "node1");
    assert_eq!(v["error"]["package"], "billing");
    assert_eq!(v["error"]["sqlstate"], "42P01");
    assert!(v["error"]["file"]
        .as_str()
        .unwrap()
        .ends_with("functions/rate.sql"));
    assert_eq!(v["error"]["line"], 3);
    let outcomes: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["committed", "rolled-back", "committed"]);
    for n in [0, 2] {
        assert_eq!(live(&f, n), ["billing 1.0.0 billing_1_0_0"], "node{n}");
    }
    assert!(schemas(&f, 1, "billing%").is_empty(), "node1 rolled back");
    assert!(
        !has_pgconvoy_schema(&f, 1),
        "node1's records rolled back with it"
    );
    // Fixed, a re-run deploys where it is missing.
    f.psql(1, "CREATE TABLE public.settings (rate numeric)");
    f.run(&["deploy"])
        .expect(0)
        .says("committed on 1 node(s)")
        .says("nothing to do on 2 node(s)");
    assert_eq!(live(&f, 1), ["billing 1.0.0 billing_1_0_0"]);
}

#[test]
fn atomic_failure_on_one_node_keeps_nothing_anywhere() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner", "app"]);
    for n in [0, 1] {
        f.psql(n, "CREATE TABLE public.settings (rate numeric)");
    }
    package(
        &f.scratch,
        "billing",
        &yaml("billing", "1.0.0", &r[0], &[&r[1]], &[]),
        &[("functions/rate.sql", "CREATE FUNCTION rate() RETURNS numeric LANGUAGE sql AS $$ SELECT rate FROM public.settings $$;\n")],
    );
    f.run(&["deploy", "--atomic"])
        .expect(1)
        .says("package `billing` failed on node `node2`")
        .says("rolled back on every node (--atomic)");
    for n in 0..3 {
        assert!(schemas(&f, n, "billing%").is_empty(), "node{n}");
        assert!(!has_pgconvoy_schema(&f, n), "node{n}");
        assert_eq!(
            f.psql(
                n,
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
            ),
            "0"
        );
    }
    f.psql(2, "CREATE TABLE public.settings (rate numeric)");
    f.run(&["deploy", "--atomic"])
        .expect(0)
        .says("committed on 3 node(s)");
    for n in 0..3 {
        assert_eq!(live(&f, n), ["billing 1.0.0 billing_1_0_0"], "node{n}");
    }
}

// --- the cluster lock and lock timeouts ------------------------------------------------

#[test]
fn lock_timeout_retries_run_out_naming_the_node_and_the_lock() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner", "app"]);
    billing(&f.scratch, "1.0.0", "0.1", &r[0], &[&r[1]]);
    f.run(&["deploy"]).expect(0);
    // A reader of the view on node2 holds it for the rest of the test.
    let reader = Session::connect(&f.dsns[2]);
    reader.exec("BEGIN; SELECT * FROM billing_1_0_0.rates");
    billing(&f.scratch, "1.0.0", "0.3", &r[0], &[&r[1]]);
    let started = Instant::now();
    let run = finish(
        spawn(
            &f,
            &[
                "deploy",
                "--mode",
                "unsafe",
                "--lock-timeout",
                "200ms",
                "--lock-retries",
                "2",
            ],
        ),
        60,
    );
    run.expect(1)
        .says("package `billing` failed on node `node2`")
        .says("within the lock timeout of")
        .says("after 3 tries")
        .says("55P03");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        total_as(&f, 2, &r[1], "public", "billing_1_0_0"),
        "110.00",
        "node2 kept the old"
    );
    assert_eq!(
        total_as(&f, 0, &r[1], "public", "billing_1_0_0"),
        "130.00",
        "node0 took the new"
    );
    drop(reader);
}

#[test]
fn another_coordinator_holding_the_cluster_exits_3() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner"]);
    billing(&f.scratch, "1.0.0", "0.1", &r[0], &[]);
    f.patch("patch-1-0-0-std.sql", "SELECT pg_sleep(30);\n");
    let upgrade = spawn(&f, &["upgrade"]);
    assert!(common::wait_for(20, || common::pgconvoy_sleeping(&f, 0)));
    f.run(&["deploy"]).expect(3).says("cluster busy");
    assert!(schemas(&f, 0, "billing%").is_empty());
    let mut upgrade = upgrade;
    let _ = upgrade.kill();
    let _ = upgrade.wait();
}

// --- status ----------------------------------------------------------------------------

#[test]
fn status_lists_packages_per_node_and_flags_differences_from_the_master() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner"]);
    billing(&f.scratch, "1.0.0", "0.1", &r[0], &[]);
    f.run(&["deploy"]).expect(0);
    f.psql(
        2,
        "UPDATE pgconvoy.package SET checksum = 'abc' WHERE state = 'live'",
    );
    let run = f.run(&["status", "--format", "json"]);
    run.expect(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    for n in 0..3 {
        let p = &v["nodes"][n]["packages"][0];
        assert_eq!(p["name"], "billing");
        assert_eq!(p["version"], "1.0.0");
        assert_eq!(p["schema"], "billing_1_0_0");
    }
    assert_eq!(
        v["nodes"][1]["packages_differ"].as_array().unwrap().len(),
        0
    );
    let differ = v["nodes"][2]["packages_differ"][0].as_str().unwrap();
    assert!(differ.contains("billing_1_0_0"), "{differ}");
    f.run(&["status"])
        .expect(0)
        .says("node `node1`: packages billing 1.0.0")
        .says("node `node2`: differs from the master: schema `billing_1_0_0`");
}

// --- check -----------------------------------------------------------------------------

const OFFLINE: &str = "master:\n  name: node0\n  dsn: \"host=127.0.0.1 port=1 dbname=app\"\n";

fn offline() -> Scratch {
    let s = Scratch::new();
    s.write("cluster.yaml", OFFLINE);
    s
}

#[test]
fn check_names_every_problem_in_the_packages_directory() {
    let s = offline();
    package(
        &s,
        "a",
        "name: a\nversion: 1.0\nowner_role: o\n",
        &[("types/t.sql", "CREATE TYPE t AS (x int);\n")],
    );
    package(
        &s,
        "b",
        "name: b\nversion: 1.0.0\nowner_role: o\nowner: x\n",
        &[("types/t.sql", "CREATE TYPE t AS (x int);\n")],
    );
    package(
        &s,
        "c",
        "name: c\nversion: 1.0.0\nowner_role: o\ndepends: [nosuch]\n",
        &[("types/t.sql", "CREATE TYPE t AS (x int);\n")],
    );
    package(
        &s,
        "d",
        "name: d\nversion: 1.0.0\nowner_role: o\ndepends: [e]\n",
        &[("types/t.sql", "CREATE TYPE t AS (x int);\n")],
    );
    package(
        &s,
        "e",
        "name: e\nversion: 1.0.0\nowner_role: o\ndepends: [d]\n",
        &[("types/t.sql", "CREATE TYPE t AS (x int);\n")],
    );
    package(
        &s,
        "f",
        "name: f\nversion: 1.0.0\nowner_role: o\n",
        &[
            (
                "types/two.sql",
                "CREATE TYPE x AS (a int);\n\nCREATE TYPE y AS (b int);\n",
            ),
            (
                "functions/tx.sql",
                "BEGIN;\nCREATE FUNCTION g() RETURNS int LANGUAGE sql AS 'SELECT 1';\nCOMMIT;\n",
            ),
            ("views/v.sql", "CREATE VIEW public.v AS SELECT 1;\n"),
        ],
    );
    package(
        &s,
        "ok",
        "name: ok\nversion: 1.0.0\nowner_role: o\n",
        &[("types/t.sql", "CREATE TYPE t AS (x int);\n")],
    );
    let run = s.run(&["check"]);
    run.expect(2)
        .says("packages/a/package.yaml: key `version`: `1.0` is not a semantic version")
        .says("packages/b/package.yaml: unknown field `owner`")
        .says("packages/c/package.yaml: package `c` depends on `nosuch`")
        .says("packages depend on each other in a circle")
        .says("packages/f/types/two.sql line 3: holds two objects")
        .says("packages/f/functions/tx.sql line 1: `BEGIN` is transaction control")
        .says(
            "packages/f/views/v.sql line 1: `public.v`: objects are written without a schema name",
        )
        .says("package ok 1.0.0 → schema ok_1_0_0")
        .says("checked 1 package(s)");
    // deploy refuses the same way, before connecting anywhere (the node is unreachable).
    s.run(&["deploy"]).expect(2).says("packages directory");
}

#[test]
fn packages_key_resolves_against_the_config_file() {
    let s = Scratch::new();
    s.write(
        "conf/cluster.yaml",
        &format!("patches: ../patches\npackages: ../code\n{OFFLINE}"),
    );
    package(
        &s,
        "ok",
        "name: ok\nversion: 1.0.0\nowner_role: o\n",
        &[("types/t.sql", "CREATE TYPE t AS (x int);\n")],
    );
    std::fs::rename(s.path().join("packages"), s.path().join("code")).unwrap();
    s.run(&["-c", "conf/cluster.yaml", "check"])
        .expect(0)
        .says("package ok 1.0.0");
    s.run(&["-c", "conf/cluster.yaml", "deploy", "nosuch"])
        .expect(2)
        .says("no package named `nosuch`");
    s.write(
        "conf/bad.yaml",
        &format!("patches: ../patches\npackages: nowhere\n{OFFLINE}"),
    );
    s.run(&["-c", "conf/bad.yaml", "check"])
        .expect(2)
        .says("key `packages`");
}

// --- recover ---------------------------------------------------------------------------

#[test]
fn recover_resolves_what_a_dead_atomic_deploy_left_prepared() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner"]);
    billing(&f.scratch, "1.0.0", "0.1", &r[0], &[]);
    f.run(&["deploy"]).expect(0);
    // Deploy `42-1` committed on node0 before its coordinator died; `43-1` committed nowhere.
    f.psql(
        0,
        "INSERT INTO pgconvoy.package (name, version, schema, checksum, subclass, deployed_at, deployed_by, deploy_id, mode) \
         VALUES ('geo', '1.0.0', 'geo_1_0_0', 'c', 'versioned', now(), 'test', '42-1', 'safe')",
    );
    let mut holders = Vec::new();
    for (n, id, schema) in [
        (1, "42-1", "geo_1_0_0"),
        (2, "42-1", "geo_1_0_0"),
        (1, "43-1", "geo_2_0_0"),
    ] {
        let gid = format!("pgconvoy:pgconvoy.revision:deploy-{id}:node{n}:{}", f.db);
        let s = Session::connect(&f.dsns[n]);
        s.exec(&format!(
            "BEGIN; CREATE SCHEMA {schema}; PREPARE TRANSACTION '{gid}'"
        ));
        holders.push(s);
    }
    // Deploys (and upgrades) refuse to start over them.
    billing(&f.scratch, "1.1.0", "0.1", &r[0], &[]);
    f.run(&["deploy"])
        .expect(1)
        .says("run `pgconvoy recover` first");
    f.patch("patch-1-0-0-direct.sql", "CREATE TABLE t (id int);\n");
    f.run(&["upgrade"])
        .expect(1)
        .says("run `pgconvoy recover` first");
    f.run(&["recover"])
        .expect(0)
        .says("COMMIT PREPARED 'pgconvoy:pgconvoy.revision:deploy-42-1:node1")
        .says("(deploy 42-1 committed elsewhere)")
        .says("ROLLBACK PREPARED 'pgconvoy:pgconvoy.revision:deploy-43-1:node1");
    assert_eq!(schemas(&f, 1, "geo%"), ["geo_1_0_0"]);
    assert_eq!(schemas(&f, 2, "geo%"), ["geo_1_0_0"]);
    for n in 0..3 {
        assert_eq!(
            f.psql(
                n,
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
            ),
            "0"
        );
    }
}

// --- history ---------------------------------------------------------------------------

#[test]
fn every_deployment_stays_listed_for_history() {
    let f = Fixture::new(1);
    let r = roles(&f, &["owner"]);
    billing(&f.scratch, "1.0.0", "0.1", &r[0], &[]);
    f.run(&["deploy"]).expect(0);
    billing(&f.scratch, "1.0.0", "0.2", &r[0], &[]);
    f.run(&["deploy", "--mode", "moderate"]).expect(0);
    let s = Session::connect(&f.dsns[0]);
    let book = pgconvoy::packages::record::PackageBook::new("pgconvoy");
    let rows = s.rt.block_on(book.deployments(&s.client)).unwrap();
    let seen: Vec<(String, String, Option<String>, bool)> = rows
        .iter()
        .map(|d| {
            (
                d.state.clone(),
                d.mode.clone(),
                d.aside_schema.clone(),
                d.deployed_at.ends_with('Z') && d.retired_at.is_some() == (d.state != "live"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "aside".into(),
                "safe".into(),
                Some("billing_1_0_0_1".into()),
                true
            ),
            ("live".into(), "moderate".into(), None, true),
        ]
    );
}

// --- physical replication ----------------------------------------------------------------

#[test]
fn physical_standbys_get_packages_by_replay_before_deploy_returns() {
    use pgconvoy::localpg::{LocalServer, PgBinaries, ServerOptions};
    let bins = PgBinaries::locate().expect("PostgreSQL server binaries");
    let primary = LocalServer::start(&bins, &ServerOptions::default()).expect("start primary");
    let db = common::unique_db("pkgphys");
    primary.create_database(&db).expect("create database");
    primary
        .psql(
            &db,
            &format!("CREATE ROLE \"{db}_owner\" NOLOGIN; CREATE ROLE \"{db}_app\" NOLOGIN"),
        )
        .expect("roles");
    let standby =
        LocalServer::start_standby(&primary, &ServerOptions::default()).expect("start standby");
    let f = Fixture::with_dsns(db.clone(), vec![primary.dsn(&db), standby.dsn(&db)]);
    f.write_config("replication: physical\nreplication_timeout: 15s\n");
    let owner = format!("{db}_owner");
    let app = format!("{db}_app");
    billing(&f.scratch, "1.0.0", "0.1", &owner, &[&app]);
    let run = f.run(&["deploy", "--format", "json"]);
    // No polling: the run returned only once the standby had replayed it.
    let on_standby = total_as(&f, 1, &app, "public", "billing_1_0_0");
    run.expect(0).says("standbys replayed past");
    assert_eq!(on_standby, "110.00");
    let v: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(v["nodes"][0]["outcome"], "committed");
    assert_eq!(v["nodes"][1]["outcome"], "standby");
    assert_eq!(
        live(&f, 1),
        ["billing 1.0.0 billing_1_0_0"],
        "the standby's records are the master's, by WAL"
    );
    drop(f);
    drop(standby);
    drop(primary);
}

// --- interruption ------------------------------------------------------------------------

#[test]
fn ctrl_c_while_a_node_waits_for_a_lock_rolls_that_node_back_and_leaves_nothing_running() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner", "app"]);
    billing(&f.scratch, "1.0.0", "0.1", &r[0], &[&r[1]]);
    f.run(&["deploy"]).expect(0);
    let reader = Session::connect(&f.dsns[1]);
    reader.exec("BEGIN; SELECT * FROM billing_1_0_0.rates");
    billing(&f.scratch, "1.0.0", "0.3", &r[0], &[&r[1]]);
    let child = spawn(&f, &["deploy", "--mode", "unsafe", "--lock-timeout", "60s"]);
    let waiting = common::wait_for(20, || {
        f.psql(
            1,
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE NOT l.granted AND a.application_name = 'pgconvoy' AND a.datname = current_database()",
        ) != "0"
    });
    assert!(waiting, "the deploy never waited for its lock on node1");
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let run = finish(child, 30);
    assert_ne!(run.code(), 0, "{}", run.all());
    run.says("interrupted").says("node `node1`");
    for n in 0..3 {
        assert!(
            common::wait_for(5, || common::pgconvoy_backends(&f, n).is_empty()),
            "pgconvoy backends remain on node{n}: {:?}",
            common::pgconvoy_backends(&f, n)
        );
    }
    drop(reader);
    assert_eq!(
        total_as(&f, 1, &r[1], "public", "billing_1_0_0"),
        "110.00",
        "node1 rolled back"
    );
    assert_eq!(
        f.psql(1, "SELECT state FROM pgconvoy.package ORDER BY deployed_at"),
        "live"
    );
}

// --- basic packages ----------------------------------------------------------------------

#[test]
fn a_basic_package_lives_in_its_name_and_a_new_version_needs_a_mode() {
    let f = Fixture::new(3);
    let r = roles(&f, &["owner", "app"]);
    let util = |version: &str, answer: &str| {
        package(
            &f.scratch,
            "util",
            &format!(
                "name: util\nversion: {version}\nsubclass: basic\nowner_role: {}\nuser_roles: [{}]\n",
                r[0], r[1]
            ),
            &[(
                "functions/answer.sql",
                &format!("CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS $$ SELECT {answer} $$;\n"),
            )],
        )
    };
    let answer = |n: usize| f.psql(n, &format!("SET ROLE \"{}\"; SELECT util.answer()", r[1]));
    util("1.0.0", "41");
    f.run(&["deploy"])
        .expect(0)
        .says("deploy into new schema `util`");
    util("1.1.0", "42");
    // One schema, one version: the new version meets the old one there.
    f.run(&["deploy"])
        .expect(2)
        .says("schema `util` already holds version 1.0.0");
    assert_eq!(answer(0), "41");
    f.run(&["deploy", "--mode", "moderate"])
        .expect(0)
        .says("aside to `util_1`");
    for n in 0..3 {
        assert_eq!(answer(n), "42", "node{n}");
        assert_eq!(live(&f, n), ["util 1.1.0 util"], "node{n}");
    }
}
