//! HCL2 template files as blocks: `.pkr.hcl` through `hcl-edit` (keeping each attribute's line),
//! `.pkr.json` by Packer's JSON mapping, the plural `variables { }` block unfolded, and the
//! `packer { }` block checked.

use super::TOP_BLOCKS;
use crate::template::Diagnostic;
use crate::template::node::{Loc, Node, Value};
use hcl_edit::Span;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub(super) struct Attr {
    pub(super) name: String,
    pub(super) expr: hcl::Expression,
    pub(super) loc: Loc,
}

#[derive(Debug, Clone)]
pub(super) struct Blk {
    pub(super) kind: String,
    pub(super) labels: Vec<String>,
    pub(super) attrs: Vec<Attr>,
    pub(super) blocks: Vec<Blk>,
    pub(super) loc: Loc,
}

impl Blk {
    pub(super) fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().rev().find(|a| a.name == name)
    }
    pub(super) fn label(&self) -> String {
        format!(
            "{} {}",
            self.kind,
            self.labels
                .iter()
                .map(|l| format!("\"{l}\""))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

pub(super) fn line_of(text: &str, offset: usize) -> u32 {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count() as u32
        + 1
}

pub(super) fn convert_body(
    body: &hcl_edit::structure::Body,
    text: &str,
    file: &Arc<str>,
) -> (Vec<Attr>, Vec<Blk>) {
    let mut attrs = Vec::new();
    let mut blocks = Vec::new();
    for s in body.iter() {
        match s {
            hcl_edit::structure::Structure::Attribute(a) => {
                let line = a.span().map(|r| line_of(text, r.start)).unwrap_or(0);
                attrs.push(Attr {
                    name: a.key.as_str().to_owned(),
                    expr: hcl::Expression::from(a.value.clone()),
                    loc: Loc::new(file, line),
                });
            }
            hcl_edit::structure::Structure::Block(b) => {
                let line = b.span().map(|r| line_of(text, r.start)).unwrap_or(0);
                let (a, bl) = convert_body(&b.body, text, file);
                blocks.push(Blk {
                    kind: b.ident.as_str().to_owned(),
                    labels: b
                        .labels
                        .iter()
                        .map(|l| match l {
                            hcl_edit::structure::BlockLabel::Ident(i) => i.as_str().to_owned(),
                            hcl_edit::structure::BlockLabel::String(s) => s.value().clone(),
                        })
                        .collect(),
                    attrs: a,
                    blocks: bl,
                    loc: Loc::new(file, line),
                });
            }
        }
    }
    (attrs, blocks)
}

/// `variables { a = "x" }` (Packer's plural form) as `variable "a" { default = "x" }` blocks.
pub(super) fn plural_variables(blocks: Vec<Blk>) -> Vec<Blk> {
    let mut out = Vec::with_capacity(blocks.len());
    for b in blocks {
        if b.kind != "variables" {
            out.push(b);
            continue;
        }
        for a in b.attrs {
            out.push(Blk {
                kind: "variable".into(),
                labels: vec![a.name.clone()],
                loc: a.loc.clone(),
                attrs: vec![Attr {
                    name: "default".into(),
                    expr: a.expr,
                    loc: a.loc,
                }],
                blocks: Vec::new(),
            });
        }
    }
    out
}

/// `packer { }` holds `required_version` and `required_plugins` only; anything else is an
/// error, as in Packer (a `source` or `build` written inside it is not silently ignored).
pub(super) fn check_packer_block(b: &Blk, diags: &mut Vec<Diagnostic>) {
    for a in b.attrs.iter().filter(|a| a.name != "required_version") {
        diags.push(Diagnostic::error(
            &a.loc,
            &format!("packer.{}", a.name),
            format!(
                "Unsupported argument; An argument named \"{}\" is not expected here: packer {{ }} holds required_version and required_plugins",
                a.name
            ),
        ));
    }
    for inner in b.blocks.iter().filter(|i| i.kind != "required_plugins") {
        diags.push(Diagnostic::error(
            &inner.loc,
            &format!("packer.{}", inner.kind),
            format!(
                "Unsupported block type; Blocks of type \"{}\" are not expected here: packer {{ }} holds required_version and required_plugins{}",
                inner.kind,
                if ["source", "build", "variable", "locals"].contains(&inner.kind.as_str()) {
                    format!(" (move the {} block to the top level)", inner.kind)
                } else {
                    String::new()
                }
            ),
        ));
    }
}

/// Parses one HCL file into top-level blocks (and reports top-level attributes).
pub(super) fn parse_file(path: &Path, diags: &mut Vec<Diagnostic>) -> Vec<Blk> {
    let file: Arc<str> = Arc::from(path.display().to_string());
    let text = match crate::template::packer_json::read(path, &file) {
        Ok(t) => t,
        Err(d) => {
            diags.push(d);
            return Vec::new();
        }
    };
    let body = match hcl_edit::parser::parse_body(&text) {
        Ok(b) => b,
        Err(e) => {
            let l = e.location();
            diags.push(Diagnostic::error(
                &Loc::new(&file, l.line() as u32),
                "",
                format!("invalid HCL at column {}: {}", l.column(), e.message()),
            ));
            return Vec::new();
        }
    };
    let (attrs, blocks) = convert_body(&body, &text, &file);
    for a in attrs {
        diags.push(Diagnostic::error(
            &a.loc,
            &a.name,
            format!(
                "unexpected top-level attribute `{}`: HCL2 templates hold only blocks ({})",
                a.name,
                TOP_BLOCKS.join(", ")
            ),
        ));
    }
    blocks
}

/// Label counts of HCL2 block types in JSON syntax, and which nested keys are blocks.
pub(super) fn json_labels(kind: &str) -> usize {
    match kind {
        "variable"
        | "local"
        | "provisioner"
        | "post-processor"
        | "source"
        | "error-cleanup-provisioner" => 1,
        _ => 0,
    }
}

pub(super) fn json_nested_blocks(kind: &str) -> &'static [&'static str] {
    match kind {
        "variable" => &["validation"],
        "build" => &[
            "source",
            "provisioner",
            "post-processor",
            "post-processors",
            "error-cleanup-provisioner",
        ],
        "post-processors" => &["post-processor"],
        _ => &[],
    }
}

/// A JSON value as an HCL expression: strings are HCL templates (`"${var.x}"`).
pub(super) fn json_expr(n: &Node) -> hcl::Expression {
    match &n.value {
        Value::Null => hcl::Expression::Null,
        Value::Bool(b) => hcl::Expression::Bool(*b),
        Value::Number(x) => hcl::Number::from_f64(*x)
            .map(hcl::Expression::Number)
            .unwrap_or(hcl::Expression::Null),
        Value::String(s) => hcl::Expression::TemplateExpr(Box::new(
            hcl::expr::TemplateExpr::QuotedString(s.clone()),
        )),
        Value::Array(a) => hcl::Expression::Array(a.iter().map(json_expr).collect()),
        Value::Object(o) => hcl::Expression::Object(
            o.iter()
                .map(|(k, v)| {
                    (
                        hcl::expr::ObjectKey::Expression(hcl::Expression::String(k.clone())),
                        json_expr(v),
                    )
                })
                .collect(),
        ),
    }
}

/// One block of kind `kind` (its labels already taken) from a JSON object body.
pub(super) fn json_block(kind: &str, labels: Vec<String>, body: &Node) -> Blk {
    let nested = json_nested_blocks(kind);
    let mut attrs = Vec::new();
    let mut blocks = Vec::new();
    for (k, v) in body.as_object().unwrap_or_default() {
        if nested.contains(&k.as_str()) {
            blocks.extend(json_blocks(k, v));
        } else {
            attrs.push(Attr {
                name: k.clone(),
                expr: json_expr(v),
                loc: v.loc.clone(),
            });
        }
    }
    Blk {
        kind: kind.to_owned(),
        labels,
        attrs,
        blocks,
        loc: body.loc.clone(),
    }
}

/// Every block of kind `kind` under `node` (an object keyed by labels, or a list of those).
pub(super) fn json_blocks(kind: &str, node: &Node) -> Vec<Blk> {
    pub(super) fn walk(
        kind: &str,
        node: &Node,
        depth: usize,
        labels: Vec<String>,
        out: &mut Vec<Blk>,
    ) {
        match &node.value {
            Value::Array(items) => items
                .iter()
                .for_each(|i| walk(kind, i, depth, labels.clone(), out)),
            Value::Object(entries) if depth > 0 => {
                for (k, v) in entries {
                    let mut l = labels.clone();
                    l.push(k.clone());
                    walk(kind, v, depth - 1, l, out);
                }
            }
            _ => out.push(json_block(kind, labels, node)),
        }
    }
    let labels = if kind == "source" || kind == "data" {
        2
    } else {
        json_labels(kind)
    };
    let mut out = Vec::new();
    walk(kind, node, labels, Vec::new(), &mut out);
    out
}

/// Parses an HCL2 template in JSON syntax (`.pkr.json`).
pub(super) fn parse_json_file(path: &Path, diags: &mut Vec<Diagnostic>) -> Vec<Blk> {
    let file: Arc<str> = Arc::from(path.display().to_string());
    let text = match crate::template::packer_json::read(path, &file) {
        Ok(t) => t,
        Err(d) => {
            diags.push(d);
            return Vec::new();
        }
    };
    let root = match crate::template::json::parse(&file, &text) {
        Ok((root, _)) => root,
        Err(e) => {
            diags.push(Diagnostic::error(
                &Loc::new(&file, e.line),
                "",
                format!("invalid JSON at column {}: {}", e.column, e.message),
            ));
            return Vec::new();
        }
    };
    let Some(entries) = root.as_object() else {
        diags.push(Diagnostic::error(
            &root.loc,
            "",
            "an HCL2 JSON template must be an object",
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in entries {
        if k.starts_with("//") || k.starts_with('_') {
            continue;
        }
        if k == "locals" {
            out.extend(json_blocks("locals", v));
        } else {
            out.extend(json_blocks(k, v));
        }
    }
    out
}
