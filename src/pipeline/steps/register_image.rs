//! Step `register-image`: RegisterImage with the new snapshot as the root device. Block device
//! mappings come from `ami_block_device_mappings` (or from_scratch), otherwise from the source
//! image; `root_volume_size` sets or grows the root; `Encrypted` is cleared on every mapping (the
//! snapshot decides). Architecture, virtualization, ENA, SR-IOV, boot mode, UEFI data, TPM and
//! IMDS support as Packer sets them. Undo (on failure): deregister it and delete its snapshots.

use crate::ec2::{api, images, kiln_tags, tag_spec};
use crate::pipeline::state::ImageRecord;
use crate::pipeline::{Build, StepError};
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, ImdsSupportValues,
    ResourceType, TpmSupportValues, VolumeType,
};
use std::collections::BTreeMap;

pub(super) fn mappings(b: &Build, snapshot: &str, root: &str) -> Vec<BlockDeviceMapping> {
    let c = &b.plan.config;
    if c.from_scratch || !c.ami_block_device_mappings.is_empty() {
        return c
            .ami_block_device_mappings
            .iter()
            .map(|m| {
                let mut out = BlockDeviceMapping::builder().device_name(&m.device_name);
                if let Some(v) = &m.virtual_name {
                    return out.virtual_name(v).build();
                }
                if m.no_device {
                    return out.no_device("").build();
                }
                let is_root = m.device_name == root;
                let mut ebs = EbsBlockDevice::builder()
                    .delete_on_termination(m.delete_on_termination)
                    .set_volume_type(m.volume_type.as_deref().map(VolumeType::from))
                    .set_iops(m.iops.map(|v| v as i32))
                    .set_throughput(m.throughput.map(|v| v as i32));
                if is_root {
                    ebs = ebs
                        .snapshot_id(snapshot)
                        .set_volume_size(c.root_volume_size.or(m.volume_size).map(|v| v as i32));
                } else {
                    ebs = ebs
                        .set_snapshot_id(m.snapshot_id.clone())
                        .set_volume_size(m.volume_size.map(|v| v as i32));
                    if m.encrypted == Some(true) {
                        ebs = ebs.encrypted(true).set_kms_key_id(m.kms_key_id.clone());
                    }
                }
                out = out.ebs(ebs.build());
                out.build()
            })
            .collect();
    }
    let source = b.state.source.clone().unwrap_or_default();
    source
        .mappings
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if let Some(ebs) = m.ebs.take() {
                let mut e = ebs;
                e.encrypted = None;
                e.kms_key_id = None;
                if m.device_name.as_deref() == Some(root) {
                    e.snapshot_id = Some(snapshot.to_owned());
                    let orig = e.volume_size.unwrap_or(source.root_size);
                    e.volume_size = Some(
                        c.root_volume_size
                            .map(|s| (s as i32).max(orig))
                            .unwrap_or(orig),
                    );
                }
                m.ebs = Some(e);
            }
            m
        })
        .collect()
}

/// The AMI's tags: `tags`, rendered, plus kiln's (which win over a template's of the same
/// name): its build's, its ancestry, its template, bake key and SBOM (`ec2::lineage`).
pub fn image_tags(b: &Build, step: &str) -> Result<Vec<aws_sdk_ec2::types::Tag>, StepError> {
    use crate::ec2::lineage::{TAG_BAKE_KEY, TAG_SBOM, TAG_TEMPLATE, tag_value};
    let mut tags = BTreeMap::new();
    for (k, v) in &b.plan.config.tags {
        tags.insert(k.clone(), b.render("tags", v, &b.source_values())?);
    }
    tags.extend(b.state.ancestry.clone().unwrap_or_default());
    if !b.template_ref.is_empty() {
        tags.insert(TAG_TEMPLATE.to_owned(), tag_value(&b.template_ref));
    }
    if !b.template_name.is_empty() {
        tags.insert(
            crate::ec2::lineage::TAG_TEMPLATE_NAME.to_owned(),
            tag_value(&b.template_name),
        );
    }
    if let Some(k) = &b.bake_key {
        tags.insert(TAG_BAKE_KEY.to_owned(), tag_value(k));
    }
    // A resumed build skipped `sbom`: the earlier attempt wrote the document where the target
    // says, before its snapshot.
    let resumed = b.state.reused_snapshot || b.state.resume_upload;
    let sbom = b
        .state
        .sbom_uri
        .clone()
        .or_else(|| resumed.then(|| b.sbom.uri(&b.id)).flatten());
    if let Some(uri) = sbom {
        tags.insert(TAG_SBOM.to_owned(), tag_value(&uri));
    }
    Ok(kiln_tags(&b.build_ref(), step, &tags))
}

