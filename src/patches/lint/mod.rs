//! Lint of pending patches: statements that lock or rewrite existing tables, drop data, or
//! can never work where their patch type runs them. Pure: it reads the parse trees of
//! PostgreSQL's own grammar ([`tree`], libpg_query), so dollar quoting, nested parentheses,
//! `DO` blocks, function bodies and `CREATE RULE` actions are never misread; each finding
//! names the patch file and the line. A statement the grammar rejects is one
//! `syntax-error` finding for its patch, not a failure of the lint.
//!
//! Lint follows a model of the schema through the pending patches: tables created by an
//! earlier statement of the linted patches are new (and empty, so locking or rewriting them
//! costs nothing) under whatever name a later `RENAME TO` or `SET SCHEMA` gives them, until
//! a `DROP TABLE`; "existing table" means one that existed before the run. Rule names are
//! squawk's where the rule is the same (`require-concurrent-index-creation`,
//! `adding-field-with-default`, `changing-column-type`, `adding-not-nullable-field`,
//! `ban-drop-table`, `ban-drop-column`, `transaction-nesting`, `syntax-error`).

use std::fmt;

use crate::patches::discover::Severity;
use crate::patches::patch::{Patch, PatchType};
use crate::patches::sql;
use pg_query::protobuf::{AlterTableType, ObjectType};
use pg_query::NodeEnum;
use tree::{object_name, qual_name, Parsed};

mod alter;
pub mod slony;
#[cfg(test)]
mod tests;
mod tree;

/// One lint rule; the JSON report names it in kebab-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// `CREATE INDEX` without `CONCURRENTLY` on an existing table in a `std`/`direct` patch.
    RequireConcurrentIndexCreation,
    /// A `CONCURRENTLY` statement in a `std`/`direct` patch: it cannot run in a transaction.
    ConcurrentlyInTransaction,
    /// A statement other than a concurrent build, validation or maintenance command in a
    /// `concurrent` patch, which runs it outside any transaction.
    NotConcurrentSafe,
    /// `ADD COLUMN` with a volatile default (also `serial`, identity): a table rewrite.
    AddingFieldWithDefault,
    /// `ALTER COLUMN ... TYPE`: a table rewrite unless the types are binary-compatible.
    ChangingColumnType,
    /// `SET NOT NULL` without a validated `CHECK (col IS NOT NULL)`: a full-table scan.
    AddingNotNullableField,
    /// `DROP TABLE` of an existing table.
    BanDropTable,
    /// `ALTER TABLE ... DROP COLUMN` on an existing table.
    BanDropColumn,
    /// `BEGIN`/`COMMIT`/`ROLLBACK`… in a `std`/`direct` patch: it would end pgconvoy's transaction.
    TransactionNesting,
    /// A `std` patch creates a table without a primary key: on a Slony-I cluster it cannot
    /// join the replication set (see [`slony::tables_without_primary_key`]).
    RequirePrimaryKey,
    /// `COPY … FROM stdin` with inline data in a `std` patch on a Slony-I cluster: slonik
    /// EXECUTE SCRIPT replays SQL text, not a data stream (see [`slony::copy_from_stdin`]).
    CopyThroughSlonik,
    /// A statement PostgreSQL's grammar rejects: the patch would fail, and lint could not
    /// read it (nor what it creates, renames or drops).
    SyntaxError,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::RequireConcurrentIndexCreation => "require-concurrent-index-creation",
            Rule::ConcurrentlyInTransaction => "concurrently-in-transaction",
            Rule::NotConcurrentSafe => "not-concurrent-safe",
            Rule::AddingFieldWithDefault => "adding-field-with-default",
            Rule::ChangingColumnType => "changing-column-type",
            Rule::AddingNotNullableField => "adding-not-nullable-field",
            Rule::BanDropTable => "ban-drop-table",
            Rule::BanDropColumn => "ban-drop-column",
            Rule::TransactionNesting => "transaction-nesting",
            Rule::RequirePrimaryKey => "require-primary-key",
            Rule::CopyThroughSlonik => "copy-through-slonik",
            Rule::SyntaxError => "syntax-error",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One lint finding.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LintFinding {
    pub rule: Rule,
    pub severity: Severity,
    /// The patch version, `M-m-p`.
    pub patch: String,
    pub file: String,
    /// 1-based line in the patch file.
    pub line: usize,
    pub message: String,
    /// For `adding-not-nullable-field`: the column, so the caller can drop the finding when the
    /// database already has a validated check constraint for it.
    #[serde(skip)]
    pub column: Option<ColumnRef>,
}

impl fmt::Display for LintFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} line {}: [{}] {}",
            self.file, self.line, self.rule, self.message
        )
    }
}

/// A possibly schema-qualified name, folded the way the server folds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualName {
    pub schema: Option<String>,
    pub name: String,
}

