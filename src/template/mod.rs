//! The template language: Packer-compatible `amazon-chroot` templates (JSON and HCL2) are parsed,
//! their variables resolved, their strings interpolated, and every build in them turned into a
//! validated [`Plan`] that the pipeline runs. Nothing here touches AWS or the host: loading a
//! template reads the template's files (and `file()`/scripts it names) and nothing else.

pub mod ansible;
pub mod boot_test;
mod bounded;
pub mod config;
pub mod data;
pub mod decode;
pub mod functions;
pub mod gotmpl;
pub mod hcl;
pub mod host_features;
pub mod inspect;
pub mod json;
mod lazy;
pub mod lint;
pub mod node;
pub mod packer_json;
pub mod provisioner;
pub mod sandbox;

pub use host_features::host_features;

use config::ChrootConfig;
use provisioner::{PostProcessor, Provisioner};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// The Packer version kiln's template behaviour follows (`{{packer_version}}`, `packer.version`).
pub const PACKER_COMPAT_VERSION: &str = "1.11.2";

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The template cannot be built.
    Error,
    /// Packer would warn; the build can go on.
    Warning,
}

/// One problem in a template, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file.
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: u32,
    /// The field, e.g. `source.amazon-chroot.app.ami_name` or `builders[0].ami_name`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Diagnostic {
    /// An error at `loc` about `field`.
    pub fn error(loc: &node::Loc, field: &str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            file: loc.file.to_string(),
            line: loc.line,
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// A warning at `loc` about `field`.
    pub fn warning(loc: &node::Loc, field: &str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(loc, field, message)
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What the user passes besides the template: variables, var files, `--only`, and the build's
/// start time (so `{{timestamp}}` agrees everywhere).
#[derive(Debug, Clone)]
pub struct Inputs {
    /// `--var name=value`, in order (later wins).
    pub vars: Vec<(String, String)>,
    /// `--var-file` paths, in order (later wins; `--var` beats them).
    pub var_files: Vec<PathBuf>,
    /// `--only` build names (globs allowed).
    pub only: Vec<String>,
    /// `--except` build names (globs allowed).
    pub except: Vec<String>,
    /// The environment (`PKR_VAR_*` for HCL2, `env` in variables).
    pub env: BTreeMap<String, String>,
    /// The working directory: relative paths in the template (scripts, file sources, playbooks,
    /// bind mounts, `file()`) resolve against it, as against Packer's working directory. The
    /// process's own by default; a worker's is the build's work directory.
    pub cwd: PathBuf,
    /// The build's start time.
    pub now: OffsetDateTime,
    /// When set, `file()` and the other file functions read only below this directory (the
    /// template's own folder): a worker sets it for a team that may not read builder-host files.
    pub file_root: Option<PathBuf>,
    /// Values fetched for the template's `amazon-parameterstore` and `amazon-secretsmanager`
    /// data sources (`crate::data_sources`); `None` gives them placeholders (offline).
    pub data: Option<data::DataValues>,
}

impl Inputs {
    /// Whether `--only`/`--except` select build `name` (Packer's rule: selected builds are the
    /// only ones validated and run; others, of any builder type, are skipped).
    pub fn selects(&self, name: &str) -> bool {
        (self.only.is_empty() || self.only.iter().any(|o| only_matches(o, name)))
            && !self.except.iter().any(|e| only_matches(e, name))
    }

    /// The message for a selected build of a builder type kiln does not run, naming the
    /// `--only` that selects the template's chroot builds.
    pub fn unsupported(&self, kind: &str, name: &str, chroot_builds: &[String]) -> String {
        let hint = if chroot_builds.is_empty() {
            "the template has no amazon-chroot build".to_owned()
        } else {
            format!(
                "select its amazon-chroot builds with --only={}",
                chroot_builds.join(",")
            )
        };
        format!(
            "build `{name}` uses builder type `{kind}`, which kiln does not run (kiln runs `amazon-chroot` builds only): {hint}"
        )
    }
}

impl Default for Inputs {
    fn default() -> Self {
        Self {
            vars: Vec::new(),
            var_files: Vec::new(),
            only: Vec::new(),
            except: Vec::new(),
            env: std::env::vars().collect(),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            now: OffsetDateTime::now_utc(),
            file_root: None,
            data: None,
        }
    }
}

/// One resolved build: everything the pipeline needs, validated.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The build's name as `--only` matches it (JSON: the builder's name; HCL2:
    /// `amazon-chroot.NAME`, or `BUILD.amazon-chroot.NAME` for a named build block).
    pub name: String,
    /// The builder configuration with defaults applied.
    pub config: ChrootConfig,
    /// Provisioners in order (those filtered out by only/except removed).
    pub provisioners: Vec<Provisioner>,
    /// Post-processors in order.
    pub post_processors: Vec<PostProcessor>,
    /// The template's directory (`{{template_dir}}`, `path.root`).
    pub template_dir: PathBuf,
    /// The working directory relative paths resolved against ([`Inputs::cwd`]).
    pub work_dir: PathBuf,
    /// Every variable's value (use [`Masker`] before showing them).
    pub variables: BTreeMap<String, String>,
    /// Names of sensitive variables.
    pub sensitive: Vec<String>,
}

impl Plan {
    /// The local files and directories the build reads from the working directory: scripts,
    /// upload sources, playbooks and their directories, inventories, galaxy files, relative bind
    /// mount sources. What `kiln submit` uploads besides the template. No side effects.
    pub fn local_files(&self) -> Vec<PathBuf> {
        use provisioner::Kind;
        let mut v: Vec<PathBuf> = Vec::new();
        for p in &self.provisioners {
            match &p.kind {
                Kind::Shell(s) => v.extend(s.scripts.iter().cloned()),
                Kind::ShellLocal(_) => {}
                Kind::File(f) if f.direction == "upload" && !f.generated => v.extend(
                    f.sources
                        .iter()
                        .map(|s| PathBuf::from(s.trim_end_matches('/'))),
                ),
                Kind::File(_) => {}
                Kind::Ansible(a) => {
                    v.push(a.playbook_file.clone());
                    v.extend(a.inventory_file.iter().cloned());
                    v.extend(a.galaxy_file.iter().cloned());
                }
                Kind::AnsibleLocal(a) => {
                    v.extend(a.playbook_files.iter().cloned());
                    v.extend(a.role_paths.iter().cloned());
                    for o in [
                        &a.playbook_dir,
                        &a.group_vars,
                        &a.host_vars,
                        &a.galaxy_file,
                        &a.inventory_file,
                    ] {
                        v.extend(o.iter().cloned());
                    }
                }
            }
        }
        for [fstype, source, _] in &self.config.chroot_mounts {
            if fstype == "bind" && !Path::new(source).is_absolute() {
                v.push(provisioner::resolve(&self.work_dir, source));
            }
        }
        v.sort();
        v.dedup();
        v
    }
}

/// A loaded template: its builds and every diagnostic.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The builds (after `--only`/`--except`). Empty when errors prevented resolving them.
    pub plans: Vec<Plan>,
    /// The name of every build the template declares, of any builder type, selected or not.
    pub all_builds: Vec<String>,
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// Masks sensitive values in anything printed or stored.
    pub masker: Masker,
    /// The data sources whose values are fetched from AWS before a build's load (HCL2's
    /// `amazon-parameterstore` and `amazon-secretsmanager`), in file order.
    pub data_requests: Vec<data::DataRequest>,
}

