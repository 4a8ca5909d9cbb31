//! The scanner behind [`super::split`]: tokens of a script (words, quoted identifiers,
//! strings, dollar quotes, comments, operators, punctuation) and where an unclosed one
//! began, following PostgreSQL's `scan.l`.

use super::{line_at_offset, SplitError};

/// What a token is, as far as statement splitting and simple classification care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A bare identifier or keyword: `select`, `Foo`, `a$b`, `été`.
    Word,
    /// `"..."` or `U&"..."`.
    QuotedIdent,
    /// A string constant: `'...'`, `E'...'`, `B'...'`, `X'...'`, `N'...'`, `U&'...'`
    /// (including continuation segments on following lines), or a dollar-quoted
    /// `$tag$...$tag$` (its text starts with `$`).
    String,
    /// A numeric constant: `42`, `1.5e-3`, `.5`, `0x1F`, `1_000`.
    Number,
    /// A positional parameter such as `$1`.
    Param,
    /// A run of operator characters such as `=`, `<>`, `||`, `->>`, `::` is two `Punct`.
    Operator,
    /// Any other single character: `(`, `)`, `,`, `[`, `]`, `.`, `:`, or a `$` that opens
    /// nothing.
    Punct,
    /// `;` outside any string, identifier or comment.
    Semicolon,
}

/// One token: comments and whitespace never appear as tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub kind: TokenKind,
    /// The token exactly as written, quotes and prefixes included.
    pub text: &'a str,
    /// Byte offset of `text` within the tokenized input.
    pub offset: usize,
}

impl Token<'_> {
    /// Byte offset just past the token.
    pub fn end(&self) -> usize {
        self.offset + self.text.len()
    }

    /// Whether this is the bare word `keyword`, compared case-insensitively; a quoted
    /// `"select"` never is a keyword.
    pub fn is_keyword(&self, keyword: &str) -> bool {
        self.kind == TokenKind::Word && self.text.eq_ignore_ascii_case(keyword)
    }

    /// The identifier this token names, as the server would see it: bare words are folded
    /// to lower case (ASCII only, like PostgreSQL with UTF-8), quoted identifiers lose their
    /// quotes and `""` doubling. `U&"..."` escapes are not decoded. `None` for other kinds.
    pub fn ident(&self) -> Option<String> {
        match self.kind {
            TokenKind::Word => Some(self.text.to_ascii_lowercase()),
            TokenKind::QuotedIdent => {
                let text = self.text;
                let quoted = if text.starts_with(['u', 'U']) {
                    text.get(2..)?
                } else {
                    text
                };
                let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
                Some(inner.replace("\"\"", "\""))
            }
            _ => None,
        }
    }
}

/// Tokens of `script`, skipping whitespace and comments.
///
/// The iterator never fails: an unclosed string, quoted identifier or dollar quote comes
/// out as one last token running to the end of the input, and an unclosed block comment
/// just ends the stream. [`Tokens::error`] tells afterwards whether that happened.
pub fn tokens(script: &str) -> Tokens<'_> {
    Tokens {
        src: script,
        pos: 0,
        unclosed: None,
    }
}

/// Iterator returned by [`tokens`].
#[derive(Debug, Clone)]
pub struct Tokens<'a> {
    src: &'a str,
    pos: usize,
    unclosed: Option<Unclosed>,
}

/// A construct that was still open at the end of input, by the offset where it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unclosed {
    String(usize),
    QuotedIdent(usize),
    BlockComment(usize),
    /// `tag_end` is the offset of the delimiter's second `$`.
    DollarQuote {
        offset: usize,
        tag_end: usize,
    },
}

