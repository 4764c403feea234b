//! Processes: those running inside a chroot (found by their root directory: by the mount it is on,
//! or by its path), and those holding a path (cwd, root, open files), for killing before an
//! unmount and for naming in errors.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::Path;

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// `pid (comm)` of every process whose root directory is `root` or below it.
pub fn in_root(root: &Path) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    pids()
        .into_iter()
        .filter(|p| *p != me)
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/root")).is_ok_and(|r| r.starts_with(root))
        })
        .map(|p| (p, comm(p)))
        .collect()
}

/// Kills (SIGKILL) every process inside the chroot at `root`; returns `pid (comm)` of each.
pub fn kill_in_root(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (pid, name) in in_root(root) {
        if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            tracing::warn!(pid, process = %name, root = %root.display(), "killed a process left running in the chroot");
            out.push(format!("{pid} ({name})"));
        }
    }
    out
}

/// Kills (SIGKILL) every process whose root directory is on one of the mounts `mount_ids`
/// (found by opening `/proc/PID/root` and reading its mount id, never by comparing paths, so a
/// process in a mount someone else made at the same path is left alone). Returns `pid (comm)`
/// of each. Safe to run twice.
pub fn kill_rooted_on(mount_ids: &[u64]) -> Vec<String> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    // Never the mounts the host's own processes live on: kiln's root, and init's.
    let host: Vec<u64> = ["/proc/self/root", "/proc/1/root"]
        .iter()
        .filter_map(|p| root_mount_id(p))
        .collect();
    let mount_ids: Vec<u64> = mount_ids
        .iter()
        .copied()
        .filter(|id| !host.contains(id))
        .collect();
    if mount_ids.is_empty() {
        return out;
    }
    for pid in pids().into_iter().filter(|p| *p != me) {
        let on =
            root_mount_id(&format!("/proc/{pid}/root")).is_some_and(|id| mount_ids.contains(&id));
        if on {
            let name = comm(pid);
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                tracing::warn!(pid, process = %name, "killed a process left running in the image");
                out.push(format!("{pid} ({name})"));
            }
        }
    }
    out
}

/// The mount id of the root directory a `/proc/PID/root` link leads to (following the magic link
/// gives the directory itself).
fn root_mount_id(link: &str) -> Option<u64> {
    let root = nix::fcntl::open(
        link,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    super::mount::mount_id_of(&root)
}

/// `pid (comm)` of processes whose cwd, root, executable or an open file is under `path`.
pub fn holders(path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for pid in pids() {
        let base = format!("/proc/{pid}");
        let mut hit = ["cwd", "root", "exe"].iter().any(|l| {
            std::fs::read_link(format!("{base}/{l}"))
                .is_ok_and(|r| r.starts_with(path) && r != Path::new("/"))
        });
        if !hit && let Ok(fds) = std::fs::read_dir(format!("{base}/fd")) {
            hit = fds
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|r| r.starts_with(path)));
        }
        if hit {
            out.push(format!("{pid} ({})", comm(pid)));
        }
    }
    out
}
