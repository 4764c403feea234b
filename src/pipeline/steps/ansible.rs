//! The `ansible` and `ansible-local` provisioners (part of step `provision`).
//!
//! `ansible` runs `ansible-playbook` on the builder host against the chroot: kiln writes an
//! inventory whose host (`host_alias`, default `default`) has `ansible_connection=chroot` and the
//! mount path as `ansible_host`, so the playbook's tasks run inside the image. A template that
//! passes its own inventory (`inventory_file`, or `-i` in `extra_arguments` with
//! `--connection=chroot`, as Packer's documentation shows) runs as written. Either way the chroot
//! connection runs its commands through the build's sandbox (`ansible_chroot_exe` as an extra
//! variable, which nothing in a template overrides).
//!
//! `ansible-local` stages the playbook and its files inside the image (through `ImageFs`, so paths
//! resolve within the mount) and runs the image's own `ansible-playbook` there with a local
//! connection, as Packer does over its communicator.

use super::provision::in_chroot;
use crate::host::HostError;
use crate::host::command::{ShellCommand, shell_quote};
use crate::host::image_fs::ImageFs;
use crate::pipeline::{Build, StepError};
use crate::template::ansible::{Ansible, AnsibleLocal};
use std::path::{Path, PathBuf};

/// Environment kiln gives ansible unless the template's `ansible_env_vars` say otherwise: plain
/// output for logs (no colour codes), no retry files next to the playbook, unbuffered output.
const BASE_ENV: &[(&str, &str)] = &[
    ("ANSIBLE_NOCOLOR", "1"),
    ("ANSIBLE_FORCE_COLOR", "0"),
    ("ANSIBLE_RETRY_FILES_ENABLED", "False"),
    ("PYTHONUNBUFFERED", "1"),
];

/// The `--extra-vars` Packer passes to every playbook.
fn packer_vars(b: &Build) -> String {
    format!(
        "packer_build_name={} packer_builder_type=amazon-chroot packer_http_addr=",
        b.plan.name
    )
}

fn quoted(args: &[String]) -> String {
    args.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `extra_arguments` name an inventory of their own.
fn names_inventory(args: &[String]) -> bool {
    args.iter().any(|a| {
        a.starts_with("-i") || a.starts_with("--inventory") || a.starts_with("--inventory-file")
    })
}

/// The inventory kiln writes for `ansible`: the host reached through the chroot connection, or
/// `host` (the template's `inventory_file_template`, rendered) followed, as in Packer, by each
/// group holding that line again.
fn inventory(a: &Ansible, mount: &Path, host: Option<&str>) -> String {
    if let Some(host) = host {
        let mut host = host.to_owned();
        if !host.ends_with('\n') {
            host.push('\n');
        }
        let mut text = host.clone();
        for g in &a.groups {
            text.push_str(&format!("[{g}]\n{host}"));
        }
        for g in &a.empty_groups {
            text.push_str(&format!("[{g}]\n"));
        }
        return text;
    }
    let mut host = format!(
        "{} ansible_host={} ansible_connection=chroot",
        a.host_alias,
        mount.display()
    );
    if let Some(u) = &a.user {
        host.push_str(&format!(" ansible_user={u}"));
    }
    let mut text = format!("{host}\n");
    for g in &a.groups {
        text.push_str(&format!("[{g}]\n{}\n", a.host_alias));
    }
    for g in &a.empty_groups {
        text.push_str(&format!("[{g}]\n"));
    }
    text
}

/// The values `inventory_file_template` renders with (see
/// `crate::template::ansible::INVENTORY_PLACEHOLDERS`).
fn inventory_values(a: &Ansible, b: &Build, mount: &Path) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("HostAlias", a.host_alias.clone()),
        ("User", a.user.clone().unwrap_or_default()),
        ("Host", mount.display().to_string()),
        ("Port", String::new()),
        ("ConnType", "chroot".to_owned()),
    ];
    v.extend(b.device_values());
    v
}

