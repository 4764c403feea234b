//! Block devices: choosing a free attachment point (locked per device, checked against the
//! instance's EC2 attachments and /dev), waiting for the device node (by volume id on NVMe), and
//! the alias names that make `{{.Device}}N` name partition N on every kind of host.
//!
//! Aliases are made only for validated device names ([`is_device_name`]: `xvd[f-p]`, `sd[f-p]`)
//! and only in [`ALIAS_DIR`]; each link is written down (path and target) in the device's record
//! under [`ALIAS_RECORD_DIR`] before it is made, and [`remove_aliases`] removes exactly the links
//! recorded there that still are those links: never a path built from a pattern.

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
/// Where kiln records the alias links it made, one file per device name (`path<TAB>target` a
/// line): what [`remove_aliases`] may remove. `/run` is a tmpfs, like the links in `/dev`.
pub const ALIAS_RECORD_DIR: &str = "/run/kiln/aliases";
/// Partition aliases made per device: GPT allows more, real images use a handful.
pub const MAX_PARTITIONS: u32 = 16;
/// How often to look for a device node after an attachment.
const NODE_POLL: Duration = Duration::from_millis(100);
/// How long partition nodes may take after the kernel read a partition table: udev makes them
/// within milliseconds on an idle host; seconds cover a busy one.
const PARTITION_NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often to look for them: the next command waits on this, so it is short.
const PARTITION_POLL: Duration = Duration::from_millis(10);

/// Whether `name` is an attachment point name kiln uses (`xvdf`..`xvdp`, `sdf`..`sdp`): the
/// only names it makes lock files and aliases for. Pure.
pub fn is_device_name(name: &str) -> bool {
    name.strip_prefix("xvd")
        .or_else(|| name.strip_prefix("sd"))
        .is_some_and(|l| l.len() == 1 && LETTERS.contains(l))
}

/// The attachment point name of `device_path` (`/dev/sdf` -> `sdf`), refused unless it is one
/// of kiln's ([`is_device_name`]). Pure.
pub fn device_name_of(device_path: &str) -> Result<String, HostError> {
    match device_path.strip_prefix("/dev/") {
        Some(n) if is_device_name(n) => Ok(n.to_owned()),
        _ => Err(HostError::Invalid(format!(
            "device_path {device_path:?} is not an attachment point /dev/sd[f-p] or /dev/xvd[f-p]"
        ))),
    }
}

/// Picks a free attachment point `xvdX`, locking it for the whole build. `in_use` holds the
/// instance's attached device names as EC2 reports them (`/dev/sdf`, `/dev/xvdf`, ...); `dev`
/// is the host's device directory, where a Xen host shows what is attached.
///
/// Side effects: takes a lock (released when the returned lock is dropped).
pub fn allocate(
    lock_dir: &Path,
    in_use: &BTreeSet<String>,
    dev: &Path,
) -> Result<(String, DeviceLock), HostError> {
    for l in LETTERS.chars() {
        let name = format!("xvd{l}");
        let taken = [format!("xvd{l}"), format!("sd{l}")].iter().any(|d| {
            in_use.contains(&format!("/dev/{d}"))
                || dev.join(d).exists()
                || dev.join(format!("{d}1")).exists()
        });
        if taken {
            continue;
        }
        if let Some(lock) = DeviceLock::try_lock(lock_dir, &name)? {
            if left_by_a_dead_holder(lock_dir, &name) {
                continue; // the lock is released again; the sweep or the build's resume cleans up
            }
            return Ok((name, lock));
        }
    }
    Err(HostError::NoDevice(format!(
        "every attachment point /dev/xvd[{LETTERS}] is locked by another build, attached in EC2, present in /dev, or still holds what a crashed build left (a worker's start-up sweep removes it)"
    )))
}

/// Whether the last holder of lock `name` (free now: it died, or kept its build with
/// `--on-error=abort`) left that build in place: a kept note, or its device still mounted (the
/// build's mount path would be taken). Reading only.
fn left_by_a_dead_holder(lock_dir: &Path, name: &str) -> bool {
    let Some(note) = DeviceLock::read_note(lock_dir, name) else {
        return false;
    };
    DeviceLock::is_kept(&note)
        || note
            .split_whitespace()
            .nth(1)
            .is_some_and(|dev| !super::mount::mounts_of(Path::new(dev)).is_empty())
}

