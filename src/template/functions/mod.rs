//! The HCL2 functions Packer templates use, for `hcl::eval`. Functions are plain `fn` pointers, so
//! the build's start time and working directory live in thread-locals set by the loader.

mod collections;
mod dates;
mod encoding;
mod files;
mod net;
mod numeric;

use hcl::eval::{Context, FuncArgs, FuncDef, ParamType};
use hcl::{Map, Value};
use std::cell::Cell;
use time::OffsetDateTime;

thread_local! {
    static NOW: Cell<i64> = const { Cell::new(0) };
    static CWD: std::cell::RefCell<std::path::PathBuf> = std::cell::RefCell::new(std::path::PathBuf::from("."));
}

/// Sets the time `timestamp()` returns for this thread's evaluations.
pub fn set_now(now: OffsetDateTime) {
    NOW.with(|n| n.set(now.unix_timestamp()));
}

/// Sets the working directory `file()`, `fileexists()`, `fileset()`, `templatefile()` and
/// `abspath()` resolve relative paths against, for this thread's evaluations.
pub fn set_cwd(cwd: &std::path::Path) {
    CWD.with(|c| *c.borrow_mut() = cwd.to_path_buf());
}

/// `p` resolved against the working directory.
pub(super) fn in_cwd(p: &str) -> std::path::PathBuf {
    CWD.with(|c| crate::template::provisioner::resolve(&c.borrow(), p))
}

/// The build's start time (what `timestamp()` returns).
pub(super) fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(NOW.with(Cell::get)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(super) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => hcl::format::to_string(other).unwrap_or_default(),
    }
}

pub(super) fn num(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| "not a number".to_string()),
        Value::String(t) => t
            .trim()
            .parse()
            .map_err(|_| format!("\"{t}\" is not a number")),
        _ => Err("expected a number".into()),
    }
}