/// When resuming: the AMI an earlier attempt registered (found by the build's tag), if any.
async fn registered_before(b: &Build) -> Result<Option<String>, StepError> {
    registered_before_in(b, &b.clients.ec2, &b.region, "register-image").await
}

/// When resuming: the AMI an earlier attempt of this generation registered in `region` at `step`
/// (found by the build's and the step's tags), if any. Read only.
pub(super) async fn registered_before_in(
    b: &Build,
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    step: &str,
) -> Result<Option<String>, StepError> {
    if b.attempt <= 1 {
        return Ok(None);
    }
    let tag = |k: &str, v: &str| {
        aws_sdk_ec2::types::Filter::builder()
            .name(format!("tag:{k}"))
            .values(v)
            .build()
    };
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(tag(crate::ec2::TAG_BUILD_ID, &b.id))
        .filters(tag(crate::ec2::TAG_STEP, step))
        .send()
        .await
        .map_err(api("DescribeImages", b.id.clone(), region))?;
    // Only this generation's: a forced rebuild never adopts the previous build's AMI.
    let me = b.build_ref();
    Ok(out
        .images()
        .iter()
        .filter(|i| crate::ec2::made_by(i.tags(), &me))
        .find_map(|i| i.image_id().map(str::to_owned)))
}

/// The new image's root device: the template's `root_device_name`, else the source image's.
pub(super) fn root_device(b: &Build) -> String {
    b.plan
        .config
        .root_device_name
        .clone()
        .or_else(|| b.state.source.as_ref().map(|s| s.root_device_name.clone()))
        .unwrap_or_else(|| "/dev/xvda".into())
}

/// The new image's architecture: the template's for from_scratch, else the source image's (the
/// template's when the source reports none).
pub(super) fn architecture(b: &Build) -> String {
    let c = &b.plan.config;
    if c.from_scratch {
        return c.ami_architecture.clone();
    }
    b.state
        .source
        .as_ref()
        .and_then(|s| s.architecture.clone())
        .unwrap_or_else(|| c.ami_architecture.clone())
}

/// The RegisterImage call for `snapshot` as the template asks (everything but the name and the
/// step in kiln's tags): `register-image` sends it for the AMI, the boot test's instance method
/// for a private image it launches and deregisters.
pub(super) fn request(
    b: &Build,
    snapshot: &str,
    name: &str,
    step: &str,
) -> Result<aws_sdk_ec2::operation::register_image::builders::RegisterImageFluentBuilder, StepError>
{
    request_in(b, &b.clients.ec2, snapshot, name, step)
}

