//! A JSON parser that keeps line numbers and accepts what Packer's decoder accepts: duplicate keys
//! (the last wins, with a warning). It never panics: nesting is bounded and every error names the
//! line and column.

use super::node::{Loc, Node, Value};
use std::sync::Arc;

/// Deepest nesting accepted; far beyond any template, and keeps recursion bounded on hostile input.
pub const MAX_DEPTH: usize = 128;

/// A syntax error at a line and column (both 1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: u32,
    /// 1-based column (in characters).
    pub column: u32,
    /// What is wrong and what was expected.
    pub message: String,
}

/// A duplicate key: where it was written again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// The key.
    pub key: String,
    /// The line of the later occurrence (which wins).
    pub line: u32,
}

/// Parses `text` (from `file`) into a `Node` tree; returns the duplicate keys seen.
pub fn parse(file: &Arc<str>, text: &str) -> Result<(Node, Vec<DuplicateKey>), SyntaxError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
        col: 1,
        file: Arc::clone(file),
        dups: Vec::new(),
    };
    p.skip_ws();
    let node = p.value(0)?;
    p.skip_ws();
    if p.pos < p.chars.len() {
        return Err(p.err("unexpected text after the end of the JSON document"));
    }
    Ok((node, p.dups))
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    line: u32,
    col: u32,
    file: Arc<str>,
    dups: Vec<DuplicateKey>,
}

