//! Step `boot-test` (kiln's `boot_test` block, or `kiln build --boot-test`): before the image is
//! registered, the new snapshot is booted and the build fails unless its console shows the
//! marker in time; the failure carries the console's last lines, and the snapshot is removed as
//! for any failed build. Two methods: `qemu` boots the snapshot's data file on the builder (loop
//! backend; OVMF for `uefi`/`uefi-preferred`, SeaBIOS otherwise), `instance` launches it on EC2
//! (`boot_instance.rs`; the default on the ebs backend, where the data is not on the builder).
//! Both boot the disk as `boot_test.instance_type` will see it: `qemu` attaches it as NVMe for a
//! Nitro type (the default) and as virtio for a Xen one (`ec2::instance_types`), so an image
//! whose initramfs lacks the NVMe driver fails here as it would on EC2.
//! Undo: the instance method's instance terminated and its private image deregistered (QEMU is
//! gone when the step returns; `snapshot=on` leaves no overlay).

use crate::ec2::instance_types::{self, Hypervisor};
use crate::host::vm::{self, Arch, BootSpec, DiskBus, Firmware};
use crate::pipeline::{Build, StepError};
use crate::template::boot_test::{BootMethod, BootTest};
use std::time::Duration;

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let Some(test) = b.plan.config.boot_test.clone() else {
        return Ok(serde_json::json!({ "skipped": "no boot_test" }));
    };
    let snapshot = b
        .state
        .snapshot_id
        .clone()
        .ok_or_else(|| super::invalid("no snapshot"))?;
    let disk = b.backend.snapshot_file(&snapshot);
    let method = test.method.unwrap_or(if disk.is_some() {
        BootMethod::Qemu
    } else {
        BootMethod::Instance
    });
    match (method, disk) {
        (BootMethod::Instance, _) => super::boot_instance::run(b, &test, &snapshot).await,
        (BootMethod::Qemu, Some(disk)) => qemu(b, &test, &snapshot, disk).await,
        (BootMethod::Qemu, None) => Err(super::invalid(
            "boot_test method \"qemu\" boots the snapshot's data file, which only the loop backend has: use method = \"instance\" (the default on EC2)",
        )),
    }
}

/// Undo: what the instance method left (safe to run twice).
pub async fn undo(b: &mut Build) -> Result<(), StepError> {
    super::boot_instance::remove(b).await
}

/// The firmware EC2 starts the AMI with: its boot mode is the template's, else the source
/// image's (as `register-image` registers it); arm64 AMIs boot only with UEFI.
fn firmware(b: &Build, arch: Arch) -> Firmware {
    let boot_mode = b
        .plan
        .config
        .boot_mode
        .clone()
        .or_else(|| b.state.source.as_ref().and_then(|s| s.boot_mode.clone()));
    match (arch, boot_mode.as_deref()) {
        (Arch::Arm64, _) | (_, Some("uefi") | Some("uefi-preferred")) => Firmware::Uefi,
        _ => Firmware::Bios,
    }
}

/// The disk as an instance of `instance_type` sees the snapshot's volume, and its name for the
/// result: NVMe (with an EBS-like serial) on Nitro, virtio for Xen types (see [`DiskBus`]).
fn disk_bus(instance_type: &str, snapshot: &str) -> (DiskBus, &'static str) {
    match instance_types::hypervisor(instance_type) {
        Hypervisor::Nitro => (
            DiskBus::Nvme {
                serial: vm::ebs_serial(snapshot),
            },
            "nvme",
        ),
        Hypervisor::Xen => (DiskBus::Virtio, "virtio"),
    }
}

async fn qemu(
    b: &mut Build,
    test: &BootTest,
    snapshot: &str,
    disk: std::path::PathBuf,
) -> Result<serde_json::Value, StepError> {
    let arch = if super::register_image::architecture(b) == "arm64" {
        Arch::Arm64
    } else {
        Arch::X86_64
    };
    if arch == Arch::Arm64 && test.kvm {
        return Err(super::invalid(
            "boot_test boots arm64 images in QEMU's emulation (TCG): remove accelerator = \"kvm\"",
        ));
    }
    let firmware = firmware(b, arch);
    let marker = regex::Regex::new(&test.marker)
        .map_err(|e| super::invalid(format!("boot_test.marker: {e}")))?;
    let instance_type = test.instance_type_for(arch == Arch::Arm64).to_owned();
    let (bus, disk_name) = disk_bus(&instance_type, snapshot);
    let spec = BootSpec {
        disk,
        firmware,
        arch,
        bus,
        memory_mib: test.memory_mib,
        timeout: Duration::from_secs_f64(test.timeout_s),
        marker,
        kvm: test.kvm,
    };
    (b.sink)(
        "boot-test",
        &format!(
            "booting {} ({}) with {} on {disk_name} as a {instance_type} sees it (timeout {} s), waiting for `{}`",
            snapshot,
            if arch == Arch::Arm64 {
                "arm64"
            } else {
                "x86_64"
            },
            match (arch, firmware) {
                (Arch::Arm64, _) => "UEFI (AAVMF)",
                (_, Firmware::Uefi) => "UEFI (OVMF)",
                _ => "BIOS",
            },
            test.timeout_s,
            test.marker
        ),
    );
    let booted = vm::boot(&spec, &b.sink, &b.cancel).await?;
    Ok(serde_json::json!({
        "method": "qemu",
        "booted_in_s": booted.seconds,
        "firmware": if firmware == Firmware::Uefi { "uefi" } else { "bios" },
        "architecture": if arch == Arch::Arm64 { "arm64" } else { "x86_64" },
        "kvm": booted.kvm,
        "instance_type": instance_type,
        "disk": disk_name,
        "marker_line": booted.line,
        "console_tail": booted.tail,
    }))
}
