//! Provisioners and post-processors: what runs inside the chroot (`shell`, `file`,
//! `ansible-local`) or on the host (`shell-local`, `ansible` against the chroot), decoded and
//! validated with Packer's field names, defaults and messages (ansible's in `ansible.rs`).

use super::decode::Fields;
use super::node::{Node, Value};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Packer's default shell `execute_command`.
pub const DEFAULT_EXECUTE_COMMAND: &str = "chmod +x {{.Path}}; {{.Vars}} {{.Path}}";
/// Packer's default `inline_shebang`.
pub const DEFAULT_SHEBANG: &str = "/bin/sh -e";
/// Packer's default shell-local `execute_command` (Linux).
pub const DEFAULT_LOCAL_EXECUTE_COMMAND: &str = "/bin/sh -c {{.Vars}} {{.Script}}";

/// One provisioner with its common options.
#[derive(Debug, Clone, Serialize)]
pub struct Provisioner {
    /// The type, e.g. `shell`.
    #[serde(rename = "type")]
    pub kind_name: String,
    /// The HCL2 label or JSON `name`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Run only for these builds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
    /// Skip these builds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    /// Wait before running, e.g. `10s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_before: Option<String>,
    /// Retries on failure.
    pub max_retries: i64,
    /// Time limit, e.g. `5m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Where it was written (`file:line`).
    pub location: String,
    /// What it does.
    #[serde(flatten)]
    pub kind: Kind,
}

/// What a provisioner does.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Kind {
    /// `shell`: commands inside the chroot.
    Shell(Shell),
    /// `file`: copy into or out of the chroot.
    File(File),
    /// `shell-local`: commands on the host.
    ShellLocal(Shell),
    /// `ansible`: ansible-playbook on the host against the chroot.
    Ansible(super::ansible::Ansible),
    /// `ansible-local`: ansible-playbook inside the image.
    AnsibleLocal(super::ansible::AnsibleLocal),
}

/// `shell` and `shell-local`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Shell {
    /// Inline commands.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inline: Vec<String>,
    /// Script files (paths resolved against the template's directory).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scripts: Vec<PathBuf>,
    /// shell-local's `command`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `KEY=value` pairs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub environment_vars: Vec<String>,
    /// HCL2 `env` map.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// How each script is run.
    pub execute_command: String,
    /// Shebang for inline commands.
    pub inline_shebang: String,
    /// Exit codes that count as success.
    pub valid_exit_codes: Vec<i64>,
}

/// `file`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct File {
    /// Sources (host paths for upload; chroot paths for download).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Literal content to write instead of a source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Destination.
    pub destination: String,
    /// `upload` or `download`.
    pub direction: String,
    /// The source is produced during the build.
    pub generated: bool,
}

/// A post-processor kiln runs.
#[derive(Debug, Clone, Serialize)]
pub struct PostProcessor {
    /// Always `manifest` for now.
    #[serde(rename = "type")]
    pub kind_name: String,
    /// Manifest output path (default `packer-manifest.json`).
    pub output: String,
    /// Keep only the paths' base names.
    pub strip_path: bool,
    /// Extra data in the manifest.
    pub custom_data: BTreeMap<String, String>,
    /// Where it was written.
    pub location: String,
}

fn common(f: &mut Fields<'_>, kind_name: &str, name: Option<String>, loc: &str) -> Provisioner {
    let only = f.string_list("only", &[]).unwrap_or_default();
    let except = f.string_list("except", &[]).unwrap_or_default();
    let pause_before = f.string("pause_before", &[]);
    let max_retries = f.int("max_retries").unwrap_or(0);
    let timeout = f.string("timeout", &[]);
    for (k, v) in [("pause_before", &pause_before), ("timeout", &timeout)] {
        if let Some(v) = v
            && parse_duration(v).is_none()
        {
            f.error(
                k,
                format!("invalid duration \"{v}\": use a Go duration such as 30s, 5m or 1h30m"),
            );
        }
    }
    if max_retries < 0 {
        f.error("max_retries", "max_retries must not be negative");
    }
    let _ = f.raw("name");
    let _ = f.raw("type");
    let _ = f.raw("override");
    Provisioner {
        kind_name: kind_name.to_owned(),
        name,
        only,
        except,
        pause_before,
        max_retries,
        timeout,
        location: loc.to_owned(),
        kind: Kind::Shell(Shell::default()),
    }
}

