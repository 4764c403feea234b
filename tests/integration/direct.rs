//! The `direct` backend end to end: a busybox base built on `ebs` (and copied to a second
//! region), then an application layer on top built with `--backend direct`: only the changed
//! 512 KiB blocks are written (PutSnapshotBlock calls counted by the emulator), to both regions
//! on top of each region's parent, the files are in both regions' images and equal the same
//! template built on `ebs`, no volume is made, the cache serves the second build, a crash
//! mid-upload resumes the same snapshots, and throttling slows the upload without failing it.

use crate::pipeline::{Tpl, build, busybox, read_from_snapshot};
use crate::support::{
    Emulator, emulator_script, result_snapshot_data, tagged, track_result, unique, with_janitor,
};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The second region (the base is copied there by CopyImage; the app layer uploads its delta).
const COPY_REGION: &str = "us-west-2";
/// A region whose direct calls the throttling test slows (no other test uploads there).
const THROTTLED_REGION: &str = "eu-west-3";

/// The busybox base, built on ebs and copied to [`COPY_REGION`]. Returns its AMI.
fn base(t: &Tpl) -> String {
    let tpl = t.write(
        "base.pkr.hcl",
        &busybox(
            &unique("direct-base"),
            &format!(r#"ami_regions = ["{COPY_REGION}"]"#),
            r#"provisioner "shell" { inline = ["echo base > /etc/motd"] }"#,
        ),
    );
    let (ok, doc, stderr) = build(&tpl, &["--build-id".into(), unique("direct-base-build")]);
    assert!(ok, "base build failed: {}\n{doc:#}\n{stderr}", doc["error"]);
    doc["artifacts"][Emulator::get().region()]["ami_id"]
        .as_str()
        .expect("ami")
        .to_owned()
}

/// An application layer on `source`: a small file and 3 MiB of data, copied to `regions`.
fn app_template(t: &Tpl, source: &str, regions: &[&str]) -> PathBuf {
    let name = unique("direct-app");
    let regions = regions
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(", ");
    t.write(
        &format!("{name}.pkr.hcl"),
        &format!(
            r#"
source "amazon-chroot" "app" {{
  source_ami    = "{source}"
  ami_name      = "{name}"
  ami_regions   = [{regions}]
  copy_files    = []
  chroot_mounts = [["proc", "proc", "/proc"], ["sysfs", "sysfs", "/sys"], ["bind", "/dev", "/dev"]]
  tags = {{ Name = "kiln-direct-app" }}
}}
build {{
  sources = ["source.amazon-chroot.app"]
  provisioner "shell" {{
    inline = [
      "echo app-1.0 > /etc/app-version",
      "dd if=/dev/urandom of=/opt-data bs=1M count=3 2>/dev/null",
      "sha256sum /opt-data | cut -d' ' -f1 > /etc/app-data.sha256",
    ]
  }}
}}
"#
        ),
    )
}

/// A private state directory for the direct backend's cache and working images.
struct StateDir(PathBuf);

impl StateDir {
    fn new() -> Self {
        let d = std::env::temp_dir().join(unique("direct-state"));
        std::fs::create_dir_all(&d).expect("state dir");
        StateDir(d)
    }
    fn args(&self, id: &str) -> Vec<String> {
        vec![
            "--backend".into(),
            "direct".into(),
            "--state-dir".into(),
            self.0.display().to_string(),
            "--build-id".into(),
            id.into(),
        ]
    }
    fn work_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.0.join("direct/work"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Step `name`'s outputs in the result document `doc` (panics, showing `doc`, without it).
pub(crate) fn step<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .map(|s| &s["outputs"])
        .unwrap_or_else(|| panic!("no step {name} in {doc:#}"))
}

fn direct_stats(snapshot: &str) -> Value {
    let state: Value = serde_json::from_str(&emulator_script(&["state"])).expect("state");
    state["direct"][snapshot].clone()
}

/// Asserts that partition `part` of the image in `file` passes `e2fsck -fn` (read only): a block
/// the upload missed or misplaced shows as an inconsistent file system.
pub(crate) fn fsck_root(file: &Path, part: u32) {
    let dev = crate::pipeline::losetup_show(&["-f", "-P", "-r", "--show"], file);
    let node = format!("{dev}p{part}");
    let mut out = None;
    for _ in 0..10 {
        if Path::new(&node).exists() {
            out = Some(
                std::process::Command::new("e2fsck")
                    .args(["-f", "-n", &node])
                    .output()
                    .expect("e2fsck"),
            );
            break;
        }
        let _ = std::process::Command::new("partx")
            .args(["-u", &dev])
            .status();
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let _ = std::process::Command::new("losetup")
        .args(["-d", &dev])
        .status();
    let out = out.unwrap_or_else(|| panic!("no partition {node} of {}", file.display()));
    assert!(
        out.status.success(),
        "e2fsck -fn {node} ({}):\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn files(file: &Path) -> Vec<Option<String>> {
    read_from_snapshot(
        file,
        &["/etc/motd", "/etc/app-version", "/etc/app-data.sha256"],
    )
}

#[tokio::test]
async fn an_app_layer_uploads_only_its_changed_blocks_to_every_region() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region().to_owned();
        let t = Tpl::new();
        let state = StateDir::new();
        let ami = base(&t);
        let base_doc = tagged_base_snapshot(&region, &ami).await;
        let tpl = app_template(&t, &ami, &[COPY_REGION]);
        let id = unique("direct-app-build");
        let (ok, doc, stderr) = build(&tpl, &state.args(&id));
        track_result(&janitor, &doc);
        assert!(
            ok,
            "direct build failed: {}\n{doc:#}\n{stderr}",
            doc["error"]
        );
        assert_eq!(doc["backend"], "direct");
        let names: Vec<&str> = doc["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        for absent in ["create-volume", "attach-volume", "snapshot", "copy-regions"] {
            assert!(!names.contains(&absent), "{absent} ran: {names:?}");
        }
        // Read from the service on the first build (no cache yet).
        let read = step(&doc, "read-source");
        assert_eq!(read["cache_hit"], false);
        assert!(read["bytes_read"].as_u64().unwrap_or(0) > 0, "{read}");
        // Only the changed blocks went out, as many PutSnapshotBlock calls as changed blocks,
        // to each region on top of its own parent.
        let up = step(&doc, "upload-delta");
        let changed = up["changed_blocks"].as_u64().expect("changed");
        let source = read["source_blocks"].as_u64().expect("source blocks");
        assert!(changed >= 6, "3 MiB of data is at least 6 blocks: {up}");
        assert!(
            changed < source,
            "the whole image was written: {up} (source: {read})"
        );
        let regions = up["regions"].as_array().expect("regions");
        assert_eq!(regions.len(), 2, "{up}");
        for r in regions {
            let snap = r["snapshot_id"].as_str().expect("snapshot");
            assert_eq!(r["full_upload"], false, "{r}");
            assert_eq!(r["puts"].as_u64(), Some(changed), "{r}");
            let stats = direct_stats(snap);
            assert_eq!(stats["puts"].as_u64(), Some(changed), "{stats}");
            assert_eq!(stats["written"].as_u64(), Some(changed), "{stats}");
        }
        assert_eq!(regions[0]["parent"], base_doc.as_str());
        // Both regions' images hold the layer and the base's files, in a consistent file system.
        for r in [region.as_str(), COPY_REGION] {
            fsck_root(&result_snapshot_data(&doc, r), 1);
            let got = files(&result_snapshot_data(&doc, r));
            assert_eq!(got[0].as_deref(), Some("base\n"), "{r}");
            assert_eq!(got[1].as_deref(), Some("app-1.0\n"), "{r}");
            assert!(
                got[2].as_deref().is_some_and(|s| s.len() == 65),
                "{r}: {got:?}"
            );
        }
        // No volume was made, and the working image is gone.
        for r in [region.as_str(), COPY_REGION] {
            assert!(tagged(r, &id).await.volumes.is_empty(), "{r}");
        }
        assert!(state.work_files().is_empty(), "{:?}", state.work_files());

        // The second build on the same base reads nothing: the cache has it.
        let id2 = unique("direct-app-build");
        let tpl2 = app_template(&t, &ami, &[]);
        let (ok, doc2, stderr) = build(&tpl2, &state.args(&id2));
        track_result(&janitor, &doc2);
        assert!(ok, "{}\n{stderr}", doc2["error"]);
        let read = step(&doc2, "read-source");
        assert_eq!(read["cache_hit"], true, "{read}");
        assert_eq!(read["bytes_read"], 0, "{read}");

        // The same template on ebs makes an image with the same files.
        let id3 = unique("direct-app-on-ebs");
        let tpl3 = app_template(&t, &ami, &[]);
        let (ok, doc3, stderr) = build(&tpl3, &["--build-id".into(), id3]);
        track_result(&janitor, &doc3);
        assert!(ok, "{}\n{stderr}", doc3["error"]);
        let on_ebs = files(&result_snapshot_data(&doc3, &region));
        let direct = files(&result_snapshot_data(&doc2, &region));
        assert_eq!(on_ebs[0], direct[0]);
        assert_eq!(on_ebs[1], direct[1]);
    })
    .await;
}

/// The base image's root snapshot in `region`.
async fn tagged_base_snapshot(region: &str, ami: &str) -> String {
    let ec2 = Emulator::get().clients(region).await.ec2;
    let img = ec2
        .describe_images()
        .image_ids(ami)
        .send()
        .await
        .expect("DescribeImages")
        .images
        .unwrap_or_default()
        .pop()
        .expect("base image");
    img.block_device_mappings()
        .iter()
        .find_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
        .expect("root snapshot")
        .to_owned()
}

/// A crash in the middle of the upload: the next run of the same build on this host continues
/// the same snapshots (no second snapshot, no block written twice beyond the last save) and
/// ends with one snapshot and one AMI per region.
#[tokio::test]
async fn a_crash_mid_upload_resumes_the_same_snapshots() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region().to_owned();
        let t = Tpl::new();
        let state = StateDir::new();
        let ami = base(&t);
        let tpl = app_template(&t, &ami, &[COPY_REGION]);
        let id = unique("direct-crash");
        let s = crate::worker::setup(10).await;
        let mut args = state.args(&id);
        args.extend(["--checkpoint-bucket".into(), s.bucket.clone()]);
        // Killed after 5 blocks of the upload, as a dying builder would be.
        let mut c = crate::pipeline::kiln_command(&tpl, &args);
        c.env("KILN_FAULT_CRASH_AFTER_BLOCKS", "5");
        let out = c.output().expect("kiln build");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("KILN_FAULT_CRASH_AFTER_BLOCKS"),
            "the build was not killed mid-upload:\n{err}"
        );
        let before: Vec<String> = tagged(&region, &id)
            .await
            .snapshots
            .iter()
            .filter_map(|s| s.snapshot_id().map(str::to_owned))
            .collect();
        assert_eq!(before.len(), 1, "{before:?}");
        let stats = direct_stats(&before[0]);
        assert_eq!(stats["status"], "pending", "{stats}");
        // The lease lapses (as 60 s after a crash); the next run resumes.
        let mut journal = crate::checkpoint::journal_of(&s, &id).await;
        journal["lease_expires"] = Value::from(0);
        crate::checkpoint::put_journal(&s, &id, &journal).await;
        let (ok, doc, stderr) = build(&tpl, &args);
        track_result(&janitor, &doc);
        assert!(ok, "resume failed: {}\n{doc:#}\n{stderr}", doc["error"]);
        let reclaim = step(&doc, "reclaim");
        assert_eq!(reclaim["direct"]["upload"], "resumed", "{reclaim}");
        for r in [region.as_str(), COPY_REGION] {
            let left = tagged(r, &id).await;
            assert_eq!(left.snapshots.len(), 1, "{r}: {:?}", left.snapshots);
            assert_eq!(left.images.len(), 1, "{r}: {:?}", left.images);
        }
        assert_eq!(
            doc["artifacts"][&region]["snapshot_ids"][0].as_str(),
            before.first().map(String::as_str),
            "the resumed build made another snapshot"
        );
        let got = files(&result_snapshot_data(&doc, COPY_REGION));
        assert_eq!(got[1].as_deref(), Some("app-1.0\n"));
        assert!(state.work_files().is_empty(), "{:?}", state.work_files());
    })
    .await;
}

