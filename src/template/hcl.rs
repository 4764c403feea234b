//! Packer's HCL2 templates: `variable`, `locals`/`local`, `source "amazon-chroot"`, `data
//! "amazon-ami"`, `build` (sources, source overrides, provisioners, post-processors) and `packer`.
//! A directory is one template made of all its `*.pkr.hcl` files. Blocks are walked in file order
//! (hcl-rs's serde path would lose provisioner order); expressions are evaluated with `hcl::eval`.

use super::config::{ChrootConfig, FOREIGN_FIELDS};
use super::decode::Fields;
use super::gotmpl::Ctx;
use super::node::{Loc, Node, Value};
use super::{Diagnostic, Inputs, Loaded, Plan, functions, only_matches, provisioner, suggest};
use hcl::eval::{Context, Evaluate};
use hcl_edit::Span;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Block types allowed at the top level.
const TOP_BLOCKS: &[&str] = &[
    "variable",
    "variables",
    "locals",
    "local",
    "source",
    "build",
    "data",
    "packer",
];

#[derive(Debug, Clone)]
struct Attr {
    name: String,
    expr: hcl::Expression,
    loc: Loc,
}

#[derive(Debug, Clone)]
struct Blk {
    kind: String,
    labels: Vec<String>,
    attrs: Vec<Attr>,
    blocks: Vec<Blk>,
    loc: Loc,
}

