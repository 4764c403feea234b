//! Host paths (issue 20): an image's own content and a template's host-path fields cannot steer
//! kiln's own file operations onto the host. A base image with hostile content (a block device
//! node naming a loop device of this test, a character device node, a FIFO, a setuid file) is
//! built first; builds from it upload onto those nodes (refused, promptly, the device untouched),
//! download the setuid file (bits dropped) and check during the build that the image is mounted
//! `nodev,nosuid`. Templates whose `device_path` climbs out of `/dev`, or whose `mount_path` is
//! taken by someone else's mount, are refused without touching the host files or that mount.

use crate::pipeline::{
    Tpl, assert_nothing_left, build, build_output, busybox, busybox_base, losetup_show,
};
use crate::support::{Emulator, Resource, tagged, track_result, unique, with_janitor};
use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a build that must fail at once (a FIFO at an upload destination) may take; kiln
/// before the fix waited for a reader forever.
const PROMPT: Duration = Duration::from_secs(180);

/// A loop device over a file full of one byte: what a device node in the image names. Detached
/// and removed when dropped.
struct HostDisk {
    file: PathBuf,
    dev: String,
    rdev: (u64, u64),
}

const DISK_BYTE: u8 = b'K';
const DISK_SIZE: usize = 1 << 20;

impl HostDisk {
    fn new() -> Self {
        let file = PathBuf::from("/var/tmp").join(format!("{}.img", unique("hp-disk")));
        std::fs::write(&file, vec![DISK_BYTE; DISK_SIZE]).expect("disk file");
        let dev = losetup_show(&["-f", "--show"], &file);
        let rdev = std::fs::metadata(&dev).expect("loop device").rdev();
        let rdev = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        HostDisk { file, dev, rdev }
    }

    /// The file's content is still only the byte it was filled with (read through the device).
    fn assert_untouched(&self) {
        let data = std::fs::read(&self.dev).expect("read the loop device");
        assert_eq!(data.len(), DISK_SIZE, "{}", self.dev);
        assert!(
            data.iter().all(|b| *b == DISK_BYTE),
            "the host device {} was written",
            self.dev
        );
        let data = std::fs::read(&self.file).expect("read the disk file");
        assert!(
            data.iter().all(|b| *b == DISK_BYTE),
            "the disk file was written"
        );
    }
}

impl Drop for HostDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Builds the hostile base image: busybox with device nodes, a FIFO and a setuid file.
fn base_image(t: &Tpl, disk: &HostDisk) -> (String, Value) {
    let (maj, min) = disk.rdev;
    let hostile = [
        format!("mknod {{{{.MountPath}}}}/etc/disk b {maj} {min}"),
        "ln -s /etc/disk {{.MountPath}}/etc/disk-link".to_owned(),
        "mknod {{.MountPath}}/etc/null c 1 3".to_owned(),
        "mkfifo {{.MountPath}}/etc/fifo".to_owned(),
        "printf suid > {{.MountPath}}/etc/suid-file && chmod 6755 {{.MountPath}}/etc/suid-file"
            .to_owned(),
    ];
    busybox_base(t, "hp-base", &hostile)
}

/// [`crate::host_safety::from_base`] without the default `copy_files` (the nodes are the test).
fn from_base(ami: &str, name: &str, extra: &str, provisioners: &str) -> String {
    crate::host_safety::from_base(
        ami,
        name,
        &format!("copy_files = []\n  {extra}"),
        provisioners,
    )
}

