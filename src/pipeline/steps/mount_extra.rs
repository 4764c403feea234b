//! Step `mount-extra`: each `chroot_mounts` entry `[fstype, source, path]` mounted at
//! MOUNT_PATH/path (`--bind` for `bind`; a relative bind source resolves against the template's
//! directory), each made private. Undo (always): unmount in reverse order.

use crate::host::command::shell_quote;
use crate::host::mount;
use crate::pipeline::{Build, StepError};

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let mp = b
        .state
        .mount_path
        .clone()
        .ok_or_else(|| super::invalid("no mount path"))?;
    let mut done = Vec::new();
    for [fstype, source, path] in b.plan.config.chroot_mounts.clone() {
        let target = mp.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&target).map_err(crate::host::HostError::io(
            "creating the mount point",
            &target,
        ))?;
        let cmd = if fstype == "bind" {
            let src = crate::template::provisioner::resolve(&b.plan.template_dir, &source);
            format!(
                "mount --bind {} {}",
                shell_quote(&src.display().to_string()),
                shell_quote(&target.display().to_string())
            )
        } else {
            format!(
                "mount -t {} {} {}",
                shell_quote(&fstype),
                shell_quote(&source),
                shell_quote(&target.display().to_string())
            )
        };
        match b
            .host_command(&format!("chroot_mounts {path}"), &cmd, Vec::new())
            .await
        {
            Ok(()) => {}
            // binfmt_misc is in Packer's defaults but absent on many hosts; a build needs it only
            // to run foreign-architecture binaries.
            Err(e) if fstype == "binfmt_misc" => {
                tracing::warn!(error = %e, "skipping the binfmt_misc mount: this host does not offer it");
                continue;
            }
            Err(e) => return Err(e),
        }
        b.state.extra_mounts.push(target.clone());
        mount::make_private(&target)?;
        done.push(target);
    }
    Ok(serde_json::json!({ "mounts": done }))
}

pub async fn undo(b: &mut Build) -> Result<(), StepError> {
    let Some(mp) = b.state.mount_path.clone() else {
        return Ok(());
    };
    while let Some(target) = b.state.extra_mounts.last().cloned() {
        for m in mount::mounts_under(&target) {
            mount::unmount(&m, &mp).await?;
        }
        b.state.extra_mounts.pop();
    }
    Ok(())
}