impl Blk {
    fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().rev().find(|a| a.name == name)
    }
    fn label(&self) -> String {
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

fn line_of(text: &str, offset: usize) -> u32 {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count() as u32
        + 1
}

fn convert_body(
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
fn plural_variables(blocks: Vec<Blk>) -> Vec<Blk> {
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
fn check_packer_block(b: &Blk, diags: &mut Vec<Diagnostic>) {
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
fn parse_file(path: &Path, diags: &mut Vec<Diagnostic>) -> Vec<Blk> {
    let file: Arc<str> = Arc::from(path.display().to_string());
    let text = match super::packer_json::read(path, &file) {
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
fn json_labels(kind: &str) -> usize {
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

fn json_nested_blocks(kind: &str) -> &'static [&'static str] {
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
fn json_expr(n: &Node) -> hcl::Expression {
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
fn json_block(kind: &str, labels: Vec<String>, body: &Node) -> Blk {
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
fn json_blocks(kind: &str, node: &Node) -> Vec<Blk> {
    fn walk(kind: &str, node: &Node, depth: usize, labels: Vec<String>, out: &mut Vec<Blk>) {
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
fn parse_json_file(path: &Path, diags: &mut Vec<Diagnostic>) -> Vec<Blk> {
    let file: Arc<str> = Arc::from(path.display().to_string());
    let text = match super::packer_json::read(path, &file) {
        Ok(t) => t,
        Err(d) => {
            diags.push(d);
            return Vec::new();
        }
    };
    let root = match super::json::parse(&file, &text) {
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

/// Evaluates `expr` to a `Node` at `loc`.
fn eval(expr: &hcl::Expression, ctx: &Context<'_>, loc: &Loc) -> Result<Node, String> {
    let v = super::lazy::resolve(expr, ctx)
        .evaluate(ctx)
        .map_err(|e| e.to_string())?;
    Ok(to_node(&v, loc))
}

fn to_node(v: &hcl::Value, loc: &Loc) -> Node {
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

fn to_hcl(n: &Node) -> hcl::Value {
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
fn eval_body(b: &Blk, ctx: &Context<'_>, path: &str, diags: &mut Vec<Diagnostic>) -> Node {
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

struct VarDecl {
    name: String,
    kind: String,
    default: Option<Node>,
    sensitive: bool,
    validations: Vec<Blk>,
    loc: Loc,
}

fn type_kind(expr: Option<&hcl::Expression>) -> String {
    expr.and_then(|e| hcl::format::to_string(e).ok())
        .map(|s| s.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| "any".into())
}

/// Converts a string given on the command line or in the environment to the declared type.
fn typed_from_str(kind: &str, s: &str, loc: &Loc, ctx: &Context<'_>) -> Result<Node, String> {
    if kind == "string" || kind == "any" {
        return Ok(Node::new(Value::String(s.to_owned()), loc.clone()));
    }
    let expr = hcl_edit::parser::parse_expr(s)
        .map_err(|e| format!("cannot parse \"{s}\" as a {kind}: {}", e.message()))?;
    eval(&hcl::Expression::from(expr), ctx, loc)
}

fn check_type(kind: &str, n: &Node) -> Result<Node, String> {
    let ok = match (kind, &n.value) {
        ("string", Value::String(_) | Value::Number(_) | Value::Bool(_)) => {
            if let Value::String(_) = &n.value {
                return Ok(n.clone());
            }
            let s = match &n.value {
                Value::Number(x) => super::node::format_number(*x),
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
pub fn load(path: &Path, inputs: &Inputs) -> Loaded {
    functions::set_now(inputs.now);
    functions::set_cwd(&inputs.cwd);
    let mut out = Loaded::default();
    let diags = &mut out.diagnostics;
    let (files, template_dir): (Vec<PathBuf>, PathBuf) = if path.is_dir() {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".pkr.hcl"))
                .collect(),
            Err(e) => {
                diags.push(Diagnostic::error(
                    &Loc::new(&Arc::from(path.display().to_string()), 0),
                    "",
                    format!("cannot read the directory: {e}"),
                ));
                return out;
            }
        };
        files.sort();
        if files.is_empty() {
            diags.push(Diagnostic::error(
                &Loc::new(&Arc::from(path.display().to_string()), 0),
                "",
                "the directory has no *.pkr.hcl files",
            ));
        }
        (files, path.to_path_buf())
    } else {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        (vec![path.to_path_buf()], dir)
    };
    let mut blocks = Vec::new();
    for f in &files {
        if f.to_string_lossy().ends_with(".json") {
            blocks.extend(parse_json_file(f, diags));
        } else {
            blocks.extend(parse_file(f, diags));
        }
    }
    if diags.iter().any(|d| d.severity == super::Severity::Error) {
        return out;
    }
    let blocks = plural_variables(blocks);
    for b in blocks.iter().filter(|b| b.kind == "packer") {
        check_packer_block(b, diags);
    }
    for b in &blocks {
        if !TOP_BLOCKS.contains(&b.kind.as_str()) {
            let hint = if b.kind == "provisioner" || b.kind == "post-processor" {
                format!(": `{}` blocks belong inside a `build` block", b.kind)
            } else {
                suggest(&b.kind, TOP_BLOCKS.iter().copied())
                    .map(|s| format!(": did you mean `{s}`?"))
                    .unwrap_or_else(|| format!(": a template holds {}", TOP_BLOCKS.join(", ")))
            };
            diags.push(Diagnostic::error(
                &b.loc,
                &b.kind,
                format!("unexpected block `{}`{hint}", b.kind),
            ));
        }
    }

    // Base context: path, packer.
    let root_obj = hcl::Value::Object(
        [
            (
                "root".to_owned(),
                hcl::Value::from(template_dir.display().to_string()),
            ),
            (
                "cwd".to_owned(),
                hcl::Value::from(inputs.cwd.display().to_string()),
            ),
        ]
        .into_iter()
        .collect(),
    );
    let packer_obj = hcl::Value::Object(
        [(
            "version".to_owned(),
            hcl::Value::from(super::PACKER_COMPAT_VERSION),
        )]
        .into_iter()
        .collect(),
    );
    let mut base = Context::new();
    functions::declare(&mut base, false);
    base.declare_var("path", root_obj.clone());
    base.declare_var("packer", packer_obj.clone());
    let mut env_ctx = Context::new();
    functions::declare(&mut env_ctx, true);
    env_ctx.declare_var("path", root_obj);
    env_ctx.declare_var("packer", packer_obj);

    // Variables.
    let mut decls: Vec<VarDecl> = Vec::new();
    for b in blocks.iter().filter(|b| b.kind == "variable") {
        let Some(name) = b.labels.first().cloned() else {
            diags.push(Diagnostic::error(
                &b.loc,
                "variable",
                "a variable block needs a name: variable \"NAME\" { ... }",
            ));
            continue;
        };
        if decls.iter().any(|d| d.name == name) {
            diags.push(Diagnostic::error(
                &b.loc,
                &format!("var.{name}"),
                format!("variable \"{name}\" is declared twice"),
            ));
            continue;
        }
        let kind = type_kind(b.attr("type").map(|a| &a.expr));
        let default = b
            .attr("default")
            .and_then(|a| match eval(&a.expr, &env_ctx, &a.loc) {
                Ok(n) => Some(n),
                Err(e) => {
                    diags.push(Diagnostic::error(&a.loc, &format!("var.{name}.default"), e));
                    None
                }
            });
        let sensitive = b
            .attr("sensitive")
            .map(|a| {
                matches!(
                    eval(&a.expr, &base, &a.loc).map(|n| n.value),
                    Ok(Value::Bool(true))
                )
            })
            .unwrap_or(false);
        for a in &b.attrs {
            if !["type", "default", "sensitive", "description", "nullable"]
                .contains(&a.name.as_str())
            {
                diags.push(Diagnostic::error(&a.loc, &format!("var.{name}.{}", a.name), format!("unknown variable attribute `{}`: a variable has type, default, sensitive, description and validation blocks", a.name)));
            }
        }
        decls.push(VarDecl {
            name,
            kind,
            default,
            sensitive,
            validations: b
                .blocks
                .iter()
                .filter(|v| v.kind == "validation")
                .cloned()
                .collect(),
            loc: b.loc.clone(),
        });
    }
    let mut values: BTreeMap<String, Node> = BTreeMap::new();
    for d in &decls {
        if let Some(v) = &d.default {
            values.insert(d.name.clone(), v.clone());
        }
    }
    let envloc = Loc::new(&Arc::from("environment"), 0);
    for d in &decls {
        if let Some(v) = inputs.env.get(&format!("PKR_VAR_{}", d.name)) {
            match typed_from_str(&d.kind, v, &envloc, &base) {
                Ok(n) => {
                    values.insert(d.name.clone(), n);
                }
                Err(e) => diags.push(Diagnostic::error(
                    &envloc,
                    &format!("PKR_VAR_{}", d.name),
                    e,
                )),
            }
        }
    }
    let declared: BTreeSet<String> = decls.iter().map(|d| d.name.clone()).collect();
    for vf in &inputs.var_files {
        let file: Arc<str> = Arc::from(vf.display().to_string());
        let pairs: Vec<(String, Node)> = if vf.to_string_lossy().ends_with(".json") {
            match super::packer_json::read(vf, &file).map(|t| super::json::parse(&file, &t)) {
                Ok(Ok((node, _))) => node.as_object().map(<[_]>::to_vec).unwrap_or_default(),
                Ok(Err(e)) => {
                    diags.push(Diagnostic::error(
                        &Loc::new(&file, e.line),
                        "",
                        format!("invalid JSON at column {}: {}", e.column, e.message),
                    ));
                    Vec::new()
                }
                Err(d) => {
                    diags.push(d);
                    Vec::new()
                }
            }
        } else {
            let text = match super::packer_json::read(vf, &file) {
                Ok(t) => t,
                Err(d) => {
                    diags.push(d);
                    continue;
                }
            };
            match hcl_edit::parser::parse_body(&text) {
                Ok(body) => {
                    let (attrs, blocks) = convert_body(&body, &text, &file);
                    for b in blocks {
                        diags.push(Diagnostic::error(
                            &b.loc,
                            &b.kind,
                            "a var file holds only `name = value` assignments",
                        ));
                    }
                    attrs
                        .into_iter()
                        .filter_map(|a| match eval(&a.expr, &base, &a.loc) {
                            Ok(n) => Some((a.name, n)),
                            Err(e) => {
                                diags.push(Diagnostic::error(&a.loc, &a.name, e));
                                None
                            }
                        })
                        .collect()
                }
                Err(e) => {
                    diags.push(Diagnostic::error(
                        &Loc::new(&file, e.location().line() as u32),
                        "",
                        format!(
                            "invalid HCL at column {}: {}",
                            e.location().column(),
                            e.message()
                        ),
                    ));
                    Vec::new()
                }
            }
        };
        for (k, v) in pairs {
            if declared.contains(&k) {
                values.insert(k, v);
            } else {
                diags.push(Diagnostic::warning(
                    &v.loc,
                    &k,
                    format!("the var file sets `{k}`, which the template does not declare"),
                ));
            }
        }
    }
    let cli: Arc<str> = Arc::from("--var");
    for (k, v) in &inputs.vars {
        let loc = Loc::new(&cli, 0);
        match decls.iter().find(|d| &d.name == k) {
            Some(d) => match typed_from_str(&d.kind, v, &loc, &base) {
                Ok(n) => {
                    values.insert(k.clone(), n);
                }
                Err(e) => diags.push(Diagnostic::error(&loc, &format!("--var {k}"), e)),
            },
            None => {
                let hint = suggest(k, declared.iter().map(String::as_str))
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                diags.push(Diagnostic::error(&loc, &format!("--var {k}"), format!("A variable named \"{k}\" was assigned on the command line, but the template does not declare it{hint}")));
            }
        }
    }
    let mut var_obj = hcl::Map::new();
    let mut sensitive = Vec::new();
    let mut strings = BTreeMap::new();
    for d in &decls {
        match values.get(&d.name) {
            None => diags.push(Diagnostic::error(&d.loc, &format!("var.{}", d.name), format!("Unset variable \"{}\": set it with --var {}=VALUE, a --var-file, or PKR_VAR_{}", d.name, d.name, d.name))),
            Some(v) => match check_type(&d.kind, v) {
                Ok(v) => {
                    var_obj.insert(d.name.clone(), to_hcl(&v));
                    strings.insert(d.name.clone(), node_string(&v));
                    if d.sensitive {
                        sensitive.push(d.name.clone());
                    }
                }
                Err(e) => diags.push(Diagnostic::error(&v.loc, &format!("var.{}", d.name), e)),
            },
        }
    }
    let mut ctx = Context::new();
    functions::declare(&mut ctx, false);
    ctx.declare_var("path", base_var(&base, "path"));
    ctx.declare_var("packer", base_var(&base, "packer"));
    ctx.declare_var("var", hcl::Value::Object(var_obj));
    // Validation blocks.
    for d in &decls {
        if !strings.contains_key(&d.name) {
            continue;
        }
        for v in &d.validations {
            let cond = v.attr("condition").map(|a| eval(&a.expr, &ctx, &a.loc));
            let msg = v
                .attr("error_message")
                .and_then(|a| eval(&a.expr, &ctx, &a.loc).ok())
                .and_then(|n| n.as_str().map(str::to_owned))
                .unwrap_or_else(|| "the value is invalid".into());
            match cond {
                Some(Ok(n)) if n.value == Value::Bool(true) => {}
                Some(Ok(_)) => diags.push(Diagnostic::error(
                    &v.loc,
                    &format!("var.{}", d.name),
                    format!("Invalid value for variable: {msg}"),
                )),
                Some(Err(e)) => diags.push(Diagnostic::error(
                    &v.loc,
                    &format!("var.{}", d.name),
                    format!("the validation condition failed to evaluate: {e}"),
                )),
                None => diags.push(Diagnostic::error(
                    &v.loc,
                    &format!("var.{}", d.name),
                    "a validation block needs a condition",
                )),
            }
        }
    }

    // Data sources: amazon-ami resolved at build time, the others fetched before this load.
    let mut data = super::data::DataSources::default();
    let data_ctx = Ctx {
        user: BTreeMap::new(),
        env_allowed: false,
        now: inputs.now,
        build_name: String::new(),
        template_dir: template_dir.display().to_string(),
        placeholders: BTreeMap::new(),
    };
    for b in blocks.iter().filter(|b| b.kind == "data") {
        let (Some(kind), Some(name)) = (b.labels.first(), b.labels.get(1)) else {
            diags.push(Diagnostic::error(
                &b.loc,
                "data",
                "a data block needs a type and a name: data \"amazon-ami\" \"NAME\" { ... }",
            ));
            continue;
        };
        let node = eval_body(b, &ctx, &format!("data.{kind}.{name}"), diags);
        data.declare(kind, name, &node, inputs, &data_ctx, diags);
    }
    ctx.declare_var("data", data.value());
    let data_placeholders = data.placeholders(inputs);

    // Locals, in dependency order: evaluate what can be evaluated until nothing changes.
    let mut pending: Vec<(String, hcl::Expression, Loc, bool)> = Vec::new();
    for b in &blocks {
        match b.kind.as_str() {
            "locals" => pending.extend(b.attrs.iter().map(|a| (a.name.clone(), a.expr.clone(), a.loc.clone(), false))),
            "local" => match (b.labels.first(), b.attr("expression")) {
                (Some(n), Some(a)) => {
                    let sens = b.attr("sensitive").map(|s| matches!(eval(&s.expr, &ctx, &s.loc).map(|n| n.value), Ok(Value::Bool(true)))).unwrap_or(false);
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
            if super::lazy::names_any_local(&expr, &waiting, &name) {
                last_errors.push((
                    name.clone(),
                    loc.clone(),
                    "it refers to another local that cannot be evaluated (a cycle, or that local's own error)".into(),
                ));
                still.push((name, expr, loc, sens));
                continue;
            }
            match super::lazy::resolve(&expr, &ctx).evaluate(&ctx) {
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
                        && super::data::mentions_fetched(
                            &hcl::format::to_string(&expr).unwrap_or_default(),
                        ) =>
                {
                    locals.insert(
                        name.clone(),
                        hcl::Value::from(super::data::placeholder("local", &name)),
                    );
                }
                Err(e) => {
                    last_errors.push((name.clone(), loc.clone(), e.to_string()));
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

    // Sources.
    let mut sources: BTreeMap<String, &Blk> = BTreeMap::new();
    for b in blocks.iter().filter(|b| b.kind == "source") {
        let (Some(kind), Some(name)) = (b.labels.first(), b.labels.get(1)) else {
            diags.push(Diagnostic::error(
                &b.loc,
                "source",
                "a source block needs a type and a name: source \"amazon-chroot\" \"NAME\" { ... }",
            ));
            continue;
        };
        // Sources of other builder types are an error only when a selected build uses them.
        if sources.insert(format!("{kind}.{name}"), b).is_some() {
            diags.push(Diagnostic::error(
                &b.loc,
                &format!("source.{kind}.{name}"),
                format!("source \"{kind}\" \"{name}\" is declared twice"),
            ));
        }
    }

    // Builds.
    let builds: Vec<&Blk> = blocks.iter().filter(|b| b.kind == "build").collect();
    if builds.is_empty() && !sources.is_empty() {
        let first = sources.keys().next().cloned().unwrap_or_default();
        diags.push(Diagnostic::error(
            &blocks[0].loc,
            "build",
            format!(
                "the template has no build block: add `build {{ sources = [\"source.{first}\"] }}`"
            ),
        ));
    }
    let mut plans = Vec::new();
    let mut seen_names = BTreeSet::new();
    // Selected builds of other builder types: (where, type, name), reported once all are known.
    let mut unsupported: Vec<(Loc, String, String)> = Vec::new();
    for build in builds {
        let build_name = build
            .attr("name")
            .and_then(|a| eval(&a.expr, &ctx, &a.loc).ok())
            .and_then(|n| n.as_str().map(str::to_owned));
        for a in &build.attrs {
            if !["name", "sources", "description"].contains(&a.name.as_str()) {
                diags.push(Diagnostic::error(
                    &a.loc,
                    &format!("build.{}", a.name),
                    format!(
                        "unknown build attribute `{}`: a build has name, description and sources",
                        a.name
                    ),
                ));
            }
        }
        // (source key, override block, location)
        let mut refs: Vec<(String, Option<&Blk>, Loc)> = Vec::new();
        if let Some(a) = build.attr("sources") {
            match &a.expr {
                hcl::Expression::Array(items) => {
                    for item in items {
                        match source_ref(item) {
                            Some(r) => refs.push((r, None, a.loc.clone())),
                            None => diags.push(Diagnostic::error(&a.loc, "build.sources", "each entry of sources must name a source, e.g. \"source.amazon-chroot.NAME\"")),
                        }
                    }
                }
                _ => diags.push(Diagnostic::error(
                    &a.loc,
                    "build.sources",
                    "sources must be a list such as [\"source.amazon-chroot.NAME\"]",
                )),
            }
        }
        for b in build.blocks.iter().filter(|b| b.kind == "source") {
            match b.labels.first().and_then(|l| strip_source(l)) {
                Some(r) => refs.push((r, Some(b), b.loc.clone())),
                None => diags.push(Diagnostic::error(&b.loc, "build.source", "a source block inside build names a source: source \"source.amazon-chroot.NAME\" { ... }")),
            }
        }
        for b in &build.blocks {
            if ![
                "source",
                "provisioner",
                "post-processor",
                "post-processors",
                "error-cleanup-provisioner",
                "hcp_packer_registry",
            ]
            .contains(&b.kind.as_str())
            {
                diags.push(Diagnostic::error(&b.loc, &format!("build.{}", b.kind), format!("unexpected block `{}` in build: a build holds source, provisioner and post-processor blocks", b.kind)));
            }
        }
        if refs.is_empty() {
            diags.push(Diagnostic::error(
                &build.loc,
                "build",
                "the build names no sources: add sources = [\"source.amazon-chroot.NAME\"]",
            ));
        }
        for (key, over, loc) in refs {
            let Some(src) = sources.get(&key) else {
                let hint = suggest(&key, sources.keys().map(String::as_str))
                    .map(|s| format!(" (did you mean `source.{s}`?)"))
                    .unwrap_or_default();
                diags.push(Diagnostic::error(
                    &loc,
                    "build.sources",
                    format!("the build names source.{key}, which is not declared{hint}"),
                ));
                continue;
            };
            let src_name = key
                .split_once('.')
                .map(|(_, n)| n.to_owned())
                .unwrap_or_default();
            let local_name = over
                .and_then(|o| o.attr("name"))
                .and_then(|a| eval(&a.expr, &ctx, &a.loc).ok())
                .and_then(|n| n.as_str().map(str::to_owned))
                .unwrap_or(src_name.clone());
            let kind = key.split_once('.').map(|(k, _)| k).unwrap_or_default();
            let full = match &build_name {
                Some(b) => format!("{b}.{kind}.{local_name}"),
                None => format!("{kind}.{local_name}"),
            };
            out.all_builds.push(full.clone());
            // -only/-except pick builds before anything is validated, as in Packer.
            if !inputs.selects(&full) {
                continue;
            }
            if kind != "amazon-chroot" {
                unsupported.push((loc.clone(), kind.to_owned(), full));
                continue;
            }
            if !seen_names.insert(full.clone()) {
                diags.push(Diagnostic::error(
                    &loc,
                    "build",
                    format!("two builds are named {full}: give one a different `name`"),
                ));
                continue;
            }
            let mut sctx = ctx.clone();
            sctx.declare_var(
                "source",
                hcl::Value::Object(
                    [
                        ("name".to_owned(), hcl::Value::from(local_name.clone())),
                        ("type".to_owned(), hcl::Value::from("amazon-chroot")),
                    ]
                    .into_iter()
                    .collect(),
                ),
            );
            sctx.declare_var(
                "build",
                hcl::Value::Object(
                    [(
                        "name".to_owned(),
                        hcl::Value::from(build_name.clone().unwrap_or_default()),
                    )]
                    .into_iter()
                    .collect(),
                ),
            );
            let path = format!("source.{key}");
            let mut node = eval_body(src, &sctx, &path, diags);
            if let Some(o) = over {
                let onode = eval_body(o, &sctx, &path, diags);
                if let (Value::Object(base_entries), Some(oentries)) =
                    (&mut node.value, onode.as_object())
                {
                    for (k, v) in oentries {
                        if k == "name" {
                            continue;
                        }
                        base_entries.retain(|(bk, _)| bk != k);
                        base_entries.push((k.clone(), v.clone()));
                    }
                }
            }
            // A data source feeding source_ami becomes the filter the pipeline resolves.
            let mut data_note = None;
            if let Some(id) = node
                .get("source_ami")
                .and_then(Node::as_str)
                .and_then(|s| s.strip_prefix(super::data::AMI_PREFIX))
                .map(str::to_owned)
                && let Value::Object(entries) = &mut node.value
            {
                entries.retain(|(k, _)| k != "source_ami");
                data_note = Some(id);
            }
            let gctx = Ctx {
                user: strings.clone(),
                env_allowed: false,
                now: inputs.now,
                build_name: local_name.clone(),
                template_dir: template_dir.display().to_string(),
                placeholders: BTreeMap::new(),
            };
            let mut f = Fields::new(&node, path.clone(), diags, &gctx);
            let data_filter = data_note
                .as_ref()
                .and_then(|d| data.filters.get(d))
                .cloned();
            let config = ChrootConfig::decode_with(&mut f, data_filter);
            f.finish(FOREIGN_FIELDS);
            let provisioners = build_provisioners(build, &full, &sctx, &gctx, &inputs.cwd, diags);
            let post_processors = build_post_processors(build, &sctx, &gctx, diags);
            plans.push(Plan {
                name: full,
                config,
                provisioners,
                post_processors,
                template_dir: template_dir.clone(),
                work_dir: inputs.cwd.clone(),
                variables: strings.clone(),
                sensitive: sensitive.clone(),
            });
        }
    }
    let chroot_builds: Vec<String> = out
        .all_builds
        .iter()
        .filter(|n| n.contains("amazon-chroot."))
        .cloned()
        .collect();
    for (loc, kind, name) in unsupported {
        diags.push(Diagnostic::error(
            &loc,
            "build.sources",
            inputs.unsupported(&kind, &name, &chroot_builds),
        ));
    }
    for s in sensitive_locals {
        out.masker.add(&s);
    }
    out.plans = plans;
    out.data_requests = data.requests;
    out
}

fn base_var(ctx: &Context<'_>, name: &str) -> hcl::Value {
    let expr = hcl::Expression::Variable(hcl::expr::Variable::unchecked(name));
    expr.evaluate(ctx).unwrap_or(hcl::Value::Null)
}

fn node_string(n: &Node) -> String {
    match &n.value {
        Value::String(s) => s.clone(),
        Value::Number(x) => super::node::format_number(*x),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        _ => n.to_json().to_string(),
    }
}

/// `source.amazon-chroot.x` or `sources.amazon-chroot.x` (a traversal or a string) to `amazon-chroot.x`.
fn source_ref(e: &hcl::Expression) -> Option<String> {
    match e {
        hcl::Expression::String(s) => strip_source(s),
        hcl::Expression::TemplateExpr(t) => match t.as_ref() {
            hcl::expr::TemplateExpr::QuotedString(s)
            | hcl::expr::TemplateExpr::Heredoc(hcl::expr::Heredoc { template: s, .. }) => {
                strip_source(s)
            }
        },
        other => hcl::format::to_string(other)
            .ok()
            .and_then(|s| strip_source(s.trim())),
    }
}

fn strip_source(s: &str) -> Option<String> {
    let rest = s
        .strip_prefix("sources.")
        .or_else(|| s.strip_prefix("source."))?;
    rest.contains('.').then(|| rest.to_owned())
}

fn build_provisioners(
    build: &Blk,
    full: &str,
    sctx: &Context<'_>,
    gctx: &Ctx,
    dir: &Path,
    diags: &mut Vec<Diagnostic>,
) -> Vec<provisioner::Provisioner> {
    let mut out = Vec::new();
    for (i, b) in build
        .blocks
        .iter()
        .filter(|b| b.kind == "provisioner")
        .enumerate()
    {
        let Some(kind) = b.labels.first() else {
            diags.push(Diagnostic::error(
                &b.loc,
                "provisioner",
                "a provisioner block needs a type: provisioner \"shell\" { ... }",
            ));
            continue;
        };
        let path = format!("build.provisioner[{i}] \"{kind}\"");
        let node = eval_body(b, sctx, &path, diags);
        let list = |k: &str| -> Vec<String> {
            match node.get(k).map(|n| &n.value) {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let (only, except) = (list("only"), list("except"));
        if (!only.is_empty() && !only.iter().any(|o| only_matches(o, full)))
            || except.iter().any(|e| only_matches(e, full))
        {
            continue;
        }
        let name = node.get("name").and_then(Node::as_str).map(str::to_owned);
        let mut f = Fields::new(&node, path, diags, gctx);
        if let Some(p) = provisioner::decode(&mut f, kind, name, &node, dir) {
            f.finish(&[]);
            out.push(p);
        }
    }
    out
}

fn build_post_processors(
    build: &Blk,
    sctx: &Context<'_>,
    gctx: &Ctx,
    diags: &mut Vec<Diagnostic>,
) -> Vec<provisioner::PostProcessor> {
    let mut blocks: Vec<&Blk> = Vec::new();
    for b in &build.blocks {
        match b.kind.as_str() {
            "post-processor" => blocks.push(b),
            "post-processors" => {
                blocks.extend(b.blocks.iter().filter(|x| x.kind == "post-processor"))
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (i, b) in blocks.into_iter().enumerate() {
        let kind = b.labels.first().cloned().unwrap_or_default();
        let path = format!("build.post-processor[{i}] \"{kind}\"");
        let node = eval_body(b, sctx, &path, diags);
        let mut f = Fields::new(&node, path.clone(), diags, gctx);
        if let Some(p) = provisioner::decode_post(&mut f, &kind, &node) {
            f.finish(&[]);
            out.push(p);
        }
        let _ = b.label();
    }
    out
}
