//! `ami_block_device_mappings`: EBS volume types and their IOPS and throughput ranges, and each
//! mapping's fields and checks, as Packer's chroot builder has them; and the checks of the fields
//! that name host paths (`device_path`, `nvme_device_path`, `mount_path`), which kiln's own file
//! operations act on as root and so must never lead elsewhere on the host.

use crate::template::decode::Fields;
use serde::Serialize;

/// EBS volume types.
pub const VOLUME_TYPES: [&str; 7] = ["standard", "gp2", "gp3", "io1", "io2", "st1", "sc1"];

/// gp3 IOPS range (EBS documentation: 3,000 baseline, 16,000 maximum).
pub const GP3_IOPS: (i64, i64) = (3000, 16000);
/// gp3 throughput range in MiB/s (EBS documentation: 125 baseline, 1,000 maximum).
pub const GP3_THROUGHPUT: (i64, i64) = (125, 1000);
/// io1 IOPS range (EBS documentation).
pub const IO1_IOPS: (i64, i64) = (100, 64000);
/// io2 IOPS range (EBS documentation, io2 Block Express).
pub const IO2_IOPS: (i64, i64) = (100, 256000);

/// Where kiln mounts build volumes: every `mount_path` (Packer's default
/// `/mnt/packer-amazon-chroot-volumes/{{.Device}}` included) is a directory below it.
pub const MOUNT_ROOT: &str = "/mnt";

/// Attachment-point letters a `device_path` may use (Packer's `/dev/xvdf` .. `/dev/xvdp`).
pub const DEVICE_LETTERS: &str = "fghijklmnop";

/// Why `path` is not a `device_path` kiln accepts (`/dev/sd[f-p]` or `/dev/xvd[f-p]`: the device
/// the volume is attached as, which also names kiln's lock and alias files), or `None`. Pure.
pub fn device_path_problem(path: &str) -> Option<String> {
    let ok = path
        .strip_prefix("/dev/")
        .and_then(|n| n.strip_prefix("xvd").or_else(|| n.strip_prefix("sd")))
        .is_some_and(|l| l.len() == 1 && DEVICE_LETTERS.contains(l));
    (!ok).then(|| {
        format!(
            "device_path must be an attachment point /dev/sd[f-p] or /dev/xvd[f-p], such as /dev/sdf (got {path:?}): it names the device the volume is attached as; leave it unset to let kiln choose a free one"
        )
    })
}

/// Why `path` is not an `nvme_device_path` kiln accepts (an NVMe node directly in `/dev`, such as
/// `/dev/nvme1n1`: lowercase letters and digits after `nvme`, no `/` or `..`), or `None`. Pure.
pub fn nvme_device_path_problem(path: &str) -> Option<String> {
    let ok = path.strip_prefix("/dev/nvme").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    (!ok).then(|| {
        format!(
            "nvme_device_path must be an NVMe device node directly in /dev, such as /dev/nvme1n1 (got {path:?}): it names the node the attached volume appears as; leave it unset to let kiln find the volume's node by its id"
        )
    })
}

/// Why `path` (a `mount_path` with `{{.Device}}` rendered) is not a directory kiln may mount the
/// volume on: it must be absolute, below [`MOUNT_ROOT`], without `.` or `..` components or
/// control characters. `None` when it is fine. Pure.
pub fn mount_path_problem(path: &str) -> Option<String> {
    let below_root = path
        .strip_prefix(MOUNT_ROOT)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|rest| rest.split('/').any(|c| !c.is_empty()));
    let dots = path.split('/').any(|c| c == "." || c == "..");
    let control = path.chars().any(char::is_control);
    (!below_root || dots || control).then(|| {
        format!(
            "mount_path must be a directory below {MOUNT_ROOT} without \".\" or \"..\" components, such as {MOUNT_ROOT}/packer-amazon-chroot-volumes/{{{{.Device}}}} (got {path:?}): kiln mounts the volume there as root and unmounts only what it mounted"
        )
    })
}

/// An EBS block device mapping (`ami_block_device_mappings`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BlockDevice {
    /// The device name, e.g. `/dev/xvda`.
    pub device_name: String,
    /// Delete the volume when the instance terminates.
    pub delete_on_termination: bool,
    /// Encrypt the volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    /// Provisioned IOPS (gp3, io1, io2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops: Option<i64>,
    /// Suppress the device.
    pub no_device: bool,
    /// Snapshot to create the volume from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Throughput in MiB/s (gp3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<i64>,
    /// Instance store name, e.g. `ephemeral0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_name: Option<String>,
    /// EBS volume type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    /// Size in GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_size: Option<i64>,
    /// KMS key for encryption.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

