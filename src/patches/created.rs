//! The relations a patch statement creates (`CREATE TABLE`, `CREATE INDEX`, views,
//! sequences, materialized views), by name: how the dry run tells a database that already
//! holds a patch's schema (and suggests `stamp`) from one that does not.

use pg_query::protobuf::RangeVar;
use pg_query::NodeEnum;

use super::patch::Patch;

/// The name of the relation `statement` creates, as the server would resolve it (bare
/// words folded to lower case, quoted names unquoted, a schema kept as `schema.name`);
/// `None` for any other statement, for `CREATE … IF NOT EXISTS` (it tolerates an existing
/// relation), temporary relations (they live in the session only), and a statement
/// PostgreSQL's grammar (libpg_query) rejects.
pub fn created_relation(statement: &str) -> Option<String> {
    let parsed = pg_query::parse(statement).ok()?;
    let node = parsed
        .protobuf
        .stmts
        .first()?
        .stmt
        .as_ref()?
        .node
        .as_ref()?;
    let name = |r: &RangeVar| {
        (r.relpersistence != "t").then(|| match r.schemaname.as_str() {
            "" => r.relname.clone(),
            schema => format!("{schema}.{}", r.relname),
        })
    };
    match node {
        NodeEnum::CreateStmt(c) if !c.if_not_exists => name(c.relation.as_ref()?),
        NodeEnum::CreateTableAsStmt(c) if !c.if_not_exists => name(c.into.as_ref()?.rel.as_ref()?),
        NodeEnum::ViewStmt(v) => name(v.view.as_ref()?),
        NodeEnum::CreateSeqStmt(c) if !c.if_not_exists => name(c.sequence.as_ref()?),
        // An index lives in its table's schema; the name is what the grammar allows.
        NodeEnum::IndexStmt(i) if !i.if_not_exists && !i.idxname.is_empty() => {
            Some(i.idxname.clone())
        }
        _ => None,
    }
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
            // What a lexer finds hard: the grammar reads these right.
            ("CREATE TABLE t2 AS SELECT '(' AS x;", Some("t2")),
            ("CREATE TEMPORARY VIEW tv AS SELECT 1;", None),
            ("CREATE RECURSIVE VIEW r (n) AS SELECT 1;", Some("r")),
            (
                "CREATE TABLE \"Quoted \"\"x\"\"\" (body text DEFAULT $$ ); $$);",
                Some("Quoted \"x\""),
            ),
            ("SELECT 1 INTO t3;", None),
        ];
        for (sql, want) in table {
            assert_eq!(created_relation(sql).as_deref(), want, "{sql}");
        }
    }
}
