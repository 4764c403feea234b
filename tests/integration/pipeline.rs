//! `kiln build` end to end on the emulator with the ebs backend, as root: real attachments (the
//! emulator's loop devices with Xen or Nitro nodes),
//! partitions, filesystems, mounts and chroots. Each test checks what was built (files in the
//! snapshot, the AMI's mappings, tags, permissions, copies) and that nothing is left behind.

use crate::support::{
    Emulator, assert_volume_gone_from_host, host_env, repo_root, result_snapshot_data, tagged,
    track_result, unique, with_janitor,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The second region builds are copied to.
const COPY_REGION: &str = "us-west-2";

/// `kiln build --json` of `template` on the ebs backend against the emulator: on its default
/// host (Nitro naming), or on this process's Xen or Nitro host when `extra` holds
/// `--device-naming xen|nitro`; `extra` may name another `--backend` (the boot test's `qemu`
/// method needs `loop`'s local data).
pub(crate) fn kiln_command(template: &Path, extra: &[String]) -> Command {
    let emu = Emulator::get();
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.arg("build").arg("--json");
    if !extra.iter().any(|a| a == "--backend") {
        c.args(["--backend", "ebs"]);
    }
    c.args(extra).arg(template);
    for (k, v) in &emu.vars {
        c.env(k, v);
    }
    if let Some(naming) = extra
        .iter()
        .position(|a| a == "--device-naming")
        .and_then(|i| extra.get(i + 1))
    {
        for (k, v) in host_env(naming) {
            c.env(k, v);
        }
    }
    c.env("RUST_LOG", "kiln=info");
    // SBOMs of the tests' builds: one directory for this test process, not the machine's
    // /var/lib/kiln (a test that reads them back passes its own --sbom-dir).
    c.env("KILN_SBOM_DIR", test_sbom_dir());
    c.current_dir(template.parent().unwrap_or(Path::new(".")));
    c
}

/// Where `kiln build` writes the SBOMs of this test process's builds (see [`kiln_command`]).
pub(crate) fn test_sbom_dir() -> PathBuf {
    std::env::temp_dir().join(format!("kiln-test-sbom-{}", std::process::id()))
}

/// Runs `kiln build` and returns its output as it is (for builds that stop before a result).
pub(crate) fn build_output(template: &Path, extra: &[String]) -> std::process::Output {
    kiln_command(template, extra)
        .output()
        .expect("run kiln build")
}

/// Runs `kiln build`; returns (success, result document, stderr).
pub(crate) fn build(template: &Path, extra: &[String]) -> (bool, Value, String) {
    build_env(template, extra, &[])
}

/// [`build`] with extra environment for `kiln build`.
pub(crate) fn build_env(
    template: &Path,
    extra: &[String],
    env: &[(&str, String)],
) -> (bool, Value, String) {
    let mut c = kiln_command(template, extra);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run kiln build");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kiln build printed no result ({e}); stderr:\n{stderr}"));
    (out.status.success(), doc, stderr)
}

/// A template directory with the busybox base template (HCL) and its files.
pub(crate) struct Tpl(pub(crate) PathBuf);

