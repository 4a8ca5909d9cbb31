//! Tests of the lint rules, one patch or a few at a time.

use super::*;
use crate::patches::patch::{PatchVersion, StatementSpan};
use std::path::PathBuf;

pub(super) fn patch(minor: u32, kind: PatchType, body: &str) -> Patch {
    let statements = sql::split(body)
        .unwrap()
        .iter()
        .map(|s| StatementSpan {
            offset: s.offset,
            len: s.text.len(),
            line: s.line,
        })
        .collect();
    Patch {
        version: PatchVersion::new(1, minor, 0),
        kind,
        path: PathBuf::from(format!("patches/patch-1-{minor}-0-{kind}.sql")),
        body: std::sync::Arc::new(body.to_string()),
        copies: Vec::new(),
        checksum: String::new(),
        statements,
        order: Default::default(),
    }
}

/// `rule@line` of every finding for the patches, in order.
fn run(patches: &[Patch]) -> Vec<String> {
    let refs: Vec<&Patch> = patches.iter().collect();
    lint(&refs)
        .iter()
        .map(|f| format!("{}@{}", f.rule, f.line))
        .collect()
}

fn one(kind: PatchType, body: &str) -> Vec<String> {
    run(&[patch(0, kind, body)])
}

use PatchType::{Concurrent as C, Direct as D, Std as S};

#[test]
fn index_without_concurrently() {
    assert_eq!(
        one(D, "SELECT 1;\nCREATE INDEX orders_v ON orders (v);\n"),
        ["require-concurrent-index-creation@2"]
    );
    assert_eq!(
        one(S, "CREATE UNIQUE INDEX ON public.orders USING btree (v);"),
        ["require-concurrent-index-creation@1"]
    );
    // A table the pending patches create is new and empty.
    assert!(run(&[
        patch(0, D, "CREATE TABLE public.orders (v int);"),
        patch(1, S, "CREATE INDEX ON orders (v);"),
    ])
    .is_empty());
    // Concurrent builds in a concurrent patch are the right way.
    assert!(one(C, "CREATE INDEX CONCURRENTLY o_v ON orders (v);").is_empty());
}

#[test]
fn concurrently_in_transaction() {
    assert_eq!(
        one(
            D,
            "CREATE TABLE t (v int);\n\nCREATE INDEX CONCURRENTLY t_v ON t (v);"
        ),
        ["concurrently-in-transaction@3"]
    );
    assert_eq!(
        one(S, "DROP INDEX CONCURRENTLY x;"),
        ["concurrently-in-transaction@1"]
    );
    assert_eq!(
        one(S, "REINDEX INDEX CONCURRENTLY x;"),
        ["concurrently-in-transaction@1"]
    );
    // REFRESH … CONCURRENTLY is fine in a transaction; "concurrently" in a string is not a keyword.
    assert!(one(D, "REFRESH MATERIALIZED VIEW CONCURRENTLY mv;").is_empty());
    assert!(one(D, "COMMENT ON TABLE t IS 'create index concurrently';").is_empty());
}

#[test]
fn not_concurrent_safe() {
    assert_eq!(
        one(
            C,
            "CREATE INDEX CONCURRENTLY a ON t (v);\nALTER TABLE t ADD COLUMN w int;\n"
        ),
        ["not-concurrent-safe@2"]
    );
    assert_eq!(
        one(C, "CREATE INDEX t_v ON t (v);"),
        ["not-concurrent-safe@1"]
    );
    assert!(one(
        C,
        "SET maintenance_work_mem = '1GB';\nCREATE UNIQUE INDEX CONCURRENTLY a ON t (v);\n\
         DROP INDEX CONCURRENTLY IF EXISTS b;\nALTER TABLE t VALIDATE CONSTRAINT c;\nANALYZE t;\n\
         ALTER TYPE mood ADD VALUE 'meh';\nREINDEX (VERBOSE) INDEX CONCURRENTLY a;\n"
    )
    .is_empty());
}

#[test]
fn volatile_default() {
    assert_eq!(
        one(
            D,
            "ALTER TABLE orders\n  ADD COLUMN token uuid DEFAULT gen_random_uuid();"
        ),
        ["adding-field-with-default@2"]
    );
    assert_eq!(
        one(D, "ALTER TABLE orders ADD id2 bigserial;"),
        ["adding-field-with-default@1"]
    );
    assert_eq!(
        one(
            D,
            "ALTER TABLE orders ADD COLUMN n int GENERATED ALWAYS AS IDENTITY;"
        ),
        ["adding-field-with-default@1"]
    );
    // Constant and stable defaults are stored in the catalog: no rewrite.
    assert!(one(
        D,
        "ALTER TABLE orders ADD COLUMN a int DEFAULT 0, ADD COLUMN b timestamptz DEFAULT now();"
    )
    .is_empty());
    assert!(run(&[
        patch(0, D, "CREATE TABLE orders (v int);"),
        patch(
            1,
            D,
            "ALTER TABLE orders ADD COLUMN r float8 DEFAULT random();"
        ),
    ])
    .is_empty());
}

