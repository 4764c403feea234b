//! What a failure leaves: `--on-error=abort` keeps everything and lists it (and every listed
//! thing is really there); `force_deregister` replaces an AMI of the same name.

use crate::pipeline::{Tpl, build, busybox};
use crate::support::{Emulator, Resource, tagged, track_result, unique, with_janitor};
use std::path::PathBuf;
use std::process::Command;

/// `--on-error=abort` after a provisioner failed: the volume, its attachment, the device
/// and the mounts are left in place and each is listed in `left_behind`. The test then removes
/// them itself.
#[tokio::test]
async fn on_error_abort_leaves_everything_listed_and_in_place() {
    with_janitor(|janitor| async move {
        let tpl = Tpl::new();
        let t = tpl.write(
            "bb.pkr.hcl",
            &busybox(
                &unique("abort"),
                "",
                r#"provisioner "shell" { inline = ["echo failing on purpose", "exit 3"] }"#,
            ),
        );
        let id = unique("abort");
        let (ok, doc, stderr) = build(
            &t,
            &[
                "--build-id".to_owned(),
                id.clone(),
                "--on-error=abort".to_owned(),
            ],
        );
        let region = Emulator::get().region();
        let volumes = tagged(region, &id).await.volumes;
        for v in &volumes {
            if let Some(vid) = v.volume_id() {
                janitor.track(region, Resource::Volume(vid.to_owned()));
            }
        }
        let left: Vec<String> = doc["left_behind"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().map(str::to_owned))
            .collect();
        let mounts: Vec<PathBuf> = left
            .iter()
            .filter_map(|l| l.strip_prefix("mount ").map(PathBuf::from))
            .collect();
        let volume = volumes
            .first()
            .and_then(|v| v.volume_id())
            .map(str::to_owned);
        let aliases: Vec<String> = left
            .iter()
            .filter_map(|l| l.strip_prefix("device /dev/kiln/").map(str::to_owned))
            .collect();
        // Clean up before asserting, so a failed assertion leaves nothing either.
        let cleanup = |mounts: &[PathBuf], volume: &Option<String>| {
            for a in &aliases {
                kiln::host::devices::remove_aliases(a);
            }
            for m in mounts.iter().rev() {
                let _ = Command::new("umount").arg("-R").arg(m).status();
            }
            // The volume: the janitor detaches it (the emulator then drops its loop device and
            // nodes) and deletes it.
            let _ = volume;
        };
        // A worker starting on this host leaves what --on-error=abort kept on purpose.
        let lock_file: Option<PathBuf> = left
            .iter()
            .find_map(|l| l.strip_prefix("lock ").map(PathBuf::from));
        let note = lock_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .unwrap_or_default();
        let swept = kiln::worker::sweep_host(std::path::Path::new(kiln::host::lock::LOCK_DIR)).await;
        let mounted_now: Vec<bool> = mounts
            .iter()
            .map(|m| kiln::host::mount::is_mounted(m))
            .collect();
        if let Some(f) = &lock_file {
            let _ = std::fs::write(f, "");
        }
        let attached = volumes.first().map(|v| v.attachments().len()).unwrap_or(0);
        cleanup(&mounts, &volume);
        assert!(!ok, "the build failed:\n{stderr}");
        assert_eq!(doc["status"], "failed", "{doc:#}");
        assert_eq!(doc["error"]["step"], "provision", "{doc:#}");
        let volume = volume.unwrap_or_else(|| panic!("the volume is still there:\n{doc:#}"));
        assert!(
            left.iter()
                .any(|l| l.starts_with(&format!("volume {volume}"))),
            "the volume is listed: {left:#?}"
        );
        assert!(
            left.iter().any(|l| l == &format!("attachment of {volume}")),
            "the attachment is listed: {left:#?}"
        );
        assert_eq!(attached, 1, "and the volume is still attached");
        assert!(
            !mounts.is_empty() && mounted_now.iter().all(|m| *m),
            "the listed mounts were all mounted, also after a worker's start-up sweep: {mounts:?} {mounted_now:?} (swept: {swept:?})"
        );
        assert!(
            note.starts_with(kiln::host::lock::KEPT),
            "the device lock says kept: {note:?} ({lock_file:?})"
        );
        assert!(
            stderr.contains("left in place (--on-error=abort)"),
            "{stderr}"
        );
    })
    .await;
}

/// `force_deregister` with `force_delete_snapshot`: a second build of the same AMI name removes
/// the first AMI and its snapshot, and registers its own.
#[tokio::test]
async fn force_deregister_replaces_an_ami_of_the_same_name() {
    with_janitor(|janitor| async move {
        let name = unique("golden");
        let tpl = Tpl::new();
        let plain = tpl.write("a.pkr.hcl", &busybox(&name, "", ""));
        let forced = tpl.write(
            "b.pkr.hcl",
            &busybox(
                &name,
                "force_deregister = true\n  force_delete_snapshot = true",
                "",
            ),
        );
        let region = Emulator::get().region();
        let (ok1, first, err1) = build(&plain, &[]);
        track_result(&janitor, &first);
        assert!(ok1, "{err1}");
        let (ok_dup, dup, err_dup) = build(&plain, &[]);
        track_result(&janitor, &dup);
        assert!(!ok_dup, "the name is taken without force_deregister");
        assert!(
            dup["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("force_deregister")),
            "the error names the fix: {dup:#}\n{err_dup}"
        );
        let (ok2, second, err2) = build(&forced, &[]);
        track_result(&janitor, &second);
        assert!(ok2, "{err2}");
        let old_ami = first["artifacts"][region]["ami_id"].as_str().expect("ami");
        let old_snap = first["artifacts"][region]["snapshot_ids"][0]
            .as_str()
            .expect("snapshot");
        let ec2 = Emulator::get().clients(region).await.ec2;
        let named = ec2
            .describe_images()
            .owners("self")
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("name")
                    .values(&name)
                    .build(),
            )
            .send()
            .await
            .expect("DescribeImages");
        let ids: Vec<Option<&str>> = named.images().iter().map(|i| i.image_id()).collect();
        assert_eq!(
            ids,
            vec![second["artifacts"][region]["ami_id"].as_str()],
            "only the new AMI carries the name (the old one was {old_ami})"
        );
        let snap = ec2.describe_snapshots().snapshot_ids(old_snap).send().await;
        assert!(
            snap.map(|o| o.snapshots().is_empty()).unwrap_or(true),
            "the old AMI's snapshot {old_snap} is deleted"
        );
    })
    .await;
}
