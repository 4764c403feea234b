//! HCL2's loops, evaluated by kiln instead of hcl-rs so that what they build is charged to the
//! evaluation budget (`functions::limits`) as it grows: `for` expressions (`[for x in xs : ...]`,
//! `{for k, v in m : k => v}`) and templates (`"${a}${b}"`, heredocs with `%{ for }` and `%{ if }`
//! directives). hcl-rs builds such a value whole before kiln can look at it, so three nested
//! loops over `range(1024)`, or a 16 MiB string repeated by a template loop, would exhaust the
//! worker's memory (and every other build in it) before the size check after the expression.
//!
//! The semantics are hcl-rs's (ported from its `eval/template.rs` and `eval/expr.rs`, MIT/Apache):
//! collection order, `if` filters, `...` grouping, key conversion, `~` whitespace stripping, and
//! a template of a single interpolation keeping its value's type.

use crate::template::functions::limits;
use hcl::Value;
use hcl::eval::Context;
use hcl::expr::{ForExpr, TemplateExpr};
use hcl::template::{Directive, Element, ForDirective, IfDirective, Strip, Template};

/// What a `for` expression's iteration costs before its value: an element of the result.
const ITERATION_BYTES: usize = limits::ELEMENT_BYTES;

/// Evaluates a sub-expression with kiln's evaluator (so nested loops are bounded too).
fn eval(expr: &hcl::Expression, ctx: &Context<'_>) -> Result<Value, String> {
    super::lazy::evaluate(expr, ctx)
}

fn eval_bool(expr: &hcl::Expression, ctx: &Context<'_>, what: &str) -> Result<bool, String> {
    match eval(expr, ctx)? {
        Value::Bool(b) => Ok(b),
        other => Err(format!("{what} must be a bool, not {other}")),
    }
}

/// The (key, value) pairs a loop walks: an array's indexes or an object's keys, in order.
fn collection(expr: &hcl::Expression, ctx: &Context<'_>) -> Result<Vec<(Value, Value)>, String> {
    match eval(expr, ctx)? {
        Value::Array(a) => Ok(a
            .into_iter()
            .enumerate()
            .map(|(i, v)| (Value::from(i as u64), v))
            .collect()),
        Value::Object(o) => Ok(o.into_iter().map(|(k, v)| (Value::String(k), v)).collect()),
        other => Err(format!(
            "a for loop needs a list or an object to walk, not {other}"
        )),
    }
}

/// A loop's context: `ctx` with its key and value variables (declared anew each iteration).
struct Scope<'c> {
    ctx: Context<'c>,
    key_var: Option<hcl::Identifier>,
    value_var: hcl::Identifier,
}

impl<'c> Scope<'c> {
    fn new(
        ctx: &Context<'c>,
        key_var: Option<&hcl::Identifier>,
        value_var: &hcl::Identifier,
    ) -> Self {
        Scope {
            ctx: ctx.clone(),
            key_var: key_var.cloned(),
            value_var: value_var.clone(),
        }
    }

    /// Binds the loop variables to `(k, v)`, charging the iteration to the budget.
    fn bind(&mut self, k: Value, v: Value) -> Result<&Context<'c>, String> {
        limits::spend("for", ITERATION_BYTES)?;
        if let Some(kv) = &self.key_var {
            self.ctx.declare_var(kv.clone(), k);
        }
        self.ctx.declare_var(self.value_var.clone(), v);
        Ok(&self.ctx)
    }
}

