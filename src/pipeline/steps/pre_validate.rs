//! Step `pre-validate`: the AMI name is free in every target region (unless `force_deregister`),
//! and `ami_regions` are real regions (unless `skip_region_validation`). An AMI of that name that
//! this build made in an earlier attempt (its `kiln:build-id` and `kiln:generation` tags) is not
//! a conflict: a resumed build reuses it (register-image) or its copy (copy-regions).

use super::invalid;
use crate::ec2::{api, images};
use crate::pipeline::{Build, StepError};

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    // A channel that cannot be a parameter name fails now, not after the whole build.
    for channel in &b.channels {
        crate::channels::check_channel(channel).map_err(StepError::Channel)?;
    }
    check_tags(&b.plan.config.tags)?;
    let c = &b.plan.config;
    if !c.ami_regions.is_empty() && !c.skip_region_validation {
        let out = b
            .clients
            .ec2
            .describe_regions()
            .all_regions(true)
            .send()
            .await
            .map_err(api("DescribeRegions", "all", &b.region))?;
        let known: Vec<String> = out
            .regions()
            .iter()
            .filter_map(|r| r.region_name.clone())
            .collect();
        for r in &c.ami_regions {
            if !known.contains(r) {
                return Err(invalid(format!(
                    "ami_regions: {r} is not a valid AWS region (set skip_region_validation to use it anyway)"
                )));
            }
        }
    }
    let name = b.render("ami_name", &c.ami_name, &b.source_values())?;
    if c.force_deregister {
        let mut regions = vec![b.region.clone()];
        regions.extend(c.ami_regions.iter().filter(|r| **r != b.region).cloned());
        for r in regions {
            let ec2 = b.clients.ec2_in(&r);
            for img in images::by_name(&ec2, &r, &name).await? {
                if let Some(why) = super::deregister::not_the_teams(&img, &b.team, &r) {
                    return Err(invalid(why));
                }
            }
        }
    } else {
        let mut regions = vec![b.region.clone()];
        regions.extend(c.ami_regions.iter().filter(|r| **r != b.region).cloned());
        let me = b.build_ref();
        for r in regions {
            let ec2 = b.clients.ec2_in(&r);
            let found = images::by_name(&ec2, &r, &name).await?;
            let (ours, others): (Vec<_>, Vec<_>) = found
                .into_iter()
                .partition(|i| b.attempt > 1 && crate::ec2::made_by(i.tags(), &me));
            for img in &ours {
                tracing::info!(build_id = %b.id, region = %r, ami = ?img.image_id(), "the AMI name is taken by this build's own earlier attempt; it is reused");
            }
            if let Some(img) = others.into_iter().next() {
                return Err(invalid(format!(
                    "AMI Name: '{name}' is used by an existing AMI: {} in {r} (set force_deregister to replace it)",
                    img.image_id.unwrap_or_default()
                )));
            }
        }
    }
    Ok(serde_json::json!({ "ami_name": name }))
}

/// EC2 holds at most 50 tags on a resource.
const MAX_TAGS: usize = 50;
/// The tags kiln adds to an AMI at most: build id, team, step, generation, parent AMI, parent
/// build id, parent bake key, template, template name, bake key, SBOM.
const KILN_TAGS: usize = 11;

/// A template's `tags` must leave room for kiln's and never name one of kiln's own (`kiln:`):
/// caught here, before the build, not by RegisterImage after it.
fn check_tags(tags: &std::collections::BTreeMap<String, String>) -> Result<(), StepError> {
    if let Some(k) = tags.keys().find(|k| k.starts_with("kiln:")) {
        return Err(super::invalid(format!(
            "tags: {k:?} is one of kiln's own tags (kiln: names its build, team and ancestry): rename it"
        )));
    }
    if tags.len() + KILN_TAGS > MAX_TAGS {
        return Err(super::invalid(format!(
            "tags: {} tags, and kiln adds up to {KILN_TAGS}: EC2 holds at most {MAX_TAGS} on an AMI; keep at most {}",
            tags.len(),
            MAX_TAGS - KILN_TAGS
        )));
    }
    Ok(())
}
