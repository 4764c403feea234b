//! Read access to an image's files: the trait the SBOM readers use, its implementation for the
//! mounted image (`ImageFs`, links resolved within the mount by the kernel) and for a plain
//! directory ([`DirFiles`], links resolved here, inside the directory).

use super::SbomError;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Names a directory listing returns at most (as `ImageFs::list_dir`): more than any real
/// `/boot`, `/lib/modules` or distroless `status.d` holds, few enough that a directory of
/// millions of entries cannot exhaust memory.
const MAX_ENTRIES: usize = 100_000;

/// Links followed while resolving one path: Linux's own limit (`MAXSYMLINKS`, 40).
const MAX_LINKS: usize = 40;

/// Read access to an image's files.
pub trait ImageFiles {
    /// The first `max` bytes of the regular file at `path` (absolute path inside the image);
    /// `Ok(None)` when missing. Anything but a regular file is an error. No side effects.
    fn read(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, SbomError>;
    /// Sorted names in the directory at `path`; `Ok(None)` when missing or not a directory.
    /// No side effects.
    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>, SbomError>;
}

/// A read of the image that failed: what the image itself holds (a FIFO, a device node, a link
/// into `/proc` or a loop: `HostError::InImage`) is bad data, which the parsers treat as they
/// treat a malformed file (a license left out, a database named in the note); the host's own
/// failures stay host errors.
#[cfg(feature = "builder")]
fn image_error(path: &str, source: crate::host::HostError) -> SbomError {
    match source {
        e @ crate::host::HostError::InImage { .. } => SbomError::bad(path, e.to_string()),
        source => SbomError::Host {
            path: path.to_owned(),
            source,
        },
    }
}

#[cfg(feature = "builder")]
impl ImageFiles for crate::host::image_fs::ImageFs {
    fn read(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, SbomError> {
        self.read_head(path, max)
            .map_err(|source| image_error(path, source))
    }

    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>, SbomError> {
        crate::host::image_fs::ImageFs::list_dir(self, path)
            .map_err(|source| image_error(path, source))
    }
}

/// An image's files in a plain directory on the host (an unpacked root file system, tests).
/// Links are resolved inside the directory, as the image would see them (`/lib ->
/// usr/lib` works; `/etc/x -> /etc/shadow` means the directory's own `etc/shadow`, never the
/// host's; `..` stops at the directory). The last component is opened without following links,
/// and (in the `builder` build) non-blocking, so a FIFO is refused, never waited on. The
/// directory is trusted not to change while it is read: a link swapped in between the
/// resolution and the open of a middle component could still lead out.
#[derive(Debug, Clone)]
pub struct DirFiles(pub PathBuf);

impl DirFiles {
    /// The host path that `path` (inside the image) leads to, links resolved inside the root;
    /// `None` when some component is missing or not a directory. No side effects.
    fn resolve(&self, path: &str) -> Result<Option<PathBuf>, SbomError> {
        let mut pending: Vec<OsString> = components(Path::new(path));
        pending.reverse();
        let mut done: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                done.pop();
                continue;
            }
            let mut here = self.0.clone();
            here.extend(&done);
            here.push(&name);
            let meta = match std::fs::symlink_metadata(&here) {
                Ok(m) => m,
                Err(e) if gone(&e) => return Ok(None),
                Err(source) => return Err(io(path, source)),
            };
            if !meta.file_type().is_symlink() {
                done.push(name);
                continue;
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(SbomError::bad(
                    path,
                    format!("more than {MAX_LINKS} links along the path"),
                ));
            }
            let target = std::fs::read_link(&here).map_err(|e| io(path, e))?;
            if target.is_absolute() {
                done.clear();
            }
            pending.extend(components(&target).into_iter().rev());
        }
        let mut out = self.0.clone();
        out.extend(&done);
        Ok(Some(out))
    }
}

/// The normal and `..` components of a path (the root and `.` dropped).
fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Whether an error means "nothing there" (missing, or a file where a directory was needed).
fn gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

fn io(path: &str, source: std::io::Error) -> SbomError {
    SbomError::Io {
        path: path.to_owned(),
        source,
    }
}

impl ImageFiles for DirFiles {
    fn read(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, SbomError> {
        let Some(host) = self.resolve(path)? else {
            return Ok(None);
        };
        let meta = match std::fs::symlink_metadata(&host) {
            Ok(m) => m,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(io(path, e)),
        };
        if !meta.is_file() {
            return Err(SbomError::bad(path, "not a regular file"));
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true);
        #[cfg(feature = "builder")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
        }
        let f = opts.open(&host).map_err(|e| io(path, e))?;
        if !f.metadata().map_err(|e| io(path, e))?.is_file() {
            return Err(SbomError::bad(path, "not a regular file"));
        }
        let mut out = Vec::new();
        f.take(max).read_to_end(&mut out).map_err(|e| io(path, e))?;
        Ok(Some(out))
    }

    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>, SbomError> {
        let Some(host) = self.resolve(path)? else {
            return Ok(None);
        };
        let entries = match std::fs::read_dir(&host) {
            Ok(e) => e,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(io(path, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io(path, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
            if names.len() >= MAX_ENTRIES {
                break;
            }
        }
        names.sort();
        Ok(Some(names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Links resolve inside the directory: an absolute link and `..` never leave it.
    #[test]
    fn dir_files_resolve_links_inside_the_root() {
        let t = crate::sbom::tests::TempDir::new("links");
        let outside = t.0.join("outside");
        let root = t.0.join("root");
        std::fs::create_dir_all(root.join("usr/lib/modules/6.1.0")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(&outside, "host secret").unwrap();
        std::fs::write(root.join("etc/passwd"), "image passwd").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../outside", root.join("etc/rel")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("etc/inside")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("etc/loop")).unwrap();
        let f = DirFiles(root);
        assert_eq!(
            f.list_dir("/lib/modules").unwrap(),
            Some(vec!["6.1.0".to_owned()])
        );
        assert_eq!(f.read("/etc/abs", 100).unwrap(), None);
        assert_eq!(f.read("/etc/rel", 100).unwrap(), None);
        assert_eq!(
            f.read("/etc/inside", 5).unwrap().as_deref(),
            Some(&b"image"[..])
        );
        let e = f.read("/etc/loop", 5).unwrap_err();
        assert!(e.to_string().contains("links"), "{e}");
        assert!(!e.is_retryable());
        let e = f.read("/etc", 5).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert_eq!(f.list_dir("/etc/passwd").unwrap(), None);
        assert_eq!(f.read("/etc/passwd/x", 5).unwrap(), None);
    }
}
