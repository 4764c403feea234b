//! Step `upload-delta` (direct backend; in place of `snapshot`): the blocks of the working image
//! that differ from the source snapshot (by the checksums kept from the read) go to a snapshot
//! started on top of it, in the build region and in every `ami_regions` region at once. In
//! another region the parent is the source snapshot's copy there (tagged `kiln:copy-of`); a
//! region without one gets a full upload. Each snapshot is tagged at creation and waited for
//! until EC2 reports it completed. The snapshot ids and the blocks written are kept next to the
//! working image (`<image>.upload.json`): a resumed attempt on this host continues the same
//! snapshots. At the end the working image is removed (its data is in the snapshots).
//! Undo (on failure): delete the snapshots.

use crate::ebs::delta::{Delta, changed_blocks};
use crate::ebs::write::{self, NewSnapshot, Uploaded};
use crate::ebs::{BLOCK_SIZE, BlockMap, GIB};
use crate::ec2::{TAG_COPY_OF, TAG_STEP, client_token, images, kiln_tags};
use crate::pipeline::{Build, StepError};
use aws_sdk_ec2::types::SnapshotState;
use futures_util::future::join_all;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Minutes a started snapshot may stay pending (StartSnapshot's Timeout; AWS's default is 60).
/// A crashed build resumed within this continues its snapshot; later, it starts a new one.
const SNAPSHOT_TIMEOUT_MIN: i32 = 60;
/// Blocks written between two saves of the upload progress: a resumed upload repeats at most
/// this many PutSnapshotBlock calls per region.
const SAVE_EVERY: usize = 16;

/// Where the upload's progress for working image `work` is kept.
pub(super) fn progress_file(work: &Path) -> PathBuf {
    work.with_extension("upload.json")
}

/// One region's upload, as kept in the progress file.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct RegionProgress {
    snapshot: String,
    parent: Option<String>,
    written: BTreeSet<u64>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Progress {
    regions: BTreeMap<String, RegionProgress>,
}

fn load(path: &Path) -> Progress {
    std::fs::read(path)
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or_default()
}

fn save(path: &Path, p: &Progress) {
    let tmp = path.with_extension("upload.json.partial");
    let ok = serde_json::to_vec(p)
        .ok()
        .is_some_and(|t| std::fs::write(&tmp, t).is_ok() && std::fs::rename(&tmp, path).is_ok());
    if !ok {
        tracing::warn!(file = %path.display(), "could not save the upload progress: a resumed upload starts over");
    }
}

/// The regions the image goes to: the build region first, then `ami_regions`.
pub(super) fn target_regions(b: &Build) -> Vec<String> {
    let mut v = vec![b.region.clone()];
    for r in &b.plan.config.ami_regions {
        if !v.contains(r) {
            v.push(r.clone());
        }
    }
    v
}

/// The parent in `region` and whether it is encrypted: the source root snapshot in the build
/// region, its copy elsewhere (one DescribeSnapshots either way).
async fn parent_in(
    b: &Build,
    region: &str,
    source: &str,
) -> Result<Option<(String, bool)>, StepError> {
    let ec2 = b.clients.ec2_in(region);
    let found = if region == b.region {
        images::snapshot(&ec2, region, source)
            .await?
            .into_iter()
            .collect()
    } else {
        images::snapshots_tagged(&ec2, region, &[(TAG_COPY_OF, source)])
            .await?
            .into_iter()
            .filter(|s| s.state() == Some(&SnapshotState::Completed))
            .collect::<Vec<_>>()
    };
    Ok(found.iter().find_map(|s| {
        s.snapshot_id()
            .map(|id| (id.to_owned(), s.encrypted().unwrap_or(false)))
    }))
}

/// One region's upload: its parent (none: a full upload) and what StartSnapshot says of
/// encryption.
struct Target {
    region: String,
    parent: Option<String>,
    encrypted: Option<bool>,
    kms_key_arn: Option<String>,
}

/// Encryption as the template asks, within what StartSnapshot can do (AWS, "Encryption outcomes
/// for EBS direct APIs"): a child of an encrypted parent is encrypted (with the template's key if
/// it names one); a child of an unencrypted parent cannot be encrypted, so `encrypt_boot = true`
/// on an unencrypted source uploads the whole image without a parent, encrypted; and
/// `encrypt_boot = false` on an encrypted source is an error naming the field.
fn encryption(
    b: &Build,
    region: String,
    parent: Option<(String, bool)>,
) -> Result<Target, StepError> {
    let c = &b.plan.config;
    let key = c
        .region_kms_key_ids
        .get(&region)
        .cloned()
        .or(c.kms_key_id.clone());
    let (parent, parent_encrypted) = match parent {
        Some((p, encrypted)) => (Some(p), encrypted),
        None => (None, false),
    };
    let target = match (parent, parent_encrypted, c.encrypt_boot) {
        (Some(p), true, Some(false)) => {
            return Err(super::invalid(format!(
                "encrypt_boot = false, but the source snapshot {p} in {region} is encrypted: EBS cannot make an unencrypted image of it; drop encrypt_boot or use a source whose snapshot is not encrypted"
            )));
        }
        (Some(p), true, _) => Target {
            region,
            parent: Some(p),
            encrypted: None,
            kms_key_arn: key,
        },
        (Some(_), false, Some(true)) | (None, _, Some(true)) => Target {
            region,
            parent: None,
            encrypted: Some(true),
            kms_key_arn: key,
        },
        (parent, _, _) => Target {
            region,
            parent,
            encrypted: None,
            kms_key_arn: None,
        },
    };
    Ok(target)
}

