//! Block devices: choosing a free attachment point (locked per device, checked against the
//! instance's EC2 attachments and /dev), waiting for the device node (by volume id on NVMe), and
//! the alias names that make `{{.Device}}N` name partition N on every kind of host.

use super::HostError;
use super::lock::DeviceLock;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Device letters Packer tries, in order (`/dev/xvdf` .. `/dev/xvdp`).
pub const LETTERS: &str = "fghijklmnop";
/// Where kiln puts alias names for devices whose partitions do not follow `{dev}{N}`.
pub const ALIAS_DIR: &str = "/dev/kiln";
/// Partition aliases made per device: GPT allows more, real images use a handful.
pub const MAX_PARTITIONS: u32 = 16;
/// How often to look for a device node after an attachment.
const NODE_POLL: Duration = Duration::from_millis(100);

/// Picks a free attachment point `xvdX`, locking it for the whole build. `in_use` holds the
/// instance's attached device names as EC2 reports them (`/dev/sdf`, `/dev/xvdf`, ...).
///
/// Side effects: takes a lock (released when the returned lock is dropped).
pub fn allocate(
    lock_dir: &Path,
    in_use: &BTreeSet<String>,
) -> Result<(String, DeviceLock), HostError> {
    for l in LETTERS.chars() {
        let name = format!("xvd{l}");
        let taken = [format!("/dev/xvd{l}"), format!("/dev/sd{l}")]
            .iter()
            .any(|d| {
                in_use.contains(d) || Path::new(d).exists() || Path::new(&format!("{d}1")).exists()
            });
        if taken {
            continue;
        }
        if let Some(lock) = DeviceLock::try_lock(lock_dir, &name)? {
            return Ok((name, lock));
        }
    }
    Err(HostError::NoDevice(format!(
        "every attachment point /dev/xvd[{LETTERS}] is locked by another build, attached in EC2, or present in /dev"
    )))
}

/// The device node of an NVMe EBS volume: `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol...`.
pub fn nvme_by_volume(volume_id: &str) -> PathBuf {
    PathBuf::from(format!(
        "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{}",
        volume_id.replace('-', "")
    ))
}

/// Whether the host's EBS volumes appear as NVMe devices (Nitro).
pub fn is_nvme_host() -> bool {
    std::fs::read_dir("/sys/block")
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("nvme"))
        })
        .unwrap_or(false)
}

/// Waits until one of `candidates` exists; returns it resolved to the real node.
pub async fn wait_for_node(
    candidates: &[PathBuf],
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<PathBuf, HostError> {
    let start = Instant::now();
    loop {
        if let Some(found) = candidates.iter().find(|c| c.exists()) {
            return Ok(std::fs::canonicalize(found).unwrap_or_else(|_| found.clone()));
        }
        if start.elapsed() >= timeout {
            return Err(HostError::DeviceTimeout {
                path: candidates.first().cloned().unwrap_or_default(),
                seconds: timeout.as_secs(),
                hint: "; EC2 reports the volume attached, but the kernel did not create its node: check `lsblk` and the instance's attachments".into(),
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(NODE_POLL) => {}
            _ = cancel.cancelled() => return Err(HostError::Cancelled("waiting for the device node".into())),
        }
    }
}

/// The path of partition `n` of `dev`: `/dev/xvdf1`, `/dev/nvme1n1p1`, `/dev/loop3p1`.
pub fn partition_path(dev: &Path, n: u32) -> PathBuf {
    let s = dev.display().to_string();
    if s.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{s}p{n}"))
    } else {
        PathBuf::from(format!("{s}{n}"))
    }
}

/// Makes `{ALIAS_DIR}/{name}` point at `dev` and `{name}N` at its partition N, so templates can
/// write `{{.Device}}1` on NVMe and loop devices. Returns the alias of the whole device. Links to
/// partitions that do not exist yet dangle until the partition table is read. Safe to run twice.
pub fn make_aliases(name: &str, dev: &Path) -> Result<PathBuf, HostError> {
    let dir = Path::new(ALIAS_DIR);
    std::fs::create_dir_all(dir).map_err(HostError::io("creating", dir))?;
    let link = |from: PathBuf, to: &Path| -> Result<(), HostError> {
        let _ = std::fs::remove_file(&from);
        std::os::unix::fs::symlink(to, &from).map_err(HostError::io("linking", from))
    };
    let alias = dir.join(name);
    link(alias.clone(), dev)?;
    for n in 1..=MAX_PARTITIONS {
        link(dir.join(format!("{name}{n}")), &partition_path(dev, n))?;
    }
    Ok(alias)
}

/// Removes the aliases of `name` (safe to run twice).
pub fn remove_aliases(name: &str) {
    let dir = Path::new(ALIAS_DIR);
    let _ = std::fs::remove_file(dir.join(name));
    for n in 1..=MAX_PARTITIONS {
        let _ = std::fs::remove_file(dir.join(format!("{name}{n}")));
    }
}

/// Makes the kernel read `dev`'s partition table again (after pre-mount commands changed it),
/// with `partx --update`, which also works on loop devices where BLKRRPART does not.
pub async fn rescan_partitions(dev: &Path) -> Result<(), HostError> {
    let out = tokio::process::Command::new("partx")
        .arg("--update")
        .arg(dev)
        .output()
        .await
        .map_err(|e| HostError::Io {
            what: "running partx (apt-get install util-linux) for",
            path: dev.to_owned(),
            source: e,
        })?;
    // partx fails on a device without a partition table; that is fine (mount_partition 0).
    if !out.status.success() {
        tracing::debug!(device = %dev.display(), stderr = %String::from_utf8_lossy(&out.stderr).trim(), "partx --update");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names() {
        assert_eq!(
            partition_path(Path::new("/dev/xvdf"), 1),
            PathBuf::from("/dev/xvdf1")
        );
        assert_eq!(
            partition_path(Path::new("/dev/nvme1n1"), 2),
            PathBuf::from("/dev/nvme1n1p2")
        );
        assert_eq!(
            partition_path(Path::new("/dev/loop3"), 1),
            PathBuf::from("/dev/loop3p1")
        );
        assert_eq!(
            nvme_by_volume("vol-0abc"),
            PathBuf::from("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc")
        );
    }
}
