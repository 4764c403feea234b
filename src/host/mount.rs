//! Mounts: which paths are mounted, private propagation and `nodev,nosuid` for everything kiln
//! mounts under a build's mount path, and unmounting that finds and kills what holds a busy mount.
//!
//! What kiln mounted is identified by its kernel mount id (mountinfo field 1), recorded when kiln
//! made it, and unmounted by that id only: never "everything under a path", which would take a
//! mount someone else made there (and kill the processes in it).

use super::{HostError, procs};
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::sys::statvfs::FsFlags;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
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
fn tree_of(mountinfo: &str, id: u64) -> Vec<(u64, PathBuf)> {
    let table = mount_table(mountinfo);
    let mut ids = vec![id];
    let mut out = Vec::new();
    for (mid, parent, at) in &table {
        if *mid == id || ids.contains(parent) {
            ids.push(*mid);
            out.push((*mid, at.clone()));
        }
    }
    out.reverse();
    out
}

/// Opens directory `path` on the host as an `O_PATH` handle, without following a final link.
/// No side effects.
pub fn open_dir(path: &Path) -> Result<OwnedFd, HostError> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(HostError::sys("opening the directory", path))
}

/// The id of the mount directory `path` is on now (at a mount point: the topmost mount there).
/// `None` when it cannot be opened. No side effects.
pub fn mount_id_at(path: &Path) -> Option<u64> {
    open_dir(path).ok().and_then(|fd| mount_id_of(&fd))
}

/// Whether something is mounted on directory `path`: its mount is not its parent's. Found by
/// mount ids, not by comparing paths, so a bind mount of the same file system counts too.
/// No side effects.
pub fn is_mount_root(path: &Path) -> bool {
    let Ok(fd) = open_dir(path) else {
        return false;
    };
    let Ok(parent) = nix::fcntl::openat(
        &fd,
        "..",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    matches!((mount_id_of(&fd), mount_id_of(&parent)), (Some(a), Some(b)) if a != b)
}

fn proc_fd(fd: &impl AsFd) -> String {
    format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())
}

/// Makes the mount whose root `fd` is private (see [`make_private`]); `path` is for messages.
/// Safe to run twice.
pub fn make_private_at(fd: &impl AsFd, path: &Path) -> Result<(), HostError> {
    nix::mount::mount(
        None::<&str>,
        proc_fd(fd).as_str(),
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(HostError::sys("making the mount private", path))
}

/// Makes the mount whose root `fd` is `nodev,nosuid`, keeping its other per-mount flags
/// (read-only, noexec, atime): a bind remount, which changes no file system option. `path` is
/// for messages. Safe to run twice.
pub fn restrict_at(fd: &impl AsFd, path: &Path) -> Result<(), HostError> {
    let st = nix::sys::statvfs::fstatvfs(fd.as_fd())
        .map_err(HostError::sys("reading the mount flags of", path))?;
    let have = st.flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    for (st_flag, ms_flag) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if have.contains(st_flag) {
            flags |= ms_flag;
        }
    }
    if !have.intersects(FsFlags::ST_NOATIME | FsFlags::ST_RELATIME) {
        flags |= MsFlags::MS_STRICTATIME;
    }
    nix::mount::mount(
        None::<&str>,
        proc_fd(fd).as_str(),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(HostError::sys("remounting nodev,nosuid", path))
}

/// Checks that the mount whose root `fd` is carries `nodev` and `nosuid`. No side effects.
pub fn ensure_restricted(fd: &impl AsFd, path: &Path) -> Result<(), HostError> {
    let st = nix::sys::statvfs::fstatvfs(fd.as_fd())
        .map_err(HostError::sys("reading the mount flags of", path))?;
    if st.flags().contains(FsFlags::ST_NODEV | FsFlags::ST_NOSUID) {
        Ok(())
    } else {
        Err(HostError::Invalid(format!(
            "{} is mounted without nodev,nosuid: kiln mounts every image nodev,nosuid so that device nodes and setuid files in it stay inert",
            path.display()
        )))
    }
}

/// Takes over mount `id` at kiln's own directory `path` (the mount a `mount` command just made):
/// checks that it is the mount at `path` and makes it private.
///
/// Side effects: changes that mount's propagation. Safe to run twice.
pub fn seal(id: u64, path: &Path) -> Result<(), HostError> {
    let fd = owned_mount(id, path)?;
    make_private_at(&fd, path)
}

/// Makes kiln's mount `id` at `path` `nodev,nosuid` and checks that it is. Runs once the host's
/// own `post_mount_commands` are done (debootstrap makes device nodes in the image and checks
/// that it can), before kiln's first file operation in the image or its first process there.
///
/// Side effects: changes that mount's flags (not the file system's). Safe to run twice.
pub fn restrict(id: u64, path: &Path) -> Result<(), HostError> {
    let fd = owned_mount(id, path)?;
    restrict_at(&fd, path)?;
    ensure_restricted(&fd, path)
}

/// A handle on the root of mount `id`, which must be the mount at `path`.
fn owned_mount(id: u64, path: &Path) -> Result<OwnedFd, HostError> {
    let fd = open_dir(path)?;
    if mount_id_of(&fd) != Some(id) {
        return Err(HostError::Invalid(format!(
            "mount {id} is no longer the mount at {}",
            path.display()
        )));
    }
    Ok(fd)
}

/// Lazily detaches mount `id` at `path` if it is still the mount there (cleanup after a mount
/// kiln just made could not be set up). Best effort: failures are logged.
pub fn detach_id(id: u64, path: &Path) {
    if mount_id_at(path) != Some(id) {
        return;
    }
    if let Err(e) = nix::mount::umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        tracing::warn!(mount = id, path = %path.display(), error = %e, "could not detach a mount kiln just made");
    }
}

