//! Images and snapshots: finding the source image, snapshots with progress, registration, region
//! copies, sharing, and removal.

use super::wait::{Polling, Probe, until};
use super::{Ec2Error, api, tag_spec};
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    Filter, Image, ImageState, LaunchPermission, LaunchPermissionModifications, ResourceType,
    SnapshotState, Tag,
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The longest pause of a snapshot wait before its progress predicts the end (Packer polls every
/// 15 s; the prediction then decides, see `schedule.rs`).
pub const SNAPSHOT_POLL: Duration = Duration::from_secs(5);
/// Give up on a snapshot after Packer's 120 tries at 15 s.
pub const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(1800);
/// Poll interval for images.
pub const IMAGE_POLL: Duration = Duration::from_secs(5);
/// Give up on an image (copies across regions are slow) after Packer's 120 tries at 15 s.
pub const IMAGE_DEADLINE: Duration = Duration::from_secs(1800);

/// One image by id.
pub async fn describe(ec2: &Client, region: &str, id: &str) -> Result<Option<Image>, Ec2Error> {
    match ec2.describe_images().image_ids(id).send().await {
        Ok(o) => Ok(o.images.unwrap_or_default().pop()),
        Err(e) => {
            let err = api("DescribeImages", id, region)(e);
            if err.is_not_found() {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

/// Images matching filters and owners; with `most_recent` the newest, otherwise exactly one must
/// match.
pub async fn find(
    ec2: &Client,
    region: &str,
    filters: &[(String, String)],
    owners: &[String],
    most_recent: bool,
) -> Result<Image, Ec2Error> {
    let mut req = ec2.describe_images().set_owners(if owners.is_empty() {
        None
    } else {
        Some(owners.to_vec())
    });
    for (k, v) in filters {
        req = req.filters(Filter::builder().name(k).values(v).build());
    }
    let what = format!("filters {filters:?} owners {owners:?}");
    let mut images = req
        .send()
        .await
        .map_err(api("DescribeImages", what.clone(), region))?
        .images
        .unwrap_or_default();
    images.sort_by(|a, b| a.creation_date.cmp(&b.creation_date));
    match (images.len(), most_recent) {
        (0, _) => Err(Ec2Error::Unexpected(format!(
            "no image in {region} matches source_ami_filter {what}"
        ))),
        (1, _) | (_, true) => images
            .pop()
            .ok_or_else(|| Ec2Error::Unexpected("no image".into())),
        (n, false) => Err(Ec2Error::Unexpected(format!(
            "{n} images in {region} match source_ami_filter {what}: set most_recent = true or narrow the filter"
        ))),
    }
}

/// The image a template's `source_ami_filter` names now (see [`find`]).
pub async fn find_source(
    ec2: &Client,
    region: &str,
    f: &crate::template::config::AmiFilter,
) -> Result<Image, Ec2Error> {
    let filters: Vec<(String, String)> = f
        .filters
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    find(ec2, region, &filters, &f.owners, f.most_recent).await
}

/// Images this account owns named `name`.
pub async fn by_name(ec2: &Client, region: &str, name: &str) -> Result<Vec<Image>, Ec2Error> {
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name("name").values(name).build())
        .send()
        .await
        .map_err(api("DescribeImages", name, region))?;
    Ok(out.images.unwrap_or_default())
}

/// CreateSnapshot with tags set at creation.
pub async fn create_snapshot(
    ec2: &Client,
    region: &str,
    volume: &str,
    description: &str,
    tags: &[Tag],
) -> Result<String, Ec2Error> {
    let out = ec2
        .create_snapshot()
        .volume_id(volume)
        .description(description)
        .tag_specifications(tag_spec(ResourceType::Snapshot, tags))
        .send()
        .await
        .map_err(api("CreateSnapshot", volume, region))?;
    out.snapshot_id
        .ok_or_else(|| Ec2Error::Unexpected("CreateSnapshot returned no snapshot id".into()))
}

/// Waits for a snapshot to complete, logging its progress.
pub async fn wait_snapshot(
    ec2: &Client,
    region: &str,
    id: &str,
    polling: &Polling,
    cancel: &CancellationToken,
) -> Result<(), Ec2Error> {
    let spec = polling.wait(
        format!("snapshot {id} to complete"),
        SNAPSHOT_POLL,
        SNAPSHOT_DEADLINE,
        1,
    );
    wait_snapshot_as(ec2, region, id, &spec, cancel).await
}

/// [`wait_snapshot`] polling as `spec` says (`scripts/bench waits` compares schedules with it).
pub async fn wait_snapshot_as(
    ec2: &Client,
    region: &str,
    id: &str,
    spec: &super::wait::Wait,
    cancel: &CancellationToken,
) -> Result<(), Ec2Error> {
    until(spec, cancel, || async {
        let out = ec2.describe_snapshots().snapshot_ids(id).send().await;
        let snap = match out {
            Ok(o) => o.snapshots.unwrap_or_default().pop(),
            Err(e) => {
                let err = api("DescribeSnapshots", id, region)(e);
                if err.is_not_found() {
                    None
                } else {
                    return Err(err);
                }
            }
        };
        Ok(match snap {
            None => Probe::Pending("not visible yet".into()),
            Some(s) => match s.state {
                Some(SnapshotState::Completed) => Probe::Ready(()),
                Some(SnapshotState::Error) => {
                    Probe::Terminal("error".into(), s.state_message.unwrap_or_default())
                }
                st => {
                    let progress = s.progress.unwrap_or_default();
                    let state = format!(
                        "{} {progress}",
                        st.map(|s| s.as_str().to_owned()).unwrap_or_default()
                    );
                    // EC2 reports whole percent ("45%"): the wait predicts the end from it.
                    match progress.trim_end_matches('%').trim().parse::<f64>() {
                        Ok(p) => Probe::Progress(state, p / 100.0),
                        Err(_) => Probe::Pending(state),
                    }
                }
            },
        })
    })
    .await
}

/// Waits for an image to become `available`; `failed`, `invalid` or `deregistered` fail at once.
pub async fn wait_available(
    ec2: &Client,
    region: &str,
    id: &str,
    polling: &Polling,
    cancel: &CancellationToken,
) -> Result<Image, Ec2Error> {
    // Per region: copies to other regions take longer than registering in the build's.
    let spec = polling
        .wait(
            format!("image {id} in {region} to become available"),
            IMAGE_POLL,
            IMAGE_DEADLINE,
            1,
        )
        .class(region);
    until(&spec, cancel, || async {
        Ok(match describe(ec2, region, id).await? {
            None => Probe::Pending("not visible yet".into()),
            Some(img) => match img.state.clone() {
                Some(ImageState::Available) => Probe::Ready(img),
                Some(
                    s @ (ImageState::Failed
                    | ImageState::Invalid
                    | ImageState::Deregistered
                    | ImageState::Error),
                ) => Probe::Terminal(
                    s.as_str().to_owned(),
                    img.state_reason.and_then(|r| r.message).unwrap_or_default(),
                ),
                s => Probe::Pending(s.map(|s| s.as_str().to_owned()).unwrap_or_default()),
            },
        })
    })
    .await
}

/// The snapshot ids an image maps.
pub fn snapshots_of(image: &Image) -> Vec<String> {
    image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id.clone()))
        .collect()
}

/// Deregisters an image and deletes its snapshots. A missing image counts as removed (safe to run
/// twice). Returns the snapshots deleted.
pub async fn remove(ec2: &Client, region: &str, id: &str) -> Result<Vec<String>, Ec2Error> {
    let Some(image) = describe(ec2, region, id).await? else {
        return Ok(Vec::new());
    };
    let snaps = snapshots_of(&image);
    if let Err(e) = ec2.deregister_image().image_id(id).send().await {
        let err = api("DeregisterImage", id, region)(e);
        if !err.is_not_found() {
            return Err(err);
        }
    }
    for s in &snaps {
        delete_snapshot(ec2, region, s).await?;
    }
    Ok(snaps)
}

/// Deregisters an image and keeps its snapshots (an image registered only to test a snapshot
/// another image maps). A missing image counts as deregistered (safe to run twice).
pub async fn deregister(ec2: &Client, region: &str, id: &str) -> Result<(), Ec2Error> {
    match ec2.deregister_image().image_id(id).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let err = api("DeregisterImage", id, region)(e);
            if err.is_not_found() { Ok(()) } else { Err(err) }
        }
    }
}

