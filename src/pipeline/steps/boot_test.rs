//! Step `boot-test` (kiln's `boot_test` block, or `kiln build --boot-test`): before the image is
//! registered, the new snapshot is booted and the build fails unless its console shows the
//! marker in time; the failure carries the console's last lines, and the snapshot is removed as
//! for any failed build. Two methods: `qemu` boots the snapshot's data file on the builder (loop
//! backend; OVMF for `uefi`/`uefi-preferred`, SeaBIOS otherwise), `instance` launches it on EC2
//! (`boot_instance.rs`; the default on the ebs backend, where the data is not on the builder).
//! Undo: the instance method's instance terminated and its private image deregistered (QEMU is
//! gone when the step returns; `snapshot=on` leaves no overlay).

use crate::host::vm::{self, BootSpec, Firmware};
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
    if b.plan.config.ami_architecture == "arm64" {
        return Err(super::invalid(
            "boot_test boots x86_64 images in QEMU; arm64 images are not supported there yet: use method = \"instance\" or remove boot_test",
        ));
    }
    let firmware = match b.plan.config.boot_mode.as_deref() {
        Some("uefi") | Some("uefi-preferred") => Firmware::Uefi,
        _ => Firmware::Bios,
    };
    let marker = regex::Regex::new(&test.marker)
        .map_err(|e| super::invalid(format!("boot_test.marker: {e}")))?;
    let spec = BootSpec {
        disk,
        firmware,
        memory_mib: test.memory_mib,
        timeout: Duration::from_secs_f64(test.timeout_s),
        marker,
        kvm: test.kvm,
    };
    (b.sink)(
        "boot-test",
        &format!(
            "booting {} with {} (timeout {} s), waiting for `{}`",
            snapshot,
            if firmware == Firmware::Uefi {
                "UEFI (OVMF)"
            } else {
                "BIOS"
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
        "kvm": booted.kvm,
        "marker_line": booted.line,
        "console_tail": booted.tail,
    }))
}
