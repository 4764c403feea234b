//! Packer's collection functions: the basic ones (`concat`, `merge`, `lookup`, `coalesce`,
//! `length`, `contains`, `element`, `keys`, `values`, `compact`, `distinct`, `flatten`) and
//! `chunklist`, `coalescelist`, `index`, `range`, `reverse`, `slice`, `sort`, `setintersection`,
//! `setunion`, `setproduct`, `transpose`, `zipmap`, `alltrue`, `anytrue`, `one`; and the string
//! functions that work on lists: `formatlist`, `indent`, `regexall`, `strrev`.

use super::{num, s};
use hcl::eval::{Context, FuncDef, ParamType};
use hcl::{Map, Value};

fn list<'a>(f: &str, v: &'a Value) -> Result<&'a Vec<Value>, String> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(format!("{f}: expected a list, got {other}")),
    }
}

fn unique(items: impl IntoIterator<Item = Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for v in items {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

fn index_arg(f: &str, v: &Value) -> Result<usize, String> {
    let n = num(v)?;
    if n < 0.0 || n.fract() != 0.0 {
        return Err(format!("{f}: {n} is not a valid index"));
    }
    Ok(n as usize)
}

/// Declares the functions on `ctx`.
pub(super) fn declare(ctx: &mut Context<'_>) {
    let any1 = || FuncDef::builder().param(ParamType::Any);
    ctx.declare_func(
        "chunklist",
        FuncDef::builder()
            .params([ParamType::Any, ParamType::Number])
            .build(|a| {
                let items = list("chunklist", &a[0])?;
                let size = index_arg("chunklist", &a[1])?;
                if size == 0 {
                    return Ok(Value::Array(vec![Value::Array(items.clone())]));
                }
                Ok(Value::Array(
                    items
                        .chunks(size)
                        .map(|c| Value::Array(c.to_vec()))
                        .collect(),
                ))
            }),
    );
    ctx.declare_func(
        "coalescelist",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(|a| {
                for v in a.iter() {
                    if !list("coalescelist", v)?.is_empty() {
                        return Ok(v.clone());
                    }
                }
                Err("coalescelist: no non-empty list among the arguments".into())
            }),
    );
    ctx.declare_func(
        "index",
        FuncDef::builder()
            .params([ParamType::Any, ParamType::Any])
            .build(|a| {
                list("index", &a[0])?
                    .iter()
                    .position(|v| v == &a[1])
                    .map(Value::from)
                    .ok_or_else(|| "index: item not found".to_string())
            }),
    );
    ctx.declare_func(
        "range",
        FuncDef::builder()
            .variadic_param(ParamType::Number)
            .build(|a| {
                let n: Vec<f64> = a.iter().map(num).collect::<Result<_, _>>()?;
                let (start, end, step) = match n.as_slice() {
                    [e] => (0.0, *e, 1.0),
                    [s, e] => (*s, *e, if s <= e { 1.0 } else { -1.0 }),
                    [s, e, st] => (*s, *e, *st),
                    _ => return Err("range: takes one to three numbers".into()),
                };
                if step == 0.0 || (step > 0.0) != (end >= start) && start != end {
                    return Err("range: the step must move from start toward the limit".into());
                }
                let mut out = Vec::new();
                let mut x = start;
                while (step > 0.0 && x < end) || (step < 0.0 && x > end) {
                    out.push(
                        hcl::Number::from_f64(x)
                            .map(Value::Number)
                            .unwrap_or(Value::Null),
                    );
                    x += step;
                    if out.len() > 1024 {
                        return Err("range: more than 1024 elements".into());
                    }
                }
                Ok(Value::Array(out))
            }),
    );
    ctx.declare_func(
        "reverse",
        any1().build(|a| {
            let mut v = list("reverse", &a[0])?.clone();
            v.reverse();
            Ok(Value::Array(v))
        }),
    );
    ctx.declare_func(
        "slice",
        FuncDef::builder()
            .params([ParamType::Any, ParamType::Number, ParamType::Number])
            .build(|a| {
                let v = list("slice", &a[0])?;
                let (from, to) = (index_arg("slice", &a[1])?, index_arg("slice", &a[2])?);
                if from > to || to > v.len() {
                    return Err(format!(
                        "slice: indexes {from}..{to} out of range for a list of {}",
                        v.len()
                    ));
                }
                Ok(Value::Array(v[from..to].to_vec()))
            }),
    );
    ctx.declare_func(
        "sort",
        any1().build(|a| {
            let mut v: Vec<String> = list("sort", &a[0])?.iter().map(s).collect();
            v.sort();
            Ok(Value::Array(v.into_iter().map(Value::from).collect()))
        }),
    );
    ctx.declare_func(
        "setunion",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(|a| {
                let mut all = Vec::new();
                for v in a.iter() {
                    all.extend(list("setunion", v)?.iter().cloned());
                }
                Ok(Value::Array(unique(all)))
            }),
    );
    ctx.declare_func(
        "setintersection",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(|a| {
                let Some(first) = a.first() else {
                    return Ok(Value::Array(Vec::new()));
                };
                let mut keep = unique(list("setintersection", first)?.iter().cloned());
                for v in a.iter().skip(1) {
                    let other = list("setintersection", v)?;
                    keep.retain(|x| other.contains(x));
                }
                Ok(Value::Array(keep))
            }),
    );
    ctx.declare_func(
        "setproduct",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(|a| {
                let mut out: Vec<Vec<Value>> = vec![Vec::new()];
                for v in a.iter() {
                    let items = list("setproduct", v)?;
                    out = out
                        .into_iter()
                        .flat_map(|prefix| {
                            items.iter().map(move |x| {
                                let mut p = prefix.clone();
                                p.push(x.clone());
                                p
                            })
                        })
                        .collect();
                }
                Ok(Value::Array(out.into_iter().map(Value::Array).collect()))
            }),
    );
    ctx.declare_func(
        "transpose",
        any1().build(|a| {
            let Value::Object(m) = &a[0] else {
                return Err("transpose: expected a map of lists of strings".into());
            };
            let mut out: Map<String, Value> = Map::new();
            for (k, v) in m {
                for item in list("transpose", v)? {
                    let e = out
                        .entry(s(item))
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(keys) = e {
                        keys.push(Value::from(k.clone()));
                    }
                }
            }
            out.sort_keys();
            Ok(Value::Object(out))
        }),
    );
    ctx.declare_func(
        "zipmap",
        FuncDef::builder()
            .params([ParamType::Any, ParamType::Any])
            .build(|a| {
                let (keys, values) = (list("zipmap", &a[0])?, list("zipmap", &a[1])?);
                if keys.len() != values.len() {
                    return Err(format!(
                        "zipmap: {} keys but {} values",
                        keys.len(),
                        values.len()
                    ));
                }
                Ok(Value::Object(
                    keys.iter().map(s).zip(values.iter().cloned()).collect(),
                ))
            }),
    );
    ctx.declare_func(
        "alltrue",
        any1().build(|a| {
            Ok(Value::Bool(
                list("alltrue", &a[0])?
                    .iter()
                    .all(|v| matches!(v, Value::Bool(true)) || s(v) == "true"),
            ))
        }),
    );
    ctx.declare_func(
        "anytrue",
        any1().build(|a| {
            Ok(Value::Bool(
                list("anytrue", &a[0])?
                    .iter()
                    .any(|v| matches!(v, Value::Bool(true)) || s(v) == "true"),
            ))
        }),
    );
    ctx.declare_func(
        "one",
        any1().build(|a| match list("one", &a[0])?.as_slice() {
            [] => Ok(Value::Null),
            [v] => Ok(v.clone()),
            more => Err(format!(
                "one: must be a list of no more than one element, got {}",
                more.len()
            )),
        }),
    );
    ctx.declare_func(
        "strrev",
        FuncDef::builder()
            .param(ParamType::String)
            .build(|a| Ok(Value::from(s(&a[0]).chars().rev().collect::<String>()))),
    );
    ctx.declare_func(
        "indent",
        FuncDef::builder()
            .params([ParamType::Number, ParamType::String])
            .build(|a| {
                let pad = " ".repeat(index_arg("indent", &a[0])?);
                let text = s(&a[1]);
                Ok(Value::from(text.replace('\n', &format!("\n{pad}"))))
            }),
    );
    ctx.declare_func(
        "regexall",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| {
                let re = regex::Regex::new(&s(&a[0])).map_err(|e| format!("regexall: {e}"))?;
                let text = s(&a[1]);
                let names: Vec<Option<&str>> = re.capture_names().collect();
                let out = re
                    .captures_iter(&text)
                    .map(|c| {
                        if names.iter().skip(1).any(Option::is_some) {
                            Value::Object(
                                names
                                    .iter()
                                    .flatten()
                                    .map(|n| {
                                        (
                                            (*n).to_owned(),
                                            Value::from(c.name(n).map_or("", |m| m.as_str())),
                                        )
                                    })
                                    .collect(),
                            )
                        } else if c.len() > 1 {
                            Value::Array(
                                c.iter()
                                    .skip(1)
                                    .map(|m| Value::from(m.map_or("", |m| m.as_str())))
                                    .collect(),
                            )
                        } else {
                            Value::from(c.get(0).map_or("", |m| m.as_str()))
                        }
                    })
                    .collect();
                Ok(Value::Array(out))
            }),
    );
    ctx.declare_func(
        "formatlist",
        FuncDef::builder()
            .param(ParamType::String)
            .variadic_param(ParamType::Any)
            .build(|a| {
                let spec = s(&a[0]);
                let args: Vec<&Value> = a.iter().skip(1).collect();
                let n = args
                    .iter()
                    .filter_map(|v| match v {
                        Value::Array(x) => Some(x.len()),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(1);
                let mut out = Vec::new();
                for i in 0..n {
                    let row: Vec<Value> = args
                        .iter()
                        .map(|v| match v {
                            Value::Array(x) => x.get(i).cloned().unwrap_or(Value::Null),
                            other => (*other).clone(),
                        })
                        .collect();
                    out.push(super::format(&spec, &row)?);
                }
                Ok(Value::Array(out))
            }),
    );
}

/// Declares the basic collection functions: `concat`, `merge`, `lookup`, `coalesce`, `length`,
/// `contains`, `element`, `keys`, `values`, `compact`, `distinct`, `flatten`.
pub(super) fn declare_basic(ctx: &mut Context<'_>) {
    ctx.declare_func(
        "concat",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(|a| {
                let mut out = Vec::new();
                for v in a.iter() {
                    match v {
                        Value::Array(items) => out.extend(items.iter().cloned()),
                        other => return Err(format!("concat expects lists, got {other}")),
                    }
                }
                Ok(Value::Array(out))
            }),
    );
    ctx.declare_func(
        "merge",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(|a| {
                let mut out = Map::new();
                for v in a.iter() {
                    match v {
                        Value::Object(o) => {
                            out.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())))
                        }
                        Value::Null => {}
                        other => return Err(format!("merge expects maps, got {other}")),
                    }
                }
                Ok(Value::Object(out))
            }),
    );
    ctx.declare_func(
        "lookup",
        FuncDef::builder()
            .params([ParamType::Any, ParamType::String])
            .variadic_param(ParamType::Any)
            .build(|a| {
                let key = s(&a[1]);
                match &a[0] {
                    Value::Object(o) => o
                        .get(&key)
                        .cloned()
                        .or_else(|| a.get(2).cloned())
                        .ok_or_else(|| format!("lookup failed to find key \"{key}\"")),
                    _ => Err("lookup expects a map".into()),
                }
            }),
    );
    ctx.declare_func(
        "coalesce",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(|a| {
                a.iter()
                    .find(|v| {
                        !matches!(v, Value::Null) && !matches!(v, Value::String(s) if s.is_empty())
                    })
                    .cloned()
                    .ok_or_else(|| "no non-null, non-empty-string arguments".to_string())
            }),
    );
    ctx.declare_func(
        "length",
        FuncDef::builder().param(ParamType::Any).build(|a| {
            Ok(Value::from(match &a[0] {
                Value::Array(v) => v.len() as u64,
                Value::Object(o) => o.len() as u64,
                Value::String(t) => t.chars().count() as u64,
                _ => return Err("length expects a list, map or string".into()),
            }))
        }),
    );
    ctx.declare_func(
        "contains",
        FuncDef::builder()
            .params([ParamType::Any, ParamType::Any])
            .build(|a| match &a[0] {
                Value::Array(v) => Ok(Value::from(v.contains(&a[1]))),
                _ => Err("contains expects a list".into()),
            }),
    );
    ctx.declare_func(
        "element",
        FuncDef::builder()
            .params([ParamType::Any, ParamType::Number])
            .build(|a| match &a[0] {
                Value::Array(v) if !v.is_empty() => Ok(v[(num(&a[1])? as usize) % v.len()].clone()),
                _ => Err("element expects a non-empty list".into()),
            }),
    );
    ctx.declare_func(
        "keys",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| match &a[0] {
                Value::Object(o) => Ok(Value::Array(
                    o.keys().map(|k| Value::from(k.clone())).collect(),
                )),
                _ => Err("keys expects a map".into()),
            }),
    );
    ctx.declare_func(
        "values",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| match &a[0] {
                Value::Object(o) => Ok(Value::Array(o.values().cloned().collect())),
                _ => Err("values expects a map".into()),
            }),
    );
    ctx.declare_func(
        "compact",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| match &a[0] {
                Value::Array(v) => Ok(Value::Array(
                    v.iter()
                        .filter(|x| {
                            !matches!(x, Value::Null)
                                && !matches!(x, Value::String(s) if s.is_empty())
                        })
                        .cloned()
                        .collect(),
                )),
                _ => Err("compact expects a list".into()),
            }),
    );
    ctx.declare_func(
        "distinct",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| match &a[0] {
                Value::Array(v) => {
                    let mut out: Vec<Value> = Vec::new();
                    for x in v {
                        if !out.contains(x) {
                            out.push(x.clone());
                        }
                    }
                    Ok(Value::Array(out))
                }
                _ => Err("distinct expects a list".into()),
            }),
    );
    ctx.declare_func(
        "flatten",
        FuncDef::builder().param(ParamType::Any).build(|a| {
            fn flat(v: &Value, out: &mut Vec<Value>) {
                match v {
                    Value::Array(items) => items.iter().for_each(|i| flat(i, out)),
                    other => out.push(other.clone()),
                }
            }
            let mut out = Vec::new();
            flat(&a[0], &mut out);
            Ok(Value::Array(out))
        }),
    );
}
