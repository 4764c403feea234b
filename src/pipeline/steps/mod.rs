//! The steps of a chroot build, in order (see ../shared/reference/packer-amazon-chroot.md for
//! Packer's table). Each step has `run` (returning its outputs for the record) and `undo`; undo is
//! safe to run after a partial `run` and safe to run twice.

mod allocate_device;
mod ansible;
mod attach_volume;
mod boot_instance;
mod boot_test;
mod copy_files;
mod copy_regions;
mod create_volume;
mod deregister;
mod early_cleanup;
mod instance_info;
mod inventory_source;
mod lint_image;
mod modify_attributes;
mod mount_commands;
mod mount_device;
mod mount_extra;
mod pre_validate;
mod provision;
mod publish_channels;
mod read_source;
mod reclaim;
mod register_image;
mod register_regions;
mod sandbox;
mod sbom;
mod snapshot;
mod source_image;
mod upload_delta;

use super::{Build, StepError};
use crate::template::config::ChrootConfig;

/// A step of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepId {
    /// AMI name free (unless force_deregister), regions valid.
    PreValidate,
    /// The builder's identity from IMDS.
    InstanceInfo,
    /// The source image, and its root device is EBS.
    SourceImage,
    /// When resuming: what earlier attempts left is removed, and a finished snapshot reused.
    Reclaim,
    /// A free attachment point, locked for the build.
    AllocateDevice,
    /// The build volume.
    CreateVolume,
    /// Direct backend: the source snapshot read (or found in the cache) into the working image.
    ReadSource,
    /// Attached, and its block device present.
    AttachVolume,
    /// `pre_mount_commands`.
    PreMountCommands,
    /// The root filesystem mounted.
    MountDevice,
    /// The source image's packages read, before anything runs in it (the SBOM's "parent").
    InventorySource,
    /// `post_mount_commands`.
    PostMountCommands,
    /// `chroot_mounts`.
    MountExtra,
    /// The build's sandbox (cgroup, network namespace, launcher).
    Sandbox,
    /// `copy_files`.
    CopyFiles,
    /// The provisioners.
    Provision,
    /// The image linter: what the registration promises, checked on the mounted image.
    LintImage,
    /// The image's SBOM from its package databases, and what changed against its parent and the
    /// previous image of its template.
    Sbom,
    /// Copies, mounts and the attachment undone before the snapshot.
    EarlyCleanup,
    /// The snapshot of the volume.
    Snapshot,
    /// Direct backend: the changed blocks written to a child snapshot in every region.
    UploadDelta,
    /// `boot_test`: the snapshot booted in QEMU, or on a test instance.
    BootTest,
    /// `force_deregister`: same-named AMIs removed.
    Deregister,
    /// The AMI registered.
    RegisterImage,
    /// Copies to `ami_regions`.
    CopyRegions,
    /// Direct backend: the uploaded snapshots registered in `ami_regions`.
    RegisterRegions,
    /// Launch and snapshot permissions.
    ModifyAttributes,
    /// The AMIs published to the build's channels (SSM parameters).
    PublishChannels,
}

impl StepId {
    /// The step's name in logs and results.
    pub fn name(self) -> &'static str {
        match self {
            StepId::PreValidate => "pre-validate",
            StepId::InstanceInfo => "instance-info",
            StepId::SourceImage => "source-image",
            StepId::Reclaim => "reclaim",
            StepId::AllocateDevice => "allocate-device",
            StepId::CreateVolume => "create-volume",
            StepId::ReadSource => "read-source",
            StepId::AttachVolume => "attach-volume",
            StepId::PreMountCommands => "pre-mount-commands",
            StepId::MountDevice => "mount-device",
            StepId::InventorySource => "inventory-source",
            StepId::PostMountCommands => "post-mount-commands",
            StepId::MountExtra => "mount-extra",
            StepId::Sandbox => "sandbox",
            StepId::CopyFiles => "copy-files",
            StepId::Provision => "provision",
            StepId::LintImage => "lint-image",
            StepId::Sbom => "sbom",
            StepId::EarlyCleanup => "early-cleanup",
            StepId::Snapshot => "snapshot",
            StepId::UploadDelta => "upload-delta",
            StepId::BootTest => "boot-test",
            StepId::Deregister => "deregister",
            StepId::RegisterImage => "register-image",
            StepId::CopyRegions => "copy-regions",
            StepId::RegisterRegions => "register-regions",
            StepId::ModifyAttributes => "modify-attributes",
            StepId::PublishChannels => "publish-channels",
        }
    }

    /// A line for the terminal, as Packer prints its steps.
    pub fn title(self) -> &'static str {
        match self {
            StepId::PreValidate => "Prevalidating AMI name and regions",
            StepId::InstanceInfo => "Gathering information about this EC2 instance",
            StepId::SourceImage => "Inspecting the source AMI",
            StepId::Reclaim => "Reclaiming what an earlier attempt of this build left",
            StepId::AllocateDevice => "Choosing a device for the volume",
            StepId::CreateVolume => "Creating the root volume",
            StepId::ReadSource => "Reading the source snapshot's blocks",
            StepId::AttachVolume => "Attaching the root volume",
            StepId::PreMountCommands => "Running pre-mount commands",
            StepId::MountDevice => "Mounting the root device",
            StepId::InventorySource => "Reading the source image's packages",
            StepId::PostMountCommands => "Running post-mount commands",
            StepId::MountExtra => "Mounting additional paths within the chroot",
            StepId::Sandbox => "Preparing the build's sandbox",
            StepId::CopyFiles => "Copying files from host to chroot",
            StepId::Provision => "Provisioning inside the chroot",
            StepId::LintImage => "Checking the image against its registration",
            StepId::Sbom => "Writing the image's SBOM",
            StepId::EarlyCleanup => "Unmounting and detaching before the snapshot",
            StepId::Snapshot => "Creating a snapshot",
            StepId::UploadDelta => "Uploading the changed blocks",
            StepId::BootTest => "Booting the new image to test it",
            StepId::Deregister => "Deregistering AMIs of the same name (force_deregister)",
            StepId::RegisterImage => "Registering the AMI",
            StepId::CopyRegions => "Copying the AMI to other regions",
            StepId::RegisterRegions => "Registering the AMI in other regions",
            StepId::ModifyAttributes => "Setting launch and snapshot permissions",
            StepId::PublishChannels => "Publishing the AMIs to their channels",
        }
    }
}

