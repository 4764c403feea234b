//! The image linter (issue 23) in `kiln build` and `kiln lint`: busybox images built with one
//! defect each on purpose fail at step `lint-image`, before the snapshot and the registration,
//! with an error naming the check, the file in the image and the fix, and leave nothing behind;
//! a warning (IMDSv2 without cloud-init) goes into the result of a build that succeeds; `kiln
//! lint` on a directory prints the same findings and exits 1 on errors, with the template's and
//! the flags' promises and skips. (The Debian example's build in boot.rs asserts it has no
//! finding.)

use crate::pipeline::{Tpl, assert_nothing_left, build, busybox};
use crate::support::{track_result, unique, with_janitor};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// The fake kernel's version.
const VERSION: &str = "6.1.0-kiln";

/// A bzImage's setup header: `HdrS` at 0x202, boot protocol 2.15, a 64-bit entry point.
fn bzimage() -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    b[0x236] = 1;
    b
}

/// Writes a kernel into `root` (a host directory copied into the image): its file, and a
/// modules directory with NVMe built in and ENA a module when `ena`.
fn fake_kernel(root: &Path, ena: bool) {
    let modules = root.join(format!("lib/modules/{VERSION}"));
    std::fs::create_dir_all(&modules).expect("modules");
    std::fs::create_dir_all(root.join("boot")).expect("boot");
    std::fs::write(root.join(format!("boot/vmlinuz-{VERSION}")), bzimage()).expect("kernel");
    std::fs::write(
        modules.join("modules.builtin"),
        "kernel/drivers/nvme/host/nvme.ko\nkernel/fs/ext4/ext4.ko\n",
    )
    .expect("builtin");
    let dep = if ena {
        "kernel/drivers/net/ethernet/amazon/ena/ena.ko:\n"
    } else {
        "kernel/drivers/net/virtio_net.ko:\n"
    };
    std::fs::write(modules.join("modules.dep"), dep).expect("dep");
}

/// The busybox template with `extra` source fields, whose setup copies host directory `root`'s
/// content into the image after busybox installs.
fn busybox_with(name: &str, extra: &str, root: &Path) -> String {
    busybox(name, extra, "").replace(
        "\"chroot {{.MountPath}} /bin/busybox --install -s\",",
        &format!(
            "\"chroot {{{{.MountPath}}}} /bin/busybox --install -s\",\n    \"cp -a {}/. {{{{.MountPath}}}}/\",",
            root.display()
        ),
    )
}

/// Builds and expects a failure at `lint-image` whose message names `check`, `file` and a fix,
/// with nothing snapshotted, registered or left behind.
async fn fails_at_lint(label: &str, extra: &str, root: &Path, check: &str, file: &str) {
    let t = Tpl::new();
    let id = unique("lint");
    let tpl = t.write("lint.pkr.hcl", &busybox_with(&unique("lint"), extra, root));
    let (ok, doc, stderr) = build(&tpl, &["--build-id".into(), id.clone()]);
    assert!(!ok, "{label}: the build should fail: {doc:#}");
    assert_eq!(
        doc["error"]["step"], "lint-image",
        "{label}: {doc:#}\n{stderr}"
    );
    let msg = doc["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("error [{check}] {file}:")) && msg.contains("fix:"),
        "{label}: {msg}"
    );
    let steps: Vec<&str> = doc["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        !steps.contains(&"snapshot") && !steps.contains(&"register-image"),
        "{label}: {steps:?}"
    );
    assert!(
        doc["artifacts"].as_object().is_none_or(|a| a.is_empty()),
        "{label}: {doc:#}"
    );
    assert_nothing_left(&id, &doc).await;
}

/// A host directory that removes itself, holding what a test copies into its image.
struct Files(std::path::PathBuf);
impl Files {
    fn new() -> Self {
        let d = std::env::temp_dir().join(unique("lint-files"));
        std::fs::create_dir_all(&d).expect("dir");
        Files(d)
    }
}
impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn ena_support_without_the_driver_fails_before_registration() {
    let f = Files::new();
    fake_kernel(&f.0, false);
    fails_at_lint(
        "ena",
        "ena_support = true",
        &f.0,
        "ena-driver",
        &format!("/lib/modules/{VERSION}/modules.dep"),
    )
    .await;
}