/// Runs `kiln build --build-id ID` on `tpl` for at most [`PROMPT`]. Returns (success, result
/// document, stderr, time taken), or panics (after SIGTERM, then SIGKILL, and cleaning what the
/// killed build left on this host) when the build does not end in time.
async fn build_within(
    tpl: &Path,
    id: &str,
    janitor: &crate::support::Janitor,
) -> (bool, Value, String, Duration) {
    let emu = Emulator::get();
    let dir = tpl.parent().expect("template dir");
    let (out, err) = (dir.join(format!("{id}.out")), dir.join(format!("{id}.err")));
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(["build", "--backend", "ebs", "--json", "--build-id", id])
        .arg(tpl)
        .current_dir(dir)
        .env("RUST_LOG", "kiln=info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"));
    for (k, v) in &emu.vars {
        c.env(k, v);
    }
    let started = Instant::now();
    let mut child = c.spawn().expect("run kiln build");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if started.elapsed() > PROMPT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = started.elapsed();
    let Some(status) = status else {
        // Hung: SIGTERM must end it; if not, SIGKILL, then clean up what it left.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        let mut ended = false;
        while t.elapsed() < Duration::from_secs(30) {
            if child.try_wait().expect("wait").is_some() {
                ended = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !ended {
            let _ = child.kill();
            let _ = child.wait();
            kiln::worker::sweep_host(Path::new(kiln::host::lock::LOCK_DIR)).await;
        }
        for v in tagged(emu.region(), id).await.volumes {
            if let Some(v) = v.volume_id() {
                janitor.track(emu.region(), Resource::Volume(v.to_owned()));
            }
        }
        panic!(
            "{id}: the build did not end within {PROMPT:?} (SIGTERM {} it)",
            if ended { "ended" } else { "did not end" }
        );
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let doc: Value = serde_json::from_slice(&std::fs::read(&out).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{id}: no result ({e}); stderr:\n{stderr}"));
    (status.success(), doc, stderr, took)
}

/// Device nodes and a FIFO at upload destinations are refused with an error naming the path and
/// what is there (the FIFO at once), the host device stays untouched; a setuid file downloads
/// without its setuid and setgid bits; the image and kiln's mounts in it are `nodev,nosuid`.
#[tokio::test]
async fn nodes_in_the_image_stay_inert() {
    with_janitor(|janitor| async move {
        let disk = HostDisk::new();
        let t = Tpl::new();
        std::fs::write(t.0.join("files/payload"), "kiln wrote this\n").expect("payload");
        let (ami, base) = base_image(&t, &disk);
        track_result(&janitor, &base);
        disk.assert_untouched();

        // A build that succeeds: the download, and the mount flags seen from the host.
        let tag = unique("hp-tmpfs");
        let downloaded = t.0.join("suid-downloaded");
        let check = "awk -v mp={{.MountPath}} '$5 == mp || index($5, mp \"/\") == 1 { n++; if ($6 !~ /(^|,)nodev(,|$)/ || $6 !~ /(^|,)nosuid(,|$)/) { print \"mounted without nodev,nosuid: \" $5 \" \" $6; bad = 1 } } END { if (n < 1) { print \"the image root is not mounted\"; bad = 1 } exit bad }' /proc/self/mountinfo";
        let provs = format!(
            r#"provisioner "file" {{
    direction   = "download"
    source      = "/etc/suid-file"
    destination = "{dl}"
  }}
  provisioner "shell-local" {{
    inline = [{check}]
  }}"#,
            dl = downloaded.display(),
            check = serde_json::to_string(check).expect("json"),
        );
        let extra = format!(r#"chroot_mounts = [["tmpfs", "{tag}", "/var/kiln-hp"]]"#);
        let tpl = t.write(
            "ok.pkr.hcl",
            &from_base(&ami, &unique("hp-ok"), &extra, &provs),
        );
        let (ok, doc, stderr) = build(&tpl, &[]);
        track_result(&janitor, &doc);
        assert!(ok, "{}\n{doc:#}\n{stderr}", doc["error"]);
        let m = std::fs::metadata(&downloaded).expect("downloaded");
        assert_eq!(
            m.permissions().mode() & 0o7777,
            0o755,
            "setuid/setgid bits kept"
        );
        assert_eq!(std::fs::read_to_string(&downloaded).expect("read"), "suid");
        disk.assert_untouched();

        // Uploads onto the nodes: each build fails, naming the path and the node.
        let (maj, min) = disk.rdev;
        let cases = [
            (
                "disk",
                r#"provisioner "file" {
    content     = "kiln wrote this\n"
    destination = "/etc/disk-link"
  }"#,
                format!("/etc/disk in the image: it is a block device node ({maj}:{min})"),
            ),
            (
                "null",
                r#"provisioner "file" {
    source      = "files/payload"
    destination = "/etc/null"
  }"#,
                "/etc/null in the image: it is a character device node (1:3)".to_owned(),
            ),
            (
                "fifo",
                r#"provisioner "file" {
    content     = "kiln wrote this\n"
    destination = "/etc/fifo"
  }"#,
                "/etc/fifo in the image: it is a FIFO".to_owned(),
            ),
        ];
        for (what, prov, expected) in cases {
            let id = unique(&format!("hp-{what}"));
            let tpl = t.write(
                &format!("{what}.pkr.hcl"),
                &from_base(&ami, &unique(&format!("hp-{what}")), "", prov),
            );
            let (ok, doc, stderr, took) = build_within(&tpl, &id, &janitor).await;
            track_result(&janitor, &doc);
            assert!(!ok, "{what}: the upload onto the node succeeded:\n{doc:#}");
            let error = doc["error"].to_string();
            assert!(
                error.contains(&expected) && error.contains("never opens"),
                "{what}: {error}\n{stderr}"
            );
            assert!(took < PROMPT, "{what} took {took:?}");
            disk.assert_untouched();
            assert_nothing_left(&id, &doc).await;
        }
    })
    .await;
}