/// Four in five PutSnapshotBlock calls to one region throttled, more than the SDK's own retries
/// absorb: kiln's upload narrows its window and pauses, and the build succeeds with every block
/// written (without the slow-down, the first block the SDK gives up on fails the build).
#[tokio::test]
async fn throttling_slows_the_upload_without_failing_it() {
    let _turn = crate::emulator_direct::THROTTLE.lock().await;
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        let state = StateDir::new();
        let ami = base(&t);
        let tpl = app_template(&t, &ami, &[THROTTLED_REGION]);
        let id = unique("direct-throttled");
        emulator_script(&[
            "throttle-direct",
            "0.8",
            "PutSnapshotBlock",
            "--region",
            THROTTLED_REGION,
        ]);
        let (ok, doc, stderr) = build(&tpl, &state.args(&id));
        emulator_script(&["throttle-direct", "0"]);
        track_result(&janitor, &doc);
        assert!(
            ok,
            "throttled build failed: {}\n{doc:#}\n{stderr}",
            doc["error"]
        );
        let up = step(&doc, "upload-delta");
        let throttled = up["regions"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["region"] == THROTTLED_REGION))
            .expect("the throttled region")
            .clone();
        assert!(
            throttled["throttled"].as_u64().unwrap_or(0) > 0,
            "kiln never saw a throttle past the SDK's retries: {throttled}"
        );
        assert!(
            throttled["min_window"].as_u64().unwrap_or(64) < 64,
            "the window never narrowed: {throttled}"
        );
        let snap = throttled["snapshot_id"].as_str().expect("snapshot");
        let stats = direct_stats(snap);
        assert!(stats["throttled"].as_u64().unwrap_or(0) > 0, "{stats}");
        assert_eq!(stats["puts"], stats["written"], "{stats}");
        // No parent there: a full upload.
        assert_eq!(throttled["full_upload"], true, "{throttled}");
        let got = files(&result_snapshot_data(&doc, THROTTLED_REGION));
        assert_eq!(got[1].as_deref(), Some("app-1.0\n"));
    })
    .await;
}