/// Decodes one provisioner object of type `kind_name`. Returns `None` after reporting an error
/// for types kiln does not run.
pub fn decode(
    f: &mut Fields<'_>,
    kind_name: &str,
    name: Option<String>,
    node: &Node,
    cwd: &Path,
) -> Option<Provisioner> {
    let loc = node.loc.to_string();
    match kind_name {
        "shell" | "shell-local" => {
            let mut p = common(f, kind_name, name, &loc);
            let local = kind_name == "shell-local";
            // kiln extension: shell-local runs during the build, so it may use the build's device
            // and mount path (e.g. `ansible-playbook --connection=chroot -i {{.MountPath}},`).
            let here: &[&str] = if local {
                super::gotmpl::placeholders::DEVICE
            } else {
                &[]
            };
            let mut s = Shell {
                inline: f.string_list("inline", here).unwrap_or_default(),
                command: if local {
                    f.string("command", here)
                } else {
                    None
                },
                environment_vars: f.string_list("environment_vars", &[]).unwrap_or_default(),
                env: f.string_map("env", &[]).unwrap_or_default(),
                execute_command: f
                    .string("execute_command", &["Vars", "Path", "Script", "Command"])
                    .unwrap_or_else(|| {
                        if local {
                            DEFAULT_LOCAL_EXECUTE_COMMAND
                        } else {
                            DEFAULT_EXECUTE_COMMAND
                        }
                        .into()
                    }),
                inline_shebang: f
                    .string("inline_shebang", &[])
                    .unwrap_or_else(|| DEFAULT_SHEBANG.into()),
                valid_exit_codes: Vec::new(),
                scripts: Vec::new(),
            };
            let script = f.string("script", &[]);
            let scripts = f.string_list("scripts", &[]);
            if let Some(codes) = f.raw("valid_exit_codes") {
                match &codes.value {
                    Value::Array(items) => {
                        for item in items {
                            match &item.value {
                                Value::Number(n) if n.fract() == 0.0 => {
                                    s.valid_exit_codes.push(*n as i64)
                                }
                                Value::String(t) if t.parse::<i64>().is_ok() => {
                                    s.valid_exit_codes.push(t.parse().unwrap_or(0));
                                }
                                _ => f.error(
                                    "valid_exit_codes",
                                    "valid_exit_codes must be a list of numbers",
                                ),
                            }
                        }
                    }
                    _ => f.error(
                        "valid_exit_codes",
                        "valid_exit_codes must be a list of numbers",
                    ),
                }
            }
            if s.valid_exit_codes.is_empty() {
                s.valid_exit_codes.push(0);
            }
            for k in [
                "remote_folder",
                "remote_file",
                "remote_path",
                "skip_clean",
                "expect_disconnect",
                "start_retry_timeout",
                "binary",
                "use_env_var_file",
                "env_var_format",
                "use_linux_pathing",
                "only_on",
                "pause_after",
            ] {
                let _ = f.raw(k);
            }
            let given = [
                !s.inline.is_empty(),
                script.is_some(),
                scripts.as_ref().is_some_and(|v| !v.is_empty()),
                s.command.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if given == 0 {
                f.error(
                    "inline",
                    if local {
                        "Command, Inline, Script and Scripts options cannot all be empty."
                    } else {
                        "Either a script file or inline script must be specified."
                    },
                );
            } else if given > 1 {
                f.error(
                    "inline",
                    if local {
                        "Only one of command, inline, script or scripts can be specified."
                    } else {
                        "Only one of inline, script, or scripts can be specified."
                    },
                );
            }
            for path in script.into_iter().chain(scripts.unwrap_or_default()) {
                let resolved = resolve(cwd, &path);
                if !resolved.is_file() {
                    f.error(
                        "script",
                        format!(
                            "Bad script '{path}': stat {}: no such file or directory",
                            resolved.display()
                        ),
                    );
                }
                s.scripts.push(resolved);
            }
            for (i, kv) in s.environment_vars.iter().enumerate() {
                match kv.split_once('=') {
                    Some((k, _)) if !k.is_empty() => {}
                    _ => f.error(
                        &format!("environment_vars[{i}]"),
                        format!("Environment variable not in format 'key=value': {kv}"),
                    ),
                }
            }
            p.kind = if local {
                Kind::ShellLocal(s)
            } else {
                Kind::Shell(s)
            };
            Some(p)
        }
        "file" => {
            let mut p = common(f, kind_name, name, &loc);
            let mut file = File {
                content: f.string("content", &[]),
                destination: f.string("destination", &[]).unwrap_or_default(),
                direction: f
                    .string("direction", &[])
                    .unwrap_or_else(|| "upload".into()),
                generated: f.bool("generated").unwrap_or(false),
                sources: Vec::new(),
            };
            if let Some(s) = f.string("source", &[]) {
                file.sources.push(s);
            }
            file.sources
                .extend(f.string_list("sources", &[]).unwrap_or_default());
            if file.direction != "upload" && file.direction != "download" {
                f.error("direction", "Direction must be one of: download, upload.");
            }
            if file.destination.is_empty() {
                f.error("destination", "Destination must be specified.");
            }
            if file.sources.is_empty() && file.content.is_none() {
                f.error("source", "Source must be specified.");
            }
            if !file.sources.is_empty() && file.content.is_some() {
                f.error(
                    "content",
                    "Cannot specify both source and content: choose one.",
                );
            }
            if file.direction == "download"
                && file.sources.len() > 1
                && !file.destination.ends_with('/')
            {
                f.error("destination", "The destination must be a directory (end it with /) when downloading several sources.");
            }
            if file.direction == "upload" && !file.generated {
                for (i, src) in file.sources.iter_mut().enumerate() {
                    let src_given_dir = src.ends_with('/');
                    let resolved = resolve(cwd, src);
                    if !resolved.exists() {
                        f.error(
                            if i == 0 { "source" } else { "sources" },
                            format!(
                                "Bad source '{src}': stat {}: no such file or directory",
                                resolved.display()
                            ),
                        );
                    }
                    // A trailing `/` (the directory's contents) survives resolution.
                    *src = resolved.display().to_string();
                    if src_given_dir && !src.ends_with('/') {
                        src.push('/');
                    }
                }
            }
            p.kind = Kind::File(file);
            Some(p)
        }
        "ansible" => {
            let mut p = common(f, kind_name, name, &loc);
            p.kind = Kind::Ansible(super::ansible::decode(f, cwd));
            Some(p)
        }
        "ansible-local" => {
            let mut p = common(f, kind_name, name, &loc);
            p.kind = Kind::AnsibleLocal(super::ansible::decode_local(f, cwd));
            Some(p)
        }
        other => {
            f.error(
                "type",
                format!(
                    "unknown provisioner type `{other}`: kiln runs shell, file, shell-local, ansible and ansible-local"
                ),
            );
            None
        }
    }
}

/// Decodes a post-processor of type `kind_name`.
pub fn decode_post(f: &mut Fields<'_>, kind_name: &str, node: &Node) -> Option<PostProcessor> {
    if kind_name != "manifest" {
        f.error("type", format!("post-processor `{kind_name}` is not supported: kiln supports `manifest` (its result document also lists every artifact)"));
        return None;
    }
    let _ = f.raw("type");
    let _ = f.raw("name");
    let _ = f.raw("only");
    let _ = f.raw("except");
    let _ = f.raw("keep_input_artifact");
    Some(PostProcessor {
        kind_name: kind_name.to_owned(),
        output: f
            .string("output", &[])
            .unwrap_or_else(|| "packer-manifest.json".into()),
        strip_path: f.bool("strip_path").unwrap_or(false),
        custom_data: f.string_map("custom_data", &[]).unwrap_or_default(),
        location: node.loc.to_string(),
    })
}

/// Resolves a template's path against the working directory `cwd` (as Packer does), without
/// `./` noise: `./conf` in `/repo` is `/repo/conf`.
pub fn resolve(cwd: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        return path.to_owned();
    }
    let mut out = cwd.to_path_buf();
    for c in path.components() {
        if c != std::path::Component::CurDir {
            out.push(c);
        }
    }
    out
}

/// Parses a Go duration (`1h30m`, `10s`, `500ms`, `0`) into seconds.
pub fn parse_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    if s == "0" {
        return Some(0.0);
    }
    let mut total = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * factor;
        rest = &rest[unit_end..];
    }
    // Every caller turns the result into a `Duration`, which panics past u64 seconds: a
    // duration beyond any build's life is a bad value, not a reason to crash.
    (total.is_finite() && total <= MAX_DURATION_S).then_some(total)
}

/// The longest duration a template may give (10 years): far beyond any build, far below what
/// `std::time::Duration` can hold.
pub const MAX_DURATION_S: f64 = 10.0 * 365.0 * 86_400.0;

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(5400.0));
        assert_eq!(parse_duration("99999999999999999h"), None);
        assert_eq!(parse_duration("87600h"), Some(87600.0 * 3600.0));
        assert_eq!(parse_duration("10s"), Some(10.0));
        assert_eq!(parse_duration("500ms"), Some(0.5));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("x"), None);
    }
}
