//! The `ansible` and `ansible-local` provisioners' configuration: Packer's field names, defaults
//! and messages. `ansible` runs `ansible-playbook` on the builder against the chroot (the chroot
//! connection, the mount path as the host); `ansible-local` stages the playbook inside the image
//! and runs the image's own `ansible-playbook` there with a local connection.

use super::decode::Fields;
use super::provisioner::resolve;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Packer's default `command` for both provisioners.
pub const DEFAULT_COMMAND: &str = "ansible-playbook";
/// Packer's default `galaxy_command`.
pub const DEFAULT_GALAXY_COMMAND: &str = "ansible-galaxy";
/// Packer's default `host_alias`.
pub const DEFAULT_HOST_ALIAS: &str = "default";
/// Packer's ansible-local staging directory, to which it appends a random id.
pub const STAGING_PREFIX: &str = "/tmp/packer-provisioner-ansible-local/";

/// Fields of Packer's `ansible` provisioner that only concern its SSH proxy: accepted, ignored
/// with a warning (kiln reaches the image through the chroot connection).
const SSH_ONLY: &[&str] = &[
    "local_port",
    "ssh_host_key_file",
    "ssh_authorized_key_file",
    "sftp_command",
    "use_sftp",
    "use_proxy",
    "ansible_ssh_extra_args",
    "adapter_disabled",
    "winrm_use_http",
];

/// What `inventory_file_template` may name: Packer's `HostAlias`, `User`, `Host` (here the
/// mount path, which the chroot connection takes as its host), `Port` (empty: there is no SSH
/// port), `ConnType` (`chroot`), and the chroot builder's `Device` and `MountPath`.
pub const INVENTORY_PLACEHOLDERS: &[&str] = &[
    "HostAlias",
    "User",
    "Host",
    "Port",
    "ConnType",
    "Device",
    "MountPath",
];

/// `ansible`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Ansible {
    /// The program (default `ansible-playbook`).
    pub command: String,
    /// The playbook (required).
    pub playbook_file: PathBuf,
    /// An inventory to use instead of the one kiln writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory_file: Option<PathBuf>,
    /// Where kiln writes its inventory (default: a temporary directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory_directory: Option<PathBuf>,
    /// Roles and collections to install first (`ansible-galaxy install -r`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub galaxy_file: Option<PathBuf>,
    /// The galaxy program (default `ansible-galaxy`).
    pub galaxy_command: String,
    /// Reinstall what the galaxy file names even when present (`-f`).
    pub galaxy_force_install: bool,
    /// Reinstall them and their dependencies (`--force-with-deps`).
    pub galaxy_force_with_deps: bool,
    /// Extra arguments to ansible-playbook, after kiln's.
    pub extra_arguments: Vec<String>,
    /// `KEY=value` environment for ansible.
    pub ansible_env_vars: Vec<String>,
    /// Groups the host is in.
    pub groups: Vec<String>,
    /// Groups written empty.
    pub empty_groups: Vec<String>,
    /// The host's name in the inventory (default `default`).
    pub host_alias: String,
    /// `ansible_user` in the inventory (only when set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `ANSIBLE_ROLES_PATH`, and where galaxy installs roles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles_path: Option<PathBuf>,
    /// `ANSIBLE_COLLECTIONS_PATH`, and where galaxy installs collections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collections_path: Option<PathBuf>,
    /// The inventory's host line as a Go template (Packer's `inventory_file_template`): the
    /// placeholders in [`INVENTORY_PLACEHOLDERS`] are kept here and rendered when the build runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory_file_template: Option<String>,
    /// Keep the inventory kiln wrote.
    pub keep_inventory_file: bool,
    /// Do not run `ansible-playbook --version` first.
    pub skip_version_check: bool,
}

/// `ansible-local`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AnsibleLocal {
    /// The program inside the image (default `ansible-playbook`).
    pub command: String,
    /// The playbooks, in order (`playbook_file` or `playbook_files`).
    pub playbook_files: Vec<PathBuf>,
    /// A directory uploaded whole; playbooks are then run from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub playbook_dir: Option<PathBuf>,
    /// Role directories uploaded to `roles/`.
    pub role_paths: Vec<PathBuf>,
    /// Uploaded as `group_vars/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_vars: Option<PathBuf>,
    /// Uploaded as `host_vars/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_vars: Option<PathBuf>,
    /// Uploaded, then `ansible-galaxy install -r` inside the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub galaxy_file: Option<PathBuf>,
    /// The galaxy program inside the image.
    pub galaxy_command: String,
    /// An inventory to upload instead of the generated `127.0.0.1` one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory_file: Option<PathBuf>,
    /// Groups of the generated inventory.
    pub inventory_groups: Vec<String>,
    /// Extra arguments to ansible-playbook.
    pub extra_arguments: Vec<String>,
    /// Where files are staged inside the image.
    pub staging_directory: String,
    /// Remove the staging directory afterwards (Packer's default: keep it).
    pub clean_staging_directory: bool,
}

fn path_field(
    f: &mut Fields<'_>,
    dir: &Path,
    key: &str,
    required: bool,
    want_dir: bool,
) -> Option<PathBuf> {
    let Some(v) = f.string(key, &[]).filter(|v| !v.is_empty()) else {
        if required {
            f.error(key, format!("{key} must be specified."));
        }
        return None;
    };
    let p = resolve(dir, &v);
    if let Some(why) = invalid_path(&p, &v, want_dir) {
        f.error(key, format!("{key}: {v} is invalid: {why}"));
    }
    Some(p)
}

