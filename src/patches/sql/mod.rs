//! Splitting a patch body into statements: comments, strings, quoted identifiers and dollar quotes.
//!
//! The rules follow PostgreSQL's own scanner (`scan.l`) closely enough that every `;` the
//! server would treat as a statement boundary is one here, and no other: nested block
//! comments, `''`/`""` doubling, backslash escapes only in `E'...'` strings
//! (`standard_conforming_strings` is assumed on, the default since 9.1), string continuation
//! across newlines, and `$tag$` quotes whose closing tag must match exactly. SQL-standard
//! routine bodies (`BEGIN ATOMIC ... END`) are kept whole with the same heuristic psql uses.
//!
//! Two things psql does are kept because patch files are written for psql: a
//! `COPY ... FROM stdin;` statement is followed by its inline data block, which runs
//! through the line `\.` and is data, not SQL (pg_dump's form); and a backslash outside
//! any string or comment starts a psql meta-command (`\i`, `\set`, ...), which the server
//! cannot run, so it is an error naming its line rather than a syntax error at run time.
//! Like psql, a `;` inside parentheses does not end the statement: a multi-action
//! `CREATE RULE ... DO (a; b)` is one statement. Deliberately not handled: `:variables`.
//!
//! Everything runs in one pass over the bytes without allocating per token. Token
//! boundaries always sit next to an ASCII byte (every byte >= 0x80 belongs to an identifier,
//! a string, a quoted identifier or a comment), so byte offsets are always char boundaries.

use std::fmt;

mod lexer;
#[cfg(test)]
mod tests;

use lexer::{at, block_comment_end, line_comment_end};
pub use lexer::{tokens, Token, TokenKind, Tokens};

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
    /// For `COPY ... FROM stdin`, the inline data block that follows it.
    pub copy_data: Option<CopyData<'a>>,
}

/// The inline data of a `COPY ... FROM stdin` statement: the lines after the statement's
/// own line, up to the line `\.` (which is not part of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyData<'a> {
    /// The data exactly as written, every line with its line ending; empty when `\.`
    /// directly follows the statement.
    pub text: &'a str,
    /// Byte offset of `text` within the script.
    pub offset: usize,
    /// 1-based script line of the first data line.
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
    /// A backslash outside any string or comment: psql would run it as a meta-command
    /// (`command` is the backslash and the word after it, e.g. `\set`).
    MetaCommand { command: String, line: usize },
    /// The data block of `COPY ... FROM stdin` (opened by the statement on `line`) never
    /// reaches a line `\.`.
    UnterminatedCopyData { line: usize },
    /// Something other than a comment follows `COPY ... FROM stdin;` on its line, where
    /// psql would take the next line as the first data line and run the rest later.
    AfterCopy { line: usize },
    /// A `(` (on `line`) is never closed, so every `;` after it is inside the parentheses
    /// and the rest of the script would be one statement.
    UnclosedParenthesis { line: usize },
}

impl SplitError {
    /// The 1-based line the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            SplitError::Empty => None,
            SplitError::MissingTerminator { line }
            | SplitError::Unterminated { line, .. }
            | SplitError::UnterminatedDollarQuote { line, .. }
            | SplitError::MetaCommand { line, .. }
            | SplitError::UnterminatedCopyData { line }
            | SplitError::AfterCopy { line }
            | SplitError::UnclosedParenthesis { line } => Some(*line),
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
            SplitError::MetaCommand { command, line } => write!(
                f,
                "line {line}: `{command}` is a psql meta-command; pgconvoy sends patches to the server, which cannot run it"
            ),
            SplitError::UnterminatedCopyData { line } => write!(
                f,
                "the data block of `COPY ... FROM stdin` on line {line} is not ended by a line `\\.`"
            ),
            SplitError::AfterCopy { line } => write!(
                f,
                "line {line}: nothing but a comment may follow `COPY ... FROM stdin;` on its line: the data block starts on the next line"
            ),
            SplitError::UnclosedParenthesis { line } => write!(
                f,
                "the `(` on line {line} is never closed: every `;` after it is inside the parentheses"
            ),
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
    let statements = statements(script).collect::<Result<Vec<_>, _>>()?;
    if statements.is_empty() {
        return Err(SplitError::Empty);
    }
    Ok(statements)
}

