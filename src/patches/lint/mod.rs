//! Lint of pending patches: statements that lock or rewrite existing tables, drop data, or
//! can never work where their patch type runs them. Pure (tokens from [`crate::patches::sql`]); each
//! finding names the patch file and the line.
//!
//! Lint follows a model of the schema through the pending patches: tables created by an
//! earlier statement of the linted patches are new (and empty, so locking or rewriting them
//! costs nothing) under whatever name a later `RENAME TO` or `SET SCHEMA` gives them, until
//! a `DROP TABLE`; "existing table" means one that existed before the run. Rule names are
//! squawk's where the rule is the same (`require-concurrent-index-creation`,
//! `adding-field-with-default`, `changing-column-type`, `adding-not-nullable-field`,
//! `ban-drop-table`, `ban-drop-column`, `transaction-nesting`).

use std::fmt;

use crate::patches::discover::Severity;
use crate::patches::patch::{Patch, PatchType};
use crate::patches::sql::{self, Token, TokenKind};
use cursor::{top_level_actions, Cursor};

mod alter;
mod cursor;
pub mod slony;
#[cfg(test)]
mod tests;

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
        for (text, span) in patch.statement_texts() {
            let toks: Vec<Token<'_>> = sql::tokens(text).collect();
            let stmt = Stmt {
                text,
                line: span.line,
                toks,
            };
            linter.statement(patch, &stmt);
        }
    }
    linter.findings
}

/// The first statement of `patch` that would end the transaction it runs in (`COMMIT`,
/// `ROLLBACK`, …): its line and its leading keywords. A rehearsal must never run such a patch.
pub fn ends_transaction(patch: &Patch) -> Option<(usize, String)> {
    patch.statement_texts().find_map(|(text, span)| {
        let stmt = Stmt {
            text,
            line: span.line,
            toks: sql::tokens(text).take(3).collect(),
        };
        transaction_control(&stmt).map(|what| (span.line, what))
    })
}

/// One statement, its tokens (offsets relative to `text`) and the line it starts on.
struct Stmt<'a> {
    text: &'a str,
    line: usize,
    toks: Vec<Token<'a>>,
}

