//! Step `instance-info`: the builder instance's id, zone and region from IMDSv2, confirmed by
//! DescribeInstances.

use crate::ec2::{api, identity};
use crate::pipeline::{Build, StepError};

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let me = identity::read().await?;
    b.clients
        .ec2_in(&me.region)
        .describe_instances()
        .instance_ids(&me.instance_id)
        .send()
        .await
        .map_err(api("DescribeInstances", me.instance_id.clone(), &me.region))?;
    if me.region != b.region {
        return Err(super::invalid(format!(
            "the template builds in {} but this builder instance runs in {}: a chroot build attaches a volume to the builder, so it must build in the builder's region (remove `region` or run kiln there)",
            b.region, me.region
        )));
    }
    let out = serde_json::to_value(&me).unwrap_or_default();
    b.state.instance = Some(me);
    Ok(out)
}