/// The statements of a script one at a time, as [`split`] finds them, so that a caller
/// keeping its own compact form never holds two lists of a large script. After the first
/// error the iterator ends; an empty script yields nothing (no [`SplitError::Empty`]).
pub fn statements(script: &str) -> Statements<'_> {
    Statements {
        script,
        lexer: tokens(script),
        lines: LineCounter::new(),
        done: false,
    }
}

/// Iterator returned by [`statements`].
pub struct Statements<'a> {
    script: &'a str,
    lexer: Tokens<'a>,
    lines: LineCounter,
    done: bool,
}

impl<'a> Iterator for Statements<'a> {
    type Item = Result<Statement<'a>, SplitError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_statement();
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }
}

impl<'a> Statements<'a> {
    fn next_statement(&mut self) -> Option<Result<Statement<'a>, SplitError>> {
        let script = self.script;
        let lines = &mut self.lines;
        let mut current: Option<Pending> = None;
        while let Some(token) = self.lexer.next() {
            if token.kind == TokenKind::Punct && token.text == "\\" {
                return Some(Err(SplitError::MetaCommand {
                    command: meta_command(&script[token.offset..]).to_string(),
                    line: lines.line_at(script, token.offset),
                }));
            }
            if current.is_none() && token.kind == TokenKind::Semicolon {
                continue;
            }
            let pending = current.get_or_insert_with(|| Pending::new(token.offset));
            pending.observe(&token);
            if token.kind != TokenKind::Semicolon || pending.atomic_depth > 0 || pending.parens > 0
            {
                continue;
            }
            let offset = pending.start;
            let text = &script[offset..token.end()];
            let line = lines.line_at(script, offset);
            let copy_data = if pending.copy && is_copy_from_stdin(text) {
                let data = match copy_data(script, token.end()) {
                    Ok(data) => data,
                    Err(CopyProblem::Unterminated) => {
                        return Some(Err(SplitError::UnterminatedCopyData { line }))
                    }
                    Err(CopyProblem::AfterCopy) => {
                        return Some(Err(SplitError::AfterCopy {
                            line: lines.line_at(script, token.offset),
                        }))
                    }
                };
                self.lexer.resume_at(data.resume);
                Some(CopyData {
                    text: &script[data.start..data.end],
                    offset: data.start,
                    line: lines.line_at(script, data.start),
                })
            } else {
                None
            };
            return Some(Ok(Statement {
                text,
                offset,
                line,
                copy_data,
            }));
        }
        // An unclosed construct swallows the rest of the script, so it explains a missing
        // terminator better than the terminator check would.
        if let Some(err) = self.lexer.error() {
            return Some(Err(err));
        }
        current.map(|pending| match pending.open_paren {
            Some(offset) if pending.parens > 0 => Err(SplitError::UnclosedParenthesis {
                line: lines.line_at(script, offset),
            }),
            _ => Err(SplitError::MissingTerminator {
                line: lines.line_at(script, pending.start),
            }),
        })
    }
}

/// `\` and the word after it, as psql would read the meta-command's name.
fn meta_command(from_backslash: &str) -> &str {
    let end = from_backslash[1..]
        .find(|c: char| c.is_whitespace())
        .map_or(from_backslash.len(), |i| i + 1);
    &from_backslash[..end]
}

/// Whether a statement is `COPY ... FROM STDIN`: `FROM STDIN` outside parentheses, so a
/// `COPY (SELECT ... FROM t) TO STDOUT` query is not one.
pub fn is_copy_from_stdin(statement: &str) -> bool {
    let mut toks = tokens(statement);
    if !toks.next().is_some_and(|t| t.is_keyword("copy")) {
        return false;
    }
    let mut depth = 0usize;
    let mut after_from = false;
    for t in toks {
        match t.kind {
            TokenKind::Punct if t.text == "(" => depth += 1,
            TokenKind::Punct if t.text == ")" => depth = depth.saturating_sub(1),
            _ if depth == 0 && after_from && t.is_keyword("stdin") => return true,
            _ => {}
        }
        after_from = depth == 0 && t.is_keyword("from");
    }
    false
}

/// Where a COPY data block lies: its bytes, and where SQL resumes after the `\.` line.
struct DataBlock {
    start: usize,
    end: usize,
    resume: usize,
}

/// Why a data block could not be found, before the caller knows the line.
enum CopyProblem {
    Unterminated,
    AfterCopy,
}

