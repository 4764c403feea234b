//! Where a volume's data lives and how it appears as a block device.
//!
//! - `ebs`: a real EBS attachment on a builder instance; the device node appears when EC2
//!   attaches the volume: `/dev/xvdf` or `/dev/sdf` on Xen hosts, `/dev/nvmeXn1` found by the
//!   volume id (udev's `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol...`) on Nitro ones.
//!   [`Devices`] says how the host names them: seen from the host's own devices, or set where
//!   that cannot be seen (the emulator's builder hosts keep their nodes in a directory of their
//!   own). The suite and the demo run this backend against the emulator, whose attachments are
//!   real loop devices with the nodes EC2 would make.
//! - `loop`: the volume's data in a sparse file next to kiln, a loop device for the attachment
//!   (EC2 calls still go to the EC2 API, whose volumes then hold no data). Kept for the `qemu`
//!   boot-test method, which boots that local file; never for a pool.
//! - `direct`: no volume at all. The source snapshot's blocks are read with the EBS direct APIs
//!   into a sparse file (cached by snapshot id under `direct/cache/`), the build works on a copy
//!   of it (`direct/work/`) through a loop device, and only the blocks that differ from the
//!   source are written to a child snapshot in each region (`crate::ebs`, steps `read-source`
//!   and `upload-delta`).
//!
//! The pipeline is the same for both; only these hooks differ.

use crate::host::{HostError, devices, loopdev, sparse};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a device node may take to appear after EC2 reports the attachment. NVMe nodes and
/// udev's by-id links usually appear within a second; a minute covers a busy host.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(60);
/// Where a host's device nodes are, unless a setting says otherwise.
pub const DEVICE_DIR: &str = "/dev";
const GIB: u64 = 1 << 30;

/// How the builder host names an attached EBS volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Naming {
    /// Nitro when the host's own disks are NVMe (`/sys/block/nvme*`), Xen otherwise.
    #[default]
    Auto,
    /// `/dev/xvdf` or `/dev/sdf`, as the attachment's device name says.
    Xen,
    /// `/dev/nvmeXn1`, found by the volume id in `disk/by-id`.
    Nitro,
}

impl std::str::FromStr for Naming {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Naming::Auto),
            "xen" => Ok(Naming::Xen),
            "nitro" => Ok(Naming::Nitro),
            other => Err(format!(
                "device naming {other:?}: use auto (from the host's own disks), xen or nitro"
            )),
        }
    }
}

/// Where and how attached volumes appear on this host (the `ebs` backend).
#[derive(Debug, Clone)]
pub struct Devices {
    /// The host's device directory (`/dev`).
    pub dir: PathBuf,
    /// Xen or Nitro names.
    pub naming: Naming,
    /// How long a node may take to appear after EC2 reports the attachment.
    pub node_timeout: Duration,
}

impl Default for Devices {
    fn default() -> Self {
        Devices {
            dir: PathBuf::from(DEVICE_DIR),
            naming: Naming::Auto,
            node_timeout: NODE_TIMEOUT,
        }
    }
}

impl Devices {
    /// Whether attached volumes appear as NVMe devices. Reads `/sys/block` for `auto`.
    pub fn nitro(&self) -> bool {
        match self.naming {
            Naming::Auto => devices::is_nvme_host(),
            Naming::Xen => false,
            Naming::Nitro => true,
        }
    }

    /// The paths where volume `volume_id`, attached as `attach_name` (`/dev/sdf`), may appear,
    /// in order: the template's `nvme_device_path` if set, else the by-id link on Nitro hosts,
    /// else the Xen names of the same letter. Pure but for `auto`'s look at `/sys/block`.
    pub fn candidates(
        &self,
        volume_id: &str,
        attach_name: &str,
        nvme_device_path: Option<&str>,
    ) -> Vec<PathBuf> {
        let letter = attach_name
            .trim_start_matches("/dev/")
            .trim_start_matches("xvd")
            .trim_start_matches("sd");
        if let Some(p) = nvme_device_path {
            vec![PathBuf::from(p)]
        } else if self.nitro() {
            vec![devices::nvme_by_volume(&self.dir, volume_id)]
        } else {
            vec![
                self.dir.join(format!("xvd{letter}")),
                self.dir.join(format!("sd{letter}")),
            ]
        }
    }
}

/// The backend chosen for a build (explicitly: a flag or config, never guessed).
#[derive(Debug, Clone)]
pub enum Backend {
    /// Real EBS attachments.
    Ebs(Devices),
    /// Sparse files and loop devices under a state directory.
    Loop {
        /// Holds `volumes/` and `snapshots/`.
        state_dir: PathBuf,
    },
    /// EBS direct APIs and a local sparse file per build.
    Direct {
        /// Holds `direct/cache/` and `direct/work/`.
        state_dir: PathBuf,
    },
}

impl Backend {
    /// The host's device directory (`/dev` for the loop backend).
    pub fn device_dir(&self) -> &Path {
        match self {
            Backend::Ebs(d) => &d.dir,
            Backend::Loop { .. } | Backend::Direct { .. } => Path::new(DEVICE_DIR),
        }
    }

