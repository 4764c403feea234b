//! Evaluating HCL2 expressions into kiln's format-neutral `Node` trees and back, and variable
//! types (`string`, `number`, `bool`, lists, maps) as Packer checks them.

use super::blocks::Blk;
use crate::template::Diagnostic;
use crate::template::node::{Loc, Node, Value};
use hcl::eval::{Context, Evaluate};

/// Evaluates `expr` to a `Node` at `loc`.
pub(super) fn eval(expr: &hcl::Expression, ctx: &Context<'_>, loc: &Loc) -> Result<Node, String> {
    let v = crate::template::lazy::evaluate(expr, ctx)?;
    Ok(to_node(&v, loc))
}

pub(super) fn to_node(v: &hcl::Value, loc: &Loc) -> Node {
    let value = match v {
        hcl::Value::Null => Value::Null,
        hcl::Value::Bool(b) => Value::Bool(*b),
        hcl::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
        hcl::Value::String(s) => Value::String(s.clone()),
        hcl::Value::Array(a) => Value::Array(a.iter().map(|x| to_node(x, loc)).collect()),
        hcl::Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), to_node(x, loc)))
                .collect(),
        ),
    };
    Node::new(value, loc.clone())
}

pub(super) fn to_hcl(n: &Node) -> hcl::Value {
    match &n.value {
        Value::Null => hcl::Value::Null,
        Value::Bool(b) => hcl::Value::Bool(*b),
        Value::Number(x) => hcl::Number::from_f64(*x)
            .map(hcl::Value::Number)
            .unwrap_or(hcl::Value::Null),
        Value::String(s) => hcl::Value::String(s.clone()),
        Value::Array(a) => hcl::Value::Array(a.iter().map(to_hcl).collect()),
        Value::Object(o) => {
            hcl::Value::Object(o.iter().map(|(k, v)| (k.clone(), to_hcl(v))).collect())
        }
    }
}

/// Evaluates a block body into an object node: attributes, and nested blocks grouped by name (one
/// block: an object; several: a list of objects).
pub(super) fn eval_body(
    b: &Blk,
    ctx: &Context<'_>,
    path: &str,
    diags: &mut Vec<Diagnostic>,
) -> Node {
    let mut entries: Vec<(String, Node)> = Vec::new();
    for a in &b.attrs {
        match eval(&a.expr, ctx, &a.loc) {
            Ok(n) => {
                entries.retain(|(k, _)| *k != a.name);
                entries.push((a.name.clone(), n));
            }
            Err(e) => diags.push(Diagnostic::error(&a.loc, &format!("{path}.{}", a.name), e)),
        }
    }
    let mut groups: Vec<(String, Vec<Node>)> = Vec::new();
    for nb in &b.blocks {
        let n = eval_body(nb, ctx, &format!("{path}.{}", nb.kind), diags);
        match groups.iter_mut().find(|(k, _)| *k == nb.kind) {
            Some((_, v)) => v.push(n),
            None => groups.push((nb.kind.clone(), vec![n])),
        }
    }
    for (k, mut v) in groups {
        let node = if v.len() == 1 {
            v.remove(0)
        } else {
            let loc = v[0].loc.clone();
            Node::new(Value::Array(v), loc)
        };
        entries.push((k, node));
    }
    Node::new(Value::Object(entries), b.loc.clone())
}

pub(super) struct VarDecl {
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) default: Option<Node>,
    pub(super) sensitive: bool,
    pub(super) validations: Vec<Blk>,
    pub(super) loc: Loc,
}

pub(super) fn type_kind(expr: Option<&hcl::Expression>) -> String {
    expr.and_then(|e| hcl::format::to_string(e).ok())
        .map(|s| s.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| "any".into())
}

/// Converts a string given on the command line or in the environment to the declared type.
pub(super) fn typed_from_str(
    kind: &str,
    s: &str,
    loc: &Loc,
    ctx: &Context<'_>,
) -> Result<Node, String> {
    if kind == "string" || kind == "any" {
        return Ok(Node::new(Value::String(s.to_owned()), loc.clone()));
    }
    let expr = hcl_edit::parser::parse_expr(s)
        .map_err(|e| format!("cannot parse \"{s}\" as a {kind}: {}", e.message()))?;
    super::variables::eval_value(&hcl::Expression::from(expr), ctx, loc)
}

pub(super) fn check_type(kind: &str, n: &Node) -> Result<Node, String> {
    let ok = match (kind, &n.value) {
        ("string", Value::String(_) | Value::Number(_) | Value::Bool(_)) => {
            if let Value::String(_) = &n.value {
                return Ok(n.clone());
            }
            let s = match &n.value {
                Value::Number(x) => crate::template::node::format_number(*x),
                Value::Bool(b) => b.to_string(),
                _ => String::new(),
            };
            return Ok(Node::new(Value::String(s), n.loc.clone()));
        }
        ("number", Value::Number(_)) => true,
        ("number", Value::String(s)) => {
            return s
                .trim()
                .parse::<f64>()
                .map(|x| Node::new(Value::Number(x), n.loc.clone()))
                .map_err(|_| format!("expected a number, got \"{s}\""));
        }
        ("bool", Value::Bool(_)) => true,
        ("bool", Value::String(s)) if s == "true" || s == "false" => {
            return Ok(Node::new(Value::Bool(s == "true"), n.loc.clone()));
        }
        (k, Value::Array(_))
            if k.starts_with("list") || k.starts_with("set") || k.starts_with("tuple") =>
        {
            true
        }
        (k, Value::Object(_)) if k.starts_with("map") || k.starts_with("object") => true,
        ("any", _) | (_, Value::Null) => true,
        _ => false,
    };
    if ok {
        Ok(n.clone())
    } else {
        Err(format!(
            "expected a value of type {kind}, got a {}",
            n.type_name()
        ))
    }
}

/// Loads an HCL2 template (one file or a directory of `*.pkr.hcl`). Never panics.
pub(super) fn base_var(ctx: &Context<'_>, name: &str) -> hcl::Value {
    let expr = hcl::Expression::Variable(hcl::expr::Variable::unchecked(name));
    expr.evaluate(ctx).unwrap_or(hcl::Value::Null)
}

pub(super) fn node_string(n: &Node) -> String {
    match &n.value {
        Value::String(s) => s.clone(),
        Value::Number(x) => crate::template::node::format_number(*x),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        _ => n.to_json().to_string(),
    }
}
