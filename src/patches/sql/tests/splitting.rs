//! Splitting: comments, strings, quoted identifiers, dollar quotes, routine bodies,
//! errors, encodings, positions, and random fragments.

use super::*;

// --- basic splitting -------------------------------------------------------------

#[test]
fn splits_simple_statements() {
    assert_eq!(
        texts("select 1;\nselect 2;\n"),
        vec!["select 1;", "select 2;"]
    );
}

#[test]
fn statement_offsets_and_lines() {
    let script = "-- header\n\nselect 1;  select 2;\n\n  /* c */ update t\n set a = 1;\n";
    let statements = split(script).unwrap();
    assert_eq!(statements.len(), 3);
    for s in &statements {
        assert_eq!(&script[s.offset..s.end()], s.text);
        assert_eq!(s.line, line_at_offset(script, s.offset));
    }
    assert_eq!((statements[0].offset, statements[0].line), (11, 3));
    assert_eq!((statements[1].offset, statements[1].line), (22, 3));
    assert_eq!(statements[2].text, "update t\n set a = 1;");
    assert_eq!(statements[2].line, 5);
}

#[test]
fn multiple_statements_on_one_line() {
    assert_eq!(
        texts("select 1;select 2 ;"),
        vec!["select 1;", "select 2 ;"]
    );
}

#[test]
fn empty_statements_are_dropped() {
    assert_eq!(
        texts(";;select 1;;\n;/* x */;select 2;;"),
        vec!["select 1;", "select 2;"]
    );
}

// --- comments ----------------------------------------------------------------------

#[test]
fn leading_comments_are_not_part_of_the_statement() {
    let script = "-- one; two\n/* three; 'four */\n  create table t (a int);";
    let statements = split(script).unwrap();
    assert_eq!(statements[0].text, "create table t (a int);");
    assert_eq!(statements[0].line, 3);
}

#[test]
fn line_comment_with_semicolon_and_quote_inside_statement() {
    assert_eq!(
        texts("select 1 -- it's; not the end\n  + 2;\nselect 3;"),
        vec!["select 1 -- it's; not the end\n  + 2;", "select 3;"]
    );
}

#[test]
fn block_comment_with_semicolon_and_quote_inside_statement() {
    assert_eq!(
        texts("select /* don't; stop */ 1;"),
        vec!["select /* don't; stop */ 1;"]
    );
}

#[test]
fn block_comments_nest() {
    assert_eq!(
        texts("/* a /* b; */ c; ' */ select 1; /* x /* y */ z; */ select 2;"),
        vec!["select 1;", "select 2;"]
    );
}

#[test]
fn block_comment_edge_shapes() {
    // `/*/` does not close itself, `/**/` is complete, `**/` closes.
    assert_eq!(
        texts("/*/ ; */ select 1; /**/ select 2; /*** ; ***/ select 3;"),
        vec!["select 1;", "select 2;", "select 3;"]
    );
}

#[test]
fn trailing_comments_and_whitespace_after_last_statement() {
    assert_eq!(
        texts("select 1; -- done\n/* really; done */\n\n  "),
        vec!["select 1;"]
    );
    assert_eq!(texts("select 1; -- no newline at end"), vec!["select 1;"]);
}

#[test]
fn line_comment_ending_in_carriage_return() {
    assert_eq!(texts("select 1 -- c\r+ 2;"), vec!["select 1 -- c\r+ 2;"]);
}

#[test]
fn comment_start_inside_operator() {
    assert_eq!(
        kinds("1 +-- c;\n2 */* c; */3"),
        vec![
            (TokenKind::Number, "1"),
            (TokenKind::Operator, "+"),
            (TokenKind::Number, "2"),
            (TokenKind::Operator, "*"),
            (TokenKind::Number, "3"),
        ]
    );
}

// --- strings -----------------------------------------------------------------------

#[test]
fn string_with_semicolon() {
    assert_eq!(
        texts("insert into t values ('a;b');select 1;"),
        vec!["insert into t values ('a;b');", "select 1;"]
    );
}

#[test]
fn string_with_doubled_quote() {
    assert_eq!(
        texts("select 'it''s; fine', ''''; select 2;"),
        vec!["select 'it''s; fine', '''';", "select 2;"]
    );
}

#[test]
fn e_string_backslash_escapes_quote() {
    assert_eq!(
        texts("select E'it\\'s; ok'; select e'\\\\'; select 3;"),
        vec!["select E'it\\'s; ok';", "select e'\\\\';", "select 3;"]
    );
}