/// The `ansible-galaxy` command lines for `galaxy` (the requirements file's text), as Packer
/// runs them: roles (`install -r FILE`, into `roles_path`) when the file has a `roles:` key or no
/// `collections:` key (the old list-of-roles format), then collections (`collection install -r
/// FILE`, into `collections_path`) when it has a `collections:` key.
fn galaxy_commands(a: &Ansible, file: &Path, galaxy: &str) -> Vec<Vec<String>> {
    let has = |key: &str| galaxy.lines().any(|l| l.starts_with(key));
    let (roles, collections) = (has("roles:"), has("collections:"));
    let file = file.display().to_string();
    let mut force = Vec::new();
    if a.galaxy_force_install {
        force.push("-f".to_owned());
    }
    if a.galaxy_force_with_deps {
        force.push("--force-with-deps".to_owned());
    }
    let mut out = Vec::new();
    if roles || !collections {
        let mut argv = vec![
            a.galaxy_command.clone(),
            "install".into(),
            "-r".into(),
            file.clone(),
        ];
        argv.extend(force.iter().cloned());
        if let Some(p) = &a.roles_path {
            argv.extend(["-p".into(), p.display().to_string()]);
        }
        out.push(argv);
    }
    if collections {
        let mut argv = vec![
            a.galaxy_command.clone(),
            "collection".into(),
            "install".into(),
            "-r".into(),
            file,
        ];
        argv.extend(force);
        if let Some(p) = &a.collections_path {
            argv.extend(["-p".into(), p.display().to_string()]);
        }
        out.push(argv);
    }
    out
}

async fn host_command(
    b: &Build,
    label: &str,
    argv: &[String],
    env: &[(String, String)],
) -> Result<(), StepError> {
    let script = quoted(argv);
    b.run_command(ShellCommand {
        name: label.to_owned(),
        display: script.clone(),
        script,
        env: env.to_vec(),
        valid_exit_codes: vec![0],
    })
    .await
}

fn env_of(a: &Ansible) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = BASE_ENV
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    if let Some(p) = &a.roles_path {
        env.push(("ANSIBLE_ROLES_PATH".into(), p.display().to_string()));
    }
    if let Some(p) = &a.collections_path {
        env.push(("ANSIBLE_COLLECTIONS_PATH".into(), p.display().to_string()));
    }
    for kv in &a.ansible_env_vars {
        if let Some((k, v)) = kv.split_once('=') {
            env.push((k.to_owned(), v.to_owned()));
        }
    }
    env
}

/// Runs the `ansible` provisioner. Side effects: whatever the playbook does inside the image; a
/// temporary inventory on the host (kept with `keep_inventory_file`). Runs the playbook again if
/// called twice.
pub async fn run(b: &Build, label: &str, a: &Ansible) -> Result<(), StepError> {
    let mp = b.mount_path()?;
    let env = env_of(a);
    if !a.skip_version_check {
        host_command(b, label, &[a.command.clone(), "--version".into()], &env)
            .await
            .map_err(|e| {
                super::invalid(format!(
                    "{label}: `{} --version` failed: is Ansible installed on the builder? (`pip install ansible`, or scripts/setup; set skip_version_check to skip this check): {e}",
                    a.command
                ))
            })?;
    }
    if let Some(g) = &a.galaxy_file {
        let text = std::fs::read_to_string(g).map_err(HostError::io("reading galaxy_file", g))?;
        for argv in galaxy_commands(a, g, &text) {
            host_command(b, &format!("{label} galaxy"), &argv, &env).await?;
        }
    }
    let written: Option<PathBuf> = match (&a.inventory_file, names_inventory(&a.extra_arguments)) {
        (None, false) => {
            let dir = a
                .inventory_directory
                .clone()
                .unwrap_or_else(std::env::temp_dir);
            let path = dir.join(format!(
                "kiln-ansible-inventory-{}",
                uuid::Uuid::new_v4().simple()
            ));
            let host = match &a.inventory_file_template {
                Some(t) => {
                    Some(b.render("inventory_file_template", t, &inventory_values(a, b, &mp))?)
                }
                None => None,
            };
            std::fs::write(&path, inventory(a, &mp, host.as_deref()))
                .map_err(HostError::io("writing the inventory", &path))?;
            Some(path)
        }
        _ => None,
    };
    let mut argv = vec![a.command.clone(), "--extra-vars".into(), packer_vars(b)];
    let sandbox =
        b.state.sandbox.as_ref().ok_or_else(|| {
            super::invalid(format!("{label}: the build has no sandbox to run in"))
        })?;
    if let Some(inv) = written.as_ref().or(a.inventory_file.as_ref()) {
        argv.extend(["-i".into(), inv.display().to_string()]);
    }
    argv.extend(a.extra_arguments.iter().cloned());
    // The chroot connection's commands run through the build's sandbox, whatever inventory the
    // template brings: extra vars take precedence over every inventory and play variable, and
    // of two the last wins, so kiln's comes after the template's `extra_arguments`.
    argv.extend([
        "--extra-vars".into(),
        format!("ansible_chroot_exe={}", sandbox.chroot_exe().display()),
    ]);
    argv.push(a.playbook_file.display().to_string());
    let result = host_command(b, label, &argv, &env).await;
    if let Some(inv) = written {
        if a.keep_inventory_file {
            (b.sink)(label, &format!("inventory kept at {}", inv.display()));
        } else if let Err(e) = std::fs::remove_file(&inv) {
            tracing::warn!(path = %inv.display(), error = %e, "the inventory stays");
        }
    }
    result
}

