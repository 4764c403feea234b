//! Step `register-regions` (direct backend; in place of `copy-regions`): in each of
//! `ami_regions`, RegisterImage of the snapshot `upload-delta` wrote there, with the same name,
//! fields and tags as the build region's image, waited for in parallel (no CopyImage: the data is
//! there already). A resumed attempt reuses an image an earlier one registered (by tag).
//! `skip_save_build_region` removes the build region's image afterwards.
//! Undo (on failure): deregister them and delete their snapshots (as `copy-regions`' undo).

use crate::ec2::{api, images};
use crate::pipeline::state::ImageRecord;
use crate::pipeline::{Build, StepError};
use futures_util::future::join_all;

const STEP: &str = "register-regions";

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let c = b.plan.config.clone();
    let Some(src) = b.state.images.get(&b.region).cloned() else {
        return Err(super::invalid("no image in the build region"));
    };
    let name = match images::describe(&b.clients.ec2, &b.region, &src.ami_id)
        .await?
        .and_then(|i| i.name)
    {
        Some(n) => n,
        None => b.render("ami_name", &c.ami_name, &b.source_values())?,
    };
    let root = super::register_image::root_device(b);
    // Other EBS mappings name snapshots of the build region, which another region does not have.
    let foreign: Vec<String> = super::register_image::mappings(b, "", &root)
        .iter()
        .filter(|m| m.device_name() != Some(root.as_str()))
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id().map(str::to_owned)))
        .collect();
    let targets: Vec<String> = super::upload_delta::target_regions(b)
        .into_iter()
        .filter(|r| *r != b.region)
        .collect();
    if !targets.is_empty() && !foreign.is_empty() {
        return Err(super::invalid(format!(
            "ami_regions with backend direct: the image maps snapshots besides its root ({}), which exist only in {}; use backend ebs (CopyImage copies them) or drop those mappings",
            foreign.join(", "),
            b.region
        )));
    }
    let mut started = Vec::new();
    for r in &targets {
        let ec2 = b.clients.ec2_in(r);
        let snapshot = b
            .state
            .region_snapshots
            .get(r)
            .cloned()
            .ok_or_else(|| super::invalid(format!("no snapshot uploaded to {r}")))?;
        let ami = match super::register_image::registered_before_in(b, &ec2, r, STEP).await? {
            Some(a) => a,
            None => {
                let req = super::register_image::request_in(b, &ec2, &snapshot, &name, STEP)?;
                let out = req
                    .send()
                    .await
                    .map_err(api("RegisterImage", name.clone(), r))?;
                out.image_id
                    .ok_or_else(|| super::invalid("RegisterImage returned no image id"))?
            }
        };
        b.state.images.insert(
            r.clone(),
            ImageRecord {
                ami_id: ami.clone(),
                snapshot_ids: vec![snapshot],
            },
        );
        started.push((r.clone(), ami, ec2));
    }
    let waits = started.iter().map(|(r, ami, ec2)| {
        let (polling, cancel) = (b.polling, b.cancel.clone());
        async move { images::wait_available(ec2, r, ami, &polling, &cancel).await }
    });
    for result in join_all(waits).await {
        result?;
    }
    if c.skip_save_build_region && !targets.is_empty() {
        images::remove(&b.clients.ec2, &b.region, &src.ami_id).await?;
        b.state.images.remove(&b.region);
    }
    let images: Vec<_> = b
        .state
        .images
        .iter()
        .filter(|(r, _)| **r != b.region)
        .map(|(r, i)| serde_json::json!({"region": r, "ami_id": i.ami_id, "snapshot_id": i.snapshot_ids.first()}))
        .collect();
    Ok(serde_json::json!({ "images": images }))
}
