//! Packer's date functions kiln adds: `timeadd`, `legacy_isotime` (Go layouts, as `{{isotime}}`),
//! `legacy_strftime` (C `strftime` codes).

use super::{now, rfc3339, s};
use hcl::Value;
use hcl::eval::{Context, FuncDef, ParamType};
use time::OffsetDateTime;

fn strftime(t: OffsetDateTime, spec: &str) -> Result<String, String> {
    use crate::template::gotmpl::{DAYS, MONTHS};
    let mut out = String::new();
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
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

/// Declares the functions on `ctx`.
pub(super) fn declare(ctx: &mut Context<'_>) {
    ctx.declare_func(
        "timeadd",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| {
                let ts = s(&a[0]);
                let t = OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| format!("timeadd: \"{ts}\" is not an RFC 3339 timestamp"))?;
                let d = s(&a[1]);
                let (sign, body) = match d.strip_prefix('-') {
                    Some(b) => (-1.0, b),
                    None => (1.0, d.strip_prefix('+').unwrap_or(&d)),
                };
                let secs = crate::template::provisioner::parse_duration(body).ok_or_else(|| {
                    format!("timeadd: \"{d}\" is not a duration such as 10m or -1h")
                })?;
                let t = t + time::Duration::seconds_f64(sign * secs);
                Ok(Value::from(rfc3339(t.to_offset(time::UtcOffset::UTC))))
            }),
    );
    ctx.declare_func(
        "legacy_isotime",
        FuncDef::builder().param(ParamType::String).build(|a| {
            Ok(Value::from(crate::template::gotmpl::go_time_format(
                now(),
                &s(&a[0]),
            )))
        }),
    );
    ctx.declare_func(
        "legacy_strftime",
        FuncDef::builder()
            .param(ParamType::String)
            .build(|a| strftime(now(), &s(&a[0])).map(Value::from)),
    );
}
