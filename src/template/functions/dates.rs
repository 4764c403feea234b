//! Packer's date functions: `formatdate`, `timeadd`, `legacy_isotime` (Go layouts, as
//! `{{isotime}}`), `legacy_strftime` (C `strftime` codes). Date arithmetic is checked: a duration
//! or a result outside what a timestamp can hold is an error, not a panic.

use super::limits;
use super::{now, rfc3339, s};
use hcl::Value;
use hcl::eval::{Context, FuncArgs, FuncDef, ParamType};
use time::OffsetDateTime;

fn strftime(t: OffsetDateTime, spec: &str) -> Result<String, String> {
    use crate::template::gotmpl::{DAYS, MONTHS};
    let mut out = String::new();
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        // Each directive adds at most 20 bytes (`%s`), so checking before each one bounds it.
        limits::string_len("legacy_strftime", out.len() + 20)?;
        if c != '%' {
            out.push(c);
            continue;
        }
        let m = u8::from(t.month()) as usize;
        let d = t.weekday().number_days_from_monday() as usize;
        match chars.next() {
            Some('Y') => out.push_str(&format!("{:04}", t.year())),
            Some('y') => out.push_str(&format!("{:02}", t.year() % 100)),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{:02}", t.day())),
            Some('e') => out.push_str(&format!("{:>2}", t.day())),
            Some('H') => out.push_str(&format!("{:02}", t.hour())),
            Some('I') => out.push_str(&format!("{:02}", (t.hour() + 11) % 12 + 1)),
            Some('M') => out.push_str(&format!("{:02}", t.minute())),
            Some('S') => out.push_str(&format!("{:02}", t.second())),
            Some('j') => out.push_str(&format!("{:03}", t.ordinal())),
            Some('p') => out.push_str(if t.hour() < 12 { "AM" } else { "PM" }),
            Some('b') => out.push_str(&MONTHS[m - 1][..3]),
            Some('B') => out.push_str(MONTHS[m - 1]),
            Some('a') => out.push_str(&DAYS[d][..3]),
            Some('A') => out.push_str(DAYS[d]),
            Some('Z') => out.push_str("UTC"),
            Some('z') => out.push_str("+0000"),
            Some('s') => out.push_str(&t.unix_timestamp().to_string()),
            Some('%') => out.push('%'),
            other => {
                return Err(format!(
                    "legacy_strftime: unsupported directive %{}",
                    other.map(String::from).unwrap_or_default()
                ));
            }
        }
    }
    Ok(out)
}

/// Terraform's `timeadd(timestamp, duration)`: checked, so `"99999999999999999h"` is an error.
fn timeadd(ts: &str, d: &str) -> Result<String, String> {
    let t = OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("timeadd: \"{ts}\" is not an RFC 3339 timestamp"))?;
    let (sign, body) = match d.strip_prefix('-') {
        Some(b) => (-1.0, b),
        None => (1.0, d.strip_prefix('+').unwrap_or(d)),
    };
    let secs = crate::template::provisioner::parse_duration(body)
        .ok_or_else(|| format!("timeadd: \"{d}\" is not a duration such as 10m or -1h"))?;
    let out_of_range = || {
        format!("timeadd: {ts} plus {d} is outside the years 0 to 9999 an RFC 3339 timestamp holds")
    };
    let dur = time::Duration::checked_seconds_f64(sign * secs).ok_or_else(out_of_range)?;
    let t = t
        .checked_add(dur)
        .and_then(|t| t.checked_to_offset(time::UtcOffset::UTC))
        .ok_or_else(out_of_range)?;
    if !(0..=9999).contains(&t.year()) {
        return Err(out_of_range());
    }
    Ok(rfc3339(t))
}

/// `formatdate`'s tokens for `t`, longest first where one is a prefix of another.
fn formatdate_tokens(t: OffsetDateTime) -> Vec<(&'static str, String)> {
    use crate::template::gotmpl::{DAYS, MONTHS};
    let m = u8::from(t.month()) as usize;
    let d = t.weekday().number_days_from_monday() as usize;
    let h12 = match t.hour() % 12 {
        0 => 12,
        h => h,
    };
    vec![
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
    ]
}

