//! Packer's basic string functions: `lower`, `upper`, `title`, `trimspace`, `chomp`,
//! `clean_resource_name`, `replace`, `regex_replace`, `regex`, `join`, `split`, `format`, `trim`,
//! `trimprefix`, `trimsuffix`, `startswith`, `endswith`, `strcontains`, `substr`; and those that
//! work on lists or build long strings: `formatlist`, `indent`, `regexall`, `strrev`. Each checks
//! the size of its result against [`super::limits`] before building it.

use super::format::format;
use super::limits::{self, charge};
use super::{go_to_regex_replacement, s};
use hcl::Value;
use hcl::eval::{Context, FuncArgs, FuncDef, ParamType};

/// Declares the string functions.
pub(super) fn declare(ctx: &mut Context<'_>) {
    let str1 = |f| FuncDef::builder().param(ParamType::String).build(f);
    ctx.declare_func(
        "lower",
        str1(|a: FuncArgs| Ok(Value::from(s(&a[0]).to_lowercase()))),
    );
    ctx.declare_func(
        "upper",
        str1(|a: FuncArgs| Ok(Value::from(s(&a[0]).to_uppercase()))),
    );
    ctx.declare_func(
        "title",
        str1(|a: FuncArgs| {
            let t = s(&a[0]);
            let mut out = String::new();
            let mut start = true;
            for c in t.chars() {
                out.extend(if start {
                    c.to_uppercase().collect::<Vec<_>>()
                } else {
                    vec![c]
                });
                start = c.is_whitespace();
            }
            Ok(Value::from(out))
        }),
    );
    ctx.declare_func(
        "trimspace",
        str1(|a: FuncArgs| Ok(Value::from(s(&a[0]).trim().to_owned()))),
    );
    ctx.declare_func(
        "chomp",
        str1(|a: FuncArgs| {
            Ok(Value::from(
                s(&a[0]).trim_end_matches(['\n', '\r']).to_owned(),
            ))
        }),
    );
    ctx.declare_func(
        "clean_resource_name",
        str1(|a: FuncArgs| {
            Ok(Value::from(crate::template::gotmpl::clean_ami_name(&s(
                &a[0]
            ))))
        }),
    );
    declare_replacing(ctx);
    ctx.declare_func(
        "format",
        FuncDef::builder()
            .param(ParamType::String)
            .variadic_param(ParamType::Any)
            .build(|a| charge("format", format(&s(&a[0]), &a[1..])?)),
    );
    ctx.declare_func(
        "trim",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| {
                // A set, so a long cut string does not make trimming quadratic.
                let cut: std::collections::HashSet<char> = s(&a[1]).chars().collect();
                Ok(Value::from(
                    s(&a[0]).trim_matches(|c| cut.contains(&c)).to_owned(),
                ))
            }),
    );
    ctx.declare_func(
        "trimprefix",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| {
                let t = s(&a[0]);
                let p = s(&a[1]);
                Ok(Value::from(
                    t.strip_prefix(p.as_str()).unwrap_or(&t).to_owned(),
                ))
            }),
    );
    ctx.declare_func(
        "trimsuffix",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| {
                let t = s(&a[0]);
                let p = s(&a[1]);
                Ok(Value::from(
                    t.strip_suffix(p.as_str()).unwrap_or(&t).to_owned(),
                ))
            }),
    );
    ctx.declare_func(
        "startswith",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| Ok(Value::from(s(&a[0]).starts_with(&s(&a[1]))))),
    );
    ctx.declare_func(
        "endswith",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| Ok(Value::from(s(&a[0]).ends_with(&s(&a[1]))))),
    );
    ctx.declare_func(
        "strcontains",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| Ok(Value::from(s(&a[0]).contains(&s(&a[1]))))),
    );
    ctx.declare_func(
        "substr",
        FuncDef::builder()
            .params([ParamType::String, ParamType::Number, ParamType::Number])
            .build(|a| {
                let text = s(&a[0]);
                let (off, len) = (limits::int("substr", &a[1])?, limits::int("substr", &a[2])?);
                Ok(Value::from(substr(&text, off, len)))
            }),
    );
    declare_lists(ctx);
}

