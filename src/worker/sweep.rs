//! What dead builds left on this builder host, cleaned up when a worker starts: mounts and loop
//! devices of device locks no live build holds, and kiln volumes still attached to this instance.

use crate::aws::Clients;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// Detaches kiln's volumes that are attached to this instance at a device no live build holds (a
/// dead worker's), each with the clients of the team its `kiln:team` tag names (`team_clients`;
/// its build role may detach only its team's volumes), else the worker's own; what is still
/// mounted from the volume's node on this host is unmounted first (a mounted volume's detach
/// would not complete on EC2, and once its node is gone nothing names that mount any more).
/// They stay for the build's next attempt to reclaim, or for `kiln gc`.
pub async fn sweep_attachments(
    clients: &Clients,
    team_clients: &[(crate::team::Team, Clients)],
    instance_id: &str,
    lock_dir: &Path,
    backend: &crate::backend::Backend,
) {
    let filters = [
        aws_sdk_ec2::types::Filter::builder()
            .name("attachment.instance-id")
            .values(instance_id)
            .build(),
        aws_sdk_ec2::types::Filter::builder()
            .name("tag-key")
            .values(crate::ec2::TAG_BUILD_ID)
            .build(),
    ];
    let Ok(out) = clients
        .ec2
        .describe_volumes()
        .set_filters(Some(filters.to_vec()))
        .send()
        .await
    else {
        return;
    };
    for v in out.volumes() {
        let (Some(id), Some(device)) = (
            v.volume_id(),
            v.attachments().first().and_then(|a| a.device()),
        ) else {
            continue;
        };
        let name = device.trim_start_matches("/dev/").replacen("sd", "xvd", 1);
        let Ok(Some(lock)) = crate::host::lock::DeviceLock::try_lock(lock_dir, &name) else {
            continue;
        };
        // `kiln build --on-error=abort` kept it attached on purpose, for a look.
        if crate::host::lock::DeviceLock::read_note(lock_dir, &name)
            .is_some_and(|n| crate::host::lock::DeviceLock::is_kept(&n))
        {
            continue;
        }
        if let Some(dev) = backend.node_now(id, device, None) {
            for m in crate::host::mount::mounts_of(&dev) {
                match crate::host::mount::unmount_tree(&m).await {
                    Ok(_) => {
                        tracing::warn!(volume = id, mount = %m.display(), "unmounted what a dead build left mounted")
                    }
                    Err(e) => {
                        tracing::error!(volume = id, mount = %m.display(), error = %e, "could not unmount a dead build's mount")
                    }
                }
            }
        }
        let polling = crate::ec2::wait::Polling::default();
        let tag = v
            .tags()
            .iter()
            .find(|t| t.key() == Some(crate::team::TAG_TEAM))
            .and_then(|t| t.value());
        let team = crate::team::Team::of_tag(tag);
        let clients = team_clients
            .iter()
            .find(|(t, _)| *t == team)
            .map(|(_, c)| c)
            .unwrap_or(clients);
        match crate::ec2::volumes::detach(
            &clients.ec2,
            clients.region(),
            id,
            &polling,
            &CancellationToken::new(),
        )
        .await
        {
            Ok(()) => tracing::warn!(
                volume = id,
                device,
                "detached a volume a dead build left attached"
            ),
            Err(e) => {
                tracing::error!(volume = id, error = %e, "could not detach a volume a dead build left attached")
            }
        }
        drop(lock);
    }
}

/// Whether `dev` still holds `volume` (a loop device may have been reused by another build since).
fn device_holds(dev: &Path, volume: &str) -> bool {
    let name = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("loop") {
        return std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
            .is_ok_and(|f| f.contains(volume));
    }
    if name.starts_with("nvme") {
        let dir = dev
            .parent()
            .unwrap_or(Path::new(crate::backend::DEVICE_DIR));
        return std::fs::canonicalize(crate::host::devices::nvme_by_volume(dir, volume))
            .is_ok_and(|d| d == dev);
    }
    true
}

/// Cleans up what builds of dead workers left on this host, before taking new work: for every
/// device lock no live build holds: its sandbox (processes, cgroup, network; named after the
/// lock), and if its note names a volume its device still holds, the mounts of that device
/// (processes inside are killed first), its loop device, and the aliases. Volumes stay:
/// the build's next attempt reclaims them.
pub async fn sweep_host(lock_dir: &Path) -> Vec<String> {
    let mut done = Vec::new();
    let Ok(rd) = std::fs::read_dir(lock_dir) else {
        return done;
    };
    for e in rd.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(".lock") else {
            continue;
        };
        let Some(note) = crate::host::lock::DeviceLock::read_note(lock_dir, name) else {
            continue;
        };
        if crate::host::lock::DeviceLock::is_kept(&note) {
            tracing::info!(
                device = name,
                note,
                "kept by kiln build --on-error=abort; left alone"
            );
            continue;
        }
        let Ok(Some(lock)) = crate::host::lock::DeviceLock::try_lock(lock_dir, name) else {
            continue;
        };
        // The dead build's sandbox first: its processes may hold the mounts.
        let sandbox = crate::host::sandbox::id_for_lock(name);
        match crate::host::sandbox::remove_leftovers(&sandbox) {
            Ok(found) => done.extend(
                found
                    .into_iter()
                    .map(|f| format!("removed {f} (sandbox {sandbox})")),
            ),
            Err(err) => {
                tracing::error!(sandbox, error = %err, "could not remove a dead build's sandbox")
            }
        }
        let mut parts = note.split_whitespace();
        if let (Some(volume), Some(dev)) = (parts.next(), parts.next()) {
            let dev = PathBuf::from(dev);
            if device_holds(&dev, volume) {
                for m in crate::host::mount::mounts_of(&dev) {
                    match crate::host::mount::unmount_tree(&m).await {
                        Ok(_) => done.push(format!("unmounted {} ({volume})", m.display())),
                        Err(err) => {
                            tracing::error!(mount = %m.display(), error = %err, "could not unmount a dead build's mount")
                        }
                    }
                }
                if dev.display().to_string().starts_with("/dev/loop")
                    && crate::host::loopdev::detach(&dev).is_ok()
                {
                    done.push(format!("detached {} ({volume})", dev.display()));
                }
            }
        }
        crate::host::devices::remove_aliases(name);
        let _ = lock.note("");
        drop(lock);
    }
    for d in &done {
        tracing::warn!("{d} (left by a dead build)");
    }
    done
}
