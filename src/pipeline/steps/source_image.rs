//! Step `source-image`: the source AMI by id or `source_ami_filter`; its root device must be EBS.

use super::invalid;
use crate::ec2::images;
use crate::pipeline::state::SourceImage;
use crate::pipeline::{Build, StepError};

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let c = &b.plan.config;
    let image = match (&c.source_ami, &c.source_ami_filter) {
        (Some(id), _) if !id.is_empty() => images::describe(&b.clients.ec2, &b.region, id)
            .await?
            .ok_or_else(|| {
            invalid(format!(
                "source_ami {id} does not exist in {} (or is not shared with this account)",
                b.region
            ))
        })?,
        (_, Some(f)) => images::find_source(&b.clients.ec2, &b.region, f).await?,
        _ => return Err(invalid("source_ami or source_ami_filter is required.")),
    };
    let id = image.image_id.clone().unwrap_or_default();
    if image.root_device_type().map(|t| t.as_str()) != Some("ebs") {
        return Err(invalid(format!(
            "The root device of the source AMI must be EBS-backed. ({id} is {})",
            image
                .root_device_type()
                .map(|t| t.as_str())
                .unwrap_or("unknown")
        )));
    }
    let root_name = image.root_device_name().unwrap_or_default().to_owned();
    let root = image
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some(root_name.as_str()))
        .and_then(|m| m.ebs())
        .ok_or_else(|| {
            invalid(format!(
                "the source AMI {id} has no EBS mapping for its root device {root_name}"
            ))
        })?;
    let src = SourceImage {
        id: id.clone(),
        name: image.name().unwrap_or_default().to_owned(),
        root_device_name: root_name.clone(),
        root_snapshot: root.snapshot_id().unwrap_or_default().to_owned(),
        root_size: root.volume_size().unwrap_or(0),
        root_volume_type: root.volume_type().map(|t| t.as_str().to_owned()),
        architecture: image.architecture().map(|a| a.as_str().to_owned()),
        virtualization_type: image.virtualization_type().map(|v| v.as_str().to_owned()),
        ena_support: image.ena_support(),
        sriov_net_support: image.sriov_net_support().map(str::to_owned),
        boot_mode: image.boot_mode().map(|m| m.as_str().to_owned()),
        kernel_id: image.kernel_id().map(str::to_owned),
        ramdisk_id: image.ramdisk_id().map(str::to_owned),
        creation_date: image.creation_date().unwrap_or_default().to_owned(),
        owner: image.owner_id().unwrap_or_default().to_owned(),
        tags: image
            .tags()
            .iter()
            .map(|t| {
                (
                    t.key().unwrap_or_default().to_owned(),
                    t.value().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        mappings: image.block_device_mappings().to_vec(),
    };
    if src.root_snapshot.is_empty() {
        return Err(invalid(format!(
            "the source AMI {id}'s root device {root_name} has no snapshot"
        )));
    }
    // The image's parent in its ancestry tags; the parent's own kiln tags count only when this
    // account owns it (anyone can tag an image they share with kiln's tag names).
    // (Asked only when the parent carries kiln's tags: a marketplace or community image costs no
    // call.)
    let kiln_tagged = [crate::ec2::TAG_BUILD_ID, crate::ec2::lineage::TAG_BAKE_KEY]
        .iter()
        .any(|k| src.tags.contains_key(*k));
    let own = kiln_tagged
        && crate::ec2::lineage::owned_by_self(&b.clients.ec2, &b.region, &src.id).await?;
    b.state.ancestry = Some(crate::ec2::lineage::ancestry_tags(
        Some((&src.id, &src.tags)),
        own,
    ));
    let mut out = serde_json::to_value(&src).unwrap_or_default();
    out["owned_by_this_account"] = own.into();
    b.state.source = Some(src);
    Ok(out)
}
