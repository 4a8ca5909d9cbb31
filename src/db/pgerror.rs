//! What PostgreSQL (or the connection) said about a failure, kept whole:
//! SQLSTATE, message, detail, hint and the error position.

use std::fmt;

use tokio_postgres::error::{ErrorPosition, SqlState};

use crate::db::quote::quote_literal;
use crate::output::human::error_chain;

/// A failure reported by a server, or a connection-level error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgFailure {
    /// SQLSTATE, when the server sent one.
    pub code: Option<SqlState>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character position in the query text that was sent.
    pub position: Option<u32>,
    /// The statement failed because the connection was gone.
    pub connection_lost: bool,
    /// For a failed `COPY ... FROM STDIN`: the 1-based line of its data the server
    /// names in its context (`COPY t, line 3, column a: …`).
    pub copy_line: Option<u32>,
}

/// How the text of a check that fails on the server begins, when the failure is to read
/// as that text: the check casts `'pgconvoy guard: …'` to integer, and the server's
/// "invalid input syntax for type integer" error becomes a failure saying `…` alone,
/// without a SQLSTATE (as if the client had found it).
pub const GUARD: &str = "pgconvoy guard: ";

/// An expression that fails on the server when `condition` holds, with `message` in
/// the error (an invalid cast to integer, SQLSTATE 22P02: plain SQL has no `RAISE`), and
/// is NULL otherwise. A statement can carry it so that a check made on the server aborts
/// the transaction, and whatever was sent behind it, before anything else runs. A
/// `message` that starts with [`GUARD`] reads back as the rest of it.
pub fn fail_when(condition: &str, message: &str) -> String {
    format!(
        "CASE WHEN {condition} THEN {} END::integer",
        quote_literal(message)
    )
}

/// The text of a guard's failure ([`GUARD`]), if `message` is one.
fn guard_text(message: &str) -> Option<&str> {
    message
        .strip_prefix("invalid input syntax for type integer: \"")?
        .strip_prefix(GUARD)?
        .strip_suffix('"')
}

impl PgFailure {
    pub fn from_pg(e: &tokio_postgres::Error) -> PgFailure {
        if let Some(text) = e
            .as_db_error()
            .filter(|db| db.code() == &SqlState::INVALID_TEXT_REPRESENTATION)
            .and_then(|db| guard_text(db.message()))
        {
            return PgFailure::other(text);
        }
        match e.as_db_error() {
            Some(db) => PgFailure {
                code: Some(db.code().clone()),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string),
                position: match db.position() {
                    Some(ErrorPosition::Original(p)) => Some(*p),
                    _ => None,
                },
                connection_lost: false,
                copy_line: db.where_().and_then(copy_line),
            },
            None => PgFailure {
                connection_lost: e.is_closed(),
                ..PgFailure::other(error_chain(e))
            },
        }
    }

    /// A failure that did not come from a server's error report.
    pub fn other(message: impl Into<String>) -> PgFailure {
        PgFailure {
            code: None,
            message: message.into(),
            detail: None,
            hint: None,
            position: None,
            connection_lost: false,
            copy_line: None,
        }
    }

    pub fn is(&self, state: &SqlState) -> bool {
        self.code.as_ref() == Some(state)
    }

    pub fn sqlstate(&self) -> Option<&str> {
        self.code.as_ref().map(SqlState::code)
    }
}

impl fmt::Display for PgFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(code) = &self.code {
            write!(f, "ERROR {}: ", code.code())?;
        }
        f.write_str(&self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl From<tokio_postgres::Error> for PgFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        PgFailure::from_pg(&e)
    }
}

/// Errors keep their failure boxed, so that results stay small.
impl From<tokio_postgres::Error> for Box<PgFailure> {
    fn from(e: tokio_postgres::Error) -> Self {
        Box::new(PgFailure::from_pg(&e))
    }
}

/// A node none of whose hosts could be used: the server's SQLSTATE is kept when the
/// last host answered with an error (a wrong password, a missing database).
impl From<crate::db::connect::ConnectError> for PgFailure {
    fn from(e: crate::db::connect::ConnectError) -> Self {
        let mut failure = PgFailure::other(e.to_string());
        failure.code = e.db_error().map(|db| db.code().clone());
        failure
    }
}

impl From<deadpool::managed::PoolError<crate::db::connect::ConnectError>> for PgFailure {
    fn from(e: deadpool::managed::PoolError<crate::db::connect::ConnectError>) -> Self {
        use deadpool::managed::{HookError, PoolError};
        match e {
            PoolError::Backend(e) | PoolError::PostCreateHook(HookError::Backend(e)) => {
                PgFailure::from(e)
            }
            other => PgFailure::other(other.to_string()),
        }
    }
}

/// Why a node that answered could not have its ledger read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LedgerUnreadable {
    /// `privilege` when the role lacks a grant (SQLSTATE 42501), `error` otherwise.
    pub kind: &'static str,
    pub sqlstate: Option<String>,
    pub message: String,
    /// For `privilege`: the grants the role lacks to read the ledger.
    pub missing_grants: Vec<String>,
}

impl std::fmt::Display for LedgerUnreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind == "privilege" {
            write!(
                f,
                "reachable, but its ledger is unreadable for lack of privilege: {}",
                self.message
            )?;
            if !self.missing_grants.is_empty() {
                write!(f, "; missing: {}", self.missing_grants.join("; "))?;
            }
            Ok(())
        } else {
            write!(
                f,
                "reachable, but its ledger is unreadable: {}",
                self.message
            )
        }
    }
}

/// The data line a `COPY ... FROM STDIN` failed on, from the server's context.
fn copy_line(context: &str) -> Option<u32> {
    let rest = context.strip_prefix("COPY ")?;
    let at = rest.find(", line ")? + ", line ".len();
    let digits: &str = &rest[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_line_from_context() {
        assert_eq!(copy_line("COPY t, line 3, column a: \"x\""), Some(3));
        assert_eq!(copy_line("COPY public.big, line 12"), Some(12));
        assert_eq!(copy_line("SQL statement \"select 1\""), None);
    }

    #[test]
    fn guard_failures_read_as_their_text() {
        assert_eq!(
            guard_text("invalid input syntax for type integer: \"pgconvoy guard: lost it\""),
            Some("lost it")
        );
        assert_eq!(
            guard_text("invalid input syntax for type integer: \"abc\""),
            None
        );
        assert_eq!(guard_text("pgconvoy guard: lost it"), None);
    }
}
