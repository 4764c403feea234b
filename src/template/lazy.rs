//! HCL2's `try`, `can` and `convert`, which need their arguments unevaluated (an error in an
//! argument is their input, and `convert`'s second argument is a type, not a value): a pass over
//! an expression that replaces each such call by its value before `hcl-rs` evaluates the rest.

use hcl::Expression as E;
use hcl::Value;
use hcl::eval::{Context, Evaluate};
use std::panic::AssertUnwindSafe;

/// The text of a caught panic.
fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// `f()`, or an error when it panics. hcl-rs's evaluator panics on some integer arithmetic
/// (`5 % 0`, and an overflowing `+` or `*` in a debug build): one template's expression must fail,
/// not end the process that hosts other builds.
fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        format!(
            "the expression cannot be evaluated: {} (kiln's evaluator failed on it)",
            panic_message(p)
        )
    })
}

/// `expr` evaluated in `ctx` as [`guard`] does, or its error.
fn eval_guarded(expr: &E, ctx: &Context<'_>) -> Result<Value, String> {
    guard(|| expr.evaluate(ctx).map_err(|e| e.to_string()))?
}

/// Evaluates `expr` (its `try`, `can` and `convert` calls first): a panic inside the evaluator
/// is an error, and so is a value past [`crate::template::functions::limits::MAX_VALUE_BYTES`]
/// (so locals that double one another stop at the first one too large).
pub(super) fn evaluate(expr: &E, ctx: &Context<'_>) -> Result<Value, String> {
    let v = guard(|| resolve(expr, ctx)).and_then(|e| eval_guarded(&e, ctx))?;
    crate::template::functions::limits::value(&v)?;
    Ok(v)
}

fn mentions_lazy(text: &str) -> bool {
    ["try(", "can(", "convert("]
        .iter()
        .any(|f| text.contains(f))
}

fn is_lazy(f: &hcl::expr::FuncCall) -> bool {
    f.name.namespace.is_empty() && matches!(f.name.name.as_str(), "try" | "can" | "convert")
}

