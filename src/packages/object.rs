//! One object file of a package: exactly one `CREATE` of the kind its
//! directory holds (`types/`, `functions/`, `views/`), written without a
//! schema name, plus optional `COMMENT ON` statements; and the names it
//! mentions, from which the deploy order is found.

use std::collections::BTreeSet;
use std::fmt;

use crate::patches::sql::{self, Token, TokenKind};

/// Which directory of a package a file is in, and so what it may create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    /// `types/`: `CREATE TYPE`, `CREATE DOMAIN`.
    Type,
    /// `functions/`: `CREATE FUNCTION`, `CREATE PROCEDURE`, `CREATE AGGREGATE`.
    Function,
    /// `views/`: `CREATE VIEW`, `CREATE RECURSIVE VIEW`.
    View,
}

impl ObjectKind {
    /// In deploy order: types, then functions (which may use the types), then views.
    pub const ALL: [ObjectKind; 3] = [ObjectKind::Type, ObjectKind::Function, ObjectKind::View];

    /// The package subdirectory holding objects of this kind.
    pub fn dir(self) -> &'static str {
        match self {
            ObjectKind::Type => "types",
            ObjectKind::Function => "functions",
            ObjectKind::View => "views",
        }
    }

    fn allowed(self) -> &'static str {
        match self {
            ObjectKind::Type => "CREATE TYPE or CREATE DOMAIN",
            ObjectKind::Function => "CREATE FUNCTION, CREATE PROCEDURE or CREATE AGGREGATE",
            ObjectKind::View => "CREATE VIEW",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Type => "type",
            ObjectKind::Function => "function",
            ObjectKind::View => "view",
        })
    }
}

/// Where one statement lies in an object file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: usize,
    pub len: usize,
    /// 1-based line in the file.
    pub line: usize,
}

/// A checked object file.
#[derive(Debug, Clone)]
pub struct ObjectFile {
    pub kind: ObjectKind,
    /// Path inside the package, `/`-separated: `types/address.sql`.
    pub rel_path: String,
    pub body: String,
    /// The `CREATE` first, in file order with any `COMMENT ON`.
    pub statements: Vec<Span>,
    /// The object's name as the server folds it (`Address` → `address`).
    pub name: String,
    /// Line of the `CREATE`.
    pub line: usize,
    /// Identifiers the definition mentions after the object's name (for a
    /// composite type, only its attributes' types; for a routine, its body's
    /// words too), folded as the server would.
    pub mentions: BTreeSet<String>,
}

impl ObjectFile {
    pub fn statement_texts(&self) -> impl Iterator<Item = (&str, Span)> {
        self.statements
            .iter()
            .map(|s| (&self.body[s.offset..s.offset + s.len], *s))
    }

    /// Whether this object's definition names `other` (or its array type `_other`).
    pub fn mentions(&self, other: &str) -> bool {
        other != self.name
            && (self.mentions.contains(other) || self.mentions.contains(&format!("_{other}")))
    }
}

/// Why an object file is refused, with the line it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    pub line: Option<usize>,
    pub message: String,
}

fn at(line: usize, message: String) -> ObjectError {
    ObjectError {
        line: Some(line),
        message,
    }
}

/// Checks the text of the file `rel_path` of a `kind` directory.
pub fn parse(kind: ObjectKind, rel_path: &str, body: String) -> Result<ObjectFile, ObjectError> {
    let statements = sql::split(&body).map_err(|e| ObjectError {
        line: e.line(),
        message: e.to_string(),
    })?;
    let mut create: Option<(usize, Vec<Token<'_>>)> = None;
    let mut spans = Vec::with_capacity(statements.len());
    for (index, s) in statements.iter().enumerate() {
        let toks: Vec<Token<'_>> = s.tokens().collect();
        let kw = |i: usize, k: &str| toks.get(i).is_some_and(|t| t.is_keyword(k));
        if toks
            .first()
            .is_some_and(|t| t.kind == TokenKind::Punct && t.text == "\\")
        {
            return Err(at(
                s.line,
                "psql meta-commands are not SQL: pgconvoy sends the file to the server, not through psql".into(),
            ));
        }
        if let Some(what) = transaction_control(&toks) {
            return Err(at(
                s.line,
                format!("`{what}` is transaction control: pgconvoy deploys each node's packages in one transaction of its own; remove it"),
            ));
        }
        if kw(0, "create") {
            if let Some((first, _)) = create {
                let first = &statements[first];
                return Err(at(
                    s.line,
                    format!(
                        "holds two objects, `{}` (line {}) and `{}`: one object per file",
                        head(first.text),
                        first.line,
                        head(s.text)
                    ),
                ));
            }
            create = Some((index, toks));
        } else if !(kw(0, "comment") && kw(1, "on")) {
            return Err(at(
                s.line,
                format!(
                    "`{}`: an object file holds one {} and optional COMMENT ON statements; pgconvoy sets owner and grants itself",
                    head(s.text),
                    kind.allowed()
                ),
            ));
        }
        spans.push(Span {
            offset: s.offset,
            len: s.text.len(),
            line: s.line,
        });
    }
    let Some((index, toks)) = create else {
        return Err(ObjectError {
            line: None,
            message: format!("holds no object: expected one {}", kind.allowed()),
        });
    };
    let line = statements[index].line;
    let (name_at, form) = header(kind, &toks, statements[index].text).map_err(|m| at(line, m))?;
    let name = toks[name_at]
        .ident()
        .expect("header() checked the name is an identifier");
    let rest = &toks[name_at + 1..];
    let mentions = match form {
        Form::Composite => composite_attribute_types(rest),
        Form::Routine => idents(rest, true),
        Form::Other => idents(rest, false),
    };
    // The CREATE first: COMMENT ON before it would name an object not there yet.
    let create_span = spans.remove(index);
    spans.insert(0, create_span);
    Ok(ObjectFile {
        kind,
        rel_path: rel_path.to_string(),
        body,
        statements: spans,
        name,
        line,
        mentions,
    })
}

/// What kind of definition follows the name, for finding what it mentions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `CREATE TYPE n AS (attr type, …)`: attribute names are not references.
    Composite,
    /// Functions, procedures, aggregates: string bodies are read too.
    Routine,
    Other,
}

