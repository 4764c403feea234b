//! Packer's basic string functions: `lower`, `upper`, `title`, `trimspace`, `chomp`,
//! `clean_resource_name`, `replace`, `regex_replace`, `regex`, `join`, `split`, `format`, `trim`,
//! `trimprefix`, `trimsuffix`, `startswith`, `endswith`, `strcontains`, `substr`.

use super::{format, go_to_regex_replacement, num, s};
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
}
