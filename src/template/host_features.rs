//! What a build plan does on the builder host itself, outside its sandbox: commands run there,
//! host paths shown to the build, host files read or written. A pool shared by teams that do not
//! trust each other refuses these for its teams (`host_features` in the worker's team settings);
//! this module only lists them, each with what it does, for the refusal's message.

use super::Plan;
use super::config::{DEFAULT_CHROOT_MOUNTS, DEFAULT_COMMAND_WRAPPER};
use super::provisioner::Kind;
use super::sandbox::Network;
use std::path::{Component, Path};

/// Packer's default `copy_files` (what kiln copies when a template names none): the host's
/// resolver configuration, which every build needs and which holds nothing of another team's.
const DEFAULT_COPY_FILES: [&str; 1] = ["/etc/resolv.conf"];

/// Whether `p` stays inside `dir` (lexically: no `..` out of it; the worker's work directory
/// holds only regular files it wrote, so there are no links to follow).
fn within(dir: &Path, p: &Path) -> bool {
    let Ok(rest) = p.strip_prefix(dir) else {
        return false;
    };
    let mut depth = 0i32;
    for c in rest.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Every host-side feature `plan` uses, as (the feature as the template names it, what it does
/// on the host), in the template's order. Empty for a build that stays in its sandbox. `dir` is
/// the template's folder: files below it are the template's own. No side effects.
pub fn host_features(plan: &Plan, dir: &Path) -> Vec<(String, &'static str)> {
    let c = &plan.config;
    let mut out: Vec<(String, &'static str)> = Vec::new();
    if !c.pre_mount_commands.is_empty() {
        out.push((
            "pre_mount_commands".into(),
            "runs commands on the builder host",
        ));
    }
    if !c.post_mount_commands.is_empty() {
        out.push((
            "post_mount_commands".into(),
            "runs commands on the builder host",
        ));
    }
    if c.command_wrapper != DEFAULT_COMMAND_WRAPPER {
        out.push((
            "command_wrapper".into(),
            "runs on the builder host around every command",
        ));
    }
    for [fstype, source, target] in &c.chroot_mounts {
        let default = DEFAULT_CHROOT_MOUNTS
            .iter()
            .any(|d| d[0] == fstype && d[1] == source && d[2] == target);
        if fstype == "bind" && !default {
            out.push((
                format!("chroot_mounts bind of {source}"),
                "shows a builder-host path to the build",
            ));
        }
    }
    for f in &c.copy_files {
        if !DEFAULT_COPY_FILES.contains(&f.as_str()) {
            out.push((
                format!("copy_files {f}"),
                "copies a builder-host file into the image",
            ));
        }
    }
    if c.sandbox.network == Some(Network::Host) {
        out.push((
            "sandbox network = \"host\"".into(),
            "gives the build the builder host's network",
        ));
    }
    for p in &plan.provisioners {
        match &p.kind {
            Kind::ShellLocal(_) => out.push((
                format!("the {} provisioner", p.kind_name),
                "runs commands on the builder host",
            )),
            Kind::Ansible(_) => out.push((
                format!("the {} provisioner (use ansible-local instead)", p.kind_name),
                "runs ansible-playbook on the builder host, where its command, extra_arguments, lookups and local actions run",
            )),
            Kind::File(f) if f.direction == "download" => {
                let dest = super::provisioner::resolve(&plan.work_dir, &f.destination);
                if !within(dir, &dest) && !within(&plan.work_dir, &dest) {
                    out.push((
                        format!("a file download to {}", f.destination),
                        "writes a builder-host file outside the template's folder",
                    ));
                }
            }
            _ => {}
        }
    }
    for f in plan.local_files() {
        if !within(dir, &f) && !within(&plan.work_dir, &f) {
            out.push((
                format!("the local file {}", f.display()),
                "reads a builder-host file outside the template's folder",
            ));
        }
    }
    for pp in &plan.post_processors {
        let dest = super::provisioner::resolve(&plan.work_dir, &pp.output);
        if !within(&plan.work_dir, &dest) {
            out.push((
                format!("the {} post-processor's output {}", pp.kind_name, pp.output),
                "writes a builder-host file outside the template's folder",
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_the_folder() {
        let d = Path::new("/w/b1");
        assert!(within(d, Path::new("/w/b1/scripts/a.sh")));
        assert!(within(d, Path::new("/w/b1/x/../a.sh")));
        assert!(!within(d, Path::new("/w/b1/../b2/a.sh")));
        assert!(!within(d, Path::new("/etc/shadow")));
    }
}
