//! Patch statements parsed by PostgreSQL's own grammar (libpg_query, through the `pg_query`
//! crate): the parse trees lint reads, the patch-file line of each statement and of each
//! `ALTER TABLE` action, and where a statement the grammar rejects goes wrong.

use pg_query::protobuf::{self, RangeVar, Token};
use pg_query::NodeEnum;

use super::QualName;
use crate::patches::patch::Patch;
use crate::patches::sql;

/// One parsed statement of a patch.
pub(super) struct Parsed<'a> {
    pub(super) node: NodeEnum,
    /// The patch-file line the statement starts on (after any leading comment).
    pub(super) line: usize,
    /// The statement's text, from its first token.
    pub(super) text: &'a str,
}

/// A statement the grammar rejects: the first one of its patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SyntaxError {
    /// The patch-file line of the offending token (of the statement, when it is unknown).
    pub(super) line: usize,
    pub(super) message: String,
}

/// The statements of `patch` as the run sends them (its own splitting), each parsed;
/// statements that do not parse are left out and the first of them is returned too.
pub(super) fn parse(patch: &Patch) -> (Vec<Parsed<'_>>, Option<SyntaxError>) {
    let mut parsed = Vec::new();
    let mut error = None;
    for (text, span) in patch.statement_texts() {
        match pg_query::parse(text) {
            Ok(result) => {
                for raw in result.protobuf.stmts {
                    let Some(node) = raw.stmt.and_then(|n| n.node) else {
                        continue;
                    };
                    let start = usize::try_from(raw.stmt_location).unwrap_or(0);
                    let Some(from_start) = text.get(start..) else {
                        continue;
                    };
                    parsed.push(Parsed {
                        node,
                        line: span.line + sql::line_at_offset(text, start) - 1,
                        text: from_start,
                    });
                }
            }
            Err(e) => {
                if error.is_none() {
                    let message = match e {
                        pg_query::Error::Parse(m) => m,
                        other => other.to_string(),
                    };
                    let line = span.line + sql::line_at_offset(text, error_offset(text)) - 1;
                    error = Some(SyntaxError { line, message });
                }
            }
        }
    }
    (parsed, error)
}

/// The byte offset in `text` of the token the grammar rejects. libpg_query knows it
/// (`cursorpos`) but the crate drops it, so it is found again: a prefix of the statement
/// that ends before the bad token either parses or fails only "at end of input", and
/// every longer prefix fails elsewhere, so a binary search over the scanner's token ends
/// finds the first token that cannot continue (the last one when the statement ends too
/// soon). 0 when the scanner itself fails.
fn error_offset(text: &str) -> usize {
    let Ok(scan) = pg_query::scan(text) else {
        return 0;
    };
    let ends: Vec<usize> = scan
        .tokens
        .iter()
        .filter_map(|t| usize::try_from(t.end).ok())
        .collect();
    let viable = |end: usize| match text.get(..end).map(pg_query::parse) {
        Some(Ok(_)) => true,
        Some(Err(pg_query::Error::Parse(m))) => m.contains("at end of input"),
        _ => false,
    };
    // The first token whose prefix is not viable.
    let (mut lo, mut hi) = (0, ends.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if viable(ends[mid]) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    // Past the last token: the statement ends too soon ("at end of input").
    scan.tokens
        .get(lo)
        .or(scan.tokens.last())
        .and_then(|t| usize::try_from(t.start).ok())
        .unwrap_or(0)
}

impl Parsed<'_> {
    /// The patch-file line at byte `offset` of the statement's text.
    fn line_at(&self, offset: usize) -> usize {
        self.line + sql::line_at_offset(self.text, offset) - 1
    }

    /// The patch-file line of each action of this `ALTER TABLE` (they are comma-separated
    /// at the top level after the table's name, and the tree lists them in order, but
    /// without positions); the statement's line for all when they cannot be told apart.
    pub(super) fn action_lines(&self, relation: &RangeVar, actions: usize) -> Vec<usize> {
        let fallback = vec![self.line; actions];
        let Ok(scan) = pg_query::scan(self.text) else {
            return fallback;
        };
        let toks = &scan.tokens;
        let is = |i: usize, t: Token| toks.get(i).is_some_and(|x| x.token == t as i32);
        let Some(mut i) = toks.iter().position(|t| t.start >= relation.location) else {
            return fallback;
        };
        // Past the name: `name`, `schema.name` or `db.schema.name`.
        i += 1;
        while is(i, Token::Ascii46) {
            i += 2;
        }
        let mut starts = vec![i];
        let mut depth = 0usize;
        for j in i..toks.len() {
            if is(j, Token::Ascii40) {
                depth += 1;
            } else if is(j, Token::Ascii41) {
                depth = depth.saturating_sub(1);
            } else if is(j, Token::Ascii44) && depth == 0 {
                starts.push(j + 1);
            }
        }
        if starts.len() != actions {
            return fallback;
        }
        starts
            .into_iter()
            .map(
                |k| match toks.get(k).and_then(|t| usize::try_from(t.start).ok()) {
                    Some(offset) => self.line_at(offset),
                    None => self.line,
                },
            )
            .collect()
    }
}

/// The relation a `RangeVar` names, as the grammar folded it.
pub(super) fn qual_name(r: &RangeVar) -> QualName {
    QualName {
        schema: (!r.schemaname.is_empty()).then(|| r.schemaname.clone()),
        name: r.relname.clone(),
    }
}

/// The relation a `DROP` object (a list of name parts) names.
pub(super) fn object_name(object: &protobuf::Node) -> Option<QualName> {
    let Some(NodeEnum::List(list)) = &object.node else {
        return None;
    };
    let mut parts: Vec<String> = list.items.iter().filter_map(string).collect();
    let name = parts.pop()?;
    Some(QualName {
        schema: parts.pop(),
        name,
    })
}

/// The value of a `String` node.
pub(super) fn string(node: &protobuf::Node) -> Option<String> {
    match &node.node {
        Some(NodeEnum::String(s)) => Some(s.sval.clone()),
        _ => None,
    }
}

/// The last part of a possibly qualified name (a function's or a type's).
pub(super) fn last_name(names: &[protobuf::Node]) -> Option<String> {
    names.last().and_then(string)
}
