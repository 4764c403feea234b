//! Step `mount-extra`: first makes the image's root mount `nodev,nosuid` (the host's
//! `post_mount_commands` are done), then mounts each `chroot_mounts` entry `[fstype, source, path]`
//! inside the image, except those the sandbox provides itself (proc, sysfs, devpts, binfmt_misc
//! and the `/dev` bind, see step `sandbox`): at `path` resolved within the mount (a link in the
//! image leads to another place in the image, never onto the host), created if missing; `bind`
//! sources are host paths (a relative one resolves against the working directory, as Packer's
//! `mount --bind` does). Each mount is made private and remembered by its kernel mount id. Undo
//! (always): unmount exactly those mounts, in reverse order.

use crate::host::image_fs::ImageFs;
use crate::host::mount;
use crate::pipeline::{Build, StepError};

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let mp = b.mount_path()?;
    // From here on device nodes and setuid files in the image are inert for kiln and for the
    // build's processes (the host's post_mount_commands, debootstrap among them, needed them).
    if let Some(id) = b.state.root_mount_id {
        mount::restrict(id, &mp)?;
    }
    let image = ImageFs::open(&mp)?;
    let mut done = Vec::new();
    for entry in b.plan.config.chroot_mounts.clone() {
        if super::sandbox::provided_by_sandbox(&entry) {
            continue;
        }
        let [fstype, source, path] = entry;
        let source = if fstype == "bind" {
            crate::template::provisioner::resolve(&b.plan.work_dir, &source)
                .display()
                .to_string()
        } else {
            source
        };
        (b.sink)(
            &format!("chroot_mounts {path}"),
            &format!("mount {fstype} {source} on {path}"),
        );
        match image.mount(&fstype, &source, &path) {
            Ok(m) => {
                done.push(m.host_path.clone());
                b.state.extra_mounts.push(m);
            }
            // binfmt_misc is in Packer's defaults but absent on many hosts; a build needs it only
            // to run foreign-architecture binaries.
            Err(e) if fstype == "binfmt_misc" => {
                tracing::warn!(error = %e, "skipping the binfmt_misc mount: this host does not offer it");
            }
            Err(e) => {
                return Err(super::invalid(format!(
                    "chroot_mounts entry [\"{fstype}\", \"{source}\", \"{path}\"]: {e}"
                )));
            }
        }
    }
    Ok(serde_json::json!({ "mounts": done }))
}

pub async fn undo(b: &mut Build) -> Result<(), StepError> {
    let Some(mp) = b.state.mount_path.clone() else {
        return Ok(());
    };
    while let Some(m) = b.state.extra_mounts.last() {
        mount::unmount_id(m.mount_id, &mp).await?;
        b.state.extra_mounts.pop();
    }
    Ok(())
}
