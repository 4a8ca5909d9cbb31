//! Splitting a patch body into statements: comments, strings, quoted identifiers and dollar quotes.
//!
//! The rules follow PostgreSQL's own scanner (`scan.l`) closely enough that every `;` the
//! server would treat as a statement boundary is one here, and no other: nested block
//! comments, `''`/`""` doubling, backslash escapes only in `E'...'` strings
//! (`standard_conforming_strings` is assumed on, the default since 9.1), string continuation
//! across newlines, and `$tag$` quotes whose closing tag must match exactly. SQL-standard
//! routine bodies (`BEGIN ATOMIC ... END`) are kept whole with the same heuristic psql uses.
//!
//! Deliberately not handled: psql meta-commands and `:variables` (patches are sent to the
//! server, never through psql), and a `;` inside parentheses, which psql would keep inside
//! the statement; only a multi-action `CREATE RULE ... DO (a; b)` needs that.
//!
//! Everything runs in one pass over the bytes without allocating per token. Token
//! boundaries always sit next to an ASCII byte (every byte >= 0x80 belongs to an identifier,
//! a string, a quoted identifier or a comment), so byte offsets are always char boundaries.

use std::fmt;

/// One statement of a script, as it appears in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement<'a> {
    /// The statement text from its first significant character (leading whitespace and
    /// comments before it excluded) through its terminating `;` inclusive.
    pub text: &'a str,
    /// Byte offset of `text` within the script.
    pub offset: usize,
    /// 1-based line number where `text` starts.
    pub line: usize,
}

impl<'a> Statement<'a> {
    /// Byte offset within the script just past the terminating `;`.
    pub fn end(&self) -> usize {
        self.offset + self.text.len()
    }

    /// The tokens of this statement; their offsets are relative to `text`.
    pub fn tokens(&self) -> Tokens<'a> {
        tokens(self.text)
    }

    /// See [`leading_keywords`].
    pub fn leading_keywords(&self, n: usize) -> Vec<String> {
        leading_keywords(self.text, n)
    }

    /// The script line of a 1-based character position the server reported for this
    /// statement when it was sent on its own.
    pub fn script_line_at_char_position(&self, position: usize) -> usize {
        self.line + line_at_char_position(self.text, position) - 1
    }
}

/// Why a script could not be split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// The script holds no statement at all (only whitespace/comments, or nothing).
    Empty,
    /// The last statement is not terminated by `;` (line = where that statement starts).
    MissingTerminator { line: usize },
    /// A string, quoted identifier or block comment is never closed (line = where it
    /// opened). `what` is "string literal", "quoted identifier" or "block comment".
    Unterminated { what: &'static str, line: usize },
    /// A dollar quote is never closed (line = where it opened). Kept apart from
    /// `Unterminated` because the tag is part of the message and is not `'static`;
    /// `tag` is empty for `$$`.
    UnterminatedDollarQuote { tag: String, line: usize },
}

impl SplitError {
    /// The 1-based line the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            SplitError::Empty => None,
            SplitError::MissingTerminator { line }
            | SplitError::Unterminated { line, .. }
            | SplitError::UnterminatedDollarQuote { line, .. } => Some(*line),
        }
    }
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitError::Empty => {
                f.write_str("no statements (the file is empty or holds only comments)")
            }
            SplitError::MissingTerminator { line } => {
                write!(
                    f,
                    "the last statement (line {line}) is not terminated by `;`"
                )
            }
            SplitError::Unterminated { what, line } => {
                write!(f, "unterminated {what} opened on line {line}")
            }
            SplitError::UnterminatedDollarQuote { tag, line } => {
                write!(
                    f,
                    "unterminated dollar-quoted string ${tag}$ opened on line {line}"
                )
            }
        }
    }
}

impl std::error::Error for SplitError {}

/// Splits a script into its statements.
///
/// Empty statements (a `;` with nothing significant before it) are dropped. Whitespace and
/// comments after the last `;` are fine; anything else there is a
/// [`SplitError::MissingTerminator`].
pub fn split(script: &str) -> Result<Vec<Statement<'_>>, SplitError> {
    let mut lexer = tokens(script);
    let mut lines = LineCounter::new();
    let mut statements = Vec::new();
    let mut current: Option<Pending> = None;
    for token in lexer.by_ref() {
        if current.is_none() && token.kind == TokenKind::Semicolon {
            continue;
        }
        let pending = current.get_or_insert_with(|| Pending::new(token.offset));
        pending.observe(&token);
        if token.kind == TokenKind::Semicolon && pending.atomic_depth == 0 {
            let offset = pending.start;
            statements.push(Statement {
                text: &script[offset..token.end()],
                offset,
                line: lines.line_at(script, offset),
            });
            current = None;
        }
    }
    // An unclosed construct swallows the rest of the script, so it explains a missing
    // terminator better than the terminator check would.
    if let Some(err) = lexer.error() {
        return Err(err);
    }
    if let Some(pending) = current {
        return Err(SplitError::MissingTerminator {
            line: lines.line_at(script, pending.start),
        });
    }
    if statements.is_empty() {
        return Err(SplitError::Empty);
    }
    Ok(statements)
}