/// Terraform's `formatdate(spec, timestamp)`.
fn formatdate(a: FuncArgs) -> Result<Value, String> {
    let spec = s(&a[0]);
    let ts = s(&a[1]);
    let t = OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("\"{ts}\" is not an RFC 3339 timestamp"))?;
    let tokens = formatdate_tokens(t);
    let mut out = String::new();
    let mut rest = spec.as_str();
    'outer: while !rest.is_empty() {
        // A token adds at most 9 bytes (`September`), so checking before each one bounds it.
        limits::string_len("formatdate", out.len() + 9)?;
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

/// Declares the functions on `ctx`.
pub(super) fn declare(ctx: &mut Context<'_>) {
    ctx.declare_func(
        "timeadd",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| timeadd(&s(&a[0]), &s(&a[1])).map(Value::from)),
    );
    ctx.declare_func(
        "formatdate",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(formatdate),
    );
    ctx.declare_func(
        "legacy_isotime",
        FuncDef::builder().param(ParamType::String).build(|a| {
            let out = crate::template::gotmpl::go_time_format(now(), &s(&a[0]));
            limits::string_len("legacy_isotime", out.len())?;
            limits::charge("legacy_isotime", Value::from(out))
        }),
    );
    ctx.declare_func(
        "legacy_strftime",
        FuncDef::builder()
            .param(ParamType::String)
            .build(|a| strftime(now(), &s(&a[0])).map(Value::from)),
    );
}

#[cfg(test)]
mod tests {
    use super::super::eval;
    use hcl::Value;

    #[test]
    fn timeadd_is_checked() {
        assert_eq!(
            eval(r#"timeadd("2024-01-01T00:00:00Z", "10m")"#),
            Ok(Value::from("2024-01-01T00:10:00Z"))
        );
        assert_eq!(
            eval(r#"timeadd("2024-01-01T00:00:00Z", "-1h")"#),
            Ok(Value::from("2023-12-31T23:00:00Z"))
        );
        // Used to panic in `Duration::seconds_f64` and in the addition.
        for d in [
            "99999999999999999h",
            "-99999999999999999h",
            "99999999999999999999999999999999999999h",
            "100000000h",
        ] {
            let e = eval(&format!(r#"timeadd("2020-01-01T00:00:00Z", "{d}")"#)).expect_err(d);
            // Refused as a duration beyond any build's life, or as a time outside 0..=9999.
            assert!(
                e.contains("timeadd") && (e.contains("outside") || e.contains("duration")),
                "{d}: {e}"
            );
        }
        let e = eval(&format!(
            r#"timeadd("2020-01-01T00:00:00Z", "{}h")"#,
            "9".repeat(400)
        ))
        .expect_err("infinite");
        assert!(e.contains("timeadd"), "{e}");
    }

    #[test]
    fn formatdate_and_strftime_are_bounded() {
        assert_eq!(
            eval(r#"formatdate("DD MMM YYYY hh:mm ZZZ", "2018-01-02T23:12:01Z")"#),
            Ok(Value::from("02 Jan 2018 23:12 UTC"))
        );
        // 4 million "MMMM" are 36 MB of month names.
        let e = eval(
            r#"formatdate(replace(format("%4000000s", ""), " ", "MMMM"), "2018-01-02T23:12:01Z")"#,
        )
        .map(|v| super::s(&v).len())
        .expect_err("36 MB");
        assert!(e.contains("formatdate") && e.contains("16 MiB"), "{e}");
        // "%B" is "January" (time 0 in tests): 4 million of them are 28 MB.
        let e = eval(r#"legacy_strftime(replace(format("%4000000s", ""), " ", "%B"))"#)
            .map(|v| super::s(&v).len())
            .expect_err("28 MB");
        assert!(e.contains("legacy_strftime") && e.contains("16 MiB"), "{e}");
    }
}
