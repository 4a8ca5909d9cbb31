//! Lint of `ALTER TABLE` actions: columns added with a volatile default, dropped,
//! retyped or set NOT NULL, and the `CHECK (col IS NOT NULL)` constraints that make
//! `SET NOT NULL` cheap.

use pg_query::protobuf::{AlterTableCmd, AlterTableStmt, ColumnDef, ConstrType, NullTestType};
use pg_query::{NodeEnum, NodeRef};

use super::tree::{last_name, qual_name, string, Parsed};
use super::{ColumnRef, Linter, QualName, Rule, SERIAL_TYPES, VOLATILE_FUNCTIONS};
use crate::patches::patch::Patch;
use pg_query::protobuf::AlterTableType as At;

impl Linter {
    pub(super) fn alter_table(&mut self, patch: &Patch, s: &Parsed<'_>, a: &AlterTableStmt) {
        let Some(relation) = &a.relation else { return };
        let table = qual_name(relation);
        let new = self.is_new(&table);
        let lines = s.action_lines(relation, a.cmds.len());
        for (cmd, line) in a.cmds.iter().zip(lines) {
            if let Some(NodeEnum::AlterTableCmd(cmd)) = &cmd.node {
                self.alter_action(patch, line, &table, new, cmd);
            }
        }
    }

    /// One action of `ALTER TABLE table …`.
    fn alter_action(
        &mut self,
        patch: &Patch,
        line: usize,
        table: &QualName,
        new: bool,
        cmd: &AlterTableCmd,
    ) {
        let def = cmd.def.as_deref().and_then(|d| d.node.as_ref());
        let subtype = cmd.subtype;
        if subtype == At::AtAddConstraint as i32 {
            if let Some(NodeEnum::Constraint(c)) = def {
                self.remember_not_null_check(table, c);
            }
        } else if subtype == At::AtValidateConstraint as i32 {
            self.validate_constraint(table, &cmd.name);
        } else if new {
            // A table the pending patches create is empty: nothing to rewrite or lose.
        } else if subtype == At::AtAddColumn as i32 {
            let Some(NodeEnum::ColumnDef(col)) = def else {
                return;
            };
            if let Some(why) = volatile_default(col) {
                self.push(
                    patch,
                    Rule::AddingFieldWithDefault,
                    line,
                    format!(
                        "ADD COLUMN `{}` with {why} rewrites all of `{table}` under an ACCESS EXCLUSIVE lock (reads and writes wait); add the column without it (or with a constant default), then backfill in batches",
                        col.colname
                    ),
                );
            }
        } else if subtype == At::AtDropColumn as i32 {
            self.push(
                patch,
                Rule::BanDropColumn,
                line,
                format!(
                    "DROP COLUMN `{table}.{}` destroys that column's data and cannot be undone; make sure no deployed code still reads or writes it (ship the code change first)",
                    cmd.name
                ),
            );
        } else if subtype == At::AtAlterColumnType as i32 {
            self.push(
                patch,
                Rule::ChangingColumnType,
                line,
                format!(
                    "ALTER COLUMN `{}` TYPE rewrites `{table}` and rebuilds its indexes under an ACCESS EXCLUSIVE lock (reads and writes wait), unless the new type is binary-compatible (e.g. varchar(n) to text)",
                    cmd.name
                ),
            );
        } else if subtype == At::AtSetNotNull as i32 {
            let column = &cmd.name;
            let col = ColumnRef {
                table: table.clone(),
                column: column.clone(),
            };
            if self.checked_not_null.contains(&col) {
                return;
            }
            self.push(
                patch,
                Rule::AddingNotNullableField,
                line,
                format!(
                    "SET NOT NULL on `{table}.{column}` scans all of `{table}` under an ACCESS EXCLUSIVE lock; first add CHECK ({column} IS NOT NULL) NOT VALID and VALIDATE CONSTRAINT it (PostgreSQL 12+ then skips the scan)"
                ),
            );
            if let Some(f) = self.findings.last_mut() {
                f.column = Some(col);
            }
        }
    }

    /// A `CHECK (col IS NOT NULL)` constraint: validated now, or once `VALIDATE
    /// CONSTRAINT name` runs when it was added `NOT VALID`.
    fn remember_not_null_check(&mut self, table: &QualName, c: &pg_query::protobuf::Constraint) {
        let Some(column) = not_null_check(c) else {
            return;
        };
        let col = ColumnRef {
            table: table.clone(),
            column,
        };
        if !c.skip_validation {
            self.checked_not_null.push(col);
        } else if !c.conname.is_empty() {
            self.unvalidated.push((c.conname.clone(), col));
        }
    }

    /// `VALIDATE CONSTRAINT name`: a pending `CHECK (col IS NOT NULL)` now counts.
    fn validate_constraint(&mut self, table: &QualName, name: &str) {
        if let Some(i) = self
            .unvalidated
            .iter()
            .position(|(n, c)| n == name && c.table.same(table))
        {
            let (_, col) = self.unvalidated.remove(i);
            self.checked_not_null.push(col);
        }
    }
}

/// The column of a `CHECK (col IS NOT NULL)` constraint.
fn not_null_check(c: &pg_query::protobuf::Constraint) -> Option<String> {
    if c.contype != ConstrType::ConstrCheck as i32 {
        return None;
    }
    let Some(NodeEnum::NullTest(test)) = c.raw_expr.as_deref().and_then(|e| e.node.as_ref()) else {
        return None;
    };
    if test.nulltesttype != NullTestType::IsNotNull as i32 {
        return None;
    }
    match test.arg.as_deref().and_then(|a| a.node.as_ref()) {
        Some(NodeEnum::ColumnRef(r)) if r.fields.len() == 1 => string(&r.fields[0]),
        _ => None,
    }
}

/// Why adding the column `col` forces a rewrite of the table.
fn volatile_default(col: &ColumnDef) -> Option<String> {
    if let Some(ty) = col.type_name.as_ref().filter(|t| t.names.len() == 1) {
        if let Some(ty) = last_name(&ty.names).filter(|n| SERIAL_TYPES.contains(&n.as_str())) {
            return Some(format!("type `{ty}` (a `nextval()` default)"));
        }
    }
    for c in &col.constraints {
        let Some(NodeEnum::Constraint(c)) = &c.node else {
            continue;
        };
        let expr = c.raw_expr.as_deref().and_then(|e| e.node.as_ref());
        if c.contype == ConstrType::ConstrIdentity as i32 {
            return Some("an identity (a `nextval()` default)".into());
        }
        if c.contype == ConstrType::ConstrGenerated as i32 {
            return Some("a stored generated value (computed for every row)".into());
        }
        if c.contype != ConstrType::ConstrDefault as i32 {
            continue;
        }
        let Some(expr) = expr else { continue };
        let volatile = expr.nodes().into_iter().find_map(|(n, ..)| match n {
            NodeRef::FuncCall(f) => {
                last_name(&f.funcname).filter(|name| VOLATILE_FUNCTIONS.contains(&name.as_str()))
            }
            _ => None,
        });
        if let Some(name) = volatile {
            return Some(format!("the volatile default `{name}()`"));
        }
    }
    None
}
