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

    /// Opens `path` for writing, created (mode `mode`) or truncated, with its parents created.
    /// A final link is followed inside the image, as `cp` in the chroot would follow it.
    pub fn create(&self, path: &str, mode: u32) -> Result<std::fs::File, HostError> {
        self.create_inner(path, mode)
            .map_err(|e| self.with_links(e))
    }

    fn create_inner(&self, path: &str, mode: u32) -> Result<std::fs::File, HostError> {
        let mut p = in_image(path);
        for _ in 0..MAX_LINKS {
            match self.entry(&p.to_string_lossy())? {
                Entry::Link(target) => {
                    // A link resolves against its own directory, or the image's root.
                    let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
                    p = in_image(&dir.join(target).to_string_lossy());
                }
                Entry::Directory => {
                    return Err(HostError::InImage {
                        what: "writing",
                        path: p,
                        detail: "it is a directory".into(),
                    });
                }
                Entry::Other => {
                    let h = self.root.resolve_nofollow(&p).map_err(err("opening", &p))?;
                    return h
                        .reopen(OpenFlags::O_WRONLY | OpenFlags::O_TRUNC)
                        .map_err(err("opening", &p));
                }
                Entry::Missing => {
                    if let Some(parent) = p.parent() {
                        self.mkdir_all(&parent.to_string_lossy())?;
                    }
                    return self
                        .root
                        .create_file(
                            &p,
                            OpenFlags::O_WRONLY | OpenFlags::O_TRUNC,
                            &Permissions::from_mode(mode),
                        )
                        .map_err(err("creating", &p));
                }
            }
        }
        Err(HostError::InImage {
            what: "writing",
            path: p,
            detail: "too many levels of symbolic links".into(),
        })
    }

    /// Writes `data` to `path` (see [`ImageFs::create`]). Not atomic; safe to run twice.
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
    /// run twice (files are rewritten).
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
        let mut from = std::fs::File::open(src).map_err(HostError::io("reading", src))?;
        let mut to = self.create(&d, mode)?;
        std::io::copy(&mut from, &mut to).map_err(err("writing", dest))?;
        to.set_permissions(Permissions::from_mode(mode))
            .map_err(err("setting the mode of", dest))?;
        Ok(1)
    }

    /// Copies `src` in the image to host path `dest`, recursively. A link at `src` itself is
    /// followed inside the image; links below it are copied as links. Returns the files copied.
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
                std::fs::create_dir_all(dest).map_err(HostError::io("creating", dest))?;
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
            libc::S_IFREG => {
                let mut from = h.reopen(OpenFlags::O_RDONLY).map_err(err("reading", p))?;
                let mut to = std::fs::File::create(dest).map_err(HostError::io("writing", dest))?;
                std::io::copy(&mut from, &mut to).map_err(HostError::io("writing", dest))?;
                let mode = Permissions::from_mode(st.st_mode & 0o7777);
                to.set_permissions(mode)
                    .map_err(HostError::io("setting the mode of", dest))?;
                Ok(1)
            }
            _ => Err(HostError::InImage {
                what: "downloading",
                path: p.to_owned(),
                detail: "not a regular file, directory or link (or nested too deep)".into(),
            }),
        }
    }

    /// Mounts `source` (a host path for `bind`) of type `fstype` on directory `path` inside the
    /// image, created if missing, through the resolved handle (`/proc/self/fd/N`, as runc does
    /// since CVE-2021-30465), and makes it private. Not safe to run twice (mounts again).
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
            (Some(fstype), MsFlags::empty())
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
        let m = ImageMount {
            path: p.to_string_lossy().into_owned(),
            host_path,
            mount_id,
        };
        super::mount::make_private(&m.host_path)?;
        Ok(m)
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
}
