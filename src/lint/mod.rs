//! The image linter (`kiln lint`, and step `lint-image` before a build's snapshot): checks, on
//! the mounted image and before an AMI exists, that the image can do what its registration
//! promises. Each [`Finding`] names its check, the file in the image it is about, what is wrong
//! and the fix. An **error** is a promise the image cannot keep (the instance would not boot or
//! not reach the network); a build with one fails before its snapshot. A **warning** is a likely
//! problem that does not break the promise; it goes into the result document.
//!
//! The checks ([`CHECKS`]), one file per family:
//! - `drivers.rs`: `ena-driver` (`ena_support`: the ENA driver built in or a module of the default
//!   kernel) and `nvme-initramfs` (on Nitro, every current instance type, the root volume is an
//!   NVMe device: the `nvme` driver built in, or in the kernel's initramfs, read with `cpio.rs`);
//! - `boot.rs`: `efi-binary` (`uefi`, `uefi-preferred`, arm64: the removable-media loader on an
//!   EFI system partition of the build's disk, read with `fat.rs`) and `bios-loader`
//!   (`legacy-bios`, or no boot mode on x86: boot code in the MBR, and GRUB's BIOS boot
//!   partition on GPT);
//! - `arch.rs`: `init-architecture` and `kernel-architecture` (the ELF machine of `/sbin/init`,
//!   resolved inside the image, and the kernel's format against `ami_architecture`);
//! - `fstab.rs`: `fstab-device` (each `LABEL=`, `UUID=`, `PARTUUID=`, `PARTLABEL=` of
//!   `/etc/fstab` names a file system on the build's disk, read with `disk.rs`);
//! - `imds.rs`: `imds-client` (`imds_support = "v2.0"`: cloud-init or an equivalent).
//!
//! An image without any kernel (a base layer, the busybox example) gets one `kernel-missing`
//! warning, and the checks that need a kernel are listed as not checked. A check that cannot run
//! (no disk given to `kiln lint`, skipped by the template's `lint { skip = [...] }`) is listed in
//! [`Report::not_checked`] with the reason: nothing is skipped silently.
//!
//! Files in the image are read only through [`ImageFs`] (resolved within the mount; a link never
//! leads out of the image) and nothing from the image is run. Running the linter twice gives the
//! same report; it changes nothing.

mod arch;
mod boot;
mod cpio;
mod disk;
mod drivers;
mod fat;
mod fstab;
mod imds;
mod kernels;

pub use disk::Disk;

use crate::ec2::instance_types::{Hypervisor, hypervisor};
use crate::host::HostError;
use crate::host::image_fs::ImageFs;
use crate::pipeline::state::SourceImage;
use crate::template::config::ChrootConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use crate::template::lint::{CHECKS, check_ids};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The registration promises something the image cannot do: the build fails.
    Error,
    /// Likely a problem; the build goes on and the result carries it.
    Warning,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The check's id (see [`CHECKS`]).
    pub check: String,
    /// Error or warning.
    pub severity: Severity,
    /// The file it is about, as a path in the image (`/etc/fstab`).
    pub file: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// A check that did not run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotChecked {
    /// The check's id.
    pub check: String,
    /// Why it did not run.
    pub reason: String,
}

/// What the linter found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Errors and warnings, in check order.
    pub findings: Vec<Finding>,
    /// Checks that did not run, with the reason.
    pub not_checked: Vec<NotChecked>,
}

impl Report {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// The findings as lines for a terminal or an error message: `error ena-driver FILE: ...`
    /// followed by `  fix: ...`, then the checks that did not run.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let sev = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            out.push_str(&format!(
                "{sev} [{}] {}: {}\n  fix: {}\n",
                f.check, f.file, f.message, f.fix
            ));
        }
        for n in &self.not_checked {
            out.push_str(&format!("not checked [{}]: {}\n", n.check, n.reason));
        }
        out
    }
}