/// The value of a `for` expression, each element charged to the budget as it is made.
pub(super) fn for_expr(f: &ForExpr, ctx: &Context<'_>) -> Result<Value, String> {
    let items = collection(&f.collection_expr, ctx)?;
    let mut scope = Scope::new(ctx, f.key_var.as_ref(), &f.value_var);
    let mut list = Vec::new();
    let mut object: hcl::Map<String, Value> = hcl::Map::new();
    for (k, v) in items {
        let c = scope.bind(k, v)?;
        if let Some(cond) = &f.cond_expr
            && !eval_bool(cond, c, "a for expression's `if` condition")?
        {
            continue;
        }
        let value = limits::charge("for", eval(&f.value_expr, c)?)?;
        let Some(key_expr) = &f.key_expr else {
            list.push(value);
            continue;
        };
        let key = match eval(key_expr, c)? {
            Value::String(s) => s,
            v @ (Value::Bool(_) | Value::Number(_)) => v.to_string(),
            other => {
                return Err(format!(
                    "a for expression's key must be a string, not {other}"
                ));
            }
        };
        if f.grouping {
            match object
                .entry(key)
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                Value::Array(group) => group.push(value),
                _ => return Err("a for expression mixes grouped and single keys".into()),
            }
        } else if object.contains_key(&key) {
            return Err(format!(
                "a for expression makes the key \"{key}\" twice: use `...` after the value to group"
            ));
        } else {
            object.insert(key, value);
        }
    }
    Ok(if f.key_expr.is_some() {
        Value::Object(object)
    } else {
        Value::Array(list)
    })
}

/// The value of a template expression: a string built piece by piece within the string limit
/// and the budget, or the value itself for a lone interpolation (`"${var.list}"`).
pub(super) fn template_expr(t: &TemplateExpr, ctx: &Context<'_>) -> Result<Value, String> {
    let template = Template::from_expr(t).map_err(|e| e.to_string())?;
    if let [Element::Interpolation(i)] = template.elements() {
        return eval(&i.expr, ctx);
    }
    let mut out = String::new();
    template_into(&mut out, &template, ctx, Strip::None, Strip::None)?;
    Ok(Value::String(out))
}

/// Appends `text` to `out`, within the limits.
fn push(out: &mut String, text: &str) -> Result<(), String> {
    limits::string_len("template", out.len().saturating_add(text.len()))?;
    limits::spend("template", text.len())?;
    out.push_str(text);
    Ok(())
}

fn element_strip(e: &Element) -> Strip {
    match e {
        Element::Literal(_) => Strip::None,
        Element::Interpolation(i) => i.strip,
        Element::Directive(d) => {
            let (start, end) = match &**d {
                Directive::If(d) => (d.if_strip, d.endif_strip),
                Directive::For(d) => (d.for_strip, d.endfor_strip),
            };
            Strip::from((start.strip_start(), end.strip_end()))
        }
    }
}

fn template_into(
    out: &mut String,
    template: &Template,
    ctx: &Context<'_>,
    prev_strip: Strip,
    next_strip: Strip,
) -> Result<(), String> {
    let elems = template.elements();
    for (i, elem) in elems.iter().enumerate() {
        let prev = match i {
            0 => prev_strip,
            _ => element_strip(&elems[i - 1]),
        };
        let next = elems.get(i + 1).map(element_strip).unwrap_or(next_strip);
        match elem {
            Element::Literal(l) => push(out, strip_literal(l, prev, next))?,
            Element::Interpolation(interp) => match eval(&interp.expr, ctx)? {
                Value::String(s) => push(out, &s)?,
                v @ (Value::Number(_) | Value::Bool(_)) => push(out, &v.to_string())?,
                // As HCL (and so Packer) answers: only strings, numbers and bools go into a string.
                Value::Null => {
                    return Err("Invalid template interpolation value: the expression result is null; cannot include a null value in a string template".into());
                }
                _ => {
                    return Err("Invalid template interpolation value: cannot include the given value in a string template: string required".into());
                }
            },
            Element::Directive(d) => match &**d {
                Directive::If(d) => if_directive(out, d, ctx)?,
                Directive::For(d) => for_directive(out, d, ctx)?,
            },
        }
    }
    Ok(())
}

fn if_directive(out: &mut String, d: &IfDirective, ctx: &Context<'_>) -> Result<(), String> {
    if eval_bool(&d.cond_expr, ctx, "a template's `%{ if }` condition")? {
        let next = if d.false_template.is_some() {
            d.else_strip
        } else {
            d.endif_strip
        };
        template_into(out, &d.true_template, ctx, d.if_strip, next)
    } else if let Some(f) = &d.false_template {
        template_into(out, f, ctx, d.else_strip, d.endif_strip)
    } else {
        Ok(())
    }
}

