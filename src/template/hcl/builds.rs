//! A `build` block's parts: its source references and its provisioners and post-processors,
//! evaluated with the build's context.

use super::blocks::Blk;
use super::values::eval_body;
use crate::template::decode::Fields;
use crate::template::gotmpl::Ctx;
use crate::template::node::{Node, Value};
use crate::template::only_matches;
use crate::template::{Diagnostic, provisioner};
use hcl::eval::Context;
use std::path::Path;

/// `source.amazon-chroot.x`, `sources.amazon-chroot.x` or `amazon-chroot.x` (a traversal or a
/// string) to `amazon-chroot.x`.
pub(super) fn source_ref(e: &hcl::Expression) -> Option<String> {
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

/// A source reference as Packer's `sourceRefFromString` reads it: `TYPE.NAME`, or three parts
/// whose first is dropped (`source.TYPE.NAME`, as written; Packer drops any first part). Anything
/// else (one part, an empty part, more than three) is not a reference.
pub(super) fn strip_source(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split('.').collect();
    let (kind, name) = match parts.as_slice() {
        [kind, name] | [_, kind, name] => (*kind, *name),
        _ => return None,
    };
    (!kind.is_empty() && !name.is_empty()).then(|| format!("{kind}.{name}"))
}

pub(super) fn build_provisioners(
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

pub(super) fn build_post_processors(
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
