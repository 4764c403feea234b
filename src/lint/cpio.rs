//! The names in an initramfs: the kernel's format, one or more `newc` cpio archives one after the
//! other (zero padding between them), each either plain or compressed. Debian's initramfs-tools
//! writes an uncompressed early-microcode archive first when microcode is installed, then the main
//! archive compressed with zstd (gzip on older releases); dracut writes the same shape. gzip and
//! zstd are read here (pure-Rust decoders); any other compression is [`CpioError::Compression`],
//! which the caller reports instead of guessing.
//!
//! Only names are kept; file data is skipped as it streams by. The archive is image content:
//! sizes are bounded by [`MAX_UNPACKED`] and [`MAX_NAMES`].

use std::io::{BufRead, BufReader, Read};

/// Bytes read from an initramfs after decompression at most: real ones unpack to well under
/// 512 MiB (Debian's with `MODULES=most` is about 200 MiB), and a compression bomb stops here.
const MAX_UNPACKED: u64 = 1 << 30;
/// Names kept at most (Debian's `MODULES=most` initramfs has about 2,500).
const MAX_NAMES: usize = 200_000;
/// Longest name accepted in an entry (the kernel's own limit is PATH_MAX, 4096).
const MAX_NAME: usize = 4096;
/// Magic of a `newc` archive member, without and with checksums.
const NEWC: [&[u8; 6]; 2] = [b"070701", b"070702"];

/// Why an initramfs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// A compression kiln does not read.
    #[error("it is compressed with {0}, which kiln does not read (gzip and zstd only)")]
    Compression(&'static str),
    /// Not an initramfs kiln recognises.
    #[error("it is not a cpio archive (the first bytes are {0})")]
    Format(String),
    /// Truncated or corrupt.
    #[error("it is corrupt: {0}")]
    Corrupt(String),
}

fn corrupt(e: impl std::fmt::Display) -> CpioError {
    CpioError::Corrupt(e.to_string())
}

/// The names in the initramfs `r` reads, in archive order (`usr/lib/modules/.../nvme.ko`,
/// without a leading `/` or `./`).
pub fn names(r: impl Read) -> Result<Vec<String>, CpioError> {
    let mut r = BufReader::new(r.take(MAX_UNPACKED));
    let mut names = Vec::new();
    loop {
        skip_zeros(&mut r)?;
        let head = r.fill_buf().map_err(corrupt)?;
        if head.is_empty() {
            return Ok(names);
        }
        if head.len() >= 6 && NEWC.iter().any(|m| &head[..6] == *m) {
            archive(&mut r, &mut names)?;
            continue;
        }
        // A compressed archive is the last part: decompress the rest and read its archives.
        return match head {
            [0x1f, 0x8b, ..] => {
                let d = flate2::bufread::MultiGzDecoder::new(r);
                plain(d, names)
            }
            [0x28, 0xb5, 0x2f, 0xfd, ..] => {
                let d = ruzstd::decoding::StreamingDecoder::new(r).map_err(corrupt)?;
                plain(d, names)
            }
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Err(CpioError::Compression("xz")),
            [0x02, 0x21, 0x4c, 0x18, ..] | [0x04, 0x22, 0x4d, 0x18, ..] => {
                Err(CpioError::Compression("lz4"))
            }
            [b'B', b'Z', b'h', ..] => Err(CpioError::Compression("bzip2")),
            [0x5d, 0, 0, ..] => Err(CpioError::Compression("lzma")),
            [0x89, b'L', b'Z', b'O', ..] => Err(CpioError::Compression("lzo")),
            other => Err(CpioError::Format(
                other
                    .iter()
                    .take(6)
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            )),
        };
    }
}

/// The archives of a decompressed stream (which may hold several, zero-padded).
fn plain(r: impl Read, mut names: Vec<String>) -> Result<Vec<String>, CpioError> {
    let mut r = BufReader::new(r.take(MAX_UNPACKED));
    loop {
        skip_zeros(&mut r)?;
        let head = r.fill_buf().map_err(corrupt)?;
        if head.is_empty() {
            return Ok(names);
        }
        if head.len() < 6 || !NEWC.iter().any(|m| &head[..6] == *m) {
            return Err(corrupt("data after the archive that is not an archive"));
        }
        archive(&mut r, &mut names)?;
    }
}

