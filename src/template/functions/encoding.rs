//! Packer's encoding and hashing functions: `base64encode`/`base64decode`,
//! `textencodebase64`/`textdecodebase64` (UTF-8), `jsondecode`, `yamlencode`/`yamldecode`,
//! `csvdecode`, `urlencode`, `md5`, `sha1`, `sha256`, `sha512`, `base64sha256`,
//! `base64sha512`, `uuidv5`; and `bcrypt` and `rsadecrypt`, which kiln refuses by name. What they
//! build grows at most a few times their input; it is charged to the evaluation's budget.

use super::limits::charge;
use super::s;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hcl::eval::{Context, FuncDef, ParamType};
use hcl::{Map, Value};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_json(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => n
            .as_f64()
            .and_then(hcl::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        serde_json::Value::String(t) => Value::String(t),
        serde_json::Value::Array(a) => Value::Array(a.into_iter().map(from_json).collect()),
        serde_json::Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, from_json(v))).collect())
        }
    }
}

fn csv(text: &str) -> Result<Value, String> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let (mut row, mut field, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            ('\r', false) => {}
            (c, _) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    let Some((header, records)) = rows.split_first() else {
        return Err("csvdecode: the CSV has no header line".into());
    };
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if r.len() != header.len() {
            return Err(format!(
                "csvdecode: line {} has {} fields, the header {}",
                i + 2,
                r.len(),
                header.len()
            ));
        }
        let m: Map<String, Value> = header
            .iter()
            .cloned()
            .zip(r.iter().map(|f| Value::from(f.clone())))
            .collect();
        out.push(Value::Object(m));
    }
    Ok(Value::Array(out))
}

/// Declares the functions on `ctx`.
pub(super) fn declare(ctx: &mut Context<'_>) {
    let str1 = |f| FuncDef::builder().param(ParamType::String).build(f);
    ctx.declare_func(
        "base64encode",
        str1(|a| charge("base64encode", Value::from(B64.encode(s(&a[0]))))),
    );
    ctx.declare_func(
        "base64decode",
        str1(|a| {
            let bytes = B64
                .decode(s(&a[0]).trim())
                .map_err(|e| format!("base64decode: {e}"))?;
            String::from_utf8(bytes)
                .map(Value::from)
                .map_err(|_| "base64decode: the result is not valid UTF-8".into())
        }),
    );
    ctx.declare_func(
        "textencodebase64",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| {
                let enc = s(&a[1]).to_ascii_uppercase().replace('-', "");
                if enc != "UTF8" {
                    return Err(format!(
                        "textencodebase64: kiln supports the UTF-8 encoding, not {}",
                        s(&a[1])
                    ));
                }
                charge("textencodebase64", Value::from(B64.encode(s(&a[0]))))
            }),
    );
    ctx.declare_func(
        "textdecodebase64",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| {
                let bytes = B64
                    .decode(s(&a[0]).trim())
                    .map_err(|e| format!("textdecodebase64: {e}"))?;
                String::from_utf8(bytes)
                    .map(Value::from)
                    .map_err(|_| "textdecodebase64: kiln decodes UTF-8 text only".into())
            }),
    );
    ctx.declare_func(
        "jsondecode",
        str1(|a| {
            serde_json::from_str::<serde_json::Value>(&s(&a[0]))
                .map(from_json)
                .map_err(|e| format!("jsondecode: {e}"))
                .and_then(|v| charge("jsondecode", v))
        }),
    );
    ctx.declare_func(
        "yamldecode",
        str1(|a| {
            serde_yaml_ng::from_str::<serde_json::Value>(&s(&a[0]))
                .map(from_json)
                .map_err(|e| format!("yamldecode: {e}"))
                .and_then(|v| charge("yamldecode", v))
        }),
    );
    ctx.declare_func(
        "yamlencode",
        FuncDef::builder().param(ParamType::Any).build(|a| {
            let json = serde_json::to_value(&a[0]).map_err(|e| format!("yamlencode: {e}"))?;
            serde_yaml_ng::to_string(&json)
                .map(Value::from)
                .map_err(|e| format!("yamlencode: {e}"))
                .and_then(|v| charge("yamlencode", v))
        }),
    );
    ctx.declare_func(
        "csvdecode",
        str1(|a| csv(&s(&a[0])).and_then(|v| charge("csvdecode", v))),
    );
    ctx.declare_func(
        "urlencode",
        str1(|a| {
            charge(
                "urlencode",
                Value::from(
                    percent_encoding::utf8_percent_encode(
                        &s(&a[0]),
                        percent_encoding::NON_ALPHANUMERIC,
                    )
                    .to_string()
                    .replace("%2D", "-")
                    .replace("%2E", ".")
                    .replace("%5F", "_")
                    .replace("%7E", "~")
                    .replace("%20", "+"),
                ),
            )
        }),
    );
    ctx.declare_func(
        "md5",
        str1(|a| {
            use md5::Digest;
            Ok(Value::from(hex(&md5::Md5::digest(s(&a[0]).as_bytes()))))
        }),
    );
    ctx.declare_func(
        "sha1",
        str1(|a| {
            use sha1::Digest;
            Ok(Value::from(hex(&sha1::Sha1::digest(s(&a[0]).as_bytes()))))
        }),
    );
    ctx.declare_func(
        "sha256",
        str1(|a| {
            use sha2::Digest;
            Ok(Value::from(hex(&sha2::Sha256::digest(s(&a[0]).as_bytes()))))
        }),
    );
    ctx.declare_func(
        "sha512",
        str1(|a| {
            use sha2::Digest;
            Ok(Value::from(hex(&sha2::Sha512::digest(s(&a[0]).as_bytes()))))
        }),
    );
    ctx.declare_func(
        "base64sha256",
        str1(|a| {
            use sha2::Digest;
            Ok(Value::from(
                B64.encode(sha2::Sha256::digest(s(&a[0]).as_bytes())),
            ))
        }),
    );
    ctx.declare_func(
        "base64sha512",
        str1(|a| {
            use sha2::Digest;
            Ok(Value::from(
                B64.encode(sha2::Sha512::digest(s(&a[0]).as_bytes())),
            ))
        }),
    );
    ctx.declare_func(
        "uuidv5",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| {
                let ns = match s(&a[0]).as_str() {
                    "dns" => uuid::Uuid::NAMESPACE_DNS,
                    "url" => uuid::Uuid::NAMESPACE_URL,
                    "oid" => uuid::Uuid::NAMESPACE_OID,
                    "x500" => uuid::Uuid::NAMESPACE_X500,
                    other => uuid::Uuid::parse_str(other).map_err(|_| {
                        format!("uuidv5: namespace must be dns, url, oid, x500 or a UUID, got \"{other}\"")
                    })?,
                };
                Ok(Value::from(
                    uuid::Uuid::new_v5(&ns, s(&a[1]).as_bytes()).to_string(),
                ))
            }),
    );
    for name in ["bcrypt", "rsadecrypt"] {
        ctx.declare_func(
            name,
            FuncDef::builder().variadic_param(ParamType::Any).build(match name {
                "bcrypt" => |_| Err("bcrypt is not supported by kiln: hash the password before the build and pass the hash as a variable".to_string()),
                _ => |_| Err("rsadecrypt is not supported by kiln: decrypt the value before the build and pass it as a sensitive variable".to_string()),
            }),
        );
    }
}
