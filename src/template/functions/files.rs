//! Packer's filesystem functions kiln adds: `fileset`, `pathexpand`, `templatefile` (paths
//! relative to the working directory, as `file()`); and the date functions `timeadd`,
//! `legacy_isotime`, `legacy_strftime`.

use super::{in_cwd, s};
use hcl::Value;
use hcl::eval::{Context, Evaluate, FuncDef, ParamType};
use std::path::Path;

/// Files `fileset` lists at most: a template's folder, not a file system.
const MAX_FILESET: usize = 10_000;

/// Whether `name` (a `/`-separated relative path) matches glob `pat`: `*` (within a
/// component), `**` (any components), `?`, `{a,b}` alternatives.
fn glob(pat: &str, name: &str) -> bool {
    if let Some(start) = pat.find('{')
        && let Some(len) = pat[start..].find('}')
    {
        let (pre, rest) = (&pat[..start], &pat[start + 1..start + len]);
        let post = &pat[start + len + 1..];
        return rest
            .split(',')
            .any(|alt| glob(&format!("{pre}{alt}{post}"), name));
    }
    fn m(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) if p.get(1) == Some(&b'*') => {
                let rest = p[2..].strip_prefix(b"/").unwrap_or(&p[2..]);
                (0..=n.len()).any(|i| (i == 0 || n[i - 1] == b'/') && m(rest, &n[i..]))
                    || m(&p[2..], n)
            }
            (Some(b'*'), _) => m(&p[1..], n) || (!n.is_empty() && n[0] != b'/' && m(p, &n[1..])),
            (Some(b'?'), Some(c)) if *c != b'/' => m(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &n[1..]),
            _ => false,
        }
    }
    m(pat.as_bytes(), name.as_bytes())
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("fileset: {}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out)?;
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
            if out.len() > MAX_FILESET {
                return Err(format!(
                    "fileset: more than {MAX_FILESET} files under {}",
                    root.display()
                ));
            }
        }
    }
    Ok(())
}

/// Declares the functions on `ctx`.
pub(super) fn declare(ctx: &mut Context<'_>) {
    ctx.declare_func(
        "fileset",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| {
                let root = in_cwd(&s(&a[0]));
                let pattern = s(&a[1]);
                let mut all = Vec::new();
                if root.is_dir() {
                    walk(&root, &root, &mut all)?;
                }
                let mut hits: Vec<String> = all.into_iter().filter(|f| glob(&pattern, f)).collect();
                hits.sort();
                Ok(Value::Array(hits.into_iter().map(Value::from).collect()))
            }),
    );
    ctx.declare_func(
        "pathexpand",
        FuncDef::builder().param(ParamType::String).build(|a| {
            let p = s(&a[0]);
            let home = std::env::var("HOME").unwrap_or_default();
            Ok(Value::from(match p.strip_prefix('~') {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{home}{rest}"),
                _ => p,
            }))
        }),
    );
    ctx.declare_func(
        "templatefile",
        FuncDef::builder()
            .params([ParamType::String, ParamType::Any])
            .build(|a| {
                let path = s(&a[0]);
                let text = std::fs::read_to_string(in_cwd(&path))
                    .map_err(|e| format!("templatefile: cannot read \"{path}\": {e}"))?;
                let template: hcl::Template = text
                    .parse()
                    .map_err(|e| format!("templatefile: {path}: {e}"))?;
                let mut ctx = Context::new();
                super::declare(&mut ctx, false);
                match &a[1] {
                    Value::Object(vars) => {
                        for (k, v) in vars {
                            ctx.declare_var(k.as_str(), v.clone());
                        }
                    }
                    Value::Null => {}
                    other => return Err(format!("templatefile: vars must be a map, got {other}")),
                }
                template
                    .evaluate(&ctx)
                    .map(Value::from)
                    .map_err(|e| format!("templatefile: {path}: {e}"))
            }),
    );
    super::dates::declare(ctx);
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs() {
        assert!(super::glob("*.txt", "a.txt"));
        assert!(!super::glob("*.txt", "d/a.txt"));
        assert!(super::glob("**/*.txt", "d/e/a.txt"));
        assert!(super::glob("**/*.txt", "a.txt"));
        assert!(super::glob("{a,b}.sh", "b.sh"));
        assert!(super::glob("f?.sh", "f1.sh"));
    }
}
