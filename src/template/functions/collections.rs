//! Packer's collection functions: the basic ones (`concat`, `merge`, `lookup`, `coalesce`,
//! `length`, `contains`, `element`, `keys`, `values`, `compact`, `flatten`) and `chunklist`,
//! `coalescelist`, `index`, `range`, `reverse`, `slice`, `sort`, `transpose`, `zipmap`,
//! `alltrue`, `anytrue`, `one` (the set functions and `distinct` are in `sets`). Indexes and
//! counts are checked whole numbers; results are bounded by [`super::limits`].

use super::limits::{self, charge};
use super::{num, s};
use hcl::eval::{Context, FuncDef, ParamType};
use hcl::{Map, Value};

/// The most elements `range` builds: Terraform's own limit.
pub const MAX_RANGE: usize = 1024;

fn list<'a>(f: &str, v: &'a Value) -> Result<&'a Vec<Value>, String> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(format!("{f}: expected a list, got {other}")),
    }
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
                let size = limits::count("chunklist", &a[1], usize::MAX)?;
                if size == 0 {
                    return Ok(Value::Array(vec![Value::Array(items.clone())]));
                }
                charge(
                    "chunklist",
                    Value::Array(
                        items
                            .chunks(size)
                            .map(|c| Value::Array(c.to_vec()))
                            .collect(),
                    ),
                )
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
                match n.as_slice() {
                    [e] => range(0.0, *e, 1.0),
                    [s, e] => range(*s, *e, if s <= e { 1.0 } else { -1.0 }),
                    [s, e, st] => range(*s, *e, *st),
                    _ => Err("range: takes one to three numbers".into()),
                }
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
                let (from, to) = (
                    limits::count("slice", &a[1], usize::MAX)?,
                    limits::count("slice", &a[2], usize::MAX)?,
                );
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
}

/// Declares the basic collection functions: `concat`, `merge`, `lookup`, `coalesce`, `length`,
/// `contains`, `element`, `keys`, `values`, `compact`, `flatten`.
pub(super) fn declare_basic(ctx: &mut Context<'_>) {
    ctx.declare_func(
        "concat",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(|a| {
                let mut n = 0usize;
                for v in a.iter() {
                    match v {
                        Value::Array(items) => n = limits::add("concat", n, items.len())?,
                        other => return Err(format!("concat expects lists, got {other}")),
                    }
                }
                limits::elements("concat", n)?;
                let mut out = Vec::with_capacity(n);
                for v in a.iter() {
                    if let Value::Array(items) = v {
                        out.extend(items.iter().cloned());
                    }
                }
                charge("concat", Value::Array(out))
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
                Value::Array(v) if !v.is_empty() => {
                    // As Terraform: the index wraps around; a negative one is an error.
                    let i = limits::count("element", &a[1], usize::MAX)?;
                    Ok(v[i % v.len()].clone())
                }
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
            charge("flatten", Value::Array(out))
        }),
    );
}

/// Terraform's `range(start, limit, step)`: at most [`MAX_RANGE`] numbers, counted before any is
/// built (a step too small to move `start`, or NaN, is an error rather than a loop).
fn range(start: f64, end: f64, step: f64) -> Result<Value, String> {
    if !(start.is_finite() && end.is_finite() && step.is_finite()) {
        return Err("range: start, limit and step must be finite numbers".into());
    }
    if step == 0.0 || (step > 0.0) != (end >= start) && start != end {
        return Err("range: the step must move from start toward the limit".into());
    }
    let steps = ((end - start) / step).ceil();
    // Rounding may count one too many; the loop below holds the exact limit.
    if steps > MAX_RANGE as f64 + 1.0 {
        return Err(format!(
            "range: more than {MAX_RANGE} elements (Terraform's limit); use a larger step"
        ));
    }
    let mut out = Vec::new();
    let mut x = start;
    while (step > 0.0 && x < end) || (step < 0.0 && x > end) {
        if out.len() >= MAX_RANGE {
            return Err(format!(
                "range: more than {MAX_RANGE} elements (Terraform's limit); use a larger step"
            ));
        }
        out.push(
            hcl::Number::from_f64(x)
                .map(Value::Number)
                .unwrap_or(Value::Null),
        );
        x += step;
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::super::eval;
    use hcl::Value;

    #[test]
    fn range_counts_before_it_builds() {
        let t = std::time::Instant::now();
        for expr in [
            "range(1e300)",
            "range(0, 1, 1e-300)",
            "range(1e15, 1e15 + 1e6, 1)",
        ] {
            let e = eval(expr).expect_err(expr);
            assert!(e.contains("range") && e.contains("1024"), "{expr}: {e}");
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(eval("length(range(1024))"), Ok(Value::from(1024u64)));
        assert!(eval(r#"range("nan")"#).is_err());
    }

    #[test]
    fn indexes_are_checked_whole_numbers() {
        assert_eq!(eval(r#"element(["a", "b"], 3)"#), Ok(Value::from("b")));
        assert_eq!(eval(r#"element(["a", "b"], 1e15)"#), Ok(Value::from("a")));
        for expr in [
            r#"element(["a"], -1)"#,
            r#"element(["a"], 1e21)"#,
            r#"slice(["a", "b"], 1, 1e21)"#,
            r#"slice(["a", "b"], -1, 1)"#,
            r#"chunklist(["a"], 1e300)"#,
            r#"chunklist(["a"], 0.5)"#,
        ] {
            assert!(eval(expr).is_err(), "{expr}");
        }
    }

    #[test]
    fn concat_counts_before_it_copies() {
        let part = "setproduct(range(500), range(600))";
        let e = eval(&format!("concat({part}, {part}, {part}, {part})")).expect_err("1.2M");
        assert!(e.contains("concat") && e.contains("1000000"), "{e}");
        let e = eval("concat(range(1000), range(1000))").map(|v| v.as_array().map(Vec::len));
        assert_eq!(e, Ok(Some(2000)));
    }
}