impl Tokens<'_> {
    /// A possibly schema-qualified name whose first part is `first`, the `.part`s that
    /// follow it read from here (after a dot any keyword is a valid name part, ON
    /// included): the parts joined by `.`, each folded or unquoted as the server does.
    pub fn qualified_name(&mut self, first: &Token<'_>) -> Option<String> {
        let mut name = first.ident()?;
        loop {
            let mut look = self.clone();
            match look.next() {
                Some(t) if t.kind == TokenKind::Punct && t.text == "." => {
                    let part = look.next()?.ident()?;
                    name.push('.');
                    name.push_str(&part);
                    *self = look;
                }
                _ => break,
            }
        }
        Some(name)
    }

    /// Goes on at byte `pos`: the splitter skips a `COPY ... FROM stdin` data block, which
    /// is data, not SQL.
    pub(super) fn resume_at(&mut self, pos: usize) {
        self.pos = pos;
    }

    /// Why the input ended inside a string, quoted identifier, dollar quote or block
    /// comment, once iteration has reached that point; `None` otherwise.
    pub fn error(&self) -> Option<SplitError> {
        let (what, offset) = match self.unclosed? {
            Unclosed::String(offset) => ("string literal", offset),
            Unclosed::QuotedIdent(offset) => ("quoted identifier", offset),
            Unclosed::BlockComment(offset) => ("block comment", offset),
            Unclosed::DollarQuote { offset, tag_end } => {
                return Some(SplitError::UnterminatedDollarQuote {
                    tag: self.src.get(offset + 1..tag_end).unwrap_or("").to_owned(),
                    line: line_at_offset(self.src, offset),
                });
            }
        };
        Some(SplitError::Unterminated {
            what,
            line: line_at_offset(self.src, offset),
        })
    }

    /// Moves past whitespace and comments; the offset of the next token, if any.
    fn skip_trivia(&mut self) -> Option<usize> {
        let bytes = self.src.as_bytes();
        let mut i = self.pos;
        // Editors on Windows like to start files with a byte order mark; it is not SQL.
        if i == 0 && self.src.starts_with('\u{feff}') {
            i = '\u{feff}'.len_utf8();
        }
        while let Some(&b) = bytes.get(i) {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => i += 1,
                b'-' if at(bytes, i + 1) == b'-' => i = line_comment_end(bytes, i + 2),
                b'/' if at(bytes, i + 1) == b'*' => match block_comment_end(bytes, i) {
                    Some(end) => i = end,
                    None => {
                        self.unclosed = Some(Unclosed::BlockComment(i));
                        break;
                    }
                },
                _ => {
                    self.pos = i;
                    return Some(i);
                }
            }
        }
        self.pos = bytes.len();
        None
    }

    /// Kind and end offset of the token starting at `start`.
    fn scan(&mut self, start: usize) -> (TokenKind, usize) {
        let bytes = self.src.as_bytes();
        let next = at(bytes, start + 1);
        match at(bytes, start) {
            b';' => (TokenKind::Semicolon, start + 1),
            b'\'' => self.quoted_string(start, start, false),
            b'"' => self.quoted_ident(start, start),
            b'$' => self.dollar(start),
            // Prefixed strings only exist at the start of a token: in `somee'x'` the
            // identifier rule has already taken the `e`.
            b'e' | b'E' if next == b'\'' => self.quoted_string(start, start + 1, true),
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if next == b'\'' => {
                self.quoted_string(start, start + 1, false)
            }
            b'u' | b'U' if next == b'&' && at(bytes, start + 2) == b'\'' => {
                self.quoted_string(start, start + 2, false)
            }
            b'u' | b'U' if next == b'&' && at(bytes, start + 2) == b'"' => {
                self.quoted_ident(start, start + 2)
            }
            b'0'..=b'9' => (TokenKind::Number, number_end(bytes, start)),
            b'.' if next.is_ascii_digit() => (TokenKind::Number, number_end(bytes, start)),
            b if is_ident_start(b) => {
                (TokenKind::Word, scan_while(bytes, start + 1, is_ident_cont))
            }
            b if is_op_char(b) => (TokenKind::Operator, operator_end(bytes, start)),
            _ => (TokenKind::Punct, start + 1),
        }
    }

    /// A single-quoted string whose opening quote is at `quote` (after any prefix at `start`).
    fn quoted_string(&mut self, start: usize, quote: usize, backslash: bool) -> (TokenKind, usize) {
        let bytes = self.src.as_bytes();
        let mut i = quote + 1;
        loop {
            match bytes.get(i) {
                None => {
                    self.unclosed = Some(Unclosed::String(start));
                    return (TokenKind::String, bytes.len());
                }
                Some(b'\\') if backslash => i += 2,
                Some(b'\'') if at(bytes, i + 1) == b'\'' => i += 2,
                Some(b'\'') => match quote_continuation(bytes, i + 1) {
                    // The continuation keeps the escape rules of the first segment, which
                    // matters for `E'...'\n'...\'...'`.
                    Some(next_quote) => i = next_quote + 1,
                    None => return (TokenKind::String, i + 1),
                },
                Some(_) => i += 1,
            }
        }
    }

    /// A double-quoted identifier whose opening quote is at `quote`.
    fn quoted_ident(&mut self, start: usize, quote: usize) -> (TokenKind, usize) {
        let bytes = self.src.as_bytes();
        let mut i = quote + 1;
        loop {
            match bytes.get(i) {
                None => {
                    self.unclosed = Some(Unclosed::QuotedIdent(start));
                    return (TokenKind::QuotedIdent, bytes.len());
                }
                Some(b'"') if at(bytes, i + 1) == b'"' => i += 2,
                Some(b'"') => return (TokenKind::QuotedIdent, i + 1),
                Some(_) => i += 1,
            }
        }
    }

    /// `$1`, `$$...$$`, `$tag$...$tag$`, or a lone `$`.
    fn dollar(&mut self, start: usize) -> (TokenKind, usize) {
        let src = self.src;
        let bytes = src.as_bytes();
        let mut i = start + 1;
        if at(bytes, i).is_ascii_digit() {
            return (
                TokenKind::Param,
                scan_while(bytes, i, |b| b.is_ascii_digit()),
            );
        }
        if is_ident_start(at(bytes, i)) {
            i = scan_while(bytes, i + 1, is_dollar_tag_cont);
        }
        if at(bytes, i) != b'$' {
            // Like the server: `$x` without a closing `$` opens nothing, and `x` is rescanned.
            return (TokenKind::Punct, start + 1);
        }
        let body = i + 1;
        let delimiter = &src[start..body];
        // Searching for the exact delimiter is equivalent to the server's rule of
        // matching every `$tag$` inside the body and giving back the last `$` of a
        // mismatch, so `$fn$ $$ $a$fn$` closes at the final `$fn$`.
        match src[body..].find(delimiter) {
            Some(found) => (TokenKind::String, body + found + delimiter.len()),
            None => {
                self.unclosed = Some(Unclosed::DollarQuote {
                    offset: start,
                    tag_end: i,
                });
                (TokenKind::String, bytes.len())
            }
        }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let start = self.skip_trivia()?;
        let (kind, end) = self.scan(start);
        self.pos = end;
        Some(Token {
            kind,
            text: &self.src[start..end],
            offset: start,
        })
    }
}