/// 1-based line of a 1-based *character* position into `text` (PostgreSQL error positions
/// count characters, not bytes). Positions past the end give the last line, i.e. the line
/// of the last character, so a trailing newline does not add a line. Position 0 is
/// treated as 1.
pub fn line_at_char_position(text: &str, position: usize) -> usize {
    let target = position.saturating_sub(1);
    let mut line = 1;
    let mut line_of_previous = 1;
    for (index, c) in text.chars().enumerate() {
        if index == target {
            return line;
        }
        line_of_previous = line;
        if c == '\n' {
            line += 1;
        }
    }
    line_of_previous
}

/// 1-based line of a byte offset into `text`; offsets past the end give the line of the end.
pub fn line_at_offset(text: &str, offset: usize) -> usize {
    let bytes = text.as_bytes();
    1 + count_newlines(&bytes[..offset.min(bytes.len())])
}

/// The first few words of a statement, uppercased, with comments skipped. Only the leading
/// run of bare words counts: the first token that is not one (a quoted identifier, string,
/// number, punctuation, ...) ends the list, so `create index concurrently "Foo" on t` gives
/// at most `["CREATE", "INDEX", "CONCURRENTLY"]`. That keeps the result a prefix of the
/// statement's keywords instead of splicing words from after a quoted name.
pub fn leading_keywords(statement: &str, n: usize) -> Vec<String> {
    tokens(statement)
        .take_while(|t| t.kind == TokenKind::Word)
        .take(n)
        .map(|t| t.text.to_ascii_uppercase())
        .collect()
}

/// The index name of `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON ...`.
///
/// Bare names are folded to lower case and quoted ones unquoted, as PostgreSQL does; a
/// qualified name keeps its parts joined by `.` (`s.idx` gives `"s.idx"`). `None` if the
/// statement is not a concurrent index build or names no index (`... CONCURRENTLY ON t`).
/// Names are not truncated to 63 bytes the way the server would.
pub fn create_index_concurrently_name(statement: &str) -> Option<String> {
    let mut toks = tokens(statement);
    fn expect(toks: &mut Tokens<'_>, keyword: &str) -> Option<()> {
        toks.next().filter(|t| t.is_keyword(keyword)).map(|_| ())
    }
    expect(&mut toks, "create")?;
    let mut look = toks.clone();
    if look.next().is_some_and(|t| t.is_keyword("unique")) {
        toks = look;
    }
    expect(&mut toks, "index")?;
    expect(&mut toks, "concurrently")?;
    // IF is not reserved, so an index may be called `if`; only IF NOT EXISTS is the clause.
    let mut look = toks.clone();
    if expect(&mut look, "if").is_some()
        && expect(&mut look, "not").is_some()
        && expect(&mut look, "exists").is_some()
    {
        toks = look;
    }
    let first = toks.next()?;
    // ON is reserved, so as a bare word it starts the table clause rather than naming the index.
    if first.is_keyword("on") {
        return None;
    }
    let mut name = first.ident()?;
    loop {
        let mut look = toks.clone();
        match look.next() {
            Some(t) if t.kind == TokenKind::Punct && t.text == "." => {
                // After a dot any keyword is a valid name part, ON included.
                let part = look.next()?.ident()?;
                name.push('.');
                name.push_str(&part);
                toks = look;
            }
            _ => break,
        }
    }
    if toks.error().is_some() {
        return None;
    }
    Some(name)
}

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

/// The statement being collected by [`split`], with just enough state to see where a
/// `BEGIN ATOMIC ... END` routine body ends.
struct Pending {
    start: usize,
    head: Head,
    parens: usize,
    atomic_depth: usize,
    after_begin: bool,
}

/// How far the statement's first words match `CREATE [OR REPLACE] FUNCTION|PROCEDURE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Start,
    Create,
    CreateOr,
    CreateOrReplace,
    Routine,
    Other,
}

impl Pending {
    fn new(start: usize) -> Self {
        Pending {
            start,
            head: Head::Start,
            parens: 0,
            atomic_depth: 0,
            after_begin: false,
        }
    }

