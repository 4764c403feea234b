//! The host: block devices (loop devices, device nodes, partition names), per-device locks,
//! mounts, paths inside an image (resolved within its mount), processes in the chroot, commands
//! run on the host or inside the chroot, and sparse file copies. All privileged system calls live here, over `nix`. The worker process itself is
//! never chrooted: commands run as children `chroot DIR /bin/sh -c ...` in their own process group.

pub mod command;
pub mod devices;
pub mod image_fs;
pub mod lock;
pub mod loopdev;
pub mod mount;
pub mod procs;
pub mod sandbox;
pub mod sparse;
pub mod vm;

use std::path::PathBuf;

/// Errors from the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What kiln was doing.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what} {}: {source}", path.display())]
    Sys {
        /// What kiln was doing.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// A command exited with a code that does not count as success.
    #[error("{name} failed with exit code {code}: {command}\n{tail}")]
    Command {
        /// Who ran it (e.g. `pre_mount_commands[0]`, `provisioner 2 (shell)`).
        name: String,
        /// The command line (sensitive values masked by the caller).
        command: String,
        /// Exit code, or -1 when killed by a signal.
        code: i32,
        /// The last lines of its output.
        tail: String,
    },
    /// A mount point stayed busy.
    #[error("cannot unmount {}: target is busy; held by {holders}", path.display())]
    Busy {
        /// The mount point.
        path: PathBuf,
        /// The processes holding it (`pid (comm)`), or `unknown`.
        holders: String,
    },
    /// No free device could be found.
    #[error("no free device to attach the volume to: {0}")]
    NoDevice(String),
    /// A device did not appear in time.
    #[error("device {} did not appear within {seconds} s after the attachment{hint}", path.display())]
    DeviceTimeout {
        /// The device path waited for.
        path: PathBuf,
        /// How long kiln waited.
        seconds: u64,
        /// What to check.
        hint: String,
    },
    /// An operation on a path inside the image failed (resolved within the mount; the detail
    /// names the links along the path).
    #[error("{what} {} in the image: {detail}", path.display())]
    InImage {
        /// What kiln was doing.
        what: &'static str,
        /// The path inside the image.
        path: PathBuf,
        /// The error, and the links along the path.
        detail: String,
    },
    /// The boot test failed: the image did not reach its marker.
    #[error("the boot test failed: {message}\nlast console lines:\n{tail}")]
    Boot {
        /// What happened.
        message: String,
        /// The console's last lines.
        tail: String,
    },
    /// The build was cancelled while a host operation ran.
    #[error("cancelled while {0}")]
    Cancelled(String),
    /// Invalid input for a host operation.
    #[error("{0}")]
    Invalid(String),
    /// The build's sandbox could not be made, used or removed.
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
}

impl HostError {
    /// Whether retrying the build could succeed (a busy device or a timeout may pass; a failed
    /// command or bad input will not).
    pub fn is_retryable(&self) -> bool {
        match self {
            HostError::Sandbox(e) => e.is_retryable(),
            other => matches!(
                other,
                HostError::NoDevice(_) | HostError::DeviceTimeout { .. } | HostError::Busy { .. }
            ),
        }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> HostError {
        let path = path.into();
        move |source| HostError::Io { what, path, source }
    }

    pub(crate) fn sys(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(nix::Error) -> HostError {
        let path = path.into();
        move |source| HostError::Sys { what, path, source }
    }
}