    /// Whether this is the `direct` backend (its steps differ: `read-source`, `upload-delta`,
    /// `register-regions`).
    pub fn is_direct(&self) -> bool {
        matches!(self, Backend::Direct { .. })
    }

    /// The direct backend's cache of source snapshots (`None` for the others).
    pub fn snapshot_cache(&self) -> Option<crate::ebs::cache::Cache> {
        match self {
            Backend::Direct { state_dir } => Some(crate::ebs::cache::Cache::new(
                state_dir.join("direct").join("cache"),
            )),
            _ => None,
        }
    }

    /// The direct backend's working image for the build `key` names (`None` for the others).
    /// `key` is hashed: the file name never carries a build id's characters.
    pub fn work_file(&self, key: &str) -> Option<PathBuf> {
        use sha2::Digest as _;
        let Backend::Direct { state_dir } = self else {
            return None;
        };
        let hash = sha2::Sha256::digest(key.as_bytes());
        let name: String = hash[..12].iter().map(|b| format!("{b:02x}")).collect();
        Some(
            state_dir
                .join("direct")
                .join("work")
                .join(format!("work-{name}.img")),
        )
    }

    /// The backend's name (`ebs` or `loop`).
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Ebs(_) => "ebs",
            Backend::Loop { .. } => "loop",
            Backend::Direct { .. } => "direct",
        }
    }

    /// The file holding a volume's data (loop backend).
    pub fn volume_file(&self, id: &str) -> Option<PathBuf> {
        match self {
            Backend::Loop { state_dir } => {
                Some(state_dir.join("volumes").join(format!("{id}.img")))
            }
            Backend::Ebs(_) | Backend::Direct { .. } => None,
        }
    }

    /// The file holding a snapshot's data (loop backend).
    pub fn snapshot_file(&self, id: &str) -> Option<PathBuf> {
        match self {
            Backend::Loop { state_dir } => {
                Some(state_dir.join("snapshots").join(format!("{id}.img")))
            }
            Backend::Ebs(_) | Backend::Direct { .. } => None,
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
            Backend::Direct { .. } => Err(HostError::Invalid(format!(
                "the direct backend attaches no volume ({volume_id}): kiln bug"
            ))),
            Backend::Ebs(d) => {
                let candidates = d.candidates(volume_id, attach_name, nvme_device_path);
                devices::wait_for_node(&candidates, d.node_timeout, cancel)
                    .await
                    .map_err(|e| match e {
                        HostError::DeviceTimeout { path, seconds, .. } => HostError::DeviceTimeout {
                            path,
                            seconds,
                            hint: format!(
                                " (volume {volume_id}, attached as {attach_name}; looked for {}): EC2 reports the volume attached, but the host shows no node for it: check `lsblk` and the instance's attachments{}",
                                candidates
                                    .iter()
                                    .map(|c| c.display().to_string())
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                if nvme_device_path.is_none() && !d.nitro() {
                                    "; on a Nitro host whose own disks are not NVMe, set device_naming = \"nitro\""
                                } else {
                                    ""
                                }
                            ),
                        },
                        other => other,
                    })
            }
        }
    }

    /// The node volume `volume_id`, attached to this host as `attach_name`, has right now (ebs;
    /// `None` when the host shows none, and always for loop, whose devices follow the file).
    /// Read only: a resumed build finds what its dead attempt left mounted.
    pub fn node_now(
        &self,
        volume_id: &str,
        attach_name: &str,
        nvme_device_path: Option<&str>,
    ) -> Option<PathBuf> {
        let Backend::Ebs(d) = self else { return None };
        d.candidates(volume_id, attach_name, nvme_device_path)
            .iter()
            .find_map(|c| std::fs::canonicalize(c).ok())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(naming: Naming) -> Devices {
        Devices {
            dir: PathBuf::from("/dev/kiln-ebs/e1/h"),
            naming,
            node_timeout: NODE_TIMEOUT,
        }
    }

    #[test]
    fn candidates_follow_the_hosts_naming() {
        assert_eq!(
            devices(Naming::Xen).candidates("vol-0abc", "/dev/sdg", None),
            vec![
                PathBuf::from("/dev/kiln-ebs/e1/h/xvdg"),
                PathBuf::from("/dev/kiln-ebs/e1/h/sdg")
            ]
        );
        assert_eq!(
            devices(Naming::Nitro).candidates("vol-0abc", "/dev/sdg", None),
            vec![PathBuf::from(
                "/dev/kiln-ebs/e1/h/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc"
            )]
        );
        // The template's nvme_device_path wins on every host, as in Packer.
        assert_eq!(
            devices(Naming::Xen).candidates("vol-0abc", "/dev/sdg", Some("/dev/nvme3n1")),
            vec![PathBuf::from("/dev/nvme3n1")]
        );
    }

    #[test]
    fn naming_parses_and_refuses_with_the_choices() {
        assert_eq!("xen".parse::<Naming>(), Ok(Naming::Xen));
        assert_eq!("nitro".parse::<Naming>(), Ok(Naming::Nitro));
        assert_eq!("auto".parse::<Naming>(), Ok(Naming::Auto));
        let e = "kvm".parse::<Naming>().unwrap_err();
        assert!(e.contains("xen") && e.contains("nitro"), "{e}");
    }
}
