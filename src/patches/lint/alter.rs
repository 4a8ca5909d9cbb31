//! Lint of `ALTER TABLE` actions: columns added with a volatile default, dropped,
//! retyped or set NOT NULL, and the `CHECK (col IS NOT NULL)` constraints that make
//! `SET NOT NULL` cheap.

use super::cursor::{top_level_actions, Cursor};
use super::{ColumnRef, Linter, QualName, Rule, Stmt, SERIAL_TYPES, VOLATILE_FUNCTIONS};
use crate::patches::patch::Patch;
use crate::patches::sql::TokenKind;

impl Linter {
    pub(super) fn alter_table(&mut self, patch: &Patch, s: &Stmt<'_>) {
        let mut c = Cursor::new(&s.toks, 2);
        c.eat(&["if", "exists"]);
        c.eat(&["only"]);
        let Some(table) = c.name() else { return };
        let new = self.is_new(&table);
        // The schema model follows renames: a new table stays new under its new name, an
        // existing one stays existing.
        if new {
            let mut r = c.clone();
            if r.eat(&["rename", "to"]) {
                if let Some(to) = r.ident() {
                    self.rename(&table, |t| t.name = to);
                }
                return;
            }
            if r.eat(&["set", "schema"]) {
                if let Some(to) = r.ident() {
                    self.rename(&table, |t| t.schema = Some(to));
                }
                return;
            }
        }
        for (start, end) in top_level_actions(&s.toks, c.pos) {
            let a = Cursor::new(&s.toks[..end], start);
            self.alter_action(patch, s, &table, new, a);
        }
    }

    /// One action of `ALTER TABLE table …`.
    fn alter_action(
        &mut self,
        patch: &Patch,
        s: &Stmt<'_>,
        table: &QualName,
        new: bool,
        mut a: Cursor<'_, '_>,
    ) {
        let line = s.line_of(a.pos);
        if a.eat(&["add"]) {
            self.add(patch, line, table, new, a);
        } else if a.eat(&["drop"]) {
            self.drop_column(patch, line, table, new, a);
        } else if a.eat(&["alter"]) {
            self.alter_column(patch, line, table, new, a);
        } else if a.eat(&["validate", "constraint"]) {
            self.validate_constraint(table, a);
        }
    }

    /// `ADD [CONSTRAINT name] CHECK …` (remembered) or `ADD [COLUMN] col … DEFAULT …`.
    fn add(
        &mut self,
        patch: &Patch,
        line: usize,
        table: &QualName,
        new: bool,
        mut a: Cursor<'_, '_>,
    ) {
        let mut look = a.clone();
        let named = if look.eat(&["constraint"]) {
            look.ident()
        } else {
            None
        };
        if named.is_some() || look.peek_kw("check") {
            self.remember_not_null_check(table, named, &look);
            return;
        }
        if ["unique", "primary", "foreign", "exclude"]
            .iter()
            .any(|k| a.peek_kw(k))
        {
            return;
        }
        a.eat(&["column"]);
        a.eat(&["if", "not", "exists"]);
        let Some(column) = a.ident() else { return };
        if new {
            return;
        }
        if let Some(why) = volatile_default(&a) {
            self.push(
                patch,
                Rule::AddingFieldWithDefault,
                line,
                format!(
                    "ADD COLUMN `{column}` with {why} rewrites all of `{table}` under an ACCESS EXCLUSIVE lock (reads and writes wait); add the column without it (or with a constant default), then backfill in batches"
                ),
            );
        }
    }

    /// A `CHECK (col IS NOT NULL)` constraint: validated now, or once `VALIDATE
    /// CONSTRAINT name` runs when it was added `NOT VALID`.
    fn remember_not_null_check(
        &mut self,
        table: &QualName,
        named: Option<String>,
        look: &Cursor<'_, '_>,
    ) {
        let Some(column) = not_null_check(look) else {
            return;
        };
        let col = ColumnRef {
            table: table.clone(),
            column,
        };
        if look.rest_has("valid") {
            if let Some(name) = named {
                self.unvalidated.push((name, col));
            }
        } else {
            self.checked_not_null.push(col);
        }
    }

