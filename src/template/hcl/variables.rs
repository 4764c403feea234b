//! HCL2 variables: `variable` blocks and the plural `variables { }`, their values in Packer's
//! order of precedence (default, `PKR_VAR_*`, var files, `--var`), types, sensitivity and
//! `validation` blocks.

use super::blocks::{Blk, convert_body};
use super::calls::{first_call, in_default, in_value};
use super::values::{VarDecl, check_type, eval, node_string, to_hcl, type_kind, typed_from_str};
use crate::template::node::{Loc, Node, Value};
use crate::template::{Diagnostic, Inputs, suggest};
use hcl::eval::Context;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The template's variables once their values are known.
pub(super) struct Variables {
    /// The declarations (with their validation blocks).
    pub(super) decls: Vec<VarDecl>,
    /// `var` as expressions see it.
    pub(super) var_obj: hcl::Map<String, hcl::Value>,
    /// Names of sensitive variables.
    pub(super) sensitive: Vec<String>,
    /// Each variable's value as a string (Go templates, masking).
    pub(super) strings: BTreeMap<String, String>,
}

/// Reads the declarations and gives each its value: default, then `PKR_VAR_NAME`, then var files,
/// then `--var` (later wins). Every problem is a diagnostic.
pub(super) fn declare(
    blocks: &[Blk],
    inputs: &Inputs,
    base: &Context<'_>,
    env_ctx: &Context<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Variables {
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
        let default =
            b.attr("default")
                .and_then(|a| match eval_default(&a.expr, env_ctx, &a.loc) {
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
                    eval(&a.expr, base, &a.loc).map(|n| n.value),
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
            match typed_from_str(&d.kind, v, &envloc, base) {
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
            match crate::template::packer_json::read(vf, &file)
                .map(|t| crate::template::json::parse(&file, &t))
            {
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
            let text = match crate::template::packer_json::read(vf, &file) {
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
                        .filter_map(|a| match eval_value(&a.expr, base, &a.loc) {
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
            Some(d) => match typed_from_str(&d.kind, v, &loc, base) {
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
    Variables {
        decls,
        var_obj,
        sensitive,
        strings,
    }
}

/// A variable's default, where Packer defines only `env()`.
fn eval_default(expr: &hcl::Expression, ctx: &Context<'_>, loc: &Loc) -> Result<Node, String> {
    match first_call(expr, &["env"]) {
        Some(f) => Err(in_default(&f)),
        None => eval(expr, ctx, loc),
    }
}

/// A value from outside the template (a var file's), which Packer evaluates without functions.
pub(super) fn eval_value(
    expr: &hcl::Expression,
    ctx: &Context<'_>,
    loc: &Loc,
) -> Result<Node, String> {
    match first_call(expr, &[]) {
        Some(f) => Err(in_value(&f)),
        None => eval(expr, ctx, loc),
    }
}

/// Checks each set variable's `validation` blocks against its value.
pub(super) fn validate(
    decls: &[VarDecl],
    strings: &BTreeMap<String, String>,
    ctx: &Context<'_>,
    diags: &mut Vec<Diagnostic>,
) {
    for d in decls {
        if !strings.contains_key(&d.name) {
            continue;
        }
        for v in &d.validations {
            let cond = v.attr("condition").map(|a| eval(&a.expr, ctx, &a.loc));
            let msg = v
                .attr("error_message")
                .and_then(|a| eval(&a.expr, ctx, &a.loc).ok())
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
}