/// Why `p` (written `v`) is not the file or directory a field needs, in Packer's words.
fn invalid_path(p: &Path, v: &str, want_dir: bool) -> Option<String> {
    match std::fs::metadata(p) {
        Err(_) => Some(format!("stat {v}: no such file or directory")),
        Ok(m) if want_dir && !m.is_dir() => Some(format!("{v} must point to a directory")),
        Ok(m) if !want_dir && m.is_dir() => Some(format!("{v} must point to a file")),
        Ok(_) => None,
    }
}

fn env_pairs(f: &mut Fields<'_>, key: &str) -> Vec<String> {
    let v = f.string_list(key, &[]).unwrap_or_default();
    for (i, kv) in v.iter().enumerate() {
        if kv.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            f.error(
                &format!("{key}[{i}]"),
                format!("{key} entries must be KEY=value, got {kv:?}"),
            );
        }
    }
    v
}

/// Decodes `ansible`. Errors and warnings go to `f`.
pub fn decode(f: &mut Fields<'_>, dir: &Path) -> Ansible {
    let a = Ansible {
        command: f
            .string("command", &[])
            .unwrap_or_else(|| DEFAULT_COMMAND.into()),
        playbook_file: path_field(f, dir, "playbook_file", true, false).unwrap_or_default(),
        inventory_file: path_field(f, dir, "inventory_file", false, false),
        inventory_directory: path_field(f, dir, "inventory_directory", false, true),
        galaxy_file: path_field(f, dir, "galaxy_file", false, false),
        galaxy_command: f
            .string("galaxy_command", &[])
            .unwrap_or_else(|| DEFAULT_GALAXY_COMMAND.into()),
        galaxy_force_install: f.bool("galaxy_force_install").unwrap_or(false),
        galaxy_force_with_deps: f.bool("galaxy_force_with_deps").unwrap_or(false),
        extra_arguments: f.string_list("extra_arguments", &[]).unwrap_or_default(),
        ansible_env_vars: env_pairs(f, "ansible_env_vars"),
        groups: f.string_list("groups", &[]).unwrap_or_default(),
        empty_groups: f.string_list("empty_groups", &[]).unwrap_or_default(),
        host_alias: f
            .string("host_alias", &[])
            .unwrap_or_else(|| DEFAULT_HOST_ALIAS.into()),
        user: f.string("user", &[]),
        roles_path: f.string("roles_path", &[]).map(|p| resolve(dir, &p)),
        collections_path: f.string("collections_path", &[]).map(|p| resolve(dir, &p)),
        inventory_file_template: f
            .string("inventory_file_template", INVENTORY_PLACEHOLDERS)
            .filter(|t| !t.is_empty()),
        keep_inventory_file: f.bool("keep_inventory_file").unwrap_or(false),
        skip_version_check: f.bool("skip_version_check").unwrap_or(false),
    };
    for k in SSH_ONLY {
        if f.raw(k).is_some() {
            f.warn(
                k,
                format!(
                    "{k} is ignored: kiln reaches the image through the chroot connection, not SSH"
                ),
            );
        }
    }
    if a.inventory_file_template.is_some() && a.inventory_file.is_some() {
        f.warn(
            "inventory_file_template",
            "inventory_file_template is ignored: inventory_file names the inventory to use",
        );
    }
    a
}

/// Decodes `ansible-local`. Errors and warnings go to `f`.
pub fn decode_local(f: &mut Fields<'_>, dir: &Path) -> AnsibleLocal {
    let mut playbooks: Vec<PathBuf> = Vec::new();
    let single = path_field(f, dir, "playbook_file", false, false);
    let many = f.string_list("playbook_files", &[]).unwrap_or_default();
    if single.is_some() && !many.is_empty() {
        f.error(
            "playbook_file",
            "Either playbook_file or playbook_files can be specified, not both",
        );
    }
    playbooks.extend(single);
    for (i, p) in many.iter().enumerate() {
        let r = resolve(dir, p);
        if let Some(why) = invalid_path(&r, p, false) {
            f.error(
                &format!("playbook_files[{i}]"),
                format!("playbook_files: {p} is invalid: {why}"),
            );
        }
        playbooks.push(r);
    }
    if playbooks.is_empty() {
        f.error(
            "playbook_file",
            "Either playbook_file or playbook_files must be specified",
        );
    }
    let mut role_paths = Vec::new();
    for (i, p) in f
        .string_list("role_paths", &[])
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let r = resolve(dir, p);
        if let Some(why) = invalid_path(&r, p, true) {
            f.error(
                &format!("role_paths[{i}]"),
                format!("role_paths: {p} is invalid: {why}"),
            );
        }
        role_paths.push(r);
    }
    AnsibleLocal {
        command: f
            .string("command", &[])
            .unwrap_or_else(|| DEFAULT_COMMAND.into()),
        playbook_files: playbooks,
        playbook_dir: path_field(f, dir, "playbook_dir", false, true),
        role_paths,
        group_vars: path_field(f, dir, "group_vars", false, true),
        host_vars: path_field(f, dir, "host_vars", false, true),
        galaxy_file: path_field(f, dir, "galaxy_file", false, false),
        galaxy_command: f
            .string("galaxy_command", &[])
            .unwrap_or_else(|| DEFAULT_GALAXY_COMMAND.into()),
        inventory_file: path_field(f, dir, "inventory_file", false, false),
        inventory_groups: f.string_list("inventory_groups", &[]).unwrap_or_default(),
        extra_arguments: f.string_list("extra_arguments", &[]).unwrap_or_default(),
        staging_directory: f
            .string("staging_directory", &[])
            .unwrap_or_else(|| format!("{STAGING_PREFIX}{}", uuid::Uuid::new_v4().simple())),
        clean_staging_directory: f.bool("clean_staging_directory").unwrap_or(false),
    }
}