#[test]
fn e_string_with_doubled_quote() {
    assert_eq!(texts("select E'a''b;c';"), vec!["select E'a''b;c';"]);
}

#[test]
fn plain_string_backslash_is_literal() {
    // With standard_conforming_strings the string is `C:\`, then a new statement.
    assert_eq!(
        texts("select 'C:\\'; select 2;"),
        vec!["select 'C:\\';", "select 2;"]
    );
}

#[test]
fn e_prefix_only_at_token_start() {
    // `somee` is an identifier, so the following string is a plain one.
    assert_eq!(
        kinds("somee'\\';"),
        vec![
            (TokenKind::Word, "somee"),
            (TokenKind::String, "'\\'"),
            (TokenKind::Semicolon, ";"),
        ]
    );
}

#[test]
fn prefixed_strings() {
    assert_eq!(
        kinds("B'1;0' x'ff' N'é;' U&'d\\0061t;a' u&\"d;\""),
        vec![
            (TokenKind::String, "B'1;0'"),
            (TokenKind::String, "x'ff'"),
            (TokenKind::String, "N'é;'"),
            (TokenKind::String, "U&'d\\0061t;a'"),
            (TokenKind::QuotedIdent, "u&\"d;\""),
        ]
    );
}

#[test]
fn string_continuation_keeps_e_string_rules() {
    // The second segment continues the E string, so its `\'` is an escape.
    let script = "select E'a'\n  -- note\n  'b\\';c';\nselect 2;";
    assert_eq!(
        texts(script),
        vec!["select E'a'\n  -- note\n  'b\\';c';", "select 2;"]
    );
}

#[test]
fn strings_on_one_line_do_not_continue() {
    assert_eq!(
        kinds("'a' 'b'"),
        vec![(TokenKind::String, "'a'"), (TokenKind::String, "'b'")]
    );
}

// --- quoted identifiers -------------------------------------------------------------

#[test]
fn quoted_identifier_with_semicolon_and_doubled_quote() {
    assert_eq!(
        texts("create table \"a;b\"\"c\" (\"x'\" int); select 1;"),
        vec!["create table \"a;b\"\"c\" (\"x'\" int);", "select 1;"]
    );
    let t = tokens("\"a;b\"\"c\"").next().unwrap();
    assert_eq!(t.ident().as_deref(), Some("a;b\"c"));
}

// --- dollar quotes --------------------------------------------------------------------

#[test]
fn dollar_quote_with_semicolons() {
    assert_eq!(
        texts("select $$a; 'b; \"c$$; select 2;"),
        vec!["select $$a; 'b; \"c$$;", "select 2;"]
    );
}

#[test]
fn plpgsql_function_with_tagged_body_and_nested_dollar_quotes() {
    let script = r#"
CREATE OR REPLACE FUNCTION f(p int) RETURNS int LANGUAGE plpgsql AS $fn$
DECLARE
  q text := $$it's; quoted$$;
BEGIN
  EXECUTE $q$select 1; $q$;
  -- a comment; with a 'quote
  RETURN p + 1;
END;
$fn$;
select f(1);
"#;
    let statements = split(script).unwrap();
    assert_eq!(statements.len(), 2);
    assert_eq!(statements[0].line, 2);
    assert!(statements[0].text.ends_with("END;\n$fn$;"));
    assert_eq!(
        (statements[1].text, statements[1].line),
        ("select f(1);", 11)
    );
}

#[test]
fn comment_markers_inside_quotes_are_content() {
    assert_eq!(
        texts("select $$ -- $$, '/*', \"--\"; select 2;"),
        vec!["select $$ -- $$, '/*', \"--\";", "select 2;"]
    );
}

#[test]
fn plpgsql_function_body() {
    let script = "create function f() returns trigger language plpgsql as $body$\nbegin\n  new.x := 'a;b';\n  return new;\nend;\n$body$;\n\ncreate trigger t before insert on x for each row execute function f();\n";
    let statements = split(script).unwrap();
    assert_eq!(statements.len(), 2);
    assert!(statements[0].text.ends_with("end;\n$body$;"));
    assert_eq!(statements[1].line, 8);
}

#[test]
fn other_dollar_tags_inside_are_content() {
    assert_eq!(
        texts("select $fn$ $$ ; $a$ ; $fnx$ ; $Fn$ ; $a$fn$; select 2;"),
        vec!["select $fn$ $$ ; $a$ ; $fnx$ ; $Fn$ ; $a$fn$;", "select 2;"]
    );
}

