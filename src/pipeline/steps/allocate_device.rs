//! Step `allocate-device`: a free attachment point, locked for the whole build (one lock per
//! device, not one per host), checked against the instance's EC2 attachments and /dev. Its
//! DescribeInstances also confirms that the builder instance exists. A template's `device_path`
//! must be an attachment point `/dev/(sd|xvd)[f-p]`. Undo (always): the aliases kiln recorded for
//! the device removed (only those), the lock's note cleared and the lock released.

use crate::ec2::volumes;
use crate::host::{devices, lock::DeviceLock};
use crate::pipeline::{Build, StepError};

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let instance = b
        .state
        .instance
        .clone()
        .ok_or_else(|| super::invalid("no instance info"))?;
    let in_use =
        volumes::instance_devices(&b.clients.ec2, &b.region, &instance.instance_id).await?;
    let (name, lock) = match &b.plan.config.device_path {
        Some(p) => {
            // Validated with the template; checked again: the name makes lock and alias paths.
            let name = devices::device_name_of(p)?;
            let lock = DeviceLock::try_lock(&b.lock_dir, &name)?.ok_or_else(|| {
                super::invalid(format!(
                    "Device is in use: {p} (another build on this host holds it)"
                ))
            })?;
            if in_use.contains(p) {
                return Err(super::invalid(format!(
                    "Device is in use: {p} (attached to {})",
                    instance.instance_id
                )));
            }
            (name, lock)
        }
        None => devices::allocate(&b.lock_dir, &in_use, b.backend.device_dir())?,
    };
    b.state.device_name = Some(name.clone());
    b.state.device_lock = Some(lock);
    Ok(serde_json::json!({ "device": format!("/dev/{name}") }))
}

pub fn undo(b: &mut Build) -> Result<(), StepError> {
    if let Some(name) = &b.state.device_name {
        devices::remove_aliases(name);
    }
    if let Some(lock) = &b.state.device_lock {
        let _ = lock.note("");
    }
    b.state.device_lock = None;
    Ok(())
}
