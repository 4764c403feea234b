//! The build sandbox: every process kiln starts inside an image (provisioner scripts,
//! `ansible-local`, the `ansible` chroot connection's commands) runs through one launcher per build
//! that puts it in the build's cgroup ([`cgroup`]), its network namespace ([`net`]) and a
//! bubblewrap sandbox: its own mount, PID, IPC, UTS and cgroup namespaces, the image as root by
//! `pivot_root`, a fresh procfs, `/sys` read-only, a minimal `/dev` with only this build's device
//! and its partitions, a bounded capability set and a seccomp filter ([`seccomp`]).
//!
//! bubblewrap (Flatpak's sandbox, Debian's `bubblewrap`) does the namespace and mount work: an
//! audited component instead of hand-written namespace code. kiln owns the policy (what is
//! mounted, kept, refused) and the per-build resources, each named by the sandbox id and removed
//! by that name.

pub mod cgroup;
pub mod net;
pub mod seccomp;

use crate::host::command::shell_quote;
use std::path::{Path, PathBuf};

pub use crate::template::sandbox::{Limits, Network};

/// Where sandboxes keep their launcher and filters (root-only, on the host, never in the image).
pub const STATE_DIR: &str = "/run/kiln/sandbox";
/// The `PATH` of commands in the image (Debian's and Amazon Linux's root default): the worker's
/// own `PATH` names host directories that mean nothing inside the image.
pub const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The `PATH` the launcher runs `nsenter` and `bwrap` with.
const LAUNCHER_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Capabilities a build's root keeps: what package managers, `useradd`, `sudo`, `chown`/`chmod`
/// of others' files, setcap'd binaries and services binding low ports need (Docker's default set
/// less `MKNOD`, which would let a build make a node for a host disk, and `NET_RAW`). Everything
/// else (`SYS_ADMIN`, `SYS_MODULE`, `SYS_RAWIO`, `SYS_PTRACE`, `SYS_BOOT`, `SYS_TIME`,
/// `NET_ADMIN`, `MAC_*`, ...) is dropped from the effective, permitted, inheritable and ambient
/// sets; the bounding set keeps them, but `no_new_privs` (bubblewrap sets it) and `nosuid`
/// mounts leave no way to regain one through `execve`.
pub const KEPT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
];
/// Files of a fresh procfs that reach the host's kernel and stay read-only in a build (besides
/// `/proc/sys`), after Docker's list.
const PROC_READ_ONLY: &[&str] = &[
    "/proc/sysrq-trigger",
    "/proc/fs",
    "/proc/acpi",
    "/proc/irq",
    "/proc/bus",
];
/// The file descriptors the launcher hands bubblewrap its seccomp programs on (single digits:
/// POSIX shells such as dash redirect only descriptors 0 to 9).
const SECCOMP_FD_BASE: u32 = 8;
/// How many programs [`seccomp::programs`] returns.
const SECCOMP_PROGRAMS: u32 = 2;

/// Errors from the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A file operation on the host failed.
    #[error("sandbox: {what} {}: {source}", path.display())]
    Io {
        /// What kiln was doing.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A host tool (`ip`, `nft`) failed.
    #[error("sandbox: {what}: {detail}")]
    Command {
        /// What kiln was doing.
        what: String,
        /// Its error output.
        detail: String,
    },
    /// Something stayed (processes in the group, a namespace).
    #[error("sandbox: {what}")]
    Busy {
        /// What, with its ids.
        what: String,
    },
    /// The host or the request cannot give a build a sandbox.
    #[error("sandbox: {0}")]
    Invalid(String),
}

impl SandboxError {
    /// Whether retrying the build could succeed (processes that did not die yet, a busy host).
    pub fn is_retryable(&self) -> bool {
        matches!(self, SandboxError::Busy { .. })
    }
}

