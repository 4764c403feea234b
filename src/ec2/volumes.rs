//! Volumes and attachments.

use super::wait::{Polling, Probe, until};
use super::{Ec2Error, api, tag_spec};
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{ResourceType, Tag, VolumeAttachmentState, VolumeState, VolumeType};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Poll interval for volume state: volumes are usually available within seconds.
pub const VOLUME_POLL: Duration = Duration::from_secs(2);
/// Give up on a volume after Packer's 40 tries at 15 s.
pub const VOLUME_DEADLINE: Duration = Duration::from_secs(600);
/// Poll interval for attachments (Packer polls every 5 s; attachments take 1-10 s).
pub const ATTACH_POLL: Duration = Duration::from_secs(1);
/// Give up on an attachment after Packer's 40 tries at 5 s.
pub const ATTACH_DEADLINE: Duration = Duration::from_secs(200);
/// Ready answers in a row for attachments. DescribeVolumes' eventual consistency shows up as a
/// missing attachment right after AttachVolume (packer#1854), which the wait treats as pending;
/// the block device node appearing afterwards is the second, independent confirmation.
pub const ATTACH_SUCCESSES: u32 = 1;
/// The history key of attachment waits.
pub const ATTACH_KIND: &str = "volume to attach";

/// What to create.
#[derive(Debug, Clone)]
pub struct NewVolume {
    /// Zone (the builder's).
    pub zone: String,
    /// Size in GiB (None: the snapshot's).
    pub size: Option<i32>,
    /// Volume type.
    pub volume_type: Option<String>,
    /// Source snapshot.
    pub snapshot_id: Option<String>,
    /// Encrypt.
    pub encrypted: Option<bool>,
    /// KMS key.
    pub kms_key_id: Option<String>,
    /// Tags (set at creation).
    pub tags: Vec<Tag>,
    /// Idempotency token.
    pub client_token: String,
}

/// CreateVolume. Idempotent through the client token: a retry returns the same volume.
pub async fn create(ec2: &Client, region: &str, v: &NewVolume) -> Result<String, Ec2Error> {
    let out = ec2
        .create_volume()
        .availability_zone(&v.zone)
        .set_size(v.size)
        .set_volume_type(v.volume_type.as_deref().map(VolumeType::from))
        .set_snapshot_id(v.snapshot_id.clone())
        .set_encrypted(v.encrypted)
        .set_kms_key_id(v.kms_key_id.clone())
        .tag_specifications(tag_spec(ResourceType::Volume, &v.tags))
        .client_token(&v.client_token)
        .send()
        .await
        .map_err(api(
            "CreateVolume",
            v.snapshot_id.clone().unwrap_or_else(|| "(blank)".into()),
            region,
        ))?;
    out.volume_id
        .ok_or_else(|| Ec2Error::Unexpected("CreateVolume returned no volume id".into()))
}