/// The by-id link to an NVMe EBS volume's node in the host's device directory `dev`
/// (`/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol...`, the volume id without `-`). Pure.
pub fn nvme_by_volume(dev: &Path, volume_id: &str) -> PathBuf {
    dev.join("disk/by-id").join(format!(
        "nvme-Amazon_Elastic_Block_Store_{}",
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

/// Waits until one of `candidates` exists; returns it resolved to the real node. Read only.
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
/// partitions that do not exist yet dangle until the partition table is read.
///
/// Side effects: creates the links and records each (before making it) in the device's record
/// under [`ALIAS_RECORD_DIR`]. Refuses a `name` that is not a device name kiln uses, and a path
/// where something kiln did not record is in the way (it is left as it is). Safe to run twice:
/// the links an earlier run recorded are removed first.
pub fn make_aliases(name: &str, dev: &Path) -> Result<PathBuf, HostError> {
    make_aliases_in(Path::new(ALIAS_DIR), Path::new(ALIAS_RECORD_DIR), name, dev)
}

fn make_aliases_in(
    dir: &Path,
    records: &Path,
    name: &str,
    dev: &Path,
) -> Result<PathBuf, HostError> {
    use std::io::Write;
    if !is_device_name(name) {
        return Err(HostError::Invalid(format!(
            "{name:?} is not a device name kiln makes aliases for (xvd[f-p] or sd[f-p])"
        )));
    }
    remove_aliases_in(dir, records, name);
    for d in [dir, records] {
        std::fs::create_dir_all(d).map_err(HostError::io("creating", d))?;
        if !std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()) {
            return Err(HostError::Invalid(format!(
                "{} is not a directory",
                d.display()
            )));
        }
    }
    let record_path = records.join(name);
    let mut record = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&record_path)
        .map_err(HostError::io("opening the alias record", &record_path))?;
    let mut link = |from: PathBuf, to: &Path| -> Result<(), HostError> {
        writeln!(record, "{}\t{}", from.display(), to.display())
            .map_err(HostError::io("writing the alias record", &record_path))?;
        std::os::unix::fs::symlink(to, &from).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                HostError::Invalid(format!(
                    "{} exists and kiln did not make it (it is not in {}): left as it is; remove it if no build uses it",
                    from.display(),
                    record_path.display()
                ))
            } else {
                HostError::io("linking", &from)(e)
            }
        })
    };
    let alias = dir.join(name);
    link(alias.clone(), dev)?;
    for n in 1..=MAX_PARTITIONS {
        link(dir.join(format!("{name}{n}")), &partition_path(dev, n))?;
    }
    Ok(alias)
}

/// Removes the aliases of `name` that kiln recorded ([`make_aliases`]): each recorded path in
/// [`ALIAS_DIR`] that is still a link to the recorded target, then the record. Anything else
/// (another file at such a path, a name that is not a device name kiln uses) is left alone.
/// Safe to run twice.
pub fn remove_aliases(name: &str) {
    remove_aliases_in(Path::new(ALIAS_DIR), Path::new(ALIAS_RECORD_DIR), name);
}

fn remove_aliases_in(dir: &Path, records: &Path, name: &str) {
    if !is_device_name(name) {
        tracing::warn!(
            name,
            "not a device name kiln makes aliases for: nothing removed"
        );
        return;
    }
    let record_path = records.join(name);
    let Ok(text) = std::fs::read_to_string(&record_path) else {
        return;
    };
    for line in text.lines() {
        let Some((path, target)) = line.split_once('\t') else {
            continue;
        };
        let path = Path::new(path);
        if path.parent() != Some(dir) {
            continue;
        }
        match std::fs::read_link(path) {
            Ok(t) if t == Path::new(target) => {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(alias = %path.display(), error = %e, "could not remove an alias");
                }
            }
            Ok(_) => {
                tracing::warn!(alias = %path.display(), "the alias now leads elsewhere: left as it is");
            }
            Err(_) => {}
        }
    }
    let _ = std::fs::remove_file(&record_path);
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
    wait_for_partition_nodes(dev).await;
    Ok(())
}

