//! `kiln inspect`: the resolved build as a person reviews it before running it.

use super::config::ChrootConfig;
use super::provisioner::Kind;
use super::{Masker, Plan};
use std::fmt::Write;

fn def(c: &ChrootConfig, field: &str) -> &'static str {
    if c.defaulted.contains(field) {
        " (default)"
    } else {
        ""
    }
}

/// Renders `plan` as text, sensitive values masked.
pub fn render(plan: &Plan, masker: &Masker) -> String {
    let c = &plan.config;
    let mut o = String::new();
    let _ = writeln!(o, "Build {}", plan.name);
    let _ = writeln!(o, "  source:");
    if c.from_scratch {
        let _ = writeln!(
            o,
            "    from scratch (an empty {} GiB volume)",
            c.root_volume_size.unwrap_or(0)
        );
    } else {
        if let Some(s) = &c.source_ami {
            let _ = writeln!(o, "    source_ami: {s}");
        }
        if let Some(f) = &c.source_ami_filter {
            let _ = writeln!(
                o,
                "    source_ami_filter: filters {:?}, owners {:?}, most_recent {}",
                f.filters, f.owners, f.most_recent
            );
        }
    }
    let _ = writeln!(o, "  target:");
    let _ = writeln!(o, "    ami_name: {}", c.ami_name);
    if let Some(d) = &c.ami_description {
        let _ = writeln!(o, "    ami_description: {d}");
    }
    let region = c
        .region
        .clone()
        .unwrap_or_else(|| "the builder's region (default)".into());
    let _ = writeln!(o, "    region: {region}");
    if !c.ami_regions.is_empty() {
        let _ = writeln!(o, "    copies to: {}", c.ami_regions.join(", "));
    }
    let _ = writeln!(
        o,
        "    architecture: {}{}",
        c.ami_architecture,
        def(c, "ami_architecture")
    );
    if let Some(v) = &c.ami_virtualization_type {
        let _ = writeln!(o, "    virtualization: {v}");
    }
    for (k, v) in [
        ("ena_support", c.ena_support.map(|b| b.to_string())),
        ("sriov_support", c.sriov_support.then(|| "true".into())),
        ("boot_mode", c.boot_mode.clone()),
        ("tpm_support", c.tpm_support.clone()),
        ("imds_support", c.imds_support.clone()),
        ("deprecate_at", c.deprecate_at.clone()),
    ] {
        if let Some(v) = v {
            let _ = writeln!(o, "    {k}: {v}");
        }
    }
    if !c.ami_users.is_empty() || !c.ami_groups.is_empty() {
        let _ = writeln!(
            o,
            "    launch permissions: users {:?}, groups {:?}",
            c.ami_users, c.ami_groups
        );
    }
    if !c.tags.is_empty() {
        let _ = writeln!(
            o,
            "    tags: {}",
            c.tags
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(o, "  volume:");
    let _ = writeln!(
        o,
        "    size: {}",
        c.root_volume_size
            .map(|s| format!("{s} GiB"))
            .unwrap_or_else(|| "the source snapshot's size (default)".into())
    );
    let _ = writeln!(
        o,
        "    type: {}",
        c.root_volume_type
            .clone()
            .unwrap_or_else(|| if c.from_scratch {
                "gp2 (default)".into()
            } else {
                "the source's (default)".into()
            })
    );
    if let Some(r) = &c.root_device_name {
        let _ = writeln!(o, "    root_device_name: {r}");
    }
    for b in &c.ami_block_device_mappings {
        let _ = writeln!(
            o,
            "    mapping: {} {} {}",
            b.device_name,
            b.volume_type.clone().unwrap_or_default(),
            b.volume_size
                .map(|s| format!("{s} GiB"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        o,
        "    mount_path: {}{}",
        c.mount_path,
        def(c, "mount_path")
    );
    let _ = writeln!(
        o,
        "    mount_partition: {}{}",
        c.mount_partition,
        def(c, "mount_partition")
    );
    if !c.mount_options.is_empty() {
        let _ = writeln!(o, "    mount_options: {}", c.mount_options.join(","));
    }
    for (label, cmds) in [
        ("pre_mount_commands", &c.pre_mount_commands),
        ("post_mount_commands", &c.post_mount_commands),
    ] {
        if !cmds.is_empty() {
            let _ = writeln!(o, "  {label}:");
            for cmd in cmds {
                let _ = writeln!(o, "    {cmd}");
            }
        }
    }
    let _ = writeln!(o, "  chroot_mounts{}:", def(c, "chroot_mounts"));
    for [t, s, p] in &c.chroot_mounts {
        let _ = writeln!(o, "    {t:<12} {s:<12} {p}");
    }
    let _ = writeln!(o, "  copy_files{}:", def(c, "copy_files"));
    if c.copy_files.is_empty() {
        let _ = writeln!(o, "    (none)");
    }
    for f in &c.copy_files {
        let _ = writeln!(o, "    {f}");
    }
    let _ = writeln!(
        o,
        "  command_wrapper: {}{}",
        c.command_wrapper,
        def(c, "command_wrapper")
    );
    let _ = writeln!(o, "  provisioners:");
    if plan.provisioners.is_empty() {
        let _ = writeln!(o, "    (none)");
    }
    for (i, p) in plan.provisioners.iter().enumerate() {
        let _ = writeln!(
            o,
            "    {}. {}{} ({})",
            i + 1,
            p.kind_name,
            p.name
                .as_ref()
                .map(|n| format!(" \"{n}\""))
                .unwrap_or_default(),
            p.location
        );
        match &p.kind {
            Kind::Shell(s) | Kind::ShellLocal(s) => {
                if let Some(cmd) = &s.command {
                    let _ = writeln!(o, "       command: {cmd}");
                }
                for l in &s.inline {
                    let _ = writeln!(o, "       $ {l}");
                }
                for sc in &s.scripts {
                    let _ = writeln!(o, "       script: {}", sc.display());
                }
                if !s.environment_vars.is_empty() {
                    let _ = writeln!(o, "       environment: {}", s.environment_vars.join(" "));
                }
            }
            Kind::File(f) => {
                let from = if let Some(content) = &f.content {
                    format!("content ({} bytes)", content.len())
                } else {
                    f.sources.join(", ")
                };
                let _ = writeln!(o, "       {}: {from} -> {}", f.direction, f.destination);
            }
            Kind::Ansible(a) => {
                let _ = writeln!(
                    o,
                    "       {} {} (chroot connection, host {})",
                    a.command,
                    a.playbook_file.display(),
                    a.host_alias
                );
                if !a.extra_arguments.is_empty() {
                    let _ = writeln!(o, "       arguments: {}", a.extra_arguments.join(" "));
                }
            }
            Kind::AnsibleLocal(a) => {
                for pb in &a.playbook_files {
                    let _ = writeln!(
                        o,
                        "       {} {} (in the image, staged in {})",
                        a.command,
                        pb.display(),
                        a.staging_directory
                    );
                }
            }
        }
    }
    if !plan.post_processors.is_empty() {
        let _ = writeln!(o, "  post-processors:");
        for p in &plan.post_processors {
            let _ = writeln!(o, "    {} -> {}", p.kind_name, p.output);
        }
    }
    if !plan.variables.is_empty() {
        let _ = writeln!(o, "  variables:");
        for (k, v) in &plan.variables {
            let shown = if plan.sensitive.contains(k) {
                "<sensitive>".to_owned()
            } else {
                v.clone()
            };
            let _ = writeln!(o, "    {k} = {shown}");
        }
    }
    masker.mask(&o)
}
