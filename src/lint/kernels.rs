//! The kernels installed in an image: versions from `/lib/modules/<version>` and the kernel files
//! in `/boot` (`vmlinuz-`, `vmlinux-`, `Image-`, `kernel-`), each with its initramfs
//! (`initrd.img-<v>` on Debian and Ubuntu, `initramfs-<v>.img` with dracut). The checks look at
//! the newest one: the kernel a boot loader's default entry boots (GRUB's `update-grub` and
//! `grubby` put the newest version first).

use super::{Lint, LintError};
use std::cmp::Ordering;

/// Prefixes of kernel image files in `/boot`.
const KERNEL_PREFIXES: [&str; 4] = ["vmlinuz-", "vmlinux-", "Image-", "kernel-"];
/// Initramfs names for a version, in the order distributions use them.
const INITRAMFS_NAMES: [(&str, &str); 5] = [
    ("initrd.img-", ""),
    ("initramfs-", ".img"),
    ("initrd-", ""),
    ("initramfs-", ""),
    ("initrd-", ".img"),
];

/// One installed kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// `6.1.0-28-cloud-amd64`.
    pub version: String,
    /// Its image in the image (`/boot/vmlinuz-...`), if any.
    pub image: Option<String>,
    /// Its initramfs, if any.
    pub initramfs: Option<String>,
    /// `/lib/modules/<version>`, if it exists.
    pub modules: Option<String>,
}

/// Compares versions as `sort -V` does (`crate::sbom::os::version_cmp`, which the SBOM's kernels
/// sort by too).
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    crate::sbom::os::version_cmp(a, b)
}

/// The kernels of the image, oldest first.
pub fn installed(l: &Lint<'_>) -> Result<Vec<Kernel>, LintError> {
    let boot = l.fs.list_dir("/boot")?.unwrap_or_default();
    let modules = l.fs.list_dir("/lib/modules")?.unwrap_or_default();
    let mut versions: Vec<String> = boot
        .iter()
        .filter_map(|n| {
            KERNEL_PREFIXES
                .iter()
                .find_map(|p| n.strip_prefix(p))
                .map(str::to_owned)
        })
        .chain(modules.iter().cloned())
        .collect();
    versions.sort_by(|a, b| version_cmp(a, b));
    versions.dedup();
    let mut out = Vec::new();
    for v in versions {
        let image = KERNEL_PREFIXES
            .iter()
            .map(|p| format!("{p}{v}"))
            .find(|n| boot.contains(n))
            .map(|n| format!("/boot/{n}"));
        let initramfs = INITRAMFS_NAMES
            .iter()
            .map(|(p, s)| format!("{p}{v}{s}"))
            .find(|n| boot.contains(n))
            .map(|n| format!("/boot/{n}"));
        let has_modules = l.fs.list_dir(&format!("/lib/modules/{v}"))?.is_some();
        out.push(Kernel {
            modules: has_modules.then(|| format!("/lib/modules/{v}")),
            version: v,
            image,
            initramfs,
        });
    }
    Ok(out)
}

/// The kernel the image boots by default: the newest one with a kernel file, else the newest.
pub fn default_kernel(kernels: &[Kernel]) -> Option<&Kernel> {
    kernels
        .iter()
        .rev()
        .find(|k| k.image.is_some())
        .or(kernels.last())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_like_sort_v() {
        let mut v = vec![
            "6.1.0-9-cloud-amd64",
            "6.1.0-28-cloud-amd64",
            "5.10.0-32-cloud-amd64",
            "6.1.0-10-cloud-amd64",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            [
                "5.10.0-32-cloud-amd64",
                "6.1.0-9-cloud-amd64",
                "6.1.0-10-cloud-amd64",
                "6.1.0-28-cloud-amd64"
            ]
        );
    }
}
