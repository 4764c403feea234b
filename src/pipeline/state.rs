//! Typed state between steps, and the recorder every step's outputs go through as it completes
//! (checkpoints back it with durable storage).

use crate::host::lock::DeviceLock;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// The source image, as DescribeImages reports it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceImage {
    /// `ami-...`
    pub id: String,
    /// Its name.
    pub name: String,
    /// Root device name.
    pub root_device_name: String,
    /// Snapshot of the root device.
    pub root_snapshot: String,
    /// Root volume size (GiB).
    pub root_size: i32,
    /// Root volume type.
    pub root_volume_type: Option<String>,
    /// `x86_64`, `arm64`, ...
    pub architecture: Option<String>,
    /// `hvm` or `paravirtual`.
    pub virtualization_type: Option<String>,
    /// ENA.
    pub ena_support: Option<bool>,
    /// SR-IOV.
    pub sriov_net_support: Option<String>,
    /// Boot mode.
    pub boot_mode: Option<String>,
    /// Kernel (paravirtual).
    pub kernel_id: Option<String>,
    /// Ramdisk (paravirtual).
    pub ramdisk_id: Option<String>,
    /// Creation date.
    pub creation_date: String,
    /// Owner account.
    pub owner: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// All block device mappings (copied to the new AMI unless the template sets its own).
    #[serde(skip)]
    pub mappings: Vec<aws_sdk_ec2::types::BlockDeviceMapping>,
}

/// A file `copy_files` put into the chroot, and what was there before.
#[derive(Debug, Clone, Serialize)]
pub struct CopiedFile {
    /// Path inside the image.
    pub path: String,
    /// A symlink that was there (restored at cleanup).
    pub replaced_link: Option<PathBuf>,
    /// A file that was there, moved aside to this path inside the image (restored at cleanup).
    pub backup: Option<String>,
}

/// An AMI in one region.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageRecord {
    /// `ami-...`
    pub ami_id: String,
    /// Its snapshots.
    pub snapshot_ids: Vec<String>,
}

/// What the steps have made.
#[derive(Debug, Default)]
pub struct BuildState {
    /// The builder instance.
    pub instance: Option<crate::ec2::identity::Instance>,
    /// The source image (not for from_scratch).
    pub source: Option<SourceImage>,
    /// The attachment point name (`xvdf`).
    pub device_name: Option<String>,
    /// The device lock, held for the whole build.
    pub device_lock: Option<DeviceLock>,
    /// The volume.
    pub volume_id: Option<String>,
    /// Whether the volume is attached in EC2.
    pub attached: bool,
    /// The real block device (`/dev/loop3`, `/dev/nvme1n1`, `/dev/xvdf`).
    pub block_device: Option<PathBuf>,
    /// What `{{.Device}}` names (an alias where partitions need one).
    pub device_path: Option<PathBuf>,
    /// Where the volume is mounted.
    pub mount_path: Option<PathBuf>,
    /// Whether the root is mounted.
    pub mounted: bool,
    /// The kernel mount id of the root mount `mount-device` made: what its undo unmounts (and
    /// nothing else; `None` when it made none, e.g. refused because the path was taken).
    pub root_mount_id: Option<u64>,
    /// Whether `mount-device` created the mount path directory (its undo removes it then only).
    pub mount_dir_created: bool,
    /// Extra mounts, in mount order.
    pub extra_mounts: Vec<crate::host::image_fs::ImageMount>,
    /// Files copied in.
    pub copied: Vec<CopiedFile>,
    /// The new snapshot.
    pub snapshot_id: Option<String>,
    /// AMIs by region.
    pub images: BTreeMap<String, ImageRecord>,
    /// When resuming: a completed snapshot of an earlier attempt, so the volume steps are skipped.
    pub reused_snapshot: bool,
    /// The boot test's instance method: its private image and its instance, while they exist.
    pub boot_test: BootTestResources,
    /// The direct backend's working image (`read-source` to `upload-delta`).
    pub work_file: Option<PathBuf>,
    /// The direct backend's snapshot in each region (`upload-delta`), the build region's also
    /// in `snapshot_id`.
    pub region_snapshots: BTreeMap<String, String>,
    /// When resuming a direct build whose upload an earlier attempt on this host started: its
    /// working image is final, so the steps up to `early-cleanup` are skipped and `upload-delta`
    /// continues the same snapshots.
    pub resume_upload: bool,
    /// The build's sandbox (step `sandbox` to `early-cleanup`).
    pub sandbox: Option<crate::host::sandbox::Sandbox>,
    /// The source image's packages, read before anything ran in it (`inventory-source`); `None`
    /// when the step did not run (from_scratch, or a resumed build).
    pub base_packages: Option<Vec<crate::sbom::Package>>,
    /// Where step `sbom` wrote the SBOM (tagged `kiln:sbom` on the AMIs).
    pub sbom_uri: Option<String>,
    /// The ancestry tags (`ec2::lineage`), worked out once before the first registration.
    pub ancestry: Option<BTreeMap<String, String>>,
}

/// What the boot test's instance method has made and not removed yet.
#[derive(Debug, Default, Clone)]
pub struct BootTestResources {
    /// The image registered for the test (deregistered after it; the snapshot stays).
    pub image_id: Option<String>,
    /// The test instance (terminated after the test).
    pub instance_id: Option<String>,
}

/// Receives each step's outputs as the step completes (the worker's checkpoint journal in S3;
/// memory for `kiln build`). The engine awaits `record` before the next step starts; a recorder
/// may write later (the journal batches its writes off the critical path).
pub trait Recorder: Send + Sync {
    /// Records that `step` of `build_id` finished with `outputs`.
    fn record<'a>(
        &'a self,
        build_id: &'a str,
        step: &'a str,
        outputs: &'a serde_json::Value,
    ) -> futures_util::future::BoxFuture<'a, ()>;

    /// Resolves once everything recorded so far is durably written (or its writing gave up).
    /// The crash hook waits for it, so "crash after step X" means X is in the journal.
    fn written(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Keeps records in memory (for `kiln build`).
#[derive(Debug, Default)]
pub struct MemoryRecorder {
    /// `(step, outputs)` in order.
    pub records: Mutex<Vec<(String, serde_json::Value)>>,
}

impl Recorder for MemoryRecorder {
    fn record<'a>(
        &'a self,
        _build_id: &'a str,
        step: &'a str,
        outputs: &'a serde_json::Value,
    ) -> futures_util::future::BoxFuture<'a, ()> {
        if let Ok(mut r) = self.records.lock() {
            r.push((step.to_owned(), outputs.clone()));
        }
        Box::pin(async {})
    }
}