/// Why the linter could not run at all (problems with the image itself are findings).
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    /// Reading the image failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The build's disk (or `--device`) could not be read.
    #[error("reading the disk {}: {detail}", path.display())]
    Disk {
        /// The device or file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// A check id that does not exist.
    #[error("unknown lint check {0:?}: the checks are {list}", list = check_ids().join(", "))]
    UnknownCheck(String),
}

/// Refuses an id in `skip` that is not a check. Pure.
pub fn validate_skip(skip: &[String]) -> Result<(), LintError> {
    match skip.iter().find(|s| !check_ids().contains(&s.as_str())) {
        Some(s) => Err(LintError::UnknownCheck(s.clone())),
        None => Ok(()),
    }
}

/// What the AMI's registration promises, as far as the image must keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promises {
    /// `ami_architecture` as registered: `x86_64`, `arm64`, `i386`, `x86_64_mac`, `arm64_mac`.
    pub architecture: String,
    /// `boot_mode` as registered (`None`: the instance type's default, legacy BIOS on x86).
    pub boot_mode: Option<String>,
    /// `ena_support`.
    pub ena_support: bool,
    /// `imds_support = "v2.0"`.
    pub imds_v2: bool,
    /// What the image runs on: Nitro (the default: every current instance type) unless the
    /// template's only instance type, the boot test's `instance_type`, is a Xen one.
    pub hypervisor: Hypervisor,
    /// `uefi_data` is set: the NVRAM may hold boot entries, so the removable-media path is not
    /// required.
    pub uefi_data: bool,
    /// The AMI maps more EBS volumes than the root (an fstab entry may be on one of those).
    pub other_volumes: bool,
}

impl Promises {
    /// The promises of a build of `c` over `source` (none for from_scratch, or offline), with
    /// `architecture` as it will be registered. Pure.
    pub fn from_config(c: &ChrootConfig, source: Option<&SourceImage>, architecture: &str) -> Self {
        let root = c
            .root_device_name
            .clone()
            .or_else(|| source.map(|s| s.root_device_name.clone()))
            .unwrap_or_default();
        let other_volumes = if c.from_scratch || !c.ami_block_device_mappings.is_empty() {
            c.ami_block_device_mappings
                .iter()
                .any(|m| m.device_name != root && m.virtual_name.is_none() && !m.no_device)
        } else {
            source.is_some_and(|s| {
                s.mappings
                    .iter()
                    .any(|m| m.ebs.is_some() && m.device_name.as_deref() != Some(&root))
            })
        };
        Promises {
            architecture: architecture.to_owned(),
            boot_mode: c
                .boot_mode
                .clone()
                .or_else(|| source.and_then(|s| s.boot_mode.clone())),
            ena_support: c
                .ena_support
                .or_else(|| source.and_then(|s| s.ena_support))
                .unwrap_or(false),
            imds_v2: c.imds_support.as_deref() == Some("v2.0"),
            hypervisor: c
                .boot_test
                .as_ref()
                .and_then(|t| t.instance_type.as_deref())
                .map(hypervisor)
                .unwrap_or(Hypervisor::Nitro),
            uefi_data: c.uefi_data.as_deref().is_some_and(|d| !d.is_empty()),
            other_volumes,
        }
    }

    /// Whether the image is promised to be arm64 (EC2 boots those with UEFI only).
    pub fn arm64(&self) -> bool {
        self.architecture.starts_with("arm64")
    }

    /// Whether instances boot it with UEFI: `uefi`, `uefi-preferred` (on Nitro) or any arm64.
    pub fn boots_uefi(&self) -> bool {
        self.arm64() || matches!(self.boot_mode.as_deref(), Some("uefi" | "uefi-preferred"))
    }

    /// Whether instances boot it with legacy BIOS: `legacy-bios`, no boot mode on x86, or
    /// `uefi-preferred` on a Xen type (which has no UEFI).
    pub fn boots_bios(&self) -> bool {
        if self.arm64() {
            return false;
        }
        match self.boot_mode.as_deref() {
            None | Some("legacy-bios") => true,
            Some("uefi-preferred") => self.hypervisor == Hypervisor::Xen,
            _ => false,
        }
    }
}