/// Declares the functions that replace, match, join and split: `replace`, `regex_replace`,
/// `regex`, `join`, `split`.
fn declare_replacing(ctx: &mut Context<'_>) {
    ctx.declare_func(
        "replace",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String, ParamType::String])
            .build(|a| {
                let (src, old, new) = (s(&a[0]), s(&a[1]), s(&a[2]));
                if old.len() > 2 && old.starts_with('/') && old.ends_with('/') {
                    let re =
                        regex::Regex::new(&old[1..old.len() - 1]).map_err(|e| e.to_string())?;
                    let rep = go_to_regex_replacement(&new);
                    return charge(
                        "replace",
                        Value::from(regex_replace("replace", &re, &src, &rep)?),
                    );
                }
                limits::replacement("replace", &src, &old, &new, usize::MAX)?;
                charge("replace", Value::from(src.replace(&old, &new)))
            }),
    );
    ctx.declare_func(
        "regex_replace",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String, ParamType::String])
            .build(|a| {
                let re = regex::Regex::new(&s(&a[1]))
                    .map_err(|e| format!("invalid regular expression: {e}"))?;
                let rep = go_to_regex_replacement(&s(&a[2]));
                let out = regex_replace("regex_replace", &re, &s(&a[0]), &rep)?;
                charge("regex_replace", Value::from(out))
            }),
    );
    ctx.declare_func(
        "regex",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| {
                let re = regex::Regex::new(&s(&a[0]))
                    .map_err(|e| format!("invalid regular expression: {e}"))?;
                let text = s(&a[1]);
                let caps = re.captures(&text).ok_or_else(|| {
                    "pattern did not match any part of the given string".to_string()
                })?;
                if caps.len() == 1 {
                    return Ok(Value::from(
                        caps.get(0)
                            .map(|m| m.as_str())
                            .unwrap_or_default()
                            .to_owned(),
                    ));
                }
                // Named groups make an object of them (Terraform's rule); otherwise a list.
                let mut names: Vec<&str> = re.capture_names().flatten().collect();
                names.sort_unstable();
                if !names.is_empty() {
                    return Ok(Value::Object(
                        names
                            .into_iter()
                            .map(|n| {
                                let v = caps.name(n).map(|m| m.as_str()).unwrap_or_default();
                                (n.to_owned(), Value::from(v.to_owned()))
                            })
                            .collect(),
                    ));
                }
                Ok(Value::Array(
                    caps.iter()
                        .skip(1)
                        .map(|m| Value::from(m.map(|m| m.as_str()).unwrap_or_default().to_owned()))
                        .collect(),
                ))
            }),
    );
    ctx.declare_func(
        "join",
        FuncDef::builder()
            .param(ParamType::String)
            .variadic_param(ParamType::Any)
            .build(|a| {
                let sep = s(&a[0]);
                let mut parts = Vec::new();
                let mut len = 0usize;
                for v in a.iter().skip(1) {
                    let Value::Array(items) = v else {
                        return Err(format!("join expects lists, got {v}"));
                    };
                    for item in items {
                        let part = s(item);
                        len = limits::add("join", len, part.len() + sep.len())?;
                        limits::string_len("join", len)?;
                        parts.push(part);
                    }
                }
                charge("join", Value::from(parts.join(&sep)))
            }),
    );
    ctx.declare_func(
        "split",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| {
                let (sep, text) = (s(&a[0]), s(&a[1]));
                let n = if sep.is_empty() {
                    text.chars().count().saturating_add(2)
                } else {
                    text.matches(sep.as_str()).count().saturating_add(1)
                };
                limits::elements("split", n)?;
                let parts = text.split(sep.as_str()).map(|p| Value::from(p.to_owned()));
                charge("split", Value::Array(parts.collect()))
            }),
    );
}

/// Terraform's `substr`: `off` characters in (from the end when negative), `len` characters long
/// (to the end when negative); out-of-range parts are clamped, never an index panic.
fn substr(text: &str, off: i64, len: i64) -> String {
    let n = text.chars().count() as i64;
    let start = if off < 0 {
        n.saturating_add(off).max(0)
    } else {
        off.min(n)
    };
    let take = if len < 0 { n } else { len };
    let skip = usize::try_from(start).unwrap_or(0);
    let take = usize::try_from(take).unwrap_or(usize::MAX);
    text.chars().skip(skip).take(take).collect()
}