    /// Like psql, only words outside parentheses count, so a parameter or column named
    /// `begin`, `case` or `end` in the signature or in a subexpression changes nothing, and
    /// CASE ... END inside the body is counted so its END does not close the body.
    fn observe(&mut self, token: &Token<'_>) {
        self.head = match self.head {
            Head::Start if token.is_keyword("create") => Head::Create,
            Head::Create if token.is_keyword("or") => Head::CreateOr,
            Head::CreateOr if token.is_keyword("replace") => Head::CreateOrReplace,
            Head::Create | Head::CreateOrReplace
                if token.is_keyword("function") || token.is_keyword("procedure") =>
            {
                Head::Routine
            }
            Head::Routine => Head::Routine,
            _ => Head::Other,
        };
        if self.head != Head::Routine {
            return;
        }
        let after_begin = std::mem::take(&mut self.after_begin);
        match token.kind {
            TokenKind::Punct if token.text == "(" => self.parens += 1,
            TokenKind::Punct if token.text == ")" => self.parens = self.parens.saturating_sub(1),
            TokenKind::Word if self.parens == 0 => {
                if after_begin && token.is_keyword("atomic") {
                    self.atomic_depth += 1;
                } else if token.is_keyword("begin") {
                    self.after_begin = true;
                } else if self.atomic_depth > 0 && token.is_keyword("case") {
                    self.atomic_depth += 1;
                } else if self.atomic_depth > 0 && token.is_keyword("end") {
                    self.atomic_depth -= 1;
                }
            }
            _ => {}
        }
    }
}

/// Line numbers for increasing offsets without rescanning the script from the start.
struct LineCounter {
    pos: usize,
    line: usize,
}

impl LineCounter {
    fn new() -> Self {
        LineCounter { pos: 0, line: 1 }
    }

    fn line_at(&mut self, script: &str, offset: usize) -> usize {
        let bytes = script.as_bytes();
        let offset = offset.min(bytes.len());
        if offset < self.pos {
            return line_at_offset(script, offset);
        }
        self.line += count_newlines(&bytes[self.pos..offset]);
        self.pos = offset;
        self.line
    }
}