/// The data block that follows a `COPY ... FROM stdin;` ending at `after`: like psql, it
/// starts on the next line and ends before the first line that is exactly `\.`
/// (a `\r` before the newline allowed, as is the end of the file right after it).
fn copy_data(script: &str, after: usize) -> Result<DataBlock, CopyProblem> {
    let bytes = script.as_bytes();
    let mut i = after;
    loop {
        match at(bytes, i) {
            b' ' | b'\t' | b'\r' | 0x0b | 0x0c => i += 1,
            b'-' if at(bytes, i + 1) == b'-' => i = line_comment_end(bytes, i + 2),
            b'/' if at(bytes, i + 1) == b'*' => match block_comment_end(bytes, i) {
                Some(end) if !bytes[i..end].contains(&b'\n') => i = end,
                _ => return Err(CopyProblem::AfterCopy),
            },
            b'\n' => break,
            0 if i >= bytes.len() => return Err(CopyProblem::Unterminated),
            _ => return Err(CopyProblem::AfterCopy),
        }
    }
    let start = i + 1;
    let mut line_start = start;
    while line_start < bytes.len() {
        let line_end = bytes[line_start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |k| line_start + k);
        let line = &bytes[line_start..line_end];
        if line == b"\\." || line == b"\\.\r" {
            return Ok(DataBlock {
                start,
                end: line_start,
                resume: line_end,
            });
        }
        line_start = line_end + 1;
    }
    Err(CopyProblem::Unterminated)
}

/// The transaction-control command a statement is, if any, named as written in the
/// PostgreSQL documentation. Only the statement's own leading words count, so the same
/// words inside a function body, a `DO` block or a string are never a hit; the statements
/// this sees are whole top-level statements from [`split`], `BEGIN ATOMIC` bodies included.
pub fn transaction_control(statement: &str) -> Option<&'static str> {
    let words = leading_keywords(statement, 3);
    let word = |i: usize| words.get(i).map_or("", String::as_str);
    // `TRANSACTION` and `WORK` are noise words after most of these commands.
    let noise = |i: usize| matches!(word(i), "TRANSACTION" | "WORK");
    let after_noise = if noise(1) { word(2) } else { word(1) };
    Some(match word(0) {
        "BEGIN" => "BEGIN",
        "START" if word(1) == "TRANSACTION" => "START TRANSACTION",
        "COMMIT" if word(1) == "PREPARED" => "COMMIT PREPARED",
        "COMMIT" => "COMMIT",
        "END" => "END",
        "ABORT" => "ABORT",
        "ROLLBACK" if word(1) == "PREPARED" => "ROLLBACK PREPARED",
        "ROLLBACK" if after_noise == "TO" => "ROLLBACK TO SAVEPOINT",
        "ROLLBACK" => "ROLLBACK",
        "SAVEPOINT" => "SAVEPOINT",
        "RELEASE" => "RELEASE SAVEPOINT",
        "PREPARE" if word(1) == "TRANSACTION" => "PREPARE TRANSACTION",
        _ => return None,
    })
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
    let name = toks.qualified_name(&first)?;
    if toks.error().is_some() {
        return None;
    }
    Some(name)
}

/// The statement being collected by [`split`], with just enough state to see where a
/// `BEGIN ATOMIC ... END` routine body ends.
struct Pending {
    start: usize,
    /// The statement starts with the word `COPY`.
    copy: bool,
    head: Head,
    /// Parentheses open at this point: a `;` inside them does not end the statement.
    parens: usize,
    /// Where the outermost open `(` is, to name it if it is never closed.
    open_paren: Option<usize>,
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
            copy: false,
            head: Head::Start,
            parens: 0,
            open_paren: None,
            atomic_depth: 0,
            after_begin: false,
        }
    }

    /// Like psql, only words outside parentheses count, so a parameter or column named
    /// `begin`, `case` or `end` in the signature or in a subexpression changes nothing, and
    /// CASE ... END inside the body is counted so its END does not close the body.
    fn observe(&mut self, token: &Token<'_>) {
        if self.head == Head::Start && token.is_keyword("copy") {
            self.copy = true;
        }
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
        match token.kind {
            TokenKind::Punct if token.text == "(" => {
                if self.parens == 0 {
                    self.open_paren = Some(token.offset);
                }
                self.parens += 1;
            }
            TokenKind::Punct if token.text == ")" => self.parens = self.parens.saturating_sub(1),
            _ => {}
        }
        if self.head != Head::Routine {
            return;
        }
        let after_begin = std::mem::take(&mut self.after_begin);
        match token.kind {
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
