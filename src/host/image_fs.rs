//! The image's file system as kiln touches it: every path that names something inside an image
//! is resolved **within the mount**, the way the kernel resolves paths inside a chroot (symbolic
//! links, absolute ones relative to the mount; `..` that cannot climb above it), by `openat2`
//! with `RESOLVE_IN_ROOT` through libpathrs. Kiln then works on the file descriptors it gets back,
//! so an image cannot swap a directory for a link between a check and a use.
//!
//! Images are untrusted: a source image may ship `/etc/x -> /host/file` or `/var/run -> ../../..`.
//! Nothing here ever joins an image path onto the mount path as a string. Host paths (the
//! template's sources, a download's destination) are the template author's and are used as given.
//!
//! What a link out of the image does, per operation (README "Host safety"): it resolves inside
//! the image as the chroot would see it, for uploads, downloads, `copy_files`, script staging and
//! `chroot_mounts` targets; a link that then leads nowhere fails with an error naming the path
//! and the link.
//!
//! What else is at a path is refused, never opened: kiln writes only regular files (and creates
//! directories and links) in an image. A device node (`mknod b 8 0`, naming a host disk), a FIFO
//! or a socket at an upload's destination fails the upload with an error naming the path and what
//! is there; kiln does not replace it (the image's own content stays as the image made it, and the
//! author sees the conflict). Every open of an image file is `O_NOFOLLOW|O_NONBLOCK` on a handle
//! whose type was checked first (`fstat` of the resolved `O_PATH` handle, then of the opened
//! descriptor), and a new file is created with `O_EXCL`, so no file operation here can block on a
//! FIFO or a device or land on something that appeared between the check and the open: the async
//! runtime that calls these never waits on the image. Downloads copy regular files only and drop
//! the setuid, setgid and sticky bits. Every mount made here is `nodev,nosuid`.
//!
//! This file owns resolution inside the image, the checks on what is at a path, and the writes
//! (create, remove, rename, link) the rest goes through; uploads and downloads are in `transfer`,
//! mounts in `mounts`, reads for inspection (the image linter) in `read`.

use super::HostError;
use pathrs::flags::OpenFlags;
use pathrs::{Handle, InodeType, Root};
use std::fs::Permissions;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

mod mounts;
mod read;
mod transfer;

pub use mounts::ImageMount;
pub use transfer::open_host_source;

/// Links followed before giving up on a path, as the kernel's own limit (`MAXSYMLINKS`, 40).
const MAX_LINKS: usize = 40;
/// Mode of directories kiln creates in an image (as `mkdir -p` under the usual umask 022).
const DIR_MODE: u32 = 0o755;

/// Opening an existing regular file in the image to rewrite it: never through a final link, never
/// blocking.
fn write_existing() -> OpenFlags {
    OpenFlags::O_WRONLY
        | OpenFlags::O_TRUNC
        | OpenFlags::O_NOFOLLOW
        | OpenFlags::O_NONBLOCK
        | OpenFlags::O_CLOEXEC
}

/// Creating a new file in the image: only if nothing is there (`O_EXCL`), never blocking.
fn write_new() -> OpenFlags {
    OpenFlags::O_WRONLY
        | OpenFlags::O_EXCL
        | OpenFlags::O_NOFOLLOW
        | OpenFlags::O_NONBLOCK
        | OpenFlags::O_CLOEXEC
}

/// Opening a regular file in the image to read it.
fn read_only() -> OpenFlags {
    OpenFlags::O_RDONLY | OpenFlags::O_NOFOLLOW | OpenFlags::O_NONBLOCK | OpenFlags::O_CLOEXEC
}

/// What an inode that is not a regular file, directory or link is, for messages
/// (`a block device node (8:0)`); `None` for those three.
fn special_kind(st: &nix::sys::stat::FileStat) -> Option<String> {
    use nix::sys::stat::{major, minor};
    let numbers = || format!("{}:{}", major(st.st_rdev), minor(st.st_rdev));
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFDIR | libc::S_IFLNK => None,
        libc::S_IFBLK => Some(format!("a block device node ({})", numbers())),
        libc::S_IFCHR => Some(format!("a character device node ({})", numbers())),
        libc::S_IFIFO => Some("a FIFO (named pipe)".into()),
        libc::S_IFSOCK => Some("a socket".into()),
        _ => Some("a file of unknown type".into()),
    }
}