async fn describe(
    ec2: &Client,
    region: &str,
    id: &str,
) -> Result<Option<aws_sdk_ec2::types::Volume>, Ec2Error> {
    match ec2.describe_volumes().volume_ids(id).send().await {
        Ok(o) => Ok(o.volumes.unwrap_or_default().pop()),
        Err(e) => {
            let err = api("DescribeVolumes", id, region)(e);
            if err.is_not_found() {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

/// What makes one new volume's creation take longer than another's, as EC2 reports it: its
/// source (blank or a snapshot) and its size, to a power of two. Waits for volumes of the same
/// class share a history (`history.rs`).
pub fn class_of(v: &NewVolume) -> String {
    let source = if v.snapshot_id.is_some() {
        "from a snapshot"
    } else {
        "blank"
    };
    match v
        .size
        .and_then(|s| u32::try_from(s).ok())
        .filter(|s| *s > 0)
    {
        Some(s) => format!("{source}, up to {} GiB", s.next_power_of_two()),
        None => format!("{source}, of the snapshot's size"),
    }
}

/// Waits until the volume is `available`; `error` fails at once. `class` is the volume's
/// [`class_of`].
pub async fn wait_available(
    ec2: &Client,
    region: &str,
    id: &str,
    class: &str,
    polling: &Polling,
    cancel: &CancellationToken,
) -> Result<(), Ec2Error> {
    let spec = polling
        .wait(
            format!("volume {id} to become available"),
            VOLUME_POLL,
            VOLUME_DEADLINE,
            1,
        )
        .class(class);
    until(&spec, cancel, || async {
        Ok(match describe(ec2, region, id).await? {
            None => Probe::Pending("not visible yet".into()),
            Some(v) => match v.state {
                Some(VolumeState::Available) => Probe::Ready(()),
                Some(VolumeState::Error) => Probe::Terminal("error".into(), String::new()),
                Some(VolumeState::Deleting) | Some(VolumeState::Deleted) => {
                    Probe::Terminal("deleted".into(), String::new())
                }
                s => Probe::Pending(s.map(|s| s.as_str().to_owned()).unwrap_or_default()),
            },
        })
    })
    .await
}

/// AttachVolume, then waits for the attachment to be `attached` (twice in a row).
pub async fn attach(
    ec2: &Client,
    region: &str,
    id: &str,
    instance: &str,
    device: &str,
    polling: &Polling,
    cancel: &CancellationToken,
) -> Result<(), Ec2Error> {
    ec2.attach_volume()
        .volume_id(id)
        .instance_id(instance)
        .device(device)
        .send()
        .await
        .map_err(api("AttachVolume", id, region))?;
    let mut spec = polling.wait(
        format!("volume {id} to attach to {instance} as {device}"),
        ATTACH_POLL,
        ATTACH_DEADLINE,
        ATTACH_SUCCESSES,
    );
    // One history for every device name.
    spec.history_key = ATTACH_KIND.to_owned();
    until(&spec, cancel, || async {
        let v = describe(ec2, region, id).await?;
        let att = v.and_then(|v| {
            v.attachments
                .unwrap_or_default()
                .into_iter()
                .find(|a| a.instance_id.as_deref() == Some(instance))
        });
        Ok(match att.and_then(|a| a.state) {
            Some(VolumeAttachmentState::Attached) => Probe::Ready(()),
            Some(s) => Probe::Pending(s.as_str().to_owned()),
            None => Probe::Pending("no attachment yet".into()),
        })
    })
    .await
}

/// The instance the volume is attached to, if any.
pub async fn attached_to(ec2: &Client, region: &str, id: &str) -> Result<Option<String>, Ec2Error> {
    Ok(describe(ec2, region, id).await?.and_then(|v| {
        v.attachments
            .unwrap_or_default()
            .into_iter()
            .find_map(|a| a.instance_id)
    }))
}

/// DetachVolume and wait until the volume is `available`. Detaching a volume that is not attached
/// (or no longer exists) succeeds: safe to run twice.
pub async fn detach(
    ec2: &Client,
    region: &str,
    id: &str,
    polling: &Polling,
    cancel: &CancellationToken,
) -> Result<(), Ec2Error> {
    match describe(ec2, region, id).await? {
        None => return Ok(()),
        Some(v) if v.attachments.as_ref().is_none_or(|a| a.is_empty()) => return Ok(()),
        Some(_) => {}
    }
    if let Err(e) = ec2.detach_volume().volume_id(id).send().await {
        let err = api("DetachVolume", id, region)(e);
        if !(err.is_not_found() || err.code() == Some("IncorrectState")) {
            return Err(err);
        }
    }
    let spec = polling.wait(
        format!("volume {id} to detach"),
        ATTACH_POLL,
        ATTACH_DEADLINE,
        1,
    );
    until(&spec, cancel, || async {
        Ok(match describe(ec2, region, id).await? {
            None => Probe::Ready(()),
            Some(v)
                if v.attachments.as_ref().is_none_or(|a| a.is_empty())
                    && v.state == Some(VolumeState::Available) =>
            {
                Probe::Ready(())
            }
            Some(v) => Probe::Pending(v.state.map(|s| s.as_str().to_owned()).unwrap_or_default()),
        })
    })
    .await
}

/// DeleteVolume; a volume that no longer exists counts as deleted (safe to run twice).
pub async fn delete(ec2: &Client, region: &str, id: &str) -> Result<(), Ec2Error> {
    match ec2.delete_volume().volume_id(id).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let err = api("DeleteVolume", id, region)(e);
            if err.is_not_found() { Ok(()) } else { Err(err) }
        }
    }
}

/// Device names the instance has attached, as EC2 reports them.
pub async fn instance_devices(
    ec2: &Client,
    region: &str,
    instance: &str,
) -> Result<BTreeSet<String>, Ec2Error> {
    let out = ec2
        .describe_instances()
        .instance_ids(instance)
        .send()
        .await
        .map_err(api("DescribeInstances", instance, region))?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.block_device_mappings())
        .filter_map(|m| m.device_name.clone())
        .collect())
}
