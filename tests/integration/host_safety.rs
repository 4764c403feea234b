//! Host safety (README "Host safety"): a source image whose paths are links out of the image
//! (absolute, relative with enough `..`, on files, directories, `/tmp` and a mount target)
//! cannot lead kiln to write, read or mount anything on the builder host. A base image with such
//! links is built first; builds from it exercise every operation that touches an image path,
//! while a `shell-local` provisioner checks the host during the build and the test checks after.

use crate::pipeline::{Tpl, assert_nothing_left, build, busybox_base, read_from_result};
use crate::support::{Emulator, tagged, track_result, unique, with_janitor};
use serde_json::Value;
use std::path::PathBuf;

/// Host paths the image's links point at; they must stay as the test made them.
struct HostSide {
    /// `/tmp/kiln-test-hs-...`: holds `secret`, an empty `dir`, `mnt` and `race`.
    dir: PathBuf,
    /// `/var/<unique>`: where the image's relative `/tmp` link leads on the host. Must not appear.
    var_tmp: PathBuf,
}

impl HostSide {
    fn new() -> Self {
        let dir = PathBuf::from("/tmp").join(unique("hs"));
        for d in ["dir", "mnt", "race"] {
            std::fs::create_dir_all(dir.join(d)).expect("host dir");
        }
        std::fs::write(dir.join("secret"), "host secret\n").expect("secret");
        std::fs::write(dir.join("copy-src"), "copied from the host\n").expect("copy source");
        let var_tmp = PathBuf::from("/var").join(unique("hs-tmp"));
        HostSide { dir, var_tmp }
    }

    /// The host directory's name: the image's `/tmp` leads to `/var/<unique>`, so a link to
    /// this directory leads to `/var/<unique>/<name>` inside the image.
    fn name(&self) -> String {
        self.dir
            .strip_prefix("/tmp")
            .expect("the test's host directory is under /tmp")
            .display()
            .to_string()
    }

    /// A shell test that fails (naming what) if the host was touched.
    fn check_script(&self) -> String {
        let d = self.dir.display();
        format!(
            "test ! -e {d}/evil || {{ echo wrote the host file {d}/evil; exit 1; }}; \
             test -z \"$(find {d}/dir {d}/race {d}/mnt -mindepth 1)\" || {{ echo wrote into a host directory; exit 1; }}; \
             ! cut -d' ' -f5 /proc/self/mountinfo | grep -q '^{d}' || {{ echo mounted on the host; exit 1; }}; \
             test ! -e {v} || {{ echo created {v} on the host; exit 1; }}; \
             test \"$(cat {d}/secret)\" = 'host secret' || {{ echo changed the host secret; exit 1; }}",
            v = self.var_tmp.display()
        )
    }

    fn assert_untouched(&self) {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(self.check_script())
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "the host was touched: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

impl Drop for HostSide {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.var_tmp);
    }
}

/// Builds the base image: busybox, with links out of the image.
fn base_image(t: &Tpl, host: &HostSide) -> (String, Value) {
    let d = host.dir.display();
    let vt = host.var_tmp.file_name().expect("name").to_string_lossy();
    let hs = host.name();
    // Relative links climb far above the mount path: on the host they would reach `/`.
    let up = "../".repeat(12);
    let links = [
        format!("ln -s {d}/evil {{{{.MountPath}}}}/etc/evil"),
        format!(
            "ln -s {up}{}/dir {{{{.MountPath}}}}/etc/updir",
            &d.to_string()[1..]
        ),
        format!("ln -s {d}/secret {{{{.MountPath}}}}/etc/secret"),
        format!("mkdir -p {{{{.MountPath}}}}/var && ln -s {d}/mnt {{{{.MountPath}}}}/var/run"),
        format!("ln -s {d}/race {{{{.MountPath}}}}/opt-race"),
        // /tmp climbs to /var/<unique> (in the image; never created on the host).
        format!(
            "rmdir {{{{.MountPath}}}}/tmp && mkdir -p {{{{.MountPath}}}}/var/{vt}/{hs}/dir {{{{.MountPath}}}}/var/{vt}/{hs}/mnt && ln -s {up}var/{vt} {{{{.MountPath}}}}/tmp"
        ),
        // The image's own files where the links lead inside it.
        format!("echo image secret > {{{{.MountPath}}}}/var/{vt}/{hs}/secret"),
    ];
    busybox_base(t, "hs-base", &links)
}

