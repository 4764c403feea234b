//! Step `snapshot`: CreateSnapshot of the detached volume, tagged at creation, waited for with
//! progress; the loop backend copies the volume's data. Undo (on failure): delete it.

use crate::ec2::{images, kiln_tags};
use crate::pipeline::{Build, StepError};
use std::collections::BTreeMap;

/// The tags for snapshots: `tags`, then `snapshot_tags`, rendered.
pub fn snapshot_tags(b: &Build) -> Result<BTreeMap<String, String>, StepError> {
    let mut tags = BTreeMap::new();
    for (k, v) in b
        .plan
        .config
        .tags
        .iter()
        .chain(b.plan.config.snapshot_tags.iter())
    {
        tags.insert(k.clone(), b.render("snapshot_tags", v, &b.source_values())?);
    }
    Ok(tags)
}

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let volume = b
        .state
        .volume_id
        .clone()
        .ok_or_else(|| super::invalid("no volume"))?;
    let tags = kiln_tags(&b.build_ref(), "snapshot", &snapshot_tags(b)?);
    let description = format!("kiln build {} of {}", b.id, b.plan.name);
    let id =
        images::create_snapshot(&b.clients.ec2, &b.region, &volume, &description, &tags).await?;
    b.state.snapshot_id = Some(id.clone());
    let copied = b.backend.snapshot_created(&volume, &id)?;
    images::wait_snapshot(&b.clients.ec2, &b.region, &id, &b.polling, &b.cancel).await?;
    Ok(
        serde_json::json!({ "snapshot_id": id, "data_bytes": copied, "file": b.backend.snapshot_file(&id) }),
    )
}

pub async fn undo(b: &mut Build) -> Result<(), StepError> {
    let Some(id) = b.state.snapshot_id.clone() else {
        return Ok(());
    };
    // An image registered from it must go first (the register undo runs before this one).
    images::delete_snapshot(&b.clients.ec2, &b.region, &id).await?;
    b.backend.snapshot_deleted(&id);
    b.state.snapshot_id = None;
    Ok(())
}
