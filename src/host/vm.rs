//! Booting a disk image in QEMU for the boot test: the image is opened with `snapshot=on` (the
//! guest's writes go to a temporary file QEMU deletes, so the snapshot stays untouched and no
//! overlay is left), no network, the disk attached as the instance type presents an EBS root
//! volume ([`DiskBus`]: NVMe on Nitro, virtio for Xen), the serial console read line by line
//! until a marker line, a timeout, the guest's exit or cancellation. QEMU runs in its own process
//! group and is killed with it in every case.

use super::HostError;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use regex::Regex;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// Console lines kept for the result and for errors.
pub const CONSOLE_TAIL: usize = 30;
/// The QEMU program for x86_64 guests.
const QEMU: &str = "qemu-system-x86_64";
/// The QEMU program for arm64 guests (Debian's `qemu-system-arm`).
const QEMU_ARM64: &str = "qemu-system-aarch64";
/// UEFI firmware images QEMU can load with `-bios`, in order of preference (Debian's `ovmf`).
const OVMF: &[&str] = &["/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd"];
/// arm64 UEFI firmware (Debian's `qemu-efi-aarch64`). arm64 AMIs boot only with UEFI.
const AAVMF: &[&str] = &[
    "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
    "/usr/share/AAVMF/AAVMF_CODE.fd",
];
/// The CPU QEMU emulates for arm64 guests: an Armv8.0 core every arm64 distribution supports
/// (Graviton 1 is a Cortex-A72).
const ARM64_CPU: &str = "cortex-a72";

/// The firmware a guest boots with, as EC2 would start the AMI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// UEFI (OVMF), for `boot_mode` `uefi` and `uefi-preferred`.
    Uefi,
    /// Legacy BIOS (SeaBIOS, QEMU's default), for `legacy-bios` or no boot mode.
    Bios,
}

/// The guest's architecture (the AMI's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `x86_64`: q35 with OVMF or SeaBIOS.
    X86_64,
    /// `arm64`: QEMU's `virt` machine with AAVMF (always UEFI, as EC2 starts arm64 AMIs).
    Arm64,
}

/// NVMe serial numbers are at most 20 characters (NVMe base specification, Identify Controller
/// `SN`); EC2's are `vol` and the volume id's 17 hex digits, exactly 20.
const NVME_SERIAL_MAX: usize = 20;

/// How the guest sees its disk: as the instance type's hypervisor presents an EBS root volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskBus {
    /// An NVMe controller with an EBS-like serial (`vol0123...`), as on the Nitro System: the
    /// image's initramfs needs the `nvme` driver to find its root.
    Nvme {
        /// The controller's serial number.
        serial: String,
    },
    /// virtio-blk, for Xen types. Xen presents EBS as a paravirtual disk (`xen-blkfront`) that
    /// QEMU cannot offer outside Xen; virtio-blk is QEMU's paravirtual disk and asks the same of
    /// an image (a paravirtual block driver, no NVMe), where IDE would ask for an AHCI driver
    /// that cloud kernels may leave out and Xen guests never use for their root.
    Virtio,
}

/// An EBS-like NVMe serial for `resource_id` (`snap-0abc...` or `vol-0abc...`): `vol` and its
/// hex digits, as EC2 reports a volume's serial (`vol0abc...`), at most 20 characters.
pub fn ebs_serial(resource_id: &str) -> String {
    let digits = resource_id
        .split_once('-')
        .map_or(resource_id, |(_, d)| d)
        .chars()
        .filter(char::is_ascii_alphanumeric);
    let mut serial: String = "vol".chars().chain(digits).collect();
    serial.truncate(NVME_SERIAL_MAX);
    serial
}

/// What to boot and what counts as success.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// The raw disk image (a snapshot file).
    pub disk: PathBuf,
    /// Firmware (ignored for arm64, which is always UEFI).
    pub firmware: Firmware,
    /// The guest's architecture.
    pub arch: Arch,
    /// How the disk is attached.
    pub bus: DiskBus,
    /// Guest memory, MiB.
    pub memory_mib: i64,
    /// How long to wait for the marker.
    pub timeout: Duration,
    /// The success marker, matched against each console line.
    pub marker: Regex,
    /// Use KVM (else TCG emulation).
    pub kvm: bool,
}

