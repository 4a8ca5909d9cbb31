//! Tables Slony-I could not replicate: the tables `std` patches create, and those of them
//! without a primary key (Slony-I replicates a table only by its key). Used on
//! `replication: slony` by `check`, the dry run and `upgrade`.

use pg_query::protobuf::{AlterTableType, ConstrType, CreateStmt, ObjectType};
use pg_query::NodeEnum;

use super::tree::{self, object_name, qual_name};
use super::{LintFinding, QualName, Rule};
use crate::patches::discover::Severity;
use crate::patches::patch::{Patch, PatchType};

/// `CREATE_TABLE_LIKE_INDEXES` in `TableLikeClause.options` (PostgreSQL's parsenodes.h;
/// `INCLUDING ALL` sets every bit).
const LIKE_INDEXES: u32 = 1 << 6;

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
        for s in tree::parse(patch).0 {
            // A table this statement creates, and whether it has a primary key.
            let new_table = match &s.node {
                NodeEnum::CreateStmt(c)
                    if patch.kind == PatchType::Std && c.partbound.is_none() =>
                {
                    c.relation.as_ref().map(|r| (r, has_primary_key(c)))
                }
                NodeEnum::CreateTableAsStmt(c)
                    if patch.kind == PatchType::Std
                        && c.objtype == ObjectType::ObjectTable as i32 =>
                {
                    c.into
                        .as_ref()
                        .and_then(|i| i.rel.as_ref())
                        .map(|r| (r, false))
                }
                NodeEnum::AlterTableStmt(a) if adds_primary_key(&a.cmds) => {
                    if let Some(table) = a.relation.as_ref().map(qual_name) {
                        for t in created.iter_mut().filter(|t| t.table.same(&table)) {
                            t.keyed = true;
                        }
                    }
                    None
                }
                NodeEnum::DropStmt(d) if d.remove_type == ObjectType::ObjectTable as i32 => {
                    for table in d.objects.iter().filter_map(object_name) {
                        created.retain(|t| !t.table.same(&table));
                    }
                    None
                }
                _ => None,
            };
            let Some((r, keyed)) = new_table else {
                continue;
            };
            if matches!(r.relpersistence.as_str(), "t" | "u") {
                continue;
            }
            let table = qual_name(r);
            created.retain(|c| !c.table.same(&table));
            created.push(CreatedTable {
                table,
                patch: patch.version.to_string(),
                file: patch.file_name(),
                line: s.line,
                keyed,
            });
        }
    }
    created
}

/// Whether `node` is a primary-key constraint, or a column definition carrying one.
fn is_primary_key(node: &pg_query::protobuf::Node) -> bool {
    let primary = |n: &pg_query::protobuf::Node| matches!(&n.node, Some(NodeEnum::Constraint(c)) if c.contype == ConstrType::ConstrPrimary as i32);
    match &node.node {
        Some(NodeEnum::ColumnDef(col)) => col.constraints.iter().any(primary),
        Some(NodeEnum::IndexStmt(i)) => i.primary,
        _ => primary(node),
    }
}

/// A `CREATE TABLE` with a primary key of its own or one copied by `LIKE … INCLUDING
/// ALL|INDEXES`.
fn has_primary_key(c: &CreateStmt) -> bool {
    c.constraints.iter().any(is_primary_key)
        || c.table_elts.iter().any(|e| match &e.node {
            Some(NodeEnum::TableLikeClause(like)) => like.options & LIKE_INDEXES != 0,
            _ => is_primary_key(e),
        })
}

/// `ALTER TABLE … ADD [COLUMN …] PRIMARY KEY …` among `cmds`.
fn adds_primary_key(cmds: &[pg_query::protobuf::Node]) -> bool {
    cmds.iter().any(|c| match &c.node {
        Some(NodeEnum::AlterTableCmd(cmd)) => {
            let adds = [
                AlterTableType::AtAddColumn,
                AlterTableType::AtAddConstraint,
                AlterTableType::AtAddIndex,
                AlterTableType::AtAddIndexConstraint,
            ]
            .iter()
            .any(|t| cmd.subtype == *t as i32);
            adds && cmd.def.as_deref().is_some_and(is_primary_key)
        }
        _ => false,
    })
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
        // Read off the tree: a key on a column, a key from an index, a LIKE without indexes,
        // and words in a string or a comment that are no key.
        assert_eq!(
            unkeyed(&[
                patch(
                    0,
                    S,
                    "CREATE TABLE g (x int);\nCREATE TABLE h (x int);\nCREATE TABLE i (x int);\n\
                     CREATE TABLE j (LIKE a INCLUDING ALL EXCLUDING INDEXES);\n\
                     CREATE TABLE k (note text DEFAULT 'primary key' /* primary key */);\n"
                ),
                patch(
                    1,
                    S,
                    "ALTER TABLE g ADD COLUMN id bigserial PRIMARY KEY;\n\
                     ALTER TABLE h ADD PRIMARY KEY USING INDEX h_x;\n\
                     ALTER TABLE i ADD CONSTRAINT i_u UNIQUE (x);\n"
                ),
            ]),
            ["i@1-0-0:3", "j@1-0-0:4", "k@1-0-0:5"]
        );
    }
}
