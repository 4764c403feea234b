//! Mounts kiln makes inside an image (`chroot_mounts`, extra mounts): made on the directory's
//! resolved handle, `nodev,nosuid`, private, and identified by mount id so that they are undone
//! by id, never by a path search.

use super::{ImageFs, err, in_image};
use crate::host::HostError;
use nix::mount::MsFlags;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

/// A mount kiln made inside the image: unmounted by its id, never by a path search.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageMount {
    /// The path inside the image the template named.
    pub path: String,
    /// Where it is on the host (always below the mount path).
    pub host_path: PathBuf,
    /// The kernel's mount id (`/proc/self/mountinfo` field 1).
    pub mount_id: u64,
}

impl ImageFs {
    /// The host path a handle refers to (for records and messages only; never opened again).
    fn host_path(fd: &impl AsFd) -> PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())).unwrap_or_default()
    }

    /// Mounts `source` (a host path for `bind`) of type `fstype` on directory `path` inside the
    /// image, created if missing, through the resolved handle (`/proc/self/fd/N`, as runc does
    /// since CVE-2021-30465), `nodev,nosuid` (a bind mount keeps its source's other per-mount
    /// flags), and makes it private. Returns the mount, identified by its kernel mount id.
    ///
    /// Side effects: one mount (removed again when anything after the mount call fails). Not
    /// safe to run twice (mounts again).
    pub fn mount(&self, fstype: &str, source: &str, path: &str) -> Result<ImageMount, HostError> {
        let p = in_image(path);
        let dir = self.mkdir_all(path)?;
        let host_path = Self::host_path(&dir);
        if !host_path.starts_with(&self.mount) {
            return Err(HostError::InImage {
                what: "mounting on",
                path: p,
                detail: format!("it resolved to {} outside the image", host_path.display()),
            });
        }
        let target = format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd());
        let (fs, flags) = if fstype == "bind" {
            (None, MsFlags::MS_BIND)
        } else {
            (Some(fstype), MsFlags::MS_NODEV | MsFlags::MS_NOSUID)
        };
        nix::mount::mount(Some(source), target.as_str(), fs, flags, None::<&str>).map_err(|e| {
            HostError::Sys {
                what: "mounting",
                path: host_path.clone(),
                source: e,
            }
        })?;
        // The mount now covers `dir`; its own id is that of the mount whose mount point is
        // `host_path` and whose parent is `dir`'s mount, the last such in the table.
        let parent = crate::host::mount::mount_id_of(&dir).unwrap_or_default();
        let mount_id = crate::host::mount::child_mount_at(parent, &host_path).ok_or_else(|| {
            HostError::InImage {
                what: "mounting on",
                path: p.clone(),
                detail: "the new mount is not in the mount table".into(),
            }
        })?;
        drop(dir);
        let m = ImageMount {
            path: p.to_string_lossy().into_owned(),
            host_path,
            mount_id,
        };
        if let Err(e) = self.seal(&m, fstype == "bind") {
            crate::host::mount::detach_id(m.mount_id, &m.host_path);
            return Err(e);
        }
        Ok(m)
    }

    /// Makes mount `m` private and (a bind mount, whose flags the bind call cannot set)
    /// `nodev,nosuid`, through a handle on the mount's own root, checked by mount id.
    fn seal(&self, m: &ImageMount, bind: bool) -> Result<(), HostError> {
        let p = Path::new(&m.path);
        let top = self.root.resolve(p).map_err(err("mounting on", p))?;
        if crate::host::mount::mount_id_of(&top) != Some(m.mount_id) {
            return Err(HostError::InImage {
                what: "mounting on",
                path: p.to_owned(),
                detail: "the path moved while kiln mounted on it".into(),
            });
        }
        crate::host::mount::make_private_at(&top, &m.host_path)?;
        if bind {
            crate::host::mount::restrict_at(&top, &m.host_path)?;
        }
        crate::host::mount::ensure_restricted(&top, &m.host_path)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ImageFs;
    use super::super::tests::Tree;
    use std::path::Path;

    /// Mounts kiln makes in an image are `nodev,nosuid`, bind mounts too (keeping read-only).
    #[test]
    fn mounts_are_nodev_nosuid() {
        use nix::sys::statvfs::{FsFlags, statvfs};
        let t = Tree::new("mounts");
        let img = t.image();
        let fs = ImageFs::open(&img).unwrap();
        let src = t.host();
        let tmpfs = fs.mount("tmpfs", "kiln-unit-tmpfs", "/run").unwrap();
        let bind = fs
            .mount("bind", &src.to_string_lossy(), "/mnt/host")
            .unwrap();
        let flags = |p: &Path| statvfs(p).unwrap().flags();
        for m in [&tmpfs, &bind] {
            let f = flags(&m.host_path);
            assert!(
                f.contains(FsFlags::ST_NODEV | FsFlags::ST_NOSUID),
                "{}: {f:?}",
                m.path
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for m in [&bind, &tmpfs] {
            rt.block_on(crate::host::mount::unmount_id(m.mount_id, &img))
                .unwrap();
        }
        assert!(!crate::host::mount::is_mount_root(&img.join("run")));
    }
}