/// The byte at `i`, or NUL past the end; callers only compare against non-NUL bytes.
pub(super) fn at(bytes: &[u8], i: usize) -> u8 {
    bytes.get(i).copied().unwrap_or(0)
}

fn scan_while(bytes: &[u8], mut i: usize, pred: impl Fn(u8) -> bool) -> usize {
    while bytes.get(i).is_some_and(|&b| pred(b)) {
        i += 1;
    }
    i
}

/// Bytes >= 0x80 count as letters, exactly as in the server's scanner; that is also what
/// keeps every multi-byte character inside a single token.
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Unlike identifiers, dollar-quote tags cannot contain `$`.
fn is_dollar_tag_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

fn is_op_char(b: u8) -> bool {
    matches!(
        b,
        b'~' | b'!'
            | b'@'
            | b'#'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'<'
            | b'>'
            | b'='
    )
}

/// The server stops an operator where `--` or `/*` begins, so `1 +--x` is `+` and a comment.
fn operator_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while is_op_char(at(bytes, i)) {
        let pair = (at(bytes, i), at(bytes, i + 1));
        if pair == (b'-', b'-') || pair == (b'/', b'*') {
            break;
        }
        i += 1;
    }
    i
}

fn number_end(bytes: &[u8], start: usize) -> usize {
    let digit = |b: u8| b.is_ascii_digit() || b == b'_';
    let radix_digit = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    if at(bytes, start) == b'0'
        && matches!(
            at(bytes, start + 1),
            b'x' | b'X' | b'o' | b'O' | b'b' | b'B'
        )
        && radix_digit(at(bytes, start + 2))
    {
        return scan_while(bytes, start + 2, radix_digit);
    }
    let mut i = scan_while(bytes, start, digit);
    // `1..2` is not a number followed by `.2`; leave both dots alone.
    if at(bytes, i) == b'.' && at(bytes, i + 1) != b'.' {
        i = scan_while(bytes, i + 1, digit);
    }
    if matches!(at(bytes, i), b'e' | b'E') {
        let mut j = i + 1;
        if matches!(at(bytes, j), b'+' | b'-') {
            j += 1;
        }
        if at(bytes, j).is_ascii_digit() {
            i = scan_while(bytes, j, digit);
        }
    }
    i
}