/// `expr` with every `try(...)`, `can(...)` and `convert(...)` replaced by its value (calls that
/// cannot be decided are kept, so evaluating them reports the error). Other expressions are
/// rebuilt around their resolved parts.
pub(super) fn resolve(expr: &E, ctx: &Context<'_>) -> E {
    match expr {
        E::FuncCall(f) if is_lazy(f) => {
            let args: Vec<E> = f.args.iter().map(|a| resolve(a, ctx)).collect();
            match f.name.name.as_str() {
                "try" => args
                    .iter()
                    .find_map(|a| eval_guarded(a, ctx).ok())
                    .map(E::from)
                    .unwrap_or_else(|| {
                        // Nothing succeeded: evaluating the first argument reports why.
                        args.first().cloned().unwrap_or(E::Null)
                    }),
                "can" => E::Bool(args.first().is_some_and(|a| eval_guarded(a, ctx).is_ok())),
                _ => match (args.first(), f.args.get(1)) {
                    (Some(v), Some(t)) => match eval_guarded(v, ctx) {
                        Ok(value) => match convert(value, t) {
                            Ok(v) => E::from(v),
                            Err(_) => expr.clone(),
                        },
                        Err(_) => v.clone(),
                    },
                    _ => expr.clone(),
                },
            }
        }
        E::FuncCall(f) => {
            let mut call = (**f).clone();
            call.args = f.args.iter().map(|a| resolve(a, ctx)).collect();
            E::FuncCall(Box::new(call))
        }
        E::Array(items) => E::Array(items.iter().map(|a| resolve(a, ctx)).collect()),
        E::Object(o) => E::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), resolve(v, ctx)))
                .collect(),
        ),
        E::Parenthesis(e) => E::Parenthesis(Box::new(resolve(e, ctx))),
        // "${try(var.x, "d")}": resolve inside the template's interpolations.
        E::TemplateExpr(t) if mentions_lazy(&t.to_string()) => {
            let Ok(mut template) = hcl::Template::from_expr(t) else {
                return expr.clone();
            };
            for el in template.elements_mut() {
                if let hcl::template::Element::Interpolation(i) = el {
                    i.expr = resolve(&i.expr, ctx);
                }
            }
            let text = template.to_string();
            E::TemplateExpr(Box::new(match &**t {
                hcl::expr::TemplateExpr::Heredoc(h) => {
                    hcl::expr::TemplateExpr::Heredoc(hcl::expr::Heredoc {
                        delimiter: h.delimiter.clone(),
                        template: text,
                        strip: h.strip,
                    })
                }
                hcl::expr::TemplateExpr::QuotedString(_) => {
                    hcl::expr::TemplateExpr::QuotedString(text)
                }
            }))
        }
        // `[for x in xs : try(x.a, "d")]`: the calls depend on the loop's variables, so the loop
        // is run here, each element resolved in a context holding them.
        E::ForExpr(f) if mentions_lazy(&hcl::format::to_string(expr).unwrap_or_default()) => {
            run_for(f, ctx).map(E::from).unwrap_or_else(|| expr.clone())
        }
        E::Conditional(c) => {
            let mut c2 = (**c).clone();
            c2.cond_expr = resolve(&c.cond_expr, ctx);
            c2.true_expr = resolve(&c.true_expr, ctx);
            c2.false_expr = resolve(&c.false_expr, ctx);
            E::Conditional(Box::new(c2))
        }
        E::Operation(op) => {
            let op2 = match &**op {
                hcl::expr::Operation::Unary(u) => {
                    let mut u2 = u.clone();
                    u2.expr = resolve(&u.expr, ctx);
                    hcl::expr::Operation::Unary(u2)
                }
                hcl::expr::Operation::Binary(b) => {
                    let mut b2 = b.clone();
                    b2.lhs_expr = resolve(&b.lhs_expr, ctx);
                    b2.rhs_expr = resolve(&b.rhs_expr, ctx);
                    hcl::expr::Operation::Binary(b2)
                }
            };
            E::Operation(Box::new(op2))
        }
        other => other.clone(),
    }
}

/// The value of a `for` expression whose parts use `try`/`can`/`convert`; `None` when any part
/// fails (evaluating the expression as it is then reports why).
fn run_for(f: &hcl::expr::ForExpr, ctx: &Context<'_>) -> Option<Value> {
    let items: Vec<(Value, Value)> =
        match eval_guarded(&resolve(&f.collection_expr, ctx), ctx).ok()? {
            Value::Array(a) => a
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Value::from(i as u64), v))
                .collect(),
            Value::Object(o) => o.into_iter().map(|(k, v)| (Value::String(k), v)).collect(),
            _ => return None,
        };
    let mut list = Vec::new();
    let mut object: hcl::Map<String, Value> = hcl::Map::new();
    for (k, v) in items {
        let mut c = ctx.clone();
        if let Some(kv) = &f.key_var {
            c.declare_var(kv.clone(), k);
        }
        c.declare_var(f.value_var.clone(), v);
        if let Some(cond) = &f.cond_expr {
            match eval_guarded(&resolve(cond, &c), &c).ok()? {
                Value::Bool(true) => {}
                Value::Bool(false) => continue,
                _ => return None,
            }
        }
        let value = eval_guarded(&resolve(&f.value_expr, &c), &c).ok()?;
        let Some(key_expr) = &f.key_expr else {
            list.push(value);
            continue;
        };
        let key = match eval_guarded(&resolve(key_expr, &c), &c).ok()? {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if f.grouping {
            match object
                .entry(key)
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                Value::Array(group) => group.push(value),
                _ => return None,
            }
        } else {
            object.insert(key, value);
        }
    }
    Some(if f.key_expr.is_some() {
        Value::Object(object)
    } else {
        Value::Array(list)
    })
}

