//! Step `instance-info`: the builder instance's id, zone and region from IMDSv2 (EC2 confirms the
//! instance in `allocate-device`, whose DescribeInstances reads its attachments).

use crate::ec2::identity;
use crate::pipeline::{Build, StepError};

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let me = identity::read().await?;
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
