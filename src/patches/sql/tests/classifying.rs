//! Reading what a statement is: index builds, leading keywords, psql meta-commands,
//! `COPY … FROM stdin`, transaction control.

use super::*;

// --- CREATE INDEX CONCURRENTLY ------------------------------------------------------

#[test]
fn create_index_concurrently_is_its_own_statement() {
    let script = "CREATE INDEX CONCURRENTLY idx_a ON t (a);\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"Idx;B\" ON t (b) WHERE b <> ';';\n";
    let statements = split(script).unwrap();
    assert_eq!(statements.len(), 2);
    assert_eq!(statements[1].line, 2);
    assert_eq!(
        create_index_concurrently_name(statements[1].text).as_deref(),
        Some("Idx;B")
    );
}

#[test]
fn index_name_plain_and_folded() {
    assert_eq!(
        create_index_concurrently_name("create index concurrently Idx_A on t(a);").as_deref(),
        Some("idx_a")
    );
}

#[test]
fn index_name_unique() {
    assert_eq!(
        create_index_concurrently_name("CREATE UNIQUE INDEX CONCURRENTLY u ON t(a);").as_deref(),
        Some("u")
    );
}

#[test]
fn index_name_if_not_exists() {
    assert_eq!(
        create_index_concurrently_name(
            "create index concurrently if not exists i2 on t using btree (a);"
        )
        .as_deref(),
        Some("i2")
    );
}

#[test]
fn index_name_quoted() {
    assert_eq!(
        create_index_concurrently_name("create index concurrently \"My \"\"Idx\"\"\" on t(a);")
            .as_deref(),
        Some("My \"Idx\"")
    );
}

#[test]
fn index_name_schema_qualified() {
    assert_eq!(
        create_index_concurrently_name("create index concurrently s.idx on s.t(a);").as_deref(),
        Some("s.idx")
    );
    assert_eq!(
        create_index_concurrently_name("create index concurrently \"S\".Idx on t(a);").as_deref(),
        Some("S.idx")
    );
}

#[test]
fn index_name_missing_or_not_a_concurrent_build() {
    assert_eq!(
        create_index_concurrently_name("create index concurrently on t(a);"),
        None
    );
    assert_eq!(
        create_index_concurrently_name("create unique index concurrently ON t(a);"),
        None
    );
    assert_eq!(
        create_index_concurrently_name("create index i on t(a);"),
        None
    );
    assert_eq!(
        create_index_concurrently_name("drop index concurrently i;"),
        None
    );
    assert_eq!(create_index_concurrently_name(""), None);
    assert_eq!(
        create_index_concurrently_name("create index concurrently \"unclosed on t(a);"),
        None
    );
}

#[test]
fn index_name_with_comments_and_odd_names() {
    assert_eq!(
        create_index_concurrently_name(
            "create /* a */ index -- b\n concurrently /* c */ \"on\" on t(a);"
        )
        .as_deref(),
        Some("on")
    );
    // IF is not reserved: without NOT EXISTS it is the index name.
    assert_eq!(
        create_index_concurrently_name("create index concurrently if on t(a);").as_deref(),
        Some("if")
    );
}

// --- leading keywords -------------------------------------------------------------------

#[test]
fn leading_keywords_skip_comments_and_stop_at_non_words() {
    let stmt = "create /*x*/ unique index concurrently \"Foo\" on t(a);";
    assert_eq!(
        leading_keywords(stmt, 4),
        vec!["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"]
    );
    assert_eq!(
        leading_keywords(stmt, 10),
        vec!["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"]
    );
    assert_eq!(leading_keywords(stmt, 2), vec!["CREATE", "UNIQUE"]);
    assert!(leading_keywords(stmt, 0).is_empty());
}

#[test]
fn leading_keywords_other_shapes() {
    assert_eq!(
        leading_keywords("-- why\n  alter table foo add column b int;", 3),
        vec!["ALTER", "TABLE", "FOO"]
    );
    assert_eq!(
        leading_keywords("set lock_timeout = '1s';", 5),
        vec!["SET", "LOCK_TIMEOUT"]
    );
    assert!(leading_keywords("'select' from;", 2).is_empty());
    assert!(leading_keywords("(select 1);", 2).is_empty());
    assert!(leading_keywords("/* only */", 2).is_empty());
}

// --- psql meta-commands ------------------------------------------------------------------

#[test]
fn meta_commands_are_errors_naming_their_line() {
    let e = err("\\set ON_ERROR_STOP on\nselect 1;");
    assert_eq!(
        e,
        SplitError::MetaCommand {
            command: "\\set".into(),
            line: 1
        }
    );
    assert!(e.to_string().contains("`\\set`"), "{e}");
    assert_eq!(
        err("select 1;\n\n\\i other.sql\n"),
        SplitError::MetaCommand {
            command: "\\i".into(),
            line: 3
        }
    );
    // A meta-command on the last line is blamed, not a missing `;`.
    assert_eq!(
        err("select 1;\nselect 2\n\\g"),
        SplitError::MetaCommand {
            command: "\\g".into(),
            line: 3
        }
    );
    assert_eq!(
        err("select 1;\n\\connect other"),
        SplitError::MetaCommand {
            command: "\\connect".into(),
            line: 2
        }
    );
    assert_eq!(err("\\").line(), Some(1));
}

#[test]
fn backslashes_in_strings_and_comments_are_fine() {
    assert_eq!(
        texts("select E'\\\\i', '\\set'; -- \\i x\n/* \\connect */ select $$\\g$$;"),
        vec!["select E'\\\\i', '\\set';", "select $$\\g$$;"]
    );
}

