//! Packer's set functions: `setunion`, `setintersection`, `setproduct`, `distinct` and `toset`. Values
//! are compared through a canonical key in a hash set, so a long list costs linear time, not
//! quadratic; `setproduct` checks the size of the product before building it.

use super::limits::{self, charge};
use hcl::Value;
use hcl::eval::{Context, FuncDef, ParamType};
use std::collections::HashSet;

fn list<'a>(f: &str, v: &'a Value) -> Result<&'a Vec<Value>, String> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(format!("{f}: expected a list, got {other}")),
    }
}

/// A text that two values share exactly when they are equal (objects by their sorted keys).
fn key(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push('n'),
        Value::Bool(b) => out.push(if *b { 't' } else { 'f' }),
        Value::Number(n) => {
            out.push('#');
            out.push_str(&n.as_f64().unwrap_or(f64::NAN).to_string());
            out.push(';');
        }
        Value::String(s) => {
            out.push_str(&format!("s{}:", s.len()));
            out.push_str(s);
        }
        Value::Array(items) => {
            out.push('[');
            for x in items {
                key(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (k, x) in entries {
                out.push_str(&format!("{}:", k.len()));
                out.push_str(k);
                key(x, out);
            }
            out.push('}');
        }
    }
}

fn key_of(v: &Value) -> String {
    let mut k = String::new();
    key(v, &mut k);
    k
}

/// `items` without repeats, in first-seen order.
fn unique<'a>(items: impl IntoIterator<Item = &'a Value>) -> Vec<Value> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|v| seen.insert(key_of(v)))
        .cloned()
        .collect()
}

/// Terraform's `toset`: the list's distinct values in a set's order. Values of one primitive
/// type are ordered as cty orders such sets (strings lexically, numbers by value, `false` before
/// `true`); a mix of strings, numbers and bools becomes a set of strings, as its conversion to
/// one element type does; other values (lists, objects) keep their first-seen order.
fn toset(v: &Value) -> Result<Value, String> {
    let items = match v {
        Value::Array(a) => a,
        Value::Null => return Ok(Value::Null),
        other => return Err(format!("toset: expected a list, got {other}")),
    };
    let primitive = |x: &Value| matches!(x, Value::String(_) | Value::Number(_) | Value::Bool(_));
    let same = |f: fn(&Value) -> bool| items.iter().all(f);
    let out = if same(|x| matches!(x, Value::Number(_))) {
        let mut n = unique(items);
        n.sort_by(|a, b| {
            let (a, b) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            a.total_cmp(&b)
        });
        n
    } else if same(|x| matches!(x, Value::Bool(_))) {
        let mut n = unique(items);
        n.sort_by_key(|x| x.as_bool());
        n
    } else if items.iter().all(primitive) {
        let strings: Vec<Value> = items.iter().map(|x| Value::from(super::s(x))).collect();
        let mut n = unique(&strings);
        n.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        n
    } else {
        unique(items)
    };
    Ok(Value::Array(out))
}

/// Terraform's `setproduct`: every combination of one element from each list, checked against
/// [`limits::MAX_ELEMENTS`] (the combinations and the values in them) before any is built.
fn setproduct(args: &[Value]) -> Result<Value, String> {
    let lists: Vec<&Vec<Value>> = args
        .iter()
        .map(|v| list("setproduct", v))
        .collect::<Result<_, _>>()?;
    let mut combos = 1usize;
    for l in &lists {
        combos = limits::mul("setproduct", combos, l.len())?;
    }
    let values = limits::mul("setproduct", combos, lists.len() + 1)?;
    limits::elements("setproduct", values)?;
    let mut out: Vec<Vec<Value>> = vec![Vec::with_capacity(lists.len())];
    for items in lists {
        let mut next = Vec::with_capacity(out.len() * items.len());
        for prefix in &out {
            for x in items {
                let mut p = prefix.clone();
                p.push(x.clone());
                next.push(p);
            }
        }
        out = next;
    }
    charge(
        "setproduct",
        Value::Array(out.into_iter().map(Value::Array).collect()),
    )
}

/// Declares the functions on `ctx`.
pub(super) fn declare(ctx: &mut Context<'_>) {
    ctx.declare_func(
        "setunion",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(|a| {
                let mut all: Vec<&Value> = Vec::new();
                for v in a.iter() {
                    all.extend(list("setunion", v)?);
                    limits::elements("setunion", all.len())?;
                }
                charge("setunion", Value::Array(unique(all)))
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
                let mut keep = unique(list("setintersection", first)?);
                for v in a.iter().skip(1) {
                    let other: HashSet<String> =
                        list("setintersection", v)?.iter().map(key_of).collect();
                    keep.retain(|x| other.contains(&key_of(x)));
                }
                Ok(Value::Array(keep))
            }),
    );
    ctx.declare_func(
        "setproduct",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(|a| setproduct(&a)),
    );
    ctx.declare_func(
        "toset",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| toset(&a[0])),
    );
    ctx.declare_func(
        "distinct",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(|a| match &a[0] {
                Value::Array(v) => Ok(Value::Array(unique(v))),
                _ => Err("distinct expects a list".into()),
            }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nums(n: u64) -> Value {
        Value::Array((0..n).map(Value::from).collect())
    }

    #[test]
    fn setproduct_is_bounded_before_it_is_built() {
        let r = nums(1000);
        let t = std::time::Instant::now();
        let e = setproduct(&[r.clone(), r.clone(), r]).expect_err("1e9 combinations");
        assert!(e.contains("setproduct") && e.contains("1000000"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        let ok = setproduct(&[nums(2), nums(3)]).expect("6 combinations");
        assert_eq!(ok.as_array().map(Vec::len), Some(6));
        assert_eq!(
            setproduct(&[nums(2), Value::Array(vec![])]),
            Ok(Value::Array(vec![]))
        );
    }

    #[test]
    fn unique_is_by_value_and_linear() {
        let a: Value = serde_json::from_str(r#"[1, "1", {"a":1,"b":2}, {"b":2,"a":1}, [1], 1]"#)
            .expect("json");
        let got = unique(list("t", &a).expect("list"));
        assert_eq!(got.len(), 4, "{got:?}");
        // 200,000 distinct values: quadratic comparison would take minutes.
        let big = nums(200_000);
        let t = std::time::Instant::now();
        assert_eq!(unique(list("t", &big).expect("list")).len(), 200_000);
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn toset_removes_duplicates_in_a_sets_order() {
        use crate::template::functions::eval;
        let cases: &[(&str, &str)] = &[
            (r#"toset(["b", "a", "b", "c"])"#, r#"["a","b","c"]"#),
            ("toset([3, 1, 3, 2.5])", "[1,2.5,3]"),
            ("toset([true, false, true])", "[false,true]"),
            (r#"toset(["a", 1, "1", true])"#, r#"["1","a","true"]"#),
            ("toset([[1], [1], [2]])", "[[1],[2]]"),
            ("toset([])", "[]"),
            (r#"length(toset(["x", "x", "x"]))"#, "1"),
        ];
        for (expr, want) in cases {
            let got = eval(expr).map(|v| serde_json::to_string(&v).expect("json"));
            assert_eq!(got.as_deref(), Ok(*want), "{expr}");
        }
        assert!(eval(r#"toset("a")"#).is_err());
    }
}
