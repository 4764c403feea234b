//! The boot test (`boot_test` / `kiln build --boot-test`): the example Debian image boots under
//! UEFI (OVMF) before it is registered; an image that does not boot fails the build with the
//! console's last lines and leaves nothing (no AMI, snapshot or QEMU process); SIGTERM during the
//! boot test stops QEMU at once. The `instance` method (EC2's path) runs against the emulator,
//! whose RunInstances boots the snapshot's data file: the image is launched, its console read with
//! GetConsoleOutput, the instance terminated and the test image deregistered, also on failure and
//! on SIGTERM. Both methods boot the disk as the instance type sees it (issue 23): the example
//! boots from NVMe on the default (Nitro) type, and an image whose initramfs lacks the NVMe driver
//! boots on a Xen type (virtio) and fails on a Nitro one.

use crate::host_safety::from_base;
use crate::pipeline::{Tpl, assert_nothing_left, build, build_then_sigterm, busybox};
use crate::support::{Emulator, repo_root, tagged, track_result, unique, with_janitor};
use serde_json::Value;
use std::path::PathBuf;
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

/// The Debian boot runs alone: TCG guests share the runner's two cores, and a Linux guest starved
/// of CPU stalls (RCU) past its timeout while other QEMUs run. The short firmware-only boots may
/// run together.
static VMS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

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

/// `kiln build` arguments for the loop backend, whose snapshot files the `qemu` method boots (the
/// suite's default backend, ebs, keeps the data in the emulator).
fn on_loop(extra: &[String]) -> Vec<String> {
    [&["--backend".to_owned(), "loop".to_owned()][..], extra].concat()
}

