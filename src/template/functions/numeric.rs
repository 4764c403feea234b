//! Packer's numeric functions: `ceil`, `floor`, `log`, `pow`, `signum`, `parseint`, `sum`.

use super::{num, s};
use hcl::Value;
use hcl::eval::{Context, FuncDef, ParamType};

fn number(x: f64) -> Result<Value, String> {
    hcl::Number::from_f64(x)
        .map(Value::Number)
        .ok_or_else(|| format!("{x} is not a finite number"))
}

/// Declares the numeric functions on `ctx`.
pub(super) fn declare(ctx: &mut Context<'_>) {
    ctx.declare_func(
        "ceil",
        FuncDef::builder()
            .param(ParamType::Number)
            .build(|a| number(num(&a[0])?.ceil())),
    );
    ctx.declare_func(
        "floor",
        FuncDef::builder()
            .param(ParamType::Number)
            .build(|a| number(num(&a[0])?.floor())),
    );
    ctx.declare_func(
        "signum",
        FuncDef::builder().param(ParamType::Number).build(|a| {
            let x = num(&a[0])?;
            number(if x == 0.0 { 0.0 } else { x.signum() })
        }),
    );
    ctx.declare_func(
        "log",
        FuncDef::builder()
            .params([ParamType::Number, ParamType::Number])
            .build(|a| number(num(&a[0])?.ln() / num(&a[1])?.ln())),
    );
    ctx.declare_func(
        "pow",
        FuncDef::builder()
            .params([ParamType::Number, ParamType::Number])
            .build(|a| number(num(&a[0])?.powf(num(&a[1])?))),
    );
    ctx.declare_func(
        "parseint",
        FuncDef::builder()
            .params([ParamType::String, ParamType::Number])
            .build(|a| {
                let text = s(&a[0]);
                let base = num(&a[1])? as u32;
                if !(2..=62).contains(&base) {
                    return Err(format!("parseint: base {base} must be between 2 and 62"));
                }
                let (neg, digits) = match text.strip_prefix('-') {
                    Some(d) => (true, d),
                    None => (false, text.strip_prefix('+').unwrap_or(&text)),
                };
                let v = i64::from_str_radix(digits, base).map_err(|_| {
                    format!("parseint: cannot parse \"{text}\" as a base {base} integer")
                })?;
                Ok(Value::from(if neg { -v } else { v }))
            }),
    );
    ctx.declare_func(
        "sum",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| match &a[0] {
                Value::Array(items) if !items.is_empty() => {
                    number(items.iter().map(num).sum::<Result<f64, String>>()?)
                }
                Value::Array(_) => Err("sum: cannot sum an empty list".into()),
                other => Err(format!("sum: expected a list of numbers, got {other}")),
            }),
    );
}