/// A request that asks for `"backend": "direct"` is built on it by a worker whose own backend is
/// `ebs` (a from-scratch image: a full upload, no parent), with no volume made.
#[tokio::test]
async fn a_request_asks_the_worker_for_direct() {
    with_janitor(|janitor| async move {
        let s = crate::worker::setup(3).await;
        let state = StateDir::new();
        let key = crate::worker::upload(&s, &unique("direct-tpl")).await;
        let id = unique("direct-req");
        let mut req: Value =
            serde_json::from_str(&crate::worker::request(&id, &s.bucket, &key, 0)).expect("req");
        req["backend"] = Value::from("direct");
        crate::worker::send(&s, &req.to_string()).await;
        let state_dir = state.0.display().to_string();
        let w = crate::worker::start_worker(&s, &["--state-dir", &state_dir]);
        let doc = crate::worker::result(&s, &id, std::time::Duration::from_secs(240)).await;
        track_result(&janitor, &doc);
        let (_, log) = crate::worker::stop_worker(w);
        assert_eq!(doc["status"], "succeeded", "{doc:#}\n{log}");
        assert_eq!(doc["backend"], "direct", "{doc:#}");
        let up = step(&doc, "upload-delta");
        assert_eq!(up["regions"][0]["full_upload"], true, "{up}");
        assert!(up["changed_blocks"].as_u64().unwrap_or(0) > 0, "{up}");
        let region = Emulator::get().region();
        assert!(tagged(region, &id).await.volumes.is_empty());
        assert!(state.work_files().is_empty(), "{:?}", state.work_files());
    })
    .await;
}

