//! Packer's template engine for string fields: Go `text/template` actions such as
//! ``{{user `x`}}``, `{{timestamp | clean_resource_name}}`, `{{isotime "2006-01-02"}}` and the
//! build-time placeholders (`{{.Device}}`, `{{.MountPath}}`, ...).
//!
//! Interpolation runs in two phases, as in Packer: at validation every function is evaluated and
//! every action that names a placeholder is kept verbatim; at build time the pipeline renders the
//! kept actions with the placeholder values. An unknown function or placeholder is an error in the
//! first phase.
//!
//! What a string can grow to is bounded ([`limits::MAX_STRING_BYTES`]): `replace` with an empty
//! pattern, and a field that repeats a large variable, are errors before they are built.

mod parse;

use crate::template::functions::limits;
use parse::parse;
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// One parsed piece of a template string.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Text(String),
    Action { pipeline: Vec<Cmd>, source: String },
}

/// One command of a pipeline: a function with arguments, a field, or a literal.
#[derive(Debug, Clone, PartialEq)]
enum Cmd {
    Func(String, Vec<Arg>),
    Field(String),
    Literal(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Str(String),
    Field(String),
    Number(String),
}

/// What the engine knows while rendering.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// User variables (already resolved).
    pub user: BTreeMap<String, String>,
    /// Whether ``{{env `X`}}`` is allowed (only in the `variables` section, as in Packer).
    pub env_allowed: bool,
    /// The build's start time: `{{timestamp}}` and `{{isotime}}` use it, so every field agrees.
    pub now: OffsetDateTime,
    /// `{{build_name}}`.
    pub build_name: String,
    /// The template's directory, for `{{template_dir}}`.
    pub template_dir: String,
    /// Placeholders this field may use; `None` values are kept for build time.
    pub placeholders: BTreeMap<String, Option<String>>,
}

/// The placeholders Packer's chroot builder offers, by field kind.
pub mod placeholders {
    /// Mount and device commands: `pre_mount_commands`, `post_mount_commands`, `mount_path`.
    pub const DEVICE: &[&str] = &["Device", "MountPath"];
    /// `command_wrapper`.
    pub const COMMAND: &[&str] = &["Command"];
    /// AMI name, description and tags: facts about the source image and region.
    pub const SOURCE: &[&str] = &[
        "SourceAMI",
        "SourceAMIName",
        "SourceAMICreationDate",
        "SourceAMIOwner",
        "SourceAMIOwnerName",
        "SourceAMITags",
        "BuildRegion",
    ];
    /// The shell provisioner's `execute_command`.
    pub const EXECUTE: &[&str] = &["Vars", "Path", "Command"];
}

/// Outcome of the first phase: the string with functions applied and build-time actions kept,
/// plus warnings (deprecated functions, undeclared variables).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rendered {
    /// The rendered text.
    pub text: String,
    /// Warnings to show the user.
    pub warnings: Vec<String>,
}

const FUNCS: &[&str] = &[
    "user",
    "env",
    "timestamp",
    "isotime",
    "uuid",
    "clean_resource_name",
    "clean_ami_name",
    "build_name",
    "build_type",
    "lower",
    "upper",
    "replace",
    "replace_all",
    "split",
    "packer_version",
    "template_dir",
    "pwd",
];

/// True when `s` contains a template action.
pub fn has_actions(s: &str) -> bool {
    s.contains("{{")
}