impl Loaded {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }
}

/// Replaces the values of sensitive variables with `<sensitive>`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    secrets: Vec<String>,
}

impl Masker {
    /// Adds a secret value (empty values are ignored).
    pub fn add(&mut self, secret: &str) {
        if !secret.is_empty() && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_owned());
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// `s` with every secret replaced by `<sensitive>`.
    pub fn mask(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), "<sensitive>");
        }
        out
    }
}

/// What to load for a template named by `file`: its folder when `file` is one of several
/// `*.pkr.hcl` files there (a directory template, loaded together as `packer build .` does),
/// otherwise `file` itself. Reads the folder's listing; changes nothing.
pub fn directory_of(file: &Path) -> std::path::PathBuf {
    let hcl = |p: &Path| p.to_string_lossy().ends_with(".pkr.hcl");
    if !hcl(file) {
        return file.to_path_buf();
    }
    let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return file.to_path_buf();
    };
    let siblings = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter(|e| hcl(&e.path())).count())
        .unwrap_or(0);
    if siblings > 1 {
        dir.to_path_buf()
    } else {
        file.to_path_buf()
    }
}

/// Loads the template at `path`: a Packer JSON file, an HCL2 file (`.pkr.hcl`, `.pkr.json`), or a
/// directory whose `*.pkr.hcl` files form one template. Never panics; every problem is a
/// diagnostic. Side effects: reads files only.
/// Data sources fetched from AWS (`Loaded::data_requests`) have placeholders unless
/// `inputs.data` holds their values: `crate::data_sources::complete` does the second pass.
pub fn load(path: &Path, inputs: &Inputs) -> Loaded {
    let name = path.display().to_string();
    let is_hcl = path.is_dir()
        || name.ends_with(".pkr.hcl")
        || name.ends_with(".pkr.json")
        || name.ends_with(".hcl");
    let mut loaded = if is_hcl {
        hcl::load(path, inputs)
    } else {
        packer_json::load(path, inputs)
    };
    if let Some(data) = &inputs.data {
        for secret in &data.secrets {
            loaded.masker.add(secret);
        }
    }
    for plan in &loaded.plans {
        for name in &plan.sensitive {
            if let Some(v) = plan.variables.get(name) {
                loaded.masker.add(v);
            }
        }
    }
    let selecting = !inputs.only.is_empty() || !inputs.except.is_empty();
    if selecting && loaded.plans.is_empty() && !loaded.has_errors() {
        let flags: Vec<String> = [("--only", &inputs.only), ("--except", &inputs.except)]
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(f, v)| format!("{f} {}", v.join(",")))
            .collect();
        loaded.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            file: name,
            line: 0,
            field: if inputs.only.is_empty() {
                "--except"
            } else {
                "--only"
            }
            .into(),
            message: format!(
                "no build is selected by {}: the template has {}",
                flags.join(" "),
                loaded.all_builds.join(", ")
            ),
        });
    }
    loaded
}