/// The steps a configuration runs, in order. The direct backend reads and writes snapshots
/// (`read-source`, `upload-delta`, `register-regions`) where the others make, attach and snapshot
/// a volume and copy the image.
pub fn plan_steps(c: &ChrootConfig, direct: bool) -> Vec<StepId> {
    use StepId::*;
    let mut v = vec![PreValidate, InstanceInfo];
    if !c.from_scratch {
        v.push(SourceImage);
    }
    v.push(Reclaim);
    v.push(AllocateDevice);
    if direct {
        v.push(ReadSource);
    } else {
        v.extend([CreateVolume, AttachVolume]);
    }
    v.extend([PreMountCommands, MountDevice]);
    if !c.from_scratch {
        v.push(InventorySource);
    }
    v.extend([
        PostMountCommands,
        MountExtra,
        Sandbox,
        CopyFiles,
        Provision,
        LintImage,
        Sbom,
        EarlyCleanup,
        if direct { UploadDelta } else { Snapshot },
    ]);
    if c.boot_test.is_some() {
        v.push(BootTest);
    }
    if c.force_deregister {
        v.push(Deregister);
    }
    v.extend([
        RegisterImage,
        if direct { RegisterRegions } else { CopyRegions },
        ModifyAttributes,
        PublishChannels,
    ]);
    v
}

/// Whether the engine skips `step`: `reclaim` on a first attempt, and the volume steps when an
/// earlier attempt's snapshot is reused.
pub fn skipped(step: StepId, b: &Build) -> bool {
    use StepId::*;
    match step {
        Reclaim => b.attempt <= 1,
        Snapshot | UploadDelta => b.state.reused_snapshot,
        AllocateDevice | CreateVolume | ReadSource | AttachVolume | PreMountCommands
        | MountDevice | InventorySource | PostMountCommands | MountExtra | Sandbox | CopyFiles
        | Provision | LintImage | Sbom | EarlyCleanup => {
            b.state.reused_snapshot || b.state.resume_upload
        }
        _ => false,
    }
}

/// Whether `step`'s undo runs: some always (the volume is never kept, the lock always released,
/// mounts and attachments always undone), the rest (what a resumed attempt reuses: snapshot,
/// AMIs) only when `failed` says to remove them (a failure, not a hand-over to another worker).
pub fn undo_applies(step: StepId, failed: bool) -> bool {
    use StepId::*;
    match step {
        AllocateDevice | CreateVolume | ReadSource | AttachVolume | MountDevice | MountExtra
        | Sandbox | CopyFiles | BootTest => true,
        Reclaim | Snapshot | UploadDelta | RegisterImage | CopyRegions | RegisterRegions => failed,
        _ => false,
    }
}

/// Runs `step`.
pub async fn run(step: StepId, b: &mut Build) -> Result<serde_json::Value, StepError> {
    use StepId::*;
    match step {
        PreValidate => pre_validate::run(b).await,
        InstanceInfo => instance_info::run(b).await,
        SourceImage => source_image::run(b).await,
        Reclaim => reclaim::run(b).await,
        AllocateDevice => allocate_device::run(b).await,
        CreateVolume => create_volume::run(b).await,
        ReadSource => read_source::run(b).await,
        AttachVolume => attach_volume::run(b).await,
        PreMountCommands => mount_commands::run_pre(b).await,
        MountDevice => mount_device::run(b).await,
        PostMountCommands => mount_commands::run_post(b).await,
        MountExtra => mount_extra::run(b).await,
        Sandbox => sandbox::run(b).await,
        CopyFiles => copy_files::run(b).await,
        Provision => provision::run(b).await,
        LintImage => lint_image::run(b).await,
        InventorySource => inventory_source::run(b).await,
        Sbom => sbom::run(b).await,
        EarlyCleanup => early_cleanup::run(b).await,
        Snapshot => snapshot::run(b).await,
        UploadDelta => upload_delta::run(b).await,
        BootTest => boot_test::run(b).await,
        Deregister => deregister::run(b).await,
        RegisterImage => register_image::run(b).await,
        CopyRegions => copy_regions::run(b).await,
        RegisterRegions => register_regions::run(b).await,
        ModifyAttributes => modify_attributes::run(b).await,
        PublishChannels => publish_channels::run(b).await,
    }
}

