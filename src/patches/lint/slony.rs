//! Tables Slony-I could not replicate: the tables `std` patches create, and those of them
//! without a primary key (Slony-I replicates a table only by its key). Used on
//! `replication: slony` by `check`, the dry run and `upgrade`.

use super::cursor::Cursor;
use super::{LintFinding, QualName, Rule, Stmt};
use crate::patches::discover::Severity;
use crate::patches::patch::{Patch, PatchType};
use crate::patches::sql::{self, Token};

/// A table a `std` patch creates (and no later statement of the linted patches drops).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedTable {
    pub table: QualName,
    /// The patch version, `M-m-p`.
    pub patch: String,
    pub file: String,
    pub line: usize,
    /// It has a primary key (from its CREATE TABLE, `LIKE … INCLUDING ALL|INDEXES`, or a
    /// later `ALTER TABLE … ADD … PRIMARY KEY` of the linted patches).
    pub keyed: bool,
}

/// The tables the `std` patches among `patches` create, in order, unless a later statement
/// drops them. Temporary, unlogged and partition tables are left out (Slony-I leaves them
/// alone). On a Slony-I cluster these are the tables that join the replication set.
pub fn std_tables(patches: &[&Patch]) -> Vec<CreatedTable> {
    let mut created: Vec<CreatedTable> = Vec::new();
    for patch in patches {
        for (text, span) in patch.statement_texts() {
            let toks: Vec<Token<'_>> = sql::tokens(text).collect();
            let s = Stmt {
                text,
                line: span.line,
                toks,
            };
            let has_primary_key = s
                .toks
                .windows(2)
                .any(|w| w[0].is_keyword("primary") && w[1].is_keyword("key"));
            if s.kw(0, "create") {
                if patch.kind != PatchType::Std {
                    continue;
                }
                let mut c = Cursor::new(&s.toks, 1);
                let _ = c.eat(&["global"]) || c.eat(&["local"]);
                if c.eat(&["temp"]) || c.eat(&["temporary"]) || c.eat(&["unlogged"]) {
                    continue;
                }
                if !c.eat(&["table"]) {
                    continue;
                }
                c.eat(&["if", "not", "exists"]);
                let Some(table) = c.name() else { continue };
                if c.eat(&["partition", "of"]) {
                    continue;
                }
                // `LIKE other INCLUDING ALL` (or INDEXES) copies the other table's key.
                let copies_key = s.toks.windows(2).any(|w| {
                    w[0].is_keyword("including")
                        && (w[1].is_keyword("all") || w[1].is_keyword("indexes"))
                });
                created.retain(|c| !c.table.same(&table));
                created.push(CreatedTable {
                    table,
                    patch: patch.version.to_string(),
                    file: patch.file_name(),
                    line: s.line,
                    keyed: has_primary_key || copies_key,
                });
            } else if s.kw(0, "alter") && s.kw(1, "table") && has_primary_key {
                let mut c = Cursor::new(&s.toks, 2);
                c.eat(&["if", "exists"]);
                c.eat(&["only"]);
                let Some(table) = c.name() else { continue };
                for t in created.iter_mut().filter(|t| t.table.same(&table)) {
                    t.keyed = true;
                }
            } else if s.kw(0, "drop") && s.kw(1, "table") {
                let mut c = Cursor::new(&s.toks, 2);
                c.eat(&["if", "exists"]);
                while let Some(table) = c.name() {
                    created.retain(|t| !t.table.same(&table));
                    if !c.eat_punct(",") {
                        break;
                    }
                }
            }
        }
    }
    created
}

/// The [`std_tables`] without a primary key. On a Slony-I cluster such a table cannot join
/// the replication set: it would stay on the origin, and rows written to it there would
/// reach no other node. Warnings; `check --strict` makes them errors.
pub fn tables_without_primary_key(patches: &[&Patch]) -> Vec<LintFinding> {
    std_tables(patches)
        .into_iter()
        .filter(|c| !c.keyed)
        .map(|c| LintFinding {
            rule: Rule::RequirePrimaryKey,
            severity: Severity::Warning,
            patch: c.patch,
            file: c.file,
            line: c.line,
            message: format!(
                "table `{}` has no primary key: Slony-I cannot replicate it, so it stays out of the replication set and rows written to it on the origin reach no other node; give it a primary key",
                c.table
            ),
            column: None,
        })
        .collect()
}

/// `COPY … FROM stdin` statements with inline data in the `std` patches among `patches`:
/// slonik EXECUTE SCRIPT sends SQL text to the origin and replays it on the subscribers, so
/// a data stream cannot go through it. Errors: a run on a Slony cluster refuses them.
pub fn copy_from_stdin(patches: &[&Patch]) -> Vec<LintFinding> {
    patches
        .iter()
        .filter(|p| p.kind == PatchType::Std)
        .flat_map(|p| {
            p.copies.iter().map(move |c| LintFinding {
                rule: Rule::CopyThroughSlonik,
                severity: Severity::Error,
                patch: p.version.to_string(),
                file: p.file_name(),
                line: p.statements[c.statement].line,
                message: "COPY … FROM stdin cannot go through slonik EXECUTE SCRIPT (it replays SQL text, not a data stream): write the rows as INSERT … VALUES, or load them with a `direct` patch on every node".to_string(),
                column: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patches::lint::tests::patch;
    use PatchType::{Direct as D, Std as S};

    /// `table@patch:line` of every table without a primary key.
    fn unkeyed(patches: &[Patch]) -> Vec<String> {
        let refs: Vec<&Patch> = patches.iter().collect();
        tables_without_primary_key(&refs)
            .iter()
            .map(|f| {
                assert_eq!(f.rule, Rule::RequirePrimaryKey);
                let table = f.message.split('`').nth(1).unwrap_or("?").to_string();
                format!("{table}@{}:{}", f.patch, f.line)
            })
            .collect()
    }

    #[test]
    fn std_tables_without_a_primary_key() {
        let none: Vec<String> = Vec::new();
        assert_eq!(
            unkeyed(&[patch(
                0,
                S,
                "CREATE TABLE a (id int PRIMARY KEY);\nCREATE TABLE b (id int, PRIMARY KEY (id));\nCREATE TABLE IF NOT EXISTS s.c (x int);\n"
            )]),
            ["s.c@1-0-0:3"]
        );
        // A key added later, in the same or a later patch, counts; so does a drop.
        assert_eq!(
            unkeyed(&[
                patch(0, S, "CREATE TABLE d (id int);\nCREATE TABLE e (id int);\nCREATE TABLE f AS SELECT 1 AS x;\n"),
                patch(1, S, "ALTER TABLE ONLY d ADD CONSTRAINT d_pk PRIMARY KEY (id);\nDROP TABLE IF EXISTS e;\n"),
            ]),
            ["f@1-0-0:3"]
        );
        // Only std patches feed the set; temporary, unlogged and partition tables are not replicated.
        assert_eq!(
            unkeyed(&[patch(0, D, "CREATE TABLE local_only (x int);\n")]),
            none
        );
        assert_eq!(
            unkeyed(&[patch(
                0,
                S,
                "CREATE TEMP TABLE t (x int);\nCREATE UNLOGGED TABLE u (x int);\nCREATE TABLE p1 PARTITION OF p FOR VALUES IN (1);\nCREATE TABLE l (LIKE a INCLUDING ALL);\n"
            )]),
            none
        );
    }
}