/// A successful boot.
#[derive(Debug, Clone)]
pub struct Booted {
    /// Seconds from start to the marker.
    pub seconds: f64,
    /// The line that matched.
    pub line: String,
    /// The console's last lines up to it.
    pub tail: Vec<String>,
    /// Whether KVM was used (else TCG emulation).
    pub kvm: bool,
}

fn firmware_file(candidates: &[&'static str], package: &str) -> Result<&'static str, HostError> {
    candidates
        .iter()
        .copied()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| {
            HostError::Invalid(format!(
                "UEFI firmware is missing: apt-get install -y {package} (scripts/setup does)"
            ))
        })
}

/// Whether this host can run KVM guests (the device exists and opens).
fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Printable text of a console line: escape sequences and carriage returns removed.
pub fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI sequences: ESC [ ... final byte in @..~
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for n in chars.by_ref() {
                        if ('@'..='~').contains(&n) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

fn failed(message: String, tail: &VecDeque<String>) -> HostError {
    HostError::Boot {
        message,
        tail: tail.iter().cloned().collect::<Vec<_>>().join("\n"),
    }
}

/// The QEMU command line for `spec`: no display, no monitor, the serial console on stdout, no
/// network, no reboot, the disk copy-on-write (`snapshot=on`).
fn command(spec: &BootSpec) -> Result<tokio::process::Command, HostError> {
    let arm64 = spec.arch == Arch::Arm64;
    let mut cmd = tokio::process::Command::new(if arm64 { QEMU_ARM64 } else { QEMU });
    let machine = match (arm64, spec.kvm) {
        (true, _) => "virt,accel=tcg",
        (false, true) => "q35,accel=kvm",
        (false, false) => "q35,accel=tcg",
    };
    cmd.args([
        "-machine",
        machine,
        "-m",
        &spec.memory_mib.to_string(),
        "-smp",
        "2",
    ]);
    cmd.args(["-display", "none", "-monitor", "none", "-serial", "stdio"]);
    cmd.args(["-nic", "none", "-no-reboot"]);
    cmd.args(drive_args(&spec.disk, &spec.bus));
    if arm64 {
        cmd.args(["-cpu", ARM64_CPU]);
        cmd.args(["-bios", firmware_file(AAVMF, "qemu-efi-aarch64")?]);
    } else {
        if spec.firmware == Firmware::Uefi {
            cmd.args(["-bios", firmware_file(OVMF, "ovmf")?]);
        }
        if spec.kvm {
            cmd.args(["-cpu", "host"]);
        }
    }
    Ok(cmd)
}

/// The arguments attaching `disk` (copy-on-write) on `bus`.
fn drive_args(disk: &Path, bus: &DiskBus) -> Vec<String> {
    let file = disk.display().to_string().replace(',', ",,");
    match bus {
        DiskBus::Virtio => vec![
            "-drive".into(),
            format!("file={file},format=raw,if=virtio,snapshot=on"),
        ],
        DiskBus::Nvme { serial } => {
            let serial: String = serial
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(NVME_SERIAL_MAX)
                .collect();
            vec![
                "-drive".into(),
                format!("file={file},format=raw,if=none,id=root,snapshot=on"),
                "-device".into(),
                format!("nvme,drive=root,serial={serial},bootindex=0"),
            ]
        }
    }
}

/// Boots `spec.disk` and waits for the marker. Each console line also goes to `sink`.
///
/// Side effects: a QEMU process for the duration (killed before returning, whatever the
/// outcome); nothing written to the disk image. Safe to run twice.
pub async fn boot(
    spec: &BootSpec,
    sink: &super::command::Sink,
    cancel: &CancellationToken,
) -> Result<Booted, HostError> {
    if spec.kvm && !kvm_usable() {
        return Err(HostError::Invalid(
            "boot_test asks for KVM but /dev/kvm cannot be opened here: use accelerator = \"tcg\""
                .into(),
        ));
    }
    let kvm = spec.kvm;
    let (program, package) = match spec.arch {
        Arch::X86_64 => (QEMU, "qemu-system-x86"),
        Arch::Arm64 => (QEMU_ARM64, "qemu-system-arm"),
    };
    let mut cmd = command(spec)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                HostError::Invalid(format!(
                    "{program} is missing: apt-get install -y {package} (scripts/setup does)"
                ))
            } else {
                HostError::Io {
                    what: "starting",
                    path: PathBuf::from(program),
                    source: e,
                }
            }
        })?;
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    let kill = || {
        if let Some(pg) = pgid {
            let _ = killpg(pg, Signal::SIGKILL);
        }
    };
    let mut stderr = child.stderr.take();
    let Some(stdout) = child.stdout.take() else {
        kill();
        return Err(HostError::Invalid("QEMU's console is not readable".into()));
    };
    let mut stdout = stdout;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let result = loop {
        let read = tokio::select! {
            r = stdout.read(&mut chunk) => r,
            _ = tokio::time::sleep_until(deadline) => {
                break Err(failed(format!("no console line matched `{}` within {} s", spec.marker, spec.timeout.as_secs()), &tail));
            }
            _ = cancel.cancelled() => break Err(HostError::Cancelled("booting the image".into())),
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let status = child.wait().await.ok().and_then(|s| s.code());
                let mut err = String::new();
                if let Some(mut e) = stderr.take() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), e.read_to_string(&mut err))
                            .await;
                }
                break Err(failed(
                    format!(
                        "the guest stopped (QEMU exit code {}) before a console line matched `{}`{}",
                        status.map_or("none".into(), |c| c.to_string()),
                        spec.marker,
                        if err.trim().is_empty() {
                            String::new()
                        } else {
                            format!(": {}", err.trim())
                        }
                    ),
                    &tail,
                ));
            }
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        // Complete lines go to the log and the tail; a prompt without a newline (`login: `) is
        // matched while it is still pending.
        let mut hit = None;
        while let Some(i) = pending.iter().position(|c| *c == b'\n') {
            let line = clean(&pending[..i]);
            pending.drain(..=i);
            if line.trim().is_empty() {
                continue;
            }
            sink("boot-test", &line);
            tail.push_back(line.clone());
            while tail.len() > CONSOLE_TAIL {
                tail.pop_front();
            }
            if hit.is_none() && spec.marker.is_match(&line) {
                hit = Some(line);
            }
        }
        if hit.is_none() {
            let partial = clean(&pending);
            if spec.marker.is_match(&partial) {
                sink("boot-test", &partial);
                tail.push_back(partial.clone());
                hit = Some(partial);
            }
        }
        if let Some(line) = hit {
            break Ok(Booted {
                seconds: started.elapsed().as_secs_f64(),
                line,
                tail: tail.iter().cloned().collect(),
                kvm,
            });
        }
    };
    kill();
    let _ = child.wait().await;
    result
}

