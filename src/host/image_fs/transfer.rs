//! Copies between the host and an image: [`ImageFs::upload`] (a host file or tree into the
//! image, through [`ImageFs::create`], so a device node, FIFO or socket at the destination is
//! refused) and [`ImageFs::download`] (regular files, directories and links out of the image,
//! without the setuid, setgid and sticky bits), and the host side of both: sources opened
//! `O_NOFOLLOW|O_NONBLOCK` as regular files only, destinations below the author's path replaced
//! rather than followed.

use super::{ImageFs, ensure_regular, err, in_image, read_only, special_kind};
use crate::host::HostError;
use pathrs::Handle;
use pathrs::flags::OpenFlags;
use std::fs::Permissions;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Directory depth a recursive copy goes to before it stops: deeper than any real tree, shallow
/// enough that a hostile one cannot exhaust the stack.
const MAX_DEPTH: usize = 256;
/// Permission bits a download keeps: setuid, setgid and sticky are dropped.
const DOWNLOAD_MODE_MASK: u32 = 0o777;

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
}

#[cfg(test)]
mod tests {
    use super::super::tests::Tree;
    use super::super::{Entry, ImageFs};
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

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
}
