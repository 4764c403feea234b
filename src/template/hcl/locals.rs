//! HCL2 locals (`locals { }` and `local "NAME" { }`), evaluated in dependency order: whatever can
//! be evaluated is, until nothing changes; a local that names one not evaluated yet waits for it.

use super::blocks::Blk;
use super::values::{eval, node_string, to_node};
use crate::template::Diagnostic;
use crate::template::node::{Loc, Value};
use hcl::eval::Context;

/// Evaluates the template's locals into `ctx` (`local.NAME`); with `data_placeholders` (offline),
/// a local computed from a fetched data source's placeholder is unknown rather than an error.
/// Returns the values of sensitive locals, to mask.
pub(super) fn evaluate(
    blocks: &[Blk],
    ctx: &mut Context<'_>,
    data_placeholders: bool,
    diags: &mut Vec<Diagnostic>,
) -> Vec<String> {
    let mut pending: Vec<(String, hcl::Expression, Loc, bool)> = Vec::new();
    for b in blocks {
        match b.kind.as_str() {
            "locals" => pending.extend(b.attrs.iter().map(|a| (a.name.clone(), a.expr.clone(), a.loc.clone(), false))),
            "local" => match (b.labels.first(), b.attr("expression")) {
                (Some(n), Some(a)) => {
                    let sens = b.attr("sensitive").map(|s| matches!(eval(&s.expr, ctx, &s.loc).map(|n| n.value), Ok(Value::Bool(true)))).unwrap_or(false);
                    pending.push((n.clone(), a.expr.clone(), a.loc.clone(), sens));
                }
                _ => diags.push(Diagnostic::error(&b.loc, "local", "a local block needs a name and an expression: local \"NAME\" { expression = ... }")),
            },
            _ => {}
        }
    }
    let mut locals = hcl::Map::new();
    let mut sensitive_locals = Vec::new();
    loop {
        ctx.declare_var("local", hcl::Value::Object(locals.clone()));
        let before = pending.len();
        let mut still = Vec::new();
        let mut last_errors = Vec::new();
        let waiting: Vec<String> = pending.iter().map(|(n, ..)| n.clone()).collect();
        for (name, expr, loc, sens) in pending {
            // A local that names another not evaluated yet waits for it (so `try` does not
            // take its fallback only because of the order of evaluation).
            if crate::template::lazy::names_any_local(&expr, &waiting, &name) {
                last_errors.push((
                    name.clone(),
                    loc.clone(),
                    "it refers to another local that cannot be evaluated (a cycle, or that local's own error)".into(),
                ));
                still.push((name, expr, loc, sens));
                continue;
            }
            match crate::template::lazy::evaluate(&expr, ctx) {
                Ok(v) => {
                    if sens {
                        sensitive_locals.push(node_string(&to_node(&v, &loc)));
                    }
                    locals.insert(name, v);
                }
                // Offline (validate), a local computed from a fetched data source's placeholder
                // (`jsondecode(data.amazon-secretsmanager.x.secret_string)["k"]`) is unknown, as
                // in `packer validate`: it takes a placeholder instead of failing.
                Err(_)
                    if data_placeholders
                        && crate::template::data::mentions_fetched(
                            &hcl::format::to_string(&expr).unwrap_or_default(),
                        ) =>
                {
                    locals.insert(
                        name.clone(),
                        hcl::Value::from(crate::template::data::placeholder("local", &name)),
                    );
                }
                Err(e) => {
                    last_errors.push((name.clone(), loc.clone(), e));
                    still.push((name, expr, loc, sens));
                }
            }
        }
        pending = still;
        if pending.is_empty() || pending.len() == before {
            for (name, loc, e) in last_errors {
                diags.push(Diagnostic::error(&loc, &format!("local.{name}"), e));
            }
            break;
        }
    }
    ctx.declare_var("local", hcl::Value::Object(locals));
    sensitive_locals
}
