//! Packer's HCL2 templates: `variable`, `locals`/`local`, `source "amazon-chroot"`, `data
//! "amazon-ami"`, `build` (sources, source overrides, provisioners, post-processors) and `packer`.
//! A directory is one template made of all its `*.pkr.hcl` files. Blocks are walked in file order
//! (hcl-rs's serde path would lose provisioner order); expressions are evaluated with `hcl::eval`.

use super::config::{ChrootConfig, FOREIGN_FIELDS};
use super::decode::Fields;
use super::gotmpl::Ctx;
use super::node::{Loc, Node, Value};
use super::{Diagnostic, Inputs, Loaded, Plan, functions, suggest};
use hcl::eval::Context;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Block types allowed at the top level.
pub(super) const TOP_BLOCKS: &[&str] = &[
    "variable",
    "variables",
    "locals",
    "local",
    "source",
    "build",
    "data",
    "packer",
];

mod blocks;
mod builds;
mod calls;
mod locals;
mod values;
mod variables;

use blocks::{Blk, check_packer_block, parse_file, parse_json_file, plural_variables};
use builds::{build_post_processors, build_provisioners, source_ref, strip_source};
use values::{base_var, eval, eval_body};
use variables::Variables;

pub fn load(path: &Path, inputs: &Inputs) -> Loaded {
    functions::set_now(inputs.now);
    functions::set_cwd(&inputs.cwd);
    functions::set_env(&inputs.env);
    functions::set_file_root(inputs.file_root.as_deref());
    functions::limits::reset_budget();
    functions::aws::begin(inputs.data.as_ref());
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

    // Variables: declarations, then defaults, PKR_VAR_*, var files and --var, in that order.
    let Variables {
        decls,
        var_obj,
        sensitive,
        strings,
    } = variables::declare(&blocks, inputs, &base, &env_ctx, diags);
    let mut ctx = Context::new();
    functions::declare(&mut ctx, false);
    ctx.declare_var("path", base_var(&base, "path"));
    ctx.declare_var("packer", base_var(&base, "packer"));
    ctx.declare_var("var", hcl::Value::Object(var_obj));
    variables::validate(&decls, &strings, &ctx, diags);

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
    let data_placeholders = data.placeholders(inputs)
        || (inputs.data.is_none()
            && blocks
                .iter()
                .any(|b| calls::block_calls(b, "aws_secretsmanager")));

    // Locals, in dependency order.
    let sensitive_locals = locals::evaluate(&blocks, &mut ctx, data_placeholders, diags);

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
    // aws_secretsmanager() calls: fetched as amazon-secretsmanager data sources are.
    let loc = blocks.first().map(|b| b.loc.clone());
    for (secret, key) in functions::aws::calls() {
        use super::data::{DEFAULT_VERSION_STAGE, DataQuery, DataRequest, SECRETS_MANAGER};
        out.data_requests.push(DataRequest {
            kind: SECRETS_MANAGER.to_owned(),
            name: functions::aws::request_name(&secret, key.as_deref()),
            query: DataQuery::Secret {
                name: secret,
                key,
                version_id: None,
                version_stage: DEFAULT_VERSION_STAGE.to_owned(),
            },
            region: None,
            loc: loc
                .clone()
                .unwrap_or_else(|| Loc::new(&Arc::from("template"), 0)),
        });
    }
    out
}