fn for_directive(out: &mut String, d: &ForDirective, ctx: &Context<'_>) -> Result<(), String> {
    let items = collection(&d.collection_expr, ctx)?;
    let mut scope = Scope::new(ctx, d.key_var.as_ref(), &d.value_var);
    for (k, v) in items {
        let c = scope.bind(k, v)?;
        template_into(out, &d.template, c, d.for_strip, d.endfor_strip)?;
    }
    Ok(())
}

/// `literal` with the whitespace a neighbour's `~` strips, up to and including one line break.
fn strip_literal(mut literal: &str, prev: Strip, next: Strip) -> &str {
    fn is_space(c: char) -> bool {
        c.is_whitespace() && c != '\r' && c != '\n'
    }
    if prev.strip_end() {
        let s = literal.trim_start_matches(is_space);
        literal = s
            .strip_prefix("\r\n")
            .or_else(|| s.strip_prefix('\n'))
            .unwrap_or(s);
    }
    if next.strip_start() {
        let s = literal.trim_end_matches(is_space);
        literal = s
            .strip_suffix("\r\n")
            .or_else(|| s.strip_suffix('\n'))
            .unwrap_or(s);
    }
    literal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(expr: &str) -> Result<Value, String> {
        limits::reset_budget();
        let parsed = hcl_edit::parser::parse_expr(expr).map_err(|e| e.message().to_owned())?;
        let mut ctx = Context::new();
        crate::template::functions::declare(&mut ctx, false);
        ctx.declare_var("xs", Value::from(vec!["a", "b", "c"]));
        eval(&hcl::Expression::from(parsed), &ctx)
    }

    #[test]
    fn loops_keep_hcl_semantics() {
        assert_eq!(
            run(r#"[for i, x in xs : "${i}${x}" if x != "b"]"#).unwrap(),
            Value::from(vec!["0a", "2c"])
        );
        let grouped = run(r#"{for x in ["a", "b", "a"] : x => x...}"#).unwrap();
        assert_eq!(
            grouped.as_object().and_then(|o| o.get("a")),
            Some(&Value::from(vec!["a", "a"]))
        );
        assert_eq!(
            run("\"%{ for x in xs ~}\n${x}\n%{~ endfor }!\"").unwrap(),
            Value::from("abc!")
        );
        assert_eq!(
            run(r#""%{ if length(xs) > 2 }many%{ else }few%{ endif }""#).unwrap(),
            Value::from("many")
        );
        assert_eq!(run(r#""${xs}""#).unwrap(), Value::from(vec!["a", "b", "c"]));
        assert!(
            run(r#"{for x in ["a", "a"] : x => x}"#)
                .unwrap_err()
                .contains("twice")
        );
        assert!(run(r#""a-${null}""#).unwrap_err().contains("null"));
        assert!(run(r#""a-${xs}""#).unwrap_err().contains("string required"));
        assert_eq!(run(r#"try("a-${null}", "d")"#).unwrap(), Value::from("d"));
        assert_eq!(run(r#""${1}-${true}""#).unwrap(), Value::from("1-true"));
    }

    #[test]
    fn only_the_chosen_branch_is_evaluated() {
        assert_eq!(
            run("length(xs) > 5 ? [for x in null : x] : []").unwrap(),
            Value::Array(Vec::new())
        );
        assert!(run("length(xs) > 1 ? [for x in null : x] : []").is_err());
        assert_eq!(
            run(r#"try([for x in null : x], ["d"])"#).unwrap(),
            Value::from(vec!["d"])
        );
    }

    #[test]
    fn nested_loops_stop_at_the_budget() {
        let e = run("[for a in range(1024) : [for b in range(1024) : [for c in range(1024) : a]]]")
            .expect_err("a billion elements");
        assert!(e.contains("MiB"), "{e}");
        let e = run(
            r#""%{ for a in range(1024) }%{ for b in range(1024) }${join("", [for c in range(1024) : "xxxxxxxx"])}%{ endfor }%{ endfor }""#,
        )
        .expect_err("8 GiB of text");
        assert!(e.contains("MiB"), "{e}");
    }
}