/// The linter's working state: the image, the disk, the promises, and the report so far.
pub(crate) struct Lint<'a> {
    pub(crate) fs: &'a ImageFs,
    pub(crate) disk: Option<&'a Disk>,
    pub(crate) promises: &'a Promises,
    report: Report,
}

impl Lint<'_> {
    pub(crate) fn error(&mut self, check: &str, file: &str, message: String, fix: String) {
        self.find(Severity::Error, check, file, message, fix);
    }

    pub(crate) fn warn(&mut self, check: &str, file: &str, message: String, fix: String) {
        self.find(Severity::Warning, check, file, message, fix);
    }

    fn find(&mut self, severity: Severity, check: &str, file: &str, message: String, fix: String) {
        self.report.findings.push(Finding {
            check: check.to_owned(),
            severity,
            file: file.to_owned(),
            message,
            fix,
        });
    }

    pub(crate) fn not_checked(&mut self, check: &str, reason: impl Into<String>) {
        self.report.not_checked.push(NotChecked {
            check: check.to_owned(),
            reason: reason.into(),
        });
    }
}

/// Lints the image mounted as `fs` (with the build's `disk`, when there is one) against
/// `promises`; the checks named in `skip` are listed as not checked. Reads only; safe to run
/// twice. A check that fails to read what it needs (a FIFO at `/etc/fstab`, a corrupt
/// initramfs) becomes a warning of that check naming the file, never a silent pass.
pub fn lint(fs: &ImageFs, disk: Option<&Disk>, promises: &Promises, skip: &[String]) -> Report {
    let mut l = Lint {
        fs,
        disk,
        promises,
        report: Report::default(),
    };
    let kernels = match kernels::installed(&l) {
        Ok(k) => k,
        Err(e) => {
            l.warn(
                "kernel-missing",
                "/boot",
                format!("the installed kernels could not be listed: {e}"),
                "make /boot and /lib/modules plain directories of the image".into(),
            );
            Vec::new()
        }
    };
    let kernel = kernels::default_kernel(&kernels).cloned();
    let run = |l: &mut Lint<'_>, id: &str, f: &dyn Fn(&mut Lint<'_>) -> Result<(), LintError>| {
        if skip.iter().any(|s| s == id) {
            l.not_checked(id, "skipped by the lint settings");
        } else if let Err(e) = f(l) {
            l.warn(
                id,
                "/",
                format!("the check could not run: {e}"),
                "fix what the message names in the image, or skip the check".into(),
            );
        }
    };
    run(&mut l, "init-architecture", &arch::init);
    match &kernel {
        None => {
            run(&mut l, "kernel-missing", &|l| {
                l.warn(
                    "kernel-missing",
                    "/boot",
                    "the image has no kernel (nothing in /boot or /lib/modules): it cannot boot by itself, and the driver, boot loader and kernel checks did not run".into(),
                    "install a kernel package (Debian: linux-image-cloud-amd64) if the image is meant to boot".into(),
                );
                Ok(())
            });
            for id in [
                "ena-driver",
                "nvme-initramfs",
                "efi-binary",
                "bios-loader",
                "kernel-architecture",
            ] {
                l.not_checked(id, "the image has no kernel");
            }
        }
        Some(k) => {
            run(&mut l, "kernel-architecture", &|l| arch::kernel(l, k));
            run(&mut l, "ena-driver", &|l| drivers::ena(l, k));
            run(&mut l, "nvme-initramfs", &|l| drivers::nvme(l, k));
            run(&mut l, "efi-binary", &boot::efi);
            run(&mut l, "bios-loader", &boot::bios);
        }
    }
    run(&mut l, "fstab-device", &fstab::check);
    run(&mut l, "imds-client", &imds::check);
    l.report
}

#[cfg(test)]
pub(crate) mod tests;