/// Whether an `--only`/`only` pattern names `build` (Packer matches the full name, and kiln also
/// accepts the trailing `NAME` or `amazon-chroot.NAME`; `*` globs).
pub fn only_matches(pattern: &str, build: &str) -> bool {
    if glob(pattern, build) {
        return true;
    }
    let parts: Vec<&str> = build.split('.').collect();
    (1..parts.len()).any(|i| glob(pattern, &parts[i..].join(".")))
}

fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((pre, post)) => {
            s.starts_with(pre)
                && (pre.len()..=s.len()).any(|i| s.is_char_boundary(i) && glob(post, &s[i..]))
        }
    }
}

/// The known name closest to `name` (edit distance at most a third of its length, and 3), for
/// "did you mean" hints.
pub fn suggest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    known
        .map(|k| (levenshtein(name, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let known = ["ami_name", "ami_regions", "root_volume_size"];
        assert_eq!(suggest("ami_nmae", known.iter().copied()), Some("ami_name"));
        assert_eq!(
            suggest("root_volume_sise", known.iter().copied()),
            Some("root_volume_size")
        );
        assert_eq!(suggest("zzz", known.iter().copied()), None);
    }

    #[test]
    fn only() {
        assert!(only_matches("amazon-chroot.app", "amazon-chroot.app"));
        assert!(only_matches("app", "amazon-chroot.app"));
        assert!(only_matches("amazon-chroot.*", "amazon-chroot.app"));
        assert!(only_matches(
            "nightly.amazon-chroot.app",
            "nightly.amazon-chroot.app"
        ));
        assert!(!only_matches("other", "amazon-chroot.app"));
    }

    #[test]
    fn masking() {
        let mut m = Masker::default();
        m.add("s3cret");
        m.add("");
        assert_eq!(m.mask("pw=s3cret!"), "pw=<sensitive>!");
    }
}