/// A template building on `ami` with `extra` source fields and `provisioners`.
pub(crate) fn from_base(ami: &str, name: &str, extra: &str, provisioners: &str) -> String {
    format!(
        r#"
source "amazon-chroot" "app" {{
  source_ami    = "{ami}"
  ami_name      = "{name}"
  {extra}
}}
build {{
  sources = ["source.amazon-chroot.app"]
  {provisioners}
}}
"#
    )
}

/// Every covered operation through links out of the image; the host is checked during the
/// build (shell-local) and after it; the writes are in the image, where the chroot sees them.
#[tokio::test]
async fn links_in_the_image_never_reach_the_host() {
    with_janitor(|janitor| async move {
        let host = HostSide::new();
        let t = Tpl::new();
        std::fs::create_dir_all(t.0.join("files/tree/sub")).expect("tree");
        std::fs::write(t.0.join("files/tree/a.txt"), "a\n").expect("a");
        std::fs::write(t.0.join("files/tree/sub/b.txt"), "b\n").expect("b");
        let (ami, base) = base_image(&t, &host);
        track_result(&janitor, &base);
        let d = host.dir.display();
        let tag = unique("hs-tmpfs");
        let downloaded = t.0.join("secret-downloaded");
        let extra = format!(
            r#"copy_files = ["{d}/copy-src"]
  chroot_mounts = [["proc", "proc", "/proc"], ["tmpfs", "{tag}", "/var/run"]]"#
        );
        let provs = format!(
            r#"provisioner "file" {{
    content     = "through an absolute link\n"
    destination = "/etc/evil"
  }}
  provisioner "file" {{
    source      = "files/tree/"
    destination = "/etc/updir/"
  }}
  provisioner "file" {{
    direction   = "download"
    source      = "/etc/secret"
    destination = "{dl}"
  }}
  provisioner "shell" {{
    inline = ["grep -q ' /var/run ' /proc/mounts || grep -q '{tag}' /proc/mounts", "echo on-tmpfs > /var/run/x", "cat {d}/copy-src > /etc/copy-seen"]
  }}
  provisioner "shell-local" {{
    inline = [{check}]
  }}"#,
            dl = downloaded.display(),
            check = serde_json::to_string(&host.check_script()).expect("json"),
        );
        let tpl = t.write("app.pkr.hcl", &from_base(&ami, &unique("hs-app"), &extra, &provs));
        let (ok, doc, stderr) = build(&tpl, &[]);
        track_result(&janitor, &doc);
        host.assert_untouched();
        assert!(ok, "{}\n{doc:#}\n{stderr}", doc["error"]);
        assert_eq!(
            std::fs::read_to_string(&downloaded).ok().as_deref(),
            Some("image secret\n"),
            "the download read the image's file, not the host's"
        );
        let vt = host.var_tmp.file_name().expect("name").to_string_lossy();
        let hs = host.name();
        let in_image = |p: &str| format!("/var/{vt}/{hs}/{p}");
        let got = read_from_result(
            &doc,
            &[
                &in_image("evil"),
                &in_image("dir/a.txt"),
                &in_image("dir/sub/b.txt"),
                "/etc/copy-seen",
                &in_image("copy-src"),
            ],
        );
        assert_eq!(got[0].as_deref(), Some("through an absolute link\n"));
        assert_eq!(got[1].as_deref(), Some("a\n"));
        assert_eq!(got[2].as_deref(), Some("b\n"));
        assert_eq!(got[3].as_deref(), Some("copied from the host\n"));
        assert_eq!(got[4], None, "the copy_files copy was removed before the snapshot");
        assert_no_volume_or_mount(&doc).await;
        assert_no_mount_of(&tag);
    })
    .await;
}

