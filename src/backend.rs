//! Where a volume's data lives and how it appears as a block device.
//!
//! - `ebs`: a real EBS attachment on a builder instance; the device node appears when EC2
//!   attaches the volume (`/dev/xvdf`, or `/dev/nvmeXn1` found by the volume id on Nitro).
//! - `loop`: for development, tests and the local demo. EC2 calls still go to the EC2 API; each
//!   volume and snapshot id also has a sparse file in the state directory, a loop device stands in
//!   for the attachment, and a snapshot is a sparse copy (cost in proportion to the data).
//!
//! The pipeline is the same for both; only these hooks differ.

use crate::host::{HostError, devices, loopdev, sparse};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a device node may take to appear after EC2 reports the attachment. NVMe nodes and
/// udev's by-id links usually appear within a second; a minute covers a busy host.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(60);
const GIB: u64 = 1 << 30;

/// The backend chosen for a build (explicitly: a flag or config, never guessed).
#[derive(Debug, Clone)]
pub enum Backend {
    /// Real EBS attachments.
    Ebs,
    /// Sparse files and loop devices under a state directory.
    Loop {
        /// Holds `volumes/` and `snapshots/`.
        state_dir: PathBuf,
    },
}

impl Backend {
    /// The backend's name (`ebs` or `loop`).
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Ebs => "ebs",
            Backend::Loop { .. } => "loop",
        }
    }

    /// The file holding a volume's data (loop backend).
    pub fn volume_file(&self, id: &str) -> Option<PathBuf> {
        match self {
            Backend::Loop { state_dir } => {
                Some(state_dir.join("volumes").join(format!("{id}.img")))
            }
            Backend::Ebs => None,
        }
    }

    /// The file holding a snapshot's data (loop backend).
    pub fn snapshot_file(&self, id: &str) -> Option<PathBuf> {
        match self {
            Backend::Loop { state_dir } => {
                Some(state_dir.join("snapshots").join(format!("{id}.img")))
            }
            Backend::Ebs => None,
        }
    }

    /// After CreateVolume: the loop backend makes the volume's file (a sparse copy of the source
    /// snapshot's, or an empty file). Safe to run twice.
    pub fn volume_created(
        &self,
        id: &str,
        size_gib: u64,
        snapshot: Option<&str>,
    ) -> Result<(), HostError> {
        let (Some(file), Backend::Loop { .. }) = (self.volume_file(id), self) else {
            return Ok(());
        };
        match snapshot {
            Some(snap) => {
                let src = self.snapshot_file(snap).unwrap_or_default();
                if !src.exists() {
                    return Err(HostError::Invalid(format!(
                        "snapshot {snap} has no data file {} in the loop backend's state directory: the loop backend can only start from images built with the same --state-dir",
                        src.display()
                    )));
                }
                sparse::copy(&src, &file, size_gib * GIB)?;
            }
            None => sparse::create(&file, size_gib * GIB)?,
        }
        Ok(())
    }

    /// After EC2 reports the attachment: the block device that holds the volume's data.
    /// Side effects: the loop backend claims a loop device (reusing one already backing the file).
    pub async fn attached(
        &self,
        volume_id: &str,
        attach_name: &str,
        nvme_device_path: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<PathBuf, HostError> {
        match self {
            Backend::Loop { .. } => {
                let file = self.volume_file(volume_id).unwrap_or_default();
                if let Some(dev) = loopdev::find_for_file(&file).into_iter().next() {
                    return Ok(dev);
                }
                loopdev::attach(&file)
            }
            Backend::Ebs => {
                let letter = attach_name
                    .trim_start_matches("/dev/")
                    .trim_start_matches("xvd")
                    .trim_start_matches("sd");
                let mut candidates = Vec::new();
                if let Some(p) = nvme_device_path {
                    candidates.push(PathBuf::from(p));
                } else if devices::is_nvme_host() {
                    candidates.push(devices::nvme_by_volume(volume_id));
                } else {
                    candidates.push(PathBuf::from(format!("/dev/xvd{letter}")));
                    candidates.push(PathBuf::from(format!("/dev/sd{letter}")));
                }
                devices::wait_for_node(&candidates, NODE_TIMEOUT, cancel).await
            }
        }
    }

    /// Whether `{{.Device}}` needs alias names so that `{{.Device}}N` names partition N.
    pub fn needs_aliases(&self, block_device: &Path) -> bool {
        block_device
            .display()
            .to_string()
            .ends_with(|c: char| c.is_ascii_digit())
    }

    /// Before DetachVolume: the loop backend releases the loop device. Safe to run twice.
    pub fn detaching(&self, volume_id: &str, block_device: Option<&Path>) -> Result<(), HostError> {
        if let Backend::Loop { .. } = self {
            if let Some(dev) = block_device {
                loopdev::detach(dev)?;
            }
            let file = self.volume_file(volume_id).unwrap_or_default();
            for dev in loopdev::find_for_file(&file) {
                loopdev::detach(&dev)?;
            }
        }
        Ok(())
    }

    /// After CreateSnapshot of a detached volume: the loop backend copies the volume's data.
    /// Returns the bytes of data copied (0 for EBS).
    pub fn snapshot_created(&self, volume_id: &str, snapshot_id: &str) -> Result<u64, HostError> {
        match (self.volume_file(volume_id), self.snapshot_file(snapshot_id)) {
            (Some(v), Some(s)) => sparse::copy(&v, &s, 0),
            _ => Ok(0),
        }
    }

    /// After CopyImage: the copy's snapshot gets the source snapshot's data.
    pub fn snapshot_copied(&self, from: &str, to: &str) -> Result<(), HostError> {
        match (self.snapshot_file(from), self.snapshot_file(to)) {
            (Some(a), Some(b)) if a.exists() => sparse::copy(&a, &b, 0).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// After DeleteSnapshot. Safe to run twice.
    pub fn snapshot_deleted(&self, id: &str) {
        if let Some(f) = self.snapshot_file(id) {
            let _ = std::fs::remove_file(f);
        }
    }

    /// After DeleteVolume. Safe to run twice.
    pub fn volume_deleted(&self, id: &str) {
        if let Some(f) = self.volume_file(id) {
            let _ = std::fs::remove_file(f);
        }
    }
}
