//! Packer's legacy JSON template format: `variables`, `sensitive-variables`, `builders`,
//! `provisioners`, `post-processors`, `min_packer_version`.

use super::config::{ChrootConfig, FOREIGN_FIELDS};
use super::decode::Fields;
use super::gotmpl::{self, Ctx};
use super::node::{Loc, Node, Value, format_number};
use super::{Diagnostic, Inputs, Loaded, Plan, provisioner, suggest};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

const TOP_LEVEL: &[&str] = &[
    "variables",
    "sensitive-variables",
    "builders",
    "provisioners",
    "post-processors",
    "min_packer_version",
    "description",
];

/// Reads a file for a template, as a diagnostic on failure.
pub fn read(path: &Path, file: &Arc<str>) -> Result<String, Diagnostic> {
    std::fs::read_to_string(path).map_err(|e| {
        Diagnostic::error(
            &Loc::new(file, 0),
            "",
            format!("cannot read the template: {e}"),
        )
    })
}

/// Loads a Packer JSON template. Never panics.
pub fn load(path: &Path, inputs: &Inputs) -> Loaded {
    // `{{env}}` sees the build's allow-listed environment, never the process's own.
    super::functions::set_env(&inputs.env);
    let file: Arc<str> = Arc::from(path.display().to_string());
    let mut out = Loaded::default();
    let text = match read(path, &file) {
        Ok(t) => t,
        Err(d) => {
            out.diagnostics.push(d);
            return out;
        }
    };
    let template_dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (root, dups) = match super::json::parse(&file, &text) {
        Ok(r) => r,
        Err(e) => {
            out.diagnostics.push(Diagnostic::error(
                &Loc::new(&file, e.line),
                "",
                format!("invalid JSON at column {}: {}", e.column, e.message),
            ));
            return out;
        }
    };
    // Packer refuses a template with a key twice in one object, at any depth.
    for d in dups {
        out.diagnostics.push(Diagnostic::error(
            &Loc::new(&file, d.line),
            &d.key,
            format!(
                "template has duplicate field: {} (remove one of them)",
                d.key
            ),
        ));
    }
    let diags = &mut out.diagnostics;
    let Some(entries) = root.as_object() else {
        diags.push(Diagnostic::error(
            &root.loc,
            "",
            "a Packer JSON template must be an object",
        ));
        return out;
    };
    for (k, v) in entries {
        if !k.starts_with('_') && !TOP_LEVEL.contains(&k.as_str()) {
            let hint = suggest(k, TOP_LEVEL.iter().copied())
                .map(|s| format!(": did you mean `{s}`?"))
                .unwrap_or_else(|| format!(": a template has {}", TOP_LEVEL.join(", ")));
            diags.push(Diagnostic::error(
                &v.loc,
                k,
                format!("unknown top-level key `{k}`{hint}"),
            ));
        }
    }

    // Variables.
    let base_ctx = Ctx {
        user: BTreeMap::new(),
        env_allowed: true,
        now: inputs.now,
        build_name: String::new(),
        template_dir: template_dir.display().to_string(),
        placeholders: BTreeMap::new(),
    };
    let (variables, sensitive) = resolve_variables(&root, inputs, &base_ctx, diags);
    let ctx = Ctx {
        user: variables.clone(),
        env_allowed: false,
        ..base_ctx
    };

    // Builders.
    let Some(builders) = root.get("builders") else {
        diags.push(Diagnostic::error(
            &root.loc,
            "builders",
            "the template has no `builders`: add an amazon-chroot builder",
        ));
        return out;
    };
    let Value::Array(builders) = &builders.value else {
        diags.push(Diagnostic::error(
            &builders.loc,
            "builders",
            "`builders` must be a list",
        ));
        return out;
    };
    if builders.is_empty() {
        diags.push(Diagnostic::error(
            &root.loc,
            "builders",
            "`builders` is empty: add an amazon-chroot builder",
        ));
    }
    let mut names = BTreeSet::new();
    let mut plans = Vec::new();
    let name_of = |b: &Node| {
        let kind = b.get("type").and_then(Node::as_str).unwrap_or("");
        b.get("name")
            .and_then(Node::as_str)
            .unwrap_or(kind)
            .to_owned()
    };
    out.all_builds = builders.iter().map(name_of).collect();
    let chroot_builds: Vec<String> = builders
        .iter()
        .filter(|b| b.get("type").and_then(Node::as_str) == Some("amazon-chroot"))
        .map(name_of)
        .collect();
    let diags = &mut out.diagnostics;
    for (i, b) in builders.iter().enumerate() {
        let kind = b.get("type").and_then(Node::as_str).unwrap_or("");
        let name = b
            .get("name")
            .and_then(Node::as_str)
            .unwrap_or(kind)
            .to_owned();
        let path = format!("builders[{i}]");
        if kind.is_empty() {
            diags.push(Diagnostic::error(
                &b.loc,
                &path,
                "a builder needs a `type`: kiln runs \"amazon-chroot\"",
            ));
            continue;
        }
        // -only/-except pick builds before anything is validated, as in Packer.
        if !inputs.selects(&name) {
            continue;
        }
        if kind != "amazon-chroot" {
            diags.push(Diagnostic::error(
                &b.loc,
                &format!("{path}.type"),
                inputs.unsupported(kind, &name, &chroot_builds),
            ));
            continue;
        }
        if !names.insert(name.clone()) {
            diags.push(Diagnostic::error(
                &b.loc,
                &path,
                format!("two builders are named `{name}`: give each a unique `name`"),
            ));
            continue;
        }
        let build_ctx = Ctx {
            build_name: name.clone(),
            ..ctx.clone()
        };
        let mut f = Fields::new(b, path.clone(), diags, &build_ctx);
        let _ = f.raw("type");
        let _ = f.raw("name");
        let config = ChrootConfig::decode(&mut f);
        f.finish(FOREIGN_FIELDS);
        let provisioners = decode_provisioners(&root, &name, &inputs.cwd, diags, &build_ctx);
        let post_processors = decode_post_processors(&root, diags, &build_ctx);
        plans.push(Plan {
            name,
            config,
            provisioners,
            post_processors,
            template_dir: template_dir.clone(),
            work_dir: inputs.cwd.clone(),
            variables: variables.clone(),
            sensitive: sensitive.clone(),
        });
    }
    out.plans = plans;
    out
}

