//! Mounts: which paths are mounted, private propagation for everything kiln mounts under a build's
//! mount path, and unmounting that finds and kills what holds a busy mount.

use super::{HostError, procs};
use nix::mount::{MntFlags, MsFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Attempts at unmounting a busy mount; each kills the chroot's processes first. Five tries with
/// the pause below cover a process that takes a moment to die after SIGKILL.
pub const UMOUNT_ATTEMPTS: u32 = 5;
/// Pause between unmount attempts.
pub const UMOUNT_PAUSE: Duration = Duration::from_millis(300);

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo (octal).
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.len() >= i + 4
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every mount point on the host (from /proc/self/mountinfo), in mount order.
pub fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

/// Mount points of `dev` or one of its partitions (`/dev/loop3`, `/dev/loop3p1`), deepest first.
/// Matched by device number (mountinfo's `major:minor`), never by name: `/dev/loop1` must not
/// match `/dev/loop10`, and a mount made through another name of the device still matches. A
/// device that no longer exists has no mounts.
pub fn mounts_of(dev: &Path) -> Vec<PathBuf> {
    let numbers = device_numbers(dev);
    if numbers.is_empty() {
        return Vec::new();
    }
    mounts_with_devices(
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        &numbers,
    )
}

/// The `major:minor` of block device `dev` and of each of its partitions (from sysfs).
fn device_numbers(dev: &Path) -> Vec<String> {
    use nix::sys::stat::{SFlag, major, minor, stat};
    let Ok(st) = stat(dev) else {
        return Vec::new();
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFBLK {
        return Vec::new();
    }
    let own = format!("{}:{}", major(st.st_rdev), minor(st.st_rdev));
    let mut numbers = vec![own.clone()];
    // /sys/dev/block/M:m is the device's sysfs directory; its partitions are subdirectories
    // holding a `partition` file, each with its own `dev`.
    if let Ok(entries) = std::fs::read_dir(format!("/sys/dev/block/{own}")) {
        for e in entries.flatten() {
            let p = e.path();
            if p.join("partition").exists()
                && let Ok(n) = std::fs::read_to_string(p.join("dev"))
            {
                numbers.push(n.trim().to_owned());
            }
        }
    }
    numbers
}

/// Mount points in `mountinfo` whose device (field 3, `major:minor`) is one of `numbers`,
/// deepest (last mounted) first.
fn mounts_with_devices(mountinfo: &str, numbers: &[String]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            let mut fields = l.split(' ');
            let number = fields.nth(2)?;
            let target = fields.nth(1)?;
            numbers
                .iter()
                .any(|n| n == number)
                .then(|| PathBuf::from(unescape(target)))
        })
        .collect();
    v.reverse();
    v
}

/// The id of the mount `fd` lives on (`mnt_id` in `/proc/self/fdinfo`).
pub fn mount_id_of(fd: &impl std::os::fd::AsFd) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let info =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// One line of mountinfo: (id, parent id, mount point).
fn mount_table(mountinfo: &str) -> Vec<(u64, u64, PathBuf)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.parse().ok()?,
                PathBuf::from(unescape(f.get(4)?)),
            ))
        })
        .collect()
}

/// The id of the newest mount at `path` whose parent is mount `parent`.
pub fn child_mount_at(parent: u64, path: &Path) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mount_table(&table)
        .into_iter()
        .filter(|(_, p, at)| *p == parent && at == path)
        .map(|(id, _, _)| id)
        .next_back()
}

/// Mount `id` and every mount stacked on or below it, deepest (last mounted) first, each with
/// its mount point now: the order to unmount them. Empty when `id` is no longer mounted.
fn tree_of(mountinfo: &str, id: u64) -> Vec<PathBuf> {
    let table = mount_table(mountinfo);
    let mut ids = vec![id];
    let mut out = Vec::new();
    for (mid, parent, at) in &table {
        if *mid == id || ids.contains(parent) {
            ids.push(*mid);
            out.push(at.clone());
        }
    }
    out.reverse();
    out
}

/// Unmounts the mount kiln made with id `id` (and whatever a provisioner mounted on or below
/// it), killing the chroot's processes first: exactly what kiln mounted, found by id, wherever
/// the image's links or renames moved it. A mount no longer there is fine (safe to run twice).
/// A mount point outside `chroot_root` is refused and named: kiln never made one there.
pub async fn unmount_id(id: u64, chroot_root: &Path) -> Result<(), HostError> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in tree_of(&table, id) {
        if !m.starts_with(chroot_root) {
            return Err(HostError::Invalid(format!(
                "mount {id} is now at {}, outside the image at {}: left mounted",
                m.display(),
                chroot_root.display()
            )));
        }
        unmount(&m, chroot_root).await?;
    }
    Ok(())
}