/// What a build's sandbox is made of.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The sandbox id: names the cgroup, namespace, interfaces, table and state directory.
    /// Lowercase hex, at most 12 characters (interface names are limited to 15).
    pub id: String,
    /// The image's mount on the host: the sandbox's `/`.
    pub root: PathBuf,
    /// A fresh procfs at `/proc` (Packer's `proc` mount).
    pub proc: bool,
    /// The host's `/sys` read-only at `/sys` (Packer's `sysfs` mount).
    pub sys: bool,
    /// A minimal `/dev` with a new devpts (Packer's `/dev` bind and `devpts` mounts).
    pub dev: bool,
    /// Device nodes bound into `/dev`: `(host node, path inside)`.
    pub devices: Vec<(PathBuf, PathBuf)>,
    /// The network.
    pub network: Network,
    /// Resource limits.
    pub limits: Limits,
}

/// A build's sandbox, while it exists.
#[derive(Debug)]
pub struct Sandbox {
    spec: SandboxSpec,
    dir: PathBuf,
    cgroup: cgroup::BuildCgroup,
    net: Option<net::BuildNet>,
}

/// The device nodes of `block_device` (the whole device and its partitions, as the kernel lists
/// them, under the host's names for them: `nvme1n1p1`, `xvdf1`, `loop3p1`, so a tool in the
/// image that looks up the root file system's device by its mount source, as grub-probe does,
/// finds it), and of `alias` (`{{.Device}}`, with `{{.Device}}N` where those exist), as
/// `(host node, path inside the sandbox)`.
pub fn device_nodes(block_device: &Path, alias: Option<&Path>) -> Vec<(PathBuf, PathBuf)> {
    let mut out = vec![(block_device.to_owned(), block_device.to_owned())];
    for n in crate::host::devices::kernel_partitions(block_device) {
        let node = crate::host::devices::partition_path(block_device, n.0);
        if node.exists() {
            out.push((node.clone(), node));
        }
    }
    if let Some(alias) = alias.filter(|a| *a != block_device) {
        let mut names = vec![alias.to_owned()];
        for n in 1..=crate::host::devices::MAX_PARTITIONS {
            names.push(PathBuf::from(format!("{}{n}", alias.display())));
        }
        for name in names {
            if let Ok(real) = std::fs::canonicalize(&name)
                && real.starts_with("/dev/")
            {
                out.push((real, name));
            }
        }
    }
    out
}

