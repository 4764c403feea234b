//! Step `early-cleanup`: before the snapshot, remove the sandbox (killing what the build left
//! running), undo the copies, the extra mounts, the root mount and
//! the attachment (the direct backend: its loop device), so the snapshot sees a clean, detached
//! volume.

use crate::pipeline::{Build, StepError};

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    super::sandbox::undo(b).await?;
    super::copy_files::undo(b)?;
    super::mount_extra::undo(b).await?;
    super::mount_device::undo(b).await?;
    super::attach_volume::undo(b).await?;
    // The direct backend's loop device (its working image stays for the upload).
    super::read_source::release(b)?;
    Ok(serde_json::json!({}))
}