/// DeleteSnapshot; a missing snapshot counts as deleted (safe to run twice).
pub async fn delete_snapshot(ec2: &Client, region: &str, id: &str) -> Result<(), Ec2Error> {
    match ec2.delete_snapshot().snapshot_id(id).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let err = api("DeleteSnapshot", id, region)(e);
            if err.is_not_found() { Ok(()) } else { Err(err) }
        }
    }
}

/// Adds launch permissions (accounts, groups, organizations, OUs).
pub async fn share(
    ec2: &Client,
    region: &str,
    id: &str,
    users: &[String],
    groups: &[String],
    orgs: &[String],
    ous: &[String],
) -> Result<(), Ec2Error> {
    let mut perms = Vec::new();
    perms.extend(
        users
            .iter()
            .map(|u| LaunchPermission::builder().user_id(u).build()),
    );
    perms.extend(groups.iter().map(|g| {
        LaunchPermission::builder()
            .group(aws_sdk_ec2::types::PermissionGroup::from(g.as_str()))
            .build()
    }));
    perms.extend(
        orgs.iter()
            .map(|o| LaunchPermission::builder().organization_arn(o).build()),
    );
    perms.extend(ous.iter().map(|o| {
        LaunchPermission::builder()
            .organizational_unit_arn(o)
            .build()
    }));
    if perms.is_empty() {
        return Ok(());
    }
    ec2.modify_image_attribute()
        .image_id(id)
        .launch_permission(
            LaunchPermissionModifications::builder()
                .set_add(Some(perms))
                .build(),
        )
        .send()
        .await
        .map_err(api("ModifyImageAttribute", id, region))?;
    Ok(())
}