impl QualName {
    /// Whether both name the same relation, an unqualified name matching any schema.
    fn same(&self, other: &QualName) -> bool {
        self.name == other.name
            && match (&self.schema, &other.schema) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// The name as SQL text, each part quoted (for `to_regclass`).
    pub fn quoted(&self) -> String {
        let q = crate::db::quote::quote_ident;
        match &self.schema {
            Some(s) => format!("{}.{}", q(s), q(&self.name)),
            None => q(&self.name),
        }
    }
}

impl fmt::Display for QualName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRef {
    pub table: QualName,
    pub column: String,
}

/// Functions whose result differs per row, so a default using them cannot be stored once in
/// the catalog (PostgreSQL 11+'s fast default) and `ADD COLUMN` rewrites the table.
const VOLATILE_FUNCTIONS: &[&str] = &[
    "random",
    "random_normal",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "nextval",
    "txid_current",
    "pg_current_xact_id",
];

const SERIAL_TYPES: &[&str] = &[
    "serial",
    "bigserial",
    "smallserial",
    "serial2",
    "serial4",
    "serial8",
];

/// Lints `patches` in order (the order they would be applied in).
pub fn lint(patches: &[&Patch]) -> Vec<LintFinding> {
    let mut linter = Linter::default();
    for patch in patches {
        let from = linter.findings.len();
        // Transaction control is read off the run's own statement texts by the one check
        // discovery and the rehearsal use too ([`sql::transaction_control`]).
        if patch.kind != PatchType::Concurrent {
            for (text, span) in patch.statement_texts() {
                if let Some(what) = sql::transaction_control(text) {
                    linter.push(
                        patch,
                        Rule::TransactionNesting,
                        span.line,
                        format!(
                            "`{what}` would end the transaction pgconvoy runs this `{}` patch in (on the master, the claim); pgconvoy manages transactions itself: remove it",
                            patch.kind
                        ),
                    );
                }
            }
        }
        let (statements, error) = tree::parse(patch);
        if let Some(e) = error {
            linter.push(
                patch,
                Rule::SyntaxError,
                e.line,
                format!(
                    "PostgreSQL's parser rejects this statement ({}): the patch would fail, and lint cannot see what it does",
                    e.message
                ),
            );
        }
        for s in &statements {
            linter.statement(patch, s);
        }
        // In line order within the patch, as a reader goes through it.
        linter.findings[from..].sort_by_key(|f| f.line);
    }
    linter.findings
}

/// The first statement of `patch` that would end the transaction it runs in (`COMMIT`,
/// `ROLLBACK`, …): its line and its leading keywords. A rehearsal must never run such a patch.
pub fn ends_transaction(patch: &Patch) -> Option<(usize, String)> {
    patch.statement_texts().find_map(|(text, span)| {
        sql::transaction_control(text).map(|what| (span.line, what.to_string()))
    })
}

#[derive(Default)]
struct Linter {
    findings: Vec<LintFinding>,
    /// Tables created by the patches linted so far.
    created: Vec<QualName>,
    /// Columns with a validated `CHECK (col IS NOT NULL)` added by the patches so far.
    checked_not_null: Vec<ColumnRef>,
    /// `CHECK (col IS NOT NULL) NOT VALID` constraints by name, awaiting `VALIDATE CONSTRAINT`.
    unvalidated: Vec<(String, ColumnRef)>,
}

impl Linter {
    fn is_new(&self, table: &QualName) -> bool {
        self.created.iter().any(|c| c.same(table))
    }

    /// A new table renamed or moved by a later pending patch.
    fn rename(&mut self, table: &QualName, change: impl FnOnce(&mut QualName)) {
        if let Some(t) = self.created.iter_mut().find(|c| c.same(table)) {
            change(t);
        }
    }

    fn push(&mut self, patch: &Patch, rule: Rule, line: usize, message: String) {
        let severity = match rule {
            Rule::ConcurrentlyInTransaction | Rule::TransactionNesting => Severity::Error,
            _ => Severity::Warning,
        };
        self.findings.push(LintFinding {
            rule,
            severity,
            patch: patch.version.to_string(),
            file: patch.file_name(),
            line,
            message,
            column: None,
        });
    }