// --- COPY ... FROM stdin ------------------------------------------------------------------

fn data(script: &str) -> Vec<Option<(&str, usize)>> {
    split(script)
        .unwrap()
        .iter()
        .map(|s| s.copy_data.map(|d| (d.text, d.line)))
        .collect()
}

#[test]
fn copy_from_stdin_data_block_is_data() {
    let script = "CREATE TABLE t (a int, b text);\nCOPY public.t (a, b) FROM stdin;\n1\tx; 'y\n2\t\\N\n\\.\nSELECT 1;\n";
    let statements = split(script).unwrap();
    assert_eq!(statements.len(), 3);
    assert_eq!(statements[1].text, "COPY public.t (a, b) FROM stdin;");
    let d = statements[1].copy_data.unwrap();
    assert_eq!(d.text, "1\tx; 'y\n2\t\\N\n");
    assert_eq!(
        (d.line, &script[d.offset..d.offset + d.text.len()]),
        (3, d.text)
    );
    assert_eq!((statements[2].text, statements[2].line), ("SELECT 1;", 6));
    assert_eq!(statements[0].copy_data, None);
}

#[test]
fn copy_shapes() {
    // Empty block, end of file right after `\.`, CRLF, options, a comment after `;`.
    assert_eq!(data("copy t from stdin;\n\\."), vec![Some(("", 2))]);
    assert_eq!(
        data("copy t from STDIN with (format csv); -- data\r\n1,\"a;b\"\r\n\\.\r\nselect 2;"),
        vec![Some(("1,\"a;b\"\r\n", 2)), None]
    );
    assert_eq!(
        data("copy t from stdin /* c */ ; /* d */\n1\n\\.\ncopy u from stdin;\n2\n\\.\n"),
        vec![Some(("1\n", 2)), Some(("2\n", 5))]
    );
    // A line that merely starts with `\.` or holds it later is data.
    assert_eq!(
        data("copy t from stdin;\n\\.x\n a\\.\n\\.\n"),
        vec![Some(("\\.x\n a\\.\n", 2))]
    );
    // Not from stdin: no data block.
    assert_eq!(
        data("copy (select a from stdin) to stdout;\ncopy t from '/tmp/x';\ncopy t to stdout;"),
        vec![None, None, None]
    );
    assert!(is_copy_from_stdin("COPY t(a) FROM STDIN (FORMAT text);"));
    assert!(!is_copy_from_stdin("select 'copy t from stdin';"));
    assert!(!is_copy_from_stdin("copy t from \"stdin\";"));
}

#[test]
fn copy_errors() {
    assert_eq!(
        err("select 1;\ncopy t from stdin;\n1\n2\n"),
        SplitError::UnterminatedCopyData { line: 2 }
    );
    assert_eq!(
        err("copy t from stdin;"),
        SplitError::UnterminatedCopyData { line: 1 }
    );
    let e = err("copy t\n from stdin; select 1;\n1\n\\.\n");
    assert_eq!(e, SplitError::AfterCopy { line: 2 });
    assert!(e.to_string().contains("line 2"), "{e}");
    assert!(SplitError::UnterminatedCopyData { line: 4 }
        .to_string()
        .contains("`\\.`"));
}

// --- transaction control -------------------------------------------------------------------

#[test]
fn transaction_control_commands() {
    let table = [
        ("BEGIN;", Some("BEGIN")),
        (
            "begin transaction isolation level serializable;",
            Some("BEGIN"),
        ),
        ("START TRANSACTION;", Some("START TRANSACTION")),
        ("commit;", Some("COMMIT")),
        ("COMMIT AND CHAIN;", Some("COMMIT")),
        ("end work;", Some("END")),
        ("ROLLBACK;", Some("ROLLBACK")),
        ("abort;", Some("ABORT")),
        ("SAVEPOINT a;", Some("SAVEPOINT")),
        ("RELEASE SAVEPOINT a;", Some("RELEASE SAVEPOINT")),
        ("release a;", Some("RELEASE SAVEPOINT")),
        ("ROLLBACK TO SAVEPOINT a;", Some("ROLLBACK TO SAVEPOINT")),
        ("rollback work to a;", Some("ROLLBACK TO SAVEPOINT")),
        ("PREPARE TRANSACTION 'x';", Some("PREPARE TRANSACTION")),
        ("COMMIT PREPARED 'x';", Some("COMMIT PREPARED")),
        ("ROLLBACK PREPARED 'x';", Some("ROLLBACK PREPARED")),
        ("-- c\n/* d */ Commit;", Some("COMMIT")),
        // Not transaction control.
        ("PREPARE q AS SELECT 1;", None),
        ("START something;", None),
        ("select 'commit';", None),
        ("\"begin\";", None),
        ("DO $$ BEGIN COMMIT; END $$;", None),
        (
            "create function f() returns void language plpgsql as $$ begin rollback; end $$;",
            None,
        ),
        (
            "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC SELECT 1; END;",
            None,
        ),
        ("select 1; -- commit", None),
    ];
    for (statement, want) in table {
        assert_eq!(transaction_control(statement), want, "{statement:?}");
    }
}

#[test]
fn transaction_control_only_at_top_level() {
    let script = "create function f() returns int language sql\nbegin atomic\n  select 1;\nend;\ndo $$ begin commit; end $$;\nselect 'rollback; commit';\n/* begin; */\ncommit;\n";
    let hits: Vec<(usize, &str)> = split(script)
        .unwrap()
        .iter()
        .filter_map(|s| transaction_control(s.text).map(|t| (s.line, t)))
        .collect();
    assert_eq!(hits, vec![(8, "COMMIT")]);
}
