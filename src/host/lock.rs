//! Per-device locks: an exclusive `flock` on a file per device name, held for a whole build so
//! several builds on one host never pick the same attachment point.

use super::HostError;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// The prefix of a lock note whose volume, device and mounts `kiln build --on-error=abort` kept on
/// purpose: the start-up sweep of a worker on the same host leaves them (and the lock) alone.
pub const KEPT: &str = "kept ";

/// Where lock files live. `/run` is a tmpfs: locks vanish with a reboot, as attachments do.
pub const LOCK_DIR: &str = "/run/kiln/locks";

/// Whether `name` is a plain file name: not empty, no `/` or NUL, not `.` or `..`. Pure.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// A held device lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DeviceLock {
    name: String,
    path: PathBuf,
    _lock: Flock<File>,
}

impl DeviceLock {
    /// Tries to lock `name` (e.g. `xvdf`) without waiting. `None` when another build holds it.
    /// `name` must be a plain file name (no `/`, not `.` or `..`): the lock file is always
    /// directly in `dir`.
    ///
    /// Side effects: creates the lock directory and file. Safe to call again after a release.
    pub fn try_lock(dir: &Path, name: &str) -> Result<Option<DeviceLock>, HostError> {
        use std::os::unix::fs::OpenOptionsExt;
        if !is_plain_name(name) {
            return Err(HostError::Invalid(format!(
                "{name:?} is not a device name: a lock name is a plain file name"
            )));
        }
        std::fs::create_dir_all(dir).map_err(HostError::io("creating the lock directory", dir))?;
        let path = dir.join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(HostError::io("opening the lock file", &path))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(DeviceLock {
                name: name.to_owned(),
                path,
                _lock: lock,
            })),
            Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(HostError::Sys {
                what: "locking",
                path,
                source: e,
            }),
        }
    }

    /// Writes a note into the lock file (the volume and device the build uses), so that a later
    /// sweep can tell whether a dead build's device still holds its volume.
    pub fn note(&self, text: &str) -> Result<(), HostError> {
        std::fs::write(&self.path, text).map_err(HostError::io("writing the lock note", &self.path))
    }

    /// Whether a note marks what it names as kept on purpose (`--on-error=abort`).
    pub fn is_kept(note: &str) -> bool {
        note.starts_with(KEPT)
    }

    /// The note a (dead) build left in the lock file of `name`.
    pub fn read_note(dir: &Path, name: &str) -> Option<String> {
        std::fs::read_to_string(dir.join(format!("{name}.lock")))
            .ok()
            .filter(|s| !s.trim().is_empty())
    }

    /// The device name locked.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name with `/` or `..` never makes a lock file outside the lock directory.
    #[test]
    fn lock_names_stay_in_the_directory() {
        let d = std::env::temp_dir().join(format!(
            "kiln-locks-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let locks = d.join("locks");
        for bad in ["../x", "..", ".", "", "a/b", "/tmp/x"] {
            assert!(DeviceLock::try_lock(&locks, bad).is_err(), "{bad:?}");
        }
        assert!(!d.join("x.lock").exists());
        let l = DeviceLock::try_lock(&locks, "xvdf").unwrap().unwrap();
        assert_eq!(l.path(), locks.join("xvdf.lock"));
        assert!(DeviceLock::try_lock(&locks, "xvdf").unwrap().is_none());
        drop(l);
        let _ = std::fs::remove_dir_all(&d);
    }
}