/// Whether `path` is a mount point.
pub fn is_mounted(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

/// Mount points at or below `root`, deepest (last mounted) first: the order to unmount them.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(root))
        .collect();
    v.reverse();
    v.dedup();
    v
}

/// Makes the mount at `path` private, so mounts below it never propagate to the host's other
/// mount points (and the host's never appear below it). Safe to run twice.
pub fn make_private(path: &Path) -> Result<(), HostError> {
    nix::mount::mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(HostError::sys("making the mount private", path))
}

/// Unmounts `path`: kills every process whose root is inside `chroot_root` first, retries while
/// busy, and names the holders when it gives up. Unmounting a path that is not mounted succeeds
/// (safe to run twice). Returns the processes it killed.
pub async fn unmount(path: &Path, chroot_root: &Path) -> Result<Vec<String>, HostError> {
    let mut killed = Vec::new();
    for attempt in 0..UMOUNT_ATTEMPTS {
        if !is_mounted(path) {
            return Ok(killed);
        }
        for p in procs::kill_in_root(chroot_root) {
            killed.push(p);
        }
        match nix::mount::umount2(path, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(killed),
            Err(nix::Error::EBUSY) if attempt + 1 < UMOUNT_ATTEMPTS => {
                tokio::time::sleep(UMOUNT_PAUSE).await;
            }
            Err(nix::Error::EBUSY) => {
                let holders = procs::holders(path);
                let holders = if holders.is_empty() {
                    "unknown (check `fuser -vm` on the path)".to_owned()
                } else {
                    holders.join(", ")
                };
                return Err(HostError::Busy {
                    path: path.to_owned(),
                    holders,
                });
            }
            Err(e) => {
                return Err(HostError::Sys {
                    what: "unmounting",
                    path: path.to_owned(),
                    source: e,
                });
            }
        }
    }
    Ok(killed)
}

/// Unmounts everything at or below `root`, deepest first (after a crash). Returns what it
/// unmounted; errors name the mount left behind.
pub async fn unmount_tree(root: &Path) -> Result<Vec<PathBuf>, HostError> {
    let mut done = Vec::new();
    for m in mounts_under(root) {
        unmount(&m, root).await?;
        done.push(m);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    /// `/dev/loop1`'s mounts are found by its device numbers (7:1 and its partition 259:3), not
    /// by name: `/dev/loop10` and `/dev/loop1p1`-lookalike names of other devices do not match.
    #[test]
    fn mounts_of_matches_device_numbers_not_name_prefixes() {
        let mountinfo = "\
29 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw
100 29 7:1 / /mnt/kiln-a rw - ext4 /dev/loop1 rw
101 29 7:10 / /mnt/kiln-b rw - ext4 /dev/loop10 rw
102 29 259:3 / /mnt/kiln-c rw - ext4 /dev/loop1p1 rw
103 102 0:55 / /mnt/kiln-c/proc rw - proc proc rw
104 29 259:9 / /mnt/kiln-d rw - ext4 /dev/loop19p1 rw
105 29 7:1 / /mnt/kiln\\040e rw - ext4 /dev/kiln/xvdf rw
";
        let found = super::mounts_with_devices(mountinfo, &["7:1".to_owned(), "259:3".to_owned()]);
        let found: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(found, ["/mnt/kiln e", "/mnt/kiln-c", "/mnt/kiln-a"]);
    }

    /// On this host: a missing device has no mounts, and `/` is found through its own device.
    #[test]
    fn mounts_of_a_missing_device_is_empty() {
        assert!(super::mounts_of(std::path::Path::new("/dev/kiln-no-such-device")).is_empty());
    }

    /// A mount's tree is found by id and parent ids, deepest first; not by path prefix.
    #[test]
    fn tree_of_follows_parent_ids() {
        let mountinfo = "\
29 1 259:1 / / rw - ext4 /dev/root rw
100 29 7:1 / /mnt/kiln rw - ext4 /dev/loop1 rw
101 100 0:50 / /mnt/kiln/tmp/y rw - tmpfs kiln-x rw
102 101 0:51 / /mnt/kiln/tmp/y/inner rw - tmpfs other rw
103 29 0:52 / /mnt/kiln/tmp/y-not-mine rw - tmpfs other rw
";
        let got = super::tree_of(mountinfo, 101);
        let got: Vec<String> = got.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(got, ["/mnt/kiln/tmp/y/inner", "/mnt/kiln/tmp/y"]);
        assert!(super::tree_of(mountinfo, 999).is_empty());
    }

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(super::unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(super::unescape("/plain"), "/plain");
    }
}
