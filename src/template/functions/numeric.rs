//! Packer's numeric functions: `ceil`, `floor`, `log`, `pow`, `signum`, `parseint`, `sum`.
//! Results that are not finite numbers, and integers that do not fit in 64 bits, are errors.

use super::limits;
use super::{num, s};
use hcl::Value;
use hcl::eval::{Context, FuncDef, ParamType};

fn number(x: f64) -> Result<Value, String> {
    hcl::Number::from_f64(x)
        .map(Value::Number)
        .ok_or_else(|| format!("{x} is not a finite number"))
}

/// The value of digit `c` in `base` (2 to 62): for bases up to 36 letters are case-insensitive;
/// above, `a`-`z` are 10 to 35 and `A`-`Z` 36 to 61 (Go's `big.Int.SetString`, Terraform's).
fn digit(c: char, base: u32) -> Option<u32> {
    let d = match c {
        '0'..='9' => c as u32 - '0' as u32,
        'a'..='z' => c as u32 - 'a' as u32 + 10,
        'A'..='Z' if base <= 36 => c as u32 - 'A' as u32 + 10,
        'A'..='Z' => c as u32 - 'A' as u32 + 36,
        _ => return None,
    };
    (d < base).then_some(d)
}

/// Terraform's `parseint(text, base)`, within `i64` (a larger number is an error, not a wrap).
fn parseint(text: &str, base: u32) -> Result<i64, String> {
    if !(2..=62).contains(&base) {
        return Err(format!("parseint: base {base} must be between 2 and 62"));
    }
    let (neg, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let bad = || format!("parseint: cannot parse \"{text}\" as a base {base} integer");
    if digits.is_empty() {
        return Err(bad());
    }
    let mut v: i64 = 0;
    for c in digits.chars() {
        let d = digit(c, base).ok_or_else(bad)?;
        // Accumulated negatively when negative, so i64::MIN parses too.
        let d = if neg { -i64::from(d) } else { i64::from(d) };
        v = v
            .checked_mul(i64::from(base))
            .and_then(|v| v.checked_add(d))
            .ok_or_else(|| format!("parseint: \"{text}\" does not fit in a 64-bit integer"))?;
    }
    Ok(v)
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
                let base = limits::int("parseint", &a[1])?;
                if !(2..=62).contains(&base) {
                    return Err(format!("parseint: base {base} must be between 2 and 62"));
                }
                parseint(&s(&a[0]), base as u32).map(Value::from)
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

#[cfg(test)]
mod tests {
    use super::parseint;

    #[test]
    fn parseint_bases_and_overflow() {
        assert_eq!(parseint("100", 10), Ok(100));
        assert_eq!(parseint("FF", 16), Ok(255));
        assert_eq!(parseint("-11", 2), Ok(-3));
        assert_eq!(parseint("Z", 62), Ok(61));
        assert_eq!(parseint("z", 62), Ok(35));
        assert_eq!(parseint("-9223372036854775808", 10), Ok(i64::MIN));
        // Base 40 used to reach `i64::from_str_radix`, which panics above 36.
        assert_eq!(parseint("10", 40), Ok(40));
        for (text, base) in [
            ("9223372036854775808", 10),
            ("99999999999999999999999", 10),
            ("", 10),
            ("12", 2),
            ("!", 62),
        ] {
            assert!(parseint(text, base).is_err(), "{text} in base {base}");
        }
    }
}