/// `re`'s matches in `src` replaced by `rep` (with `$1`/`${name}` expanded), as
/// `Regex::replace_all`, but refusing (before each expansion) to build more than the string limit.
pub(super) fn regex_replace(
    f: &str,
    re: &regex::Regex,
    src: &str,
    rep: &str,
) -> Result<String, String> {
    // Each `$` in `rep` expands to at most the whole match.
    let refs = rep.matches('$').count();
    let mut out = String::new();
    let mut last = 0;
    for caps in re.captures_iter(src) {
        let Some(m) = caps.get(0) else { continue };
        let grow = limits::add(f, rep.len(), limits::mul(f, refs, m.len())?)?;
        limits::string_len(f, limits::add(f, out.len() + (m.start() - last), grow)?)?;
        out.push_str(&src[last..m.start()]);
        caps.expand(rep, &mut out);
        last = m.end();
    }
    out.push_str(&src[last..]);
    limits::string_len(f, out.len())?;
    Ok(out)
}

/// `text` with every line after the first indented by `pad` spaces (Terraform's `indent`).
fn indent(pad: usize, text: &str) -> Result<String, String> {
    let lines = text.matches('\n').count();
    let len = limits::add("indent", text.len(), limits::mul("indent", lines, pad)?)?;
    limits::string_len("indent", len)?;
    let mut out = String::with_capacity(len);
    let spaces = " ".repeat(if lines > 0 { pad } else { 0 });
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
            out.push_str(&spaces);
        }
        out.push_str(line);
    }
    Ok(out)
}

/// `regexall`'s value for one match: the match, its groups, or its named groups.
fn match_value(c: &regex::Captures<'_>, names: &[Option<&str>]) -> Value {
    if names.iter().skip(1).any(Option::is_some) {
        Value::Object(
            names
                .iter()
                .flatten()
                .map(|n| {
                    (
                        (*n).to_owned(),
                        Value::from(c.name(n).map_or("", |m| m.as_str())),
                    )
                })
                .collect(),
        )
    } else if c.len() > 1 {
        Value::Array(
            c.iter()
                .skip(1)
                .map(|m| Value::from(m.map_or("", |m| m.as_str())))
                .collect(),
        )
    } else {
        Value::from(c.get(0).map_or("", |m| m.as_str()))
    }
}