pub(super) fn decode_mappings(f: &mut Fields<'_>) -> Vec<BlockDevice> {
    let Some(node) = f.raw("ami_block_device_mappings") else {
        return Vec::new();
    };
    let items: Vec<&crate::template::node::Node> = match &node.value {
        crate::template::node::Value::Array(a) => a.iter().collect(),
        crate::template::node::Value::Object(_) => vec![node],
        other => {
            f.error(
                "ami_block_device_mappings",
                format!(
                    "expected a list of block device mappings, got a {}",
                    other.type_name()
                ),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let mut diags = Vec::new();
        let path = f.field(&format!("ami_block_device_mappings[{i}]"));
        let mut g = Fields::new(item, path, &mut diags, f.ctx);
        let b = BlockDevice {
            device_name: g.string("device_name", &[]).unwrap_or_default(),
            delete_on_termination: g.bool("delete_on_termination").unwrap_or(false),
            encrypted: g.bool("encrypted"),
            iops: g.int("iops"),
            no_device: g.bool("no_device").unwrap_or(false),
            snapshot_id: g.string("snapshot_id", &[]),
            throughput: g.int("throughput"),
            virtual_name: g.string("virtual_name", &[]),
            volume_type: g.string("volume_type", &[]),
            volume_size: g.int("volume_size"),
            kms_key_id: g.string("kms_key_id", &[]),
        };
        validate_mapping(&b, &mut g);
        g.finish(&[]);
        f.diags.append(&mut diags);
        out.push(b);
    }
    out
}

pub(super) fn validate_mapping(b: &BlockDevice, g: &mut Fields<'_>) {
    if b.device_name.is_empty() {
        g.error(
            "device_name",
            "The `device_name` must be specified for every device in the block device mapping.",
        );
    }
    let t = b.volume_type.as_deref().unwrap_or("");
    if !t.is_empty() && !VOLUME_TYPES.contains(&t) {
        g.error(
            "volume_type",
            format!(
                "unknown volume type \"{t}\": use one of {}",
                VOLUME_TYPES.join(", ")
            ),
        );
    }
    let range = |g: &mut Fields<'_>, key: &str, v: i64, (lo, hi): (i64, i64), what: &str| {
        if !(lo..=hi).contains(&v) {
            g.error(
                key,
                format!("{key} {v} is out of range for {what}: use {lo} to {hi}"),
            );
        }
    };
    match (t, b.iops) {
        ("gp3", Some(i)) => range(g, "iops", i, GP3_IOPS, "gp3"),
        ("io1", Some(i)) => range(g, "iops", i, IO1_IOPS, "io1"),
        ("io2", Some(i)) => range(g, "iops", i, IO2_IOPS, "io2"),
        ("io1" | "io2", None) => g.error("iops", format!("iops is required for volume_type {t}")),
        (_, Some(_)) => g.error(
            "iops",
            format!(
                "iops applies only to gp3, io1 and io2 volumes, not {}",
                if t.is_empty() { "the default type" } else { t }
            ),
        ),
        _ => {}
    }
    match (t, b.throughput) {
        ("gp3", Some(v)) => range(g, "throughput", v, GP3_THROUGHPUT, "gp3"),
        (_, Some(_)) => g.error(
            "throughput",
            "throughput applies only to gp3 volumes: set volume_type = \"gp3\"",
        ),
        _ => {}
    }
    if b.kms_key_id.is_some() && b.encrypted != Some(true) {
        g.error(
            "kms_key_id",
            format!(
                "The device {}, must also have `encrypted: true` when setting a kms_key_id.",
                b.device_name
            ),
        );
    }
    if let Some(s) = b.volume_size
        && s <= 0
    {
        g.error(
            "volume_size",
            format!("volume_size must be a positive number of GiB (got {s})"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_path_is_an_attachment_point() {
        for ok in ["/dev/sdf", "/dev/xvdf", "/dev/xvdp", "/dev/sdk"] {
            assert_eq!(device_path_problem(ok), None, "{ok}");
        }
        for bad in [
            "/dev/../../../tmp/x",
            "/dev/xvda",
            "/dev/sde",
            "/dev/xvdq",
            "/dev/xvdf1",
            "/dev/xvdff",
            "/dev/nvme1n1",
            "/tmp/x",
            "xvdf",
            "/dev/kiln/xvdf",
            "/dev/xvd/",
            "",
        ] {
            let e = device_path_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.starts_with("device_path must be"), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn nvme_device_path_is_a_plain_node_name() {
        for ok in ["/dev/nvme1n1", "/dev/nvme0n1p", "/dev/nvme12n3"] {
            assert_eq!(nvme_device_path_problem(ok), None, "{ok}");
        }
        for bad in [
            "/dev/nvme",
            "/dev/nvme1n1/../../tmp/x",
            "/dev/nvme/../sda",
            "/dev/nvme..",
            "/dev/sda",
            "/dev/disk/by-id/nvme-x",
            "/dev/nvme1N1",
            "nvme1n1",
        ] {
            let e = nvme_device_path_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.starts_with("nvme_device_path must be"), "{e}");
        }
    }

    #[test]
    fn mount_path_stays_below_the_mount_root() {
        for ok in [
            "/mnt/packer-amazon-chroot-volumes/xvdf",
            "/mnt/chroot",
            "/mnt/chroot/",
            "/mnt/a//b",
            "/mnt/kiln-test-x-1-2",
        ] {
            assert_eq!(mount_path_problem(ok), None, "{ok}");
        }
        for bad in [
            "/mnt",
            "/mnt/",
            "/mnt//",
            "/mntx/a",
            "/mnt/../etc",
            "/mnt/a/../../tmp",
            "/mnt/./a",
            "/mnt/a/.",
            "/tmp/x",
            "/",
            "mnt/a",
            "relative",
            "/mnt/a\nb",
            "",
        ] {
            let e = mount_path_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(
                e.starts_with("mount_path must be a directory below /mnt"),
                "{e}"
            );
        }
    }
}