impl Tpl {
    pub(crate) fn new() -> Self {
        let d = std::env::temp_dir().join(unique("pipeline"));
        std::fs::create_dir_all(d.join("files")).expect("template dir");
        Tpl(d)
    }
    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for Tpl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The busybox from-scratch source block with `extra` fields and a build with `provisioners`.
pub(crate) fn busybox(name: &str, extra: &str, provisioners: &str) -> String {
    let text = busybox_text(name, extra, provisioners);
    // HCL forbids an attribute twice: `extra` replaces the defaults it sets again.
    text.lines()
        .filter(|l| {
            let t = l.trim_start();
            let default_copy = t.starts_with("copy_files              = []");
            let default_mounts =
                t.starts_with("chroot_mounts = [[\"proc\", \"proc\", \"/proc\"], [\"sysfs\"");
            !(default_copy && extra.contains("copy_files")
                || default_mounts && extra.contains("chroot_mounts"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn busybox_text(name: &str, extra: &str, provisioners: &str) -> String {
    format!(
        r#"
source "amazon-chroot" "bb" {{
  from_scratch            = true
  ami_name                = "{name}"
  ami_virtualization_type = "hvm"
  root_device_name        = "/dev/xvda"
  root_volume_size        = 1
  copy_files              = []
  ami_block_device_mappings {{
    device_name           = "/dev/xvda"
    volume_type           = "gp3"
    delete_on_termination = true
  }}
  pre_mount_commands = [
    "sfdisk --quiet {{{{.Device}}}} <<'PARTS'\nlabel: gpt\n,,L\nPARTS",
    "mkfs.ext4 -q -L root {{{{.Device}}}}1",
  ]
  post_mount_commands = [
    "mkdir -p {{{{.MountPath}}}}/bin {{{{.MountPath}}}}/etc {{{{.MountPath}}}}/tmp {{{{.MountPath}}}}/proc {{{{.MountPath}}}}/sys {{{{.MountPath}}}}/dev {{{{.MountPath}}}}/usr/bin {{{{.MountPath}}}}/sbin {{{{.MountPath}}}}/usr/sbin",
    "cp /bin/busybox {{{{.MountPath}}}}/bin/busybox",
    "chroot {{{{.MountPath}}}} /bin/busybox --install -s",
  ]
  chroot_mounts = [["proc", "proc", "/proc"], ["sysfs", "sysfs", "/sys"], ["bind", "/dev", "/dev"]]
  {extra}
}}
build {{
  sources = ["source.amazon-chroot.bb"]
  {provisioners}
}}
"#
    )
}

/// Builds a busybox base image (named `unique(prefix)`) whose setup runs `commands` right after
/// busybox installs its links; panics when the build fails. Returns (AMI id, result document).
pub(crate) fn busybox_base(t: &Tpl, prefix: &str, commands: &[String]) -> (String, Value) {
    let mut text = busybox(&unique(prefix), "", "");
    text = text.replace(
        "\"chroot {{.MountPath}} /bin/busybox --install -s\",",
        &format!(
            "\"chroot {{{{.MountPath}}}} /bin/busybox --install -s\",\n{}",
            commands
                .iter()
                .map(|l| format!("    {},", serde_json::to_string(l).expect("json")))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    );
    let tpl = t.write("base.pkr.hcl", &text);
    let (ok, doc, stderr) = build(&tpl, &[]);
    assert!(ok, "base build failed: {}\n{doc:#}\n{stderr}", doc["error"]);
    let ami = doc["artifacts"][Emulator::get().region()]["ami_id"]
        .as_str()
        .expect("ami")
        .to_owned();
    (ami, doc)
}

/// Runs `losetup ARGS FILE` (with `--show` among `args`) and returns the loop device it printed;
/// panics when losetup fails.
pub(crate) fn losetup_show(args: &[&str], file: &Path) -> String {
    let out = Command::new("losetup")
        .args(args)
        .arg(file)
        .output()
        .expect("losetup");
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// How often `with_snapshot` tries to mount a snapshot's partition.
const SNAPSHOT_MOUNT_TRIES: u32 = 10;

/// Mounts the first partition of a snapshot file read-only, runs `f` on the mount point, and
/// undoes the mount and the loop device.
pub(crate) fn with_snapshot<T>(file: &Path, f: impl FnOnce(&Path) -> T) -> T {
    with_snapshot_partition(file, 1, f)
}

/// [`with_snapshot`] on partition `part`.
pub(crate) fn with_snapshot_partition<T>(file: &Path, part: u32, f: impl FnOnce(&Path) -> T) -> T {
    let mnt = std::env::temp_dir().join(unique("inspect"));
    std::fs::create_dir_all(&mnt).expect("mnt");
    let dev = losetup_show(&["-f", "-P", "-r", "--show"], file);
    let _ = Command::new("partx").args(["-u", &dev]).status();
    // The partition's node may appear a moment after the table is read (udev-less hosts, a busy
    // machine): a few tries, bounded.
    let mut ok = false;
    for _ in 0..SNAPSHOT_MOUNT_TRIES {
        ok = Command::new("mount")
            .args(["-o", "ro", &format!("{dev}p{part}")])
            .arg(&mnt)
            .status()
            .expect("mount")
            .success();
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("partx").args(["-u", &dev]).status();
    }
    let result = ok.then(|| f(&mnt));
    if ok {
        let _ = Command::new("umount").arg(&mnt).status();
    }
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    let _ = std::fs::remove_dir(&mnt);
    result.unwrap_or_else(|| panic!("could not mount {dev}p{part} of {}", file.display()))
}

/// Reads files from the first partition of the build's own snapshot (the emulator's data of the
/// first snapshot of its region in the result document `doc`).
pub(crate) fn read_from_result(doc: &Value, paths: &[&str]) -> Vec<Option<String>> {
    read_from_snapshot(&result_snapshot_data(doc, Emulator::get().region()), paths)
}

/// Reads files from the first partition of a snapshot file.
pub(crate) fn read_from_snapshot(file: &Path, paths: &[&str]) -> Vec<Option<String>> {
    with_snapshot(file, |mnt| {
        paths
            .iter()
            .map(|p| std::fs::read_to_string(mnt.join(p.trim_start_matches('/'))).ok())
            .collect()
    })
}

/// Asserts nothing of build `id` remains: no volume, snapshot or image in either region, no mount
/// at its mount path, no loop device on its volume file.
pub(crate) async fn assert_nothing_left(id: &str, doc: &Value) {
    let emu = Emulator::get();
    for region in [emu.region(), COPY_REGION] {
        let left = tagged(region, id).await;
        assert!(
            left.volumes.is_empty(),
            "{id}: volumes left in {region}: {:?}",
            left.volumes
        );
        assert!(
            left.snapshots.is_empty(),
            "{id}: snapshots left in {region}: {:?}",
            left.snapshots
        );
        assert!(
            left.images.is_empty(),
            "{id}: images left in {region}: {:?}",
            left.images
        );
    }
    // A mount of the build's volume left anywhere keeps its loop device attached to the volume's
    // file, which the volume check below sees. (Not by mount path: another build running at
    // the same time may take the device letter, and with it the path, as soon as this one ends.)
    for step in doc["steps"].as_array().into_iter().flatten() {
        if let Some(vol) = step["outputs"]["volume_id"].as_str() {
            assert_volume_gone_from_host(id, vol);
        }
    }
}

#[tokio::test]
async fn busybox_from_scratch_then_application_image() {
    from_scratch_then_application_image("nitro").await;
}

/// The same on a Xen host (`/dev/sdf` and `/dev/sdf1` as the attachment asked).
#[tokio::test]
async fn busybox_from_scratch_then_application_image_on_xen() {
    from_scratch_then_application_image("xen").await;
}

async fn from_scratch_then_application_image(naming: &'static str) {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let t = Tpl::new();
        std::fs::write(t.0.join("files/issue"), "kiln test issue\n").expect("issue");
        let name = unique("busybox");
        let id = unique("bb-build");
        let tpl = t.write(
            "bb.pkr.hcl",
            &busybox(
                &name,
                &format!(
                    r#"ami_regions = ["{COPY_REGION}"]
  ami_users = ["111122223333"]
  tags = {{ Name = "kiln-busybox", Source = "scratch-{{{{.BuildRegion}}}}" }}"#
                ),
                r#"provisioner "shell" { inline = ["echo 'hello from kiln' > /etc/motd"] }
  provisioner "file" {
    source      = "files/issue"
    destination = "/etc/issue"
  }"#,
            ),
        );
        let on = ["--device-naming".to_owned(), naming.to_owned()];
        let (ok, doc, stderr) = build(
            &tpl,
            &[&["--build-id".into(), id.clone()][..], &on].concat(),
        );
        track_result(&janitor, &doc);
        assert!(
            ok,
            "busybox build failed: {}\n{doc:#}\n{stderr}",
            doc["error"]
        );
        assert_eq!(doc["status"], "succeeded");
        assert_eq!(doc["build_id"], id.as_str());
        // The volume was found under the host's naming: by its id on Nitro, by the letter on Xen.
        let attach = doc["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "attach-volume"))
            .map(|s| s["outputs"].clone())
            .expect("attach-volume ran");
        let node = Path::new(attach["block_device"].as_str().unwrap_or_default())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let expected = match naming {
            "xen" => attach["attached_as"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("/dev/")
                .to_owned(),
            _ => "nvme1n1".to_owned(),
        };
        assert!(
            node == expected
                || (naming == "nitro" && node.starts_with("nvme") && node.ends_with("n1")),
            "{naming}: the volume's node is {node} ({attach})"
        );
        let region = emu.region().to_owned();
        let art = &doc["artifacts"][&region];
        let ami = art["ami_id"].as_str().expect("ami id").to_owned();
        let snap = art["snapshot_ids"][0]
            .as_str()
            .expect("snapshot")
            .to_owned();
        let file = result_snapshot_data(&doc, &region);
        // The files the provisioners wrote are in the snapshot.
        let got = read_from_snapshot(&file, &["/etc/motd", "/etc/issue"]);
        assert_eq!(got[0].as_deref(), Some("hello from kiln\n"));
        assert_eq!(got[1].as_deref(), Some("kiln test issue\n"));
        // The AMI maps its root to the new snapshot, carries its tags and launch permissions.
        let ec2 = emu.clients(&region).await.ec2;
        let image = ec2
            .describe_images()
            .image_ids(&ami)
            .send()
            .await
            .expect("DescribeImages")
            .images
            .unwrap_or_default()
            .pop()
            .expect("image");
        assert_eq!(image.root_device_name(), Some("/dev/xvda"));
        let root = image
            .block_device_mappings()
            .iter()
            .find(|m| m.device_name() == Some("/dev/xvda"))
            .and_then(|m| m.ebs())
            .expect("root mapping");
        assert_eq!(root.snapshot_id(), Some(snap.as_str()));
        assert_eq!(root.volume_size(), Some(1));
        assert_eq!(image.virtualization_type().map(|v| v.as_str()), Some("hvm"));
        let tag = |k: &str| {
            image
                .tags()
                .iter()
                .find(|t| t.key() == Some(k))
                .and_then(|t| t.value())
                .map(str::to_owned)
        };
        assert_eq!(tag("Name").as_deref(), Some("kiln-busybox"));
        assert_eq!(tag("Source"), Some(format!("scratch-{region}")));
        assert_eq!(tag("kiln:build-id"), Some(id.clone()));
        let perms = ec2
            .describe_image_attribute()
            .image_id(&ami)
            .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
            .send()
            .await
            .expect("DescribeImageAttribute");
        assert!(
            perms
                .launch_permissions()
                .iter()
                .any(|p| p.user_id() == Some("111122223333")),
            "{perms:?}"
        );
        // Copied to the second region, with its own snapshot.
        let copy = doc["artifacts"][COPY_REGION]["ami_id"]
            .as_str()
            .expect("copy in the second region")
            .to_owned();
        let west = emu.clients(COPY_REGION).await.ec2;
        let copy_img = west
            .describe_images()
            .image_ids(&copy)
            .send()
            .await
            .expect("DescribeImages west")
            .images
            .unwrap_or_default()
            .pop()
            .expect("copy");
        assert_eq!(copy_img.name(), Some(name.as_str()));
        assert!(
            !doc["artifacts"][COPY_REGION]["snapshot_ids"][0]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
        // No volume left.
        let vols = tagged(emu.region(), &id).await.volumes;
        assert!(vols.is_empty(), "{vols:?}");

        // The application image on top, from the JSON example template.
        let app_id = unique("app-build");
        let app_tpl = repo_root().join("templates/app.json");
        // The template names its AMI `kiln-app-<version>-<timestamp>`: the Xen and Nitro runs of
        // this test build it in the same second, so each gets its own version.
        let version = format!("2.5.0-{naming}{}", std::process::id());
        let (ok, app, stderr) = build(
            &app_tpl,
            &[
                "--device-naming".into(),
                naming.into(),
                "--build-id".into(),
                app_id.clone(),
                "--var".into(),
                format!("source_ami={ami}"),
                "--var".into(),
                "api_token=t0ps3cret".into(),
                "--var".into(),
                format!("app_version={version}"),
            ],
        );
        track_result(&janitor, &app);
        assert!(ok, "app build failed: {}\n{app:#}\n{stderr}", app["error"]);
        assert!(
            !stderr.contains("t0ps3cret"),
            "the sensitive variable leaked into the log"
        );
        assert_eq!(app["source_ami"], ami.as_str());
        let app_file = result_snapshot_data(&app, &region);
        let got = read_from_snapshot(
            &app_file,
            &[
                "/opt/app/VERSION",
                "/opt/app/app.sh",
                "/etc/app.conf",
                "/etc/motd",
            ],
        );
        assert_eq!(got[0].as_deref(), Some(format!("{version}\n").as_str()));
        assert!(
            got[1]
                .as_deref()
                .is_some_and(|s| s.contains("kiln example app"))
        );
        assert_eq!(got[2].as_deref(), Some("token=t0ps3cret\n"));
        assert_eq!(
            got[3].as_deref(),
            Some("hello from kiln\n"),
            "the base image's files are there"
        );
    })
    .await;
}

/// Failure at each step in turn: the error names the step and why, and nothing remains.
#[tokio::test]
async fn failures_at_each_step_leave_nothing_behind() {
    let t = Tpl::new();
    // (label, extra source fields, provisioners, expected failing step, expected message part)
    let cases: Vec<(&str, String, String, &str, &str)> = vec![
        (
            "provisioner exits 1",
            String::new(),
            r#"provisioner "shell" { inline = ["echo about to fail", "exit 1"] }"#.into(),
            "provision",
            "exit code 1",
        ),
        (
            "bad mount option",
            r#"mount_options = ["nosuchoption"]"#.into(),
            String::new(),
            "mount-device",
            "mount",
        ),
        (
            "process left running, then a failure",
            String::new(),
            r#"provisioner "shell" { inline = ["sleep 600 > /dev/null 2>&1 &", "echo started"] }
  provisioner "shell" { inline = ["exit 7"] }"#
                .into(),
            "provision",
            "exit code 7",
        ),
        (
            "API error at registration",
            r#"ami_block_device_mappings {
    device_name = "/dev/xvdb"
    snapshot_id = "snap-00000000000000000"
  }"#
            .into(),
            String::new(),
            "register-image",
            "InvalidSnapshot",
        ),
        (
            "bad pre-mount command",
            r#"pre_mount_commands = ["false"]"#.into(),
            String::new(),
            "pre-mount-commands",
            "pre_mount_commands[0] failed",
        ),
    ];
    for (label, extra, provs, step, message) in cases {
        let id = unique("fail");
        let mut text = busybox(&unique("failing"), &extra, &provs);
        if extra.starts_with("pre_mount_commands") {
            // Replace the template's own pre-mount commands with the failing one.
            let start = text.find("  pre_mount_commands = [").expect("pre");
            let end = text[start..].find("  ]\n").expect("end") + start + 4;
            text.replace_range(start..end, "");
        }
        let tpl = t.write("fail.pkr.hcl", &text);
        let (ok, doc, stderr) = build(&tpl, &["--build-id".into(), id.clone()]);
        assert!(!ok, "{label}: the build should fail: {doc:#}");
        assert_eq!(doc["status"], "failed", "{label}");
        assert_eq!(doc["error"]["step"], step, "{label}: {doc:#}\n{stderr}");
        let msg = doc["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(message), "{label}: {msg}");
        assert!(doc.get("left_behind").is_none(), "{label}: {doc:#}");
        assert_nothing_left(&id, &doc).await;
    }
    // The process left running was killed.
    let out = Command::new("pgrep")
        .args(["-f", "^sleep 600$"])
        .output()
        .expect("pgrep");
    assert!(
        out.stdout.is_empty(),
        "a chroot process survived: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A process left running by a provisioner is killed (it dies with the sandbox's PID namespace
/// when its command ends, or with the build's cgroup after the step), and the build succeeds.
#[tokio::test]
async fn a_process_left_running_is_killed_and_the_build_succeeds() {
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        let id = unique("bg");
        let tpl = t.write("bg.pkr.hcl", &busybox(&unique("bg"), "", r#"provisioner "shell" { inline = ["sleep 601 > /dev/null 2>&1 &", "echo left a sleeper"] }"#));
        let (ok, doc, stderr) = build(&tpl, &["--build-id".into(), id.clone()]);
        track_result(&janitor, &doc);
        assert!(ok, "{doc:#}\n{stderr}");
        let out = Command::new("pgrep").args(["-f", "^sleep 601$"]).output().expect("pgrep");
        assert!(out.stdout.is_empty());
    })
    .await;
}

/// SIGTERM during a provisioner: the build is cancelled, undone, and says so.
#[tokio::test]
async fn cancellation_by_signal_cleans_up() {
    let t = Tpl::new();
    let id = unique("cancel");
    let tpl = t.write(
        "c.pkr.hcl",
        &busybox(
            &unique("cancel"),
            "",
            r#"provisioner "shell" { inline = ["echo waiting-for-signal", "sleep 120"] }"#,
        ),
    );
    let (out, took) = build_then_sigterm(&tpl, &["--build-id".into(), id.clone()], |l| {
        l.contains("waiting-for-signal")
    });
    assert!(took < Duration::from_secs(60), "cancellation took too long");
    assert!(!out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).expect("result JSON");
    assert_eq!(doc["error"]["step"], "provision");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cancelled"),
        "{doc:#}"
    );
    assert_eq!(doc["error"]["retryable"], true);
    assert_nothing_left(&id, &doc).await;
}

/// Runs `kiln build`, sends SIGTERM once a stderr line satisfies `ready` (within 120 s), and
/// returns its output and how long it took to stop after the signal.
pub(crate) fn build_then_sigterm(
    template: &Path,
    extra: &[String],
    ready: impl Fn(&str) -> bool + Send + 'static,
) -> (std::process::Output, Duration) {
    let mut child = kiln_command(template, extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if ready(&line) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the build reached the point to signal it");
    let signalled = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let out = child.wait_with_output().expect("wait");
    (out, signalled.elapsed())
}

/// Four builds at once on one Nitro host get distinct devices and all succeed.
#[tokio::test]
async fn four_builds_at_once_get_distinct_devices() {
    four_builds_at_once("nitro").await;
}

/// The same on a Xen host, where the device letter is the node's name.
#[tokio::test]
async fn four_builds_at_once_on_xen_get_distinct_devices() {
    four_builds_at_once("xen").await;
}

async fn four_builds_at_once(naming: &'static str) {
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        let mut children = Vec::new();
        for i in 0..4 {
            let tpl = t.write(
                &format!("p{i}.pkr.hcl"),
                &busybox(
                    &unique("parallel"),
                    "",
                    &format!(r#"provisioner "shell" {{ inline = ["echo {i} > /etc/which"] }}"#),
                ),
            );
            let id = unique("par");
            children.push((
                id.clone(),
                kiln_command(
                    &tpl,
                    &[
                        "--build-id".into(),
                        id,
                        "--device-naming".into(),
                        naming.into(),
                    ],
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn"),
            ));
        }
        let mut devices = std::collections::BTreeSet::new();
        for (i, (id, child)) in children.into_iter().enumerate() {
            let out = child.wait_with_output().expect("wait");
            let doc: Value = serde_json::from_slice(&out.stdout).expect("result");
            track_result(&janitor, &doc);
            assert!(
                out.status.success(),
                "build {i} ({id}) failed: {doc:#}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let dev = doc["steps"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == "allocate-device"))
                .map(|s| s["outputs"]["device"].clone())
                .expect("device");
            devices.insert(dev.to_string());
            let file = result_snapshot_data(&doc, Emulator::get().region());
            assert_eq!(
                read_from_snapshot(&file, &["/etc/which"])[0].as_deref(),
                Some(format!("{i}\n").as_str())
            );
        }
        assert_eq!(devices.len(), 4, "distinct devices: {devices:?}");
    })
    .await;
}

/// copy_files onto a symlink restores the link; a relative bind mount resolves against the
/// template's directory; shell-local runs on the host with the mount path; file download works.
#[tokio::test]
async fn copy_files_bind_mounts_shell_local_and_download() {
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        std::fs::write(t.0.join("files/data.txt"), "bound from the template dir\n").expect("data");
        let host_copy = std::env::temp_dir().join(unique("copyfile"));
        std::fs::write(&host_copy, "copied for the build\n").expect("copy file");
        let local_out = t.0.join("local-out.txt");
        let downloaded = t.0.join("motd-downloaded");
        let rel = host_copy.display().to_string();
        let extra = format!(
            r#"copy_files = ["{rel}"]
  chroot_mounts = [["proc", "proc", "/proc"], ["bind", "files", "/mnt/files"]]"#
        );
        let provs = format!(
            r#"provisioner "shell" {{ inline = ["cat {rel} > /etc/seen-copy", "cat /mnt/files/data.txt > /etc/from-bind", "echo motd > /etc/motd"] }}
  provisioner "shell-local" {{ inline = ["echo {{{{.MountPath}}}} > {out}", "echo from-host > {{{{.MountPath}}}}/etc/from-local"] }}
  provisioner "file" {{
    direction   = "download"
    source      = "/etc/motd"
    destination = "{dl}"
  }}"#,
            out = local_out.display(),
            dl = downloaded.display()
        );
        let mut text = busybox(&unique("features"), &extra, &provs);
        // The image ships the copied path as a symlink, as systemd images ship /etc/resolv.conf.
        text = text.replace(
            "\"chroot {{.MountPath}} /bin/busybox --install -s\",",
            &format!("\"chroot {{{{.MountPath}}}} /bin/busybox --install -s\",\n    \"mkdir -p $(dirname {{{{.MountPath}}}}{rel}) && ln -s /run/original-target {{{{.MountPath}}}}{rel}\","),
        );
        let tpl = t.write("features.pkr.hcl", &text);
        let (ok, doc, stderr) = build(&tpl, &[]);
        track_result(&janitor, &doc);
        let _ = std::fs::remove_file(&host_copy);
        assert!(ok, "{}\n{doc:#}\n{stderr}", doc["error"]);
        let file = result_snapshot_data(&doc, Emulator::get().region());
        let got = read_from_snapshot(&file, &["/etc/seen-copy", "/etc/from-bind", "/etc/from-local"]);
        assert_eq!(got[0].as_deref(), Some("copied for the build\n"), "the copy was there during the build");
        assert_eq!(got[1].as_deref(), Some("bound from the template dir\n"));
        assert_eq!(got[2].as_deref(), Some("from-host\n"));
        let link = read_link_from_snapshot(&file, &rel);
        assert_eq!(link.as_deref(), Some(Path::new("/run/original-target")), "the symlink was restored");
        let mount_path = std::fs::read_to_string(&local_out).expect("shell-local output");
        assert!(mount_path.trim().starts_with("/mnt/packer-amazon-chroot-volumes/"), "{mount_path}");
        assert_eq!(std::fs::read_to_string(&downloaded).ok().as_deref(), Some("motd\n"));
    })
    .await;
}

/// The target of a symlink in the first partition of a snapshot file.
fn read_link_from_snapshot(file: &Path, path: &str) -> Option<PathBuf> {
    with_snapshot(file, |mnt| {
        std::fs::read_link(mnt.join(path.trim_start_matches('/'))).ok()
    })
}