/// Encryption within what StartSnapshot can do: `encrypt_boot` on an unencrypted base uploads
/// the whole image, encrypted, with no parent (EBS cannot encrypt the child of an unencrypted
/// snapshot); a layer on that encrypted image is a delta and encrypted too.
#[tokio::test]
async fn encryption_follows_the_parent_or_uploads_whole() {
    with_janitor(|janitor| async move {
        let region = Emulator::get().region().to_owned();
        let t = Tpl::new();
        let state = StateDir::new();
        let ami = base(&t);
        let ec2 = Emulator::get().clients(&region).await.ec2;
        let encrypted = |doc: &Value| {
            let id = doc["artifacts"][&region]["snapshot_ids"][0]
                .as_str()
                .expect("snapshot")
                .to_owned();
            let ec2 = ec2.clone();
            async move {
                ec2.describe_snapshots()
                    .snapshot_ids(&id)
                    .send()
                    .await
                    .expect("DescribeSnapshots")
                    .snapshots()
                    .first()
                    .and_then(|s| s.encrypted())
            }
        };
        let tpl = app_template(&t, &ami, &[]);
        let text = std::fs::read_to_string(&tpl).expect("template").replace(
            "  copy_files    = []",
            "  copy_files    = []\n  encrypt_boot  = true",
        );
        std::fs::write(&tpl, text).expect("template");
        let (ok, doc, stderr) = build(&tpl, &state.args(&unique("direct-enc")));
        track_result(&janitor, &doc);
        assert!(ok, "{}\n{stderr}", doc["error"]);
        let up = step(&doc, "upload-delta");
        assert_eq!(up["regions"][0]["full_upload"], true, "{up}");
        assert_eq!(encrypted(&doc).await, Some(true));
        let enc_ami = doc["artifacts"][&region]["ami_id"]
            .as_str()
            .expect("ami")
            .to_owned();
        // A layer on the encrypted image: a delta on top of it, encrypted as its parent is.
        let tpl = app_template(&t, &enc_ami, &[]);
        let (ok, doc, stderr) = build(&tpl, &state.args(&unique("direct-enc-child")));
        track_result(&janitor, &doc);
        assert!(ok, "{}\n{stderr}", doc["error"]);
        let up = step(&doc, "upload-delta");
        assert_eq!(up["regions"][0]["full_upload"], false, "{up}");
        let source = step(&doc, "read-source")["source_blocks"].as_u64();
        assert!(up["changed_blocks"].as_u64() < source, "{up}");
        assert_eq!(encrypted(&doc).await, Some(true));
    })
    .await;
}