/// `value` converted to the type expression `ty` (`string`, `number`, `bool`, `list(T)`,
/// `set(T)`, `map(T)`, `any`), as HCL2's `convert`.
fn convert(value: Value, ty: &E) -> Result<Value, String> {
    let (name, inner) = match ty {
        E::Variable(v) => (v.as_str().to_owned(), None),
        E::FuncCall(f) => (f.name.name.as_str().to_owned(), f.args.first()),
        other => return Err(format!("not a type: {other:?}")),
    };
    match (name.as_str(), value) {
        ("any", v) => Ok(v),
        ("string", Value::String(s)) => Ok(Value::String(s)),
        ("string", Value::Number(n)) => Ok(Value::String(n.to_string())),
        ("string", Value::Bool(b)) => Ok(Value::String(b.to_string())),
        ("number", Value::Number(n)) => Ok(Value::Number(n)),
        ("number", Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(hcl::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("\"{s}\" is not a number")),
        ("bool", Value::Bool(b)) => Ok(Value::Bool(b)),
        ("bool", Value::String(s)) if s == "true" || s == "false" => Ok(Value::Bool(s == "true")),
        ("list" | "set" | "tuple", Value::Array(items)) => {
            let mut out = Vec::new();
            for v in items {
                let v = match inner {
                    Some(t) => convert(v, t)?,
                    None => v,
                };
                if name != "set" || !out.contains(&v) {
                    out.push(v);
                }
            }
            Ok(Value::Array(out))
        }
        ("map" | "object", Value::Object(m)) => {
            let mut out = hcl::Map::new();
            for (k, v) in m {
                out.insert(
                    k,
                    match inner {
                        Some(t) => convert(v, t)?,
                        None => v,
                    },
                );
            }
            Ok(Value::Object(out))
        }
        (t, v) => Err(format!("cannot convert {v} to {t}")),
    }
}

/// Whether `expr` names `local.N` for some `N` in `waiting` other than `me`.
pub(super) fn names_any_local(expr: &E, waiting: &[String], me: &str) -> bool {
    let text = hcl::format::to_string(expr).unwrap_or_default();
    waiting.iter().filter(|n| n.as_str() != me).any(|n| {
        text.match_indices(&format!("local.{n}")).any(|(i, m)| {
            let after = text[i + m.len()..].chars().next();
            !after.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-')
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context<'static> {
        let mut c = Context::new();
        crate::template::functions::declare(&mut c, false);
        c
    }

    fn expr(text: &str) -> E {
        E::from(hcl_edit::parser::parse_expr(text).expect("expression"))
    }

    #[test]
    fn evaluator_panics_are_errors() {
        // hcl-rs computes `u64 % 0`: a panic in any build profile.
        let e = evaluate(&expr("5 % 0"), &ctx()).expect_err("division by zero");
        assert!(
            e.contains("cannot be evaluated") && e.contains("remainder"),
            "{e}"
        );
        // Inside `try` and `can`, the panic is a failed argument like any other.
        assert_eq!(
            evaluate(&expr(r#"try(5 % 0, "fallback")"#), &ctx()),
            Ok(Value::from("fallback"))
        );
        assert_eq!(
            evaluate(&expr("can(5 % 0)"), &ctx()),
            Ok(Value::from(false))
        );
        assert_eq!(evaluate(&expr("7 % 4"), &ctx()), Ok(Value::from(3)));
    }

    #[test]
    fn a_value_too_large_is_an_error() {
        let mut c = ctx();
        c.declare_var("s", Value::from("x".repeat(16 << 20)));
        let many = format!("\"{}\"", "${s}".repeat(9));
        let e = evaluate(&expr(&many), &c).expect_err("144 MiB");
        assert!(e.contains("128 MiB"), "{e}");
        assert!(evaluate(&expr("\"${s}${s}\""), &c).is_ok());
    }
}