/// The refusal of a write onto `kind` at `path`.
fn refuse_special(what: &'static str, path: &Path, kind: &str) -> HostError {
    HostError::InImage {
        what,
        path: path.to_owned(),
        detail: format!(
            "it is {kind}: kiln writes only regular files and directories in an image and never opens a device node, FIFO or socket there; remove it from the image first (e.g. with a shell provisioner) or choose another destination"
        ),
    }
}

/// Checks that the descriptor kiln just opened is a regular file (and, with `same`, the very
/// inode checked before the open), before anything is read or written through it.
fn ensure_regular(
    f: &std::fs::File,
    what: &'static str,
    path: &Path,
    same: Option<&nix::sys::stat::FileStat>,
) -> Result<(), HostError> {
    let st = nix::sys::stat::fstat(f.as_fd()).map_err(err(what, path))?;
    if let Some(kind) = special_kind(&st) {
        return Err(refuse_special(what, path, &kind));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(HostError::InImage {
            what,
            path: path.to_owned(),
            detail: "it is not a regular file".into(),
        });
    }
    if let Some(before) = same
        && (before.st_dev, before.st_ino) != (st.st_dev, st.st_ino)
    {
        return Err(HostError::InImage {
            what,
            path: path.to_owned(),
            detail: "it was replaced while kiln opened it".into(),
        });
    }
    Ok(())
}

/// The mounted image, opened once: paths given to its methods are paths inside the image
/// (`/etc/motd`), whatever the mount path is.
pub struct ImageFs {
    root: Root,
    mount: PathBuf,
}

/// What is at a path inside the image, without following a final link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Nothing.
    Missing,
    /// A symbolic link to this target (as stored, never resolved on the host).
    Link(PathBuf),
    /// A directory.
    Directory,
    /// A regular file, or anything else that is not a link or a directory.
    Other,
}

fn in_image(path: &str) -> PathBuf {
    Path::new("/").join(path.trim_start_matches('/'))
}

/// Maps any error (pathrs, io, errno) of `what` on `path` in the image to [`HostError::InImage`].
fn err<E: std::fmt::Display>(what: &'static str, path: &Path) -> impl FnOnce(E) -> HostError {
    let path = path.to_owned();
    move |e| HostError::InImage {
        what,
        path,
        detail: e.to_string(),
    }
}

fn errno_of(e: &pathrs::error::Error) -> Option<i32> {
    match e.kind() {
        pathrs::error::ErrorKind::OsError(n) => n,
        _ => None,
    }
}

impl ImageFs {
    /// Opens the image mounted at `mount` (a host path kiln chose). No side effects.
    pub fn open(mount: &Path) -> Result<Self, HostError> {
        let root = Root::open(mount).map_err(err("opening the image at", mount))?;
        Ok(Self {
            root,
            mount: mount.to_owned(),
        })
    }