/// Checks the words of the `CREATE` against the directory and returns the
/// index of the name token.
fn header(kind: ObjectKind, toks: &[Token<'_>], text: &str) -> Result<(usize, Form), String> {
    let kw = |i: usize, k: &str| toks.get(i).is_some_and(|t| t.is_keyword(k));
    let mut i = 1;
    if kw(i, "or") && kw(i + 1, "replace") {
        i += 2;
    }
    let misplaced = || {
        format!(
            "`{}` does not belong under {}/, which holds {}{}",
            head(text),
            kind.dir(),
            kind.allowed(),
            if kw(1, "table") || kw(1, "index") || kw(1, "sequence") {
                " (tables, indexes and sequences hold data: they belong in patches)"
            } else {
                ""
            }
        )
    };
    let form = match kind {
        ObjectKind::Type if kw(i, "type") || kw(i, "domain") => {
            i += 1;
            if kw(i - 1, "type")
                && toks.get(i + 1).is_some_and(|t| t.is_keyword("as"))
                && toks
                    .get(i + 2)
                    .is_some_and(|t| t.kind == TokenKind::Punct && t.text == "(")
            {
                Form::Composite
            } else {
                Form::Other
            }
        }
        ObjectKind::Function if kw(i, "function") || kw(i, "procedure") || kw(i, "aggregate") => {
            i += 1;
            Form::Routine
        }
        ObjectKind::View if kw(i, "temp") || kw(i, "temporary") => {
            return Err(format!(
                "`{}`: a temporary view lives in the session, not in the package's schema",
                head(text)
            ))
        }
        ObjectKind::View if kw(i, "materialized") => {
            return Err(format!(
                "`{}`: a materialized view holds data: it belongs in a patch",
                head(text)
            ))
        }
        ObjectKind::View if kw(i, "view") || (kw(i, "recursive") && kw(i + 1, "view")) => {
            i += if kw(i, "recursive") { 2 } else { 1 };
            Form::Other
        }
        _ => return Err(misplaced()),
    };
    let name = toks
        .get(i)
        .filter(|t| matches!(t.kind, TokenKind::Word | TokenKind::QuotedIdent))
        .ok_or_else(|| format!("`{}`: no object name where one was expected", head(text)))?;
    if toks
        .get(i + 1)
        .is_some_and(|t| t.kind == TokenKind::Punct && t.text == ".")
    {
        let qualified = toks
            .get(i + 2)
            .map(|t| format!("{}.{}", name.text, t.text))
            .unwrap_or_else(|| name.text.to_string());
        return Err(format!(
            "`{qualified}`: objects are written without a schema name; deploy creates them in the package's schema"
        ));
    }
    Ok((i, form))
}

/// The transaction-control command a statement is, if any.
fn transaction_control(toks: &[Token<'_>]) -> Option<String> {
    let kw = |i: usize, k: &str| toks.get(i).is_some_and(|t| t.is_keyword(k));
    let hit = kw(0, "begin")
        || kw(0, "commit")
        || kw(0, "end")
        || kw(0, "abort")
        || kw(0, "rollback")
        || kw(0, "savepoint")
        || kw(0, "release")
        || (kw(0, "start") && kw(1, "transaction"))
        || (kw(0, "prepare") && kw(1, "transaction"));
    hit.then(|| {
        toks.iter()
            .take_while(|t| t.kind == TokenKind::Word)
            .take(2)
            .map(|t| t.text.to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// The first three keywords of a statement, for messages.
fn head(text: &str) -> String {
    sql::leading_keywords(text, 3).join(" ")
}

/// Identifiers among `toks`; with `bodies`, also those inside string
/// constants (routine bodies written `AS $$ … $$` or `AS '…'`).
fn idents(toks: &[Token<'_>], bodies: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    collect(toks.iter().copied(), bodies, 0, &mut out);
    out
}

fn collect<'a>(
    toks: impl Iterator<Item = Token<'a>>,
    bodies: bool,
    depth: usize,
    out: &mut BTreeSet<String>,
) {
    for t in toks {
        match t.kind {
            TokenKind::Word | TokenKind::QuotedIdent => {
                if let Some(id) = t.ident() {
                    out.insert(id);
                }
            }
            // A body may hold another quoted body (EXECUTE $q$ … $q$); two levels are plenty.
            TokenKind::String if bodies && depth < 2 => {
                if let Some(inner) = string_content(t.text) {
                    collect(sql::tokens(&inner), bodies, depth + 1, out);
                }
            }
            _ => {}
        }
    }
}

/// The text inside a string constant: `$tag$…$tag$` or `'…'` (doubled quotes undone).
fn string_content(text: &str) -> Option<String> {
    if let Some(after) = text.strip_prefix('$') {
        let close = after.find('$')? + 2;
        let tag = &text[..close];
        return text
            .get(close..text.len().checked_sub(tag.len())?)
            .map(str::to_string);
    }
    let open = text.find('\'')?;
    let inner = text.get(open + 1..text.len().checked_sub(1)?)?;
    Some(inner.replace("''", "'"))
}

/// `AS ( a t1, b t2[] COLLATE c, … )`: the words of each attribute after its name.
fn composite_attribute_types(rest: &[Token<'_>]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // rest = AS ( … )
    let mut depth = 0usize;
    let mut first_of_attribute = false;
    for t in rest.iter().skip(1) {
        match t.kind {
            TokenKind::Punct if t.text == "(" => {
                depth += 1;
                if depth == 1 {
                    first_of_attribute = true;
                }
            }
            TokenKind::Punct if t.text == ")" => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            TokenKind::Punct if t.text == "," && depth == 1 => first_of_attribute = true,
            TokenKind::Word | TokenKind::QuotedIdent if first_of_attribute => {
                first_of_attribute = false;
            }
            TokenKind::Word | TokenKind::QuotedIdent => {
                if let Some(id) = t.ident() {
                    out.insert(id);
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(kind: ObjectKind, body: &str) -> ObjectFile {
        parse(kind, "x/y.sql", body.to_string()).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn err(kind: ObjectKind, body: &str) -> ObjectError {
        parse(kind, "x/y.sql", body.to_string()).unwrap_err()
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn composite_type_mentions_attribute_types_only() {
        let o = ok(
            ObjectKind::Type,
            "-- an invoice\nCREATE TYPE Invoice AS (\n  id bigint,\n  money amount,\n  lines line_item[],\n  note text COLLATE \"C\",\n  ts timestamp with time zone\n);\n",
        );
        assert_eq!(o.name, "invoice");
        assert_eq!(o.line, 2);
        assert_eq!(
            o.mentions,
            set(&[
                "amount",
                "bigint",
                "C",
                "line_item",
                "text",
                "collate",
                "timestamp",
                "with",
                "time",
                "zone"
            ])
        );
        assert!(
            !o.mentions.contains("money"),
            "an attribute name is no reference"
        );
        assert!(o.mentions("line_item"));
        assert!(!o.mentions("invoice"), "never itself");
    }

    #[test]
    fn domain_enum_range_mentions() {
        let d = ok(
            ObjectKind::Type,
            "CREATE DOMAIN cents AS amount CHECK (VALUE >= 0);",
        );
        assert_eq!(d.name, "cents");
        assert!(d.mentions("amount"));
        let e = ok(
            ObjectKind::Type,
            "CREATE TYPE state AS ENUM ('open', 'paid');",
        );
        assert!(!e.mentions("open"), "labels are strings");
        let r = ok(
            ObjectKind::Type,
            "CREATE TYPE span AS RANGE (subtype = cents);",
        );
        assert!(r.mentions("cents"));
        let a = ok(ObjectKind::Type, "CREATE DOMAIN many AS _cents;");
        assert!(a.mentions("cents"), "array type spelt _cents");
    }

    #[test]
    fn routine_bodies_are_read() {
        let f = ok(
            ObjectKind::Function,
            "CREATE OR REPLACE FUNCTION total(i invoice) RETURNS numeric\nLANGUAGE sql STABLE\nAS $$ SELECT line_sum(i) + tax(i) $$;\nCOMMENT ON FUNCTION total(invoice) IS 'the total';\n",
        );
        assert_eq!(f.name, "total");
        assert!(f.mentions("line_sum") && f.mentions("tax") && f.mentions("invoice"));
        assert_eq!(f.statements.len(), 2);
        let g = ok(
            ObjectKind::Function,
            "CREATE FUNCTION g() RETURNS int LANGUAGE sql AS 'SELECT helper(''x'')';",
        );
        assert!(g.mentions("helper"));
        let atomic = ok(
            ObjectKind::Function,
            "CREATE FUNCTION h() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT g(); SELECT 1; END;",
        );
        assert!(atomic.mentions("g"));
        assert_eq!(atomic.statements.len(), 1);
    }

    #[test]
    fn view_mentions() {
        let v = ok(
            ObjectKind::View,
            "CREATE VIEW open_invoices AS SELECT * FROM all_invoices WHERE state = 'open_x';",
        );
        assert!(v.mentions("all_invoices"));
        assert!(
            !v.mentions("open_x"),
            "string data in a view is no reference"
        );
        assert!(ok(ObjectKind::View, "CREATE RECURSIVE VIEW r (n) AS VALUES (1) UNION ALL SELECT n + 1 FROM r WHERE n < 3;").name == "r");
    }

    #[test]
    fn comment_before_create_is_moved_after_it() {
        let o = ok(
            ObjectKind::Type,
            "COMMENT ON TYPE t IS 'x';\nCREATE TYPE t AS (a int);\n",
        );
        let texts: Vec<&str> = o.statement_texts().map(|(t, _)| t).collect();
        assert!(texts[0].starts_with("CREATE"), "{texts:?}");
    }

    #[test]
    fn two_objects_named_with_lines() {
        let e = err(
            ObjectKind::Type,
            "CREATE TYPE a AS (x int);\n\nCREATE TYPE b AS (y int);\n",
        );
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("two objects"), "{}", e.message);
        assert!(e.message.contains("line 1"), "{}", e.message);
    }

    #[test]
    fn transaction_control_refused() {
        for (body, line) in [
            ("BEGIN;\nCREATE TYPE a AS (x int);\nCOMMIT;\n", 1),
            ("CREATE TYPE a AS (x int);\nCOMMIT;\n", 2),
            ("CREATE TYPE a AS (x int);\nSAVEPOINT s;\n", 2),
            ("START TRANSACTION;\nCREATE TYPE a AS (x int);\n", 1),
        ] {
            let e = err(ObjectKind::Type, body);
            assert_eq!(e.line, Some(line), "{body}");
            assert!(e.message.contains("transaction control"), "{}", e.message);
        }
        // Inside a body it is just text.
        ok(
            ObjectKind::Function,
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$;",
        );
    }

    #[test]
    fn other_statements_refused() {
        let e = err(
            ObjectKind::Function,
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';\nGRANT EXECUTE ON FUNCTION f() TO app;\n",
        );
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("GRANT"), "{}", e.message);
        let e = err(ObjectKind::Type, "CREATE TABLE t (a int);");
        assert!(e.message.contains("belong in patches"), "{}", e.message);
        let e = err(
            ObjectKind::View,
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
        );
        assert!(e.message.contains("views/"), "{}", e.message);
        let e = err(ObjectKind::View, "CREATE MATERIALIZED VIEW m AS SELECT 1;");
        assert!(e.message.contains("materialized"), "{}", e.message);
        let e = err(ObjectKind::Type, "\\i other.sql\nCREATE TYPE a AS (x int);");
        assert!(e.message.contains("meta-command"), "{}", e.message);
    }

    #[test]
    fn schema_names_refused() {
        let e = err(ObjectKind::Type, "CREATE TYPE billing.invoice AS (a int);");
        assert!(e.message.contains("`billing.invoice`"), "{}", e.message);
        assert!(e.message.contains("without a schema name"), "{}", e.message);
        let e = err(
            ObjectKind::View,
            "CREATE OR REPLACE VIEW public.v AS SELECT 1;",
        );
        assert!(e.message.contains("public.v"), "{}", e.message);
    }

    #[test]
    fn empty_and_unterminated() {
        let e = err(ObjectKind::Type, "-- nothing\n");
        assert!(e.message.contains("no statements"), "{}", e.message);
        let e = err(ObjectKind::Type, "CREATE TYPE a AS (x int)\n");
        assert_eq!(e.line, Some(1));
        let e = err(ObjectKind::Type, "COMMENT ON SCHEMA x IS 'y';\n");
        assert!(e.message.contains("no object"), "{}", e.message);
    }
}
