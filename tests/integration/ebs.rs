//! The `ebs` backend's device handling against the emulator's EBS data plane: a host whose kernel
//! never shows the attached volume (a clear timeout naming the volume and the paths looked at, and
//! nothing left), a detach that EC2 reports late (the build waits for it before deleting the
//! volume), and the emulator's nodes themselves (Xen letters, Nitro by-id links, partitions as
//! the kernel reads them, all gone at detach).

use crate::pipeline::{Tpl, assert_nothing_left, build_env, busybox};
use crate::support::{Emulator, emulator_script, track_result, unique, with_janitor};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// How long `kiln build` waits for a node in the test of a node that never appears: long enough
/// for a loaded machine to notice an attachment, short for the suite.
const NODE_TIMEOUT_S: u64 = 3;
/// How long the emulator reports a late host's volumes `detaching`.
const DETACH_DELAY_S: f64 = 3.0;

/// A new builder host of this test (`scripts/emulator host` with `args`) and the environment that
/// points `kiln build` at it.
fn new_host(what: &str, args: &[&str]) -> (Value, Vec<(&'static str, String)>) {
    let name = unique(what);
    let host: Value =
        serde_json::from_str(&emulator_script(&[&["host", &name][..], args].concat()))
            .expect("scripts/emulator host prints JSON");
    let get = |k: &str| host[k].as_str().unwrap_or_default().to_owned();
    let env = vec![
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", get("imds_endpoint")),
        ("KILN_DEVICE_DIR", get("dev_dir")),
        ("KILN_DEVICE_NAMING", get("naming")),
    ];
    (host, env)
}

fn step<'a>(doc: &'a Value, name: &str) -> Option<&'a Value> {
    doc["steps"].as_array()?.iter().find(|s| s["name"] == name)
}

/// EC2 reports the volume attached, but no node ever appears: the build fails at attach-volume
/// within the device timeout, the error names the volume, the device it was attached as and
/// the paths kiln looked at, and the undo detaches and deletes the volume.
#[tokio::test]
async fn a_node_that_never_appears_is_a_clear_timeout() {
    with_janitor(|janitor| async move {
        for naming in ["xen", "nitro"] {
            let (host, env) = new_host("nonode", &["--naming", naming, "--no-nodes"]);
            let t = Tpl::new();
            let tpl = t.write("bb.pkr.hcl", &busybox(&unique("nonode"), "", ""));
            let id = unique("nonode");
            let (ok, doc, stderr) = build_env(
                &tpl,
                &[
                    "--build-id".into(),
                    id.clone(),
                    "--device-timeout".into(),
                    NODE_TIMEOUT_S.to_string(),
                ],
                &env,
            );
            track_result(&janitor, &doc);
            assert!(!ok, "{naming}: the build failed\n{stderr}");
            assert_eq!(doc["error"]["step"], "attach-volume", "{naming}: {doc:#}");
            let message = doc["error"]["message"].as_str().unwrap_or_default();
            let volume = step(&doc, "create-volume")
                .and_then(|s| s["outputs"]["volume_id"].as_str())
                .unwrap_or_else(|| panic!("{naming}: create-volume ran: {doc:#}"))
                .to_owned();
            let dev_dir = host["dev_dir"].as_str().unwrap_or_default();
            assert!(
                message.contains(&volume)
                    && message.contains(&format!("within {NODE_TIMEOUT_S} s"))
                    && message.contains(dev_dir)
                    && message.contains("attached as /dev/sd"),
                "{naming}: the error names the volume, the attachment, the paths and the time: {message}"
            );
            if naming == "nitro" {
                assert!(
                    message.contains("nvme-Amazon_Elastic_Block_Store_vol"),
                    "{message}"
                );
            }
            assert_nothing_left(&id, &doc).await;
        }
    })
    .await;
}