/// Adds createVolumePermission on a snapshot.
pub async fn share_snapshot(
    ec2: &Client,
    region: &str,
    id: &str,
    users: &[String],
    groups: &[String],
) -> Result<(), Ec2Error> {
    if users.is_empty() && groups.is_empty() {
        return Ok(());
    }
    ec2.modify_snapshot_attribute()
        .snapshot_id(id)
        .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
        .operation_type(aws_sdk_ec2::types::OperationType::Add)
        .set_user_ids(if users.is_empty() {
            None
        } else {
            Some(users.to_vec())
        })
        .set_group_names(if groups.is_empty() {
            None
        } else {
            Some(groups.to_vec())
        })
        .send()
        .await
        .map_err(api("ModifySnapshotAttribute", id, region))?;
    Ok(())
}

/// This account's snapshots carrying every tag of `tags` (`(key, value)`), as DescribeSnapshots
/// reports them. Read only.
pub async fn snapshots_tagged(
    ec2: &Client,
    region: &str,
    tags: &[(&str, &str)],
) -> Result<Vec<aws_sdk_ec2::types::Snapshot>, Ec2Error> {
    let filters = tags
        .iter()
        .map(|(k, v)| {
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{k}"))
                .values(*v)
                .build()
        })
        .collect();
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .set_filters(Some(filters))
        .send()
        .await
        .map_err(api("DescribeSnapshots", format!("{tags:?}"), region))?;
    Ok(out.snapshots.unwrap_or_default())
}

/// A snapshot as DescribeSnapshots reports it, `None` when it does not exist. Read only.
pub async fn snapshot(
    ec2: &Client,
    region: &str,
    id: &str,
) -> Result<Option<aws_sdk_ec2::types::Snapshot>, Ec2Error> {
    match ec2.describe_snapshots().snapshot_ids(id).send().await {
        Ok(out) => Ok(out.snapshots.unwrap_or_default().into_iter().next()),
        Err(e) => {
            let err = api("DescribeSnapshots", id, region)(e);
            if err.is_not_found() {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}
