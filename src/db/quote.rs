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

/// `sql` with its parameters `$1`, `$2`, … replaced by `literals` (already quoted), for
/// a script that sends the same statement as a run (`upgrade --sql`). Only for pgconvoy's
/// own statements, which hold no `$` other than their parameters.
pub fn bind(sql: &str, literals: &[String]) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        let n: Option<usize> = rest[at + 1..at + 1 + digits].parse().ok();
        match n
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| literals.get(i))
        {
            Some(lit) => out.push_str(lit),
            None => out.push_str(&rest[at..at + 1 + digits]),
        }
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding() {
        let lits: Vec<String> = (1..=11).map(|i| format!("v{i}")).collect();
        assert_eq!(
            bind("a = $1 AND b = $11 || $2", &lits),
            "a = v1 AND b = v11 || v2"
        );
        assert_eq!(bind("x $9 $12", &lits[..2]), "x $9 $12");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }
}
