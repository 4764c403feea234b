//! The HCL2 functions Packer templates use, for `hcl::eval`. Functions are plain `fn` pointers, so
//! the build's start time, working directory, environment and evaluation budget live in
//! thread-locals set by the loader.
//!
//! Templates are untrusted (a worker evaluates other teams' templates in its own process): every
//! function checks the sizes it builds against [`limits`] before allocating, checks its arithmetic
//! and indexes, and reads only regular files, never under `/proc`, `/sys` or `/dev`
//! (the `files` module's reader). An error names the function and the limit; nothing panics.

pub mod aws;
mod collections;
#[cfg(test)]
mod coverage;
mod dates;
mod encoding;
mod files;
mod format;
pub mod limits;
mod net;
mod numeric;
mod sets;
mod strings;

use hcl::Value;
use hcl::eval::{Context, FuncArgs, FuncDef, ParamType};
use std::cell::Cell;
use time::OffsetDateTime;

thread_local! {
    static NOW: Cell<i64> = const { Cell::new(0) };
    static CWD: std::cell::RefCell<std::path::PathBuf> = std::cell::RefCell::new(std::path::PathBuf::from("."));
    static ENV: std::cell::RefCell<Option<std::collections::BTreeMap<String, String>>> =
        const { std::cell::RefCell::new(None) };
    static FILE_ROOT: std::cell::RefCell<Option<std::path::PathBuf>> =
        const { std::cell::RefCell::new(None) };
}

/// Limits the file functions of this thread's evaluations to files below `root` (links
/// resolved), or lifts the limit (`None`).
pub fn set_file_root(root: Option<&std::path::Path>) {
    let root = root.map(|r| std::fs::canonicalize(r).unwrap_or_else(|_| r.to_path_buf()));
    FILE_ROOT.with(|f| *f.borrow_mut() = root);
}

/// The directory the file functions are limited to, if any.
pub(super) fn file_root() -> Option<std::path::PathBuf> {
    FILE_ROOT.with(|f| f.borrow().clone())
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

/// Sets the environment `env()` reads (in variable defaults) for this thread's evaluations: the
/// load's `Inputs::env`, so a worker decides what of its own environment a template sees. Until it
/// is set, `env()` reads the process's.
pub fn set_env(env: &std::collections::BTreeMap<String, String>) {
    ENV.with(|e| *e.borrow_mut() = Some(env.clone()));
}

/// The value of environment variable `name` for `env()` and `{{env}}`: from [`set_env`]'s
/// environment once set on this thread, else the process's; empty when unset.
pub fn env_var(name: &str) -> String {
    ENV.with(|e| match &*e.borrow() {
        Some(env) => env.get(name).cloned().unwrap_or_default(),
        None => std::env::var(name).unwrap_or_default(),
    })
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
    aws::declare(ctx);
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
    strings::declare(ctx);
    collections::declare_basic(ctx);
    sets::declare(ctx);
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
                .and_then(|v| limits::charge("jsonencode", v))
        }),
    );
    if with_env {
        ctx.declare_func(
            "env",
            str1(|a: FuncArgs| Ok(Value::from(env_var(&s(&a[0]))))),
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

/// Test support: `expr` (HCL expression syntax) evaluated with every function declared.
#[cfg(test)]
pub(super) fn eval(expr: &str) -> Result<Value, String> {
    use hcl::eval::Evaluate;
    let parsed = hcl_edit::parser::parse_expr(expr).map_err(|e| e.message().to_owned())?;
    let mut ctx = Context::new();
    declare(&mut ctx, false);
    hcl::Expression::from(parsed)
        .evaluate(&ctx)
        .map_err(|e| e.to_string())
}