    /// What is at `path`, without following a final link. No side effects.
    pub fn entry(&self, path: &str) -> Result<Entry, HostError> {
        let p = in_image(path);
        let h = match self.root.resolve_nofollow(&p) {
            Ok(h) => h,
            Err(e) if errno_of(&e) == Some(libc::ENOENT) => return Ok(Entry::Missing),
            Err(e) => return Err(err("looking up", &p)(e)),
        };
        let st = nix::sys::stat::fstat(h.as_fd()).map_err(err("looking up", &p))?;
        Ok(match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => Entry::Link(self.root.readlink(&p).map_err(err("reading", &p))?),
            libc::S_IFDIR => Entry::Directory,
            _ => Entry::Other,
        })
    }

    /// The links along `path` (`/etc -> /host/etc`), for error messages.
    fn links_along(&self, path: &Path) -> String {
        let mut at = PathBuf::from("/");
        let mut links = Vec::new();
        for c in path.components() {
            if let Component::Normal(n) = c {
                at.push(n);
                if let Ok(Entry::Link(t)) = self.entry(&at.to_string_lossy()) {
                    links.push(format!("{} is a link to {}", at.display(), t.display()));
                }
            }
        }
        if links.is_empty() {
            String::new()
        } else {
            format!(" ({}; links resolve inside the image)", links.join(", "))
        }
    }

    fn with_links(&self, e: HostError) -> HostError {
        match e {
            HostError::InImage { what, path, detail } => {
                let links = self.links_along(&path);
                HostError::InImage {
                    what,
                    detail: format!("{detail}{links}"),
                    path,
                }
            }
            other => other,
        }
    }

    /// `mkdir -p` inside the image; returns the directory. Safe to run twice.
    pub fn mkdir_all(&self, path: &str) -> Result<Handle, HostError> {
        let p = in_image(path);
        self.root
            .mkdir_all(&p, &Permissions::from_mode(DIR_MODE))
            .map_err(err("creating the directory", &p))
            .map_err(|e| self.with_links(e))
    }

    /// Opens `path` for writing, created (mode `mode`, `O_EXCL`) or truncated, with its parents
    /// created. A final link is followed inside the image, as `cp` in the chroot would follow it.
    /// Anything at the path that is not a regular file (a device node, FIFO, socket, directory)
    /// is refused with an error naming the path and what is there, without being opened.
    ///
    /// Side effects: creates or truncates the file and creates missing parent directories. Safe to
    /// run twice. Never blocks on the image's content.
    pub fn create(&self, path: &str, mode: u32) -> Result<std::fs::File, HostError> {
        self.create_inner(path, mode)
            .map_err(|e| self.with_links(e))
    }

    fn create_inner(&self, path: &str, mode: u32) -> Result<std::fs::File, HostError> {
        let mut p = in_image(path);
        for _ in 0..MAX_LINKS {
            let h = match self.root.resolve_nofollow(&p) {
                Ok(h) => h,
                Err(e) if errno_of(&e) == Some(libc::ENOENT) => {
                    if let Some(parent) = p.parent() {
                        self.mkdir_all(&parent.to_string_lossy())?;
                    }
                    match self
                        .root
                        .create_file(&p, write_new(), &Permissions::from_mode(mode))
                    {
                        Ok(f) => {
                            ensure_regular(&f, "creating", &p, None)?;
                            return Ok(f);
                        }
                        // Something appeared meanwhile (or a dangling link is there): look again.
                        Err(e) if errno_of(&e) == Some(libc::EEXIST) => continue,
                        Err(e) => return Err(err("creating", &p)(e)),
                    }
                }
                Err(e) => return Err(err("opening", &p)(e)),
            };
            let st = nix::sys::stat::fstat(h.as_fd()).map_err(err("opening", &p))?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFLNK => {
                    let target = self.root.readlink(&p).map_err(err("reading", &p))?;
                    // A link resolves against its own directory, or the image's root.
                    let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
                    p = in_image(&dir.join(target).to_string_lossy());
                }
                libc::S_IFDIR => {
                    return Err(HostError::InImage {
                        what: "writing",
                        path: p,
                        detail: "it is a directory".into(),
                    });
                }
                libc::S_IFREG => {
                    // The handle pins the inode checked above: the reopen cannot reach another.
                    let f = h.reopen(write_existing()).map_err(err("opening", &p))?;
                    ensure_regular(&f, "writing", &p, Some(&st))?;
                    return Ok(f);
                }
                _ => {
                    let kind = special_kind(&st).unwrap_or_default();
                    return Err(refuse_special("writing", &p, &kind));
                }
            }
        }
        Err(HostError::InImage {
            what: "writing",
            path: p,
            detail: "too many levels of symbolic links".into(),
        })
    }

    /// Writes `data` to `path` (see [`ImageFs::create`]: a device node, FIFO or socket there is
    /// refused, never opened). Not atomic; safe to run twice.
    pub fn write(&self, path: &str, data: &[u8], mode: u32) -> Result<(), HostError> {
        use std::io::Write;
        let p = in_image(path);
        let mut f = self.create(path, mode)?;
        f.write_all(data).map_err(err("writing", &p))
    }

    /// Removes the file or link at `path` (never what a link points to). Missing is fine.
    pub fn remove(&self, path: &str) -> Result<(), HostError> {
        let p = in_image(path);
        match self.root.remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(err("removing", &p)(e)),
        }
    }

    /// Removes `path` and everything below it (never following links). Missing is fine.
    pub fn remove_all(&self, path: &str) -> Result<(), HostError> {
        let p = in_image(path);
        match self.root.remove_all(&p) {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(err("removing", &p)(e)),
        }
    }

    /// Renames `from` to `to`, both inside the image.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), HostError> {
        let (f, t) = (in_image(from), in_image(to));
        self.root
            .rename(&f, &t, pathrs::flags::RenameFlags::empty())
            .map_err(err("renaming", &f))
    }

    /// Makes `path` a symbolic link to `target` (stored as given).
    pub fn symlink(&self, path: &str, target: &Path) -> Result<(), HostError> {
        let p = in_image(path);
        self.root
            .create(&p, &InodeType::Symlink(target.to_owned()))
            .map_err(err("linking", &p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory standing in for a mounted image, with links out of it.
    pub(super) struct Tree(pub(super) PathBuf);
    impl Tree {
        pub(super) fn new(tag: &str) -> Self {
            let d = std::env::temp_dir().join(format!(
                "kiln-imagefs-{tag}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(d.join("image/etc")).unwrap();
            std::fs::create_dir_all(d.join("host")).unwrap();
            Tree(d)
        }
        pub(super) fn image(&self) -> PathBuf {
            self.0.join("image")
        }
        pub(super) fn host(&self) -> PathBuf {
            self.0.join("host")
        }
    }
    impl Drop for Tree {
        fn drop(&mut self) {
            // A test that failed may have left its mounts: detach them before removing files.
            for m in super::super::mount::mounts_under(&self.0) {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Absolute and relative links out of the image resolve inside it, for writes and reads.
    #[test]
    fn links_out_of_the_image_resolve_inside_it() {
        let t = Tree::new("links");
        let host = t.host();
        std::fs::write(host.join("secret"), "host secret").unwrap();
        let img = t.image();
        // Absolute, relative with enough `..`, a directory link, a dangling link.
        std::os::unix::fs::symlink(host.join("evil"), img.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../../..", img.join("etc/up")).unwrap();
        std::os::unix::fs::symlink(&host, img.join("hostdir")).unwrap();
        std::os::unix::fs::symlink(host.join("secret"), img.join("etc/read")).unwrap();
        let fs = ImageFs::open(&img).unwrap();
        fs.write("/etc/abs", b"one", 0o644).unwrap();
        fs.write("/etc/up/two", b"two", 0o644).unwrap();
        fs.write("/hostdir/three", b"three", 0o644).unwrap();
        assert!(
            !host.join("evil").exists(),
            "wrote through an absolute link"
        );
        assert!(
            !host.join("three").exists(),
            "wrote through a directory link"
        );
        // Inside the image, as the chroot sees them.
        let inside = |p: &str| std::fs::read_to_string(img.join(p)).ok();
        let abs_target = host.join("evil");
        assert_eq!(
            inside(&abs_target.to_string_lossy()[1..]).as_deref(),
            Some("one")
        );
        assert_eq!(inside("two").as_deref(), Some("two"));
        assert_eq!(
            std::fs::read_to_string(img.join(&host.to_string_lossy()[1..]).join("three")).ok(),
            Some("three".to_owned())
        );
        // Reading through a link to a host file finds nothing (the image has no such file).
        let e = fs
            .download("/etc/read", &t.0.join("peek"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/read"), "{e}");
        let e = fs
            .download("/etc/read", &t.0.join("out"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/read is a link to"), "{e}");
        assert!(!t.0.join("out").exists());
        assert_eq!(
            std::fs::read_to_string(host.join("secret")).unwrap(),
            "host secret"
        );
    }

    /// A thread keeps replacing a directory with a link to a host directory while files are
    /// written into it: every write lands inside the image or fails, never on the host. (A
    /// string join of the mount path and the image path writes to the host within a few
    /// hundred attempts here.)
    #[test]
    fn a_directory_swapped_for_a_link_never_leads_out() {
        let t = Tree::new("race");
        let img = t.image();
        let host = t.host();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (img, host, stop) = (img.clone(), host.clone(), stop.clone());
            std::thread::spawn(move || {
                let up = img.join("up");
                let pause = || std::thread::sleep(std::time::Duration::from_micros(50));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::fs::remove_dir_all(&up);
                    let _ = std::fs::remove_file(&up);
                    let _ = std::os::unix::fs::symlink(&host, &up);
                    pause();
                    let _ = std::fs::remove_file(&up);
                    let _ = std::fs::create_dir(&up);
                    pause();
                }
            })
        };
        while std::fs::symlink_metadata(img.join("up")).is_err() {
            std::thread::yield_now();
        }
        let fs = ImageFs::open(&img).unwrap();
        for i in 0..2000 {
            let _ = fs.write(&format!("/up/f{i}"), b"x", 0o644);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        let leaked: Vec<_> = std::fs::read_dir(&host).unwrap().flatten().collect();
        assert!(leaked.is_empty(), "wrote on the host: {leaked:?}");
    }

    /// A dangling link in the way of a write names the link in the error.
    #[test]
    fn a_dangling_directory_link_is_named() {
        let t = Tree::new("dangling");
        std::os::unix::fs::symlink("/nowhere/tmp", t.image().join("tmp")).unwrap();
        std::fs::create_dir_all(t.image().join("nowhere")).unwrap();
        std::fs::remove_dir(t.image().join("nowhere")).unwrap();
        let fs = ImageFs::open(&t.image()).unwrap();
        let e = fs.write("/tmp/x/y", b"", 0o644).unwrap_err().to_string();
        assert!(e.contains("/tmp is a link to /nowhere/tmp"), "{e}");
    }

    /// A device node, a FIFO or a socket at an upload's destination (or at the end of a link
    /// there) is refused without being opened, naming the path and what it is; the FIFO case
    /// returns at once instead of waiting for a reader.
    #[test]
    fn special_files_at_a_destination_are_refused() {
        use nix::sys::stat::{Mode, SFlag, makedev, mknod};
        let t = Tree::new("special");
        let img = t.image();
        mknod(
            &img.join("etc/null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        )
        .unwrap();
        nix::unistd::mkfifo(&img.join("etc/fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        std::os::unix::fs::symlink("/etc/fifo", img.join("etc/to-fifo")).unwrap();
        let sock = std::os::unix::net::UnixListener::bind(img.join("etc/sock")).unwrap();
        let src = t.0.join("src");
        std::fs::write(&src, "upload").unwrap();
        let fs = ImageFs::open(&img).unwrap();
        let started = std::time::Instant::now();
        for (path, kind) in [
            ("/etc/null", "a character device node (1:3)"),
            ("/etc/fifo", "a FIFO"),
            ("/etc/to-fifo", "a FIFO"),
            ("/etc/sock", "a socket"),
        ] {
            let e = fs.write(path, b"x", 0o644).unwrap_err().to_string();
            assert!(e.contains(kind) && e.contains("never opens"), "{path}: {e}");
            let e = fs.upload(&src, path).unwrap_err().to_string();
            assert!(e.contains(kind), "{path}: {e}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        drop(sock);
        // Downloads refuse them too, and a host FIFO as an upload's source.
        let e = fs
            .download("/etc/fifo", &t.0.join("out"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a FIFO"), "{e}");
        nix::unistd::mkfifo(&t.0.join("host-fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        let e = fs
            .upload(&t.0.join("host-fifo"), "/etc/x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        // Regular files are still written, new ones created.
        fs.write("/etc/new", b"new", 0o644).unwrap();
        fs.write("/etc/new", b"again", 0o644).unwrap();
        assert_eq!(
            std::fs::read_to_string(img.join("etc/new")).unwrap(),
            "again"
        );
    }
}
