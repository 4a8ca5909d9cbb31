//! Quoting for SQL text: the one place identifiers from config (and literals that
//! cannot be parameters, such as two-phase-commit gids) enter SQL.

/// Quotes an identifier for SQL.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A SQL string literal (standard_conforming_strings), for statements that take no
/// parameters (`PREPARE TRANSACTION`, `COMMIT PREPARED`).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }
}