/// Uploads what `ansible-local` needs into `staging` inside the image; returns the playbooks'
/// paths relative to `staging`, and the inventory's.
fn stage(
    image: &ImageFs,
    a: &AnsibleLocal,
    staging: &str,
) -> Result<(Vec<String>, String), StepError> {
    image.mkdir_all(staging)?;
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if let Some(dir) = &a.playbook_dir {
        image.upload(dir, staging)?;
    }
    let mut playbooks = Vec::new();
    for pb in &a.playbook_files {
        let inside_dir = a
            .playbook_dir
            .as_ref()
            .and_then(|d| pb.strip_prefix(d).ok())
            .map(|r| r.display().to_string());
        match inside_dir {
            Some(rel) => playbooks.push(rel),
            None => {
                image.upload(pb, &format!("{staging}/{}", name(pb)))?;
                playbooks.push(name(pb));
            }
        }
    }
    for r in &a.role_paths {
        image.upload(r, &format!("{staging}/roles/{}", name(r)))?;
    }
    for (dir, to) in [(&a.group_vars, "group_vars"), (&a.host_vars, "host_vars")] {
        if let Some(d) = dir {
            image.upload(d, &format!("{staging}/{to}"))?;
        }
    }
    if let Some(g) = &a.galaxy_file {
        image.upload(g, &format!("{staging}/{}", name(g)))?;
    }
    let inventory = match &a.inventory_file {
        Some(inv) => {
            image.upload(inv, &format!("{staging}/{}", name(inv)))?;
            name(inv)
        }
        None => {
            let mut text = String::new();
            if a.inventory_groups.is_empty() {
                text.push_str("127.0.0.1\n");
            }
            for g in &a.inventory_groups {
                text.push_str(&format!("[{g}]\n127.0.0.1\n"));
            }
            let inv = format!(
                "packer-provisioner-ansible-local-{}.inventory",
                uuid::Uuid::new_v4().simple()
            );
            image.write(&format!("{staging}/{inv}"), text.as_bytes(), 0o644)?;
            inv
        }
    };
    Ok((playbooks, inventory))
}

