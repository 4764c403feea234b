//! Step `deregister` (`force_deregister`): AMIs of the same name in every target region are
//! deregistered, with their snapshots when `force_delete_snapshot` is set. A resumed build's own
//! AMIs (this generation's, from an earlier attempt) are kept: register-image and copy-regions
//! reuse them, and removing them would remove the snapshot the build resumes from.

use crate::ec2::{api, images};
use crate::pipeline::{Build, StepError};
use crate::team::{TAG_TEAM, Team};

/// Why `force_deregister` may not remove `img` for a build of `team`: the image is another
/// team's (its `kiln:team` tag), or, for a team other than the default, not kiln's at all (no
/// tag: made by hand or before teams, so the default team's). `None` when it is the team's own.
pub(super) fn not_the_teams(
    img: &aws_sdk_ec2::types::Image,
    team: &Team,
    region: &str,
) -> Option<String> {
    let tag = img
        .tags()
        .iter()
        .find(|t| t.key() == Some(TAG_TEAM))
        .and_then(|t| t.value());
    let owner = Team::of_tag(tag);
    (owner != *team).then(|| {
        format!(
            "force_deregister: the AMI {} in {region} that has this name belongs to team {owner}, not to this build's team {team}; a team replaces only its own images (choose another ami_name)",
            img.image_id().unwrap_or_default()
        )
    })
}

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let name = b.render("ami_name", &b.plan.config.ami_name, &b.source_values())?;
    let mut regions = vec![b.region.clone()];
    regions.extend(
        b.plan
            .config
            .ami_regions
            .iter()
            .filter(|r| **r != b.region)
            .cloned(),
    );
    let mut removed = Vec::new();
    let me = b.build_ref();
    for r in regions {
        let ec2 = b.clients.ec2_in(&r);
        for img in images::by_name(&ec2, &r, &name).await? {
            let id = img.image_id.clone().unwrap_or_default();
            // pre-validate refused another team's image already; an image named so since then
            // is refused here too, never removed.
            if let Some(why) = not_the_teams(&img, &b.team, &r) {
                return Err(StepError::Invalid(why));
            }
            if b.attempt > 1 && crate::ec2::made_by(img.tags(), &me) {
                tracing::info!(build_id = %b.id, region = %r, ami = %id, "kept this build's own AMI of an earlier attempt");
                continue;
            }
            if b.plan.config.force_delete_snapshot {
                for s in images::remove(&ec2, &r, &id).await? {
                    b.backend.snapshot_deleted(&s);
                }
            } else {
                ec2.deregister_image()
                    .image_id(&id)
                    .send()
                    .await
                    .map_err(api("DeregisterImage", id.clone(), &r))?;
            }
            removed.push(format!("{r}:{id}"));
        }
    }
    Ok(serde_json::json!({ "deregistered": removed }))
}