/// The builder's cache is shared by every team's builds: a build whose credentials may not read
/// the source snapshot (the emulator answers its ListSnapshotBlocks AccessDeniedException, as
/// IAM does for another team's role) is refused even though the snapshot is cached, and leaves
/// nothing. Without the check it would be built from the cached copy.
#[tokio::test]
async fn the_cache_never_serves_a_snapshot_its_caller_may_not_read() {
    with_janitor(|janitor| async move {
        let region = Emulator::get().region().to_owned();
        let t = Tpl::new();
        let state = StateDir::new();
        let ami = base(&t);
        let snap = tagged_base_snapshot(&region, &ami).await;
        let tpl = app_template(&t, &ami, &[]);
        let (ok, doc, stderr) = build(&tpl, &state.args(&unique("direct-cache-a")));
        track_result(&janitor, &doc);
        assert!(ok, "{}\n{stderr}", doc["error"]);
        emulator_script(&[
            "fault",
            "GET",
            &format!("/snapshots/{snap}/blocks"),
            "403",
            "AccessDeniedException",
            "1",
        ]);
        let id = unique("direct-cache-b");
        let tpl = app_template(&t, &ami, &[]);
        let (ok, doc, _) = build(&tpl, &state.args(&id));
        track_result(&janitor, &doc);
        assert!(
            !ok,
            "served from the cache without the right to read: {doc:#}"
        );
        assert_eq!(doc["error"]["step"], "read-source", "{doc:#}");
        let msg = doc["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("AccessDenied") && msg.contains(&snap),
            "the error names the snapshot and the refusal: {msg}"
        );
        let left = tagged(&region, &id).await;
        assert!(left.snapshots.is_empty(), "{:?}", left.snapshots);
        assert!(left.volumes.is_empty(), "{:?}", left.volumes);
        assert!(state.work_files().is_empty(), "{:?}", state.work_files());
    })
    .await;
}