/// Crash injection for tests: `KILN_FAULT_CRASH_AFTER_BLOCKS=N` kills the process with SIGKILL
/// once N blocks are written and saved, as a dying builder would mid-upload.
fn crash_after_blocks() -> Option<usize> {
    std::env::var("KILN_FAULT_CRASH_AFTER_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
}

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let work = match &b.state.work_file {
        Some(w) => w.clone(),
        None => super::read_source::work_file(b)?,
    };
    b.state.work_file = Some(work.clone());
    let size_gib = std::fs::metadata(&work)
        .map_err(|e| super::invalid(format!("the working image {}: {e}", work.display())))?
        .len()
        .div_ceil(GIB);
    let source = b.state.source.as_ref().map(|s| s.root_snapshot.clone());
    let parent_map = match &source {
        Some(s) => b
            .backend
            .snapshot_cache()
            .and_then(|c| c.load(s))
            .map(|c| c.map)
            .ok_or_else(|| {
                super::invalid(format!(
                    "the block map of the source snapshot {s} is not in this builder's cache"
                ))
            })?,
        None => BlockMap::default(),
    };
    // Each region's parent and encryption first: they decide which block lists are needed.
    let mut targets = Vec::new();
    for r in target_regions(b) {
        let parent = match &source {
            Some(s) => parent_in(b, &r, s).await?,
            None => None,
        };
        targets.push(encryption(b, r, parent)?);
    }
    let (delta, full) = {
        let work = work.clone();
        let cancel = b.cancel.clone();
        let need_delta = targets.iter().any(|t| t.parent.is_some());
        let need_full = targets.iter().any(|t| t.parent.is_none());
        tokio::task::spawn_blocking(move || {
            let delta = if need_delta {
                changed_blocks(&work, &parent_map, &cancel)?
            } else {
                Delta::new()
            };
            let full = if need_full {
                changed_blocks(&work, &BlockMap::default(), &cancel)?
            } else {
                Delta::new()
            };
            // Without a parent anywhere, what changed is the whole image.
            let delta = if need_delta { delta } else { full.clone() };
            Ok::<_, crate::ebs::EbsError>((delta, full))
        })
        .await
        .map_err(|e| super::invalid(format!("the block comparison stopped: {e}")))??
    };
    let progress_path = progress_file(&work);
    let mut progress = load(&progress_path);
    let tags = super::snapshot::snapshot_tags(b)?;
    let description = format!("kiln build {} of {}", b.id, b.plan.name);
    let mut plans = Vec::new();
    let mut first: Option<String> = None;
    for Target {
        region: r,
        parent,
        encrypted,
        kms_key_arn,
    } in targets
    {
        let ec2 = b.clients.ec2_in(&r);
        let kept = progress.regions.get(&r).cloned();
        let state = match &kept {
            Some(k) if k.parent == parent => images::snapshot(&ec2, &r, &k.snapshot)
                .await?
                .and_then(|s| s.state().cloned()),
            _ => None,
        };
        let (snapshot, done) = match kept {
            // Completed before the crash: nothing left to write (complete() answers again).
            Some(k) if state == Some(SnapshotState::Completed) => {
                let all = if parent.is_some() { &delta } else { &full };
                (k.snapshot, all.keys().copied().collect())
            }
            Some(k) if state == Some(SnapshotState::Pending) => (k.snapshot, k.written),
            stale => {
                // An earlier attempt's snapshot that cannot be continued (timed out, or on
                // another parent): removed by id before a new one starts, never left behind.
                if let Some(k) = stale {
                    images::delete_snapshot(&ec2, &r, &k.snapshot).await?;
                }
                let mut t = tags.clone();
                if let Some(f) = &first {
                    t.insert(TAG_COPY_OF.into(), f.clone());
                }
                let spec = NewSnapshot {
                    volume_size_gib: size_gib,
                    parent: parent.clone(),
                    tags: kiln_tags(&b.build_ref(), "upload-delta", &t)
                        .into_iter()
                        .filter_map(|t| Some((t.key?, t.value?)))
                        .collect(),
                    description: description.clone(),
                    // Each attempt's own: a resumed upload continues the snapshot in the
                    // progress file; anything else starts anew.
                    client_token: client_token(
                        &b.build_ref(),
                        &["direct", &r, &b.attempt.to_string()],
                    ),
                    encrypted,
                    kms_key_arn,
                    timeout_minutes: SNAPSHOT_TIMEOUT_MIN,
                };
                let id = write::start(&b.clients.ebs_in(&r), &r, &spec).await?;
                (id, BTreeSet::new())
            }
        };
        b.state.region_snapshots.insert(r.clone(), snapshot.clone());
        if r == b.region {
            b.state.snapshot_id = Some(snapshot.clone());
            first = Some(snapshot.clone());
        }
        progress.regions.insert(
            r.clone(),
            RegionProgress {
                snapshot: snapshot.clone(),
                parent: parent.clone(),
                written: done.clone(),
            },
        );
        let completed = state == Some(SnapshotState::Completed);
        plans.push((r, snapshot, parent, done, completed));
    }
    save(&progress_path, &progress);
    let progress = Mutex::new((progress, 0usize));
    let crash_at = crash_after_blocks();
    let uploads = plans.iter().map(|(r, snapshot, parent, done, completed)| {
        let blocks: &Delta = if parent.is_some() { &delta } else { &full };
        let (progress, progress_path, work) = (&progress, &progress_path, &work);
        let written = move |index: u64| {
            let Ok(mut p) = progress.lock() else { return };
            if let Some(rp) = p.0.regions.get_mut(r) {
                rp.written.insert(index);
            }
            p.1 += 1;
            if p.1.is_multiple_of(SAVE_EVERY) || crash_at == Some(p.1) {
                save(progress_path, &p.0);
            }
            if crash_at == Some(p.1) {
                tracing::warn!(
                    blocks = p.1,
                    "KILN_FAULT_CRASH_AFTER_BLOCKS: killing this process"
                );
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            }
        };
        let ebs = b.clients.ebs_in(r);
        let ec2 = b.clients.ec2_in(r);
        let (polling, cancel) = (b.polling, b.cancel.clone());
        async move {
            if *completed {
                return Ok((Uploaded::default(), blocks.len()));
            }
            let to = write::Target {
                ebs: &ebs,
                region: r,
                snapshot,
                file: work,
            };
            let up = write::upload(to, blocks, done, &written, &cancel).await?;
            write::complete(&ebs, r, snapshot, blocks).await?;
            images::wait_snapshot(&ec2, r, snapshot, &polling, &cancel).await?;
            Ok::<(Uploaded, usize), StepError>((up, blocks.len()))
        }
    });
    let results = join_all(uploads).await;
    let mut regions = Vec::new();
    let mut first_error = None;
    for ((r, snapshot, parent, _, _), result) in plans.iter().zip(results) {
        match result {
            Ok((up, blocks)) => regions.push(serde_json::json!({
                "region": r,
                "snapshot_id": snapshot,
                "parent": parent,
                "full_upload": parent.is_none(),
                "blocks": blocks,
                "puts": up.puts,
                "throttled": up.throttled,
                "bytes": up.bytes,
                "min_window": up.min_window,
            })),
            Err(e) => {
                tracing::error!(region = %r, snapshot = %snapshot, error = %e, "upload failed");
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // The data is in the snapshots now.
    super::read_source::remove_work(&work);
    b.state.work_file = None;
    Ok(serde_json::json!({
        "snapshot_id": b.state.snapshot_id,
        "changed_blocks": delta.len(),
        "changed_bytes": delta.len() as u64 * BLOCK_SIZE,
        // The blocks of the whole image, when a region needed them (a full upload).
        "image_blocks": (!full.is_empty()).then_some(full.len()),
        "regions": regions,
    }))
}

/// The snapshots the upload progress next to working image `work` names (a resumed upload's).
pub(super) fn kept_snapshots(work: &Path) -> Vec<String> {
    load(&progress_file(work))
        .regions
        .into_values()
        .map(|r| r.snapshot)
        .collect()
}

/// The regions' snapshots of this build's generation that `upload-delta` made, by region
/// (reclaim uses it). Read only.
pub(super) async fn made_before(
    b: &Build,
) -> Result<BTreeMap<String, Vec<aws_sdk_ec2::types::Snapshot>>, StepError> {
    let me = b.build_ref();
    let mut out = BTreeMap::new();
    for r in target_regions(b) {
        let ec2 = b.clients.ec2_in(&r);
        let found = images::snapshots_tagged(
            &ec2,
            &r,
            &[
                (crate::ec2::TAG_BUILD_ID, &b.id),
                (TAG_STEP, "upload-delta"),
            ],
        )
        .await?
        .into_iter()
        .filter(|s| crate::ec2::made_by(s.tags(), &me))
        .collect();
        out.insert(r, found);
    }
    Ok(out)
}

pub async fn undo(b: &mut Build) -> Result<(), StepError> {
    let snaps = std::mem::take(&mut b.state.region_snapshots);
    let mut first_error = None;
    for (r, id) in snaps {
        let ec2 = b.clients.ec2_in(&r);
        if let Err(e) = images::delete_snapshot(&ec2, &r, &id).await {
            tracing::error!(region = %r, snapshot = %id, error = %e, "could not delete an uploaded snapshot");
            b.state.region_snapshots.insert(r, id);
            first_error.get_or_insert(e);
        }
    }
    if b.state.region_snapshots.is_empty() {
        b.state.snapshot_id = None;
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