fn scalar(node: &Node) -> Option<String> {
    match &node.value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(format_number(*n)),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Resolves `variables`: defaults (with `env`), then var files, then `--var`.
fn resolve_variables(
    root: &Node,
    inputs: &Inputs,
    ctx: &Ctx,
    diags: &mut Vec<Diagnostic>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut values = BTreeMap::new();
    let mut required = BTreeMap::new();
    let mut ctx = ctx.clone();
    if let Some(vars) = root.get("variables") {
        match vars.as_object() {
            Some(entries) => {
                for (name, v) in entries {
                    match &v.value {
                        Value::Null => {
                            required.insert(name.clone(), v.loc.clone());
                        }
                        Value::String(s) => match gotmpl::render(s, &ctx) {
                            Ok(r) => {
                                for w in r.warnings {
                                    diags.push(Diagnostic::warning(&v.loc, &format!("variables.{name}"), w));
                                }
                                values.insert(name.clone(), r.text.clone());
                                ctx.user.insert(name.clone(), r.text);
                            }
                            Err(e) => diags.push(Diagnostic::error(&v.loc, &format!("variables.{name}"), e)),
                        },
                        _ => match scalar(v) {
                            Some(s) => {
                                values.insert(name.clone(), s.clone());
                                ctx.user.insert(name.clone(), s);
                            }
                            None => diags.push(Diagnostic::error(&v.loc, &format!("variables.{name}"), format!("a variable's default must be a string, number, bool or null, not a {}", v.type_name()))),
                        },
                    }
                }
            }
            None => diags.push(Diagnostic::error(
                &vars.loc,
                "variables",
                "`variables` must be an object of name: default",
            )),
        }
    }
    let declared: BTreeSet<String> = values.keys().chain(required.keys()).cloned().collect();
    let mut set = |name: &str, value: String, loc: &Loc, diags: &mut Vec<Diagnostic>| {
        if !declared.contains(name) {
            diags.push(Diagnostic::warning(
                loc,
                name,
                format!("variable `{name}` is set but the template does not declare it"),
            ));
        }
        values.insert(name.to_owned(), value);
    };
    for vf in &inputs.var_files {
        let file: Arc<str> = Arc::from(vf.display().to_string());
        let text = match read(vf, &file) {
            Ok(t) => t,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        match super::json::parse(&file, &text) {
            Ok((node, _)) => match node.as_object() {
                Some(entries) => {
                    for (k, v) in entries {
                        match scalar(v) {
                            Some(s) => set(k, s, &v.loc, diags),
                            None => diags.push(Diagnostic::error(
                                &v.loc,
                                k,
                                "a var-file value must be a string, number or bool",
                            )),
                        }
                    }
                }
                None => diags.push(Diagnostic::error(
                    &node.loc,
                    "",
                    "a var file must be a JSON object of name: value",
                )),
            },
            Err(e) => diags.push(Diagnostic::error(
                &Loc::new(&file, e.line),
                "",
                format!("invalid JSON at column {}: {}", e.column, e.message),
            )),
        }
    }
    let cli: Arc<str> = Arc::from("--var");
    for (k, v) in &inputs.vars {
        set(k, v.clone(), &Loc::new(&cli, 0), diags);
    }
    for (name, loc) in required {
        if let std::collections::btree_map::Entry::Vacant(slot) = values.entry(name.clone()) {
            diags.push(Diagnostic::error(
                &loc,
                &format!("variables.{name}"),
                format!(
                    "required variable not set: {name} (pass --var {name}=VALUE or a --var-file)"
                ),
            ));
            // Known but empty from here on, so its uses do not also warn "not declared".
            slot.insert(String::new());
        }
    }
    let mut sensitive = Vec::new();
    if let Some(s) = root.get("sensitive-variables") {
        match &s.value {
            Value::Array(items) => {
                for item in items {
                    match item.as_str() {
                        Some(n) if declared.contains(n) => sensitive.push(n.to_owned()),
                        // Packer ignores names it has no variable for.
                        Some(n) => diags.push(Diagnostic::warning(
                            &item.loc,
                            "sensitive-variables",
                            format!(
                                "sensitive variable `{n}` is not declared in `variables`: ignored"
                            ),
                        )),
                        None => diags.push(Diagnostic::error(
                            &item.loc,
                            "sensitive-variables",
                            "expected a variable name",
                        )),
                    }
                }
            }
            _ => diags.push(Diagnostic::error(
                &s.loc,
                "sensitive-variables",
                "`sensitive-variables` must be a list of variable names",
            )),
        }
    }
    (values, sensitive)
}

/// Merges `override.<build>` into a provisioner object.
fn with_override(p: &Node, build: &str) -> Node {
    let Some(o) = p
        .get("override")
        .and_then(|o| o.get(build))
        .and_then(Node::as_object)
    else {
        return p.clone();
    };
    let mut entries: Vec<(String, Node)> = p.as_object().map(<[_]>::to_vec).unwrap_or_default();
    for (k, v) in o {
        entries.retain(|(ek, _)| ek != k);
        entries.push((k.clone(), v.clone()));
    }
    Node::new(Value::Object(entries), p.loc.clone())
}

fn name_list(node: Option<&Node>) -> Vec<String> {
    match node.map(|n| &n.value) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => s.split(',').map(|p| p.trim().to_owned()).collect(),
        _ => Vec::new(),
    }
}

fn decode_provisioners(
    root: &Node,
    build: &str,
    dir: &Path,
    diags: &mut Vec<Diagnostic>,
    ctx: &Ctx,
) -> Vec<provisioner::Provisioner> {
    let Some(list) = root.get("provisioners") else {
        return Vec::new();
    };
    let Value::Array(items) = &list.value else {
        diags.push(Diagnostic::error(
            &list.loc,
            "provisioners",
            "`provisioners` must be a list",
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, p) in items.iter().enumerate() {
        let only = name_list(p.get("only"));
        let except = name_list(p.get("except"));
        if (!only.is_empty() && !only.iter().any(|o| o == build))
            || except.iter().any(|e| e == build)
        {
            continue;
        }
        let p = with_override(p, build);
        let kind = p
            .get("type")
            .and_then(Node::as_str)
            .unwrap_or("")
            .to_owned();
        let path = format!("provisioners[{i}]");
        if kind.is_empty() {
            diags.push(Diagnostic::error(
                &p.loc,
                &path,
                "a provisioner needs a `type` (shell, file or shell-local)",
            ));
            continue;
        }
        let name = p.get("name").and_then(Node::as_str).map(str::to_owned);
        let mut f = Fields::new(&p, path, diags, ctx);
        if let Some(prov) = provisioner::decode(&mut f, &kind, name, &p, dir) {
            f.finish(&[]);
            out.push(prov);
        }
    }
    out
}

fn decode_post_processors(
    root: &Node,
    diags: &mut Vec<Diagnostic>,
    ctx: &Ctx,
) -> Vec<provisioner::PostProcessor> {
    let Some(list) = root.get("post-processors") else {
        return Vec::new();
    };
    let Value::Array(items) = &list.value else {
        diags.push(Diagnostic::error(
            &list.loc,
            "post-processors",
            "`post-processors` must be a list",
        ));
        return Vec::new();
    };
    let mut flat: Vec<Node> = Vec::new();
    for item in items {
        match &item.value {
            Value::Array(chain) => flat.extend(chain.iter().cloned()),
            _ => flat.push(item.clone()),
        }
    }
    let mut out = Vec::new();
    for (i, p) in flat.iter().enumerate() {
        let path = format!("post-processors[{i}]");
        let p = match &p.value {
            Value::String(s) => Node::new(
                Value::Object(vec![(
                    "type".into(),
                    Node::new(Value::String(s.clone()), p.loc.clone()),
                )]),
                p.loc.clone(),
            ),
            _ => p.clone(),
        };
        let kind = p
            .get("type")
            .and_then(Node::as_str)
            .unwrap_or("")
            .to_owned();
        let mut f = Fields::new(&p, path, diags, ctx);
        if let Some(pp) = provisioner::decode_post(&mut f, &kind, &p) {
            f.finish(&[]);
            out.push(pp);
        }
    }
    out
}
