//! Step `boot-test` (kiln's `boot_test` block, or `kiln build --boot-test`): before the image is
//! registered, the new snapshot is booted and the build fails unless its console shows the
//! marker in time; the failure carries the console's last lines, and the snapshot is removed as
//! for any failed build. Two methods: `qemu` boots the snapshot's data file on the builder (loop
//! backend; OVMF for `uefi`/`uefi-preferred`, SeaBIOS otherwise), `instance` launches it on EC2
//! (`boot_instance.rs`; the default on the ebs backend, where the data is not on the builder).
//! Undo: the instance method's instance terminated and its private image deregistered (QEMU is
//! gone when the step returns; `snapshot=on` leaves no overlay).

use crate::host::vm::{self, Arch, BootSpec, Firmware};
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
    // arm64 AMIs boot only with UEFI on EC2.
    let firmware = match (arch, b.plan.config.boot_mode.as_deref()) {
        (Arch::Arm64, _) | (_, Some("uefi") | Some("uefi-preferred")) => Firmware::Uefi,
        _ => Firmware::Bios,
    };
    let marker = regex::Regex::new(&test.marker)
        .map_err(|e| super::invalid(format!("boot_test.marker: {e}")))?;
    let spec = BootSpec {
        disk,
        firmware,
        arch,
        memory_mib: test.memory_mib,
        timeout: Duration::from_secs_f64(test.timeout_s),
        marker,
        kvm: test.kvm,
    };
    (b.sink)(
        "boot-test",
        &format!(
            "booting {} ({}) with {} (timeout {} s), waiting for `{}`",
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
        "marker_line": booted.line,
        "console_tail": booted.tail,
    }))
}