/// `device_path` climbing out of `/dev` (and `nvme_device_path`, `mount_path` with `..`) is a
/// validation error naming the field; the host files it names are still there afterwards, and
/// no lock file appears next to them.
#[tokio::test]
async fn host_path_fields_with_dots_are_refused() {
    let t = Tpl::new();
    let victim = PathBuf::from("/tmp").join(unique("hp-victim"));
    let lock = PathBuf::from(format!("{}.lock", victim.display()));
    let guard = Victims(
        std::iter::once(victim.clone())
            .chain((1..=3).map(|n| PathBuf::from(format!("{}{n}", victim.display()))))
            .chain(std::iter::once(lock.clone()))
            .collect(),
    );
    let victims = &guard.0[..4];
    for v in victims {
        std::fs::write(v, "host file\n").expect("victim");
    }
    let cases = [
        (
            "device_path",
            format!(r#"device_path = "/dev/../../..{}""#, victim.display()),
            "device_path must be an attachment point /dev/sd[f-p] or /dev/xvd[f-p]",
        ),
        (
            "nvme_device_path",
            format!(
                r#"nvme_device_path = "/dev/nvme1n1/../../..{}""#,
                victim.display()
            ),
            "nvme_device_path must be an NVMe device node directly in /dev",
        ),
        (
            "mount_path",
            format!(
                r#"mount_path = "/mnt/../..{}/{{{{.Device}}}}""#,
                victim.display()
            ),
            "mount_path must be a directory below /mnt",
        ),
    ];
    for (field, extra, message) in cases {
        let tpl = t.write(
            &format!("{field}.pkr.hcl"),
            &busybox(&unique("hp-field"), &extra, ""),
        );
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("validate")
            .arg(&tpl)
            .output()
            .expect("kiln validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{field}: validated:\n{text}");
        assert!(
            text.contains(message) && text.contains(field),
            "{field}: {text}"
        );
        let out = build_output(&tpl, &[]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{field}: built:\n{text}");
        assert!(text.contains(message), "{field}: {text}");
        for v in victims {
            assert_eq!(
                std::fs::read_to_string(v).ok().as_deref(),
                Some("host file\n"),
                "{field}: {} was touched",
                v.display()
            );
        }
        assert!(!lock.exists(), "{field}: {} was made", lock.display());
    }
}

/// Host files a test names in a template, removed when dropped (also when the test fails).
struct Victims(Vec<PathBuf>);

impl Drop for Victims {
    fn drop(&mut self) {
        for v in &self.0 {
            let _ = std::fs::remove_file(v);
        }
    }
}

/// Someone else's tmpfs at `mount_path`, with a process chrooted in it.
struct ForeignMount {
    dir: PathBuf,
    tag: String,
    child: std::process::Child,
}

impl ForeignMount {
    fn new() -> Self {
        let dir = PathBuf::from("/mnt").join(unique("hp-foreign"));
        let tag = unique("hp-foreign-tmpfs");
        std::fs::create_dir_all(&dir).expect("dir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", &tag])
            .arg(&dir)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mount tmpfs on {}", dir.display());
        std::fs::create_dir_all(dir.join("bin")).expect("bin");
        std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox");
        std::fs::write(dir.join("marker"), "foreign\n").expect("marker");
        let child = Command::new("chroot")
            .arg(&dir)
            .args(["/bin/busybox", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("chroot");
        let m = ForeignMount { dir, tag, child };
        // Wait (bounded) until the child is inside.
        let t = Instant::now();
        while m.root_of_child().as_deref() != Some(m.dir.as_path())
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(m.root_of_child().as_deref(), Some(m.dir.as_path()));
        m
    }

    fn root_of_child(&self) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/{}/root", self.child.id())).ok()
    }

    /// The mount id of the tmpfs (the mountinfo line with its source).
    fn mount_id(&self) -> Option<String> {
        let table = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        table
            .lines()
            .find(|l| l.contains(&self.tag) && l.split(' ').nth(4) == self.dir.to_str())
            .and_then(|l| l.split(' ').next().map(str::to_owned))
    }
}

impl Drop for ForeignMount {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A `mount_path` where someone else's tmpfs is mounted: the build is refused, and its undo
/// leaves that tmpfs mounted and the process chrooted in it running.
#[tokio::test]
async fn a_foreign_mount_at_mount_path_is_left_alone() {
    with_janitor(|janitor| async move {
        let foreign = ForeignMount::new();
        let before = foreign.mount_id().expect("the tmpfs is mounted");
        let t = Tpl::new();
        let extra = format!(r#"mount_path = "{}""#, foreign.dir.display());
        let tpl = t.write(
            "foreign.pkr.hcl",
            &busybox(&unique("hp-foreign"), &extra, ""),
        );
        let id = unique("hp-foreign-build");
        let (ok, doc, stderr) = build(&tpl, &["--build-id".into(), id.clone()]);
        track_result(&janitor, &doc);
        assert!(!ok, "built on a foreign mount:\n{doc:#}");
        let error = doc["error"].to_string();
        assert!(error.contains("is already mounted"), "{error}\n{stderr}");
        assert_eq!(
            foreign.mount_id().as_deref(),
            Some(before.as_str()),
            "the foreign tmpfs was unmounted"
        );
        assert_eq!(
            std::fs::read_to_string(foreign.dir.join("marker"))
                .ok()
                .as_deref(),
            Some("foreign\n")
        );
        let mut foreign = foreign;
        assert!(
            foreign.child.try_wait().expect("wait").is_none(),
            "the process chrooted in the foreign tmpfs was killed"
        );
        assert_eq!(
            foreign.root_of_child().as_deref(),
            Some(foreign.dir.as_path())
        );
        let left = tagged(Emulator::get().region(), &id).await;
        assert!(left.volumes.is_empty(), "volumes left: {:?}", left.volumes);
    })
    .await;
}
