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

use super::HostError;
use nix::mount::MsFlags;
use pathrs::flags::OpenFlags;
use pathrs::{Handle, InodeType, Root};
use std::fs::Permissions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Links followed before giving up on a path, as the kernel's own limit (`MAXSYMLINKS`, 40).
const MAX_LINKS: usize = 40;
/// Directory depth a recursive copy goes to before it stops: deeper than any real tree, shallow
/// enough that a hostile one cannot exhaust the stack.
const MAX_DEPTH: usize = 256;
/// Mode of directories kiln creates in an image (as `mkdir -p` under the usual umask 022).
const DIR_MODE: u32 = 0o755;
/// Permission bits a download keeps: setuid, setgid and sticky are dropped.
const DOWNLOAD_MODE_MASK: u32 = 0o777;

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

/// Opens host file `src` (the template author's) to copy it into an image: a regular file only,
/// opened without blocking (a FIFO there would otherwise hang the build) and without following
/// a final link. No side effects.
pub fn open_host_source(src: &Path) -> Result<std::fs::File, HostError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(src)
        .map_err(HostError::io("reading", src))?;
    let meta = f.metadata().map_err(HostError::io("reading", src))?;
    if !meta.is_file() {
        return Err(HostError::Invalid(format!(
            "{} is not a regular file, directory or link: kiln uploads only those",
            src.display()
        )));
    }
    Ok(f)
}

/// Makes the host directory a download writes into. `dest` itself (`depth` 0) is the template
/// author's path, created with its parents; below it a name comes from the image, so whatever
/// non-directory is there (a link a former download made, a file) is replaced, never followed.
fn host_dir(dest: &Path, depth: usize) -> Result<(), HostError> {
    if depth == 0 {
        return std::fs::create_dir_all(dest).map_err(HostError::io("creating", dest));
    }
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => std::fs::remove_file(dest).map_err(HostError::io("replacing", dest))?,
        Err(_) => {}
    }
    std::fs::create_dir(dest).map_err(HostError::io("creating", dest))
}