/// Undoes `step`.
pub async fn undo(step: StepId, b: &mut Build) -> Result<(), StepError> {
    use StepId::*;
    match step {
        Reclaim => reclaim::undo(b).await,
        AllocateDevice => allocate_device::undo(b),
        CreateVolume => create_volume::undo(b).await,
        ReadSource => read_source::undo(b).await,
        AttachVolume => attach_volume::undo(b).await,
        MountDevice => mount_device::undo(b).await,
        MountExtra => mount_extra::undo(b).await,
        Sandbox => sandbox::undo(b).await,
        CopyFiles => copy_files::undo(b),
        Snapshot => snapshot::undo(b).await,
        UploadDelta => upload_delta::undo(b).await,
        BootTest => boot_test::undo(b).await,
        RegisterImage => register_image::undo(b).await,
        CopyRegions | RegisterRegions => copy_regions::undo(b).await,
        _ => Ok(()),
    }
}

/// What `step` holds right now (for undo failures).
pub fn inventory_of(step: StepId, b: &Build) -> Vec<String> {
    use StepId::*;
    let s = &b.state;
    let mut v = Vec::new();
    match step {
        AllocateDevice => v.extend(
            s.device_lock
                .as_ref()
                .map(|l| format!("lock {}", l.path().display())),
        ),
        CreateVolume => v.extend(
            s.volume_id
                .as_ref()
                .map(|id| format!("volume {id} in {}", b.region)),
        ),
        AttachVolume => {
            if s.attached {
                v.extend(s.volume_id.as_ref().map(|id| format!("attachment of {id}")));
            }
            v.extend(
                s.block_device
                    .as_ref()
                    .map(|d| format!("device {}", d.display())),
            );
        }
        MountDevice if s.mounted => v.extend(
            s.mount_path
                .as_ref()
                .map(|m| format!("mount {}", m.display())),
        ),
        MountExtra => v.extend(
            s.extra_mounts
                .iter()
                .map(|m| format!("mount {}", m.host_path.display())),
        ),
        Sandbox => v.extend(s.sandbox.as_ref().map(|sb| {
            format!(
                "sandbox {} (cgroup {:?}, network namespace {})",
                sb.id(),
                sb.cgroup().dirs(),
                sb.net().map(|n| n.ns.as_str()).unwrap_or("none")
            )
        })),
        CopyFiles => v.extend(
            s.copied
                .iter()
                .map(|c| format!("copied file {} in the image", c.path)),
        ),
        BootTest => {
            v.extend(
                s.boot_test
                    .instance_id
                    .as_ref()
                    .map(|id| format!("test instance {id} in {}", b.region)),
            );
            v.extend(
                s.boot_test
                    .image_id
                    .as_ref()
                    .map(|id| format!("test image {id} in {}", b.region)),
            );
        }
        Snapshot => v.extend(
            s.snapshot_id
                .as_ref()
                .map(|id| format!("snapshot {id} in {}", b.region)),
        ),
        ReadSource => {
            v.extend(
                s.work_file
                    .as_ref()
                    .map(|f| format!("working image {}", f.display())),
            );
            v.extend(
                s.block_device
                    .as_ref()
                    .map(|d| format!("device {}", d.display())),
            );
        }
        UploadDelta => v.extend(
            s.region_snapshots
                .iter()
                .map(|(r, id)| format!("snapshot {id} in {r}")),
        ),
        RegisterImage | CopyRegions | RegisterRegions => v.extend(s.images.iter().map(|(r, i)| {
            format!(
                "image {} (snapshots {}) in {r}",
                i.ami_id,
                i.snapshot_ids.join(",")
            )
        })),
        _ => {}
    }
    v
}

/// Everything the build holds (for `--on-error=abort`).
pub fn inventory(b: &Build) -> Vec<String> {
    use StepId::*;
    let mut v = Vec::new();
    for step in [
        AllocateDevice,
        CreateVolume,
        ReadSource,
        AttachVolume,
        MountDevice,
        MountExtra,
        Sandbox,
        CopyFiles,
        Snapshot,
        UploadDelta,
        RegisterImage,
    ] {
        v.extend(inventory_of(step, b));
    }
    v.dedup();
    v
}

/// After each step: kills whatever the build left running in its cgroup.
pub async fn after_step(b: &Build) {
    sandbox::kill_leftovers(b).await;
}

/// Shorthand for an `Invalid` error.
pub(crate) fn invalid(msg: impl Into<String>) -> StepError {
    StepError::Invalid(msg.into())
}
