//! Step `read-source` (direct backend; in place of `create-volume` and `attach-volume`): the
//! source image's root snapshot from the builder's cache, or read with the EBS direct APIs into
//! it (only the blocks the snapshot lists, [`crate::ebs::IN_FLIGHT`] at a time); a sparse copy of
//! it grown to the volume size is the build's working image (an empty one for from_scratch), on
//! a loop device named and mounted as an attachment would be. Undo (always): the loop device
//! released and the working image removed (the cache stays).

use crate::ebs::GIB;
use crate::host::{loopdev, sparse};
use crate::pipeline::{Build, StepError};
use std::path::PathBuf;

/// The working image of this build (team, id and generation: a forced rebuild is another file).
pub(super) fn work_file(b: &Build) -> Result<PathBuf, StepError> {
    b.backend
        .work_file(&format!("{}/{}/{}", b.team, b.id, b.generation))
        .ok_or_else(|| super::invalid("read-source runs on the direct backend only"))
}

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let c = &b.plan.config;
    let work = work_file(b)?;
    let cache = b
        .backend
        .snapshot_cache()
        .ok_or_else(|| super::invalid("read-source runs on the direct backend only"))?;
    let wanted = c.root_volume_size.unwrap_or(0).max(0) as u64;
    let (size, source_snapshot, hit, bytes_read, blocks) = match b.state.source.clone() {
        Some(src) => {
            let ebs = b.clients.ebs_in(&b.region);
            let cached = cache
                .fetch(&ebs, &b.region, &src.root_snapshot, &b.cancel)
                .await?;
            let size = cached
                .volume_size_gib
                .max(wanted)
                .max(src.root_size.max(0) as u64);
            b.state.work_file = Some(work.clone());
            sparse::copy(&cached.file, &work, size * GIB)?;
            (
                size,
                Some(src.root_snapshot),
                cached.hit,
                cached.bytes_read,
                cached.map.blocks.len(),
            )
        }
        None => {
            b.state.work_file = Some(work.clone());
            sparse::create(&work, wanted * GIB)?;
            (wanted, None, false, 0, 0)
        }
    };
    let dev = loopdev::attach(&work)?;
    b.state.block_device = Some(dev.clone());
    let name = b
        .state
        .device_name
        .clone()
        .ok_or_else(|| super::invalid("no device"))?;
    if let Some(lock) = &b.state.device_lock {
        lock.note(&format!(
            "{} {}",
            work.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            dev.display()
        ))?;
    }
    let (device_path, mount) = super::attach_volume::name_and_mount_path(b, &name, &dev).await?;
    Ok(serde_json::json!({
        "source_snapshot": source_snapshot,
        "cache_hit": hit,
        "bytes_read": bytes_read,
        "source_blocks": blocks,
        "size_gib": size,
        "work_file": work,
        "block_device": dev,
        "device": device_path,
        "mount_path": mount,
    }))
}

/// Releases the working image's loop devices (before the upload, and in the undo). Safe to run
/// twice.
pub fn release(b: &mut Build) -> Result<(), StepError> {
    if let Some(work) = &b.state.work_file {
        for dev in loopdev::find_for_file(work) {
            loopdev::detach(&dev)?;
        }
    }
    b.state.block_device = None;
    Ok(())
}

pub async fn undo(b: &mut Build) -> Result<(), StepError> {
    release(b)?;
    if let Some(work) = b.state.work_file.take() {
        remove_work(&work);
    }
    Ok(())
}

/// Removes a working image and its upload progress. Safe to run twice.
pub(super) fn remove_work(work: &std::path::Path) {
    for f in [work.to_owned(), super::upload_delta::progress_file(work)] {
        if let Err(e) = std::fs::remove_file(&f)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(file = %f.display(), error = %e, "could not remove the direct backend's working image");
        }
    }
}
