//! The HCL2 functions Packer templates use, for `hcl::eval`. Functions are plain `fn` pointers, so
//! the build's start time and working directory live in thread-locals set by the loader.

mod collections;
mod dates;
mod encoding;
mod files;
mod net;
mod numeric;
mod strings;

use hcl::Value;
use hcl::eval::{Context, FuncArgs, FuncDef, ParamType};
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
    strings::declare(ctx);
    collections::declare_basic(ctx);
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
