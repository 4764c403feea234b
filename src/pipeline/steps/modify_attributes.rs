//! Step `modify-attributes`: launch permissions (`ami_users`, `ami_groups`, org and OU ARNs) on
//! the AMI and createVolumePermission (`snapshot_users`, `snapshot_groups`) on its snapshots, in
//! every region. Tags were set when each resource was created.

use crate::ec2::images;
use crate::pipeline::{Build, StepError};

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let c = b.plan.config.clone();
    for (r, rec) in b.state.images.clone() {
        let ec2 = b.clients.ec2_in(&r);
        images::share(
            &ec2,
            &r,
            &rec.ami_id,
            &c.ami_users,
            &c.ami_groups,
            &c.ami_org_arns,
            &c.ami_ou_arns,
        )
        .await?;
        for s in &rec.snapshot_ids {
            images::share_snapshot(&ec2, &r, s, &c.snapshot_users, &c.snapshot_groups).await?;
        }
    }
    Ok(
        serde_json::json!({ "ami_users": c.ami_users, "ami_groups": c.ami_groups, "snapshot_users": c.snapshot_users }),
    )
}
