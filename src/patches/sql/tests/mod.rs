//! Tests of the SQL module: splitting scripts into statements (`splitting`), and reading
//! what a statement is (`classifying`). Shared helpers here.

use super::*;

mod classifying;
mod splitting;

pub(super) fn texts(script: &str) -> Vec<&str> {
    match split(script) {
        Ok(statements) => statements.iter().map(|s| s.text).collect(),
        Err(err) => panic!("split failed: {err}"),
    }
}

pub(super) fn kinds(script: &str) -> Vec<(TokenKind, &str)> {
    tokens(script).map(|t| (t.kind, t.text)).collect()
}

pub(super) fn err(script: &str) -> SplitError {
    match split(script) {
        Ok(statements) => panic!("expected an error, got {statements:?}"),
        Err(err) => err,
    }
}