impl Stmt<'_> {
    fn kw(&self, i: usize, keyword: &str) -> bool {
        self.toks.get(i).is_some_and(|t| t.is_keyword(keyword))
    }

    /// The patch-file line of token `i`.
    fn line_of(&self, i: usize) -> usize {
        match self.toks.get(i) {
            Some(t) => self.line + sql::line_at_offset(self.text, t.offset) - 1,
            None => self.line,
        }
    }

    /// The first `n` leading keywords, joined by spaces.
    fn head(&self, n: usize) -> String {
        sql::leading_keywords(self.text, n).join(" ")
    }

    /// Whether a bare `keyword` appears outside parentheses.
    fn has_top_level(&self, keyword: &str) -> bool {
        let mut depth = 0usize;
        for t in &self.toks {
            match t.kind {
                TokenKind::Punct if t.text == "(" => depth += 1,
                TokenKind::Punct if t.text == ")" => depth = depth.saturating_sub(1),
                _ if depth == 0 && t.is_keyword(keyword) => return true,
                _ => {}
            }
        }
        false
    }
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

    fn statement(&mut self, patch: &Patch, s: &Stmt<'_>) {
        let in_transaction = patch.kind != PatchType::Concurrent;
        if in_transaction {
            if let Some(what) = transaction_control(s) {
                self.push(
                    patch,
                    Rule::TransactionNesting,
                    s.line,
                    format!(
                        "`{what}` would end the transaction pgconvoy runs this `{}` patch in (on the master, the claim); pgconvoy manages transactions itself: remove it",
                        patch.kind
                    ),
                );
            }
            if let Some(what) = concurrently(s) {
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
        } else if !concurrent_safe(s) {
            let what = s.head(3);
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

        if s.kw(0, "create") {
            self.create(patch, s, in_transaction);
        } else if s.kw(0, "alter") && s.kw(1, "table") {
            self.alter_table(patch, s);
        } else if s.kw(0, "drop") && s.kw(1, "table") {
            self.drop_table(patch, s);
        }
    }

    fn create(&mut self, patch: &Patch, s: &Stmt<'_>, in_transaction: bool) {
        let mut c = Cursor::new(&s.toks, 1);
        c.eat(&["or", "replace"]);
        // CREATE [GLOBAL|LOCAL] [TEMP|TEMPORARY|UNLOGGED] TABLE / MATERIALIZED VIEW
        c.eat(&["global"]);
        c.eat(&["local"]);
        let _ = c.eat(&["temp"]) || c.eat(&["temporary"]) || c.eat(&["unlogged"]);
        if c.eat(&["table"]) || c.eat(&["materialized", "view"]) {
            c.eat(&["if", "not", "exists"]);
            if let Some(name) = c.name() {
                self.created.push(name);
            }
            return;
        }
        let mut c = Cursor::new(&s.toks, 1);
        c.eat(&["unique"]);
        if !c.eat(&["index"]) || c.eat(&["concurrently"]) || !in_transaction {
            return;
        }
        // Skip to ON at the top level: the index name (if any) comes first.
        let Some(on) = c.find_top_level("on") else {
            return;
        };
        let mut c = Cursor::new(&s.toks, on + 1);
        c.eat(&["only"]);
        let Some(table) = c.name() else { return };
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

    fn drop_table(&mut self, patch: &Patch, s: &Stmt<'_>) {
        let mut c = Cursor::new(&s.toks, 2);
        c.eat(&["if", "exists"]);
        loop {
            let Some(table) = c.name() else { return };
            if self.is_new(&table) {
                // Gone: a table of that name in a later patch is another one.
                self.created.retain(|t| !t.same(&table));
            } else {
                self.push(
                    patch,
                    Rule::BanDropTable,
                    s.line,
                    format!(
                        "DROP TABLE `{table}` destroys its data, cannot be undone, and waits for every session using it; make sure no deployed code still uses it"
                    ),
                );
            }
            if !c.eat_punct(",") {
                return;
            }
        }
    }
}

/// The transaction-nesting command a statement is, if any.
fn transaction_control(s: &Stmt<'_>) -> Option<String> {
    sql::transaction_control(s.text).map(str::to_string)
}

/// The `CONCURRENTLY` command a statement is, if any (it cannot run in a transaction block).
fn concurrently(s: &Stmt<'_>) -> Option<String> {
    let create_index = s.kw(0, "create")
        && ((s.kw(1, "index") && s.kw(2, "concurrently"))
            || (s.kw(1, "unique") && s.kw(2, "index") && s.kw(3, "concurrently")));
    let drop_index = s.kw(0, "drop") && s.kw(1, "index") && s.kw(2, "concurrently");
    let reindex = s.kw(0, "reindex") && s.has_top_level("concurrently");
    let detach = s.kw(0, "alter")
        && s.kw(1, "table")
        && s.has_top_level("detach")
        && s.has_top_level("concurrently");
    if create_index {
        Some(format!(
            "{} CONCURRENTLY",
            s.head(if s.kw(1, "unique") { 3 } else { 2 })
        ))
    } else if drop_index {
        Some("DROP INDEX CONCURRENTLY".into())
    } else if reindex {
        Some("REINDEX … CONCURRENTLY".into())
    } else if detach {
        Some("ALTER TABLE … DETACH PARTITION … CONCURRENTLY".into())
    } else {
        None
    }
}

/// Statements that are fine outside a transaction, one at a time: concurrent builds and
/// drops, validation, maintenance, session settings and plain queries.
fn concurrent_safe(s: &Stmt<'_>) -> bool {
    if concurrently(s).is_some() {
        return true;
    }
    let Some(first) = s.toks.first() else {
        return true;
    };
    let is = |k: &str| first.is_keyword(k);
    if is("vacuum") || is("analyze") || is("analyse") || is("set") || is("reset") || is("select") {
        return true;
    }
    if is("refresh") {
        return s.has_top_level("concurrently");
    }
    if is("alter") && s.kw(1, "type") {
        return s.has_top_level("add") && s.has_top_level("value");
    }
    if is("alter") && s.kw(1, "table") {
        let mut c = Cursor::new(&s.toks, 2);
        c.eat(&["if", "exists"]);
        c.eat(&["only"]);
        if c.name().is_none() {
            return false;
        }
        let actions = top_level_actions(&s.toks, c.pos);
        return actions.iter().all(|&(start, end)| {
            Cursor::new(&s.toks[..end], start).eat(&["validate", "constraint"])
        });
    }
    false
}
