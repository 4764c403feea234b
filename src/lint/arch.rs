//! `init-architecture` and `kernel-architecture`: the machine `/sbin/init` and the kernel are
//! built for, against `ami_architecture`. `/sbin/init` is resolved inside the image (usually a
//! link to `/lib/systemd/systemd`, or to busybox); a `#!` script is judged by its interpreter.
//! Kernel formats: x86's bzImage (`HdrS` at 0x202; 64-bit when its `xloadflags` say so),
//! arm64's `Image` (`ARM\x64` at 56), a PE file (an EFI-stub or zboot kernel: its COFF machine),
//! ELF (`vmlinux`), or any of these gzip-compressed (Debian's arm64 `vmlinuz`).

use super::kernels::Kernel;
use super::{Lint, LintError};
use std::io::Read;

/// Bytes of a kernel or binary read for its header: the bzImage setup header ends before 0x270
/// and a PE header sits within the first KiB or so.
const HEAD: u64 = 4096;
/// Interpreter links followed from a `#!` init (one: an interpreter that is itself a script does
/// not run).
const SCRIPT_DEPTH: usize = 1;

/// A machine, as `ami_architecture` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// 64-bit x86.
    X86_64,
    /// 32-bit x86.
    I386,
    /// x86 of either width (a bzImage without `xloadflags`, older than Linux 3.8).
    X86,
    /// 64-bit ARM.
    Arm64,
    /// Something else (`ELF machine 40`).
    Other(u16),
}

impl Machine {
    fn name(self) -> String {
        match self {
            Machine::X86_64 => "x86_64".into(),
            Machine::I386 => "i386".into(),
            Machine::X86 => "x86".into(),
            Machine::Arm64 => "arm64".into(),
            Machine::Other(n) => format!("machine {n:#x}"),
        }
    }

    /// Whether a binary for this machine runs on an instance of `ami_architecture`.
    fn runs_on(self, architecture: &str) -> bool {
        match architecture {
            "x86_64" | "x86_64_mac" => matches!(self, Machine::X86_64 | Machine::X86),
            "i386" => matches!(self, Machine::I386 | Machine::X86),
            "arm64" | "arm64_mac" => self == Machine::Arm64,
            _ => true,
        }
    }
}

fn elf_machine(n: u16) -> Machine {
    match n {
        0x3e => Machine::X86_64,
        0x03 => Machine::I386,
        0xb7 => Machine::Arm64,
        n => Machine::Other(n),
    }
}

/// The machine of an ELF file's header, `None` when `b` is not ELF.
pub fn elf(b: &[u8]) -> Option<Machine> {
    if b.len() < 20 || &b[0..4] != b"\x7fELF" {
        return None;
    }
    let m = match b[5] {
        2 => u16::from_be_bytes([b[18], b[19]]),
        _ => u16::from_le_bytes([b[18], b[19]]),
    };
    Some(elf_machine(m))
}

/// The machine of a PE file's COFF header, `None` when `b` is not PE.
fn pe(b: &[u8]) -> Option<Machine> {
    if b.len() < 0x40 || &b[0..2] != b"MZ" {
        return None;
    }
    let at = u32::from_le_bytes([b[0x3c], b[0x3d], b[0x3e], b[0x3f]]) as usize;
    let h = b.get(at..at.checked_add(6)?)?;
    if &h[0..4] != b"PE\0\0" {
        return None;
    }
    Some(match u16::from_le_bytes([h[4], h[5]]) {
        0x8664 => Machine::X86_64,
        0x014c => Machine::I386,
        0xaa64 => Machine::Arm64,
        n => Machine::Other(n),
    })
}

/// The machine of a kernel image's first bytes, `None` when the format is not recognised.
pub fn kernel_machine(b: &[u8]) -> Option<Machine> {
    if b.len() >= 0x238 && &b[0x202..0x206] == b"HdrS" {
        // Boot protocol 2.12 (Linux 3.8) added xloadflags; bit 0 is a 64-bit entry point.
        let version = u16::from_le_bytes([b[0x206], b[0x207]]);
        return Some(if version >= 0x020c && b[0x236] & 1 == 1 {
            Machine::X86_64
        } else {
            Machine::X86
        });
    }
    if b.len() >= 60 && &b[56..60] == b"ARM\x64" {
        return Some(Machine::Arm64);
    }
    if let Some(m) = pe(b).or_else(|| elf(b)) {
        return Some(m);
    }
    if b.starts_with(&[0x1f, 0x8b]) {
        let mut head = Vec::new();
        let _ = flate2::read::GzDecoder::new(b)
            .take(HEAD)
            .read_to_end(&mut head);
        if !head.is_empty() && !head.starts_with(&[0x1f, 0x8b]) {
            return kernel_machine(&head);
        }
    }
    None
}

