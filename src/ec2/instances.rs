//! Test instances: the boot test's `instance` method launches the new image on a small instance,
//! reads its serial console, and terminates it. Nothing else in kiln launches instances.

use super::wait::{Polling, Probe, until};
use super::{Ec2Error, api, tag_spec};
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Image, InstanceStateName, InstanceType, ResourceType,
    ShutdownBehavior, Tag,
};
use base64::Engine as _;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Polls of an instance's state while it terminates. EC2 terminates a small instance in 30–60 s.
const TERMINATE_POLL: Duration = Duration::from_secs(5);
/// Longest wait for termination: AWS documents instances stuck in `shutting-down` for up to an
/// hour only in rare host failures; 10 minutes covers the normal case with room, and the undo
/// reports the instance id if it gives up.
const TERMINATE_DEADLINE: Duration = Duration::from_secs(600);

/// What to launch.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The image.
    pub image_id: String,
    /// The instance type (`t3.micro`, ...).
    pub instance_type: String,
    /// The subnet; `None` lets EC2 pick the default VPC's.
    pub subnet_id: Option<String>,
    /// The image's root mapping, its volume deleted with the instance whatever the image says.
    pub root: BlockDeviceMapping,
    /// Tags for the instance and its volumes, at creation.
    pub tags: Vec<Tag>,
    /// The idempotency token: a retried call returns the same instance.
    pub client_token: String,
}

/// `image`'s root mapping for RunInstances: the same snapshot and size, deleted on termination
/// (an image may say otherwise; a test instance must not leave its volume).
pub fn root_mapping(image: &Image) -> Option<BlockDeviceMapping> {
    let root = image.root_device_name()?;
    let m = image
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some(root))?;
    let ebs = m.ebs()?;
    Some(
        BlockDeviceMapping::builder()
            .device_name(root)
            .ebs(
                EbsBlockDevice::builder()
                    .set_snapshot_id(ebs.snapshot_id.clone())
                    .set_volume_size(ebs.volume_size)
                    .set_volume_type(ebs.volume_type.clone())
                    .delete_on_termination(true)
                    .build(),
            )
            .build(),
    )
}

/// RunInstances of one instance that terminates itself if the guest shuts down. Returns its id.
///
/// Side effects: an instance (and its root volume, deleted with it when the image says so). Safe
/// to call twice with the same client token (EC2 returns the first instance).
pub async fn launch(ec2: &Client, region: &str, l: &Launch) -> Result<String, Ec2Error> {
    let out = ec2
        .run_instances()
        .image_id(&l.image_id)
        .instance_type(InstanceType::from(l.instance_type.as_str()))
        .min_count(1)
        .max_count(1)
        .set_subnet_id(l.subnet_id.clone())
        .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
        .block_device_mappings(l.root.clone())
        .client_token(&l.client_token)
        .tag_specifications(tag_spec(ResourceType::Instance, &l.tags))
        .tag_specifications(tag_spec(ResourceType::Volume, &l.tags))
        .send()
        .await
        .map_err(api("RunInstances", l.image_id.clone(), region))?;
    out.instances()
        .first()
        .and_then(|i| i.instance_id.clone())
        .ok_or_else(|| Ec2Error::Unexpected("RunInstances returned no instance".into()))
}

/// The instance's state, or `None` when EC2 does not know it.
pub async fn state(
    ec2: &Client,
    region: &str,
    id: &str,
) -> Result<Option<(InstanceStateName, String)>, Ec2Error> {
    match ec2.describe_instances().instance_ids(id).send().await {
        Ok(out) => Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(id))
            .and_then(|i| {
                let s = i.state()?.name()?.clone();
                let reason = i
                    .state_reason()
                    .and_then(|r| r.message())
                    .unwrap_or_default()
                    .to_owned();
                Some((s, reason))
            })),
        Err(e) => {
            let err = api("DescribeInstances", id, region)(e);
            if err.is_not_found() {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

/// The instance's serial console so far (EC2 keeps the last 64 KiB), decoded. Asks for the
/// latest output (Nitro instances; others answer their buffered output).
///
/// Side effects: none. Safe to call twice.
pub async fn console(ec2: &Client, region: &str, id: &str) -> Result<String, Ec2Error> {
    let out = match ec2
        .get_console_output()
        .instance_id(id)
        .latest(true)
        .send()
        .await
    {
        Ok(o) => o,
        Err(e) => {
            let err = api("GetConsoleOutput", id, region)(e);
            // Instances on the Xen hypervisor have no "latest" output: read the buffered one.
            if err.code() != Some("UnsupportedOperation") {
                return Err(err);
            }
            ec2.get_console_output()
                .instance_id(id)
                .send()
                .await
                .map_err(api("GetConsoleOutput", id, region))?
        }
    };
    let text = out.output().unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| Ec2Error::Unexpected(format!("GetConsoleOutput of {id}: not base64: {e}")))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Terminates the instance and waits until it is `terminated`. A missing instance counts as
/// terminated.
///
/// Side effects: the instance and the volumes it deletes on termination are gone. Safe to call
/// twice. Waits even when `cancel` is set (an undo must not leave the instance running).
pub async fn terminate(
    ec2: &Client,
    region: &str,
    id: &str,
    polling: &Polling,
) -> Result<(), Ec2Error> {
    if let Err(e) = ec2.terminate_instances().instance_ids(id).send().await {
        let err = api("TerminateInstances", id, region)(e);
        if !err.is_not_found() {
            return Err(err);
        }
        return Ok(());
    }
    let spec = polling.wait(
        format!("instance {id} in {region} to terminate"),
        TERMINATE_POLL,
        TERMINATE_DEADLINE,
        1,
    );
    until(&spec, &CancellationToken::new(), || async {
        Ok(match state(ec2, region, id).await? {
            None | Some((InstanceStateName::Terminated, _)) => Probe::Ready(()),
            Some((s, _)) => Probe::Pending(s.as_str().to_owned()),
        })
    })
    .await
}

/// The instances matching `filter` (a `tag:` filter) that are not terminated.
///
/// Side effects: none.
pub async fn live_matching(
    ec2: &Client,
    region: &str,
    filter: aws_sdk_ec2::types::Filter,
) -> Result<Vec<aws_sdk_ec2::types::Instance>, Ec2Error> {
    let out = ec2
        .describe_instances()
        .filters(filter)
        .send()
        .await
        .map_err(api("DescribeInstances", "tagged instances", region))?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            !matches!(
                i.state().and_then(|s| s.name()),
                Some(InstanceStateName::Terminated)
            )
        })
        .cloned()
        .collect())
}

/// The ids of the instances `build` (its team, id and generation) made that are not terminated
/// (what a dead attempt's boot test left).
pub async fn of_build(
    ec2: &Client,
    region: &str,
    build: &super::BuildRef,
) -> Result<Vec<String>, Ec2Error> {
    let filter = aws_sdk_ec2::types::Filter::builder()
        .name(format!("tag:{}", super::TAG_BUILD_ID))
        .values(&build.id)
        .build();
    Ok(live_matching(ec2, region, filter)
        .await?
        .into_iter()
        .filter(|i| super::made_by(i.tags(), build))
        .filter_map(|i| i.instance_id)
        .collect())
}