#[test]
fn do_block() {
    let script = "DO $$\nBEGIN\n  RAISE NOTICE 'x;y';\nEND\n$$;\nDO LANGUAGE plpgsql $do$ BEGIN NULL; END $do$;";
    let statements = split(script).unwrap();
    assert_eq!(statements.len(), 2);
    assert_eq!(statements[1].line, 6);
    assert!(statements[1].text.ends_with("END $do$;"));
}

#[test]
fn positional_parameters_are_not_dollar_quotes() {
    let script = "PREPARE p(int, text) AS select $1, $2 || ';';\nEXECUTE p(1, 'a');";
    assert_eq!(
        texts(script),
        vec![
            "PREPARE p(int, text) AS select $1, $2 || ';';",
            "EXECUTE p(1, 'a');"
        ]
    );
    assert!(kinds("$12").contains(&(TokenKind::Param, "$12")));
}

#[test]
fn dollar_inside_identifier_is_not_a_quote() {
    assert_eq!(
        texts("select a$b, x$$ from t; select 2;"),
        vec!["select a$b, x$$ from t;", "select 2;"]
    );
    assert_eq!(kinds("a$b$")[0], (TokenKind::Word, "a$b$"));
}

#[test]
fn lone_dollar_opens_nothing() {
    assert_eq!(
        kinds("$x ;"),
        vec![
            (TokenKind::Punct, "$"),
            (TokenKind::Word, "x"),
            (TokenKind::Semicolon, ";"),
        ]
    );
}

#[test]
fn dollar_tag_with_non_ascii_and_digits() {
    assert_eq!(
        texts("select $été1$ ; $été1$; select 2;"),
        vec!["select $été1$ ; $été1$;", "select 2;"]
    );
}

// --- BEGIN ATOMIC -----------------------------------------------------------------

#[test]
fn begin_atomic_function_body() {
    let script = "CREATE FUNCTION add(a int, b int) RETURNS int\n  LANGUAGE sql\n  BEGIN ATOMIC\n    SELECT a + b;\n    SELECT 1;\n  END;\nselect add(1, 2);";
    let statements = split(script).unwrap();
    assert_eq!(statements.len(), 2);
    assert!(statements[0].text.ends_with("END;"));
    assert_eq!(statements[1].text, "select add(1, 2);");
    assert_eq!(statements[1].line, 7);
}

#[test]
fn begin_atomic_with_case_and_parenthesised_words() {
    let script = "create or replace procedure p(begin int, \"end\" int)\nbegin atomic\n  update t set x = case when y then 1 else 2 end;\n  select (case when true then 1 end);\n  insert into t values (1);\nend;\ncreate function g() returns int return 1;";
    let statements = split(script).unwrap();
    assert_eq!(statements.len(), 2);
    assert!(statements[0].text.ends_with("values (1);\nend;"));
    assert_eq!(
        statements[1].text,
        "create function g() returns int return 1;"
    );
}

#[test]
fn begin_atomic_with_comments_between_keywords() {
    let script = "CREATE /* c */ OR REPLACE -- x\n FUNCTION f() RETURNS int BEGIN /* y */ ATOMIC SELECT 1; END; SELECT 2;";
    assert_eq!(split(script).unwrap().len(), 2);
}

#[test]
fn transaction_begin_and_end_are_ordinary_statements() {
    assert_eq!(
        texts("BEGIN; select 1; END; begin atomic; select 2;"),
        vec!["BEGIN;", "select 1;", "END;", "begin atomic;", "select 2;"]
    );
}

#[test]
fn dollar_quoted_function_with_begin_in_body_is_unaffected() {
    let script = "create function f(begin int) returns int as $$ begin atomic end $$ language sql; select 1;";
    assert_eq!(split(script).unwrap().len(), 2);
}

#[test]
fn unfinished_begin_atomic_is_a_missing_terminator() {
    let script = "select 0;\ncreate function f() returns int\nbegin atomic\n  select 1;\n";
    assert_eq!(err(script), SplitError::MissingTerminator { line: 2 });
}

// --- errors -----------------------------------------------------------------------

#[test]
fn unterminated_string() {
    assert_eq!(
        err("select 1;\nselect 'abc;\n\nselect 2;"),
        SplitError::Unterminated {
            what: "string literal",
            line: 2
        }
    );
}

#[test]
fn unterminated_e_string_ending_in_backslash() {
    assert_eq!(
        err("select 1;\n\nselect E'abc\\';"),
        SplitError::Unterminated {
            what: "string literal",
            line: 3
        }
    );
}