/// The device number (`major:minor`) of the node at `path` (links followed), if it is one.
fn devt_of(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(path).ok()?.rdev();
    Some(format!(
        "{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    ))
}

/// The partitions the kernel holds for block device `dev` (from sysfs): their numbers and
/// device numbers, by number. Read only.
pub fn kernel_partitions(dev: &Path) -> Vec<(u32, String)> {
    let Some(devt) = devt_of(dev) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, String)> = std::fs::read_dir(format!("/sys/dev/block/{devt}"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = std::fs::read_to_string(e.path().join("partition")).ok()?;
            let d = std::fs::read_to_string(e.path().join("dev")).ok()?;
            Some((n.trim().parse().ok()?, d.trim().to_owned()))
        })
        .collect();
    found.sort_unstable();
    found
}

/// Waits (at most [`PARTITION_NODE_TIMEOUT`]) until every partition the kernel holds for `dev`
/// has its node, with its device number, under `dev`'s naming (`xvdf1`, `nvme1n1p1`): udev makes them after the kernel
/// reads the table, so a command that runs next would otherwise race it. A node that does not
/// come is logged; the mount that needs it fails with its name. Read only.
async fn wait_for_partition_nodes(dev: &Path) {
    let start = Instant::now();
    loop {
        // A node of a partition the kernel made again may still carry the old number.
        let missing: Vec<PathBuf> = kernel_partitions(dev)
            .into_iter()
            .map(|(n, devt)| (partition_path(dev, n), devt))
            .filter(|(p, devt)| devt_of(p).as_ref() != Some(devt))
            .map(|(p, _)| p)
            .collect();
        if missing.is_empty() {
            return;
        }
        if start.elapsed() >= PARTITION_NODE_TIMEOUT {
            tracing::warn!(device = %dev.display(), missing = ?missing, "partition nodes did not appear");
            return;
        }
        tokio::time::sleep(PARTITION_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dirs(PathBuf);
    impl Dirs {
        fn new() -> Self {
            let d = std::env::temp_dir().join(format!(
                "kiln-aliases-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(&d).unwrap();
            Dirs(d)
        }
        fn aliases(&self) -> PathBuf {
            self.0.join("dev-kiln")
        }
        fn records(&self) -> PathBuf {
            self.0.join("records")
        }
    }
    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn device_names() {
        for ok in ["xvdf", "xvdp", "sdf", "sdk"] {
            assert!(is_device_name(ok), "{ok}");
        }
        for bad in [
            "",
            "xvda",
            "sdq",
            "xvdf1",
            "../../../tmp/x",
            "xvd",
            "nvme1n1",
            "xvdf/",
        ] {
            assert!(!is_device_name(bad), "{bad}");
        }
        assert_eq!(device_name_of("/dev/xvdg").unwrap(), "xvdg");
        assert!(device_name_of("/dev/../../../tmp/x").is_err());
        assert!(device_name_of("xvdg").is_err());
    }

    /// Aliases are made for device names only, and removing them removes exactly the links made:
    /// not a file put where one was, not a file next to them, nothing for a name with `..`.
    #[test]
    fn aliases_remove_only_what_was_made() {
        let d = Dirs::new();
        let (dir, rec) = (d.aliases(), d.records());
        let dev = Path::new("/dev/loop77");
        let alias = make_aliases_in(&dir, &rec, "xvdf", dev).unwrap();
        assert_eq!(std::fs::read_link(&alias).unwrap(), dev);
        assert_eq!(
            std::fs::read_link(dir.join("xvdf2")).unwrap(),
            Path::new("/dev/loop77p2")
        );
        // Safe to run twice.
        make_aliases_in(&dir, &rec, "xvdf", dev).unwrap();
        // Someone else's files: one next to the aliases, one in place of an alias.
        std::fs::write(dir.join("xvdf17"), "other").unwrap();
        std::fs::remove_file(dir.join("xvdf3")).unwrap();
        std::fs::write(dir.join("xvdf3"), "replaced").unwrap();
        remove_aliases_in(&dir, &rec, "xvdf");
        assert!(std::fs::symlink_metadata(&alias).is_err());
        assert!(std::fs::symlink_metadata(dir.join("xvdf1")).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.join("xvdf17")).unwrap(),
            "other"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("xvdf3")).unwrap(),
            "replaced"
        );
        assert!(!rec.join("xvdf").exists());
        // Something kiln did not make is in the way: refused, left as it is.
        let e = make_aliases_in(&dir, &rec, "xvdf", dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("xvdf3") && e.contains("did not make"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.join("xvdf3")).unwrap(),
            "replaced"
        );
        // A name with `..`: nothing made, nothing removed.
        let victim = d.0.join("victim");
        std::fs::write(&victim, "host file").unwrap();
        std::fs::write(d.0.join("victim1"), "host file").unwrap();
        assert!(make_aliases_in(&dir, &rec, "../victim", dev).is_err());
        remove_aliases_in(&dir, &rec, "../victim");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file");
        assert_eq!(
            std::fs::read_to_string(d.0.join("victim1")).unwrap(),
            "host file"
        );
    }

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
            nvme_by_volume(Path::new("/dev"), "vol-0abc"),
            PathBuf::from("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc")
        );
    }
}