#[test]
fn column_type_change() {
    assert_eq!(
        one(D, "ALTER TABLE orders ALTER COLUMN v TYPE bigint;"),
        ["changing-column-type@1"]
    );
    assert_eq!(
        one(D, "ALTER TABLE orders ALTER v SET DATA TYPE text;"),
        ["changing-column-type@1"]
    );
    assert!(one(D, "ALTER TABLE orders ALTER COLUMN v SET DEFAULT 1;").is_empty());
}

#[test]
fn set_not_null() {
    let found = {
        let p = patch(0, D, "ALTER TABLE s.orders ALTER COLUMN v SET NOT NULL;");
        lint(&[&p])
    };
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].rule, Rule::AddingNotNullableField);
    let col = found[0].column.as_ref().unwrap();
    assert_eq!(
        (col.table.quoted(), col.column.as_str()),
        ("\"s\".\"orders\"".into(), "v")
    );
    // With a validated check first (in one step, or NOT VALID then VALIDATE): no finding.
    assert!(one(
        D,
        "ALTER TABLE orders ADD CONSTRAINT v_nn CHECK (v IS NOT NULL);\nALTER TABLE orders ALTER v SET NOT NULL;"
    )
    .is_empty());
    assert!(run(&[
        patch(
            0,
            D,
            "ALTER TABLE orders ADD CONSTRAINT v_nn CHECK (v IS NOT NULL) NOT VALID;"
        ),
        patch(1, D, "ALTER TABLE orders VALIDATE CONSTRAINT v_nn;"),
        patch(2, D, "ALTER TABLE orders ALTER COLUMN v SET NOT NULL;"),
    ])
    .is_empty());
    // NOT VALID alone does not help.
    assert_eq!(
        run(&[
            patch(
                0,
                D,
                "ALTER TABLE orders ADD CONSTRAINT v_nn CHECK (v IS NOT NULL) NOT VALID;"
            ),
            patch(1, D, "ALTER TABLE orders ALTER COLUMN v SET NOT NULL;"),
        ]),
        ["adding-not-nullable-field@1"]
    );
}

#[test]
fn drops() {
    assert_eq!(
        one(D, "DROP TABLE IF EXISTS a, b;"),
        ["ban-drop-table@1", "ban-drop-table@1"]
    );
    assert_eq!(
        one(
            S,
            "ALTER TABLE orders\n  DROP COLUMN note,\n  DROP CONSTRAINT c;"
        ),
        ["ban-drop-column@2"]
    );
    assert_eq!(
        one(S, "ALTER TABLE orders DROP IF EXISTS note;"),
        ["ban-drop-column@1"]
    );
    assert!(one(
        D,
        "DROP INDEX orders_v;\nALTER TABLE orders ALTER v DROP DEFAULT;"
    )
    .is_empty());
    assert!(run(&[
        patch(0, D, "CREATE TABLE scratch (v int);"),
        patch(
            1,
            D,
            "ALTER TABLE scratch DROP COLUMN v;\nDROP TABLE scratch;"
        ),
    ])
    .is_empty());
}

#[test]
fn transaction_control() {
    assert_eq!(
        one(D, "BEGIN;\nCREATE TABLE t ();\nCOMMIT;\n"),
        ["transaction-nesting@1", "transaction-nesting@3"]
    );
    // Savepoints end nothing, but they are pgconvoy's too (its lock-timeout retries use one).
    assert_eq!(
        one(
            D,
            "SAVEPOINT a;\nCREATE TABLE t ();\nROLLBACK TO SAVEPOINT a;\nCREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\n"
        ),
        ["transaction-nesting@1", "transaction-nesting@3"]
    );
    assert!(one(
        D,
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\nDO $$ BEGIN COMMIT; END $$;\n"
    )
    .is_empty());
    let f = lint(&[&patch(0, S, "COMMIT;")]);
    assert_eq!(f[0].severity, Severity::Error);
    assert_eq!(f[0].file, "patch-1-0-0-std.sql");
    assert_eq!(f[0].patch, "1-0-0");
}