#[tokio::test]
async fn an_arm64_registration_of_x86_binaries_fails() {
    let f = Files::new();
    fails_at_lint(
        "arm64",
        "ami_architecture = \"arm64\"",
        &f.0,
        "init-architecture",
        "/sbin/init",
    )
    .await;
}

#[tokio::test]
async fn uefi_without_an_efi_binary_fails() {
    let f = Files::new();
    fake_kernel(&f.0, true);
    fails_at_lint(
        "uefi",
        "boot_mode = \"uefi\"",
        &f.0,
        "efi-binary",
        "/EFI/BOOT/BOOTX64.EFI",
    )
    .await;
}

#[tokio::test]
async fn an_fstab_naming_a_missing_uuid_fails() {
    let f = Files::new();
    fake_kernel(&f.0, true);
    std::fs::create_dir_all(f.0.join("etc")).expect("etc");
    std::fs::write(
        f.0.join("etc/fstab"),
        "LABEL=root / ext4 defaults 0 1\nUUID=0badc0de-0000-4000-8000-000000000000 /data ext4 defaults 0 2\n",
    )
    .expect("fstab");
    // The busybox disk boots with BIOS (no boot mode): a boot code stub in its MBR.
    let extra = "boot_mode = \"legacy-bios\"";
    let t = Tpl::new();
    let id = unique("lint");
    let mut text = busybox_with(&unique("lint"), extra, &f.0);
    text = text.replace(
        "\"mkfs.ext4 -q -L root {{.Device}}1\",",
        "\"mkfs.ext4 -q -L root {{.Device}}1\",\n    \"printf '\\\\353\\\\143\\\\220 kiln test boot code' | dd of={{.Device}} conv=notrunc status=none\",",
    );
    let tpl = t.write("lint.pkr.hcl", &text);
    let (ok, doc, stderr) = build(&tpl, &["--build-id".into(), id.clone()]);
    assert!(!ok, "{doc:#}");
    assert_eq!(doc["error"]["step"], "lint-image", "{doc:#}\n{stderr}");
    let msg = doc["error"]["message"].as_str().unwrap_or_default();
    // Exactly one error: the UUID; the label, the kernel and the MBR are fine.
    assert_eq!(msg.matches("error [").count(), 1, "{msg}");
    assert!(
        msg.contains("error [fstab-device] /etc/fstab: line 2: UUID=0badc0de"),
        "{msg}"
    );
    assert!(msg.contains("LABEL=root") || msg.contains("UUID="), "{msg}");
    assert_nothing_left(&id, &doc).await;
}

/// The lint step's outputs in a result document.
fn lint_outputs(doc: &Value) -> Value {
    doc["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "lint-image")
        .map(|s| s["outputs"].clone())
        .unwrap_or_else(|| panic!("no lint-image step: {doc:#}"))
}

#[tokio::test]
async fn imds_v2_without_cloud_init_is_a_warning_in_the_result() {
    with_janitor(|janitor| async move {
        let f = Files::new();
        fake_kernel(&f.0, true);
        let t = Tpl::new();
        let extra = "imds_support = \"v2.0\"\n  ena_support = true\n  boot_mode = \"legacy-bios\"\n  lint { skip = [\"bios-loader\"] }";
        let tpl = t.write(
            "imds.pkr.hcl",
            &busybox_with(&unique("lint-imds"), extra, &f.0),
        );
        let (ok, doc, stderr) = build(&tpl, &[]);
        track_result(&janitor, &doc);
        assert!(ok, "{doc:#}\n{stderr}");
        let out = lint_outputs(&doc);
        let findings = out["findings"].as_array().expect("findings");
        assert_eq!(findings.len(), 1, "{out:#}");
        assert_eq!(findings[0]["check"], "imds-client");
        assert_eq!(findings[0]["severity"], "warning");
        assert_eq!(findings[0]["file"], "/usr/bin/cloud-init");
        assert!(
            findings[0]["fix"]
                .as_str()
                .is_some_and(|f| f.contains("cloud-init"))
        );
        // Result readers get them through the library too.
        let result: kiln::pipeline::BuildResult =
            serde_json::from_value(doc.clone()).expect("a result document");
        let warnings = result.lint_findings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].severity, kiln::lint::Severity::Warning);
        // The skipped check is listed, not silently passed.
        assert!(
            out["not_checked"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["check"] == "bios-loader"),
            "{out:#}"
        );
    })
    .await;
}