/// A host whose volumes EC2 reports `detaching` for a while: the build waits for the detach
/// before it snapshots and deletes the volume (DeleteVolume of a detaching volume fails with
/// VolumeInUse), succeeds, and leaves no volume.
#[tokio::test]
async fn a_detach_reported_late_is_waited_for() {
    with_janitor(|janitor| async move {
        let (_, env) = new_host(
            "latedetach",
            &[
                "--naming",
                "xen",
                "--detach-delay",
                &DETACH_DELAY_S.to_string(),
            ],
        );
        let t = Tpl::new();
        let tpl = t.write(
            "bb.pkr.hcl",
            &busybox(
                &unique("latedetach"),
                "",
                r#"provisioner "shell" { inline = ["echo late > /etc/late"] }"#,
            ),
        );
        let id = unique("latedetach");
        let (ok, doc, stderr) = build_env(&tpl, &["--build-id".into(), id.clone()], &env);
        track_result(&janitor, &doc);
        assert!(ok, "{}\n{doc:#}\n{stderr}", doc["error"]);
        assert_eq!(
            crate::pipeline::read_from_result(&doc, &["/etc/late"])[0].as_deref(),
            Some("late\n")
        );
        // The detach wait is part of the step that detaches: it cannot have been shorter.
        let detach_s: f64 = doc["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"] == "early-cleanup" || s["name"] == "snapshot")
            .filter_map(|s| s["duration_s"].as_f64())
            .sum();
        assert!(
            detach_s >= DETACH_DELAY_S,
            "the build waited for the late detach ({detach_s} s): {doc:#}"
        );
        let left = crate::support::tagged(Emulator::get().region(), &id).await;
        assert!(left.volumes.is_empty(), "volumes left: {:?}", left.volumes);
    })
    .await;
}

/// The emulator's nodes: a Xen host shows the letter asked for and `sdf1` once the kernel reads
/// a partition table; a Nitro host shows `nvmeKn1` and `nvmeKn1p1` with udev's by-id links; both
/// hold the volume's data and go at DetachVolume, with the loop device.
#[tokio::test]
async fn attachments_make_the_nodes_ec2_would() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region();
        let ec2 = emu.clients(region).await.ec2;
        for naming in ["xen", "nitro"] {
            let (host, _) = new_host("nodes", &["--naming", naming]);
            let instance = host["instance_id"].as_str().expect("instance");
            let dir = Path::new(host["dev_dir"].as_str().expect("dev_dir")).to_owned();
            let volume = crate::emulator::volume(&ec2, &janitor, region).await;
            ec2.attach_volume()
                .volume_id(&volume)
                .instance_id(instance)
                .device("/dev/sdf")
                .send()
                .await
                .expect("AttachVolume");
            let (node, part) = match naming {
                "xen" => (dir.join("sdf"), dir.join("sdf1")),
                _ => {
                    let link = dir.join(format!(
                        "disk/by-id/nvme-Amazon_Elastic_Block_Store_{}",
                        volume.replace('-', "")
                    ));
                    let node = std::fs::canonicalize(&link)
                        .unwrap_or_else(|e| panic!("{}: {e}", link.display()));
                    let part = Path::new(&format!("{}p1", node.display())).to_owned();
                    (node, part)
                }
            };
            assert!(
                is_block(&node),
                "{naming}: {} is a block node",
                node.display()
            );
            let table = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "printf 'label: gpt\\n,,L\\n' | sfdisk --quiet {0} && partx --update {0}",
                    node.display()
                ))
                .status()
                .expect("sfdisk");
            assert!(table.success());
            let start = std::time::Instant::now();
            while !is_block(&part) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(is_block(&part), "{naming}: {} appeared", part.display());
            if naming == "nitro" {
                let link = dir.join(format!(
                    "disk/by-id/nvme-Amazon_Elastic_Block_Store_{}-part1",
                    volume.replace('-', "")
                ));
                assert_eq!(std::fs::canonicalize(&link).ok(), Some(part.clone()));
            }
            ec2.detach_volume()
                .volume_id(&volume)
                .send()
                .await
                .expect("DetachVolume");
            assert!(
                !node.exists() && !part.exists(),
                "{naming}: the nodes went with the attachment"
            );
            crate::support::assert_volume_data_unattached(&volume);
        }
    })
    .await;
}

fn is_block(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}
