//! Step `sandbox`: the build's sandbox (see `crate::host::sandbox`): its cgroup with the build's
//! limits, its network namespace, its seccomp programs and the launcher every in-image command
//! runs through. Packer's default `chroot_mounts` are given to the sandbox instead of being
//! mounted on the host (`proc` -> a fresh procfs, `sysfs` -> read-only, the `/dev` bind and
//! `devpts` -> a minimal `/dev` with this build's device and a new devpts, `binfmt_misc` -> left
//! out). The sandbox id comes from the build's device lock, so a crashed build's leftovers are
//! found and removed by the next holder of the lock (and by the worker's start-up sweep). Undo
//! (always): kill whatever is left in the cgroup, remove the network, the cgroup and the
//! launcher, each by the sandbox's id.

use crate::host::HostError;
use crate::host::sandbox::{self, Network, Sandbox, SandboxSpec};
use crate::pipeline::{Build, StepError};
use crate::template::sandbox::{Policy, SandboxSettings};

/// Whether a `chroot_mounts` entry is one the sandbox provides itself (so it is not mounted on
/// the host): `proc`, `sysfs`, `devpts`, `binfmt_misc`, and the bind of the host's `/dev`.
pub fn provided_by_sandbox(entry: &[String; 3]) -> bool {
    let [fstype, source, path] = entry;
    matches!(fstype.as_str(), "proc" | "sysfs" | "devpts" | "binfmt_misc")
        || (fstype == "bind"
            && source.trim_end_matches('/') == "/dev"
            && path.trim_end_matches('/') == "/dev")
}

fn spec(b: &Build, settings: &SandboxSettings) -> Result<SandboxSpec, StepError> {
    let mounts = &b.plan.config.chroot_mounts;
    let has = |f: &dyn Fn(&[String; 3]) -> bool| mounts.iter().any(f);
    let dev = has(&|m| m[0] == "devpts" || (m[0] == "bind" && provided_by_sandbox(m)));
    let block = b
        .state
        .block_device
        .clone()
        .ok_or_else(|| super::invalid("the sandbox needs the build's block device"))?;
    let lock = b
        .state
        .device_name
        .clone()
        .ok_or_else(|| super::invalid("the sandbox needs the build's device lock"))?;
    Ok(SandboxSpec {
        id: sandbox::id_for_lock(&lock),
        root: b.mount_path()?,
        proc: has(&|m| m[0] == "proc"),
        sys: has(&|m| m[0] == "sysfs"),
        dev,
        devices: sandbox::device_nodes(&block, b.state.device_path.as_deref()),
        network: settings.network,
        limits: settings.limits,
    })
}

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let settings = SandboxSettings::resolve(&b.plan.config.sandbox, &Policy::from_env())
        .map_err(super::invalid)?;
    let spec = spec(b, &settings)?;
    let network = spec.network;
    let (sb, leftovers) = tokio::task::spawn_blocking(move || {
        // A dead holder of this device lock (a crashed worker) may have left its sandbox.
        let leftovers = sandbox::remove_leftovers(&spec.id)?;
        Sandbox::create(spec).map(|sb| (sb, leftovers))
    })
    .await
    .map_err(|e| super::invalid(format!("creating the sandbox: {e}")))?
    .map_err(HostError::from)?;
    if !leftovers.is_empty() {
        tracing::warn!(build_id = %b.id, sandbox = sb.id(), removed = ?leftovers, "removed what a dead build's sandbox left on this device");
    }
    let out = serde_json::json!({
        "sandbox": sb.id(),
        "network": network,
        "namespace": sb.net().map(|n| n.ns.clone()),
        "limits": settings.limits,
    });
    if network == Network::Host {
        (b.sink)(
            "kiln",
            "the sandbox shares the host's network (sandbox network = \"host\", allowed by this pool's policy)",
        );
    }
    b.state.sandbox = Some(sb);
    Ok(out)
}

/// Kills what the build left running (after each step); logs what it found.
pub async fn kill_leftovers(b: &Build) {
    let Some(sb) = &b.state.sandbox else { return };
    let cgroup = sb.cgroup().clone();
    let outcome = tokio::task::spawn_blocking(move || cgroup.kill_all()).await;
    match outcome {
        Ok(Ok(killed)) if !killed.is_empty() => {
            tracing::warn!(build_id = %b.id, sandbox = sb.id(), killed = ?killed, "killed processes the build left running");
            (b.sink)(
                "kiln",
                &format!(
                    "killed processes left running in the build: {}",
                    killed.join(", ")
                ),
            );
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::error!(build_id = %b.id, sandbox = sb.id(), error = %e, "could not kill what the build left running")
        }
        Err(e) => {
            tracing::error!(build_id = %b.id, sandbox = sb.id(), error = %e, "could not kill what the build left running")
        }
    }
}

pub async fn undo(b: &mut Build) -> Result<(), StepError> {
    let Some(sb) = b.state.sandbox.take() else {
        return Ok(());
    };
    let result = tokio::task::spawn_blocking(move || {
        let r = sb.remove();
        (sb, r)
    })
    .await;
    match result {
        Ok((_, Ok(()))) => Ok(()),
        Ok((sb, Err(e))) => {
            b.state.sandbox = Some(sb);
            Err(HostError::from(e).into())
        }
        Err(e) => Err(super::invalid(format!("removing the sandbox: {e}"))),
    }
}