/// The sandbox id of the build holding device lock `lock_name`: the lock is exclusive on the
/// host, so whatever carries this id while kiln holds the lock is a dead holder's leftover.
pub fn id_for_lock(lock_name: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("kiln-sandbox:{lock_name}").as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Removes what a dead build's sandbox `id` left: kills its processes, removes its network,
/// cgroup and state directory, each by name. Call it only while holding the device lock the id
/// was made from ([`id_for_lock`]): then no live build owns these names. Returns what it found.
///
/// Side effects: as said. Safe to run twice.
pub fn remove_leftovers(id: &str) -> Result<Vec<String>, SandboxError> {
    let mut found = Vec::new();
    let cgroup = cgroup::BuildCgroup::existing(&format!("build-{id}"));
    if !cgroup.dirs().is_empty() {
        found.push(format!("cgroup {:?}", cgroup.dirs()));
        cgroup.remove()?;
    }
    let net = net::BuildNet::named(id);
    if net.ns_path().exists() || Path::new("/sys/class/net").join(&net.host_if).exists() {
        found.push(format!("network namespace {}", net.ns));
    }
    net.remove()?;
    let dir = Path::new(STATE_DIR).join(id);
    if dir.exists() {
        found.push(dir.display().to_string());
        std::fs::remove_dir_all(&dir).map_err(|source| SandboxError::Io {
            what: "removing",
            path: dir.clone(),
            source,
        })?;
    }
    Ok(found)
}

impl Sandbox {
    /// Makes the build's sandbox: state directory with the seccomp programs and the launcher,
    /// the cgroup with its limits, and the network namespace (for [`Network::Nat`]).
    ///
    /// Side effects: `/run/kiln/sandbox/<id>`, cgroup directories, a network namespace, a veth
    /// pair and an nftables table; what was made is removed again on failure. Not safe to run
    /// twice with one id: [`Self::remove`] first.
    pub fn create(spec: SandboxSpec) -> Result<Self, SandboxError> {
        check_tools(spec.network)?;
        if spec.id.is_empty()
            || spec.id.len() > 12
            || !spec.id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(SandboxError::Invalid(format!(
                "bad sandbox id {:?}",
                spec.id
            )));
        }
        let dir = Path::new(STATE_DIR).join(&spec.id);
        let cgroup = cgroup::BuildCgroup::create(&format!("build-{}", spec.id), spec.limits)?;
        let mut sb = Sandbox {
            dir,
            cgroup,
            net: None,
            spec,
        };
        if let Err(e) = sb.finish_create() {
            if let Err(undo) = sb.remove() {
                tracing::error!(sandbox = %sb.spec.id, error = %undo, "could not remove a half-made sandbox");
            }
            return Err(e);
        }
        Ok(sb)
    }

    fn finish_create(&mut self) -> Result<(), SandboxError> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| SandboxError::Io { what, path, source }
        };
        std::fs::create_dir_all(STATE_DIR).map_err(io("creating", Path::new(STATE_DIR)))?;
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&self.dir)
                .map_err(io("creating", &self.dir))?;
        }
        for (i, prog) in seccomp::programs()?.iter().enumerate() {
            let p = self.dir.join(format!("seccomp-{i}.bpf"));
            std::fs::write(&p, prog).map_err(io("writing", &p))?;
        }
        if self.spec.network == Network::Nat {
            self.net = Some(net::BuildNet::create(&self.spec.id)?);
        }
        let launcher = self.launcher();
        write_exec(&launcher, &self.launcher_script()).map_err(io("writing", &launcher))?;
        // ansible's chroot connection runs `chroot_exe CHROOT_PATH /bin/sh -c ...`.
        let exe = self.chroot_exe();
        let script = format!(
            "#!/bin/sh\n# ansible's chroot_exe for kiln sandbox {}: the chroot path is the sandbox's root.\nshift\nexec {} \"$@\"\n",
            self.spec.id,
            shell_quote(&launcher.display().to_string())
        );
        write_exec(&exe, &script).map_err(io("writing", &exe))?;
        Ok(())
    }

    /// bubblewrap's arguments for this sandbox (without the command).
    pub fn bwrap_args(&self) -> Vec<String> {
        let s = &self.spec;
        let mut a: Vec<String> = [
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]
        .map(String::from)
        .to_vec();
        if s.network == Network::None {
            a.push("--unshare-net".into());
        }
        let mut push = |v: &[&str]| a.extend(v.iter().map(|x| (*x).to_owned()));
        let root = s.root.display().to_string();
        push(&["--bind", &root, "/"]);
        if s.proc {
            push(&["--proc", "/proc"]);
            // bubblewrap covers these read-only only when it can write them, which a root
            // bubblewrap that already dropped its capabilities cannot check: without this a
            // build writes the host's sysctls (`kernel.core_pattern` runs a program of its
            // image on the host as root) and `sysrq-trigger`.
            push(&["--ro-bind", "/proc/sys", "/proc/sys"]);
            for p in PROC_READ_ONLY {
                push(&["--ro-bind-try", p, p]);
            }
        }
        if s.sys {
            push(&["--ro-bind", "/sys", "/sys"]);
        }
        if s.dev {
            push(&["--dev", "/dev"]);
            for (host, inside) in &s.devices {
                push(&[
                    "--dev-bind",
                    &host.display().to_string(),
                    &inside.display().to_string(),
                ]);
            }
        }
        push(&["--cap-drop", "ALL"]);
        for c in KEPT_CAPABILITIES {
            push(&["--cap-add", c]);
        }
        for i in 0..SECCOMP_PROGRAMS {
            push(&["--add-seccomp-fd", &(SECCOMP_FD_BASE + i).to_string()]);
        }
        push(&["--clearenv", "--setenv", "PATH", IMAGE_PATH]);
        push(&["--setenv", "HOME", "/root", "--setenv", "LANG", "C.UTF-8"]);
        push(&["--chdir", "/"]);
        a
    }

    fn launcher_script(&self) -> String {
        let mut s = format!(
            "#!/bin/sh\n# kiln's sandbox {}: runs its arguments inside the build's image, cgroup and network.\nset -e\n",
            self.spec.id
        );
        for f in self.cgroup.procs_files() {
            s.push_str(&format!(
                "echo $$ > {}\n",
                shell_quote(&f.display().to_string())
            ));
        }
        // bubblewrap's own init inside the sandbox keeps the environment it was started with
        // (readable there as /proc/1/environ): start it with nothing of kiln's.
        s.push_str(&format!("exec env -i PATH={LAUNCHER_PATH} "));
        if let Some(n) = &self.net {
            s.push_str(&format!(
                "nsenter --net={} ",
                shell_quote(&n.ns_path().display().to_string())
            ));
        }
        s.push_str("bwrap");
        for arg in self.bwrap_args() {
            s.push(' ');
            s.push_str(&shell_quote(&arg));
        }
        s.push_str(" \"$@\"");
        for i in 0..SECCOMP_PROGRAMS {
            s.push_str(&format!(
                " {}<{}",
                SECCOMP_FD_BASE + i,
                shell_quote(
                    &self
                        .dir
                        .join(format!("seccomp-{i}.bpf"))
                        .display()
                        .to_string()
                )
            ));
        }
        s.push('\n');
        s
    }

    /// The launcher: `LAUNCHER PROGRAM ARGS...` runs PROGRAM inside the sandbox.
    pub fn launcher(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// An executable for ansible's `ansible_chroot_exe`: `EXE CHROOT_PATH PROGRAM ARGS...`.
    pub fn chroot_exe(&self) -> PathBuf {
        self.dir.join("chroot")
    }

    /// The shell text that runs the shell script at `file` (a path inside the image) with
    /// `/bin/sh` inside the sandbox: the script's text stays off every command line.
    pub fn shell_file(&self, file: &str) -> String {
        format!(
            "{} /bin/sh {}",
            shell_quote(&self.launcher().display().to_string()),
            shell_quote(file)
        )
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// The network namespace, for [`Network::Nat`].
    pub fn net(&self) -> Option<&net::BuildNet> {
        self.net.as_ref()
    }

    /// The cgroup (kill what the build left running with its `kill_all`).
    pub fn cgroup(&self) -> &cgroup::BuildCgroup {
        &self.cgroup
    }

    /// Kills what is left and removes the network, the cgroup and the state directory, each
    /// by this sandbox's id. Safe to run twice; the error names what is left.
    pub fn remove(&self) -> Result<(), SandboxError> {
        let mut left = Vec::new();
        if let Err(e) = self.cgroup.remove() {
            left.push(format!("cgroup {:?} ({e})", self.cgroup.dirs()));
        }
        if let Some(n) = &self.net
            && let Err(e) = n.remove()
        {
            left.push(e.to_string());
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            left.push(format!("{} ({e})", self.dir.display()));
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(SandboxError::Busy {
                what: format!("sandbox {} left behind: {}", self.spec.id, left.join("; ")),
            })
        }
    }
}

/// The host tools a sandbox needs, with the Debian package that installs each.
const TOOLS: &[(&str, &str)] = &[
    ("bwrap", "bubblewrap"),
    ("nsenter", "util-linux"),
    ("ip", "iproute2"),
    ("nft", "nftables"),
];

/// Fails with the command that installs a missing tool (before anything is made).
fn check_tools(network: Network) -> Result<(), SandboxError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    for (tool, package) in TOOLS {
        let needed = *tool == "bwrap" || network == Network::Nat;
        if needed && !std::env::split_paths(&path).any(|d| d.join(tool).is_file()) {
            return Err(SandboxError::Invalid(format!(
                "`{tool}` is missing on this builder: install it (apt-get install -y {package}, or scripts/setup); every build runs in a sandbox made with it"
            )));
        }
    }
    Ok(())
}

fn write_exec(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(path)?;
    f.write_all(text.as_bytes())
}