/// Skips the zero padding between archives.
fn skip_zeros(r: &mut impl BufRead) -> Result<(), CpioError> {
    loop {
        let buf = r.fill_buf().map_err(corrupt)?;
        if buf.is_empty() {
            return Ok(());
        }
        let zeros = buf.iter().take_while(|b| **b == 0).count();
        let all = zeros == buf.len();
        r.consume(zeros);
        if !all {
            return Ok(());
        }
    }
}

fn skip(r: &mut impl Read, n: u64) -> Result<(), CpioError> {
    let copied = std::io::copy(&mut r.take(n), &mut std::io::sink()).map_err(corrupt)?;
    if copied != n {
        return Err(corrupt("truncated"));
    }
    Ok(())
}

/// One archive: entries until `TRAILER!!!`.
fn archive(r: &mut impl BufRead, names: &mut Vec<String>) -> Result<(), CpioError> {
    loop {
        let mut h = [0u8; 110];
        r.read_exact(&mut h).map_err(corrupt)?;
        if !NEWC.iter().any(|m| &h[..6] == *m) {
            return Err(corrupt("a member does not start with the newc magic"));
        }
        let field = |i: usize| -> Result<u64, CpioError> {
            let s = std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).map_err(corrupt)?;
            u64::from_str_radix(s, 16).map_err(corrupt)
        };
        let size = field(6)?;
        let name_len = field(11)? as usize;
        if name_len == 0 || name_len > MAX_NAME {
            return Err(corrupt(format!("a name of {name_len} bytes")));
        }
        let mut name = vec![0u8; name_len];
        r.read_exact(&mut name).map_err(corrupt)?;
        // Header and name are padded to 4 bytes, and so is the data.
        skip(
            r,
            ((110 + name_len).next_multiple_of(4) - 110 - name_len) as u64,
        )?;
        skip(r, size.next_multiple_of(4))?;
        let name = String::from_utf8_lossy(&name[..name_len - 1]).into_owned();
        if name == "TRAILER!!!" {
            return Ok(());
        }
        if names.len() < MAX_NAMES {
            let clean = name.trim_start_matches("./").trim_start_matches('/');
            names.push(clean.to_owned());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `newc` archive of `files` (name, data), as `cpio -H newc -o` writes it.
    pub(crate) fn newc(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let trailer: (&str, &[u8]) = ("TRAILER!!!", b"");
        for (name, data) in files.iter().chain([&trailer]) {
            let namesize = name.len() + 1;
            out.extend_from_slice(b"070701");
            for v in [1, 0o100644, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, namesize, 0] {
                out.extend_from_slice(format!("{v:08x}").as_bytes());
            }
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            while out.len() % 4 != 0 {
                out.push(0);
            }
            out.extend_from_slice(data);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        }
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn microcode_then_a_gzip_archive() {
        let mut img = newc(&[("kernel/x86/microcode/GenuineIntel.bin", b"ucode")]);
        img.resize(img.len().next_multiple_of(512), 0);
        img.extend(gzip(&newc(&[
            (".", b""),
            (
                "usr/lib/modules/6.1.0/kernel/drivers/nvme/host/nvme.ko",
                b"\x7fELF",
            ),
        ])));
        let n = names(&img[..]).unwrap();
        assert_eq!(
            n,
            [
                "kernel/x86/microcode/GenuineIntel.bin",
                ".",
                "usr/lib/modules/6.1.0/kernel/drivers/nvme/host/nvme.ko"
            ]
        );
    }

    #[test]
    fn a_zstd_archive() {
        let data = newc(&[("init", b"#!/bin/sh\n"), ("lib/modules/x/ena.ko", b"x")]);
        let z = ruzstd::encoding::compress_to_vec(
            &data[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(names(&z[..]).unwrap(), ["init", "lib/modules/x/ena.ko"]);
    }

    #[test]
    fn other_compressions_and_corruption_are_named() {
        let e = names(&b"\xfd7zXZ\x00rest"[..]).unwrap_err().to_string();
        assert!(e.contains("xz"), "{e}");
        let e = names(&b"hello world"[..]).unwrap_err().to_string();
        assert!(e.contains("not a cpio archive"), "{e}");
        let mut cut = newc(&[("a", b"0123456789")]);
        cut.truncate(120);
        assert!(matches!(names(&cut[..]), Err(CpioError::Corrupt(_))));
    }
}
