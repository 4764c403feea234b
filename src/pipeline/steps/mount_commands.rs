//! Steps `pre-mount-commands` and `post-mount-commands`: host commands through `command_wrapper`
//! with `{{.Device}}` and `{{.MountPath}}`. After each pre-mount command the kernel re-reads the
//! device's partition table, so `mkfs {{.Device}}1` can follow `parted {{.Device}} ...`.

use crate::host::devices;
use crate::pipeline::{Build, StepError};

async fn run_list(
    b: &mut Build,
    field: &str,
    rescan: bool,
) -> Result<serde_json::Value, StepError> {
    let cmds = if field == "pre_mount_commands" {
        b.plan.config.pre_mount_commands.clone()
    } else {
        b.plan.config.post_mount_commands.clone()
    };
    let env = vec![
        (
            "DEVICE".to_owned(),
            b.state
                .device_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
        (
            "MOUNT_PATH".to_owned(),
            b.state
                .mount_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
    ];
    for (i, c) in cmds.iter().enumerate() {
        let name = format!("{field}[{i}]");
        let cmd = b.render(&name, c, &b.device_values())?;
        b.host_command(&name, &cmd, env.clone()).await?;
        if rescan && let Some(dev) = b.state.block_device.clone() {
            devices::rescan_partitions(&dev).await?;
        }
    }
    Ok(serde_json::json!({ "commands": cmds.len() }))
}

pub async fn run_pre(b: &mut Build) -> Result<serde_json::Value, StepError> {
    run_list(b, "pre_mount_commands", true).await
}

pub async fn run_post(b: &mut Build) -> Result<serde_json::Value, StepError> {
    run_list(b, "post_mount_commands", false).await
}
