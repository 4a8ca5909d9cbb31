//! Lint of pending patches: statements that lock or rewrite existing tables, drop data, or
//! can never work where their patch type runs them. Pure (tokens from [`crate::patches::sql`]); each
//! finding names the patch file and the line.
//!
//! "Existing table" means one that no earlier statement of the linted patches creates: a
//! table created by a pending patch is new and empty, so locking or rewriting it costs nothing.

use std::fmt;

use crate::patches::discover::Severity;
use crate::patches::patch::{Patch, PatchType};
use crate::patches::sql::{self, Token, TokenKind};

/// One lint rule; the JSON report names it in kebab-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// `CREATE INDEX` without `CONCURRENTLY` on an existing table in a `std`/`direct` patch.
    IndexWithoutConcurrently,
    /// A `CONCURRENTLY` statement in a `std`/`direct` patch: it cannot run in a transaction.
    ConcurrentlyInTransaction,
    /// A statement other than a concurrent build, validation or maintenance command in a
    /// `concurrent` patch, which runs it outside any transaction.
    NotConcurrentSafe,
    /// `ADD COLUMN` with a volatile default (also `serial`, identity): a table rewrite.
    VolatileDefault,
    /// `ALTER COLUMN ... TYPE`: a table rewrite unless the types are binary-compatible.
    ColumnTypeChange,
    /// `SET NOT NULL` without a validated `CHECK (col IS NOT NULL)`: a full-table scan.
    SetNotNull,
    /// `DROP TABLE` of an existing table.
    DropTable,
    /// `ALTER TABLE ... DROP COLUMN` on an existing table.
    DropColumn,
    /// `BEGIN`/`COMMIT`/`ROLLBACK`… in a `std`/`direct` patch: it would end pgconvoy's transaction.
    TransactionControl,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::IndexWithoutConcurrently => "index-without-concurrently",
            Rule::ConcurrentlyInTransaction => "concurrently-in-transaction",
            Rule::NotConcurrentSafe => "not-concurrent-safe",
            Rule::VolatileDefault => "volatile-default",
            Rule::ColumnTypeChange => "column-type-change",
            Rule::SetNotNull => "set-not-null",
            Rule::DropTable => "drop-table",
            Rule::DropColumn => "drop-column",
            Rule::TransactionControl => "transaction-control",
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
    /// For `set-not-null`: the column, so the caller can drop the finding when the
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

    fn push(&mut self, patch: &Patch, rule: Rule, line: usize, message: String) {
        let severity = match rule {
            Rule::ConcurrentlyInTransaction | Rule::TransactionControl => Severity::Error,
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
                    Rule::TransactionControl,
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
            Rule::IndexWithoutConcurrently,
            s.line,
            format!(
                "CREATE INDEX without CONCURRENTLY on existing table `{table}` holds a SHARE lock that blocks all writes to it for the whole build; build it with CREATE INDEX CONCURRENTLY in a `concurrent` patch"
            ),
        );
    }

    fn alter_table(&mut self, patch: &Patch, s: &Stmt<'_>) {
        let mut c = Cursor::new(&s.toks, 2);
        c.eat(&["if", "exists"]);
        c.eat(&["only"]);
        let Some(table) = c.name() else { return };
        let new = self.is_new(&table);
        for (start, end) in top_level_actions(&s.toks, c.pos) {
            let a = Cursor::new(&s.toks[..end], start);
            self.alter_action(patch, s, &table, new, a);
        }
    }

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
            let mut look = a.clone();
            let named = if look.eat(&["constraint"]) {
                look.ident()
            } else {
                None
            };
            if named.is_some() || look.peek_kw("check") {
                if let Some(column) = not_null_check(&look) {
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
                    Rule::VolatileDefault,
                    line,
                    format!(
                        "ADD COLUMN `{column}` with {why} rewrites all of `{table}` under an ACCESS EXCLUSIVE lock (reads and writes wait); add the column without it (or with a constant default), then backfill in batches"
                    ),
                );
            }
        } else if a.eat(&["drop"]) {
            if a.peek_kw("constraint") || new {
                return;
            }
            a.eat(&["column"]);
            a.eat(&["if", "exists"]);
            let Some(column) = a.ident() else { return };
            self.push(
                patch,
                Rule::DropColumn,
                line,
                format!(
                    "DROP COLUMN `{table}.{column}` destroys that column's data and cannot be undone; make sure no deployed code still reads or writes it (ship the code change first)"
                ),
            );
        } else if a.eat(&["alter"]) {
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
                    Rule::ColumnTypeChange,
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
                    Rule::SetNotNull,
                    line,
                    format!(
                        "SET NOT NULL on `{table}.{column}` scans all of `{table}` under an ACCESS EXCLUSIVE lock; first add CHECK ({column} IS NOT NULL) NOT VALID and VALIDATE CONSTRAINT it (PostgreSQL 12+ then skips the scan)"
                    ),
                );
                if let Some(f) = self.findings.last_mut() {
                    f.column = Some(col);
                }
            }
        } else if a.eat(&["validate", "constraint"]) {
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

    fn drop_table(&mut self, patch: &Patch, s: &Stmt<'_>) {
        let mut c = Cursor::new(&s.toks, 2);
        c.eat(&["if", "exists"]);
        loop {
            let Some(table) = c.name() else { return };
            if !self.is_new(&table) {
                self.push(
                    patch,
                    Rule::DropTable,
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

/// A cursor over a statement's tokens.
#[derive(Clone)]
struct Cursor<'t, 'a> {
    toks: &'t [Token<'a>],
    pos: usize,
}

impl<'t, 'a> Cursor<'t, 'a> {
    fn new(toks: &'t [Token<'a>], pos: usize) -> Self {
        Cursor { toks, pos }
    }

    fn peek_kw(&self, keyword: &str) -> bool {
        self.toks
            .get(self.pos)
            .is_some_and(|t| t.is_keyword(keyword))
    }

    /// Consumes `keywords` if they all come next; otherwise consumes nothing.
    fn eat(&mut self, keywords: &[&str]) -> bool {
        let all = keywords
            .iter()
            .enumerate()
            .all(|(i, k)| self.toks.get(self.pos + i).is_some_and(|t| t.is_keyword(k)));
        if all {
            self.pos += keywords.len();
        }
        all
    }

    fn eat_punct(&mut self, p: &str) -> bool {
        let hit = self
            .toks
            .get(self.pos)
            .is_some_and(|t| t.kind == TokenKind::Punct && t.text == p);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn ident(&mut self) -> Option<String> {
        let id = self.toks.get(self.pos)?.ident()?;
        self.pos += 1;
        Some(id)
    }

    /// `name` or `schema.name` (a third part, `db.schema.name`, keeps the last two).
    fn name(&mut self) -> Option<QualName> {
        let mut parts = vec![self.ident()?];
        while self.eat_punct(".") {
            parts.push(self.ident()?);
        }
        let name = parts.pop()?;
        Some(QualName {
            schema: parts.pop(),
            name,
        })
    }

    /// Index of the next bare `keyword` outside parentheses.
    fn find_top_level(&self, keyword: &str) -> Option<usize> {
        let mut depth = 0usize;
        for (i, t) in self.toks.iter().enumerate().skip(self.pos) {
            match t.kind {
                TokenKind::Punct if t.text == "(" => depth += 1,
                TokenKind::Punct if t.text == ")" => depth = depth.saturating_sub(1),
                _ if depth == 0 && t.is_keyword(keyword) => return Some(i),
                _ => {}
            }
        }
        None
    }

    fn rest_has(&self, keyword: &str) -> bool {
        self.find_top_level(keyword).is_some()
    }

    fn rest(&self) -> &'t [Token<'a>] {
        &self.toks[self.pos.min(self.toks.len())..]
    }
}

/// `(start, end)` token ranges of the comma-separated actions of `ALTER TABLE name …`.
fn top_level_actions(toks: &[Token<'_>], from: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = from;
    for (i, t) in toks.iter().enumerate().skip(from) {
        match t.kind {
            TokenKind::Punct if t.text == "(" => depth += 1,
            TokenKind::Punct if t.text == ")" => depth = depth.saturating_sub(1),
            TokenKind::Punct if t.text == "," && depth == 0 => {
                out.push((start, i));
                start = i + 1;
            }
            TokenKind::Semicolon => {
                out.push((start, i));
                return out;
            }
            _ => {}
        }
    }
    if start < toks.len() {
        out.push((start, toks.len()));
    }
    out
}

/// `CHECK ( [(] col IS NOT NULL [)] )` right at the cursor: the column.
fn not_null_check(c: &Cursor<'_, '_>) -> Option<String> {
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
fn volatile_default(c: &Cursor<'_, '_>) -> Option<String> {
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

/// The transaction-control command a statement is, if any.
fn transaction_control(s: &Stmt<'_>) -> Option<String> {
    let first = s.toks.first()?;
    let is = |k: &str| first.is_keyword(k);
    // ROLLBACK [TRANSACTION | WORK] TO [SAVEPOINT] x ends nothing.
    let to_savepoint =
        s.kw(1, "to") || ((s.kw(1, "transaction") || s.kw(1, "work")) && s.kw(2, "to"));
    let hit = is("begin")
        || is("commit")
        || is("end")
        || is("abort")
        || (is("start") && s.kw(1, "transaction"))
        || (is("rollback") && !to_savepoint)
        || (is("prepare") && s.kw(1, "transaction"));
    hit.then(|| s.head(2))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patches::patch::{PatchVersion, StatementSpan};
    use std::path::PathBuf;

    fn patch(minor: u32, kind: PatchType, body: &str) -> Patch {
        let statements = sql::split(body)
            .unwrap()
            .iter()
            .map(|s| StatementSpan {
                offset: s.offset,
                len: s.text.len(),
                line: s.line,
            })
            .collect();
        Patch {
            version: PatchVersion::new(1, minor, 0),
            kind,
            path: PathBuf::from(format!("patches/patch-1-{minor}-0-{kind}.sql")),
            body: body.to_string(),
            checksum: String::new(),
            statements,
            order: Default::default(),
        }
    }

    /// `rule@line` of every finding for the patches, in order.
    fn run(patches: &[Patch]) -> Vec<String> {
        let refs: Vec<&Patch> = patches.iter().collect();
        lint(&refs)
            .iter()
            .map(|f| format!("{}@{}", f.rule, f.line))
            .collect()
    }

    fn one(kind: PatchType, body: &str) -> Vec<String> {
        run(&[patch(0, kind, body)])
    }

    use PatchType::{Concurrent as C, Direct as D, Std as S};

    #[test]
    fn index_without_concurrently() {
        assert_eq!(
            one(D, "SELECT 1;\nCREATE INDEX orders_v ON orders (v);\n"),
            ["index-without-concurrently@2"]
        );
        assert_eq!(
            one(S, "CREATE UNIQUE INDEX ON public.orders USING btree (v);"),
            ["index-without-concurrently@1"]
        );
        // A table the pending patches create is new and empty.
        assert!(run(&[
            patch(0, D, "CREATE TABLE public.orders (v int);"),
            patch(1, S, "CREATE INDEX ON orders (v);"),
        ])
        .is_empty());
        // Concurrent builds in a concurrent patch are the right way.
        assert!(one(C, "CREATE INDEX CONCURRENTLY o_v ON orders (v);").is_empty());
    }

    #[test]
    fn concurrently_in_transaction() {
        assert_eq!(
            one(
                D,
                "CREATE TABLE t (v int);\n\nCREATE INDEX CONCURRENTLY t_v ON t (v);"
            ),
            ["concurrently-in-transaction@3"]
        );
        assert_eq!(
            one(S, "DROP INDEX CONCURRENTLY x;"),
            ["concurrently-in-transaction@1"]
        );
        assert_eq!(
            one(S, "REINDEX INDEX CONCURRENTLY x;"),
            ["concurrently-in-transaction@1"]
        );
        // REFRESH … CONCURRENTLY is fine in a transaction; "concurrently" in a string is not a keyword.
        assert!(one(D, "REFRESH MATERIALIZED VIEW CONCURRENTLY mv;").is_empty());
        assert!(one(D, "COMMENT ON TABLE t IS 'create index concurrently';").is_empty());
    }

    #[test]
    fn not_concurrent_safe() {
        assert_eq!(
            one(
                C,
                "CREATE INDEX CONCURRENTLY a ON t (v);\nALTER TABLE t ADD COLUMN w int;\n"
            ),
            ["not-concurrent-safe@2"]
        );
        assert_eq!(
            one(C, "CREATE INDEX t_v ON t (v);"),
            ["not-concurrent-safe@1"]
        );
        assert!(one(
            C,
            "SET maintenance_work_mem = '1GB';\nCREATE UNIQUE INDEX CONCURRENTLY a ON t (v);\n\
             DROP INDEX CONCURRENTLY IF EXISTS b;\nALTER TABLE t VALIDATE CONSTRAINT c;\nANALYZE t;\n\
             ALTER TYPE mood ADD VALUE 'meh';\nREINDEX (VERBOSE) INDEX CONCURRENTLY a;\n"
        )
        .is_empty());
    }

    #[test]
    fn volatile_default() {
        assert_eq!(
            one(
                D,
                "ALTER TABLE orders\n  ADD COLUMN token uuid DEFAULT gen_random_uuid();"
            ),
            ["volatile-default@2"]
        );
        assert_eq!(
            one(D, "ALTER TABLE orders ADD id2 bigserial;"),
            ["volatile-default@1"]
        );
        assert_eq!(
            one(
                D,
                "ALTER TABLE orders ADD COLUMN n int GENERATED ALWAYS AS IDENTITY;"
            ),
            ["volatile-default@1"]
        );
        // Constant and stable defaults are stored in the catalog: no rewrite.
        assert!(one(
            D,
            "ALTER TABLE orders ADD COLUMN a int DEFAULT 0, ADD COLUMN b timestamptz DEFAULT now();"
        )
        .is_empty());
        assert!(run(&[
            patch(0, D, "CREATE TABLE orders (v int);"),
            patch(
                1,
                D,
                "ALTER TABLE orders ADD COLUMN r float8 DEFAULT random();"
            ),
        ])
        .is_empty());
    }

    #[test]
    fn column_type_change() {
        assert_eq!(
            one(D, "ALTER TABLE orders ALTER COLUMN v TYPE bigint;"),
            ["column-type-change@1"]
        );
        assert_eq!(
            one(D, "ALTER TABLE orders ALTER v SET DATA TYPE text;"),
            ["column-type-change@1"]
        );
        assert!(one(D, "ALTER TABLE orders ALTER COLUMN v SET DEFAULT 1;").is_empty());
    }

    #[test]
    fn set_not_null() {
        let found = {
            let p = patch(0, D, "ALTER TABLE s.orders ALTER COLUMN v SET NOT NULL;");
            lint(&[&p])
        };
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].rule, Rule::SetNotNull);
        let col = found[0].column.as_ref().unwrap();
        assert_eq!(
            (col.table.quoted(), col.column.as_str()),
            ("\"s\".\"orders\"".into(), "v")
        );
        // With a validated check first (in one step, or NOT VALID then VALIDATE): no finding.
        assert!(one(
            D,
            "ALTER TABLE orders ADD CONSTRAINT v_nn CHECK (v IS NOT NULL);\nALTER TABLE orders ALTER v SET NOT NULL;"
        )
        .is_empty());
        assert!(run(&[
            patch(
                0,
                D,
                "ALTER TABLE orders ADD CONSTRAINT v_nn CHECK (v IS NOT NULL) NOT VALID;"
            ),
            patch(1, D, "ALTER TABLE orders VALIDATE CONSTRAINT v_nn;"),
            patch(2, D, "ALTER TABLE orders ALTER COLUMN v SET NOT NULL;"),
        ])
        .is_empty());
        // NOT VALID alone does not help.
        assert_eq!(
            run(&[
                patch(
                    0,
                    D,
                    "ALTER TABLE orders ADD CONSTRAINT v_nn CHECK (v IS NOT NULL) NOT VALID;"
                ),
                patch(1, D, "ALTER TABLE orders ALTER COLUMN v SET NOT NULL;"),
            ]),
            ["set-not-null@1"]
        );
    }

    #[test]
    fn drops() {
        assert_eq!(
            one(D, "DROP TABLE IF EXISTS a, b;"),
            ["drop-table@1", "drop-table@1"]
        );
        assert_eq!(
            one(
                S,
                "ALTER TABLE orders\n  DROP COLUMN note,\n  DROP CONSTRAINT c;"
            ),
            ["drop-column@2"]
        );
        assert_eq!(
            one(S, "ALTER TABLE orders DROP IF EXISTS note;"),
            ["drop-column@1"]
        );
        assert!(one(
            D,
            "DROP INDEX orders_v;\nALTER TABLE orders ALTER v DROP DEFAULT;"
        )
        .is_empty());
        assert!(run(&[
            patch(0, D, "CREATE TABLE scratch (v int);"),
            patch(
                1,
                D,
                "ALTER TABLE scratch DROP COLUMN v;\nDROP TABLE scratch;"
            ),
        ])
        .is_empty());
    }

    #[test]
    fn transaction_control() {
        assert_eq!(
            one(D, "BEGIN;\nCREATE TABLE t ();\nCOMMIT;\n"),
            ["transaction-control@1", "transaction-control@3"]
        );
        assert!(one(
            D,
            "SAVEPOINT a;\nCREATE TABLE t ();\nROLLBACK TO SAVEPOINT a;\nCREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\n"
        )
        .is_empty());
        let f = lint(&[&patch(0, S, "COMMIT;")]);
        assert_eq!(f[0].severity, Severity::Error);
        assert_eq!(f[0].file, "patch-1-0-0-std.sql");
        assert_eq!(f[0].patch, "1-0-0");
    }
}
