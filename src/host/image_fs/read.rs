//! Reading an image's files for inspection (the image linter, `crate::lint`): a regular file's
//! first bytes and a directory's names, each path resolved within the mount like every other
//! path here (a link, even `/sbin/init -> /lib/systemd/systemd` or one pointing out of the image,
//! leads to a place in the image). Opens are `O_NOFOLLOW|O_NONBLOCK` on a handle whose type was
//! checked first, so a FIFO or device node in the image is reported, never read from; reads are
//! bounded by the caller's cap, so a huge or sparse file costs at most that. Files and directories
//! on the kernel's pseudo file systems (the host's `/proc` and `/sys`, mounted into the image by
//! `chroot_mounts`) are refused: what kiln reads may end up in a finding, and those hold the
//! host's and kiln's own state.

use super::{ImageFs, ensure_regular, err, errno_of, in_image, read_only};
use crate::host::HostError;
use pathrs::flags::OpenFlags;
use std::io::Read;
use std::os::fd::AsFd;

/// Names a directory listing returns at most: more than any real `/boot` or `/lib/modules`, few
/// enough that a directory of millions of entries cannot exhaust memory.
const MAX_ENTRIES: usize = 100_000;

/// Kernel pseudo file systems whose files kiln never reads through an image (values from
/// `linux/magic.h`): with `chroot_mounts` the image's `/proc` and `/sys` are the host kernel's,
/// so a link such as `/etc/fstab -> /proc/self/environ` would otherwise put kiln's own
/// environment into a finding. proc, sysfs, cgroup, cgroup2, debugfs, tracefs, securityfs, bpf,
/// efivarfs, devpts, binfmt_misc, configfs, pstore.
const PSEUDO_FS: [u64; 13] = [
    0x9fa0,
    0x6265_6572,
    0x0027_e0eb,
    0x6367_7270,
    0x6462_6720,
    0x7472_6163,
    0x7363_6673,
    0xcafe_4a11,
    0xde5e_81e4,
    0x1cd1,
    0x4249_4e4d,
    0x6265_6570,
    0x6165_676c,
];

/// Refuses a descriptor on a kernel pseudo file system ([`PSEUDO_FS`]).
fn ensure_not_pseudo(fd: impl AsFd, path: &std::path::Path) -> Result<(), HostError> {
    let st = nix::sys::statfs::fstatfs(fd).map_err(err("reading", path))?;
    let kind = st.filesystem_type().0 as u64 & 0xffff_ffff;
    if PSEUDO_FS.contains(&kind) {
        return Err(HostError::InImage {
            what: "reading",
            path: path.to_owned(),
            detail: format!(
                "it is on a kernel pseudo file system (magic {kind:#x}), mounted into the image for the build; kiln reads only the image's own files"
            ),
        });
    }
    Ok(())
}

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
        ensure_not_pseudo(&f, &p)?;
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
        ensure_not_pseudo(&h, &p)?;
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

    /// A link into the host's /proc, mounted into the image as chroot_mounts does, is refused:
    /// kiln's own environment never reaches a finding.
    #[test]
    fn pseudo_file_systems_are_refused() {
        let t = Tree::new("pseudo");
        let img = t.image();
        std::fs::create_dir_all(img.join("proc")).unwrap();
        nix::mount::mount(
            Some("proc"),
            &img.join("proc"),
            Some("proc"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::os::unix::fs::symlink("/proc/self/environ", img.join("etc/fstab")).unwrap();
        let fs = ImageFs::open(&img).unwrap();
        let e = fs.read_head("/etc/fstab", 100).unwrap_err().to_string();
        assert!(e.contains("pseudo file system"), "{e}");
        let e = fs.list_dir("/proc").unwrap_err().to_string();
        assert!(e.contains("pseudo file system"), "{e}");
        nix::mount::umount2(&img.join("proc"), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
}
