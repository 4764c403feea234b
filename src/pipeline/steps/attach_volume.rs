//! Step `attach-volume`: AttachVolume, wait for the attachment and for the block device (by the
//! volume id on NVMe hosts), and make `{{.Device}}` a name whose `N` suffix names partition N.
//! Undo (always): unmount leftovers, release the device, DetachVolume and wait.

use crate::ec2::volumes;
use crate::host::devices;
use crate::pipeline::{Build, StepError};

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let instance = b
        .state
        .instance
        .clone()
        .ok_or_else(|| super::invalid("no instance info"))?;
    let volume = b
        .state
        .volume_id
        .clone()
        .ok_or_else(|| super::invalid("no volume"))?;
    let name = b
        .state
        .device_name
        .clone()
        .ok_or_else(|| super::invalid("no device"))?;
    // EC2 wants /dev/sdX names for HVM attachments; /dev/xvdX is accepted as well.
    let attach_name = format!("/dev/{}", name.replace("xvd", "sd"));
    // Recorded before the call: if the wait fails, the undo still detaches (a no-op when the
    // volume never attached).
    b.state.attached = true;
    volumes::attach(
        &b.clients.ec2,
        &b.region,
        &volume,
        &instance.instance_id,
        &attach_name,
        &b.polling,
        &b.cancel,
    )
    .await?;
    let dev = b
        .backend
        .attached(
            &volume,
            &attach_name,
            b.plan.config.nvme_device_path.as_deref(),
            &b.cancel,
        )
        .await?;
    b.state.block_device = Some(dev.clone());
    if let Some(lock) = &b.state.device_lock {
        lock.note(&format!("{volume} {}", dev.display()))?;
    }
    let (device_path, mount) = name_and_mount_path(b, &name, &dev).await?;
    Ok(
        serde_json::json!({ "attached_as": attach_name, "block_device": dev, "device": device_path, "mount_path": mount }),
    )
}

/// For the block device `dev` holding the build's image (an attachment, or the direct backend's
/// loop device): its partitions scanned, the `{{.Device}}` name (an alias named after the
/// allocated `name` where `N` must name partition N) and the mount path. Sets them in the state.
pub(super) async fn name_and_mount_path(
    b: &mut Build,
    name: &str,
    dev: &std::path::Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf), StepError> {
    // The partitions of a volume made from a snapshot: not every kernel scans them on attach.
    devices::rescan_partitions(dev).await?;
    let device_path = if b.backend.needs_aliases(dev) {
        devices::make_aliases(name, dev)?
    } else {
        dev.to_owned()
    };
    b.state.device_path = Some(device_path.clone());
    // Packer's mount_path data: Device is the device's base name.
    let base = device_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mount = b.render("mount_path", &b.plan.config.mount_path, &[("Device", base)])?;
    let mount = std::path::absolute(&mount)
        .map_err(|e| super::invalid(format!("mount_path {mount}: {e}")))?;
    b.state.mount_path = Some(mount.clone());
    Ok((device_path, mount))
}

pub async fn undo(b: &mut Build) -> Result<(), StepError> {
    let Some(volume) = b.state.volume_id.clone() else {
        return Ok(());
    };
    b.backend
        .detaching(&volume, b.state.block_device.as_deref())?;
    b.state.block_device = None;
    if b.state.attached {
        volumes::detach(&b.clients.ec2, &b.region, &volume, &b.polling, &b.cancel).await?;
        b.state.attached = false;
    }
    Ok(())
}