#[test]
fn unterminated_quoted_identifier() {
    assert_eq!(
        err("select \"a\"\"b;\nselect 1;"),
        SplitError::Unterminated {
            what: "quoted identifier",
            line: 1
        }
    );
}

#[test]
fn unterminated_dollar_quotes_name_their_tag() {
    let e = err("select 1;\ncreate function f() as $fn$\nbegin\n  return $$x$$;\nend;\n$$;");
    assert_eq!(
        e,
        SplitError::UnterminatedDollarQuote {
            tag: "fn".into(),
            line: 2
        }
    );
    assert_eq!(
        e.to_string(),
        "unterminated dollar-quoted string $fn$ opened on line 2"
    );
    assert_eq!(
        err("\n\n\ndo $$ begin null; end;"),
        SplitError::UnterminatedDollarQuote {
            tag: String::new(),
            line: 4
        }
    );
}

#[test]
fn unterminated_block_comment_reports_the_outer_opening() {
    let e = err("select 1;\n/* a\n/* b */\nselect 2;");
    assert_eq!(
        e,
        SplitError::Unterminated {
            what: "block comment",
            line: 2
        }
    );
    assert_eq!(e.to_string(), "unterminated block comment opened on line 2");
}

#[test]
fn missing_terminator_reports_the_statement_start() {
    let e = err("select 1;\n-- next\nselect\n  2\n");
    assert_eq!(e, SplitError::MissingTerminator { line: 3 });
    assert_eq!(
        e.to_string(),
        "the last statement (line 3) is not terminated by `;`"
    );
    assert_eq!(err("select 1"), SplitError::MissingTerminator { line: 1 });
    assert_eq!(
        err("select 1; /* c */ select 2 -- ;"),
        SplitError::MissingTerminator { line: 1 }
    );
}

#[test]
fn semicolons_inside_parentheses_stay_in_the_statement() {
    // psql keeps a `;` inside parentheses in the statement: a multi-action rule is one.
    assert_eq!(
        texts(
            "CREATE RULE r AS ON INSERT TO t\n  DO ALSO (DELETE FROM log; NOTIFY t);\nselect 2;\n"
        ),
        vec![
            "CREATE RULE r AS ON INSERT TO t\n  DO ALSO (DELETE FROM log; NOTIFY t);",
            "select 2;"
        ]
    );
    // A stray `)` closes nothing and ends nothing.
    assert_eq!(
        texts("select 1);\nselect 2;"),
        vec!["select 1);", "select 2;"]
    );
}

#[test]
fn unclosed_parenthesis_names_its_line() {
    let e = err("select 1;\ncreate table t (\n  a int;\nselect 2;\n");
    assert_eq!(e, SplitError::UnclosedParenthesis { line: 2 });
    assert_eq!(e.line(), Some(2));
    assert_eq!(
        e.to_string(),
        "the `(` on line 2 is never closed: every `;` after it is inside the parentheses"
    );
    // The outermost `(` is the one named.
    assert_eq!(
        err("select ((1\n) + (2;\n"),
        SplitError::UnclosedParenthesis { line: 1 }
    );
}

#[test]
fn empty_scripts() {
    for script in [
        "",
        "   \n\t",
        "-- only a comment",
        "/* a */ -- b\n",
        ";",
        " ; ;\n",
    ] {
        assert_eq!(err(script), SplitError::Empty, "{script:?}");
    }
    assert_eq!(
        SplitError::Empty.to_string(),
        "no statements (the file is empty or holds only comments)"
    );
}

#[test]
fn error_line_accessor() {
    assert_eq!(SplitError::Empty.line(), None);
    assert_eq!(SplitError::MissingTerminator { line: 4 }.line(), Some(4));
}

// --- encodings and line endings ---------------------------------------------------

#[test]
fn crlf_line_endings() {
    let script = "-- c\r\nselect 1;\r\n\r\nselect\r\n 'a;b';\r\n";
    let statements = split(script).unwrap();
    assert_eq!(statements.len(), 2);
    assert_eq!((statements[0].line, statements[0].text), (2, "select 1;"));
    assert_eq!(
        (statements[1].line, statements[1].text),
        (4, "select\r\n 'a;b';")
    );
    assert_eq!(
        err("select 1;\r\nselect 2\r\n"),
        SplitError::MissingTerminator { line: 2 }
    );
}

