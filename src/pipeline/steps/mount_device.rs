//! Step `mount-device`: `mount [-o opt]... DEVICE[PARTITION] MOUNT_PATH` through `command_wrapper`
//! (the partition is appended for HVM images unless `mount_partition` is "0"); the mount is made
//! private so nothing below it propagates to the host. Undo (always): kill what runs in the
//! chroot, unmount everything below the mount path, then the root.

use crate::host::command::shell_quote;
use crate::host::mount;
use crate::pipeline::{Build, StepError};

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let c = &b.plan.config;
    let mp = b.mount_path()?;
    let dev = b
        .state
        .device_path
        .clone()
        .ok_or_else(|| super::invalid("no device"))?;
    std::fs::create_dir_all(&mp)
        .map_err(crate::host::HostError::io("creating the mount path", &mp))?;
    if mount::is_mounted(&mp) {
        return Err(super::invalid(format!(
            "{} is already mounted: another build uses this mount_path, or a crashed build left it (unmount it)",
            mp.display()
        )));
    }
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
    b.host_command("mount", &cmd, Vec::new()).await?;
    b.state.mounted = true;
    mount::make_private(&mp)?;
    Ok(serde_json::json!({ "device": device, "mount_path": mp }))
}

pub async fn undo(b: &mut Build) -> Result<(), StepError> {
    let Some(mp) = b.state.mount_path.clone() else {
        return Ok(());
    };
    if !b.state.mounted && !mount::is_mounted(&mp) {
        return Ok(());
    }
    // Whatever provisioners mounted below the root, deepest first, then the root itself.
    mount::unmount_tree(&mp).await?;
    b.state.mounted = false;
    let _ = std::fs::remove_dir(&mp);
    Ok(())
}
