//! Step `publish-channels`: the last step of a successful build points each channel the build
//! names at its AMI, in every region it has one: SSM parameter
//! `/kiln/<team>/<template>/<channel>` (`crate::channels`), a new version of it, so launch
//! templates that read `resolve:ssm:` parameters launch the new image. Nothing to undo: it runs
//! after everything else succeeded, and a retry publishes the same AMIs again.

use crate::channels;
use crate::pipeline::{Build, StepError};
use std::collections::BTreeMap;

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let mut published: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for channel in &b.channels {
        let name = channels::parameter(b.team.as_str(), &b.template_name, channel)
            .map_err(StepError::Channel)?;
        for (region, image) in &b.state.images {
            let ssm = b.clients.ssm_in(region);
            channels::publish(&ssm, region, &name, &image.ami_id)
                .await
                .map_err(StepError::Channel)?;
            (b.sink)(
                "publish-channels",
                &format!("{name} in {region} -> {}", image.ami_id),
            );
            published
                .entry(region.clone())
                .or_default()
                .insert(channel.clone(), name.clone());
        }
    }
    Ok(serde_json::json!({ "parameters": published }))
}