pub(super) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Declares every function on `ctx`. `with_env`: whether `env()` works (variable defaults only).
pub fn declare(ctx: &mut Context<'_>, with_env: bool) {
    collections::declare(ctx);
    encoding::declare(ctx);
    files::declare(ctx);
    net::declare(ctx);
    numeric::declare(ctx);
    let str1 = |f| FuncDef::builder().param(ParamType::String).build(f);
    ctx.declare_func(
        "timestamp",
        FuncDef::builder().build(|_| Ok(Value::from(rfc3339(now())))),
    );
    ctx.declare_func(
        "uuidv4",
        FuncDef::builder().build(|_| Ok(Value::from(uuid::Uuid::new_v4().to_string()))),
    );
    ctx.declare_func(
        "formatdate",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(formatdate),
    );
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
    ctx.declare_func(
        "replace",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String, ParamType::String])
            .build(|a| {
                let (src, old, new) = (s(&a[0]), s(&a[1]), s(&a[2]));
                if old.len() > 2 && old.starts_with('/') && old.ends_with('/') {
                    let re =
                        regex::Regex::new(&old[1..old.len() - 1]).map_err(|e| e.to_string())?;
                    return Ok(Value::from(
                        re.replace_all(&src, go_to_regex_replacement(&new).as_str())
                            .into_owned(),
                    ));
                }
                Ok(Value::from(src.replace(&old, &new)))
            }),
    );
    ctx.declare_func(
        "regex_replace",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String, ParamType::String])
            .build(|a| {
                let re = regex::Regex::new(&s(&a[1]))
                    .map_err(|e| format!("invalid regular expression: {e}"))?;
                Ok(Value::from(
                    re.replace_all(&s(&a[0]), go_to_regex_replacement(&s(&a[2])).as_str())
                        .into_owned(),
                ))
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
                for v in a.iter().skip(1) {
                    match v {
                        Value::Array(items) => parts.extend(items.iter().map(s)),
                        other => return Err(format!("join expects lists, got {other}")),
                    }
                }
                Ok(Value::from(parts.join(&sep)))
            }),
    );
    ctx.declare_func(
        "split",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| {
                Ok(Value::Array(
                    s(&a[1])
                        .split(s(&a[0]).as_str())
                        .map(|p| Value::from(p.to_owned()))
                        .collect(),
                ))
            }),
    );
    ctx.declare_func(
        "format",
        FuncDef::builder()
            .param(ParamType::String)
            .variadic_param(ParamType::Any)
            .build(|a| format(&s(&a[0]), &a[1..])),
    );
    ctx.declare_func(
        "concat",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(|a| {
                let mut out = Vec::new();
                for v in a.iter() {
                    match v {
                        Value::Array(items) => out.extend(items.iter().cloned()),
                        other => return Err(format!("concat expects lists, got {other}")),
                    }
                }
                Ok(Value::Array(out))
            }),
    );
    ctx.declare_func(
        "merge",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(|a| {
                let mut out = Map::new();
                for v in a.iter() {
                    match v {
                        Value::Object(o) => {
                            out.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())))
                        }
                        Value::Null => {}
                        other => return Err(format!("merge expects maps, got {other}")),
                    }
                }
                Ok(Value::Object(out))
            }),
    );
    ctx.declare_func(
        "lookup",
        FuncDef::builder()
            .params([ParamType::Any, ParamType::String])
            .variadic_param(ParamType::Any)
            .build(|a| {
                let key = s(&a[1]);
                match &a[0] {
                    Value::Object(o) => o
                        .get(&key)
                        .cloned()
                        .or_else(|| a.get(2).cloned())
                        .ok_or_else(|| format!("lookup failed to find key \"{key}\"")),
                    _ => Err("lookup expects a map".into()),
                }
            }),
    );
    ctx.declare_func(
        "coalesce",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(|a| {
                a.iter()
                    .find(|v| {
                        !matches!(v, Value::Null) && !matches!(v, Value::String(s) if s.is_empty())
                    })
                    .cloned()
                    .ok_or_else(|| "no non-null, non-empty-string arguments".to_string())
            }),
    );
    ctx.declare_func(
        "length",
        FuncDef::builder().param(ParamType::Any).build(|a| {
            Ok(Value::from(match &a[0] {
                Value::Array(v) => v.len() as u64,
                Value::Object(o) => o.len() as u64,
                Value::String(t) => t.chars().count() as u64,
                _ => return Err("length expects a list, map or string".into()),
            }))
        }),
    );
    ctx.declare_func(
        "contains",
        FuncDef::builder()
            .params([ParamType::Any, ParamType::Any])
            .build(|a| match &a[0] {
                Value::Array(v) => Ok(Value::from(v.contains(&a[1]))),
                _ => Err("contains expects a list".into()),
            }),
    );
    ctx.declare_func(
        "element",
        FuncDef::builder()
            .params([ParamType::Any, ParamType::Number])
            .build(|a| match &a[0] {
                Value::Array(v) if !v.is_empty() => Ok(v[(num(&a[1])? as usize) % v.len()].clone()),
                _ => Err("element expects a non-empty list".into()),
            }),
    );
    ctx.declare_func(
        "keys",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| match &a[0] {
                Value::Object(o) => Ok(Value::Array(
                    o.keys().map(|k| Value::from(k.clone())).collect(),
                )),
                _ => Err("keys expects a map".into()),
            }),
    );
    ctx.declare_func(
        "values",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| match &a[0] {
                Value::Object(o) => Ok(Value::Array(o.values().cloned().collect())),
                _ => Err("values expects a map".into()),
            }),
    );
    ctx.declare_func(
        "compact",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| match &a[0] {
                Value::Array(v) => Ok(Value::Array(
                    v.iter()
                        .filter(|x| {
                            !matches!(x, Value::Null)
                                && !matches!(x, Value::String(s) if s.is_empty())
                        })
                        .cloned()
                        .collect(),
                )),
                _ => Err("compact expects a list".into()),
            }),
    );
    ctx.declare_func(
        "distinct",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| match &a[0] {
                Value::Array(v) => {
                    let mut out: Vec<Value> = Vec::new();
                    for x in v {
                        if !out.contains(x) {
                            out.push(x.clone());
                        }
                    }
                    Ok(Value::Array(out))
                }
                _ => Err("distinct expects a list".into()),
            }),
    );
    ctx.declare_func(
        "flatten",
        FuncDef::builder().param(ParamType::Any).build(|a| {
            fn flat(v: &Value, out: &mut Vec<Value>) {
                match v {
                    Value::Array(items) => items.iter().for_each(|i| flat(i, out)),
                    other => out.push(other.clone()),
                }
            }
            let mut out = Vec::new();
            flat(&a[0], &mut out);
            Ok(Value::Array(out))
        }),
    );
    ctx.declare_func(
        "trim",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| {
                let cut = s(&a[1]);
                Ok(Value::from(
                    s(&a[0]).trim_matches(|c| cut.contains(c)).to_owned(),
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
                let chars: Vec<char> = s(&a[0]).chars().collect();
                let off = num(&a[1])? as i64;
                let len = num(&a[2])? as i64;
                let start = if off < 0 {
                    (chars.len() as i64 + off).max(0)
                } else {
                    off.min(chars.len() as i64)
                } as usize;
                let end = if len < 0 {
                    chars.len()
                } else {
                    (start + len as usize).min(chars.len())
                };
                Ok(Value::from(chars[start..end].iter().collect::<String>()))
            }),
    );
    ctx.declare_func(
        "tostring",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| Ok(Value::from(s(&a[0])))),
    );
    ctx.declare_func(
        "tonumber",
        FuncDef::builder().param(ParamType::Any).build(|a| {
            let n = num(&a[0])?;
            Ok(hcl::Number::from_f64(n)
                .map(Value::Number)
                .unwrap_or(Value::Null))
        }),
    );
    ctx.declare_func(
        "tobool",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| match &a[0] {
                Value::Bool(b) => Ok(Value::from(*b)),
                Value::String(t) if t == "true" => Ok(Value::from(true)),
                Value::String(t) if t == "false" => Ok(Value::from(false)),
                other => Err(format!("cannot convert {other} to bool")),
            }),
    );
    ctx.declare_func(
        "tolist",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| Ok(a[0].clone())),
    );
    ctx.declare_func(
        "toset",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| Ok(a[0].clone())),
    );
    ctx.declare_func(
        "tomap",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| Ok(a[0].clone())),
    );
    ctx.declare_func(
        "min",
        FuncDef::builder()
            .variadic_param(ParamType::Number)
            .build(|a| {
                let v = a.iter().map(num).collect::<Result<Vec<_>, _>>()?;
                let m = v.into_iter().fold(f64::INFINITY, f64::min);
                Ok(hcl::Number::from_f64(m)
                    .map(Value::Number)
                    .unwrap_or(Value::Null))
            }),
    );
    ctx.declare_func(
        "max",
        FuncDef::builder()
            .variadic_param(ParamType::Number)
            .build(|a| {
                let v = a.iter().map(num).collect::<Result<Vec<_>, _>>()?;
                let m = v.into_iter().fold(f64::NEG_INFINITY, f64::max);
                Ok(hcl::Number::from_f64(m)
                    .map(Value::Number)
                    .unwrap_or(Value::Null))
            }),
    );
    ctx.declare_func(
        "abs",
        FuncDef::builder().param(ParamType::Number).build(|a| {
            Ok(hcl::Number::from_f64(num(&a[0])?.abs())
                .map(Value::Number)
                .unwrap_or(Value::Null))
        }),
    );
    ctx.declare_func(
        "file",
        str1(|a: FuncArgs| {
            let p = s(&a[0]);
            std::fs::read_to_string(in_cwd(&p))
                .map(Value::from)
                .map_err(|e| format!("cannot read file \"{p}\": {e}"))
        }),
    );
    ctx.declare_func(
        "fileexists",
        str1(|a: FuncArgs| Ok(Value::from(in_cwd(&s(&a[0])).is_file()))),
    );
    ctx.declare_func(
        "basename",
        str1(|a: FuncArgs| {
            Ok(Value::from(
                std::path::Path::new(&s(&a[0]))
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ))
        }),
    );
    ctx.declare_func(
        "dirname",
        str1(|a: FuncArgs| {
            Ok(Value::from(
                std::path::Path::new(&s(&a[0]))
                    .parent()
                    .map(|n| n.display().to_string())
                    .unwrap_or_else(|| ".".into()),
            ))
        }),
    );
    ctx.declare_func(
        "abspath",
        str1(|a: FuncArgs| Ok(Value::from(in_cwd(&s(&a[0])).display().to_string()))),
    );
    ctx.declare_func(
        "jsonencode",
        FuncDef::builder().param(ParamType::Any).build(|a| {
            serde_json::to_string(&a[0])
                .map(Value::from)
                .map_err(|e| e.to_string())
        }),
    );
    if with_env {
        ctx.declare_func(
            "env",
            str1(|a: FuncArgs| Ok(Value::from(std::env::var(s(&a[0])).unwrap_or_default()))),
        );
    } else {
        ctx.declare_func("env", FuncDef::builder().variadic_param(ParamType::Any).build(|_| {
            Err("env() can only be used in a variable's default (as in Packer): declare `variable \"x\" { default = env(\"X\") }` and use var.x".into())
        }));
    }
}

