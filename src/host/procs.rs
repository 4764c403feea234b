//! Processes: those running inside a chroot (found by their root directory), and those holding a
//! path (cwd, root, open files), for killing before an unmount and for naming in errors.

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