/// Builds `tpl` as build `id` (with `extra` arguments), sends SIGTERM once the boot test's console
/// shows the firmware, and checks the build stopped promptly, at the boot test, leaving nothing;
/// returns its result.
async fn sigterm_once_booting(tpl: &std::path::Path, id: &str, extra: &[String]) -> Value {
    let args = [&["--build-id".to_owned(), id.to_owned()][..], extra].concat();
    let (out, took) = build_then_sigterm(tpl, &args, |l| {
        l.contains("boot-test: BdsDxe") || l.contains("boot-test: UEFI")
    });
    assert!(
        took < Duration::from_secs(60),
        "the build did not stop promptly"
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("result JSON");
    assert_eq!(doc["error"]["step"], "boot-test", "{doc:#}");
    assert_nothing_left(id, &doc).await;
    doc
}

/// The result document's `boot-test` step.
fn boot_step(doc: &Value) -> Value {
    doc["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "boot-test")
        .cloned()
        .unwrap_or_else(|| panic!("no boot-test step in {doc:#}"))
}

/// A busybox image has no kernel: under UEFI the firmware ends in its shell, never at a login.
const NO_KERNEL: &str = "boot_mode = \"uefi\"\n  boot_test {\n    timeout = \"20s\"\n  }";

#[tokio::test]
async fn an_image_that_does_not_boot_fails_with_its_console() {
    require_qemu();
    let _vm = VMS.read().await;
    let t = Tpl::new();
    let id = unique("noboot");
    let tpl = t.write("nb.pkr.hcl", &busybox(&unique("noboot"), NO_KERNEL, ""));
    let (ok, doc, stderr) = build(&tpl, &on_loop(&["--build-id".into(), id.clone()]));
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
    let _vm = VMS.read().await;
    let t = Tpl::new();
    let id = unique("bootcancel");
    let tpl = t.write(
        "bc.pkr.hcl",
        &busybox(&unique("bootcancel"), &NO_KERNEL.replace("20s", "10m"), ""),
    );
    // Signalled once the firmware runs: QEMU is up.
    let doc = sigterm_once_booting(&tpl, &id, &on_loop(&[])).await;
    assert_no_qemu(&doc);
}

/// The example Debian template (debootstrap from the Debian mirror, the cloud kernel, GRUB at
/// the removable path) builds and reaches its login prompt (or systemd's multi-user target, the
/// default marker's other half) under UEFI before it is registered.
#[tokio::test]
async fn the_debian_example_boots_under_uefi() {
    require_qemu();
    let _alone = VMS.write().await;
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
        // Issue 23: the image lint finds nothing in the example.
        let lint = doc["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == "lint-image");
        assert_eq!(
            lint.map(|l| &l["outputs"]["findings"]),
            Some(&serde_json::json!([])),
            "{lint:#?}"
        );
        let boot = &boot_step(&doc);
        // Under UEFI: OVMF's boot manager on the console (either method; qemu also says so).
        assert!(
            stderr.contains("boot-test: BdsDxe"),
            "not booted with UEFI:\n{}",
            console(&stderr)
        );
        if boot["outputs"]["method"] == "qemu" {
            assert_eq!(boot["outputs"]["firmware"], "uefi", "{boot:#}");
        }
        assert!(
            boot["outputs"]["marker_line"]
                .as_str()
                .is_some_and(|l| l.contains("login:") || l.contains("Multi-User")),
            "{boot:#}"
        );
        // The default test instance is a Nitro type: the kernel found its root on NVMe.
        assert!(
            stderr.contains("nvme0n1p2") && !stderr.contains("vda2"),
            "the root is not on NVMe:\n{}",
            console(&stderr)
        );
        let region = Emulator::get().region();
        let base = doc["artifacts"][region]["ami_id"]
            .as_str()
            .expect("ami")
            .to_owned();
        let vols = tagged(region, doc["build_id"].as_str().expect("id"))
            .await
            .volumes;
        assert!(vols.is_empty(), "{vols:?}");
        // Issue 25: its SBOM lists what its dpkg database holds.
        crate::pipeline::with_snapshot_partition(
            &crate::support::result_snapshot_data(&doc, region),
            2,
            |root| crate::sbom::assert_sbom_matches_dpkg(&doc, root),
        );

        // Issue 24: an application layer on top with the direct backend boots too (the image is
        // the parent's blocks plus only the changed ones), and its file system is consistent.
        let t = Tpl::new();
        let state = t.0.join("state");
        let app = t.write(
            "app.pkr.hcl",
            &format!(
                r#"
source "amazon-chroot" "app" {{
  source_ami      = "{base}"
  ami_name        = "{}"
  copy_files      = []
  mount_partition = "2"
}}
build {{
  sources = ["source.amazon-chroot.app"]
  provisioner "shell" {{
    inline = ["echo app-1.0 > /etc/app-version", "dd if=/dev/urandom of=/opt/app.bin bs=1M count=8 2>/dev/null"]
  }}
}}
"#,
                unique("debian-direct-app")
            ),
        );
        let (ok, app_doc, stderr) = build(
            &app,
            &[
                "--backend".into(),
                "direct".into(),
                "--state-dir".into(),
                state.display().to_string(),
                "--boot-test".into(),
            ],
        );
        track_result(&janitor, &app_doc);
        assert!(
            ok,
            "{}\n{}",
            app_doc["error"],
            stderr.lines().rev().take(40).collect::<Vec<_>>().join("\n")
        );
        let boot = &boot_step(&app_doc);
        assert!(
            boot["outputs"]["marker_line"]
                .as_str()
                .is_some_and(|l| l.contains("login:") || l.contains("Multi-User")),
            "{boot:#}"
        );
        let up = app_doc["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == "upload-delta")
            .map(|s| s["outputs"].clone())
            .expect("upload-delta ran");
        let source = app_doc["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == "read-source")
            .and_then(|s| s["outputs"]["source_blocks"].as_u64())
            .unwrap_or(0);
        let changed = up["changed_blocks"].as_u64().unwrap_or(0);
        assert!(
            changed >= 16 && changed * 4 < source,
            "8 MiB changed, not the whole image of {source} blocks: {up}"
        );
        let file = crate::support::result_snapshot_data(&app_doc, region);
        crate::direct::fsck_root(&file, 2);
        // Its SBOM: the parent's packages unchanged (the layer only wrote files).
        let sbom = app_doc["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == "sbom")
            .map(|s| s["outputs"].clone())
            .expect("sbom ran");
        assert_eq!(sbom["changes"]["parent"]["lines"], serde_json::json!([]), "{sbom:#}");
        assert!(sbom["packages"].as_u64().is_some_and(|n| n > 50), "{sbom:#}");
    })
    .await;
}

/// The boot test's console lines in `kiln build`'s log (for failure messages).
fn console(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| l.contains("boot-test:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A shell provisioner's script: an initramfs-tools hook that leaves the NVMe driver out of every
/// initramfs made after it, as an image made for Xen types (or with `MODULES=dep` on one) lacks it.
const NO_NVME_HOOK: &str = r#"#!/bin/sh
set -e
mkdir -p /etc/initramfs-tools/hooks
cat > /etc/initramfs-tools/hooks/no-nvme <<'HOOK'
#!/bin/sh
[ "$1" = prereqs ] && exit 0
find "$DESTDIR" -path '*/kernel/drivers/nvme' -prune -exec rm -rf {} +
HOOK
chmod +x /etc/initramfs-tools/hooks/no-nvme
"#;

/// The example Debian template changed to make an image whose initramfs lacks the NVMe driver:
/// Debian's generic kernel (the cloud kernel has the driver built in, the generic one as a module)
/// installed after the hook above. The linter's NVMe check is skipped (the boot test is what
/// must catch it here), and its BIOS check (the boot test starts the image with UEFI).
/// `boot_test` is the source's block. Returns the template's directory.
fn debian_without_nvme(t: &Tpl, boot_test: &str) -> PathBuf {
    let example = repo_root().join("templates/debian");
    let read =
        |f: &str| std::fs::read_to_string(example.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let hook = t.write("no-nvme.sh", NO_NVME_HOOK);
    let mut text = read("debian.pkr.hcl");
    for (from, to) in [
        (
            "linux-image-cloud-${local.deb_arch}",
            "linux-image-${local.deb_arch}".to_owned(),
        ),
        (
            "  provisioner \"shell\" {\n",
            format!(
                "  provisioner \"shell\" {{\n    script = \"{}\"\n  }}\n\n  provisioner \"shell\" {{\n",
                hook.display()
            ),
        ),
        (
            "  tags = {\n",
            format!(
                "  lint {{\n    skip = [\"nvme-initramfs\", \"bios-loader\"]\n  }}\n\n  {boot_test}\n\n  tags = {{\n"
            ),
        ),
    ] {
        assert!(
            text.contains(from),
            "templates/debian/debian.pkr.hcl no longer has `{from}`: update this test"
        );
        text = text.replacen(from, &to, 1);
    }
    let dir = t.0.join("debian-no-nvme");
    std::fs::create_dir_all(&dir).expect("template dir");
    std::fs::write(dir.join("debian.pkr.hcl"), text).expect("debian.pkr.hcl");
    std::fs::write(dir.join("variables.pkr.hcl"), read("variables.pkr.hcl"))
        .expect("variables.pkr.hcl");
    dir
}

/// An image whose initramfs lacks the NVMe driver boots where its root volume is a paravirtual
/// disk (a Xen type, t2.micro: virtio) and fails the boot test on a Nitro type (the default),
/// where the volume is an NVMe device, as it would fail on EC2: the console shows the initramfs
/// giving up on its root, the build fails at the boot test and leaves nothing. Both builds use the
/// loop backend: the Xen boot runs in kiln's own QEMU (method qemu, which boots the loop
/// backend's snapshot file), the Nitro one in the emulator's RunInstances (method instance), so
/// both attach the disk by the type. The Nitro build starts from the Xen build's AMI: one Debian
/// build.
#[tokio::test]
async fn an_image_without_the_nvme_driver_boots_on_xen_and_fails_on_nitro() {
    require_qemu();
    let _alone = VMS.write().await;
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        let xen = "boot_test {\n    instance_type = \"t2.micro\"\n  }";
        let dir = debian_without_nvme(&t, xen);
        let (ok, doc, stderr) = build(&dir, &on_loop(&["--var".into(), "volume_size=2".into()]));
        track_result(&janitor, &doc);
        assert!(
            ok,
            "{}\n{}",
            doc["error"],
            stderr.lines().rev().take(40).collect::<Vec<_>>().join("\n")
        );
        let boot = boot_step(&doc);
        assert_eq!(boot["outputs"]["method"], "qemu", "{boot:#}");
        assert_eq!(boot["outputs"]["instance_type"], "t2.micro", "{boot:#}");
        assert_eq!(boot["outputs"]["disk"], "virtio", "{boot:#}");
        assert!(
            stderr.contains("vda2") && !stderr.contains("nvme0n1"),
            "on a Xen type the root is on virtio:\n{}",
            console(&stderr)
        );
        let region = Emulator::get().region();
        let ami = doc["artifacts"][region]["ami_id"]
            .as_str()
            .expect("an AMI")
            .to_owned();

        let id = unique("nonvme");
        let nitro = "mount_partition = \"2\"\n  lint {\n    skip = [\"nvme-initramfs\", \"bios-loader\"]\n  }\n  boot_test {\n    method  = \"instance\"\n    timeout = \"2m\"\n  }";
        let tpl = t.write(
            "nitro.pkr.hcl",
            &from_base(&ami, &unique("nonvme"), nitro, ""),
        );
        let (ok, doc, stderr) = build(&tpl, &on_loop(&["--build-id".into(), id.clone()]));
        track_result(&janitor, &doc);
        assert!(!ok, "{doc:#}\n{stderr}");
        assert_eq!(doc["error"]["step"], "boot-test", "{doc:#}");
        let msg = doc["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("LABEL=root does not exist"),
            "the initramfs found no root on NVMe: {msg}\n{}",
            console(&stderr)
        );
        assert_nothing_left(&id, &doc).await;
        assert_no_test_instance(&id).await;
        assert_no_qemu(&doc);
    })
    .await;
}

/// The instance method's block: a busybox image under UEFI reaches the firmware's shell (a
/// success when the marker asks for it, a failure with the default marker).
fn instance_method(marker: Option<&str>, timeout: &str) -> String {
    let marker = marker
        .map(|m| format!("\n    marker = \"{m}\""))
        .unwrap_or_default();
    format!(
        "boot_mode = \"uefi\"\n  boot_test {{\n    method = \"instance\"\n    timeout = \"{timeout}\"{marker}\n  }}"
    )
}

/// No instance of build `id` is still running, and no test image of it is registered.
async fn assert_no_test_instance(id: &str) {
    let emu = Emulator::get();
    let ec2 = emu.clients(emu.region()).await.ec2;
    let left = kiln::ec2::instances::of_build(
        &ec2,
        emu.region(),
        &kiln::ec2::BuildRef {
            id: id.to_owned(),
            ..Default::default()
        },
    )
    .await
    .expect("DescribeInstances");
    assert!(left.is_empty(), "{id}: test instances left: {left:?}");
    let images = ec2
        .describe_images()
        .owners("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:kiln:step")
                .values("boot-test")
                .build(),
        )
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:kiln:build-id")
                .values(id)
                .build(),
        )
        .send()
        .await
        .expect("DescribeImages");
    assert!(
        images.images().is_empty(),
        "{id}: test images left: {:?}",
        images.images()
    );
}

#[tokio::test]
async fn the_instance_method_launches_the_image_and_cleans_up() {
    require_qemu();
    let _vm = VMS.read().await;
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        // Passes: the marker is the firmware's shell, which the emulated instance reaches.
        let id = unique("instboot");
        let tpl = t.write(
            "ok.pkr.hcl",
            &busybox(
                &unique("instboot"),
                &instance_method(Some("UEFI Interactive Shell"), "2m"),
                "",
            ),
        );
        let (ok, doc, stderr) = build(&tpl, &["--build-id".into(), id.clone()]);
        track_result(&janitor, &doc);
        assert!(ok, "{doc:#}\n{stderr}");
        let boot = boot_step(&doc);
        let out = &boot["outputs"];
        assert_eq!(out["method"], "instance", "{boot:#}");
        let instance = out["instance_id"].as_str().unwrap_or_default();
        assert!(instance.starts_with("i-"), "{boot:#}");
        assert!(
            out["marker_line"]
                .as_str()
                .unwrap_or_default()
                .contains("UEFI Interactive Shell"),
            "{boot:#}"
        );
        // The instance is terminated, the test image gone; the AMI maps the build's snapshot.
        let emu = Emulator::get();
        let ec2 = emu.clients(emu.region()).await.ec2;
        let state = kiln::ec2::instances::state(&ec2, emu.region(), instance)
            .await
            .expect("DescribeInstances");
        assert!(
            matches!(
                state,
                None | Some((aws_sdk_ec2::types::InstanceStateName::Terminated, _))
            ),
            "{instance}: {state:?}"
        );
        assert_no_test_instance(&id).await;
        let ami = doc["artifacts"][emu.region()]["ami_id"]
            .as_str()
            .expect("an AMI");
        assert_ne!(Some(ami), out["test_image_id"].as_str());
        let snap = doc["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|s| s["outputs"]["snapshot_id"].as_str())
            .expect("snapshot");
        let image = kiln::ec2::images::describe(&ec2, emu.region(), ami)
            .await
            .expect("DescribeImages")
            .expect("the AMI");
        assert_eq!(
            kiln::ec2::images::snapshots_of(&image),
            vec![snap.to_owned()]
        );
        assert_no_qemu(&doc);

        // Fails: the default marker never appears; the console's lines are in the error and
        // nothing is left.
        let id = unique("instnoboot");
        let tpl = t.write(
            "bad.pkr.hcl",
            &busybox(&unique("instnoboot"), &instance_method(None, "20s"), ""),
        );
        let (ok, doc, stderr) = build(&tpl, &["--build-id".into(), id.clone()]);
        track_result(&janitor, &doc);
        assert!(!ok, "{doc:#}\n{stderr}");
        assert_eq!(doc["error"]["step"], "boot-test", "{doc:#}");
        let msg = doc["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("matched") && msg.contains("UEFI Interactive Shell"),
            "the error carries the console's last lines: {msg}"
        );
        assert_nothing_left(&id, &doc).await;
        assert_no_test_instance(&id).await;
        assert_no_qemu(&doc);
    })
    .await;
}

#[tokio::test]
async fn sigterm_during_the_instance_boot_test_terminates_the_instance() {
    require_qemu();
    let _vm = VMS.read().await;
    let t = Tpl::new();
    let id = unique("instcancel");
    let tpl = t.write(
        "ic.pkr.hcl",
        &busybox(&unique("instcancel"), &instance_method(None, "10m"), ""),
    );
    // Signalled once the instance's console shows the firmware.
    let doc = sigterm_once_booting(&tpl, &id, &[]).await;
    assert_no_test_instance(&id).await;
    assert_no_qemu(&doc);
}

/// arm64 images boot too (with UEFI, as EC2 starts them): in qemu-system-aarch64 with AAVMF
/// (method qemu), and through the emulator's RunInstances (method instance). A busybox image has
/// no arm64 kernel, so the marker is the firmware reaching its shell.
#[tokio::test]
async fn arm64_images_boot_with_both_methods() {
    require_qemu();
    let _vm = VMS.read().await;
    assert!(
        std::path::Path::new("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd").is_file()
            && std::process::Command::new("qemu-system-aarch64")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
        "qemu-system-aarch64 or its firmware is missing: run scripts/setup (apt-get install -y qemu-system-arm qemu-efi-aarch64)"
    );
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        for method in ["qemu", "instance"] {
            let id = unique("arm64boot");
            let extra = format!(
                "ami_architecture = \"arm64\"\n  lint {{ skip = [\"init-architecture\"] }}\n  boot_test {{\n    method  = \"{method}\"\n    timeout = \"3m\"\n    marker  = \"EFI Internal Shell|UEFI Interactive Shell\"\n  }}"
            );
            let tpl = t.write(
                &format!("{method}.pkr.hcl"),
                &busybox(&unique("arm64boot"), &extra, ""),
            );
            let mut args = vec!["--build-id".to_owned(), id.clone()];
            if method == "qemu" {
                args = on_loop(&args);
            }
            let (ok, doc, stderr) = build(&tpl, &args);
            track_result(&janitor, &doc);
            assert!(ok, "{method}: {doc:#}\n{stderr}");
            let boot = boot_step(&doc);
            assert_eq!(boot["outputs"]["method"], method, "{boot:#}");
            if method == "qemu" {
                assert_eq!(boot["outputs"]["architecture"], "arm64", "{boot:#}");
                assert_eq!(boot["outputs"]["firmware"], "uefi", "{boot:#}");
            } else {
                assert_no_test_instance(&id).await;
            }
            assert_no_qemu(&doc);
        }
    })
    .await;
}