#[cfg(test)]
mod tests {
    use super::{DiskBus, drive_args, ebs_serial};
    use std::path::Path;

    #[test]
    fn the_disk_is_nvme_with_an_ebs_serial_or_virtio() {
        assert_eq!(ebs_serial("snap-0123456789abcdef0"), "vol0123456789abcdef0");
        assert_eq!(
            ebs_serial("snap-0123456789abcdef0ff"),
            "vol0123456789abcdef0"
        );
        assert_eq!(ebs_serial("snap-1,a=b"), "vol1ab");
        let nvme = drive_args(
            Path::new("/s/a,b.img"),
            &DiskBus::Nvme {
                serial: "vol01,x".into(),
            },
        );
        assert_eq!(
            nvme,
            [
                "-drive",
                "file=/s/a,,b.img,format=raw,if=none,id=root,snapshot=on",
                "-device",
                "nvme,drive=root,serial=vol01x,bootindex=0"
            ]
        );
        let virtio = drive_args(Path::new("/s/a.img"), &DiskBus::Virtio);
        assert_eq!(
            virtio,
            ["-drive", "file=/s/a.img,format=raw,if=virtio,snapshot=on"]
        );
    }

    #[test]
    fn console_lines_are_cleaned() {
        assert_eq!(
            super::clean(b"\x1b[0;32m  OK  \x1b[0m Reached target\r\n"),
            "  OK   Reached target"
        );
        assert_eq!(super::clean(b"debian login: "), "debian login: ");
    }
}
