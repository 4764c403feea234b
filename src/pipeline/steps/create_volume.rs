//! Step `create-volume`: the build volume, from the source's root snapshot (grown to
//! `root_volume_size` if larger) or blank for from_scratch; tagged at creation with the build id;
//! idempotent through a ClientToken derived from the build id, generation, attempt and source
//! snapshot (see `ec2::client_token`). Undo (always): delete it.

use crate::ec2::{client_token, kiln_tags, volumes};
use crate::pipeline::{Build, StepError};

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let c = &b.plan.config;
    let instance = b
        .state
        .instance
        .clone()
        .ok_or_else(|| super::invalid("no instance info"))?;
    let (snapshot, size, vtype) = match &b.state.source {
        Some(src) => {
            let size = c
                .root_volume_size
                .map(|s| s as i32)
                .unwrap_or(src.root_size)
                .max(src.root_size);
            (
                Some(src.root_snapshot.clone()),
                size,
                c.root_volume_type.clone().or(src.root_volume_type.clone()),
            )
        }
        None => (
            None,
            c.root_volume_size.unwrap_or(0) as i32,
            Some(c.root_volume_type.clone().unwrap_or_else(|| "gp2".into())),
        ),
    };
    let mut tags = std::collections::BTreeMap::new();
    for (k, v) in &c.root_volume_tags {
        tags.insert(
            k.clone(),
            b.render("root_volume_tags", v, &b.source_values())?,
        );
    }
    let spec = volumes::NewVolume {
        zone: instance.availability_zone.clone(),
        size: Some(size),
        volume_type: vtype,
        snapshot_id: snapshot.clone(),
        encrypted: c.root_volume_encrypt_boot,
        kms_key_id: c.root_volume_kms_key_id.clone(),
        tags: kiln_tags(&b.build_ref(), "create-volume", &tags),
        // Each attempt makes its own volume (reclaim removed earlier attempts'), from its source.
        client_token: client_token(
            &b.build_ref(),
            &[
                "root-volume",
                &b.attempt.to_string(),
                snapshot.as_deref().unwrap_or("blank"),
            ],
        ),
    };
    let id = volumes::create(&b.clients.ec2, &b.region, &spec).await?;
    b.state.volume_id = Some(id.clone());
    let class = volumes::class_of(&spec);
    let (ec2, polling) = (&b.clients.ec2, &b.polling);
    volumes::wait_available(ec2, &b.region, &id, &class, polling, &b.cancel).await?;
    b.backend
        .volume_created(&id, size as u64, snapshot.as_deref())?;
    Ok(serde_json::json!({ "volume_id": id, "size_gib": size, "from_snapshot": snapshot }))
}

pub async fn undo(b: &mut Build) -> Result<(), StepError> {
    let Some(id) = b.state.volume_id.clone() else {
        return Ok(());
    };
    volumes::delete(&b.clients.ec2, &b.region, &id).await?;
    b.backend.volume_deleted(&id);
    b.state.volume_id = None;
    Ok(())
}
