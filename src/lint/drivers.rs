//! `ena-driver` and `nvme-initramfs`: the drivers the default kernel needs on the instances the
//! registration promises.
//!
//! - ENA (`ena_support`): the driver built in (`modules.builtin` lists `.../ena.ko`) or a module
//!   (`modules.dep` lists it, or the file is at its usual path). Loaded after the root is
//!   mounted, so the initramfs need not carry it.
//! - NVMe (Nitro): the root volume is an NVMe device, found before the root is mounted, so the
//!   `nvme` driver must be built in or be in the kernel's initramfs (its cpio archive lists
//!   `.../nvme.ko`). On a Xen type (the boot test's `instance_type`) it is not needed.

use super::kernels::Kernel;
use super::{Lint, LintError, cpio};
use crate::ec2::instance_types::Hypervisor;

/// Bytes of `modules.builtin` / `modules.dep` read at most (Debian's are 20 KiB and 400 KiB).
const MAX_INDEX: u64 = 16 << 20;
/// Module file suffixes: plain and compressed (`.ko.xz` on Debian trixie, `.ko.zst` on Fedora).
const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// Whether a modules index line (a path, possibly followed by `:` and dependencies) is the
/// module `name`.
fn names_module(line: &str, name: &str) -> bool {
    let path = line.split(':').next().unwrap_or_default().trim();
    let file = path.rsplit('/').next().unwrap_or_default();
    MODULE_SUFFIXES
        .iter()
        .any(|s| file.strip_suffix(s) == Some(name))
}

/// Whether any line of `text` names module `name`.
fn lists(text: &str, name: &str) -> bool {
    text.lines().any(|l| names_module(l, name))
}

fn index(l: &Lint<'_>, k: &Kernel, file: &str) -> Result<Option<String>, LintError> {
    let Some(dir) = &k.modules else {
        return Ok(None);
    };
    Ok(l.fs
        .read_head(&format!("{dir}/{file}"), MAX_INDEX)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// How kernel `k` has module `name`: built in, as a module, or not at all.
#[derive(Debug, PartialEq, Eq)]
enum Has {
    BuiltIn,
    Module,
    No,
}

fn has(l: &Lint<'_>, k: &Kernel, name: &str, usual: &str) -> Result<Has, LintError> {
    if index(l, k, "modules.builtin")?.is_some_and(|t| lists(&t, name)) {
        return Ok(Has::BuiltIn);
    }
    if index(l, k, "modules.dep")?.is_some_and(|t| lists(&t, name)) {
        return Ok(Has::Module);
    }
    if let Some(dir) = &k.modules {
        for s in MODULE_SUFFIXES {
            if l.fs.read_head(&format!("{dir}/{usual}{s}"), 0)?.is_some() {
                return Ok(Has::Module);
            }
        }
    }
    Ok(Has::No)
}

/// `ena-driver`.
pub fn ena(l: &mut Lint<'_>, k: &Kernel) -> Result<(), LintError> {
    const ID: &str = "ena-driver";
    if !l.promises.ena_support {
        l.not_checked(ID, "ena_support is not set");
        return Ok(());
    }
    if has(l, k, "ena", "kernel/drivers/net/ethernet/amazon/ena/ena")? == Has::No {
        let file = k
            .modules
            .as_ref()
            .map(|d| format!("{d}/modules.dep"))
            .unwrap_or_else(|| format!("/lib/modules/{}", k.version));
        l.error(
            ID,
            &file,
            format!(
                "ena_support = true, but kernel {} has no ENA driver (ena.ko is neither built in nor a module): instances with ENA networking (every Nitro type) get no network",
                k.version
            ),
            "install a kernel with the ENA driver (Debian: linux-image-cloud-amd64; Amazon Linux and Ubuntu kernels have it), or set ena_support = false".into(),
        );
    }
    Ok(())
}

/// `nvme-initramfs`.
pub fn nvme(l: &mut Lint<'_>, k: &Kernel) -> Result<(), LintError> {
    const ID: &str = "nvme-initramfs";
    if l.promises.hypervisor == Hypervisor::Xen {
        l.not_checked(ID, "the boot test's instance type is a Xen type (no NVMe)");
        return Ok(());
    }
    let fix_initramfs = "add nvme to the initramfs and rebuild it (initramfs-tools: a line `nvme` in /etc/initramfs-tools/modules, then update-initramfs -u -k all; dracut: add_drivers+=\" nvme \" in /etc/dracut.conf.d/nvme.conf, then dracut -f)";
    match has(l, k, "nvme", "kernel/drivers/nvme/host/nvme")? {
        Has::BuiltIn => return Ok(()),
        Has::Module => {}
        Has::No => {
            let file = k
                .modules
                .clone()
                .unwrap_or_else(|| format!("/lib/modules/{}", k.version));
            l.error(
                ID,
                &file,
                format!(
                    "kernel {} has no NVMe driver (nvme.ko is neither built in nor a module): on Nitro instance types the root volume is an NVMe device, so the kernel cannot find its root",
                    k.version
                ),
                "install a kernel with the NVMe driver (Debian: linux-image-cloud-amd64)".into(),
            );
            return Ok(());
        }
    }
    let Some(initramfs) = &k.initramfs else {
        l.error(
            ID,
            &format!("/boot/initrd.img-{}", k.version),
            format!(
                "kernel {} loads NVMe as a module but has no initramfs: on Nitro instance types it cannot find its NVMe root volume",
                k.version
            ),
            "install initramfs-tools (or dracut) and build the initramfs (update-initramfs -c -k all)".into(),
        );
        return Ok(());
    };
    let Some(file) = l.fs.open_read(initramfs)? else {
        return Ok(());
    };
    match cpio::names(file) {
        Ok(names) if names.iter().any(|n| names_module(n, "nvme")) => {}
        Ok(_) => l.error(
            ID,
            initramfs,
            format!(
                "the initramfs of kernel {} does not contain the nvme module: on Nitro instance types the root volume is an NVMe device",
                k.version
            ),
            fix_initramfs.into(),
        ),
        Err(e) => l.warn(
            ID,
            initramfs,
            format!("the initramfs could not be read, so NVMe was not checked: {e}"),
            "rebuild it with gzip or zstd compression (initramfs-tools: COMPRESS=zstd), or skip this check".into(),
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_index_lines() {
        let dep = "kernel/drivers/net/ethernet/amazon/ena/ena.ko: \nkernel/drivers/nvme/host/nvme.ko.xz: kernel/drivers/nvme/host/nvme-core.ko.xz\n";
        assert!(lists(dep, "ena"));
        assert!(lists(dep, "nvme"));
        assert!(!lists(dep, "nvme-fabrics"));
        assert!(!lists("kernel/drivers/nvme/host/nvme-core.ko\n", "nvme"));
        assert!(lists(
            "usr/lib/modules/6.1.0/kernel/drivers/nvme/host/nvme.ko",
            "nvme"
        ));
        assert!(!lists("", "ena"));
    }
}
