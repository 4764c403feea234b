//! Terraform's `format` (and so `formatlist`): Go's `fmt` verbs `%s`, `%v`, `%d`, `%f`, `%q`,
//! `%t` and `%%`, with flags (`-`, `+`, space, `0`, `#`), width, precision and explicit argument
//! indexes (`%[2]s`). Widths and precisions are bounded by [`limits::MAX_STRING_BYTES`], and so is
//! the result, checked before each piece is padded.

use super::limits;
use super::{num, s};
use hcl::Value;
use std::iter::Peekable;
use std::str::Chars;

/// One `%...` directive.
#[derive(Debug, Default)]
struct Spec {
    minus: bool,
    plus: bool,
    space: bool,
    zero: bool,
    /// An explicit argument, 1-based (`%[2]s`).
    index: Option<usize>,
    width: Option<usize>,
    prec: Option<usize>,
    verb: char,
}

/// A decimal number in a directive (width, precision or index), bounded by the string limit.
fn number(chars: &mut Peekable<Chars<'_>>, what: &str) -> Result<Option<usize>, String> {
    let mut n: Option<usize> = None;
    while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
        chars.next();
        let v = n.unwrap_or(0).saturating_mul(10).saturating_add(d as usize);
        if v > limits::MAX_STRING_BYTES {
            return Err(format!(
                "format: the {what} is more than kiln's limit of {} for one string",
                limits::MAX_STRING_BYTES
            ));
        }
        n = Some(v);
    }
    Ok(n)
}

/// Reads a directive after its `%`.
fn parse_spec(chars: &mut Peekable<Chars<'_>>) -> Result<Spec, String> {
    let mut sp = Spec::default();
    while let Some(&c) = chars.peek() {
        match c {
            '-' => sp.minus = true,
            '+' => sp.plus = true,
            ' ' => sp.space = true,
            '0' => sp.zero = true,
            '#' => {}
            _ => break,
        }
        chars.next();
    }
    if chars.peek() == Some(&'[') {
        chars.next();
        sp.index = number(chars, "argument index")?;
        if chars.next() != Some(']') || sp.index.is_none_or(|i| i == 0) {
            return Err("format: a bad argument index: use %[1]s for the first argument".into());
        }
    }
    sp.width = number(chars, "width")?;
    if chars.peek() == Some(&'.') {
        chars.next();
        sp.prec = Some(number(chars, "precision")?.unwrap_or(0));
    }
    sp.verb = chars
        .next()
        .ok_or("format: the format ends in the middle of a % directive")?;
    Ok(sp)
}

/// A number's text with the `+`/space sign flags applied.
fn signed(sp: &Spec, text: String) -> String {
    if text.starts_with('-') {
        text
    } else if sp.plus {
        format!("+{text}")
    } else if sp.space {
        format!(" {text}")
    } else {
        text
    }
}

/// The directive's text for `v`, before padding.
fn render(sp: &Spec, v: &Value) -> Result<String, String> {
    Ok(match sp.verb {
        's' | 'v' => {
            let t = s(v);
            match sp.prec {
                Some(p) => t.chars().take(p).collect(),
                None => t,
            }
        }
        'q' => format!("{:?}", s(v)),
        't' => s(v),
        'd' => signed(sp, (num(v)? as i64).to_string()),
        'f' => signed(sp, format!("{:.*}", sp.prec.unwrap_or(6), num(v)?)),
        other => return Err(format!("unsupported format verb %{other}")),
    })
}

/// Appends `body` padded to the directive's width, refusing to pass the string limit.
fn push_padded(out: &mut String, sp: &Spec, body: &str) -> Result<(), String> {
    let pad = sp.width.unwrap_or(0).saturating_sub(body.chars().count());
    let total = limits::add("format", out.len(), limits::add("format", body.len(), pad)?)?;
    limits::string_len("format", total)?;
    let numeric = matches!(sp.verb, 'd' | 'f');
    if sp.minus {
        out.push_str(body);
        out.push_str(&" ".repeat(pad));
    } else if sp.zero && numeric {
        let (sign, digits) = match body.chars().next() {
            Some(c @ ('+' | '-' | ' ')) => (Some(c), &body[1..]),
            _ => (None, body),
        };
        out.extend(sign);
        out.push_str(&"0".repeat(pad));
        out.push_str(digits);
    } else {
        out.push_str(&" ".repeat(pad));
        out.push_str(body);
    }
    Ok(())
}

/// Terraform's `format(spec, args...)`.
pub(super) fn format(spec: &str, args: &[Value]) -> Result<Value, String> {
    let mut out = String::new();
    let mut next = 0usize;
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            limits::string_len("format", out.len() + c.len_utf8())?;
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            out.push('%');
            continue;
        }
        let sp = parse_spec(&mut chars)?;
        if let Some(i) = sp.index {
            next = i - 1;
        }
        let v = args
            .get(next)
            .ok_or_else(|| format!("not enough arguments for format \"{spec}\""))?;
        next += 1;
        let body = render(&sp, v)?;
        push_padded(&mut out, &sp, &body)?;
    }
    Ok(Value::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(spec: &str, args: &[Value]) -> Result<String, String> {
        format(spec, args).map(|v| s(&v))
    }

    #[test]
    fn verbs_flags_widths_and_indexes() {
        let cases: &[(&str, Vec<Value>, &str)] = &[
            ("Hello, %s!", vec![Value::from("Ander")], "Hello, Ander!"),
            (
                "There are %d lights",
                vec![Value::from(4)],
                "There are 4 lights",
            ),
            (
                "%5d|%-5d|%05d",
                vec![Value::from(42); 3],
                "   42|42   |00042",
            ),
            ("%+d % d", vec![Value::from(3), Value::from(3)], "+3  3"),
            (
                "%.2f %f",
                vec![Value::from(1.23456), Value::from(1)],
                "1.23 1.000000",
            ),
            ("%08.3f", vec![Value::from(-1.23456)], "-001.235"),
            (
                "%.3s|%6s",
                vec![Value::from("abcdef"), Value::from("ab")],
                "abc|    ab",
            ),
            (
                "%[2]s %[1]s",
                vec![Value::from("a"), Value::from("b")],
                "b a",
            ),
            ("%q 100%%", vec![Value::from("x")], "\"x\" 100%"),
            ("%t", vec![Value::from(true)], "true"),
        ];
        for (spec, args, want) in cases {
            assert_eq!(f(spec, args).as_deref(), Ok(*want), "{spec}");
        }
        assert!(f("%s %s", &[Value::from("a")]).is_err());
        assert!(f("%y", &[Value::from("a")]).is_err());
        assert!(f("%[0]s", &[Value::from("a")]).is_err());
        assert!(f("%5", &[Value::from("a")]).is_err());
    }

    #[test]
    fn huge_widths_and_precisions_are_errors_not_allocations() {
        for spec in [
            "%999999999999999999999999s",
            "%16777217s",
            "%.99999999999999999999f",
            "%[99999999999999999999]s",
        ] {
            let e = f(spec, &[Value::from("x")]).expect_err(spec);
            assert!(e.contains("format") && e.contains("limit"), "{spec}: {e}");
        }
        // Each piece fits, the whole does not.
        let e = f("%9000000s%9000000s", &[Value::from("a"), Value::from("b")]).expect_err("sum");
        assert!(e.contains("16 MiB"), "{e}");
    }
}
