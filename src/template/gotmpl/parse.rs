//! The parser of Packer's `{{ }}` template strings: text and actions, an action's pipeline of
//! commands, a command's tokens.

use super::{Arg, Cmd, Seg};

/// Parses a template string into text and actions.
pub(super) fn parse(s: &str) -> Result<Vec<Seg>, String> {
    let mut segs = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_owned();
        let after = &rest[start + 2..];
        let end = find_close(after).ok_or_else(|| {
            format!(
                "unclosed action: `{}` has no matching `}}}}`",
                truncate(&rest[start..])
            )
        })?;
        let mut inner = &after[..end];
        let source = format!("{{{{{inner}}}}}");
        let mut next = &after[end + 2..];
        if let Some(i) = inner.strip_prefix("- ") {
            text = text.trim_end().to_owned();
            inner = i;
        }
        if let Some(i) = inner.strip_suffix(" -") {
            next = next.trim_start();
            inner = i;
        }
        if !text.is_empty() {
            segs.push(Seg::Text(text));
        }
        let inner_trim = inner.trim();
        if inner_trim.starts_with("/*") && inner_trim.ends_with("*/") {
            rest = next;
            continue;
        }
        let pipeline =
            parse_pipeline(inner_trim).map_err(|e| format!("in `{}`: {e}", truncate(&source)))?;
        segs.push(Seg::Action { pipeline, source });
        rest = next;
    }
    if !rest.is_empty() {
        segs.push(Seg::Text(rest.to_owned()));
    }
    Ok(segs)
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// Finds the `}}` that closes an action, skipping quoted strings.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'}' if b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn parse_pipeline(s: &str) -> Result<Vec<Cmd>, String> {
    if s.is_empty() {
        return Err("empty action".into());
    }
    let tokens = tokenize(s)?;
    let mut cmds = Vec::new();
    for part in tokens.split(|t| matches!(t, Tok::Pipe)) {
        let Some((first, args)) = part.split_first() else {
            return Err("empty command in pipeline".into());
        };
        let cmd = match first {
            Tok::Ident(name) => Cmd::Func(
                name.clone(),
                args.iter()
                    .map(|a| match a {
                        Tok::Str(s) => Ok(Arg::Str(s.clone())),
                        Tok::Field(f) => Ok(Arg::Field(f.clone())),
                        Tok::Number(n) => Ok(Arg::Number(n.clone())),
                        Tok::Ident(i) => Err(format!("unexpected `{i}` as an argument")),
                        Tok::Pipe => Err("unexpected `|`".into()),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Tok::Field(f) if args.is_empty() => Cmd::Field(f.clone()),
            Tok::Str(s) if args.is_empty() => Cmd::Literal(s.clone()),
            Tok::Number(n) if args.is_empty() => Cmd::Literal(n.clone()),
            _ => return Err("unexpected arguments".into()),
        };
        cmds.push(cmd);
    }
    Ok(cmds)
}

#[derive(Debug, Clone)]
enum Tok {
    Ident(String),
    Field(String),
    Str(String),
    Number(String),
    Pipe,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '|' {
            out.push(Tok::Pipe);
            i += 1;
        } else if c == '`' {
            let start = i + 1;
            i = start;
            while i < chars.len() && chars[i] != '`' {
                i += 1;
            }
            if i >= chars.len() {
                return Err("unterminated raw string".into());
            }
            out.push(Tok::Str(chars[start..i].iter().collect()));
            i += 1;
        } else if c == '"' {
            let mut v = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("unterminated quoted string".into()),
                    Some('"') => break,
                    Some('\\') => {
                        i += 1;
                        match chars.get(i) {
                            Some('n') => v.push('\n'),
                            Some('t') => v.push('\t'),
                            Some(&c) => v.push(c),
                            None => return Err("unterminated quoted string".into()),
                        }
                    }
                    Some(&c) => v.push(c),
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(v));
        } else if c == '.' {
            let start = i + 1;
            i = start;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Field(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '-' {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            out.push(Tok::Number(chars[start..i].iter().collect()));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else {
            return Err(format!("unexpected character `{c}`"));
        }
    }
    Ok(out)
}
