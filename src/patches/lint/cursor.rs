//! A cursor over a statement's tokens, for reading names and keywords in order.

use crate::patches::sql::{Token, TokenKind};

use super::QualName;

/// A cursor over a statement's tokens.
#[derive(Clone)]
pub(super) struct Cursor<'t, 'a> {
    toks: &'t [Token<'a>],
    pub(super) pos: usize,
}

impl<'t, 'a> Cursor<'t, 'a> {
    pub(super) fn new(toks: &'t [Token<'a>], pos: usize) -> Self {
        Cursor { toks, pos }
    }

    pub(super) fn peek_kw(&self, keyword: &str) -> bool {
        self.toks
            .get(self.pos)
            .is_some_and(|t| t.is_keyword(keyword))
    }

    /// Consumes `keywords` if they all come next; otherwise consumes nothing.
    pub(super) fn eat(&mut self, keywords: &[&str]) -> bool {
        let all = keywords
            .iter()
            .enumerate()
            .all(|(i, k)| self.toks.get(self.pos + i).is_some_and(|t| t.is_keyword(k)));
        if all {
            self.pos += keywords.len();
        }
        all
    }

    pub(super) fn eat_punct(&mut self, p: &str) -> bool {
        let hit = self
            .toks
            .get(self.pos)
            .is_some_and(|t| t.kind == TokenKind::Punct && t.text == p);
        if hit {
            self.pos += 1;
        }
        hit
    }

    pub(super) fn ident(&mut self) -> Option<String> {
        let id = self.toks.get(self.pos)?.ident()?;
        self.pos += 1;
        Some(id)
    }

    /// `name` or `schema.name` (a third part, `db.schema.name`, keeps the last two).
    pub(super) fn name(&mut self) -> Option<QualName> {
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
    pub(super) fn find_top_level(&self, keyword: &str) -> Option<usize> {
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

    pub(super) fn rest_has(&self, keyword: &str) -> bool {
        self.find_top_level(keyword).is_some()
    }

    pub(super) fn rest(&self) -> &'t [Token<'a>] {
        &self.toks[self.pos.min(self.toks.len())..]
    }
}

/// `(start, end)` token ranges of the comma-separated actions of `ALTER TABLE name …`.
pub(super) fn top_level_actions(toks: &[Token<'_>], from: usize) -> Vec<(usize, usize)> {
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
