//! Step `publish-channels`: the last step of a successful build points each channel the build
//! names at its AMI, in every region it has one: SSM parameter
//! `/kiln/<team>/<template>/<channel>` (`crate::channels`), a new version of it, so launch
//! templates that read `resolve:ssm:` parameters launch the new image. A channel that cannot be
//! published (SSM refuses, or a parameter of that name is not a channel) is a warning in the
//! outputs (`not_published`), not a failed build: the AMIs are good, and failing here would
//! deregister them under the channels already published. Nothing to undo; a retry publishes the
//! same AMIs again.

use crate::channels;
use crate::pipeline::{Build, StepError};
use std::collections::BTreeMap;

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let mut published: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut not_published = Vec::new();
    for channel in &b.channels {
        let name = channels::parameter(b.team.as_str(), &b.template_name, channel)
            .map_err(StepError::Channel)?;
        for (region, image) in &b.state.images {
            let ssm = b.clients.ssm_in(region);
            match channels::publish(&ssm, region, &name, &image.ami_id).await {
                Ok(()) => {
                    (b.sink)(
                        "publish-channels",
                        &format!("{name} in {region} -> {}", image.ami_id),
                    );
                    published
                        .entry(region.clone())
                        .or_default()
                        .insert(channel.clone(), name.clone());
                }
                Err(e) => {
                    tracing::warn!(build_id = %b.id, channel = %name, region = %region, error = %e, "channel not published");
                    (b.sink)("publish-channels", &format!("warning: {e}"));
                    not_published.push(e.to_string());
                }
            }
        }
    }
    Ok(serde_json::json!({ "parameters": published, "not_published": not_published }))
}