#[test]
fn non_ascii_content() {
    let script = "-- commentaire: élève; 日本語\ncomment on table t is 'Ünïcödé; текст';\n/* ☃; */ select café from naïve;";
    let statements = split(script).unwrap();
    assert_eq!(statements.len(), 2);
    for s in &statements {
        assert!(script.is_char_boundary(s.offset));
        assert_eq!(&script[s.offset..s.end()], s.text);
    }
    assert_eq!(statements[1].text, "select café from naïve;");
    assert_eq!(statements[1].line, 3);
    assert_eq!(kinds("été;")[0], (TokenKind::Word, "été"));
}

#[test]
fn byte_order_mark_is_skipped() {
    let script = "\u{feff}CREATE TABLE t (a int);";
    let statements = split(script).unwrap();
    assert_eq!(statements[0].offset, 3);
    assert_eq!(statements[0].leading_keywords(2), vec!["CREATE", "TABLE"]);
}

// --- positions ------------------------------------------------------------------------

#[test]
fn line_at_char_position_counts_characters() {
    let text = "select 'é';\nselect 'ü' +\n  x;";
    // Char 12 is the first newline; char 13 starts line 2.
    assert_eq!(line_at_char_position(text, 1), 1);
    assert_eq!(line_at_char_position(text, 12), 1);
    assert_eq!(line_at_char_position(text, 13), 2);
    // Byte positions would land a line late here: line 3 starts at char 26, byte 28.
    assert_eq!(line_at_char_position(text, 26), 3);
    assert_eq!(line_at_char_position(text, 25), 2);
}

#[test]
fn line_at_char_position_edges() {
    assert_eq!(line_at_char_position("", 5), 1);
    assert_eq!(line_at_char_position("a\nb", 0), 1);
    assert_eq!(line_at_char_position("a\nb", 99), 2);
    assert_eq!(line_at_char_position("a\nb\n", 99), 2);
    assert_eq!(line_at_char_position("日\r\n本\r\n語", 4), 2);
}

#[test]
fn statement_relative_positions_map_to_script_lines() {
    let script = "select 1;\n\nselect\n  nope;";
    let statements = split(script).unwrap();
    assert_eq!(statements[1].script_line_at_char_position(1), 3);
    assert_eq!(statements[1].script_line_at_char_position(10), 4);
}

#[test]
fn line_at_offset_clamps() {
    assert_eq!(line_at_offset("a\nb", 0), 1);
    assert_eq!(line_at_offset("a\nb", 2), 2);
    assert_eq!(line_at_offset("a\nb", 100), 2);
}

// --- robustness -------------------------------------------------------------------------

/// Glues random fragments together and checks the invariants that callers rely on:
/// no panic, statements are exact slices on char boundaries ending in `;`, lines agree.
#[test]
fn random_fragments_keep_invariants() {
    const FRAGMENTS: &[&str] = &[
        "select", " ", "\n", "\r\n", ";", "'", "''", "\"", "E'", "\\", "$", "$$", "$a$", "$1",
        "--", "/*", "*/", "é", "日本", "a$b", "(", ")", "begin", "atomic", "end", "case", "create",
        "function", "U&", "x", "0.5", "-", "/", "*", "\u{feff}", "copy", " from ", "stdin", "\\.",
        "\\", "\\set ",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..5000 {
        let len = (next() % 24) as usize;
        let script: String = (0..len)
            .map(|_| FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize])
            .collect();
        let mut last_end = 0;
        for t in tokens(&script) {
            assert!(t.offset >= last_end, "{script:?}");
            assert!(script.is_char_boundary(t.offset) && script.is_char_boundary(t.end()));
            assert!(!t.text.is_empty());
            last_end = t.end();
        }
        if let Ok(statements) = split(&script) {
            for s in statements {
                assert_eq!(&script[s.offset..s.end()], s.text, "{script:?}");
                assert!(s.text.ends_with(';'), "{script:?}");
                assert_eq!(s.line, line_at_offset(&script, s.offset));
                if let Some(d) = s.copy_data {
                    assert_eq!(&script[d.offset..d.offset + d.text.len()], d.text);
                    assert!(d.offset >= s.end() && script.is_char_boundary(d.offset));
                    assert_eq!(d.line, line_at_offset(&script, d.offset));
                }
            }
        }
        let _ = leading_keywords(&script, 3);
        let _ = create_index_concurrently_name(&script);
    }
}

#[test]
fn large_script_splits_quickly() {
    let one = "create function f() returns int as $fn$ begin return 1; end $fn$ language plpgsql; -- c\nselect 'a;b', \"c;d\" /* e; */;\n";
    let script = one.repeat(20_000);
    let started = std::time::Instant::now();
    assert_eq!(split(&script).unwrap().len(), 40_000);
    // Generous bound: this is ~2.6 MB and should take a few milliseconds in release.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
