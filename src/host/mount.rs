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

/// Mount points whose source is `dev` or one of its partitions (`/dev/loop3`, `/dev/loop3p1`),
/// deepest first.
pub fn mounts_of(dev: &Path) -> Vec<PathBuf> {
    let d = dev.display().to_string();
    let mut v: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let source = right.split(' ').nth(1)?;
            let target = left.split(' ').nth(4)?;
            let ok = source == d
                || source.strip_prefix(d.as_str()).is_some_and(|rest| {
                    rest.starts_with('p') || rest.chars().all(|c| c.is_ascii_digit())
                });
            ok.then(|| PathBuf::from(unescape(target)))
        })
        .collect();
    v.reverse();
    v
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
        match nix::mount::umount2(path, MntFlags::empty()) {
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
    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(super::unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(super::unescape("/plain"), "/plain");
    }
}
