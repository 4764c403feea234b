//! The pass that runs before `hcl-rs` evaluates an expression: HCL2's `try`, `can` and
//! `convert`, which need their arguments unevaluated (an error in an argument is their input, and
//! `convert`'s second argument is a type, not a value), conditionals (only the chosen branch is
//! resolved), and the loops and templates `super::bounded` evaluates within the budget are
//! replaced by their values; hcl-rs evaluates what is left, under a panic guard.

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
    let v = guard(|| resolve(expr, ctx)).and_then(|e| eval_guarded(&e?, ctx))?;
    crate::template::functions::limits::value(&v)?;
    Ok(v)
}

fn is_lazy(f: &hcl::expr::FuncCall) -> bool {
    f.name.namespace.is_empty() && matches!(f.name.name.as_str(), "try" | "can" | "convert")
}

/// `expr` with every `try(...)`, `can(...)` and `convert(...)` replaced by its value (calls that
/// cannot be decided are kept, so evaluating them reports the error), every `for` expression and
/// template by its value as `super::bounded` builds it (within the budget), and a conditional by
/// its chosen branch (the other is never evaluated, as in HCL). Other expressions are rebuilt
/// around their resolved parts. An error is one a loop or template met: the expression's error.
pub(super) fn resolve(expr: &E, ctx: &Context<'_>) -> Result<E, String> {
    Ok(match expr {
        E::FuncCall(f) if is_lazy(f) => match f.name.name.as_str() {
            "try" => {
                let mut first_error = None;
                for a in &f.args {
                    match resolve(a, ctx).and_then(|e| eval_guarded(&e, ctx)) {
                        Ok(v) => return Ok(E::from(v)),
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                // Nothing succeeded: the first argument's error is the expression's.
                return Err(first_error.unwrap_or_else(|| "try() needs an argument".into()));
            }
            "can" => E::Bool(
                f.args
                    .first()
                    .is_some_and(|a| resolve(a, ctx).and_then(|e| eval_guarded(&e, ctx)).is_ok()),
            ),
            _ => match (f.args.first(), f.args.get(1)) {
                (Some(v), Some(t)) => E::from(convert(eval_guarded(&resolve(v, ctx)?, ctx)?, t)?),
                _ => expr.clone(),
            },
        },
        E::FuncCall(f) => {
            let mut call = (**f).clone();
            call.args = f
                .args
                .iter()
                .map(|a| resolve(a, ctx))
                .collect::<Result<_, _>>()?;
            E::FuncCall(Box::new(call))
        }
        E::Array(items) => E::Array(
            items
                .iter()
                .map(|a| resolve(a, ctx))
                .collect::<Result<_, _>>()?,
        ),
        E::Object(o) => {
            let mut out = hcl::expr::Object::new();
            for (k, v) in o {
                let key = match k {
                    hcl::expr::ObjectKey::Expression(e) => {
                        hcl::expr::ObjectKey::Expression(resolve(e, ctx)?)
                    }
                    other => other.clone(),
                };
                out.insert(key, resolve(v, ctx)?);
            }
            E::Object(out)
        }
        E::Parenthesis(e) => E::Parenthesis(Box::new(resolve(e, ctx)?)),
        E::TemplateExpr(t) => E::from(super::bounded::template_expr(t, ctx)?),
        E::ForExpr(f) => E::from(super::bounded::for_expr(f, ctx)?),
        E::Traversal(t) => {
            let mut t2 = (**t).clone();
            t2.expr = resolve(&t.expr, ctx)?;
            for op in &mut t2.operators {
                if let hcl::expr::TraversalOperator::Index(i) = op {
                    *i = resolve(i, ctx)?;
                }
            }
            E::Traversal(Box::new(t2))
        }
        E::Conditional(c) => match eval_guarded(&resolve(&c.cond_expr, ctx)?, ctx) {
            Ok(Value::Bool(true)) => resolve(&c.true_expr, ctx)?,
            Ok(Value::Bool(false)) => resolve(&c.false_expr, ctx)?,
            // Not a bool: evaluating the conditional reports it.
            _ => expr.clone(),
        },
        E::Operation(op) => {
            let op2 = match &**op {
                hcl::expr::Operation::Unary(u) => {
                    let mut u2 = u.clone();
                    u2.expr = resolve(&u.expr, ctx)?;
                    hcl::expr::Operation::Unary(u2)
                }
                hcl::expr::Operation::Binary(b) => {
                    let mut b2 = b.clone();
                    b2.lhs_expr = resolve(&b.lhs_expr, ctx)?;
                    b2.rhs_expr = resolve(&b.rhs_expr, ctx)?;
                    hcl::expr::Operation::Binary(b2)
                }
            };
            E::Operation(Box::new(op2))
        }
        other => other.clone(),
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
        let many = format!("[{}]", "s, ".repeat(9));
        let e = evaluate(&expr(&many), &c).expect_err("144 MiB");
        assert!(e.contains("128 MiB"), "{e}");
        assert!(evaluate(&expr("[s, s]"), &c).is_ok());
        // A template is one string, built within the string limit.
        let e = evaluate(&expr("\"${s}${s}\""), &c).expect_err("32 MiB");
        assert!(e.contains("16 MiB for one string"), "{e}");
    }
}
