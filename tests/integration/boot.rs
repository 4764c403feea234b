//! The boot test (`boot_test` / `kiln build --boot-test`): the example Debian image boots under
//! UEFI (OVMF) before it is registered; an image that does not boot fails the build with the
//! console's last lines and leaves nothing (no AMI, snapshot or QEMU process); SIGTERM during the
//! boot test stops QEMU at once.

use crate::pipeline::{Tpl, assert_nothing_left, build, build_then_sigterm, busybox};
use crate::support::{Emulator, repo_root, tagged, track_result, unique, with_janitor};
use serde_json::Value;
use std::time::Duration;

/// QEMU processes whose command line names `needle` (a snapshot id).
fn qemu_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("qemu-system") && cmd.contains(needle) {
            found.push(cmd);
        }
    }
    found
}

fn require_qemu() {
    assert!(
        std::process::Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "qemu-system-x86_64 is missing: run scripts/setup (apt-get install -y qemu-system-x86 ovmf)"
    );
}

/// No QEMU process still runs the build's snapshot.
fn assert_no_qemu(doc: &Value) {
    let snap = doc["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|s| s["outputs"]["snapshot_id"].as_str())
        .expect("the snapshot step ran");
    assert!(
        qemu_with(snap).is_empty(),
        "QEMU left: {:?}",
        qemu_with(snap)
    );
}

/// A busybox image has no kernel: under UEFI the firmware ends in its shell, never at a login.
const NO_KERNEL: &str = "boot_mode = \"uefi\"\n  boot_test {\n    timeout = \"20s\"\n  }";

#[tokio::test]
async fn an_image_that_does_not_boot_fails_with_its_console() {
    require_qemu();
    let t = Tpl::new();
    let id = unique("noboot");
    let tpl = t.write("nb.pkr.hcl", &busybox(&unique("noboot"), NO_KERNEL, ""));
    let (ok, doc, stderr) = build(&tpl, &["--build-id".into(), id.clone()]);
    assert!(!ok, "{doc:#}\n{stderr}");
    assert_eq!(doc["error"]["step"], "boot-test", "{doc:#}");
    let msg = doc["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("no console line matched") && msg.contains("UEFI Interactive Shell"),
        "the error carries the console's last lines: {msg}"
    );
    assert_nothing_left(&id, &doc).await;
    assert_no_qemu(&doc);
}

#[tokio::test]
async fn sigterm_during_the_boot_test_stops_qemu_at_once() {
    require_qemu();
    let t = Tpl::new();
    let id = unique("bootcancel");
    let tpl = t.write(
        "bc.pkr.hcl",
        &busybox(&unique("bootcancel"), &NO_KERNEL.replace("20s", "10m"), ""),
    );
    // Signalled once the firmware runs: QEMU is up.
    let (out, took) = build_then_sigterm(&tpl, &["--build-id".into(), id.clone()], |l| {
        l.contains("boot-test: BdsDxe") || l.contains("boot-test: UEFI")
    });
    assert!(
        took < Duration::from_secs(60),
        "the build did not stop promptly"
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("result JSON");
    assert_eq!(doc["error"]["step"], "boot-test", "{doc:#}");
    assert_nothing_left(&id, &doc).await;
    assert_no_qemu(&doc);
}

/// The example Debian template (debootstrap from the Debian mirror, the cloud kernel, GRUB at
/// the removable path) builds and reaches its login prompt (or systemd's multi-user target, the
/// default marker's other half) under UEFI before it is registered.
#[tokio::test]
async fn the_debian_example_boots_under_uefi() {
    require_qemu();
    with_janitor(|janitor| async move {
        let (ok, doc, stderr) = build(
            &repo_root().join("templates/debian"),
            &[
                "--boot-test".into(),
                "--var".into(),
                "volume_size=2".to_owned(),
            ],
        );
        track_result(&janitor, &doc);
        assert!(
            ok,
            "{}\n{}",
            doc["error"],
            stderr.lines().rev().take(40).collect::<Vec<_>>().join("\n")
        );
        let boot = doc["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == "boot-test")
            .expect("the boot-test step ran");
        assert_eq!(boot["outputs"]["firmware"], "uefi", "{boot:#}");
        assert!(
            boot["outputs"]["marker_line"]
                .as_str()
                .is_some_and(|l| l.contains("login:") || l.contains("Multi-User")),
            "{boot:#}"
        );
        let region = Emulator::get().region();
        assert!(doc["artifacts"][region]["ami_id"].as_str().is_some());
        let vols = tagged(region, doc["build_id"].as_str().expect("id"))
            .await
            .volumes;
        assert!(vols.is_empty(), "{vols:?}");
    })
    .await;
}
