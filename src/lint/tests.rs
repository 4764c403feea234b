//! The linter end to end on directories standing in for mounted images, with disk image files
//! beside them: a sound image has no finding, and each defect made on purpose is found, named by
//! its check and file.

use super::cpio::tests::newc;
use super::disk::tests::{Image, write_ext4, write_gpt};
use super::disk::{Disk, ESP_GUID};
use super::fat::tests::fat16_with_loader;
use super::*;
use crate::host::image_fs::ImageFs;
use std::path::{Path, PathBuf};

const VERSION: &str = "6.1.0-28-cloud-amd64";
const ROOT_GUID: &str = "0fc63daf-8483-4772-8e79-3d47d8d69e4d";
const ROOT_UUID: [u8; 16] = [0x5e; 16];

/// A root directory that removes itself.
struct Root(PathBuf);
impl Root {
    fn put(&self, path: &str, data: &[u8]) {
        let p = self.0.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    fn remove(&self, path: &str) {
        std::fs::remove_file(self.0.join(path.trim_start_matches('/'))).unwrap();
    }
}
impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn elf(machine: u16) -> Vec<u8> {
    let mut e = vec![0u8; 64];
    e[0..4].copy_from_slice(b"\x7fELF");
    e[4] = 2;
    e[5] = 1;
    e[18..20].copy_from_slice(&machine.to_le_bytes());
    e
}

fn bzimage() -> Vec<u8> {
    let mut b = vec![0u8; 0x400];
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    b[0x236] = 1;
    b
}

fn pe(machine: u16) -> Vec<u8> {
    let mut b = vec![0u8; 0x100];
    b[0..2].copy_from_slice(b"MZ");
    b[0x3c] = 0x80;
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    b[0x84..0x86].copy_from_slice(&machine.to_le_bytes());
    b
}

/// A Debian-like root with a kernel whose NVMe and ENA drivers are modules, NVMe in a gzip'd
/// initramfs after an early-microcode archive, systemd as init, cloud-init, and an fstab naming
/// the root and the ESP by label.
fn sound_root() -> Root {
    let r = Root(std::env::temp_dir().join(format!(
        "kiln-lint-root-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )));
    r.put("/lib/systemd/systemd", &elf(0x3e));
    std::fs::create_dir_all(r.0.join("sbin")).unwrap();
    std::os::unix::fs::symlink("/lib/systemd/systemd", r.0.join("sbin/init")).unwrap();
    r.put(&format!("/boot/vmlinuz-{VERSION}"), &bzimage());
    let modules = format!("/lib/modules/{VERSION}");
    r.put(
        &format!("{modules}/modules.builtin"),
        b"kernel/fs/ext4/ext4.ko\n",
    );
    r.put(
        &format!("{modules}/modules.dep"),
        b"kernel/drivers/net/ethernet/amazon/ena/ena.ko:\nkernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko\n",
    );
    r.put(&format!("/boot/initrd.img-{VERSION}"), &initramfs(true));
    r.put(
        "/etc/fstab",
        b"LABEL=root / ext4 defaults 0 1\nLABEL=ESP /boot/efi vfat umask=0077 0 2\nproc /proc proc defaults 0 0\n",
    );
    r.put("/usr/bin/cloud-init", b"#!/usr/bin/python3\n");
    r
}

fn initramfs(with_nvme: bool) -> Vec<u8> {
    use std::io::Write;
    let mut out = newc(&[("kernel/x86/microcode/AuthenticAMD.bin", b"u")]);
    out.resize(out.len().next_multiple_of(512), 0);
    let nvme = format!("usr/lib/modules/{VERSION}/kernel/drivers/nvme/host/nvme.ko");
    let mut files: Vec<(&str, &[u8])> = vec![("init", b"#!/bin/sh\n")];
    if with_nvme {
        files.push((&nvme, b"\x7fELF"));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&newc(&files)).unwrap();
    out.extend(gz.finish().unwrap());
    out
}

/// The disk: GPT with a FAT16 ESP holding `loader` as BOOTX64.EFI, and an ext4 root labelled
/// `root`; a BIOS boot code stub in the MBR when `mbr_code`.
fn disk(loader: &[u8], mbr_code: bool) -> Image {
    let img = Image::new("e2e", 64 << 20);
    write_gpt(
        &img,
        &[
            (
                ESP_GUID,
                "11111111-2222-3333-4444-555555555555",
                2048,
                45055,
                "esp",
            ),
            (
                ROOT_GUID,
                "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                45056,
                131071,
                "root",
            ),
        ],
    );
    fat16_with_loader(&img, loader);
    let mut label = b"ESP        ".to_vec();
    label.truncate(11);
    img.put(2048 * 512 + 0x2b, &label);
    img.put(2048 * 512 + 0x27, &0x0bad_cafeu32.to_le_bytes());
    write_ext4(&img, 45056 * 512, ROOT_UUID, "root");
    if mbr_code {
        img.put(0, b"\xeb\x63\x90 a boot loader");
        img.put(510, &[0x55, 0xaa]);
    }
    img
}

fn promises() -> Promises {
    Promises {
        architecture: "x86_64".into(),
        boot_mode: Some("uefi".into()),
        ena_support: true,
        imds_v2: true,
        hypervisor: crate::ec2::instance_types::Hypervisor::Nitro,
        uefi_data: false,
        other_volumes: false,
    }
}

fn run(root: &Path, disk: Option<&Image>, p: &Promises, skip: &[&str]) -> Report {
    let fs = ImageFs::open(root).unwrap();
    let d = disk.map(|i| Disk::open(&i.0).unwrap());
    let skip: Vec<String> = skip.iter().map(|s| (*s).to_owned()).collect();
    lint(&fs, d.as_ref(), p, &skip)
}

/// (check, severity, file) of every finding.
fn found(r: &Report) -> Vec<(String, Severity, String)> {
    r.findings
        .iter()
        .map(|f| (f.check.clone(), f.severity, f.file.clone()))
        .collect()
}

fn one(check: &str, severity: Severity, file: &str) -> Vec<(String, Severity, String)> {
    vec![(check.to_owned(), severity, file.to_owned())]
}

#[test]
fn a_sound_image_has_no_finding() {
    let r = sound_root();
    let d = disk(&pe(0x8664), false);
    let report = run(&r.0, Some(&d), &promises(), &[]);
    assert_eq!(report.findings, [], "{}", report.text());
    assert!(!report.has_errors());
    // Only the checks the promises do not ask for are listed as not run.
    let not: Vec<_> = report
        .not_checked
        .iter()
        .map(|n| n.check.as_str())
        .collect();
    assert_eq!(not, ["bios-loader"], "{}", report.text());
}

#[test]
fn missing_drivers_are_errors_naming_the_file() {
    let r = sound_root();
    let d = disk(&pe(0x8664), false);
    let modules = format!("/lib/modules/{VERSION}");
    r.put(
        &format!("{modules}/modules.dep"),
        b"kernel/drivers/nvme/host/nvme.ko:\n",
    );
    let report = run(&r.0, Some(&d), &promises(), &[]);
    assert_eq!(
        found(&report),
        one(
            "ena-driver",
            Severity::Error,
            &format!("{modules}/modules.dep")
        )
    );
    assert!(report.findings[0].fix.contains("ena_support = false"));
    // Without ena_support nothing is asked of the kernel.
    let p = Promises {
        ena_support: false,
        ..promises()
    };
    assert_eq!(run(&r.0, Some(&d), &p, &[]).findings, []);
    // NVMe a module but not in the initramfs.
    r.put(
        &format!("{modules}/modules.dep"),
        b"kernel/drivers/nvme/host/nvme.ko:\nkernel/drivers/net/ethernet/amazon/ena/ena.ko:\n",
    );
    let initrd = format!("/boot/initrd.img-{VERSION}");
    r.put(&initrd, &initramfs(false));
    let report = run(&r.0, Some(&d), &promises(), &[]);
    assert_eq!(
        found(&report),
        one("nvme-initramfs", Severity::Error, &initrd)
    );
    assert!(report.findings[0].fix.contains("update-initramfs"));
    // ... fine on a Xen type, and when the driver is built in.
    let p = Promises {
        hypervisor: crate::ec2::instance_types::Hypervisor::Xen,
        ..promises()
    };
    assert_eq!(run(&r.0, Some(&d), &p, &[]).findings, []);
    r.put(
        &format!("{modules}/modules.builtin"),
        b"kernel/drivers/nvme/host/nvme.ko\n",
    );
    assert_eq!(run(&r.0, Some(&d), &promises(), &[]).findings, []);
    // No initramfs at all while NVMe is a module.
    r.put(&format!("{modules}/modules.builtin"), b"");
    r.remove(&initrd);
    let report = run(&r.0, Some(&d), &promises(), &[]);
    assert_eq!(
        found(&report),
        one("nvme-initramfs", Severity::Error, &initrd)
    );
}

#[test]
fn the_wrong_architecture_is_an_error_for_init_and_kernel() {
    let r = sound_root();
    let d = disk(&pe(0x8664), false);
    let p = Promises {
        architecture: "arm64".into(),
        ..promises()
    };
    let report = run(&r.0, Some(&d), &p, &[]);
    let got = found(&report);
    assert!(
        got.contains(&(
            "init-architecture".into(),
            Severity::Error,
            "/sbin/init".into()
        )),
        "{}",
        report.text()
    );
    assert!(got.contains(&(
        "kernel-architecture".into(),
        Severity::Error,
        format!("/boot/vmlinuz-{VERSION}")
    )));
    // arm64 boots with UEFI: BOOTAA64.EFI is missing from the ESP too.
    assert!(got.contains(&(
        "efi-binary".into(),
        Severity::Error,
        "/EFI/BOOT/BOOTAA64.EFI".into()
    )));
    // A script init is judged by its interpreter.
    r.remove("/lib/systemd/systemd");
    r.put("/lib/systemd/systemd", b"#!/bin/busybox sh\n");
    r.put("/bin/busybox", &elf(0xb7));
    let report = run(&r.0, Some(&d), &p, &[]);
    assert!(
        !found(&report).iter().any(|f| f.0 == "init-architecture"),
        "{}",
        report.text()
    );
}

#[test]
fn boot_loaders_for_the_boot_mode() {
    let r = sound_root();
    // UEFI: the loader is missing, or built for another machine.
    let no_loader = Image::new("noesp", 8 << 20);
    write_gpt(
        &no_loader,
        &[(
            ROOT_GUID,
            "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            2048,
            16383,
            "root",
        )],
    );
    write_ext4(&no_loader, 2048 * 512, ROOT_UUID, "root");
    let report = run(&r.0, Some(&no_loader), &promises(), &["fstab-device"]);
    assert_eq!(
        found(&report),
        one("efi-binary", Severity::Error, "/EFI/BOOT/BOOTX64.EFI")
    );
    assert!(
        report.findings[0]
            .message
            .contains("no EFI system partition")
    );
    let d = disk(&pe(0xaa64), false);
    let report = run(&r.0, Some(&d), &promises(), &[]);
    assert_eq!(
        found(&report),
        one("efi-binary", Severity::Error, "/EFI/BOOT/BOOTX64.EFI")
    );
    assert!(
        report.findings[0].message.contains("0xaa64"),
        "{}",
        report.text()
    );
    // Legacy BIOS: no boot code in the MBR, then some.
    let p = Promises {
        boot_mode: None,
        ..promises()
    };
    let d = disk(&pe(0x8664), false);
    let report = run(&r.0, Some(&d), &p, &[]);
    assert_eq!(found(&report), one("bios-loader", Severity::Error, "(MBR)"));
    let d = disk(&pe(0x8664), true);
    assert_eq!(run(&r.0, Some(&d), &p, &[]).findings, []);
}

#[test]
fn fstab_devices_must_exist() {
    let r = sound_root();
    let d = disk(&pe(0x8664), false);
    r.put(
        "/etc/fstab",
        b"UUID=5e5e5e5e-5e5e-5e5e-5e5e-5e5e5e5e5e5e / ext4 defaults 0 1\nUUID=0BAD-CAFE /boot/efi vfat defaults 0 2\nPARTUUID=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee /x ext4 defaults 0 2\n",
    );
    assert_eq!(run(&r.0, Some(&d), &promises(), &[]).findings, []);
    r.put(
        "/etc/fstab",
        b"UUID=0123abcd-0000-0000-0000-000000000000 / ext4 defaults 0 1\nLABEL=data /data ext4 nofail 0 2\n/dev/xvda1 /old ext4 defaults 0 2\n",
    );
    let report = run(&r.0, Some(&d), &promises(), &[]);
    let sev: Vec<_> = report
        .findings
        .iter()
        .map(|f| (f.check.as_str(), f.severity))
        .collect();
    assert_eq!(
        sev,
        [
            ("fstab-device", Severity::Error),
            ("fstab-device", Severity::Warning),
            ("fstab-device", Severity::Warning)
        ],
        "{}",
        report.text()
    );
    assert!(report.findings[0].message.contains("line 1"));
    assert!(
        report.findings[0].message.contains("UUID=5e5e5e5e"),
        "{}",
        report.text()
    );
    // Without a disk the check says it did not run.
    let report = run(&r.0, None, &promises(), &[]);
    assert!(report.not_checked.iter().any(|n| n.check == "fstab-device"));
}

#[test]
fn imds_v2_wants_cloud_init_or_an_equivalent() {
    let r = sound_root();
    let d = disk(&pe(0x8664), false);
    r.remove("/usr/bin/cloud-init");
    let report = run(&r.0, Some(&d), &promises(), &[]);
    assert_eq!(
        found(&report),
        one("imds-client", Severity::Warning, "/usr/bin/cloud-init")
    );
    assert!(!report.has_errors());
    // The image's own unit that asks for an IMDSv2 token is an equivalent.
    r.put(
        "/etc/systemd/system/ssh-keys.service",
        b"[Service]\nExecStart=/bin/sh -c 'curl -H \"X-aws-ec2-metadata-token: $T\" ...'\n",
    );
    assert_eq!(run(&r.0, Some(&d), &promises(), &[]).findings, []);
    // Skipped checks are listed, never silent.
    r.remove("/etc/systemd/system/ssh-keys.service");
    let report = run(&r.0, Some(&d), &promises(), &["imds-client"]);
    assert_eq!(report.findings, []);
    assert!(
        report
            .not_checked
            .iter()
            .any(|n| n.check == "imds-client" && n.reason.contains("skipped"))
    );
}

#[test]
fn an_image_without_a_kernel_gets_one_warning() {
    let r = Root(std::env::temp_dir().join(format!(
        "kiln-lint-bare-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )));
    r.put("/bin/busybox", &elf(0x3e));
    std::fs::create_dir_all(r.0.join("sbin")).unwrap();
    std::os::unix::fs::symlink("../bin/busybox", r.0.join("sbin/init")).unwrap();
    let p = Promises {
        imds_v2: false,
        ..promises()
    };
    let report = run(&r.0, None, &p, &[]);
    assert_eq!(
        found(&report),
        one("kernel-missing", Severity::Warning, "/boot")
    );
    for id in [
        "ena-driver",
        "nvme-initramfs",
        "efi-binary",
        "kernel-architecture",
    ] {
        assert!(report.not_checked.iter().any(|n| n.check == id), "{id}");
    }
    // The init's architecture is still checked.
    let p = Promises {
        architecture: "arm64".into(),
        ..p
    };
    assert!(run(&r.0, None, &p, &[]).has_errors());
    assert!(validate_skip(&["nope".into()]).is_err());
    assert!(validate_skip(&["imds-client".into()]).is_ok());
}

#[test]
fn promises_follow_the_registration_fields() {
    use crate::ec2::instance_types::Hypervisor;
    let p = |arch: &str, mode: Option<&str>, hv: Hypervisor| Promises {
        architecture: arch.into(),
        boot_mode: mode.map(str::to_owned),
        hypervisor: hv,
        ..promises()
    };
    let nitro = Hypervisor::Nitro;
    // EC2 boots x86 without a boot mode with BIOS, arm64 always with UEFI.
    assert!(p("x86_64", None, nitro).boots_bios());
    assert!(!p("x86_64", None, nitro).boots_uefi());
    assert!(p("arm64", None, nitro).boots_uefi());
    assert!(!p("arm64", Some("legacy-bios"), nitro).boots_bios());
    // uefi-preferred: UEFI on Nitro, and BIOS too on a Xen type (which has no UEFI).
    let pref = p("x86_64", Some("uefi-preferred"), nitro);
    assert!(pref.boots_uefi() && !pref.boots_bios());
    assert!(p("x86_64", Some("uefi-preferred"), Hypervisor::Xen).boots_bios());
    // From a template: its fields, and the boot test's instance type for the hypervisor.
    let dir = std::env::temp_dir().join(format!("kiln-lint-tpl-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let tpl = dir.join("t.pkr.hcl");
    std::fs::write(
        &tpl,
        r#"source "amazon-chroot" "x" {
  from_scratch = true
  ami_name = "lint-x"
  ami_virtualization_type = "hvm"
  root_volume_size = 1
  pre_mount_commands = ["true"]
  root_device_name = "/dev/xvda"
  ami_architecture = "arm64"
  ena_support = true
  imds_support = "v2.0"
  boot_mode = "uefi"
  ami_block_device_mappings {
    device_name = "/dev/xvda"
  }
  ami_block_device_mappings {
    device_name = "/dev/xvdb"
    volume_size = 10
  }
  boot_test {
    instance_type = "m4.large"
  }
  lint {
    skip = ["imds-client"]
  }
}
build { sources = ["source.amazon-chroot.x"] }
"#,
    )
    .unwrap();
    let loaded = crate::template::load(&tpl, &Default::default());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !loaded.has_errors(),
        "{:?}",
        loaded.errors().collect::<Vec<_>>()
    );
    let c = &loaded.plans[0].config;
    let got = Promises::from_config(c, None, &c.ami_architecture);
    assert_eq!(
        got,
        Promises {
            architecture: "arm64".into(),
            boot_mode: Some("uefi".into()),
            ena_support: true,
            imds_v2: true,
            hypervisor: Hypervisor::Xen,
            uefi_data: false,
            other_volumes: true,
        }
    );
    assert_eq!(c.lint.skip, ["imds-client"]);
}