/// `init-architecture`: `/sbin/init` (or its `#!` interpreter) runs on `ami_architecture`.
pub fn init(l: &mut Lint<'_>) -> Result<(), LintError> {
    const ID: &str = "init-architecture";
    let arch = l.promises.architecture.clone();
    let mut path = "/sbin/init".to_owned();
    for depth in 0..=SCRIPT_DEPTH {
        let Some(head) = l.fs.read_head(&path, HEAD)? else {
            if depth == 0 {
                l.warn(
                    ID,
                    &path,
                    "there is no /sbin/init: the kernel starts /sbin/init unless its command line names another init, so the image will not boot as it is".into(),
                    "install an init (Debian: systemd-sysv), or set init= on the kernel command line".into(),
                );
            } else {
                l.error(
                    ID,
                    &path,
                    format!("/sbin/init is a script whose interpreter {path} is not in the image"),
                    format!("install {path} in the image"),
                );
            }
            return Ok(());
        };
        if let Some(interp) = head.strip_prefix(b"#!") {
            let line = interp.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            path = line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            continue;
        }
        let Some(machine) = elf(&head) else {
            l.not_checked(ID, format!("{path} is neither ELF nor a #! script"));
            return Ok(());
        };
        if !machine.runs_on(&arch) {
            l.error(
                ID,
                &path,
                format!(
                    "{path} is built for {} but the AMI is registered as ami_architecture = \"{arch}\": instances of that architecture cannot run it",
                    machine.name()
                ),
                format!(
                    "set ami_architecture = \"{}\", or build the image from {arch} binaries",
                    machine.name()
                ),
            );
        }
        return Ok(());
    }
    l.not_checked(
        ID,
        format!("{path}: an interpreter that is itself a script"),
    );
    Ok(())
}

/// `kernel-architecture`: the default kernel runs on `ami_architecture`.
pub fn kernel(l: &mut Lint<'_>, k: &Kernel) -> Result<(), LintError> {
    const ID: &str = "kernel-architecture";
    let Some(image) = &k.image else {
        l.error(
            ID,
            &format!("/boot/vmlinuz-{}", k.version),
            format!(
                "kernel {} has modules but no kernel file in /boot: nothing can boot it",
                k.version
            ),
            "reinstall the kernel package, or remove its leftover /lib/modules directory".into(),
        );
        return Ok(());
    };
    let head = l.fs.read_head(image, HEAD)?.unwrap_or_default();
    let arch = l.promises.architecture.clone();
    match kernel_machine(&head) {
        None => l.not_checked(
            ID,
            format!("{image}: a kernel format kiln does not recognise"),
        ),
        Some(m) if !m.runs_on(&arch) => l.error(
            ID,
            image,
            format!(
                "the kernel is built for {} but the AMI is registered as ami_architecture = \"{arch}\"",
                m.name()
            ),
            format!("install the {arch} kernel, or set ami_architecture to match the image"),
        ),
        Some(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bzimage(version: u16, flags: u8) -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[0..2].copy_from_slice(b"MZ");
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        b[0x236] = flags;
        b
    }

    #[test]
    fn kernel_formats() {
        assert_eq!(kernel_machine(&bzimage(0x020f, 1)), Some(Machine::X86_64));
        assert_eq!(kernel_machine(&bzimage(0x020a, 1)), Some(Machine::X86));
        let mut arm = vec![0u8; 64];
        arm[56..60].copy_from_slice(b"ARM\x64");
        assert_eq!(kernel_machine(&arm), Some(Machine::Arm64));
        // Debian's arm64 vmlinuz: a gzip-compressed Image.
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&arm).unwrap();
        assert_eq!(kernel_machine(&gz.finish().unwrap()), Some(Machine::Arm64));
        // A zboot PE for arm64.
        let mut pe = vec![0u8; 0x100];
        pe[0..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0xaa64u16.to_le_bytes());
        assert_eq!(kernel_machine(&pe), Some(Machine::Arm64));
        assert_eq!(kernel_machine(b"not a kernel"), None);
    }

    #[test]
    fn elf_machines_and_where_they_run() {
        let mut e = vec![0u8; 64];
        e[0..4].copy_from_slice(b"\x7fELF");
        e[5] = 1;
        e[18] = 0x3e;
        assert_eq!(elf(&e), Some(Machine::X86_64));
        assert!(Machine::X86_64.runs_on("x86_64"));
        assert!(!Machine::X86_64.runs_on("arm64"));
        e[18] = 0xb7;
        assert_eq!(elf(&e), Some(Machine::Arm64));
        assert!(Machine::Arm64.runs_on("arm64_mac"));
        assert!(!Machine::Arm64.runs_on("x86_64"));
        e[18] = 40;
        assert_eq!(elf(&e), Some(Machine::Other(40)));
        assert_eq!(elf(b"#!/bin/sh"), None);
    }
}
