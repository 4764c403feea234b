//! Step `mount-device`: `mount [-o opt]... DEVICE[PARTITION] MOUNT_PATH` through `command_wrapper`
//! (the partition is appended for HVM images unless `mount_partition` is "0"). The mount path must
//! be a directory below kiln's mount root (checked when the template is validated, and here again),
//! reached without a link, with nothing mounted on it yet. The mount the command made is recorded
//! by its kernel mount id and made private (nothing below it propagates to the host); step
//! `mount-extra` makes it `nodev,nosuid` once the `post_mount_commands` are done. Undo
//! (always): unmount that mount by id, and what provisioners mounted on it, killing only the
//! processes rooted on those mounts; a step that was refused made nothing, and its undo touches
//! nothing (a foreign mount at the path and its processes stay).

use crate::host::command::shell_quote;
use crate::host::mount;
use crate::pipeline::{Build, StepError};
use crate::template::config::{MOUNT_ROOT, mount_path_problem};
use std::path::Path;

/// Refuses a mount path that is not kiln's to mount on: outside the mount root, with `.`/`..`,
/// or reached through a link (the kernel would mount where the link leads).
fn check_mount_path(mp: &Path) -> Result<(), StepError> {
    if let Some(e) = mount_path_problem(&mp.to_string_lossy()) {
        return Err(super::invalid(e));
    }
    let real = std::fs::canonicalize(mp)
        .map_err(crate::host::HostError::io("resolving the mount path", mp))?;
    let root = std::fs::canonicalize(MOUNT_ROOT)
        .map_err(crate::host::HostError::io("resolving", MOUNT_ROOT))?;
    let expected = root.join(mp.strip_prefix(MOUNT_ROOT).unwrap_or(mp));
    if real != expected {
        return Err(super::invalid(format!(
            "mount_path {} leads to {} (a link on the way): kiln mounts only on a directory below {MOUNT_ROOT} reached without links",
            mp.display(),
            real.display()
        )));
    }
    Ok(())
}

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let c = &b.plan.config;
    let mp = b.mount_path()?;
    if let Some(e) = mount_path_problem(&mp.to_string_lossy()) {
        return Err(super::invalid(e));
    }
    let dev = b
        .state
        .device_path
        .clone()
        .ok_or_else(|| super::invalid("no device"))?;
    // Before anything is created: no link below the mount root on the way.
    let mut at = std::path::PathBuf::from(MOUNT_ROOT);
    for c in mp.strip_prefix(MOUNT_ROOT).unwrap_or(&mp).components() {
        at.push(c);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(super::invalid(format!(
                "mount_path {}: {} is a link; kiln mounts only on a directory below {MOUNT_ROOT} reached without links",
                mp.display(),
                at.display()
            )));
        }
    }
    if std::fs::symlink_metadata(&mp).is_err() {
        std::fs::create_dir_all(&mp)
            .map_err(crate::host::HostError::io("creating the mount path", &mp))?;
        b.state.mount_dir_created = true;
    }
    check_mount_path(&mp)?;
    if mount::is_mounted(&mp) || mount::is_mount_root(&mp) {
        return Err(super::invalid(format!(
            "{} is already mounted: another build uses this mount_path, or a crashed build left it (unmount it)",
            mp.display()
        )));
    }
    let before = mount::mount_id_at(&mp).ok_or_else(|| {
        super::invalid(format!(
            "mount_path {} is not a directory kiln can open",
            mp.display()
        ))
    })?;
    let virt = c
        .ami_virtualization_type
        .clone()
        .or_else(|| {
            b.state
                .source
                .as_ref()
                .and_then(|s| s.virtualization_type.clone())
        })
        .unwrap_or_else(|| "hvm".into());
    let device = if c.mount_partition != "0" && virt == "hvm" {
        format!("{}{}", dev.display(), c.mount_partition)
    } else {
        dev.display().to_string()
    };
    if let Some(block) = b.state.block_device.clone() {
        crate::host::devices::rescan_partitions(&block).await?;
    }
    let mut cmd = String::from("mount");
    for o in &c.mount_options {
        cmd.push_str(&format!(" -o {}", shell_quote(o)));
    }
    cmd.push_str(&format!(
        " {} {}",
        shell_quote(&device),
        shell_quote(&mp.display().to_string())
    ));
    let ran = b.host_command("mount", &cmd, Vec::new()).await;
    // Whatever the command's outcome, a new mount at the path is this step's to undo.
    if let Some(id) = mount::mount_id_at(&mp).filter(|id| *id != before) {
        b.state.root_mount_id = Some(id);
        b.state.mounted = true;
    }
    ran?;
    let id = b.state.root_mount_id.ok_or_else(|| {
        super::invalid(format!(
            "the mount command succeeded but nothing is mounted at {}",
            mp.display()
        ))
    })?;
    mount::seal(id, &mp)?;
    Ok(serde_json::json!({ "device": device, "mount_path": mp, "mount_id": id }))
}

pub async fn undo(b: &mut Build) -> Result<(), StepError> {
    let Some(mp) = b.state.mount_path.clone() else {
        return Ok(());
    };
    // Exactly the mount this step made (and what was mounted on or below it), by id.
    if let Some(id) = b.state.root_mount_id {
        mount::unmount_id(id, &mp).await?;
        b.state.root_mount_id = None;
    }
    b.state.mounted = false;
    if b.state.mount_dir_created {
        // Only when empty: rmdir never removes content.
        let _ = std::fs::remove_dir(&mp);
        b.state.mount_dir_created = false;
    }
    Ok(())
}