/// Declares `strrev`, `indent`, `regexall` and `formatlist`.
fn declare_lists(ctx: &mut Context<'_>) {
    ctx.declare_func(
        "strrev",
        FuncDef::builder()
            .param(ParamType::String)
            .build(|a| Ok(Value::from(s(&a[0]).chars().rev().collect::<String>()))),
    );
    ctx.declare_func(
        "indent",
        FuncDef::builder()
            .params([ParamType::Number, ParamType::String])
            .build(|a| {
                let pad = limits::count("indent", &a[0], limits::MAX_STRING_BYTES)?;
                charge("indent", Value::from(indent(pad, &s(&a[1]))?))
            }),
    );
    ctx.declare_func(
        "regexall",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| {
                let re = regex::Regex::new(&s(&a[0])).map_err(|e| format!("regexall: {e}"))?;
                let text = s(&a[1]);
                let names: Vec<Option<&str>> = re.capture_names().collect();
                let mut out = Vec::new();
                for c in re.captures_iter(&text) {
                    limits::elements("regexall", out.len() + 1)?;
                    out.push(match_value(&c, &names));
                }
                charge("regexall", Value::Array(out))
            }),
    );
    ctx.declare_func(
        "formatlist",
        FuncDef::builder()
            .param(ParamType::String)
            .variadic_param(ParamType::Any)
            .build(|a| {
                let spec = s(&a[0]);
                let args: Vec<&Value> = a.iter().skip(1).collect();
                let n = args
                    .iter()
                    .filter_map(|v| match v {
                        Value::Array(x) => Some(x.len()),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(1);
                limits::elements("formatlist", n)?;
                let mut out = Vec::new();
                for i in 0..n {
                    let row: Vec<Value> = args
                        .iter()
                        .map(|v| match v {
                            Value::Array(x) => x.get(i).cloned().unwrap_or(Value::Null),
                            other => (*other).clone(),
                        })
                        .collect();
                    // Charged row by row: the list stops growing at the budget.
                    out.push(charge("formatlist", format(&spec, &row)?)?);
                }
                Ok(Value::Array(out))
            }),
    );
}

#[cfg(test)]
mod tests {
    use super::super::eval;
    use hcl::Value;

    fn err(expr: &str) -> String {
        match eval(expr) {
            Ok(v) => panic!(
                "{expr}: expected an error, got {} bytes",
                super::s(&v).len()
            ),
            Err(e) => e,
        }
    }

    #[test]
    fn indent_is_bounded_before_it_allocates() {
        // Used to be `" ".repeat(usize::MAX)`: a capacity-overflow panic.
        let e = err(r#"indent(1e21, "x")"#);
        assert!(
            e.contains("indent") && e.contains("not a whole number"),
            "{e}"
        );
        let e = err(r#"indent(16777217, "a\nb")"#);
        assert!(e.contains("indent") && e.contains("16777216"), "{e}");
        // Each pad fits; three of them do not.
        let e = err(r#"indent(8000000, "a\nb\nc\nd")"#);
        assert!(e.contains("indent") && e.contains("16 MiB"), "{e}");
        assert!(err(r#"indent(-1, "a")"#).contains("negative"));
        assert_eq!(eval(r#"indent(2, "a\nb")"#), Ok(Value::from("a\n  b")));
    }

    #[test]
    fn replacements_that_grow_are_bounded() {
        let big = r#"format("%1000000s", "")"#;
        let e = err(&format!(r#"replace({big}, "", "0123456789abcdefghij")"#));
        assert!(e.contains("replace") && e.contains("16 MiB"), "{e}");
        let e = err(&format!(
            r#"regex_replace({big}, "", "0123456789abcdefghij")"#
        ));
        assert!(e.contains("regex_replace") && e.contains("16 MiB"), "{e}");
        let e = err(&format!(
            r#"regex_replace({big}, " +", "$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0$0")"#
        ));
        assert!(e.contains("16 MiB"), "{e}");
        let e = err(&format!(r#"replace({big}, "/ /", "0123456789abcdefghij")"#));
        assert!(e.contains("16 MiB"), "{e}");
        assert_eq!(
            eval(r#"regex_replace("a-b", "(\\w)", "<$1>")"#),
            Ok(Value::from("<a>-<b>"))
        );
        assert_eq!(
            eval(r#"replace("abc", "", "-")"#),
            Ok(Value::from("-a-b-c-"))
        );
    }

    #[test]
    fn join_split_and_regexall_are_bounded() {
        let big = r#"format("%9000000s", "")"#;
        let e = err(&format!(r#"join("", [{big}, {big}])"#));
        assert!(e.contains("join") && e.contains("16 MiB"), "{e}");
        let e = err(r#"split("", format("%2000000s", ""))"#);
        assert!(e.contains("split") && e.contains("1000000"), "{e}");
        let e = err(r#"regexall("", format("%2000000s", ""))"#);
        assert!(e.contains("regexall") && e.contains("1000000"), "{e}");
        // Each row fits; seventeen rows of 16 MB pass the evaluation's budget.
        let e = err(r#"formatlist("%16000000s", range(17))"#);
        assert!(e.contains("formatlist") && e.contains("256 MiB"), "{e}");
    }

    #[test]
    fn substr_never_indexes_out_of_range() {
        for (expr, want) in [
            (r#"substr("hello world", 1, 4)"#, "ello"),
            (r#"substr("hello world", -5, -1)"#, "world"),
            (r#"substr("hello", 2, 1e18)"#, "llo"),
            (r#"substr("hello", -9e18, 2)"#, "he"),
            (r#"substr("hello", 9e18, 2)"#, ""),
        ] {
            assert_eq!(eval(expr), Ok(Value::from(want)), "{expr}");
        }
        assert!(err(r#"substr("hello", 1e300, 1)"#).contains("substr"));
    }

    #[test]
    fn trim_with_a_long_cut_set_is_linear() {
        let t = std::time::Instant::now();
        let v = eval(r#"trim(format("%2000000s", ""), format("%2000000sx", ""))"#);
        assert_eq!(v, Ok(Value::from("")));
        assert!(t.elapsed() < std::time::Duration::from_secs(20));
    }
}