/// Opens the host file a download writes (mode 0600 until the copy is done), as [`host_dir`]
/// does for directories: below the author's `dest`, a new file replaces whatever was there and
/// is created `O_EXCL|O_NOFOLLOW`. A FIFO or device at the author's own `dest` is refused.
fn host_file(dest: &Path, depth: usize) -> Result<std::fs::File, HostError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).mode(0o600);
    if depth == 0 {
        o.create(true).truncate(true).custom_flags(libc::O_NONBLOCK);
    } else {
        match std::fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => {
                return Err(HostError::Invalid(format!(
                    "{} is a directory: a download cannot replace it with a file",
                    dest.display()
                )));
            }
            Ok(_) => std::fs::remove_file(dest).map_err(HostError::io("replacing", dest))?,
            Err(_) => {}
        }
        o.create_new(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    }
    let f = o.open(dest).map_err(HostError::io("writing", dest))?;
    let meta = f.metadata().map_err(HostError::io("writing", dest))?;
    if !meta.is_file() {
        return Err(HostError::Invalid(format!(
            "{} is not a regular file: a download writes only regular files",
            dest.display()
        )));
    }
    Ok(f)
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

    /// The host path a handle refers to (for records and messages only; never opened again).
    fn host_path(fd: &impl AsFd) -> PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())).unwrap_or_default()
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

    /// Copies host file or directory `src` to `dest` in the image, recursively, keeping modes
    /// and copying links as links (Packer's file provisioner). Returns the files copied. Safe to
    /// run twice (files are rewritten). A destination that is a device node, FIFO or socket in
    /// the image is refused (see [`ImageFs::create`]); so is a host source that is one.
    pub fn upload(&self, src: &Path, dest: &str) -> Result<u64, HostError> {
        self.upload_at(src, &in_image(dest), 0)
    }

    fn upload_at(&self, src: &Path, dest: &Path, depth: usize) -> Result<u64, HostError> {
        let meta = std::fs::symlink_metadata(src).map_err(HostError::io("reading", src))?;
        let d = dest.to_string_lossy();
        if depth > MAX_DEPTH {
            return Err(HostError::Invalid(format!(
                "{} is nested deeper than {MAX_DEPTH} directories",
                src.display()
            )));
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(src).map_err(HostError::io("reading the link", src))?;
            self.remove(&d)?;
            self.symlink(&d, &target)?;
            return Ok(0);
        }
        if meta.is_dir() {
            self.mkdir_all(&d)?;
            let mut n = 0;
            for e in std::fs::read_dir(src).map_err(HostError::io("listing", src))? {
                let e = e.map_err(HostError::io("listing", src))?;
                n += self.upload_at(&e.path(), &dest.join(e.file_name()), depth + 1)?;
            }
            return Ok(n);
        }
        let mode = meta.permissions().mode() & 0o7777;
        let mut from = open_host_source(src)?;
        let mut to = self.create(&d, mode)?;
        std::io::copy(&mut from, &mut to).map_err(err("writing", dest))?;
        to.set_permissions(Permissions::from_mode(mode))
            .map_err(err("setting the mode of", dest))?;
        Ok(1)
    }

    /// Copies `src` in the image to host path `dest`, recursively. A link at `src` itself is
    /// followed inside the image; links below it are copied as links. Regular files only: a
    /// device node, FIFO or socket fails the download; copies lose the setuid, setgid and sticky
    /// bits. `dest` itself is the template author's path (a link there is followed); below it,
    /// names come from the image, so a link or file already there is replaced, never followed.
    /// Returns the files copied. Safe to run twice.
    pub fn download(&self, src: &str, dest: &Path) -> Result<u64, HostError> {
        let p = in_image(src);
        let h = self
            .root
            .resolve(&p)
            .map_err(err("reading", &p))
            .map_err(|e| self.with_links(e))?;
        self.download_handle(&p, h, dest, 0)
    }

    fn download_handle(
        &self,
        p: &Path,
        h: Handle,
        dest: &Path,
        depth: usize,
    ) -> Result<u64, HostError> {
        let st = nix::sys::stat::fstat(h.as_fd()).map_err(err("reading", p))?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                let target = self.root.readlink(p).map_err(err("reading", p))?;
                let _ = std::fs::remove_file(dest);
                std::os::unix::fs::symlink(target, dest).map_err(HostError::io("linking", dest))?;
                Ok(0)
            }
            libc::S_IFDIR if depth <= MAX_DEPTH => {
                host_dir(dest, depth)?;
                let dir = h
                    .reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY)
                    .map_err(err("listing", p))?;
                let mut dir =
                    nix::dir::Dir::from_fd(OwnedFd::from(dir)).map_err(err("listing", p))?;
                let names: Vec<String> = dir
                    .iter()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "." && n != "..")
                    .collect();
                let mut n = 0;
                for name in names {
                    let child = p.join(&name);
                    let ch = self
                        .root
                        .resolve_nofollow(&child)
                        .map_err(err("reading", &child))?;
                    n += self.download_handle(&child, ch, &dest.join(&name), depth + 1)?;
                }
                Ok(n)
            }
            libc::S_IFDIR => Err(HostError::InImage {
                what: "downloading",
                path: p.to_owned(),
                detail: format!("it is nested deeper than {MAX_DEPTH} directories"),
            }),
            libc::S_IFREG => {
                let mut from = h.reopen(read_only()).map_err(err("reading", p))?;
                ensure_regular(&from, "reading", p, Some(&st))?;
                let mut to = host_file(dest, depth)?;
                std::io::copy(&mut from, &mut to).map_err(HostError::io("writing", dest))?;
                let mode = Permissions::from_mode(st.st_mode & DOWNLOAD_MODE_MASK);
                to.set_permissions(mode)
                    .map_err(HostError::io("setting the mode of", dest))?;
                Ok(1)
            }
            _ => Err(HostError::InImage {
                what: "downloading",
                path: p.to_owned(),
                detail: format!(
                    "it is {}: kiln downloads only regular files, directories and links",
                    special_kind(&st).unwrap_or_default()
                ),
            }),
        }
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
        let parent = super::mount::mount_id_of(&dir).unwrap_or_default();
        let mount_id =
            super::mount::child_mount_at(parent, &host_path).ok_or_else(|| HostError::InImage {
                what: "mounting on",
                path: p.clone(),
                detail: "the new mount is not in the mount table".into(),
            })?;
        drop(dir);
        let m = ImageMount {
            path: p.to_string_lossy().into_owned(),
            host_path,
            mount_id,
        };
        if let Err(e) = self.seal(&m, fstype == "bind") {
            super::mount::detach_id(m.mount_id, &m.host_path);
            return Err(e);
        }
        Ok(m)
    }

    /// Makes mount `m` private and (a bind mount, whose flags the bind call cannot set)
    /// `nodev,nosuid`, through a handle on the mount's own root, checked by mount id.
    fn seal(&self, m: &ImageMount, bind: bool) -> Result<(), HostError> {
        let p = Path::new(&m.path);
        let top = self.root.resolve(p).map_err(err("mounting on", p))?;
        if super::mount::mount_id_of(&top) != Some(m.mount_id) {
            return Err(HostError::InImage {
                what: "mounting on",
                path: p.to_owned(),
                detail: "the path moved while kiln mounted on it".into(),
            });
        }
        super::mount::make_private_at(&top, &m.host_path)?;
        if bind {
            super::mount::restrict_at(&top, &m.host_path)?;
        }
        super::mount::ensure_restricted(&top, &m.host_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory standing in for a mounted image, with links out of it.
    struct Tree(PathBuf);
    impl Tree {
        fn new(tag: &str) -> Self {
            let d = std::env::temp_dir().join(format!(
                "kiln-imagefs-{tag}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(d.join("image/etc")).unwrap();
            std::fs::create_dir_all(d.join("host")).unwrap();
            Tree(d)
        }
        fn image(&self) -> PathBuf {
            self.0.join("image")
        }
        fn host(&self) -> PathBuf {
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

    /// Upload and download of trees keep modes and links, and stay inside.
    #[test]
    fn trees_round_trip_with_modes_and_links() {
        let t = Tree::new("trees");
        let src = t.0.join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("sub/run.sh"), Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        let fs = ImageFs::open(&t.image()).unwrap();
        assert_eq!(fs.upload(&src, "/opt/app").unwrap(), 1);
        let m = std::fs::metadata(t.image().join("opt/app/sub/run.sh")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o750);
        assert_eq!(
            fs.entry("/opt/app/link").unwrap(),
            Entry::Link("/etc/passwd".into())
        );
        let out = t.0.join("back");
        assert_eq!(fs.download("/opt/app", &out).unwrap(), 1);
        assert_eq!(
            std::fs::read_link(out.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(out.join("sub/run.sh").is_file());
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

    /// A download drops setuid, setgid and sticky bits, and below its destination replaces a
    /// link (say, one an earlier download of the image's links made) instead of following it.
    #[test]
    fn downloads_drop_set_id_bits_and_never_follow_host_links() {
        let t = Tree::new("download");
        let img = t.image();
        std::fs::create_dir_all(img.join("opt/app")).unwrap();
        std::fs::write(img.join("opt/app/suid"), "suid").unwrap();
        std::fs::set_permissions(img.join("opt/app/suid"), Permissions::from_mode(0o6755)).unwrap();
        let out = t.0.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let victim = t.host().join("victim");
        std::fs::write(&victim, "host file").unwrap();
        std::os::unix::fs::symlink(&victim, out.join("suid")).unwrap();
        let fs = ImageFs::open(&img).unwrap();
        assert_eq!(fs.download("/opt/app", &out).unwrap(), 1);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file");
        let m = std::fs::symlink_metadata(out.join("suid")).unwrap();
        assert!(m.is_file());
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        fs.download("/opt/app/suid", &t.0.join("one")).unwrap();
        let m = std::fs::metadata(t.0.join("one")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    }

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
            rt.block_on(super::super::mount::unmount_id(m.mount_id, &img))
                .unwrap();
        }
        assert!(!super::super::mount::is_mount_root(&img.join("run")));
    }
}