/// End of a `--` comment whose text starts at `i`: the newline itself is whitespace.
pub(super) fn line_comment_end(bytes: &[u8], i: usize) -> usize {
    scan_while(bytes, i, |b| b != b'\n' && b != b'\r')
}

/// End of the (nesting) block comment opening at `start`, or `None` if it never closes.
pub(super) fn block_comment_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut depth = 1usize;
    let mut i = start + 2;
    while i < bytes.len() {
        match (bytes[i], at(bytes, i + 1)) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The server glues `'a'` and `'b'` into one string when only whitespace holding a newline
/// (and `--` comments) separates them. Returns the offset of the continuing quote.
fn quote_continuation(bytes: &[u8], mut i: usize) -> Option<usize> {
    let mut saw_newline = false;
    loop {
        match *bytes.get(i)? {
            b' ' | b'\t' | 0x0b | 0x0c => i += 1,
            b'\n' | b'\r' => {
                saw_newline = true;
                i += 1;
            }
            b'-' if at(bytes, i + 1) == b'-' => i = line_comment_end(bytes, i + 2),
            b'\'' if saw_newline => return Some(i),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::split;
    use super::*;

    // --- tokens -----------------------------------------------------------------------------

    #[test]
    fn token_kinds_and_offsets() {
        let toks: Vec<Token<'_>> = tokens("select a.b::int, 1.5e-3, .5, 0x1F <> $1;").collect();
        let got: Vec<(TokenKind, &str)> = toks.iter().map(|t| (t.kind, t.text)).collect();
        use TokenKind::*;
        assert_eq!(
            got,
            vec![
                (Word, "select"),
                (Word, "a"),
                (Punct, "."),
                (Word, "b"),
                (Punct, ":"),
                (Punct, ":"),
                (Word, "int"),
                (Punct, ","),
                (Number, "1.5e-3"),
                (Punct, ","),
                (Number, ".5"),
                (Punct, ","),
                (Number, "0x1F"),
                (Operator, "<>"),
                (Param, "$1"),
                (Semicolon, ";"),
            ]
        );
        assert_eq!(toks[3].offset, 9);
        assert!(toks[0].is_keyword("SELECT"));
    }

    #[test]
    fn quoted_keyword_is_not_a_keyword() {
        let t = tokens("\"select\"").next().unwrap();
        assert_eq!(t.kind, TokenKind::QuotedIdent);
        assert!(!t.is_keyword("select"));
        assert_eq!(t.ident().as_deref(), Some("select"));
        assert_eq!(
            tokens("U&\"d\\0061t\"")
                .next()
                .and_then(|t| t.ident())
                .as_deref(),
            Some("d\\0061t")
        );
    }

    #[test]
    fn tokens_report_unclosed_constructs_after_iteration() {
        let mut toks = tokens("select 'abc");
        let collected: Vec<_> = toks.by_ref().map(|t| t.text).collect();
        assert_eq!(collected, vec!["select", "'abc"]);
        assert_eq!(
            toks.error(),
            Some(SplitError::Unterminated {
                what: "string literal",
                line: 1
            })
        );
        let mut fine = tokens("select 1;");
        assert_eq!(fine.by_ref().count(), 3);
        assert_eq!(fine.error(), None);
    }

    #[test]
    fn statement_tokens_are_relative_to_the_statement() {
        let statements = split("select 1;\nselect x;").unwrap();
        let toks: Vec<_> = statements[1].tokens().collect();
        assert_eq!(toks[1].offset, 7);
        assert_eq!(toks[1].text, "x");
    }
}