/// [`request`] made with `ec2` (another region's client: the direct backend registers its
/// snapshot in each region).
pub(super) fn request_in(
    b: &Build,
    ec2: &aws_sdk_ec2::Client,
    snapshot: &str,
    name: &str,
    step: &str,
) -> Result<aws_sdk_ec2::operation::register_image::builders::RegisterImageFluentBuilder, StepError>
{
    let c = &b.plan.config;
    let source = b.state.source.clone();
    let root = root_device(b);
    let description = match &c.ami_description {
        Some(d) => Some(b.render("ami_description", d, &b.source_values())?),
        None => None,
    };
    let arch = architecture(b);
    let virt = c
        .ami_virtualization_type
        .clone()
        .filter(|v| !v.is_empty())
        .or_else(|| source.as_ref().and_then(|s| s.virtualization_type.clone()));
    let hvm = virt.as_deref() == Some("hvm");
    let mut req = ec2
        .register_image()
        .name(name)
        .set_description(description)
        .root_device_name(&root)
        .architecture(ArchitectureValues::from(arch.as_str()))
        .set_virtualization_type(virt.clone())
        .set_block_device_mappings(Some(mappings(b, snapshot, &root)))
        .set_ena_support(
            c.ena_support
                .or_else(|| source.as_ref().and_then(|s| s.ena_support)),
        )
        .set_boot_mode(
            c.boot_mode
                .clone()
                .or_else(|| source.as_ref().and_then(|s| s.boot_mode.clone()))
                .as_deref()
                .map(BootModeValues::from),
        )
        .set_uefi_data(c.uefi_data.clone())
        .set_tpm_support(
            c.tpm_support
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(TpmSupportValues::from),
        )
        .set_imds_support(
            c.imds_support
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(ImdsSupportValues::from),
        )
        .tag_specifications(tag_spec(ResourceType::Image, &image_tags(b, step)?));
    if c.sriov_support {
        req = req.sriov_net_support("simple");
    } else if let Some(s) = source.as_ref().and_then(|s| s.sriov_net_support.clone()) {
        req = req.sriov_net_support(s);
    }
    if !hvm && let Some(src) = &source {
        req = req
            .set_kernel_id(src.kernel_id.clone())
            .set_ramdisk_id(src.ramdisk_id.clone());
    }
    Ok(req)
}

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    if let Some(ami) = registered_before(b).await? {
        let image =
            images::wait_available(&b.clients.ec2, &b.region, &ami, &b.polling, &b.cancel).await?;
        let snaps = images::snapshots_of(&image);
        b.state.images.insert(
            b.region.clone(),
            ImageRecord {
                ami_id: ami.clone(),
                snapshot_ids: snaps,
            },
        );
        return Ok(serde_json::json!({ "ami_id": ami, "region": b.region, "reused": true }));
    }
    let snapshot = b
        .state
        .snapshot_id
        .clone()
        .ok_or_else(|| super::invalid("no snapshot"))?;
    let name = b.render("ami_name", &b.plan.config.ami_name, &b.source_values())?;
    let req = request(b, &snapshot, &name, "register-image")?;
    let out = req
        .send()
        .await
        .map_err(api("RegisterImage", name.clone(), &b.region))?;
    let ami = out
        .image_id
        .ok_or_else(|| super::invalid("RegisterImage returned no image id"))?;
    b.state.images.insert(
        b.region.clone(),
        ImageRecord {
            ami_id: ami.clone(),
            snapshot_ids: vec![snapshot.clone()],
        },
    );
    let image =
        images::wait_available(&b.clients.ec2, &b.region, &ami, &b.polling, &b.cancel).await?;
    let snaps = images::snapshots_of(&image);
    if let Some(rec) = b.state.images.get_mut(&b.region) {
        for s in snaps {
            if !rec.snapshot_ids.contains(&s) {
                rec.snapshot_ids.push(s);
            }
        }
    }
    Ok(serde_json::json!({ "ami_id": ami, "name": name, "region": b.region }))
}

pub async fn undo(b: &mut Build) -> Result<(), StepError> {
    let Some(rec) = b.state.images.get(&b.region).cloned() else {
        return Ok(());
    };
    for s in images::remove(&b.clients.ec2, &b.region, &rec.ami_id).await? {
        b.backend.snapshot_deleted(&s);
    }
    b.state.images.remove(&b.region);
    Ok(())
}