#[test]
fn the_schema_model_follows_renames_and_drops() {
    // Created, renamed, then indexed: new all along.
    assert!(run(&[
        patch(0, D, "CREATE TABLE user_ (id int);"),
        patch(1, D, "ALTER TABLE user_ RENAME TO person;"),
        patch(2, D, "CREATE INDEX person_id ON person (id);\nALTER TABLE person ADD COLUMN t uuid DEFAULT gen_random_uuid();"),
        patch(3, D, "ALTER TABLE IF EXISTS person SET SCHEMA app;"),
        patch(4, D, "CREATE INDEX ON app.person (t);"),
    ])
    .is_empty());
    // A table that existed before the run stays existing under its new name.
    assert_eq!(
        run(&[
            patch(0, D, "ALTER TABLE orders RENAME TO purchase;"),
            patch(1, D, "CREATE INDEX purchase_v ON purchase (v);"),
        ]),
        ["require-concurrent-index-creation@1"]
    );
    // Dropped, then created again: new again; dropped only: a later index is on another table.
    assert!(run(&[
        patch(0, D, "CREATE TABLE scratch (v int);"),
        patch(1, D, "DROP TABLE scratch;"),
        patch(
            2,
            D,
            "CREATE TABLE scratch (v int);\nCREATE INDEX ON scratch (v);"
        ),
    ])
    .is_empty());
    assert_eq!(
        run(&[
            patch(0, D, "CREATE TABLE scratch (v int);"),
            patch(1, D, "DROP TABLE scratch;"),
            patch(2, D, "CREATE INDEX ON scratch (v);"),
        ]),
        ["require-concurrent-index-creation@1"]
    );
}

#[test]
fn what_a_lexer_misreads_the_grammar_reads_right() {
    // Dollar quoting, nested parentheses, a DO block, a function body: none of the words
    // inside them is a statement of the patch.
    assert!(one(
        D,
        "DO $body$ BEGIN EXECUTE 'CREATE INDEX i ON orders (v)'; DROP TABLE x; END $body$;\n\
         CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT 'ALTER TABLE orders DROP COLUMN v' $$;\n\
         CREATE RULE r AS ON INSERT TO orders DO ALSO NOTIFY orders;\n"
    )
    .is_empty());
    // A multi-action rule is one statement: the splitting keeps a `;` inside parentheses.
    assert!(one(
        D,
        "CREATE TABLE log (v int);\nCREATE RULE r AS ON INSERT TO orders\n  DO ALSO (DELETE FROM log; NOTIFY orders);\n"
    )
    .is_empty());
    // A volatile call nested in an expression is still volatile; a constant in parentheses is not.
    assert_eq!(
        one(
            D,
            "ALTER TABLE orders ADD COLUMN r int DEFAULT ((random() * 10)::int), ADD COLUMN k int DEFAULT (((1)));"
        ),
        ["adding-field-with-default@1"]
    );
    // A stored generated column is computed for every row too.
    assert_eq!(
        one(
            D,
            "ALTER TABLE orders ADD COLUMN w int GENERATED ALWAYS AS (v * 2) STORED;"
        ),
        ["adding-field-with-default@1"]
    );
    // Each ALTER TABLE action on its own line, even after commas inside parentheses.
    assert_eq!(
        one(
            D,
            "ALTER TABLE \"Odd\".orders\n  ALTER COLUMN v TYPE numeric(10, 2),\n  ADD CONSTRAINT c CHECK (v IN (1, 2)),\n  DROP COLUMN note;"
        ),
        ["changing-column-type@2", "ban-drop-column@4"]
    );
    // Quoted names keep their case; bare ones fold: `Orders` is not `orders`.
    assert_eq!(
        run(&[
            patch(0, D, "CREATE TABLE \"Orders\" (v int);"),
            patch(
                1,
                D,
                "CREATE INDEX ON Orders (v);\nCREATE INDEX ON \"Orders\" (v);"
            ),
        ]),
        ["require-concurrent-index-creation@1"]
    );
    // SELECT … INTO and CREATE TABLE … AS create new tables.
    assert!(run(&[
        patch(
            0,
            D,
            "SELECT 1 AS v INTO fresh;\nCREATE TABLE copy AS SELECT * FROM fresh;"
        ),
        patch(
            1,
            D,
            "CREATE INDEX ON fresh (v);\nCREATE INDEX ON copy (v);"
        ),
    ])
    .is_empty());
}

#[test]
fn a_statement_the_parser_rejects_is_one_finding() {
    let p = patch(
        0,
        D,
        "CREATE TABLE t (v int);\n\nALTER TABLE t\n  ADD COLUMN w int DEFALT 1;\nCREATE TABLE u (x int) WITH;\n",
    );
    let found = lint(&[&p]);
    assert_eq!(found.len(), 1, "{found:?}");
    let f = &found[0];
    assert_eq!(f.rule, Rule::SyntaxError);
    assert_eq!(f.file, "patch-1-0-0-direct.sql");
    // The line of the token the parser stumbles on, and the parser's own message.
    assert_eq!(f.line, 4);
    assert!(
        f.message.contains("syntax error at or near \"DEFALT\""),
        "{}",
        f.message
    );
    // The statements that parse are still linted, and the model still knows `t` is new.
    assert_eq!(
        run(&[
            patch(0, D, "CREATE TABLE t (v int);\nCREATE INDX x ON t (v);\n"),
            patch(1, D, "CREATE INDEX ON t (v);\nCREATE INDEX ON other (v);"),
        ]),
        ["syntax-error@2", "require-concurrent-index-creation@2"]
    );
}
