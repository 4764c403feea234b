//! Step `reclaim` (only when resuming a build an earlier attempt started): whatever that attempt
//! left is found by the build's tag and removed (a boot test's instance, terminated, and its
//! private image; mounts of its device on this host (the attachment's node to this instance, or
//! the loop devices on its file), then the volume: detached from whichever
//! instance holds it, and deleted); a snapshot it finished is
//! reused, so the volume steps are skipped; the direct backend's leftovers as [`direct`] says.
//! Undo (on failure): delete the reused snapshot(s).

use crate::ec2::{TAG_BUILD_ID, TAG_STEP, api, images, instances, volumes};
use crate::host::{loopdev, mount};
use crate::pipeline::{Build, StepError};
use aws_sdk_ec2::types::{Filter, SnapshotState};

fn tag(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let ec2 = b.clients.ec2.clone();
    let region = b.region.clone();
    // A boot test's instance first: its root volume carries the build's tag too.
    // Only this build's (its team's, its generation's): another team's build of the same id,
    // and an earlier generation's leftovers, are not this build's to remove (gc judges those).
    let me = b.build_ref();
    let mut test_instances = Vec::new();
    for id in instances::of_build(&ec2, &region, &me).await? {
        instances::terminate(&ec2, &region, &id, &b.polling).await?;
        test_instances.push(id);
    }
    let test_images = ec2
        .describe_images()
        .owners("self")
        .filters(tag(TAG_BUILD_ID, &b.id))
        .filters(tag(TAG_STEP, "boot-test"))
        .send()
        .await
        .map_err(api("DescribeImages", b.id.clone(), &region))?;
    for id in test_images
        .images()
        .iter()
        .filter(|i| crate::ec2::made_by(i.tags(), &me))
        .filter_map(|i| i.image_id())
    {
        images::deregister(&ec2, &region, id).await?;
    }
    let out = ec2
        .describe_volumes()
        .filters(tag(TAG_BUILD_ID, &b.id))
        .send()
        .await
        .map_err(api("DescribeVolumes", b.id.clone(), &region))?;
    let mut reclaimed = Vec::new();
    for v in out.volumes() {
        let Some(id) = v.volume_id() else { continue };
        if !crate::ec2::made_by(v.tags(), &me) {
            continue;
        }
        // This host's leftovers of the volume: the mounts of its device (ebs: the node of its
        // attachment to this instance; loop: the loop devices on its file), then the device.
        let mut devs = Vec::new();
        if let Some(file) = b.backend.volume_file(id) {
            devs.extend(loopdev::find_for_file(&file));
        }
        if let Some(instance) = &b.state.instance {
            for a in v.attachments() {
                if a.instance_id() == Some(instance.instance_id.as_str())
                    && let Some(name) = a.device()
                {
                    devs.extend(b.backend.node_now(
                        id,
                        name,
                        b.plan.config.nvme_device_path.as_deref(),
                    ));
                }
            }
        }
        for dev in &devs {
            for m in mount::mounts_of(dev) {
                mount::unmount_tree(&m).await?;
            }
        }
        b.backend.detaching(id, None)?;
        volumes::detach(&ec2, &region, id, &b.polling, &b.cancel).await?;
        volumes::delete(&ec2, &region, id).await?;
        b.backend.volume_deleted(id);
        reclaimed.push(id.to_owned());
    }
    let snaps = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(tag(TAG_BUILD_ID, &b.id))
        .filters(tag(TAG_STEP, "snapshot"))
        .send()
        .await
        .map_err(api("DescribeSnapshots", b.id.clone(), &region))?;
    let mut reused = None;
    for s in snaps.snapshots() {
        let Some(id) = s.snapshot_id() else { continue };
        if !crate::ec2::made_by(s.tags(), &me) {
            continue;
        }
        let has_data = b.backend.snapshot_file(id).is_none_or(|f| f.exists());
        // Only this generation's snapshot is reused (a forced rebuild starts from its source).
        let ours = crate::ec2::made_by(s.tags(), &me);
        if reused.is_none() && ours && has_data && s.state() != Some(&SnapshotState::Error) {
            images::wait_snapshot(&ec2, &region, id, &b.polling, &b.cancel).await?;
            reused = Some(id.to_owned());
        } else if let Err(e) = images::delete_snapshot(&ec2, &region, id).await {
            // In use by an image of an earlier attempt: the register step reuses that image.
            tracing::info!(snapshot = id, error = %e, "kept a snapshot of an earlier attempt");
        }
    }
    if let Some(id) = &reused {
        b.state.snapshot_id = Some(id.clone());
        b.state.reused_snapshot = true;
    }
    let direct = if b.backend.is_direct() {
        direct(b).await?
    } else {
        serde_json::Value::Null
    };
    Ok(
        serde_json::json!({ "attempt": b.attempt, "reclaimed_volumes": reclaimed, "terminated_instances": test_instances, "reused_snapshot": reused, "direct": direct }),
    )
}

/// The direct backend's leftovers: the working image's mounts and loop devices on this host are
/// removed; then, when every region has a completed snapshot of this generation, they are reused
/// (nothing is built again); else, when the working image and its upload progress are here, the
/// upload continues (its snapshots are kept, the steps before it skipped); else every snapshot an
/// earlier attempt started is deleted and the build starts over.
async fn direct(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let work = super::read_source::work_file(b)?;
    for dev in loopdev::find_for_file(&work) {
        for m in mount::mounts_of(&dev) {
            mount::unmount_tree(&m).await?;
        }
        loopdev::detach(&dev)?;
    }
    let made = super::upload_delta::made_before(b).await?;
    let completed: std::collections::BTreeMap<String, String> = made
        .iter()
        .filter_map(|(r, snaps)| {
            snaps
                .iter()
                .find(|s| s.state() == Some(&SnapshotState::Completed))
                .and_then(|s| s.snapshot_id())
                .map(|id| (r.clone(), id.to_owned()))
        })
        .collect();
    let progress = super::upload_delta::progress_file(&work);
    let (keep, outcome): (Vec<String>, &str) = if completed.len() == made.len() {
        b.state.snapshot_id = completed.get(&b.region).cloned();
        b.state.region_snapshots = completed.clone();
        b.state.reused_snapshot = true;
        super::read_source::remove_work(&work);
        (completed.into_values().collect(), "reused")
    } else if work.exists() && progress.exists() {
        b.state.work_file = Some(work.clone());
        b.state.resume_upload = true;
        (super::upload_delta::kept_snapshots(&work), "resumed")
    } else {
        super::read_source::remove_work(&work);
        (Vec::new(), "started over")
    };
    let mut deleted = Vec::new();
    for (r, snaps) in &made {
        let ec2 = b.clients.ec2_in(r);
        for id in snaps.iter().filter_map(|s| s.snapshot_id()) {
            if !keep.iter().any(|k| k == id) {
                images::delete_snapshot(&ec2, r, id).await?;
                deleted.push(id.to_owned());
            }
        }
    }
    Ok(
        serde_json::json!({ "upload": outcome, "kept_snapshots": keep, "deleted_snapshots": deleted }),
    )
}

pub async fn undo(b: &mut Build) -> Result<(), StepError> {
    if b.state.reused_snapshot && b.backend.is_direct() {
        return super::upload_delta::undo(b).await;
    }
    if b.state.reused_snapshot
        && let Some(id) = b.state.snapshot_id.clone()
    {
        images::delete_snapshot(&b.clients.ec2, &b.region, &id).await?;
        b.backend.snapshot_deleted(&id);
        b.state.snapshot_id = None;
    }
    Ok(())
}