/// Renders `s`: functions evaluated, placeholders with a value substituted, placeholders without a
/// value kept verbatim (their whole action), anything unknown an error.
pub fn render(s: &str, ctx: &Ctx) -> Result<Rendered, String> {
    let segs = parse(s)?;
    let mut out = Rendered::default();
    for seg in segs {
        match seg {
            Seg::Text(t) => out.text.push_str(&t),
            Seg::Action { pipeline, source } => {
                let fields = fields_of(&pipeline);
                for f in &fields {
                    if !ctx.placeholders.contains_key(f) {
                        let known: Vec<&str> =
                            ctx.placeholders.keys().map(String::as_str).collect();
                        return Err(if known.is_empty() {
                            format!("`{{{{.{f}}}}}` is not available in this field")
                        } else {
                            format!(
                                "`{{{{.{f}}}}}` is not available in this field; available: {}",
                                known
                                    .iter()
                                    .map(|k| format!("{{{{.{k}}}}}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        });
                    }
                }
                if fields
                    .iter()
                    .any(|f| ctx.placeholders.get(f).is_some_and(Option::is_none))
                {
                    check_funcs(&pipeline)?;
                    out.text.push_str(&source);
                    continue;
                }
                let v = eval_pipeline(&pipeline, ctx, &mut out.warnings)?;
                // `{{user `big`}}` a million times must not add up past one string's limit.
                limits::string_len("template", out.text.len().saturating_add(v.len()))?;
                out.text.push_str(&v);
            }
        }
    }
    Ok(out)
}

fn fields_of(pipeline: &[Cmd]) -> Vec<String> {
    let mut out = Vec::new();
    for c in pipeline {
        match c {
            Cmd::Field(f) => out.push(f.clone()),
            Cmd::Func(_, args) => {
                for a in args {
                    if let Arg::Field(f) = a {
                        out.push(f.clone());
                    }
                }
            }
            Cmd::Literal(_) => {}
        }
    }
    out
}

fn check_funcs(pipeline: &[Cmd]) -> Result<(), String> {
    for c in pipeline {
        if let Cmd::Func(name, _) = c
            && !FUNCS.contains(&name.as_str())
        {
            return Err(unknown_function(name));
        }
    }
    Ok(())
}

fn unknown_function(name: &str) -> String {
    let hint = crate::template::suggest(name, FUNCS.iter().copied())
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default();
    format!("function \"{name}\" not defined{hint}")
}

fn eval_pipeline(
    pipeline: &[Cmd],
    ctx: &Ctx,
    warnings: &mut Vec<String>,
) -> Result<String, String> {
    let mut prev: Option<String> = None;
    for cmd in pipeline {
        let v = match cmd {
            Cmd::Literal(s) => s.clone(),
            Cmd::Field(f) => ctx
                .placeholders
                .get(f)
                .cloned()
                .flatten()
                .unwrap_or_default(),
            Cmd::Func(name, args) => {
                let mut vals: Vec<String> = args
                    .iter()
                    .map(|a| match a {
                        Arg::Str(s) | Arg::Number(s) => s.clone(),
                        Arg::Field(f) => ctx
                            .placeholders
                            .get(f)
                            .cloned()
                            .flatten()
                            .unwrap_or_default(),
                    })
                    .collect();
                if let Some(p) = prev.take() {
                    vals.push(p);
                }
                call(name, &vals, ctx, warnings)?
            }
        };
        prev = Some(v);
    }
    Ok(prev.unwrap_or_default())
}

fn arity(name: &str, args: &[String], n: usize) -> Result<(), String> {
    if args.len() != n {
        return Err(format!(
            "wrong number of args for {name}: want {n} got {}",
            args.len()
        ));
    }
    Ok(())
}

fn call(
    name: &str,
    args: &[String],
    ctx: &Ctx,
    warnings: &mut Vec<String>,
) -> Result<String, String> {
    match name {
        "user" => {
            arity(name, args, 1)?;
            match ctx.user.get(&args[0]) {
                Some(v) => Ok(v.clone()),
                None => {
                    warnings.push(format!(
                        "variable `{}` is used but not declared in `variables`; it renders as an empty string",
                        args[0]
                    ));
                    Ok(String::new())
                }
            }
        }
        "env" => {
            arity(name, args, 1)?;
            if !ctx.env_allowed {
                return Err("`env` can only be used in the `variables` section (as in Packer): declare a variable with {{env `X`}} as its default and use {{user `name`}} here".into());
            }
            // The load's environment when the loader set one (a worker's allow-listed one).
            Ok(crate::template::functions::env_var(&args[0]))
        }
        "timestamp" => {
            arity(name, args, 0)?;
            Ok(ctx.now.unix_timestamp().to_string())
        }
        "isotime" => match args.len() {
            0 => Ok(go_time_format(ctx.now, "2006-01-02T15:04:05Z07:00")),
            1 => Ok(go_time_format(ctx.now, &args[0])),
            _ => arity(name, args, 1).map(|_| String::new()),
        },
        "uuid" => {
            arity(name, args, 0)?;
            Ok(uuid::Uuid::new_v4().to_string())
        }
        "clean_resource_name" => {
            arity(name, args, 1)?;
            Ok(clean_ami_name(&args[0]))
        }
        "clean_ami_name" => {
            arity(name, args, 1)?;
            warnings.push("`clean_ami_name` is deprecated: use `clean_resource_name`".into());
            Ok(clean_ami_name(&args[0]))
        }
        "build_name" => Ok(ctx.build_name.clone()),
        "build_type" => Ok("amazon-chroot".into()),
        "lower" => arity(name, args, 1).map(|_| args[0].to_lowercase()),
        "upper" => arity(name, args, 1).map(|_| args[0].to_uppercase()),
        "replace" | "replace_all" => replace(name, args),
        "split" => {
            arity(name, args, 3)?;
            let i: usize = args[2]
                .parse()
                .map_err(|_| "split: the index must be a number".to_string())?;
            args[0]
                .split(args[1].as_str())
                .nth(i)
                .map(str::to_owned)
                .ok_or_else(|| format!("split: index {i} out of range"))
        }
        "packer_version" => Ok(crate::template::PACKER_COMPAT_VERSION.into()),
        "template_dir" => Ok(ctx.template_dir.clone()),
        "pwd" => Ok(std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_default()),
        other => Err(unknown_function(other)),
    }
}

/// `replace old new n s` (the first `n` matches, all when negative) and `replace_all old new s`,
/// checked first: an empty pattern matches between every two characters, and a pipeline of such
/// replacements would grow exponentially.
fn replace(name: &str, args: &[String]) -> Result<String, String> {
    let (n, s) = if name == "replace" {
        arity(name, args, 4)?;
        let n: i64 = args[2]
            .parse()
            .map_err(|_| "replace: the count must be a number".to_string())?;
        (n, &args[3])
    } else {
        arity(name, args, 3)?;
        (-1, &args[2])
    };
    let max = usize::try_from(n).unwrap_or(usize::MAX);
    limits::replacement(name, s, &args[0], &args[1], max)?;
    Ok(s.replacen(&args[0], &args[1], max))
}

/// Replaces every character an AMI name may not contain with `-` (Packer's `clean_resource_name`
/// for Amazon builders).
pub fn clean_ami_name(s: &str) -> String {
    s.chars()
        .map(|c| if ami_name_char(c) { c } else { '-' })
        .collect()
}

/// Characters an AMI name may contain.
pub fn ami_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c)
}

/// Month names, for time formats.
pub const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Week day names, Monday first.
pub const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats `t` with a Go reference layout (`2006-01-02T15:04:05Z07:00`); text that is not a
/// layout element is copied, as Go does for non-reference layouts.
pub fn go_time_format(t: OffsetDateTime, layout: &str) -> String {
    let month = u8::from(t.month()) as usize;
    let day = t.weekday().number_days_from_monday() as usize;
    let hour12 = match t.hour() % 12 {
        0 => 12,
        h => h,
    };
    let off = t.offset();
    let (oh, om) = (off.whole_hours(), off.minutes_past_hour().abs());
    let tokens: &[(&str, String)] = &[
        ("January", MONTHS[month - 1].to_string()),
        ("Monday", DAYS[day].to_string()),
        ("2006", format!("{:04}", t.year())),
        (
            "Z07:00",
            if off.is_utc() {
                "Z".into()
            } else {
                format!("{oh:+03}:{om:02}")
            },
        ),
        ("-07:00", format!("{oh:+03}:{om:02}")),
        ("-0700", format!("{oh:+03}{om:02}")),
        (
            "Z0700",
            if off.is_utc() {
                "Z".into()
            } else {
                format!("{oh:+03}{om:02}")
            },
        ),
        ("-07", format!("{oh:+03}")),
        ("Jan", MONTHS[month - 1][..3].to_string()),
        ("Mon", DAYS[day][..3].to_string()),
        (
            "MST",
            if off.is_utc() {
                "UTC".into()
            } else {
                format!("{oh:+03}")
            },
        ),
        (".000000000", format!(".{:09}", t.nanosecond())),
        (".000000", format!(".{:06}", t.microsecond())),
        (".000", format!(".{:03}", t.millisecond())),
        ("01", format!("{month:02}")),
        ("02", format!("{:02}", t.day())),
        ("_2", format!("{:>2}", t.day())),
        ("15", format!("{:02}", t.hour())),
        ("03", format!("{hour12:02}")),
        ("04", format!("{:02}", t.minute())),
        ("05", format!("{:02}", t.second())),
        ("06", format!("{:02}", t.year() % 100)),
        (
            "PM",
            if t.hour() >= 12 {
                "PM".into()
            } else {
                "AM".into()
            },
        ),
        (
            "pm",
            if t.hour() >= 12 {
                "pm".into()
            } else {
                "am".into()
            },
        ),
        ("1", format!("{month}")),
        ("2", format!("{}", t.day())),
        ("3", format!("{hour12}")),
        ("4", format!("{}", t.minute())),
        ("5", format!("{}", t.second())),
    ];
    let mut out = String::new();
    let mut rest = layout;
    'outer: while !rest.is_empty() {
        for (tok, val) in tokens {
            if let Some(r) = rest.strip_prefix(tok) {
                out.push_str(val);
                rest = r;
                continue 'outer;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn ctx() -> Ctx {
        let mut user = BTreeMap::new();
        user.insert("fs".to_owned(), "ext4".to_owned());
        user.insert("name".to_owned(), "My App: v1".to_owned());
        let mut placeholders = BTreeMap::new();
        placeholders.insert("Device".to_owned(), None);
        placeholders.insert("MountPath".to_owned(), Some("/mnt/x".to_owned()));
        Ctx {
            user,
            env_allowed: false,
            now: datetime!(2024-03-05 07:08:09 UTC),
            build_name: "app".into(),
            template_dir: "/t".into(),
            placeholders,
        }
    }

    #[test]
    fn table() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("plain", Ok("plain")),
            (
                "mkfs.{{user `fs`}} -L root {{.Device}}1",
                Ok("mkfs.ext4 -L root {{.Device}}1"),
            ),
            ("{{ user `fs` }}", Ok("ext4")),
            ("rpm --root={{.MountPath}}", Ok("rpm --root=/mnt/x")),
            ("{{timestamp}}", Ok("1709622489")),
            ("{{isotime \"2006-01-02\"}}", Ok("2024-03-05")),
            ("{{isotime \"20060102-1504\"}}", Ok("20240305-0708")),
            ("{{isotime}}", Ok("2024-03-05T07:08:09Z")),
            ("{{user `name` | clean_resource_name}}", Ok("My App- v1")),
            ("{{timestamp | clean_resource_name}}", Ok("1709622489")),
            ("{{build_name}}-{{build_type}}", Ok("app-amazon-chroot")),
            ("{{user `name` | lower}}", Ok("my app: v1")),
            ("{{split \"a,b,c\" \",\" 1}}", Ok("b")),
            ("{{replace_all \"-\" \"_\" \"a-b-c\"}}", Ok("a_b_c")),
            ("{{.Device | lower}}", Ok("{{.Device | lower}}")),
            ("{{/* note */}}x", Ok("x")),
            ("{{nope}}", Err("function \"nope\" not defined")),
            ("{{.Nope}}", Err("`{{.Nope}}` is not available")),
            (
                "{{env `HOME`}}",
                Err("`env` can only be used in the `variables` section"),
            ),
            ("{{user `fs`", Err("unclosed action")),
            ("{{timestamp 1}}", Err("wrong number of args for timestamp")),
        ];
        for (input, want) in cases {
            let got = render(input, &ctx());
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(&g.text, w, "{input}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{input}: {g}"),
                _ => panic!("{input}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn growing_replacements_are_errors_before_they_are_built() {
        let mut c = ctx();
        c.user.insert("big".into(), "x".repeat(1 << 20));
        // Each `replace_all ""` multiplies the length by the replacement's: 2^20 × 33 is over.
        let e = render(
            "{{user `big` | replace_all \"\" \"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\"}}",
            &c,
        )
        .expect_err("over the limit");
        assert!(e.contains("replace_all") && e.contains("16 MiB"), "{e}");
        let e = render(
            "{{user `big` | replace \"\" \"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\" -1}}",
            &c,
        )
        .expect_err("over the limit");
        assert!(e.contains("replace"), "{e}");
        let e = render(&"{{user `big`}}".repeat(17), &c).expect_err("17 MiB");
        assert!(e.contains("16 MiB"), "{e}");
        assert_eq!(
            render("{{replace \"a\" \"bb\" 1 \"aaa\"}}", &c).map(|r| r.text),
            Ok("bbaa".into())
        );
    }

    #[test]
    fn warnings() {
        let r = render("{{user `undeclared`}}{{clean_ami_name `a b`}}", &ctx()).unwrap();
        assert_eq!(r.text, "a b");
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
    }
}
