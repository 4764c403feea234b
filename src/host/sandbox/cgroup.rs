//! One cgroup per build: memory, pids and CPU-weight limits, the file a process writes to join it,
//! killing everything in it (`cgroup.kill`), and its removal. Works on the unified cgroup v2
//! hierarchy (EC2's builder AMIs) and on hybrid hosts, where the limits live in the v1
//! controllers (`/sys/fs/cgroup/<controller>`) and `cgroup.kill` in the controller-less
//! `/sys/fs/cgroup/unified` (see ../shared/reference/isolation.md).

use super::{Limits, SandboxError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup file system's mount point.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// kiln's parent group in every hierarchy; each build's group is a child named by its sandbox id.
const PARENT: &str = "kiln";
/// How long to wait for killed processes to leave the group: a SIGKILLed process exits as soon
/// as it is scheduled; a process stuck in uninterruptible I/O (a hung NFS mount) may take
/// longer, and then the group is reported as left behind rather than waited for forever.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long processes that are exiting by themselves get before they count as left behind.
const SETTLE: Duration = Duration::from_millis(250);
/// How often to look while draining.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// A build's cgroup (one directory per hierarchy that holds part of it).
#[derive(Debug, Clone)]
pub struct BuildCgroup {
    /// Every directory of the group (v2: one; hybrid: memory, pids, cpu and unified).
    dirs: Vec<PathBuf>,
    /// `cgroup.kill`, where the kernel offers it.
    kill_file: Option<PathBuf>,
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    std::fs::write(path, value).map_err(|source| SandboxError::Io {
        what: "writing",
        path: path.to_owned(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), SandboxError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(SandboxError::Io {
            what: "creating the cgroup",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Whether `/sys/fs/cgroup` is the unified (v2-only) hierarchy.
fn unified_only() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// Removes one group directory. A process that has left `cgroup.procs` may still hold the group
/// until the kernel has released it (its exit is not finished: on v1 hierarchies rmdir then fails
/// with EBUSY for a moment), so EBUSY is retried until [`DRAIN_TIMEOUT`]. A missing directory is
/// not an error.
fn remove_group_dir(dir: &Path) -> Result<(), SandboxError> {
    let start = Instant::now();
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(nix::libc::EBUSY)
                    && start.elapsed() < DRAIN_TIMEOUT =>
            {
                std::thread::sleep(DRAIN_POLL);
            }
            Err(source) => {
                return Err(SandboxError::Io {
                    what: "removing the cgroup",
                    path: dir.to_owned(),
                    source,
                });
            }
        }
    }
}

impl BuildCgroup {
    /// Creates the group `kiln/<name>` with `limits` in every hierarchy that holds a needed
    /// controller. Fails (closed) when the memory or pids controller is missing.
    ///
    /// Side effects: directories under `/sys/fs/cgroup`. Safe to run twice (an existing group is
    /// reused and its limits set again).
    pub fn create(name: &str, limits: Limits) -> Result<Self, SandboxError> {
        if name.is_empty() || name.contains('/') || name.contains("..") {
            return Err(SandboxError::Invalid(format!("bad cgroup name {name:?}")));
        }
        if unified_only() {
            Self::create_v2(Path::new(CGROUP_ROOT), name, limits)
        } else {
            Self::create_hybrid(name, limits)
        }
    }

    fn create_v2(root: &Path, name: &str, limits: Limits) -> Result<Self, SandboxError> {
        let parent = root.join(PARENT);
        mkdir(&parent)?;
        let available =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        for c in ["memory", "pids", "cpu"] {
            if !available.split_whitespace().any(|a| a == c) {
                return Err(SandboxError::Invalid(format!(
                    "the cgroup v2 hierarchy at {} has no {c} controller: a build's limits need it (enable it in the host's systemd or kernel settings)",
                    root.display()
                )));
            }
            // Enabling is idempotent; the parent has no processes of its own, so it may delegate.
            write(&root.join("cgroup.subtree_control"), &format!("+{c}"))?;
            write(&parent.join("cgroup.subtree_control"), &format!("+{c}"))?;
        }
        let dir = parent.join(name);
        mkdir(&dir)?;
        write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
        if dir.join("memory.swap.max").exists() {
            write(&dir.join("memory.swap.max"), "0")?;
        }
        write(&dir.join("pids.max"), &limits.pids.to_string())?;
        write(
            &dir.join("cpu.weight"),
            &limits.cpu_weight.clamp(1, 10_000).to_string(),
        )?;
        let kill = dir.join("cgroup.kill");
        Ok(Self {
            kill_file: kill.exists().then_some(kill),
            dirs: vec![dir],
        })
    }

    fn create_hybrid(name: &str, limits: Limits) -> Result<Self, SandboxError> {
        let root = Path::new(CGROUP_ROOT);
        let mut dirs = Vec::new();
        // cpu.shares: 1024 is v1's equal share, as cpu.weight 100 is v2's.
        let shares = (limits.cpu_weight.clamp(1, 10_000) * 1024 / 100).max(2);
        let settings: [(&str, &str, String); 3] = [
            (
                "memory",
                "memory.limit_in_bytes",
                limits.memory_bytes.to_string(),
            ),
            ("pids", "pids.max", limits.pids.to_string()),
            ("cpu", "cpu.shares", shares.to_string()),
        ];
        for (controller, file, value) in settings {
            let base = root.join(controller);
            if !base.join("cgroup.procs").exists() {
                if controller == "cpu" {
                    continue; // a weight is a nicety; memory and pids are the safety limits
                }
                return Err(SandboxError::Invalid(format!(
                    "this host has neither a cgroup v2 hierarchy with the {controller} controller nor a v1 one at {}: a build's limits need it",
                    base.display()
                )));
            }
            mkdir(&base.join(PARENT))?;
            let dir = base.join(PARENT).join(name);
            mkdir(&dir)?;
            write(&dir.join(file), &value)?;
            // The same limit for memory and swap together (v2: memory.swap.max = 0).
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if controller == "memory" && memsw.exists() {
                write(&memsw, &value)?;
            }
            dirs.push(dir);
        }
        let unified = root.join("unified");
        let mut kill_file = None;
        if unified.join("cgroup.procs").exists() {
            mkdir(&unified.join(PARENT))?;
            let dir = unified.join(PARENT).join(name);
            mkdir(&dir)?;
            let kill = dir.join("cgroup.kill");
            kill_file = kill.exists().then_some(kill);
            dirs.push(dir);
        }
        Ok(Self { dirs, kill_file })
    }

    /// The group `kiln/<name>` as far as it exists now in any hierarchy (a dead build's
    /// leftover), for [`Self::remove`]. No side effects.
    pub fn existing(name: &str) -> Self {
        let root = Path::new(CGROUP_ROOT);
        let bases: Vec<PathBuf> = if unified_only() {
            vec![root.to_owned()]
        } else {
            ["memory", "pids", "cpu", "unified"]
                .iter()
                .map(|c| root.join(c))
                .collect()
        };
        let dirs: Vec<PathBuf> = bases
            .iter()
            .map(|b| b.join(PARENT).join(name))
            .filter(|d| !name.is_empty() && !name.contains('/') && d.is_dir())
            .collect();
        let kill_file = dirs
            .iter()
            .map(|d| d.join("cgroup.kill"))
            .find(|k| k.exists());
        Self { dirs, kill_file }
    }

    /// The `cgroup.procs` files a process writes its pid to (all of them) to join the group.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The pids in the group now.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .procs_files()
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Kills every process in the group (`cgroup.kill`, or SIGKILL to each member until none is
    /// left where the kernel has no `cgroup.kill`) and waits until the group is empty. Returns
    /// `pid (comm)` of what it found there.
    ///
    /// Side effects: kills processes of this build only (membership is inherited, and nothing
    /// inside a build can leave its group: the sandbox has no write access to the hierarchy).
    /// Safe to run twice.
    pub fn kill_all(&self) -> Result<Vec<String>, SandboxError> {
        // bubblewrap's init inside the PID namespace exits just after the command it ran: give
        // what is already on its way out a moment, so only real leftovers are killed and named.
        let settle = Instant::now();
        while !self.pids().is_empty() && settle.elapsed() < SETTLE {
            std::thread::sleep(DRAIN_POLL);
        }
        let found: Vec<String> = self
            .pids()
            .into_iter()
            .map(|p| {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                format!("{p} ({})", comm.trim())
            })
            .collect();
        if found.is_empty() {
            return Ok(found);
        }
        if let Some(kill) = &self.kill_file {
            write(kill, "1")?;
        }
        let start = Instant::now();
        loop {
            let left = self.pids();
            if left.is_empty() {
                return Ok(found);
            }
            if self.kill_file.is_none() {
                for p in &left {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if start.elapsed() > DRAIN_TIMEOUT {
                return Err(SandboxError::Busy {
                    what: format!("processes {left:?} did not leave the build's cgroup"),
                });
            }
            std::thread::sleep(DRAIN_POLL);
        }
    }

    /// Kills what is left and removes the group's directories.
    ///
    /// Side effects: removes exactly this build's group directories. Safe to run twice.
    pub fn remove(&self) -> Result<(), SandboxError> {
        self.kill_all()?;
        for dir in &self.dirs {
            remove_group_dir(dir)?;
        }
        Ok(())
    }

    /// The group's directories (for errors and the record).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}