/// `kiln lint` with `args`: (exit success, stdout).
fn kiln_lint(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("lint")
        .args(args)
        .output()
        .expect("run kiln lint");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn kiln_lint_on_a_directory() {
    let f = Files::new();
    let root = f.0.join("root");
    fake_kernel(&root, false);
    std::fs::create_dir_all(root.join("sbin")).expect("sbin");
    std::fs::copy("/bin/busybox", root.join("sbin/init")).expect("busybox");
    let r = root.to_str().expect("utf-8");
    // A sound tree for plain x86_64: only the checks without a disk are not run.
    let (ok, out) = kiln_lint(&[r]);
    assert!(ok, "{out}");
    assert!(out.contains("0 error(s), 0 warning(s)"), "{out}");
    // ENA promised by a flag: an error naming the file, exit 1; JSON says the same.
    let (ok, out) = kiln_lint(&["--ena", r]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "error [ena-driver] /lib/modules/{VERSION}/modules.dep:"
        )),
        "{out}"
    );
    let (ok, out) = kiln_lint(&[
        "--ena",
        "--arch",
        "arm64",
        "--imds-support",
        "v2.0",
        "--json",
        r,
    ]);
    assert!(!ok);
    let v: Value = serde_json::from_str(&out).expect("json");
    let checks: Vec<&str> = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["check"].as_str())
        .collect();
    assert_eq!(
        checks,
        [
            "init-architecture",
            "kernel-architecture",
            "ena-driver",
            "imds-client"
        ],
        "{v:#}"
    );
    assert_eq!(v["errors"], 3);
    assert_eq!(v["warnings"], 1);
    // The promises from a template, with its lint block's skip; --skip adds to it.
    let tpl = f.0.join("t.pkr.hcl");
    std::fs::write(
        &tpl,
        "source \"amazon-chroot\" \"x\" {\n  from_scratch = true\n  ami_name = \"lint-x\"\n  ami_virtualization_type = \"hvm\"\n  root_volume_size = 1\n  ena_support = true\n  imds_support = \"v2.0\"\n  pre_mount_commands = [\"true\"]\n  root_device_name = \"/dev/xvda\"\n  ami_block_device_mappings {\n    device_name = \"/dev/xvda\"\n    volume_type = \"gp3\"\n  }\n  lint { skip = [\"ena-driver\"] }\n}\nbuild { sources = [\"source.amazon-chroot.x\"] }\n",
    )
    .expect("template");
    let t = tpl.to_str().expect("utf-8");
    let (ok, out) = kiln_lint(&["--template", t, r]);
    assert!(ok, "{out}");
    assert!(out.contains("warning [imds-client]"), "{out}");
    assert!(out.contains("not checked [ena-driver]: skipped"), "{out}");
    let (ok, out) = kiln_lint(&["--template", t, "--skip", "imds-client", r]);
    assert!(ok && out.contains("0 error(s), 0 warning(s)"), "{out}");
    // An unknown check is refused, naming the checks.
    let (ok, out) = kiln_lint(&["--skip", "nope", r]);
    assert!(!ok && out.contains("unknown lint check \"nope\""), "{out}");
    // ... in a template too, where kiln validate says so.
    let text = std::fs::read_to_string(&tpl).expect("read");
    std::fs::write(&tpl, text.replace("[\"ena-driver\"]", "[\"nope\"]")).expect("write");
    let (ok, out) = kiln_lint(&["--template", t, r]);
    assert!(!ok && out.contains("unknown lint check \"nope\""), "{out}");
    let v = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["validate", t])
        .output()
        .expect("kiln validate");
    assert!(!v.status.success());
    assert!(
        String::from_utf8_lossy(&v.stderr).contains("lint.skip"),
        "{v:?}"
    );
}