    /// `DROP [COLUMN] [IF EXISTS] col` on an existing table.
    fn drop_column(
        &mut self,
        patch: &Patch,
        line: usize,
        table: &QualName,
        new: bool,
        mut a: Cursor<'_, '_>,
    ) {
        if a.peek_kw("constraint") || new {
            return;
        }
        a.eat(&["column"]);
        a.eat(&["if", "exists"]);
        let Some(column) = a.ident() else { return };
        self.push(
            patch,
            Rule::BanDropColumn,
            line,
            format!(
                "DROP COLUMN `{table}.{column}` destroys that column's data and cannot be undone; make sure no deployed code still reads or writes it (ship the code change first)"
            ),
        );
    }

    /// `ALTER [COLUMN] col TYPE …` or `… SET NOT NULL` on an existing table.
    fn alter_column(
        &mut self,
        patch: &Patch,
        line: usize,
        table: &QualName,
        new: bool,
        mut a: Cursor<'_, '_>,
    ) {
        if a.peek_kw("constraint") {
            return;
        }
        a.eat(&["column"]);
        let Some(column) = a.ident() else { return };
        if new {
            return;
        }
        if a.eat(&["type"]) || a.eat(&["set", "data", "type"]) {
            self.push(
                patch,
                Rule::ChangingColumnType,
                line,
                format!(
                    "ALTER COLUMN `{column}` TYPE rewrites `{table}` and rebuilds its indexes under an ACCESS EXCLUSIVE lock (reads and writes wait), unless the new type is binary-compatible (e.g. varchar(n) to text)"
                ),
            );
        } else if a.eat(&["set", "not", "null"]) {
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

    /// `VALIDATE CONSTRAINT name`: a pending `CHECK (col IS NOT NULL)` now counts.
    fn validate_constraint(&mut self, table: &QualName, mut a: Cursor<'_, '_>) {
        let Some(name) = a.ident() else { return };
        if let Some(i) = self
            .unvalidated
            .iter()
            .position(|(n, c)| *n == name && c.table.same(table))
        {
            let (_, col) = self.unvalidated.remove(i);
            self.checked_not_null.push(col);
        }
    }
}

/// `CHECK ( [(] col IS NOT NULL [)] )` right at the cursor: the column.
pub(super) fn not_null_check(c: &Cursor<'_, '_>) -> Option<String> {
    let mut c = c.clone();
    if !c.eat(&["check"]) || !c.eat_punct("(") {
        return None;
    }
    let extra = c.eat_punct("(");
    let column = c.ident()?;
    if !c.eat(&["is", "not", "null"]) {
        return None;
    }
    if extra && !c.eat_punct(")") {
        return None;
    }
    c.eat_punct(")").then_some(column)
}

/// Why the column definition at the cursor (after the column name) forces a rewrite.
pub(super) fn volatile_default(c: &Cursor<'_, '_>) -> Option<String> {
    let rest = c.rest();
    if let Some(t) = rest.first() {
        if let Some(ty) = SERIAL_TYPES.iter().find(|ty| t.is_keyword(ty)) {
            return Some(format!("type `{ty}` (a `nextval()` default)"));
        }
    }
    let mut depth = 0usize;
    for (i, t) in rest.iter().enumerate() {
        match t.kind {
            TokenKind::Punct if t.text == "(" => depth += 1,
            TokenKind::Punct if t.text == ")" => depth = depth.saturating_sub(1),
            _ if depth == 0 && t.is_keyword("identity") && i > 0 => {
                return Some("an identity (a `nextval()` default)".into())
            }
            _ if depth == 0 && t.is_keyword("default") => {
                return rest[i + 1..].windows(2).find_map(|w| {
                    let called = w[1].kind == TokenKind::Punct && w[1].text == "(";
                    let name = w[0].ident()?;
                    (called && VOLATILE_FUNCTIONS.contains(&name.as_str()))
                        .then(|| format!("the volatile default `{name}()`"))
                });
            }
            _ => {}
        }
    }
    None
}
