//! kiln's `lint` block in an `amazon-chroot` source (a kiln extension; Packer has no such field):
//! which of the image linter's checks (step `lint-image`, `crate::lint`) a build turns off, and
//! the list of those checks, which the linter and this block share.
//!
//! ```hcl
//! lint {
//!   skip = ["imds-client"]   # check ids; see CHECKS (README "Image lint")
//! }
//! ```

use super::decode::Fields;
use serde::Serialize;

/// Every check of the image linter, with what it checks.
pub const CHECKS: [(&str, &str); 9] = [
    (
        "kernel-missing",
        "the image has a kernel (/boot, /lib/modules)",
    ),
    ("ena-driver", "ena_support: the ENA driver"),
    ("nvme-initramfs", "Nitro: the NVMe driver at boot"),
    ("efi-binary", "UEFI: the removable-media EFI loader"),
    ("bios-loader", "legacy BIOS: a boot loader in the MBR"),
    ("init-architecture", "/sbin/init matches ami_architecture"),
    ("kernel-architecture", "the kernel matches ami_architecture"),
    ("fstab-device", "/etc/fstab names file systems that exist"),
    (
        "imds-client",
        "imds_support v2.0: cloud-init or an equivalent",
    ),
];

/// The ids of [`CHECKS`].
pub fn check_ids() -> Vec<&'static str> {
    CHECKS.iter().map(|(id, _)| *id).collect()
}

/// The `lint` block.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LintSettings {
    /// Checks turned off (ids of [`CHECKS`]).
    pub skip: Vec<String>,
}

/// Decodes `lint` (an object in JSON, a block in HCL2), if present; an unknown check id is an
/// error naming the checks.
pub fn decode(f: &mut Fields<'_>) -> LintSettings {
    let Some(node) = f.raw("lint") else {
        return LintSettings::default();
    };
    let node = match &node.value {
        super::node::Value::Array(a) if a.len() == 1 => &a[0],
        _ => node,
    };
    let mut diags = Vec::new();
    let path = f.field("lint");
    let mut g = Fields::new(node, path, &mut diags, f.ctx);
    let skip = g.string_list("skip", &[]).unwrap_or_default();
    for s in &skip {
        if !check_ids().contains(&s.as_str()) {
            g.error(
                "skip",
                format!(
                    "unknown lint check \"{s}\": the checks are {}",
                    check_ids().join(", ")
                ),
            );
        }
    }
    g.finish(&[]);
    f.diags.append(&mut diags);
    LintSettings { skip }
}
