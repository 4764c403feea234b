//! `ami_block_device_mappings`: EBS volume types and their IOPS and throughput ranges, and each
//! mapping's fields and checks, as Packer's chroot builder has them.

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