/// Runs the `ansible-local` provisioner. Side effects: the staging directory inside the image
/// (removed with `clean_staging_directory`), and whatever the playbooks do. Runs them again if
/// called twice.
pub async fn run_local(b: &Build, label: &str, a: &AnsibleLocal) -> Result<(), StepError> {
    let mp = b.mount_path()?;
    let image = ImageFs::open(&mp)?;
    let staging = a.staging_directory.trim_end_matches('/').to_owned();
    let (playbooks, inventory) = stage(&image, a, &staging)?;
    let env: String = BASE_ENV
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let cd = format!("cd {}", shell_quote(&staging));
    let mut result = Ok(());
    if let Some(g) = &a.galaxy_file {
        let g = g
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let inner = format!(
            "{cd} && {env} {} install -r {} -p roles",
            a.galaxy_command,
            shell_quote(&g)
        );
        result = in_chroot(b, &format!("{label} galaxy"), &inner, &inner, &[0]).await;
    }
    for pb in &playbooks {
        if result.is_err() {
            break;
        }
        let inner = format!(
            "{cd} && {env} {} {} --extra-vars {} -c local -i {} {}",
            a.command,
            shell_quote(pb),
            shell_quote(&packer_vars(b)),
            shell_quote(&inventory),
            quoted(&a.extra_arguments)
        );
        result = in_chroot(b, label, &inner, &inner, &[0]).await;
    }
    if a.clean_staging_directory
        && let Err(e) = image.remove_all(&staging)
    {
        tracing::warn!(error = %e, "the staging directory stays in the image");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_has_the_chroot_host_and_groups() {
        let a = Ansible {
            host_alias: "default".into(),
            groups: vec!["web".into()],
            empty_groups: vec!["db".into()],
            user: Some("root".into()),
            ..Ansible::default()
        };
        assert_eq!(
            inventory(&a, Path::new("/mnt/x"), None),
            "default ansible_host=/mnt/x ansible_connection=chroot ansible_user=root\n[web]\ndefault\n[db]\n"
        );
        assert!(names_inventory(&["--inventory-file=/mnt/x,".into()]));
        assert!(names_inventory(&["-i".into(), "x".into()]));
        assert!(!names_inventory(&[
            "--connection=chroot".into(),
            "-vvv".into()
        ]));
    }

    #[test]
    fn an_inventory_template_is_the_host_line_and_each_group_repeats_it() {
        let a = Ansible {
            host_alias: "web1".into(),
            groups: vec!["web".into()],
            empty_groups: vec!["db".into()],
            ..Ansible::default()
        };
        let host = "web1 ansible_host=/mnt/x ansible_connection=chroot region=eu";
        assert_eq!(
            inventory(&a, Path::new("/mnt/x"), Some(host)),
            format!("{host}\n[web]\n{host}\n[db]\n")
        );
    }

    fn galaxy(a: &Ansible, text: &str) -> Vec<String> {
        galaxy_commands(a, Path::new("/t/requirements.yml"), text)
            .iter()
            .map(|argv| argv.join(" "))
            .collect()
    }

    #[test]
    fn galaxy_installs_roles_and_collections_into_their_paths_as_packer_does() {
        let mut a = Ansible {
            galaxy_command: "ansible-galaxy".into(),
            roles_path: Some("/t/roles".into()),
            collections_path: Some("/t/collections".into()),
            ..Ansible::default()
        };
        let both = "---\nroles:\n  - name: r\ncollections:\n  - name: community.general\n";
        assert_eq!(
            galaxy(&a, both),
            [
                "ansible-galaxy install -r /t/requirements.yml -p /t/roles",
                "ansible-galaxy collection install -r /t/requirements.yml -p /t/collections",
            ]
        );
        // Collections only: no role install (it would fail on the file); roles only, or the old
        // list-of-roles format: no collection install.
        assert_eq!(
            galaxy(&a, "collections:\n  - community.general\n"),
            ["ansible-galaxy collection install -r /t/requirements.yml -p /t/collections"]
        );
        assert_eq!(
            galaxy(&a, "- src: file:///x.tar.gz\n  name: r\n"),
            ["ansible-galaxy install -r /t/requirements.yml -p /t/roles"]
        );
        // Force flags go to both; without paths there is no -p.
        a.galaxy_force_install = true;
        a.galaxy_force_with_deps = true;
        a.roles_path = None;
        a.collections_path = None;
        assert_eq!(
            galaxy(&a, both),
            [
                "ansible-galaxy install -r /t/requirements.yml -f --force-with-deps",
                "ansible-galaxy collection install -r /t/requirements.yml -f --force-with-deps",
            ]
        );
    }
}