/// The mount whose mount point is exactly `chroot_root` (the image's root mount), when `id` is
/// that mount or one on or below it, and it is not the host's own root mount: the processes
/// rooted on it are the chroot's. `None` otherwise (never the mount a plain directory is on).
fn image_root_mount(mountinfo: &str, chroot_root: &Path, id: u64) -> Option<u64> {
    let root = mount_id_at(chroot_root)?;
    let at_root = mount_table(mountinfo)
        .iter()
        .any(|(i, _, at)| *i == root && at == chroot_root);
    let holds_id = tree_of(mountinfo, root).iter().any(|(i, _)| *i == id);
    (at_root && holds_id && Some(root) != mount_id_at(Path::new("/"))).then_some(root)
}

/// Unmounts the mount kiln made with id `id` (and whatever a provisioner mounted on or below
/// it), killing the processes rooted in the image first: exactly what kiln mounted, found by id,
/// wherever the image's links or renames moved it. A mount no longer there is fine (safe to run
/// twice). A mount point outside `chroot_root` is refused and named: kiln never made one there.
///
/// The processes killed are those whose root directory is on mount `id`, a mount on or below
/// it, or the image's root mount at `chroot_root` (see [`image_root_mount`]), found by mount id:
/// never a process in a mount someone else made at the same path, nor one rooted on the host's
/// own root mount.
pub async fn unmount_id(id: u64, chroot_root: &Path) -> Result<(), HostError> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let tree = tree_of(&table, id);
    for (_, m) in &tree {
        if !m.starts_with(chroot_root) {
            return Err(HostError::Invalid(format!(
                "mount {id} is now at {}, outside the image at {}: left mounted",
                m.display(),
                chroot_root.display()
            )));
        }
    }
    let mut kill: Vec<u64> = tree.iter().map(|(i, _)| *i).collect();
    if let Some(root) = image_root_mount(&table, chroot_root, id) {
        kill.push(root);
    }
    for (mid, m) in &tree {
        unmount_exact(*mid, m, &kill).await?;
    }
    Ok(())
}

/// One unmount attempt of `path` (not following a final link): `true` once nothing is mounted
/// there, `false` after a pause when it was busy and attempt `attempt` may be retried; the busy
/// error (naming the holders) on the last attempt.
async fn umount_once(path: &Path, attempt: u32) -> Result<bool, HostError> {
    match nix::mount::umount2(path, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(true),
        Err(nix::Error::EBUSY) if attempt + 1 < UMOUNT_ATTEMPTS => {
            tokio::time::sleep(UMOUNT_PAUSE).await;
            Ok(false)
        }
        Err(nix::Error::EBUSY) => Err(busy(path)),
        Err(e) => Err(HostError::Sys {
            what: "unmounting",
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Unmounts mount `id` at `path`, after checking that it is the mount there, killing the
/// processes rooted on mounts `kill` first and retrying while busy.
async fn unmount_exact(id: u64, path: &Path, kill: &[u64]) -> Result<(), HostError> {
    for attempt in 0..UMOUNT_ATTEMPTS {
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if !mount_table(&table).iter().any(|(i, _, _)| *i == id) {
            return Ok(());
        }
        // The handle this opens is closed again before the unmount (it would keep it busy).
        if mount_id_at(path) != Some(id) {
            return Err(HostError::Invalid(format!(
                "mount {id} is no longer the mount at {}: left mounted",
                path.display()
            )));
        }
        procs::kill_rooted_on(kill);
        if umount_once(path, attempt).await? {
            return Ok(());
        }
    }
    Ok(())
}

fn busy(path: &Path) -> HostError {
    let holders = procs::holders(path);
    let holders = if holders.is_empty() {
        "unknown (check `fuser -vm` on the path)".to_owned()
    } else {
        holders.join(", ")
    };
    HostError::Busy {
        path: path.to_owned(),
        holders,
    }
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
/// busy, and names the holders when it gives up. By path: only for mounts found by what they
/// are (a dead build's device, [`mounts_of`]); a build's own mounts go through [`unmount_id`]. Unmounting a path that is not mounted succeeds
/// (safe to run twice). Returns the processes it killed.
pub async fn unmount(path: &Path, chroot_root: &Path) -> Result<Vec<String>, HostError> {
    let mut killed = Vec::new();
    for attempt in 0..UMOUNT_ATTEMPTS {
        if !is_mounted(path) {
            return Ok(killed);
        }
        killed.extend(procs::kill_in_root(chroot_root));
        if umount_once(path, attempt).await? {
            return Ok(killed);
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
        let got: Vec<String> = got
            .iter()
            .map(|(id, p)| format!("{id} {}", p.display()))
            .collect();
        assert_eq!(got, ["102 /mnt/kiln/tmp/y/inner", "101 /mnt/kiln/tmp/y"]);
        assert!(super::tree_of(mountinfo, 999).is_empty());
    }

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(super::unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(super::unescape("/plain"), "/plain");
    }
}
