//! Step `boot-test` (kiln's `boot_test` block, or `kiln build --boot-test`): before the image is
//! registered, its snapshot is booted in QEMU with the firmware its `boot_mode` asks for (OVMF for
//! `uefi`/`uefi-preferred`, SeaBIOS otherwise), and the build fails unless the console shows the
//! marker in time; the failure carries the console's last lines, and the snapshot is removed as
//! for any failed build. Loop backend only for now: on EC2 (`ebs`) the step says so and fails.
//! Undo: none (QEMU is gone when the step returns; `snapshot=on` leaves no overlay).

use crate::host::vm::{self, BootSpec, Firmware};
use crate::pipeline::{Build, StepError};
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
    let Some(disk) = b.backend.snapshot_file(&snapshot) else {
        return Err(super::invalid(
            "boot_test runs with the loop backend (kiln build --backend loop); booting the AMI on an EC2 instance is not built yet: remove boot_test for EC2 builds",
        ));
    };
    if b.plan.config.ami_architecture == "arm64" {
        return Err(super::invalid(
            "boot_test boots x86_64 images; arm64 images are not supported yet: remove boot_test",
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
        "booted_in_s": booted.seconds,
        "firmware": if firmware == Firmware::Uefi { "uefi" } else { "bios" },
        "kvm": booted.kvm,
        "marker_line": booted.line,
        "console_tail": booted.tail,
    }))
}