impl Parser {
    fn err(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            line: self.line,
            column: self.col,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.get(self.pos).copied()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\n' | '\r' | '\u{feff}')) {
            self.bump();
        }
    }

    fn loc(&self) -> Loc {
        Loc::new(&self.file, self.line)
    }

    fn describe(&self) -> String {
        match self.peek() {
            None => "the end of the file".to_owned(),
            Some(c) => format!("`{c}`"),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        let loc = self.loc();
        match self.peek() {
            Some('{') => self.object(depth, loc),
            Some('[') => self.array(depth, loc),
            Some('"') => Ok(Node::new(Value::String(self.string()?), loc)),
            Some('t') => self.literal("true", Value::Bool(true), loc),
            Some('f') => self.literal("false", Value::Bool(false), loc),
            Some('n') => self.literal("null", Value::Null, loc),
            Some(c) if c == '-' || c.is_ascii_digit() => self.number(loc),
            _ => Err(self.err(format!("expected a value, found {}", self.describe()))),
        }
    }

    fn literal(&mut self, word: &str, value: Value, loc: Loc) -> Result<Node, SyntaxError> {
        for expected in word.chars() {
            if self.peek() != Some(expected) {
                return Err(self.err(format!("expected `{word}`, found {}", self.describe())));
            }
            self.bump();
        }
        Ok(Node::new(value, loc))
    }

    fn number(&mut self, loc: Loc) -> Result<Node, SyntaxError> {
        let start = self.pos;
        if self.peek() == Some('-') {
            self.bump();
        }
        let digits = |p: &mut Self| {
            let s = p.pos;
            while p.peek().is_some_and(|c| c.is_ascii_digit()) {
                p.bump();
            }
            p.pos > s
        };
        if !digits(self) {
            return Err(self.err("expected digits in a number"));
        }
        if self.peek() == Some('.') {
            self.bump();
            if !digits(self) {
                return Err(self.err("expected digits after the decimal point"));
            }
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            self.bump();
            if matches!(self.peek(), Some('+' | '-')) {
                self.bump();
            }
            if !digits(self) {
                return Err(self.err("expected digits in the exponent"));
            }
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        let n: f64 = text
            .parse()
            .map_err(|_| self.err(format!("invalid number `{text}`")))?;
        Ok(Node::new(Value::Number(n), loc))
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.bump(); // opening quote
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return Err(self.err("unterminated string")),
                Some('"') => return Ok(out),
                Some('\\') => match self.bump() {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('/') => out.push('/'),
                    Some('b') => out.push('\u{8}'),
                    Some('f') => out.push('\u{c}'),
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some('u') => {
                        let hi = self.hex4()?;
                        let c = if (0xD800..0xDC00).contains(&hi) {
                            if self.bump() != Some('\\') || self.bump() != Some('u') {
                                return Err(self.err("unpaired surrogate in \\u escape"));
                            }
                            let lo = self.hex4()?;
                            if !(0xDC00..0xE000).contains(&lo) {
                                return Err(self.err("invalid low surrogate in \\u escape"));
                            }
                            char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                        } else {
                            char::from_u32(hi)
                        };
                        out.push(c.ok_or_else(|| self.err("invalid \\u escape"))?);
                    }
                    _ => return Err(self.err("invalid escape in string")),
                },
                Some(c) if (c as u32) < 0x20 => {
                    return Err(self.err("control character in string (escape it, e.g. \\n)"));
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut v = 0;
        for _ in 0..4 {
            let d = self
                .bump()
                .and_then(|c| c.to_digit(16))
                .ok_or_else(|| self.err("expected 4 hex digits in \\u escape"))?;
            v = v * 16 + d;
        }
        Ok(v)
    }

    fn array(&mut self, depth: usize, loc: Loc) -> Result<Node, SyntaxError> {
        self.bump();
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(']') {
            self.bump();
            return Ok(Node::new(Value::Array(items), loc));
        }
        loop {
            self.skip_ws();
            if self.peek() == Some(']') {
                return Err(self.err("trailing comma before `]`: remove the last comma"));
            }
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.bump() {
                Some(',') => continue,
                Some(']') => return Ok(Node::new(Value::Array(items), loc)),
                _ => return Err(self.err("expected `,` or `]` in a list")),
            }
        }
    }

    fn object(&mut self, depth: usize, loc: Loc) -> Result<Node, SyntaxError> {
        self.bump();
        let mut entries: Vec<(String, Node)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some('}') {
            self.bump();
            return Ok(Node::new(Value::Object(entries), loc));
        }
        loop {
            self.skip_ws();
            match self.peek() {
                Some('"') => {}
                Some('}') => {
                    return Err(self.err("trailing comma before `}`: remove the last comma"));
                }
                _ => {
                    return Err(
                        self.err(format!("expected a quoted key, found {}", self.describe()))
                    );
                }
            }
            let key_line = self.line;
            let key = self.string()?;
            self.skip_ws();
            if self.bump() != Some(':') {
                return Err(self.err(format!("expected `:` after the key \"{key}\"")));
            }
            self.skip_ws();
            let mut value = self.value(depth + 1)?;
            value.loc.line = key_line;
            if let Some(pos) = entries.iter().position(|(k, _)| *k == key) {
                self.dups.push(DuplicateKey {
                    key: key.clone(),
                    line: key_line,
                });
                entries.remove(pos);
            }
            entries.push((key, value));
            self.skip_ws();
            match self.bump() {
                Some(',') => continue,
                Some('}') => return Ok(Node::new(Value::Object(entries), loc)),
                _ => return Err(self.err("expected `,` or `}` in an object")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<(Node, Vec<DuplicateKey>), SyntaxError> {
        parse(&Arc::from("t.json"), text)
    }

    #[test]
    fn lines_and_duplicates() {
        let (node, dups) =
            p("{\n \"a\": 1,\n \"b\": {\"c\": [true, null]},\n \"a\": \"x\"\n}").unwrap();
        assert_eq!(node.get("a").unwrap().as_str(), Some("x"));
        assert_eq!(node.get("a").unwrap().loc.line, 4);
        assert_eq!(node.get("b").unwrap().loc.line, 3);
        assert_eq!(
            dups,
            vec![DuplicateKey {
                key: "a".into(),
                line: 4
            }]
        );
    }

    #[test]
    fn errors_name_line_and_fix() {
        let e = p("{\n \"a\": 1,\n}").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("trailing comma"), "{}", e.message);
        let e = p("[1, 2").unwrap_err();
        assert!(e.message.contains("expected `,` or `]`"), "{}", e.message);
        assert!(p(&"[".repeat(10_000)).is_err());
        assert_eq!(p("\"\\ud83d\\ude00\"").unwrap().0.as_str(), Some("😀"));
    }
}