/// Go's `$1`/`${name}` replacement syntax is the regex crate's too; only escape nothing.
fn go_to_regex_replacement(s: &str) -> String {
    s.to_owned()
}

/// Terraform's `format`: `%s`, `%d`, `%v`, `%q`, `%%`, `%f`.
pub(super) fn format(spec: &str, args: &[Value]) -> Result<Value, String> {
    let mut out = String::new();
    let mut it = args.iter();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut verb = String::new();
        while let Some(&n) = chars.peek() {
            chars.next();
            if n.is_ascii_alphabetic() || n == '%' {
                verb.push(n);
                break;
            }
            verb.push(n);
        }
        if verb == "%" {
            out.push('%');
            continue;
        }
        let v = it
            .next()
            .ok_or_else(|| format!("not enough arguments for format \"{spec}\""))?;
        match verb.chars().last() {
            Some('s' | 'v') => out.push_str(&s(v)),
            Some('d') => out.push_str(&format!("{}", num(v)? as i64)),
            Some('f') => out.push_str(&format!("{:.6}", num(v)?)),
            Some('q') => out.push_str(&format!("{:?}", s(v))),
            _ => return Err(format!("unsupported format verb %{verb}")),
        }
    }
    Ok(Value::from(out))
}

/// Terraform's `formatdate(spec, timestamp)`.
fn formatdate(a: FuncArgs) -> Result<Value, String> {
    let spec = s(&a[0]);
    let ts = s(&a[1]);
    let t = OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("\"{ts}\" is not an RFC 3339 timestamp"))?;
    use crate::template::gotmpl::{DAYS, MONTHS};
    let m = u8::from(t.month()) as usize;
    let d = t.weekday().number_days_from_monday() as usize;
    let h12 = match t.hour() % 12 {
        0 => 12,
        h => h,
    };
    let tokens: Vec<(&str, String)> = vec![
        ("YYYY", format!("{:04}", t.year())),
        ("YY", format!("{:02}", t.year() % 100)),
        ("MMMM", MONTHS[m - 1].into()),
        ("MMM", MONTHS[m - 1][..3].into()),
        ("MM", format!("{m:02}")),
        ("M", format!("{m}")),
        ("DD", format!("{:02}", t.day())),
        ("D", format!("{}", t.day())),
        ("EEEE", DAYS[d].into()),
        ("EEE", DAYS[d][..3].into()),
        ("hh", format!("{:02}", t.hour())),
        ("h", format!("{}", t.hour())),
        ("HH", format!("{h12:02}")),
        ("H", format!("{h12}")),
        ("mm", format!("{:02}", t.minute())),
        ("m", format!("{}", t.minute())),
        ("ss", format!("{:02}", t.second())),
        ("s", format!("{}", t.second())),
        (
            "AA",
            if t.hour() >= 12 {
                "PM".into()
            } else {
                "AM".into()
            },
        ),
        (
            "aa",
            if t.hour() >= 12 {
                "pm".into()
            } else {
                "am".into()
            },
        ),
        ("ZZZZZ", "+00:00".into()),
        ("ZZZZ", "+0000".into()),
        ("ZZZ", "UTC".into()),
        ("Z", "Z".into()),
    ];
    let mut out = String::new();
    let mut rest = spec.as_str();
    'outer: while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('\'') {
            let end = r
                .find('\'')
                .ok_or("unterminated literal in formatdate spec")?;
            out.push_str(&r[..end]);
            rest = &r[end + 1..];
            continue;
        }
        for (tok, val) in &tokens {
            if let Some(r) = rest.strip_prefix(tok) {
                out.push_str(val);
                rest = r;
                continue 'outer;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        if c.is_ascii_alphabetic() {
            return Err(format!("invalid date format verb `{c}` in \"{spec}\""));
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Ok(Value::from(out))
}
