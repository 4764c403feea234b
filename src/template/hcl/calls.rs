//! Where Packer evaluates without functions: a variable's `default` (only `env()` is defined
//! there) and the values given from outside (var files, `PKR_VAR_*`, `--var` and a request's
//! variables). Packer evaluates those with no function table, so a call is its error; kiln finds
//! the first call before evaluating, and answers with Packer's message.

use hcl::Expression as E;
use hcl::expr::{ObjectKey, Operation, TemplateExpr, TraversalOperator};
use hcl::template::{Directive, Element, Template};

/// The name of the first function `expr` calls that is not in `allowed`, in source order
/// (inside string templates too).
pub(super) fn first_call(expr: &E, allowed: &[&str]) -> Option<String> {
    find(expr, &|n| !allowed.contains(&n))
}

/// Whether an attribute of `b` or of a block inside it calls function `name`.
pub(super) fn block_calls(b: &super::blocks::Blk, name: &str) -> bool {
    b.attrs
        .iter()
        .any(|a| find(&a.expr, &|n| n == name).is_some())
        || b.blocks.iter().any(|x| block_calls(x, name))
}

/// The first function call `hit` accepts, by name.
fn find(expr: &E, hit: &dyn Fn(&str) -> bool) -> Option<String> {
    match expr {
        E::Array(items) => items.iter().find_map(|e| find(e, hit)),
        E::Object(o) => o.iter().find_map(|(k, v)| {
            let key = match k {
                ObjectKey::Expression(e) => find(e, hit),
                _ => None,
            };
            key.or_else(|| find(v, hit))
        }),
        E::TemplateExpr(t) => template_find(t, hit),
        E::Traversal(t) => find(&t.expr, hit).or_else(|| {
            t.operators.iter().find_map(|op| match op {
                TraversalOperator::Index(e) => find(e, hit),
                _ => None,
            })
        }),
        E::FuncCall(f) => {
            let name = f.name.to_string();
            if hit(&name) {
                return Some(name);
            }
            f.args.iter().find_map(|e| find(e, hit))
        }
        E::Parenthesis(e) => find(e, hit),
        E::Conditional(c) => [&c.cond_expr, &c.true_expr, &c.false_expr]
            .into_iter()
            .find_map(|e| find(e, hit)),
        E::Operation(op) => match op.as_ref() {
            Operation::Unary(u) => find(&u.expr, hit),
            Operation::Binary(b) => find(&b.lhs_expr, hit).or_else(|| find(&b.rhs_expr, hit)),
        },
        E::ForExpr(f) => [
            Some(&f.collection_expr),
            f.key_expr.as_ref(),
            Some(&f.value_expr),
            f.cond_expr.as_ref(),
        ]
        .into_iter()
        .flatten()
        .find_map(|e| find(e, hit)),
        // hcl-rs may add kinds of expression; evaluation reports what it cannot handle.
        _ => None,
    }
}

fn template_find(t: &TemplateExpr, hit: &dyn Fn(&str) -> bool) -> Option<String> {
    // A template that does not parse fails when evaluated, with its own message.
    let template = Template::from_expr(t).ok()?;
    in_template(&template, hit)
}

fn in_template(t: &Template, hit: &dyn Fn(&str) -> bool) -> Option<String> {
    t.elements().iter().find_map(|e| match e {
        Element::Literal(_) => None,
        Element::Interpolation(i) => find(&i.expr, hit),
        Element::Directive(d) => match d.as_ref() {
            Directive::If(d) => find(&d.cond_expr, hit)
                .or_else(|| in_template(&d.true_template, hit))
                .or_else(|| d.false_template.as_ref().and_then(|f| in_template(f, hit))),
            Directive::For(d) => {
                find(&d.collection_expr, hit).or_else(|| in_template(&d.template, hit))
            }
        },
    })
}

/// Packer's error for a call in a variable's default, where only `env()` is defined.
pub(super) fn in_default(name: &str) -> String {
    format!(
        "Call to unknown function: There is no function named \"{name}\". A variable's default may call only env(), as in Packer: compute the value in a `locals` block and use local.NAME"
    )
}

/// Packer's error for a call in a value given from outside the template.
pub(super) fn in_value(name: &str) -> String {
    format!(
        "Function calls not allowed: Functions may not be called here (`{name}(...)` in a variable's value: give the value itself)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(text: &str, allowed: &[&str]) -> Option<String> {
        let e = hcl_edit::parser::parse_expr(text).expect("expression");
        first_call(&E::from(e), allowed)
    }

    #[test]
    fn finds_calls_anywhere_in_an_expression() {
        assert_eq!(first("upper(\"x\")", &["env"]).as_deref(), Some("upper"));
        assert_eq!(first("env(\"HOME\")", &["env"]), None);
        assert_eq!(first("env(\"HOME\")", &[]).as_deref(), Some("env"));
        assert_eq!(
            first("env(lower(\"X\"))", &["env"]).as_deref(),
            Some("lower")
        );
        assert_eq!(
            first("[\"a\", {k = max(1, 2)}]", &[]).as_deref(),
            Some("max")
        );
        assert_eq!(
            first("\"a-${upper(\"b\")}\"", &[]).as_deref(),
            Some("upper")
        );
        assert_eq!(
            first("\"%{ if true }${lower(\"b\")}%{ endif }\"", &[]).as_deref(),
            Some("lower")
        );
        assert_eq!(
            first("[for x in [1] : abs(x)]", &[]).as_deref(),
            Some("abs")
        );
        assert_eq!(first("true ? 1 : try(2, 3)", &[]).as_deref(), Some("try"));
        assert_eq!(first("-abs(1) + 2", &[]).as_deref(), Some("abs"));
        assert_eq!(first("{a = 1}[\"a\"]", &[]), None);
        assert_eq!(first("[\"a\", 1, {b = [true]}]", &[]), None);
    }
}
