//! Terraform's `format` (and so `formatlist`): Go's `fmt` verbs `%s`, `%v`, `%d`, `%f`, `%e`,
//! `%E`, `%g`, `%G`, `%x`, `%X`, `%o`, `%b`, `%q`, `%t` and `%%`, with flags (`-`, `+`, space,
//! `0`, `#`), width, precision and explicit argument
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
    sharp: bool,
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
            '#' => sp.sharp = true,
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
        's' | 'v' if !(sp.sharp && matches!(v, Value::String(_))) => {
            let t = s(v);
            match sp.prec {
                Some(p) => t.chars().take(p).collect(),
                None => t,
            }
        }
        'v' if sp.sharp && matches!(v, Value::String(_)) => format!("{:?}", s(v)),
        'q' => format!("{:?}", s(v)),
        't' => s(v),
        'd' => signed(sp, (num(v)? as i64).to_string()),
        'f' => signed(sp, format!("{:.*}", sp.prec.unwrap_or(6), num(v)?)),
        'e' | 'E' => {
            let t = exponent(num(v)?, sp.prec.unwrap_or(6));
            signed(sp, if sp.verb == 'E' { t.to_uppercase() } else { t })
        }
        'g' | 'G' => {
            let t = general(num(v)?, sp.prec);
            signed(sp, if sp.verb == 'G' { t.to_uppercase() } else { t })
        }
        'x' | 'X' | 'o' | 'b' => {
            let t = match v {
                Value::String(text) if sp.verb != 'o' && sp.verb != 'b' => {
                    text.bytes().map(|b| format!("{b:02x}")).collect()
                }
                _ => integer(sp, v)?,
            };
            if sp.verb == 'X' { t.to_uppercase() } else { t }
        }
        other => return Err(format!("unsupported format verb %{other}")),
    })
}

/// Go's `%e`: one digit, `prec` decimals, and an exponent of at least two digits with its sign.
fn exponent(x: f64, prec: usize) -> String {
    let t = format!("{x:.prec$e}");
    match t.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = e.strip_prefix('-').map_or(("+", e), |d| ("-", d));
            format!("{m}e{sign}{digits:0>2}")
        }
        None => t,
    }
}

/// Go's `%g`: the shortest representation (or `prec` significant digits), in `%e` form when the
/// exponent is below -4 or at least the precision (21 for the shortest, as Go's `%v`; 6 with no
/// precision is `strconv`'s rule for `%g`), trailing zeros removed.
fn general(x: f64, prec: Option<usize>) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let sci = match prec {
        Some(p) => format!("{x:.*e}", p.max(1) - 1),
        None => format!("{x:e}"),
    };
    let Some((mant, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mant) = mant.strip_prefix('-').map_or((false, mant), |m| (true, m));
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let eprec = match prec {
        None => 21,
        Some(p) => (p.max(1) as i32)
            .min(digits.len().max(1) as i32)
            .max(p.max(1) as i32),
    };
    let body = if exp < -4 || exp >= eprec {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let (sign, e) = if exp < 0 { ("-", -exp) } else { ("+", exp) };
        format!("{first}{frac}e{sign}{e:02}")
    } else if exp < 0 {
        format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
    } else {
        let point = exp as usize + 1;
        if digits.len() <= point {
            format!("{digits}{}", "0".repeat(point - digits.len()))
        } else {
            format!("{}.{}", &digits[..point], &digits[point..])
        }
    };
    if neg { format!("-{body}") } else { body }
}

/// `%x`, `%X`, `%o` and `%b` of an integer, with `#`'s prefix (`0x`, `0`, none for `%b`).
fn integer(sp: &Spec, v: &Value) -> Result<String, String> {
    let x = num(v)?;
    if x.fract() != 0.0 || !x.is_finite() {
        return Err(format!(
            "format: %{} needs a whole number, got {x}",
            sp.verb
        ));
    }
    let n = x as i64;
    let (neg, m) = (n < 0, n.unsigned_abs());
    let body = match sp.verb {
        'o' => format!("{}{m:o}", if sp.sharp { "0" } else { "" }),
        'b' => format!("{m:b}"),
        _ => format!("{}{m:x}", if sp.sharp { "0x" } else { "" }),
    };
    Ok(signed(sp, if neg { format!("-{body}") } else { body }))
}

/// Appends `body` padded to the directive's width, refusing to pass the string limit.
fn push_padded(out: &mut String, sp: &Spec, body: &str) -> Result<(), String> {
    let pad = sp.width.unwrap_or(0).saturating_sub(body.chars().count());
    let total = limits::add("format", out.len(), limits::add("format", body.len(), pad)?)?;
    limits::string_len("format", total)?;
    let numeric = matches!(
        sp.verb,
        'd' | 'f' | 'e' | 'E' | 'g' | 'G' | 'x' | 'X' | 'o' | 'b'
    );
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

    #[test]
    fn precision_and_the_other_verbs_as_packer_1_6_6_prints_them() {
        // Expected values from `packer console --config-type=hcl2` (Packer 1.6.6).
        let cases: &[(&str, Vec<Value>, &str)] = &[
            (
                "%5.1f|%-8.3f|%+.0f|%.2f",
                vec![
                    Value::from(2.56),
                    Value::from(2.5),
                    Value::from(2.5),
                    Value::from(1),
                ],
                "  2.6|2.500   |+2|1.00",
            ),
            (
                "%x|%X|%o|%b",
                vec![
                    Value::from(255),
                    Value::from(255),
                    Value::from(8),
                    Value::from(5),
                ],
                "ff|FF|10|101",
            ),
            (
                "%e|%E|%g|%G",
                vec![
                    Value::from(1234.5678),
                    Value::from(1234.5678),
                    Value::from(1234.5678),
                    Value::from(0.000001234),
                ],
                "1.234568e+03|1.234568E+03|1234.5678|1.234E-06",
            ),
            (
                "%#v|%v",
                vec![Value::from("a"), Value::from(1.5)],
                "\"a\"|1.5",
            ),
        ];
        for (spec, args, want) in cases {
            assert_eq!(f(spec, args).as_deref(), Ok(*want), "{spec}");
        }
        // Go's fmt for the rest (`fmt.Sprintf` gives these).
        let go: &[(&str, Value, &str)] = &[
            ("%#x", Value::from(255), "0xff"),
            ("%#o", Value::from(8), "010"),
            ("%06x", Value::from(255), "0000ff"),
            ("%x", Value::from("hi"), "6869"),
            ("%.3e", Value::from(-0.00012345), "-1.234e-04"),
            ("%.3g", Value::from(1234.5678), "1.23e+03"),
            ("%.3g", Value::from(1.0), "1"),
            ("%g", Value::from(100000), "100000"),
            ("%g", Value::from(0.5), "0.5"),
            ("%10.2e", Value::from(1234.5), "  1.23e+03"),
        ];
        for (spec, arg, want) in go {
            assert_eq!(
                f(spec, std::slice::from_ref(arg)).as_deref(),
                Ok(*want),
                "{spec}"
            );
        }
        assert!(f("%x", &[Value::from(1.5)]).is_err());
    }
}