fn count_newlines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// The byte at `i`, or NUL past the end; callers only compare against non-NUL bytes.
fn at(bytes: &[u8], i: usize) -> u8 {
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
fn line_comment_end(bytes: &[u8], i: usize) -> usize {
    scan_while(bytes, i, |b| b != b'\n' && b != b'\r')
}

/// End of the (nesting) block comment opening at `start`, or `None` if it never closes.
fn block_comment_end(bytes: &[u8], start: usize) -> Option<usize> {
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
    use super::*;

    fn texts(script: &str) -> Vec<&str> {
        match split(script) {
            Ok(statements) => statements.iter().map(|s| s.text).collect(),
            Err(err) => panic!("split failed: {err}"),
        }
    }

    fn kinds(script: &str) -> Vec<(TokenKind, &str)> {
        tokens(script).map(|t| (t.kind, t.text)).collect()
    }

    fn err(script: &str) -> SplitError {
        match split(script) {
            Ok(statements) => panic!("expected an error, got {statements:?}"),
            Err(err) => err,
        }
    }

    // --- basic splitting -------------------------------------------------------------

    #[test]
    fn splits_simple_statements() {
        assert_eq!(
            texts("select 1;\nselect 2;\n"),
            vec!["select 1;", "select 2;"]
        );
    }

    #[test]
    fn statement_offsets_and_lines() {
        let script = "-- header\n\nselect 1;  select 2;\n\n  /* c */ update t\n set a = 1;\n";
        let statements = split(script).unwrap();
        assert_eq!(statements.len(), 3);
        for s in &statements {
            assert_eq!(&script[s.offset..s.end()], s.text);
            assert_eq!(s.line, line_at_offset(script, s.offset));
        }
        assert_eq!((statements[0].offset, statements[0].line), (11, 3));
        assert_eq!((statements[1].offset, statements[1].line), (22, 3));
        assert_eq!(statements[2].text, "update t\n set a = 1;");
        assert_eq!(statements[2].line, 5);
    }

    #[test]
    fn multiple_statements_on_one_line() {
        assert_eq!(
            texts("select 1;select 2 ;"),
            vec!["select 1;", "select 2 ;"]
        );
    }

    #[test]
    fn empty_statements_are_dropped() {
        assert_eq!(
            texts(";;select 1;;\n;/* x */;select 2;;"),
            vec!["select 1;", "select 2;"]
        );
    }

    // --- comments ----------------------------------------------------------------------

    #[test]
    fn leading_comments_are_not_part_of_the_statement() {
        let script = "-- one; two\n/* three; 'four */\n  create table t (a int);";
        let statements = split(script).unwrap();
        assert_eq!(statements[0].text, "create table t (a int);");
        assert_eq!(statements[0].line, 3);
    }

    #[test]
    fn line_comment_with_semicolon_and_quote_inside_statement() {
        assert_eq!(
            texts("select 1 -- it's; not the end\n  + 2;\nselect 3;"),
            vec!["select 1 -- it's; not the end\n  + 2;", "select 3;"]
        );
    }

    #[test]
    fn block_comment_with_semicolon_and_quote_inside_statement() {
        assert_eq!(
            texts("select /* don't; stop */ 1;"),
            vec!["select /* don't; stop */ 1;"]
        );
    }

    #[test]
    fn block_comments_nest() {
        assert_eq!(
            texts("/* a /* b; */ c; ' */ select 1; /* x /* y */ z; */ select 2;"),
            vec!["select 1;", "select 2;"]
        );
    }

    #[test]
    fn block_comment_edge_shapes() {
        // `/*/` does not close itself, `/**/` is complete, `**/` closes.
        assert_eq!(
            texts("/*/ ; */ select 1; /**/ select 2; /*** ; ***/ select 3;"),
            vec!["select 1;", "select 2;", "select 3;"]
        );
    }

    #[test]
    fn trailing_comments_and_whitespace_after_last_statement() {
        assert_eq!(
            texts("select 1; -- done\n/* really; done */\n\n  "),
            vec!["select 1;"]
        );
        assert_eq!(texts("select 1; -- no newline at end"), vec!["select 1;"]);
    }

    #[test]
    fn line_comment_ending_in_carriage_return() {
        assert_eq!(texts("select 1 -- c\r+ 2;"), vec!["select 1 -- c\r+ 2;"]);
    }

    #[test]
    fn comment_start_inside_operator() {
        assert_eq!(
            kinds("1 +-- c;\n2 */* c; */3"),
            vec![
                (TokenKind::Number, "1"),
                (TokenKind::Operator, "+"),
                (TokenKind::Number, "2"),
                (TokenKind::Operator, "*"),
                (TokenKind::Number, "3"),
            ]
        );
    }

    // --- strings -----------------------------------------------------------------------

    #[test]
    fn string_with_semicolon() {
        assert_eq!(
            texts("insert into t values ('a;b');select 1;"),
            vec!["insert into t values ('a;b');", "select 1;"]
        );
    }

    #[test]
    fn string_with_doubled_quote() {
        assert_eq!(
            texts("select 'it''s; fine', ''''; select 2;"),
            vec!["select 'it''s; fine', '''';", "select 2;"]
        );
    }

    #[test]
    fn e_string_backslash_escapes_quote() {
        assert_eq!(
            texts("select E'it\\'s; ok'; select e'\\\\'; select 3;"),
            vec!["select E'it\\'s; ok';", "select e'\\\\';", "select 3;"]
        );
    }

    #[test]
    fn e_string_with_doubled_quote() {
        assert_eq!(texts("select E'a''b;c';"), vec!["select E'a''b;c';"]);
    }

    #[test]
    fn plain_string_backslash_is_literal() {
        // With standard_conforming_strings the string is `C:\`, then a new statement.
        assert_eq!(
            texts("select 'C:\\'; select 2;"),
            vec!["select 'C:\\';", "select 2;"]
        );
    }

    #[test]
    fn e_prefix_only_at_token_start() {
        // `somee` is an identifier, so the following string is a plain one.
        assert_eq!(
            kinds("somee'\\';"),
            vec![
                (TokenKind::Word, "somee"),
                (TokenKind::String, "'\\'"),
                (TokenKind::Semicolon, ";"),
            ]
        );
    }

    #[test]
    fn prefixed_strings() {
        assert_eq!(
            kinds("B'1;0' x'ff' N'é;' U&'d\\0061t;a' u&\"d;\""),
            vec![
                (TokenKind::String, "B'1;0'"),
                (TokenKind::String, "x'ff'"),
                (TokenKind::String, "N'é;'"),
                (TokenKind::String, "U&'d\\0061t;a'"),
                (TokenKind::QuotedIdent, "u&\"d;\""),
            ]
        );
    }

    #[test]
    fn string_continuation_keeps_e_string_rules() {
        // The second segment continues the E string, so its `\'` is an escape.
        let script = "select E'a'\n  -- note\n  'b\\';c';\nselect 2;";
        assert_eq!(
            texts(script),
            vec!["select E'a'\n  -- note\n  'b\\';c';", "select 2;"]
        );
    }

    #[test]
    fn strings_on_one_line_do_not_continue() {
        assert_eq!(
            kinds("'a' 'b'"),
            vec![(TokenKind::String, "'a'"), (TokenKind::String, "'b'")]
        );
    }

    // --- quoted identifiers -------------------------------------------------------------

    #[test]
    fn quoted_identifier_with_semicolon_and_doubled_quote() {
        assert_eq!(
            texts("create table \"a;b\"\"c\" (\"x'\" int); select 1;"),
            vec!["create table \"a;b\"\"c\" (\"x'\" int);", "select 1;"]
        );
        let t = tokens("\"a;b\"\"c\"").next().unwrap();
        assert_eq!(t.ident().as_deref(), Some("a;b\"c"));
    }

    // --- dollar quotes --------------------------------------------------------------------

    #[test]
    fn dollar_quote_with_semicolons() {
        assert_eq!(
            texts("select $$a; 'b; \"c$$; select 2;"),
            vec!["select $$a; 'b; \"c$$;", "select 2;"]
        );
    }

    #[test]
    fn plpgsql_function_with_tagged_body_and_nested_dollar_quotes() {
        let script = r#"
CREATE OR REPLACE FUNCTION f(p int) RETURNS int LANGUAGE plpgsql AS $fn$
DECLARE
  q text := $$it's; quoted$$;
BEGIN
  EXECUTE $q$select 1; $q$;
  -- a comment; with a 'quote
  RETURN p + 1;
END;
$fn$;
select f(1);
"#;
        let statements = split(script).unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0].line, 2);
        assert!(statements[0].text.ends_with("END;\n$fn$;"));
        assert_eq!(
            (statements[1].text, statements[1].line),
            ("select f(1);", 11)
        );
    }

    #[test]
    fn comment_markers_inside_quotes_are_content() {
        assert_eq!(
            texts("select $$ -- $$, '/*', \"--\"; select 2;"),
            vec!["select $$ -- $$, '/*', \"--\";", "select 2;"]
        );
    }

    #[test]
    fn plpgsql_function_body() {
        let script = "create function f() returns trigger language plpgsql as $body$\nbegin\n  new.x := 'a;b';\n  return new;\nend;\n$body$;\n\ncreate trigger t before insert on x for each row execute function f();\n";
        let statements = split(script).unwrap();
        assert_eq!(statements.len(), 2);
        assert!(statements[0].text.ends_with("end;\n$body$;"));
        assert_eq!(statements[1].line, 8);
    }

    #[test]
    fn other_dollar_tags_inside_are_content() {
        assert_eq!(
            texts("select $fn$ $$ ; $a$ ; $fnx$ ; $Fn$ ; $a$fn$; select 2;"),
            vec!["select $fn$ $$ ; $a$ ; $fnx$ ; $Fn$ ; $a$fn$;", "select 2;"]
        );
    }

    #[test]
    fn do_block() {
        let script = "DO $$\nBEGIN\n  RAISE NOTICE 'x;y';\nEND\n$$;\nDO LANGUAGE plpgsql $do$ BEGIN NULL; END $do$;";
        let statements = split(script).unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[1].line, 6);
        assert!(statements[1].text.ends_with("END $do$;"));
    }

    #[test]
    fn positional_parameters_are_not_dollar_quotes() {
        let script = "PREPARE p(int, text) AS select $1, $2 || ';';\nEXECUTE p(1, 'a');";
        assert_eq!(
            texts(script),
            vec![
                "PREPARE p(int, text) AS select $1, $2 || ';';",
                "EXECUTE p(1, 'a');"
            ]
        );
        assert!(kinds("$12").contains(&(TokenKind::Param, "$12")));
    }

    #[test]
    fn dollar_inside_identifier_is_not_a_quote() {
        assert_eq!(
            texts("select a$b, x$$ from t; select 2;"),
            vec!["select a$b, x$$ from t;", "select 2;"]
        );
        assert_eq!(kinds("a$b$")[0], (TokenKind::Word, "a$b$"));
    }

    #[test]
    fn lone_dollar_opens_nothing() {
        assert_eq!(
            kinds("$x ;"),
            vec![
                (TokenKind::Punct, "$"),
                (TokenKind::Word, "x"),
                (TokenKind::Semicolon, ";"),
            ]
        );
    }

    #[test]
    fn dollar_tag_with_non_ascii_and_digits() {
        assert_eq!(
            texts("select $été1$ ; $été1$; select 2;"),
            vec!["select $été1$ ; $été1$;", "select 2;"]
        );
    }

    // --- BEGIN ATOMIC -----------------------------------------------------------------

    #[test]
    fn begin_atomic_function_body() {
        let script = "CREATE FUNCTION add(a int, b int) RETURNS int\n  LANGUAGE sql\n  BEGIN ATOMIC\n    SELECT a + b;\n    SELECT 1;\n  END;\nselect add(1, 2);";
        let statements = split(script).unwrap();
        assert_eq!(statements.len(), 2);
        assert!(statements[0].text.ends_with("END;"));
        assert_eq!(statements[1].text, "select add(1, 2);");
        assert_eq!(statements[1].line, 7);
    }

    #[test]
    fn begin_atomic_with_case_and_parenthesised_words() {
        let script = "create or replace procedure p(begin int, \"end\" int)\nbegin atomic\n  update t set x = case when y then 1 else 2 end;\n  select (case when true then 1 end);\n  insert into t values (1);\nend;\ncreate function g() returns int return 1;";
        let statements = split(script).unwrap();
        assert_eq!(statements.len(), 2);
        assert!(statements[0].text.ends_with("values (1);\nend;"));
        assert_eq!(
            statements[1].text,
            "create function g() returns int return 1;"
        );
    }

    #[test]
    fn begin_atomic_with_comments_between_keywords() {
        let script = "CREATE /* c */ OR REPLACE -- x\n FUNCTION f() RETURNS int BEGIN /* y */ ATOMIC SELECT 1; END; SELECT 2;";
        assert_eq!(split(script).unwrap().len(), 2);
    }

    #[test]
    fn transaction_begin_and_end_are_ordinary_statements() {
        assert_eq!(
            texts("BEGIN; select 1; END; begin atomic; select 2;"),
            vec!["BEGIN;", "select 1;", "END;", "begin atomic;", "select 2;"]
        );
    }

    #[test]
    fn dollar_quoted_function_with_begin_in_body_is_unaffected() {
        let script = "create function f(begin int) returns int as $$ begin atomic end $$ language sql; select 1;";
        assert_eq!(split(script).unwrap().len(), 2);
    }

    #[test]
    fn unfinished_begin_atomic_is_a_missing_terminator() {
        let script = "select 0;\ncreate function f() returns int\nbegin atomic\n  select 1;\n";
        assert_eq!(err(script), SplitError::MissingTerminator { line: 2 });
    }

    // --- CREATE INDEX CONCURRENTLY ------------------------------------------------------

    #[test]
    fn create_index_concurrently_is_its_own_statement() {
        let script = "CREATE INDEX CONCURRENTLY idx_a ON t (a);\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"Idx;B\" ON t (b) WHERE b <> ';';\n";
        let statements = split(script).unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[1].line, 2);
        assert_eq!(
            create_index_concurrently_name(statements[1].text).as_deref(),
            Some("Idx;B")
        );
    }

    #[test]
    fn index_name_plain_and_folded() {
        assert_eq!(
            create_index_concurrently_name("create index concurrently Idx_A on t(a);").as_deref(),
            Some("idx_a")
        );
    }

    #[test]
    fn index_name_unique() {
        assert_eq!(
            create_index_concurrently_name("CREATE UNIQUE INDEX CONCURRENTLY u ON t(a);")
                .as_deref(),
            Some("u")
        );
    }

    #[test]
    fn index_name_if_not_exists() {
        assert_eq!(
            create_index_concurrently_name(
                "create index concurrently if not exists i2 on t using btree (a);"
            )
            .as_deref(),
            Some("i2")
        );
    }

    #[test]
    fn index_name_quoted() {
        assert_eq!(
            create_index_concurrently_name("create index concurrently \"My \"\"Idx\"\"\" on t(a);")
                .as_deref(),
            Some("My \"Idx\"")
        );
    }

    #[test]
    fn index_name_schema_qualified() {
        assert_eq!(
            create_index_concurrently_name("create index concurrently s.idx on s.t(a);").as_deref(),
            Some("s.idx")
        );
        assert_eq!(
            create_index_concurrently_name("create index concurrently \"S\".Idx on t(a);")
                .as_deref(),
            Some("S.idx")
        );
    }

    #[test]
    fn index_name_missing_or_not_a_concurrent_build() {
        assert_eq!(
            create_index_concurrently_name("create index concurrently on t(a);"),
            None
        );
        assert_eq!(
            create_index_concurrently_name("create unique index concurrently ON t(a);"),
            None
        );
        assert_eq!(
            create_index_concurrently_name("create index i on t(a);"),
            None
        );
        assert_eq!(
            create_index_concurrently_name("drop index concurrently i;"),
            None
        );
        assert_eq!(create_index_concurrently_name(""), None);
        assert_eq!(
            create_index_concurrently_name("create index concurrently \"unclosed on t(a);"),
            None
        );
    }

    #[test]
    fn index_name_with_comments_and_odd_names() {
        assert_eq!(
            create_index_concurrently_name(
                "create /* a */ index -- b\n concurrently /* c */ \"on\" on t(a);"
            )
            .as_deref(),
            Some("on")
        );
        // IF is not reserved: without NOT EXISTS it is the index name.
        assert_eq!(
            create_index_concurrently_name("create index concurrently if on t(a);").as_deref(),
            Some("if")
        );
    }

    // --- errors -----------------------------------------------------------------------

    #[test]
    fn unterminated_string() {
        assert_eq!(
            err("select 1;\nselect 'abc;\n\nselect 2;"),
            SplitError::Unterminated {
                what: "string literal",
                line: 2
            }
        );
    }

    #[test]
    fn unterminated_e_string_ending_in_backslash() {
        assert_eq!(
            err("select 1;\n\nselect E'abc\\';"),
            SplitError::Unterminated {
                what: "string literal",
                line: 3
            }
        );
    }

    #[test]
    fn unterminated_quoted_identifier() {
        assert_eq!(
            err("select \"a\"\"b;\nselect 1;"),
            SplitError::Unterminated {
                what: "quoted identifier",
                line: 1
            }
        );
    }

    #[test]
    fn unterminated_dollar_quotes_name_their_tag() {
        let e = err("select 1;\ncreate function f() as $fn$\nbegin\n  return $$x$$;\nend;\n$$;");
        assert_eq!(
            e,
            SplitError::UnterminatedDollarQuote {
                tag: "fn".into(),
                line: 2
            }
        );
        assert_eq!(
            e.to_string(),
            "unterminated dollar-quoted string $fn$ opened on line 2"
        );
        assert_eq!(
            err("\n\n\ndo $$ begin null; end;"),
            SplitError::UnterminatedDollarQuote {
                tag: String::new(),
                line: 4
            }
        );
    }

    #[test]
    fn unterminated_block_comment_reports_the_outer_opening() {
        let e = err("select 1;\n/* a\n/* b */\nselect 2;");
        assert_eq!(
            e,
            SplitError::Unterminated {
                what: "block comment",
                line: 2
            }
        );
        assert_eq!(e.to_string(), "unterminated block comment opened on line 2");
    }

    #[test]
    fn missing_terminator_reports_the_statement_start() {
        let e = err("select 1;\n-- next\nselect\n  2\n");
        assert_eq!(e, SplitError::MissingTerminator { line: 3 });
        assert_eq!(
            e.to_string(),
            "the last statement (line 3) is not terminated by `;`"
        );
        assert_eq!(err("select 1"), SplitError::MissingTerminator { line: 1 });
        assert_eq!(
            err("select 1; /* c */ select 2 -- ;"),
            SplitError::MissingTerminator { line: 1 }
        );
    }

    #[test]
    fn empty_scripts() {
        for script in [
            "",
            "   \n\t",
            "-- only a comment",
            "/* a */ -- b\n",
            ";",
            " ; ;\n",
        ] {
            assert_eq!(err(script), SplitError::Empty, "{script:?}");
        }
        assert_eq!(
            SplitError::Empty.to_string(),
            "no statements (the file is empty or holds only comments)"
        );
    }

    #[test]
    fn error_line_accessor() {
        assert_eq!(SplitError::Empty.line(), None);
        assert_eq!(SplitError::MissingTerminator { line: 4 }.line(), Some(4));
    }

    // --- encodings and line endings ---------------------------------------------------

    #[test]
    fn crlf_line_endings() {
        let script = "-- c\r\nselect 1;\r\n\r\nselect\r\n 'a;b';\r\n";
        let statements = split(script).unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!((statements[0].line, statements[0].text), (2, "select 1;"));
        assert_eq!(
            (statements[1].line, statements[1].text),
            (4, "select\r\n 'a;b';")
        );
        assert_eq!(
            err("select 1;\r\nselect 2\r\n"),
            SplitError::MissingTerminator { line: 2 }
        );
    }

    #[test]
    fn non_ascii_content() {
        let script = "-- commentaire: élève; 日本語\ncomment on table t is 'Ünïcödé; текст';\n/* ☃; */ select café from naïve;";
        let statements = split(script).unwrap();
        assert_eq!(statements.len(), 2);
        for s in &statements {
            assert!(script.is_char_boundary(s.offset));
            assert_eq!(&script[s.offset..s.end()], s.text);
        }
        assert_eq!(statements[1].text, "select café from naïve;");
        assert_eq!(statements[1].line, 3);
        assert_eq!(kinds("été;")[0], (TokenKind::Word, "été"));
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let script = "\u{feff}CREATE TABLE t (a int);";
        let statements = split(script).unwrap();
        assert_eq!(statements[0].offset, 3);
        assert_eq!(statements[0].leading_keywords(2), vec!["CREATE", "TABLE"]);
    }

    // --- positions ------------------------------------------------------------------------

    #[test]
    fn line_at_char_position_counts_characters() {
        let text = "select 'é';\nselect 'ü' +\n  x;";
        // Char 12 is the first newline; char 13 starts line 2.
        assert_eq!(line_at_char_position(text, 1), 1);
        assert_eq!(line_at_char_position(text, 12), 1);
        assert_eq!(line_at_char_position(text, 13), 2);
        // Byte positions would land a line late here: line 3 starts at char 26, byte 28.
        assert_eq!(line_at_char_position(text, 26), 3);
        assert_eq!(line_at_char_position(text, 25), 2);
    }

    #[test]
    fn line_at_char_position_edges() {
        assert_eq!(line_at_char_position("", 5), 1);
        assert_eq!(line_at_char_position("a\nb", 0), 1);
        assert_eq!(line_at_char_position("a\nb", 99), 2);
        assert_eq!(line_at_char_position("a\nb\n", 99), 2);
        assert_eq!(line_at_char_position("日\r\n本\r\n語", 4), 2);
    }

    #[test]
    fn statement_relative_positions_map_to_script_lines() {
        let script = "select 1;\n\nselect\n  nope;";
        let statements = split(script).unwrap();
        assert_eq!(statements[1].script_line_at_char_position(1), 3);
        assert_eq!(statements[1].script_line_at_char_position(10), 4);
    }

    #[test]
    fn line_at_offset_clamps() {
        assert_eq!(line_at_offset("a\nb", 0), 1);
        assert_eq!(line_at_offset("a\nb", 2), 2);
        assert_eq!(line_at_offset("a\nb", 100), 2);
    }

    // --- leading keywords -------------------------------------------------------------------

    #[test]
    fn leading_keywords_skip_comments_and_stop_at_non_words() {
        let stmt = "create /*x*/ unique index concurrently \"Foo\" on t(a);";
        assert_eq!(
            leading_keywords(stmt, 4),
            vec!["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"]
        );
        assert_eq!(
            leading_keywords(stmt, 10),
            vec!["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"]
        );
        assert_eq!(leading_keywords(stmt, 2), vec!["CREATE", "UNIQUE"]);
        assert!(leading_keywords(stmt, 0).is_empty());
    }

    #[test]
    fn leading_keywords_other_shapes() {
        assert_eq!(
            leading_keywords("-- why\n  alter table foo add column b int;", 3),
            vec!["ALTER", "TABLE", "FOO"]
        );
        assert_eq!(
            leading_keywords("set lock_timeout = '1s';", 5),
            vec!["SET", "LOCK_TIMEOUT"]
        );
        assert!(leading_keywords("'select' from;", 2).is_empty());
        assert!(leading_keywords("(select 1);", 2).is_empty());
        assert!(leading_keywords("/* only */", 2).is_empty());
    }

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

    // --- robustness -------------------------------------------------------------------------

    /// Glues random fragments together and checks the invariants that callers rely on:
    /// no panic, statements are exact slices on char boundaries ending in `;`, lines agree.
    #[test]
    fn random_fragments_keep_invariants() {
        const FRAGMENTS: &[&str] = &[
            "select", " ", "\n", "\r\n", ";", "'", "''", "\"", "E'", "\\", "$", "$$", "$a$", "$1",
            "--", "/*", "*/", "é", "日本", "a$b", "(", ")", "begin", "atomic", "end", "case",
            "create", "function", "U&", "x", "0.5", "-", "/", "*", "\u{feff}",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5000 {
            let len = (next() % 24) as usize;
            let script: String = (0..len)
                .map(|_| FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize])
                .collect();
            let mut last_end = 0;
            for t in tokens(&script) {
                assert!(t.offset >= last_end, "{script:?}");
                assert!(script.is_char_boundary(t.offset) && script.is_char_boundary(t.end()));
                assert!(!t.text.is_empty());
                last_end = t.end();
            }
            if let Ok(statements) = split(&script) {
                for s in statements {
                    assert_eq!(&script[s.offset..s.end()], s.text, "{script:?}");
                    assert!(s.text.ends_with(';'), "{script:?}");
                    assert_eq!(s.line, line_at_offset(&script, s.offset));
                }
            }
            let _ = leading_keywords(&script, 3);
            let _ = create_index_concurrently_name(&script);
        }
    }

    #[test]
    fn large_script_splits_quickly() {
        let one = "create function f() returns int as $fn$ begin return 1; end $fn$ language plpgsql; -- c\nselect 'a;b', \"c;d\" /* e; */;\n";
        let script = one.repeat(20_000);
        let started = std::time::Instant::now();
        assert_eq!(split(&script).unwrap().len(), 40_000);
        // Generous bound: this is ~2.6 MB and should take a few milliseconds in release.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