/// A provisioner keeps replacing a directory with a link out of the image while kiln uploads a
/// tree into it (each upload retried, so many attempts meet the link): whatever the build's
/// outcome, nothing lands on the host. (The string joins kiln used before failed this test in
/// about half of the runs; the unit test `a_directory_swapped_for_a_link_never_leads_out` in
/// `host::image_fs` catches them every time.)
#[tokio::test]
async fn a_directory_swapped_for_a_link_during_an_upload_stays_inside() {
    with_janitor(|janitor| async move {
        let host = HostSide::new();
        let t = Tpl::new();
        for i in 0..300 {
            let p = t.0.join(format!("files/many/d{}/f{i}", i % 10));
            std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
            std::fs::write(&p, "x").expect("file");
        }
        let (ami, base) = base_image(&t, &host);
        track_result(&janitor, &base);
        let d = host.dir.display();
        // The swapper runs in the chroot (started by a host command, the template author's)
        // until the unmount kills it.
        let swapper = format!(
            "chroot {{{{.MountPath}}}} /bin/sh -c 'while :; do rm -rf /opt/up; mkdir -p /opt/up; sleep 0.003; rm -rf /opt/up; ln -s {d}/race /opt/up; sleep 0.006; done' > /dev/null 2>&1 &"
        );
        let extra = format!(
            "copy_files = []\n  post_mount_commands = [{}]",
            serde_json::to_string(&swapper).expect("json")
        );
        // Wait (a condition, bounded) until the swapper has made /opt.
        let mut provs = r#"provisioner "shell-local" { inline = ["i=0; while [ ! -d {{.MountPath}}/opt ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; test -d {{.MountPath}}/opt"] }"#.to_owned();
        // Sixty uploads, each retried: every attempt is a chance to meet the link.
        for i in 0..60 {
            provs.push_str(&format!(
                r#"
  provisioner "file" {{
    source      = "files/many/d{}"
    destination = "/opt/up/"
    max_retries = 40
  }}"#,
                i % 10
            ));
        }
        let tpl = t.write(
            "race.pkr.hcl",
            &from_base(&ami, &unique("hs-race"), &extra, &provs),
        );
        let (ok, doc, _stderr) = build(&tpl, &[]);
        track_result(&janitor, &doc);
        host.assert_untouched();
        assert!(
            std::fs::read_dir(host.dir.join("race"))
                .map(|mut r| r.next().is_none())
                .unwrap_or(true),
            "the upload wrote into the host's directory"
        );
        if ok {
            assert_no_volume_or_mount(&doc).await;
        } else {
            assert_nothing_left(doc["build_id"].as_str().expect("id"), &doc).await;
        }
    })
    .await;
}

/// A finished build left no volume and nothing mounted at its mount path.
async fn assert_no_volume_or_mount(doc: &Value) {
    let id = doc["build_id"].as_str().expect("id");
    let vols = tagged(Emulator::get().region(), id).await.volumes;
    assert!(vols.is_empty(), "{id}: volumes left: {vols:?}");
    // The build's own mount, by its kernel mount id (another build running now may have taken
    // the device letter, and with it the same mount path, as soon as this one ended).
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for step in doc["steps"].as_array().into_iter().flatten() {
        if let (Some(mp), Some(mid)) = (
            step["outputs"]["mount_path"].as_str(),
            step["outputs"]["mount_id"].as_u64(),
        ) {
            let left = table.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&mid.to_string().as_str()) && f.get(4) == Some(&mp)
            });
            assert!(!left, "{id}: its mount {mid} at {mp} is still there");
        }
    }
}

/// No mount anywhere in the host's mount table has `source` (a test's unique tmpfs name).
fn assert_no_mount_of(source: &str) {
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let left: Vec<&str> = table.lines().filter(|l| l.contains(source)).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
}
