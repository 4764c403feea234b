//! Sparse file copies: only the data extents are read and written (SEEK_DATA/SEEK_HOLE), so a
//! copy costs time in proportion to the data, not to the file's size.

use super::HostError;
use nix::unistd::{Whence, lseek};
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::Path;

/// Copies `src` to `dst` (created or truncated) keeping holes; `dst` gets `src`'s length, or
/// `min_len` if that is larger (a volume grown beyond its snapshot). Returns the bytes of data
/// copied. Safe to run twice (the second run rewrites `dst`).
pub fn copy(src: &Path, dst: &Path, min_len: u64) -> Result<u64, HostError> {
    let from = File::open(src).map_err(HostError::io("opening", src))?;
    let len = from
        .metadata()
        .map_err(HostError::io("reading the size of", src))?
        .len();
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(HostError::io("creating", parent))?;
    }
    let tmp = dst.with_extension("partial");
    let to = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)
        .map_err(HostError::io("creating", &tmp))?;
    let mut copied = 0u64;
    for (start, end) in data_ranges(src)? {
        // The kernel copies the extent (no trip through user space); holes stay holes.
        let mut off_in = start as i64;
        let mut off_out = start as i64;
        let hole = end as i64;
        while off_in < hole {
            let want = (hole - off_in) as usize;
            let n = nix::fcntl::copy_file_range(
                from.as_fd(),
                Some(&mut off_in),
                to.as_fd(),
                Some(&mut off_out),
                want,
            )
            .map_err(HostError::sys("copying data from", src))?;
            if n == 0 {
                break;
            }
            copied += n as u64;
        }
    }
    to.set_len(len.max(min_len))
        .map_err(HostError::io("sizing", &tmp))?;
    to.sync_all().map_err(HostError::io("syncing", &tmp))?;
    std::fs::rename(&tmp, dst).map_err(HostError::io("renaming into place", dst))?;
    Ok(copied)
}

/// Creates a sparse file of `len` bytes (an empty volume). Safe to run twice.
pub fn create(path: &Path, len: u64) -> Result<(), HostError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(HostError::io("creating", parent))?;
    }
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(HostError::io("creating", path))?;
    f.set_len(len).map_err(HostError::io("sizing", path))
}

/// The data extents of `path` as `(start, end)` byte ranges, in order (holes read as zeros and
/// are left out). Read only.
pub fn data_ranges(path: &Path) -> Result<Vec<(u64, u64)>, HostError> {
    let f = File::open(path).map_err(HostError::io("opening", path))?;
    let len = f
        .metadata()
        .map_err(HostError::io("reading the size of", path))?
        .len() as i64;
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while pos < len {
        let data = match lseek(f.as_fd(), pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::Error::ENXIO) => break,
            Err(e) => {
                return Err(HostError::Sys {
                    what: "seeking data in",
                    path: path.to_owned(),
                    source: e,
                });
            }
        };
        let hole = lseek(f.as_fd(), data, Whence::SeekHole)
            .map_err(HostError::sys("seeking a hole in", path))?;
        out.push((data as u64, hole as u64));
        pos = hole;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn keeps_holes_and_data() {
        let dir = std::env::temp_dir().join(format!("kiln-sparse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("a");
        create(&src, 64 << 20).unwrap();
        let mut f = OpenOptions::new().write(true).open(&src).unwrap();
        f.seek(SeekFrom::Start(10 << 20)).unwrap();
        f.write_all(b"hello").unwrap();
        drop(f);
        let dst = dir.join("b");
        let copied = copy(&src, &dst, 128 << 20).unwrap();
        assert!(copied <= 1 << 20, "copied {copied}: only the data extent");
        let data = std::fs::read(&dst).unwrap();
        assert_eq!(data.len(), 128 << 20);
        assert_eq!(&data[10 << 20..(10 << 20) + 5], b"hello");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
