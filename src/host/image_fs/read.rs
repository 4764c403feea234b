//! Reading an image's files for inspection (the image linter, `crate::lint`): a regular file's
//! first bytes and a directory's names, each path resolved within the mount like every other
//! path here (a link, even `/sbin/init -> /lib/systemd/systemd` or one pointing out of the image,
//! leads to a place in the image). Opens are `O_NOFOLLOW|O_NONBLOCK` on a handle whose type was
//! checked first, so a FIFO or device node in the image is reported, never read from; reads are
//! bounded by the caller's cap, so a huge or sparse file costs at most that.

use super::{ImageFs, ensure_regular, err, errno_of, in_image, read_only};
use crate::host::HostError;
use pathrs::flags::OpenFlags;
use std::io::Read;
use std::os::fd::AsFd;

/// Names a directory listing returns at most: more than any real `/boot` or `/lib/modules`, few
/// enough that a directory of millions of entries cannot exhaust memory.
const MAX_ENTRIES: usize = 100_000;

/// Whether a pathrs error means "nothing there" (a missing name, or a link leading nowhere).
fn missing(e: &pathrs::error::Error) -> bool {
    matches!(errno_of(e), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

impl ImageFs {
    /// Opens the regular file at `path` for reading, following links inside the image; `None`
    /// when nothing is there. Anything but a regular file (a directory, FIFO, device node) is an
    /// error naming it, and is never opened. No side effects.
    pub fn open_read(&self, path: &str) -> Result<Option<std::fs::File>, HostError> {
        let p = in_image(path);
        let h = match self.root.resolve(&p) {
            Ok(h) => h,
            Err(e) if missing(&e) => return Ok(None),
            Err(e) => return Err(err("reading", &p)(e)),
        };
        let st = nix::sys::stat::fstat(h.as_fd()).map_err(err("reading", &p))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            let kind = super::special_kind(&st).unwrap_or_else(|| "a directory".into());
            return Err(HostError::InImage {
                what: "reading",
                path: p,
                detail: format!("it is {kind}, not a regular file"),
            });
        }
        let f = h.reopen(read_only()).map_err(err("reading", &p))?;
        ensure_regular(&f, "reading", &p, Some(&st))?;
        Ok(Some(f))
    }

    /// The first `max` bytes (or fewer) of the regular file at `path` (see
    /// [`ImageFs::open_read`]); `None` when nothing is there. No side effects.
    pub fn read_head(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, HostError> {
        let Some(f) = self.open_read(path)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        f.take(max)
            .read_to_end(&mut out)
            .map_err(err("reading", &in_image(path)))?;
        Ok(Some(out))
    }

    /// The names in the directory at `path` (following links inside the image), sorted, without
    /// `.` and `..`; `None` when nothing is there or it is not a directory. At most
    /// [`MAX_ENTRIES`] names. No side effects.
    pub fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>, HostError> {
        let p = in_image(path);
        let h = match self.root.resolve(&p) {
            Ok(h) => h,
            Err(e) if missing(&e) => return Ok(None),
            Err(e) => return Err(err("listing", &p)(e)),
        };
        let st = nix::sys::stat::fstat(h.as_fd()).map_err(err("listing", &p))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Ok(None);
        }
        let f = h
            .reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY | OpenFlags::O_CLOEXEC)
            .map_err(err("listing", &p))?;
        let mut dir = nix::dir::Dir::from_fd(f.into()).map_err(err("listing", &p))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(err("listing", &p))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
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
    use super::super::tests::Tree;
    use super::*;

    /// Reads follow links inside the image, never out of it; special files are refused.
    #[test]
    fn reads_resolve_inside_the_image() {
        let t = Tree::new("read");
        let img = t.image();
        std::fs::write(t.host().join("init"), "host init").unwrap();
        std::fs::create_dir_all(img.join("lib/systemd")).unwrap();
        std::fs::create_dir_all(img.join("sbin")).unwrap();
        std::fs::write(img.join("lib/systemd/systemd"), "image init").unwrap();
        std::os::unix::fs::symlink("/lib/systemd/systemd", img.join("sbin/init")).unwrap();
        std::os::unix::fs::symlink(t.host().join("init"), img.join("sbin/out")).unwrap();
        nix::unistd::mkfifo(&img.join("etc/fifo"), nix::sys::stat::Mode::S_IRUSR).unwrap();
        let fs = ImageFs::open(&img).unwrap();
        assert_eq!(
            fs.read_head("/sbin/init", 5).unwrap().as_deref(),
            Some(&b"image"[..])
        );
        assert_eq!(fs.read_head("/sbin/out", 100).unwrap(), None);
        assert_eq!(fs.read_head("/nothing", 100).unwrap(), None);
        let e = fs.read_head("/etc/fifo", 10).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        assert_eq!(
            fs.list_dir("/sbin").unwrap(),
            Some(vec!["init".to_owned(), "out".to_owned()])
        );
        assert_eq!(fs.list_dir("/sbin/init").unwrap(), None);
    }
}
