//! Step `copy-regions`: CopyImage to each of `ami_regions` (ClientToken from the build, its source AMI and
//! the region, see `ec2::client_token`; tags
//! and encryption set at the call), waited for in parallel; the copies' snapshots get the
//! snapshot tags. `skip_save_build_region` removes the build region's image afterwards.
//! Undo (on failure): deregister the copies and delete their snapshots.

use crate::ec2::{api, client_token, images, kiln_tags, tag_spec};
use crate::pipeline::state::ImageRecord;
use crate::pipeline::{Build, StepError};
use aws_sdk_ec2::types::ResourceType;
use futures_util::future::join_all;

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let c = b.plan.config.clone();
    let Some(src) = b.state.images.get(&b.region).cloned() else {
        return Err(super::invalid("no image to copy"));
    };
    // The copies carry the registered image's name (an AMI reused from an earlier attempt keeps
    // its own, so a retried CopyImage with the same client token asks for the same thing).
    let name = match images::describe(&b.clients.ec2, &b.region, &src.ami_id)
        .await?
        .and_then(|i| i.name)
    {
        Some(n) => n,
        None => b.render("ami_name", &c.ami_name, &b.source_values())?,
    };
    let description = match &c.ami_description {
        Some(d) => Some(b.render("ami_description", d, &b.source_values())?),
        None => None,
    };
    let image_tags = super::register_image::image_tags(b, "copy-regions")?;
    // A copy of a one-snapshot image names its original: the direct backend builds on it there.
    let mut snap_extra = super::snapshot::snapshot_tags(b)?;
    if let [one] = src.snapshot_ids.as_slice() {
        snap_extra.insert(crate::ec2::TAG_COPY_OF.into(), one.clone());
    }
    let snap_tags = kiln_tags(&b.build_ref(), "copy-regions", &snap_extra);
    let targets: Vec<String> = c
        .ami_regions
        .iter()
        .filter(|r| **r != b.region)
        .cloned()
        .collect();
    let mut started = Vec::new();
    for r in &targets {
        let ec2 = b.clients.ec2_in(r);
        let out = ec2
            .copy_image()
            .source_image_id(&src.ami_id)
            .source_region(&b.region)
            .name(&name)
            .set_description(description.clone())
            // Same build, generation, source AMI and region: the same copy (a resumed attempt
            // reuses the AMI, so its retried CopyImage answers with the copy already made); a
            // retry after a failure registers a new AMI and so asks for a new copy.
            .client_token(client_token(&b.build_ref(), &["copy", r, &src.ami_id]))
            .set_encrypted(c.encrypt_boot)
            .set_kms_key_id(
                c.region_kms_key_ids
                    .get(r)
                    .cloned()
                    .or(c.kms_key_id.clone())
                    .filter(|_| c.encrypt_boot == Some(true)),
            )
            .tag_specifications(tag_spec(ResourceType::Image, &image_tags))
            .tag_specifications(tag_spec(ResourceType::Snapshot, &snap_tags))
            .send()
            .await
            .map_err(api("CopyImage", src.ami_id.clone(), r))?;
        let ami = out
            .image_id
            .ok_or_else(|| super::invalid("CopyImage returned no image id"))?;
        b.state.images.insert(
            r.clone(),
            ImageRecord {
                ami_id: ami.clone(),
                snapshot_ids: Vec::new(),
            },
        );
        started.push((r.clone(), ami, ec2));
    }
    let waits = started.iter().map(|(r, ami, ec2)| {
        let polling = b.polling;
        let cancel = b.cancel.clone();
        async move {
            (
                r.clone(),
                images::wait_available(ec2, r, ami, &polling, &cancel).await,
            )
        }
    });
    let mut first_error = None;
    for (r, result) in join_all(waits).await {
        match result {
            Ok(image) => {
                let snaps = images::snapshots_of(&image);
                for (from, to) in src.snapshot_ids.iter().zip(snaps.iter()) {
                    b.backend.snapshot_copied(from, to)?;
                }
                if let Some(rec) = b.state.images.get_mut(&r) {
                    rec.snapshot_ids = snaps;
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e.into());
    }
    if c.skip_save_build_region && !targets.is_empty() {
        for s in images::remove(&b.clients.ec2, &b.region, &src.ami_id).await? {
            b.backend.snapshot_deleted(&s);
        }
        b.state.images.remove(&b.region);
    }
    let copies: Vec<_> = b
        .state
        .images
        .iter()
        .filter(|(r, _)| **r != b.region)
        .map(|(r, i)| serde_json::json!({"region": r, "ami_id": i.ami_id}))
        .collect();
    Ok(serde_json::json!({ "copies": copies }))
}

pub async fn undo(b: &mut Build) -> Result<(), StepError> {
    let copies: Vec<(String, ImageRecord)> = b
        .state
        .images
        .iter()
        .filter(|(r, _)| **r != b.region)
        .map(|(r, i)| (r.clone(), i.clone()))
        .collect();
    let mut first_error = None;
    for (r, rec) in copies {
        let ec2 = b.clients.ec2_in(&r);
        match images::remove(&ec2, &r, &rec.ami_id).await {
            Ok(snaps) => {
                for s in snaps.iter().chain(rec.snapshot_ids.iter()) {
                    b.backend.snapshot_deleted(s);
                }
                b.state.images.remove(&r);
            }
            Err(e) => {
                tracing::error!(region = %r, ami = %rec.ami_id, error = %e, "could not remove a region copy");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
