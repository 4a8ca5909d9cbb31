//! The relations a patch statement creates (`CREATE TABLE`, `CREATE INDEX`, views,
//! sequences, materialized views), by name: how the dry run tells a database that already
//! holds a patch's schema (and suggests `stamp`) from one that does not.

use super::patch::Patch;
use super::sql::{tokens, Tokens};

/// The name of the relation `statement` creates, as the server would resolve it (bare
/// words folded to lower case, quoted names unquoted, a schema kept as `schema.name`);
/// `None` for any other statement, and for `CREATE … IF NOT EXISTS` (it tolerates an
/// existing relation) and temporary tables (they live in the session only).
pub fn created_relation(statement: &str) -> Option<String> {
    let mut toks = tokens(statement);
    let next_is = |toks: &mut Tokens<'_>, keyword: &str| {
        let mut look = toks.clone();
        if look.next().is_some_and(|t| t.is_keyword(keyword)) {
            *toks = look;
            true
        } else {
            false
        }
    };
    if !next_is(&mut toks, "create") {
        return None;
    }
    if next_is(&mut toks, "or") && !next_is(&mut toks, "replace") {
        return None;
    }
    for modifier in ["temporary", "temp"] {
        if next_is(&mut toks, modifier) {
            return None;
        }
    }
    for modifier in [
        "global",
        "local",
        "unlogged",
        "unique",
        "materialized",
        "recursive",
    ] {
        next_is(&mut toks, modifier);
    }
    let kind = toks.next()?;
    if !["table", "index", "view", "sequence"]
        .iter()
        .any(|k| kind.is_keyword(k))
    {
        return None;
    }
    next_is(&mut toks, "concurrently");
    if next_is(&mut toks, "if") {
        return None;
    }
    let first = toks.next()?;
    if first.is_keyword("on") {
        // An index without a name.
        return None;
    }
    toks.qualified_name(&first)
}

/// Every relation `patch` creates, in statement order.
pub fn created_relations(patch: &Patch) -> Vec<String> {
    patch
        .statement_texts()
        .filter_map(|(text, _)| created_relation(text))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_created_relations() {
        let table = [
            ("CREATE TABLE base_t (id int);", Some("base_t")),
            ("create unlogged table S.\"Odd\" (id int);", Some("s.Odd")),
            (
                "CREATE UNIQUE INDEX CONCURRENTLY t_id ON t (id);",
                Some("t_id"),
            ),
            ("CREATE INDEX ON t (id);", None),
            ("CREATE OR REPLACE VIEW v AS SELECT 1;", Some("v")),
            ("CREATE MATERIALIZED VIEW mv AS SELECT 1;", Some("mv")),
            ("CREATE SEQUENCE seq;", Some("seq")),
            ("CREATE TABLE IF NOT EXISTS t (id int);", None),
            ("CREATE TEMP TABLE t (id int);", None),
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
                None,
            ),
            ("ALTER TABLE t ADD COLUMN c int;", None),
            ("CREATE OR ALTER TABLE t;", None),
        ];
        for (sql, want) in table {
            assert_eq!(created_relation(sql).as_deref(), want, "{sql}");
        }
    }
}
