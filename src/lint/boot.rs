//! `efi-binary` and `bios-loader`: the boot loader the registration's boot mode needs, found on
//! the build's disk (not in the mounted root: the firmware reads the disk).
//!
//! - UEFI (`uefi`, `uefi-preferred` on Nitro, every arm64 AMI): EC2 instances have no boot entry
//!   of the image in their NVRAM unless `uefi_data` brings one, so the firmware starts the
//!   removable-media loader, `/EFI/BOOT/BOOTX64.EFI` (`BOOTAA64.EFI` on arm64), from an EFI
//!   system partition (GPT type `C12A7328-...`, or MBR type `0xEF`). It must be there and be a
//!   PE binary for the AMI's machine. With `uefi_data`, any partition being an ESP is enough.
//!   `kiln lint` without a disk looks at the ESP mounted at `/boot/efi` (or `/efi`) instead.
//! - Legacy BIOS (`legacy-bios`, no boot mode on x86, `uefi-preferred` on a Xen type): the BIOS
//!   runs the MBR's boot code, so the first 440 bytes must hold some, with the `55 AA`
//!   signature; GRUB's (`boot.img`, recognised by its `GRUB` string) loads its core from a BIOS
//!   boot partition on a GPT disk, which must then exist.

use super::disk::BIOS_BOOT_GUID;
use super::{Lint, LintError, fat};

/// Where the MBR's boot code ends (the disk signature and table follow).
const BOOT_CODE: usize = 440;
/// Directories where a running system mounts its ESP, for `kiln lint` without a disk.
const ESP_MOUNTS: [&str; 2] = ["/boot/efi", "/efi"];

/// The removable-media loader's path and PE machine for the AMI's architecture.
fn loader(l: &Lint<'_>) -> (&'static str, u16) {
    match l.promises.architecture.as_str() {
        a if a.starts_with("arm64") => ("/EFI/BOOT/BOOTAA64.EFI", 0xaa64),
        "i386" => ("/EFI/BOOT/BOOTIA32.EFI", 0x014c),
        _ => ("/EFI/BOOT/BOOTX64.EFI", 0x8664),
    }
}

/// The COFF machine of a PE binary's first bytes, `None` if it is not PE.
fn pe_machine(b: &[u8]) -> Option<u16> {
    if b.len() < 0x40 || &b[0..2] != b"MZ" {
        return None;
    }
    let at = u32::from_le_bytes([b[0x3c], b[0x3d], b[0x3e], b[0x3f]]) as usize;
    let h = b.get(at..at.checked_add(6)?)?;
    (&h[0..4] == b"PE\0\0").then(|| u16::from_le_bytes([h[4], h[5]]))
}

/// `efi-binary`.
pub fn efi(l: &mut Lint<'_>) -> Result<(), LintError> {
    const ID: &str = "efi-binary";
    if !l.promises.boots_uefi() {
        l.not_checked(ID, "the AMI does not boot with UEFI");
        return Ok(());
    }
    let (path, machine) = loader(l);
    let fix = format!(
        "install a boot loader at the removable-media path of the EFI system partition (GRUB: grub-install --removable, or grub-mkstandalone -o <ESP>{path}), or set boot_mode = \"legacy-bios\" if the image boots only with BIOS"
    );
    let Some(disk) = l.disk else {
        return efi_mounted(l, path, &fix);
    };
    let esps: Vec<_> = disk.partitions.iter().filter(|p| p.is_esp()).collect();
    if esps.is_empty() {
        l.error(
            ID,
            path,
            format!(
                "the AMI boots with UEFI but the disk ({} partition table) has no EFI system partition for the firmware to start {path} from",
                disk.table
            ),
            format!("add an EFI system partition (GPT type EF00, FAT) and {fix}"),
        );
        return Ok(());
    }
    if l.promises.uefi_data {
        return Ok(());
    }
    for p in &esps {
        if let Some(f) = fat::find(disk, p, path) {
            match pe_machine(&f.head) {
                Some(m) if m == machine => return Ok(()),
                found => {
                    l.error(
                        ID,
                        path,
                        format!(
                            "{path} on the EFI system partition (partition {}) is {} but the AMI is {}",
                            p.number,
                            found.map_or("not a PE binary".to_owned(), |m| format!("a PE binary for machine {m:#06x}")),
                            l.promises.architecture
                        ),
                        fix.clone(),
                    );
                    return Ok(());
                }
            }
        }
    }
    l.error(
        ID,
        path,
        format!(
            "the AMI boots with UEFI but no EFI system partition (partition {}) holds {path}: EC2's firmware has no boot entry for the image and starts only the removable-media path",
            esps.iter().map(|p| p.number.to_string()).collect::<Vec<_>>().join(", ")
        ),
        fix,
    );
    Ok(())
}

/// Without a disk: the ESP as a running system mounts it, in the directory linted.
fn efi_mounted(l: &mut Lint<'_>, path: &str, fix: &str) -> Result<(), LintError> {
    const ID: &str = "efi-binary";
    for m in ESP_MOUNTS {
        if l.fs.list_dir(&format!("{m}/EFI"))?.is_some() {
            let file = format!("{m}{path}");
            if l.fs.read_head(&file, 0)?.is_none() && !l.promises.uefi_data {
                l.error(
                    ID,
                    &file,
                    format!("the AMI boots with UEFI but the EFI system partition mounted at {m} has no {path}"),
                    fix.to_owned(),
                );
            }
            return Ok(());
        }
    }
    l.not_checked(
        ID,
        "no disk to read the EFI system partition from (kiln lint --device), and none is mounted at /boot/efi",
    );
    Ok(())
}

/// `bios-loader`.
pub fn bios(l: &mut Lint<'_>) -> Result<(), LintError> {
    const ID: &str = "bios-loader";
    if !l.promises.boots_bios() {
        l.not_checked(ID, "the AMI does not boot with legacy BIOS");
        return Ok(());
    }
    let Some(disk) = l.disk else {
        l.not_checked(ID, "no disk to read the MBR from (kiln lint --device)");
        return Ok(());
    };
    let mode = l
        .promises
        .boot_mode
        .clone()
        .unwrap_or_else(|| "unset (legacy BIOS on x86)".into());
    let fix = "install a BIOS boot loader on the disk (GRUB: grub-install --target=i386-pc {{.Device}}, with a BIOS boot partition on GPT), or set boot_mode = \"uefi\" if the image boots with UEFI".to_owned();
    let mbr = &disk.mbr;
    let signed = mbr.len() >= 512 && mbr[510..512] == [0x55, 0xaa];
    if !signed || mbr[..BOOT_CODE].iter().all(|b| *b == 0) {
        l.error(
            ID,
            "(MBR)",
            format!(
                "boot_mode is {mode} but the disk's MBR has no boot code{}: the BIOS finds nothing to start",
                if signed { "" } else { " and no 55 AA signature" }
            ),
            fix,
        );
        return Ok(());
    }
    let grub = mbr[..BOOT_CODE].windows(4).any(|w| w == b"GRUB");
    let bios_boot = disk.partitions.iter().any(|p| p.type_id == BIOS_BOOT_GUID);
    if grub && disk.table == "gpt" && !bios_boot {
        l.error(
            ID,
            "(MBR)",
            "GRUB's boot code is in the MBR of a GPT disk without a BIOS boot partition, where GRUB keeps the rest of itself".into(),
            "add a BIOS boot partition (GPT type EF02, 1 MiB) and run grub-install --target=i386-pc again".into(),
        );
    }
    Ok(())
}