    fn statement(&mut self, patch: &Patch, s: &Parsed<'_>) {
        let in_transaction = patch.kind != PatchType::Concurrent;
        if in_transaction {
            if let Some(what) = concurrently(&s.node) {
                self.push(
                    patch,
                    Rule::ConcurrentlyInTransaction,
                    s.line,
                    format!(
                        "{what} cannot run inside a transaction block, and a `{}` patch runs in one, so it can never work: move it to a `concurrent` patch",
                        patch.kind
                    ),
                );
            }
        } else if !concurrent_safe(&s.node) {
            let what = sql::leading_keywords(s.text, 3).join(" ");
            let what = if what.is_empty() {
                "this statement".to_string()
            } else {
                format!("`{what}`")
            };
            self.push(
                patch,
                Rule::NotConcurrentSafe,
                s.line,
                format!(
                    "{what} in a `concurrent` patch runs outside any transaction, one statement at a time: if a later statement fails it stays applied and a re-run repeats it; put it in a `std` or `direct` patch"
                ),
            );
        }

        match &s.node {
            NodeEnum::CreateStmt(c) => {
                if let Some(r) = &c.relation {
                    self.created.push(qual_name(r));
                }
            }
            NodeEnum::CreateTableAsStmt(c) => {
                if let Some(r) = c.into.as_ref().and_then(|i| i.rel.as_ref()) {
                    self.created.push(qual_name(r));
                }
            }
            // `SELECT … INTO t`: the raw tree keeps it a SELECT with an INTO clause.
            NodeEnum::SelectStmt(q) => {
                if let Some(r) = q.into_clause.as_ref().and_then(|i| i.rel.as_ref()) {
                    self.created.push(qual_name(r));
                }
            }
            NodeEnum::IndexStmt(i) if in_transaction && !i.concurrent => {
                let Some(table) = i.relation.as_ref().map(qual_name) else {
                    return;
                };
                if self.is_new(&table) {
                    return;
                }
                self.push(
                    patch,
                    Rule::RequireConcurrentIndexCreation,
                    s.line,
                    format!(
                        "CREATE INDEX without CONCURRENTLY on existing table `{table}` holds a SHARE lock that blocks all writes to it for the whole build; build it with CREATE INDEX CONCURRENTLY in a `concurrent` patch"
                    ),
                );
            }
            NodeEnum::RenameStmt(r) if r.rename_type == ObjectType::ObjectTable as i32 => {
                if let Some(table) = r.relation.as_ref().map(qual_name) {
                    let to = r.newname.clone();
                    self.rename(&table, |t| t.name = to);
                }
            }
            NodeEnum::AlterObjectSchemaStmt(a)
                if a.object_type == ObjectType::ObjectTable as i32 =>
            {
                if let Some(table) = a.relation.as_ref().map(qual_name) {
                    let to = a.newschema.clone();
                    self.rename(&table, |t| t.schema = Some(to));
                }
            }
            NodeEnum::AlterTableStmt(a) if a.objtype == ObjectType::ObjectTable as i32 => {
                self.alter_table(patch, s, a);
            }
            NodeEnum::DropStmt(d) if d.remove_type == ObjectType::ObjectTable as i32 => {
                for table in d.objects.iter().filter_map(object_name) {
                    self.drop_table(patch, s.line, &table);
                }
            }
            _ => {}
        }
    }

    fn drop_table(&mut self, patch: &Patch, line: usize, table: &QualName) {
        if self.is_new(table) {
            // Gone: a table of that name in a later patch is another one.
            self.created.retain(|t| !t.same(table));
            return;
        }
        self.push(
            patch,
            Rule::BanDropTable,
            line,
            format!(
                "DROP TABLE `{table}` destroys its data, cannot be undone, and waits for every session using it; make sure no deployed code still uses it"
            ),
        );
    }
}

/// The `CONCURRENTLY` command a statement is, if any (it cannot run in a transaction block).
fn concurrently(node: &NodeEnum) -> Option<String> {
    match node {
        NodeEnum::IndexStmt(i) if i.concurrent => Some(if i.unique {
            "CREATE UNIQUE INDEX CONCURRENTLY".into()
        } else {
            "CREATE INDEX CONCURRENTLY".into()
        }),
        NodeEnum::DropStmt(d) if d.concurrent => Some("DROP INDEX CONCURRENTLY".into()),
        NodeEnum::ReindexStmt(r)
            if r.params.iter().any(
                |p| matches!(&p.node, Some(NodeEnum::DefElem(d)) if d.defname == "concurrently"),
            ) =>
        {
            Some("REINDEX … CONCURRENTLY".into())
        }
        NodeEnum::AlterTableStmt(a)
            if a.cmds.iter().any(|c| {
                matches!(&c.node, Some(NodeEnum::AlterTableCmd(cmd))
                    if cmd.subtype == AlterTableType::AtDetachPartition as i32
                        && matches!(cmd.def.as_deref().and_then(|d| d.node.as_ref()),
                            Some(NodeEnum::PartitionCmd(p)) if p.concurrent))
            }) =>
        {
            Some("ALTER TABLE … DETACH PARTITION … CONCURRENTLY".into())
        }
        _ => None,
    }
}

/// Statements that are fine outside a transaction, one at a time: concurrent builds and
/// drops, validation, maintenance, session settings and plain queries.
fn concurrent_safe(node: &NodeEnum) -> bool {
    if concurrently(node).is_some() {
        return true;
    }
    match node {
        NodeEnum::VacuumStmt(_) | NodeEnum::VariableSetStmt(_) => true,
        NodeEnum::SelectStmt(s) => s.into_clause.is_none(),
        NodeEnum::RefreshMatViewStmt(r) => r.concurrent,
        NodeEnum::AlterEnumStmt(e) => !e.new_val.is_empty() && e.old_val.is_empty(),
        NodeEnum::AlterTableStmt(a) => {
            a.objtype == ObjectType::ObjectTable as i32
                && a.cmds.iter().all(|c| {
                    matches!(&c.node, Some(NodeEnum::AlterTableCmd(cmd))
                        if cmd.subtype == AlterTableType::AtValidateConstraint as i32)
                })
        }
        _ => false,
    }
}
