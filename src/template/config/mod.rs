//! The `amazon-chroot` builder's configuration: every field Packer's chroot builder accepts, its
//! defaults, and its validation rules and messages (plus the checks Packer forgets for chroot).

mod devices;
mod filters;
mod foreign;

pub use devices::{
    BlockDevice, DEVICE_LETTERS, GP3_IOPS, GP3_THROUGHPUT, IO1_IOPS, IO2_IOPS, MOUNT_ROOT,
    VOLUME_TYPES, device_path_problem, mount_path_problem, nvme_device_path_problem,
};
pub use filters::{AmiFilter, decode_filter_node};
pub use foreign::FOREIGN_FIELDS;

use super::decode::Fields;
use super::gotmpl::{ami_name_char, placeholders as ph};
use devices::decode_mappings;
use filters::decode_filter;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Packer's default `chroot_mounts`.
pub const DEFAULT_CHROOT_MOUNTS: [[&str; 3]; 5] = [
    ["proc", "proc", "/proc"],
    ["sysfs", "sysfs", "/sys"],
    ["bind", "/dev", "/dev"],
    ["devpts", "devpts", "/dev/pts"],
    ["binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"],
];
/// Packer's default `command_wrapper`.
pub const DEFAULT_COMMAND_WRAPPER: &str = "{{.Command}}";
/// Packer's default `mount_path`.
pub const DEFAULT_MOUNT_PATH: &str = "/mnt/packer-amazon-chroot-volumes/{{.Device}}";
/// Packer's default `mount_partition`.
pub const DEFAULT_MOUNT_PARTITION: &str = "1";
/// Packer's default `ami_architecture`.
pub const DEFAULT_ARCHITECTURE: &str = "x86_64";
/// Allowed `ami_architecture` values (Packer's list).
pub const ARCHITECTURES: [&str; 5] = ["arm64", "arm64_mac", "i386", "x86_64", "x86_64_mac"];
/// Allowed `boot_mode` values.
pub const BOOT_MODES: [&str; 3] = ["legacy-bios", "uefi", "uefi-preferred"];

/// `aws_polling`: how often and how long to wait for AWS resources.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AwsPolling {
    /// Seconds between polls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<i64>,
    /// Polls before giving up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i64>,
}

/// The configuration of one `amazon-chroot` build, with Packer's defaults applied.
/// Strings may still hold build-time placeholders (`{{.Device}}`), resolved by the pipeline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChrootConfig {
    // Access.
    /// Region of the build (default: the builder instance's region).
    pub region: Option<String>,
    /// Shared config profile.
    pub profile: Option<String>,
    /// Static access key (masked in output).
    pub access_key: Option<String>,
    /// Static secret key (masked in output).
    pub secret_key: Option<String>,
    /// Session token (masked in output).
    pub token: Option<String>,
    /// Custom EC2 endpoint.
    pub custom_endpoint_ec2: Option<String>,
    /// Shared credentials file.
    pub shared_credentials_file: Option<String>,
    /// Skip checking `ami_regions` names.
    pub skip_region_validation: bool,
    /// Skip the metadata API check.
    pub skip_metadata_api_check: bool,
    /// Skip credential validation.
    pub skip_credential_validation: bool,
    /// Retries of AWS calls.
    pub max_retries: Option<i64>,
    /// MFA code.
    pub mfa_code: Option<String>,
    /// Polling settings.
    pub aws_polling: Option<AwsPolling>,
    /// `assume_role` block, kept as written.
    pub assume_role: Option<serde_json::Value>,
    // AMI.
    /// Name of the new AMI.
    pub ami_name: String,
    /// Description of the new AMI.
    pub ami_description: Option<String>,
    /// `hvm` or `paravirtual` (required with from_scratch; otherwise from the source).
    pub ami_virtualization_type: Option<String>,
    /// Accounts given launch permission.
    pub ami_users: Vec<String>,
    /// Groups given launch permission (`all` makes it public).
    pub ami_groups: Vec<String>,
    /// Organizations given launch permission.
    pub ami_org_arns: Vec<String>,
    /// Organizational units given launch permission.
    pub ami_ou_arns: Vec<String>,
    /// Product codes.
    pub ami_product_codes: Vec<String>,
    /// Regions to copy the AMI to.
    pub ami_regions: Vec<String>,
    /// Tags on the AMI and its snapshots.
    pub tags: BTreeMap<String, String>,
    /// ENA support.
    pub ena_support: Option<bool>,
    /// SR-IOV (`simple`).
    pub sriov_support: bool,
    /// Deregister an existing AMI of the same name first.
    pub force_deregister: bool,
    /// With force_deregister, delete its snapshots too.
    pub force_delete_snapshot: bool,
    /// Encrypt the AMI's snapshots.
    pub encrypt_boot: Option<bool>,
    /// KMS key for encrypt_boot.
    pub kms_key_id: Option<String>,
    /// KMS key per region.
    pub region_kms_key_ids: BTreeMap<String, String>,
    /// Do not keep the AMI in the build region.
    pub skip_save_build_region: bool,
    /// `v2.0` to require IMDSv2.
    pub imds_support: Option<String>,
    /// RFC 3339 time to deprecate the AMI.
    pub deprecate_at: Option<String>,
    /// Tags on snapshots only.
    pub snapshot_tags: BTreeMap<String, String>,
    /// Accounts given createVolumePermission on the snapshots.
    pub snapshot_users: Vec<String>,
    /// Groups given createVolumePermission on the snapshots.
    pub snapshot_groups: Vec<String>,
    /// Protect the AMI from deregistration.
    pub deregistration_protection: Option<serde_json::Value>,
    // Chroot.
    /// Block device mappings of the new AMI (instead of the source's).
    pub ami_block_device_mappings: Vec<BlockDevice>,
    /// Mounts inside the chroot: `[fstype, source, path]`.
    pub chroot_mounts: Vec<[String; 3]>,
    /// Wraps every host command; `{{.Command}}` is the command.
    pub command_wrapper: String,
    /// Host files copied into the chroot for the build.
    pub copy_files: Vec<String>,
    /// Device to attach the volume as.
    pub device_path: Option<String>,
    /// Device the attached volume appears as on NVMe hosts.
    pub nvme_device_path: Option<String>,
    /// Build from an empty volume.
    pub from_scratch: bool,
    /// `mount -o` options.
    pub mount_options: Vec<String>,
    /// Partition to mount (`0` for the whole device).
    pub mount_partition: String,
    /// Where the volume is mounted.
    pub mount_path: String,
    /// Host commands after mounting.
    pub post_mount_commands: Vec<String>,
    /// Host commands before mounting.
    pub pre_mount_commands: Vec<String>,
    /// Root device name of the new AMI.
    pub root_device_name: Option<String>,
    /// Size of the build volume in GiB.
    pub root_volume_size: Option<i64>,
    /// Type of the build volume.
    pub root_volume_type: Option<String>,
    /// Source AMI id.
    pub source_ami: Option<String>,
    /// Source AMI filter (also from a `data "amazon-ami"` source).
    pub source_ami_filter: Option<AmiFilter>,
    /// Tags on the build volume.
    pub root_volume_tags: BTreeMap<String, String>,
    /// Encrypt the build volume.
    pub root_volume_encrypt_boot: Option<bool>,
    /// KMS key for the build volume.
    pub root_volume_kms_key_id: Option<String>,
    /// Architecture of the new AMI.
    pub ami_architecture: String,
    /// Boot mode of the new AMI.
    pub boot_mode: Option<String>,
    /// kiln's boot test: boot the snapshot before registering it (`boot_test` block).
    pub boot_test: Option<super::boot_test::BootTest>,
    /// kiln's build sandbox: network and limits the template asks for (`sandbox` block).
    pub sandbox: super::sandbox::SandboxConfig,
    /// kiln's image linter: the checks the template turns off (`lint` block).
    pub lint: super::lint::LintSettings,
    /// UEFI variable store.
    pub uefi_data: Option<String>,
    /// `v2.0` for NitroTPM.
    pub tpm_support: Option<String>,
    /// Fields left at Packer's default (for `kiln inspect`).
    #[serde(skip)]
    pub defaulted: BTreeSet<&'static str>,
}

impl ChrootConfig {
    /// Decodes and validates one builder object. Every problem goes to `f.diags`.
    pub fn decode(f: &mut Fields<'_>) -> ChrootConfig {
        Self::decode_with(f, None)
    }

    /// As [`ChrootConfig::decode`], with the source image given by a `data "amazon-ami"` source
    /// when the template's `source_ami` refers to one.
    pub fn decode_with(f: &mut Fields<'_>, data_filter: Option<AmiFilter>) -> ChrootConfig {
        let mut c = ChrootConfig {
            region: f.string("region", &[]),
            profile: f.string("profile", &[]),
            access_key: f.string("access_key", &[]),
            secret_key: f.string("secret_key", &[]),
            token: f.string("token", &[]),
            custom_endpoint_ec2: f.string("custom_endpoint_ec2", &[]),
            shared_credentials_file: f.string("shared_credentials_file", &[]),
            skip_region_validation: f.bool("skip_region_validation").unwrap_or(false),
            skip_metadata_api_check: f.bool("skip_metadata_api_check").unwrap_or(false),
            skip_credential_validation: f.bool("skip_credential_validation").unwrap_or(false),
            max_retries: f.int("max_retries"),
            mfa_code: f.string("mfa_code", &[]),
            ami_name: f.string("ami_name", ph::SOURCE).unwrap_or_default(),
            ami_description: f.string("ami_description", ph::SOURCE),
            ami_virtualization_type: f.string("ami_virtualization_type", &[]),
            ami_users: f.string_list("ami_users", &[]).unwrap_or_default(),
            ami_groups: f.string_list("ami_groups", &[]).unwrap_or_default(),
            ami_org_arns: f.string_list("ami_org_arns", &[]).unwrap_or_default(),
            ami_ou_arns: f.string_list("ami_ou_arns", &[]).unwrap_or_default(),
            ami_product_codes: f.string_list("ami_product_codes", &[]).unwrap_or_default(),
            ami_regions: f.string_list("ami_regions", &[]).unwrap_or_default(),
            tags: f.string_map("tags", ph::SOURCE).unwrap_or_default(),
            ena_support: f.bool("ena_support"),
            sriov_support: f.bool("sriov_support").unwrap_or(false),
            force_deregister: f.bool("force_deregister").unwrap_or(false),
            force_delete_snapshot: f.bool("force_delete_snapshot").unwrap_or(false),
            encrypt_boot: f.bool("encrypt_boot"),
            kms_key_id: f.string("kms_key_id", &[]),
            region_kms_key_ids: f.string_map("region_kms_key_ids", &[]).unwrap_or_default(),
            skip_save_build_region: f.bool("skip_save_build_region").unwrap_or(false),
            imds_support: f.string("imds_support", &[]),
            deprecate_at: f.string("deprecate_at", &[]),
            snapshot_tags: f
                .string_map("snapshot_tags", ph::SOURCE)
                .unwrap_or_default(),
            snapshot_users: f.string_list("snapshot_users", &[]).unwrap_or_default(),
            snapshot_groups: f.string_list("snapshot_groups", &[]).unwrap_or_default(),
            deregistration_protection: f.raw("deregistration_protection").map(|n| n.to_json()),
            assume_role: f.raw("assume_role").map(|n| n.to_json()),
            command_wrapper: f.string("command_wrapper", ph::COMMAND).unwrap_or_default(),
            // Packer's weak decoding: "" is unset.
            device_path: f.string("device_path", &[]).filter(|s| !s.is_empty()),
            nvme_device_path: f.string("nvme_device_path", &[]).filter(|s| !s.is_empty()),
            from_scratch: f.bool("from_scratch").unwrap_or(false),
            mount_options: f.string_list("mount_options", &[]).unwrap_or_default(),
            mount_partition: f.string("mount_partition", &[]).unwrap_or_default(),
            mount_path: f.string("mount_path", ph::DEVICE).unwrap_or_default(),
            post_mount_commands: f
                .string_list("post_mount_commands", ph::DEVICE)
                .unwrap_or_default(),
            pre_mount_commands: f
                .string_list("pre_mount_commands", ph::DEVICE)
                .unwrap_or_default(),
            root_device_name: f.string("root_device_name", &[]),
            root_volume_size: f.int("root_volume_size"),
            root_volume_type: f.string("root_volume_type", &[]),
            source_ami: f.string("source_ami", &[]),
            root_volume_tags: f
                .string_map("root_volume_tags", ph::SOURCE)
                .unwrap_or_default(),
            root_volume_encrypt_boot: f.bool("root_volume_encrypt_boot"),
            root_volume_kms_key_id: f.string("root_volume_kms_key_id", &[]),
            ami_architecture: f.string("ami_architecture", &[]).unwrap_or_default(),
            boot_mode: f.string("boot_mode", &[]),
            uefi_data: f.string("uefi_data", &[]),
            tpm_support: f.string("tpm_support", &[]),
            ..Default::default()
        };
        // HCL2 block forms of the tag maps.
        c.tags.extend(f.key_value_blocks("tag", ph::SOURCE));
        c.snapshot_tags
            .extend(f.key_value_blocks("snapshot_tag", ph::SOURCE));
        c.root_volume_tags
            .extend(f.key_value_blocks("root_volume_tag", ph::SOURCE));
        c.aws_polling = decode_polling(f);
        c.source_ami_filter = decode_filter(f).or(data_filter);
        c.ami_block_device_mappings = decode_mappings(f);
        c.boot_test = super::boot_test::decode(f);
        c.sandbox = super::sandbox::decode(f);
        c.lint = super::lint::decode(f);
        let copy_files_set = f.has("copy_files");
        c.copy_files = f.string_list("copy_files", &[]).unwrap_or_default();
        let mounts_set = f.has("chroot_mounts");
        c.chroot_mounts = decode_mounts(f);

        // Packer's defaults.
        if c.command_wrapper.is_empty() {
            c.command_wrapper = DEFAULT_COMMAND_WRAPPER.into();
            c.defaulted.insert("command_wrapper");
        }
        if c.mount_path.is_empty() {
            c.mount_path = DEFAULT_MOUNT_PATH.into();
            c.defaulted.insert("mount_path");
        }
        if c.mount_partition.is_empty() {
            c.mount_partition = DEFAULT_MOUNT_PARTITION.into();
            c.defaulted.insert("mount_partition");
        }
        if c.ami_architecture.is_empty() {
            c.ami_architecture = DEFAULT_ARCHITECTURE.into();
            c.defaulted.insert("ami_architecture");
        }
        if !mounts_set {
            c.chroot_mounts = DEFAULT_CHROOT_MOUNTS
                .iter()
                .map(|m| m.map(str::to_owned))
                .collect();
            c.defaulted.insert("chroot_mounts");
        }
        if !copy_files_set && !c.from_scratch {
            c.copy_files = vec!["/etc/resolv.conf".into()];
            c.defaulted.insert("copy_files");
        }
        c.validate(f);
        c
    }

    fn validate(&self, f: &mut Fields<'_>) {
        // AMI name.
        if self.ami_name.is_empty() {
            f.error("ami_name", "ami_name must be specified");
        } else if !super::gotmpl::has_actions(&self.ami_name) {
            let n = self.ami_name.chars().count();
            if !(3..=128).contains(&n) {
                f.error(
                    "ami_name",
                    "ami_name must be between 3 and 128 characters long",
                );
            }
            if let Some(bad) = self.ami_name.chars().find(|c| !ami_name_char(*c)) {
                f.error("ami_name", format!(
                    "AMIName should only contain alphanumeric characters, parentheses (()), square brackets ([]), spaces ( ), periods (.), slashes (/), dashes (-), single quotes ('), at-signs (@), or underscores(_) (found `{bad}`). You can use the `clean_resource_name` template filter to automatically clean your ami name."
                ));
            }
        }
        if !ARCHITECTURES.contains(&self.ami_architecture.as_str()) {
            f.error("ami_architecture", r#"The only valid ami_architecture values are "arm64", "arm64_mac", "i386", "x86_64", or "x86_64_mac""#);
        }
        if let Some(m) = &self.boot_mode
            && !BOOT_MODES.contains(&m.as_str())
        {
            f.error("boot_mode", format!(r#"The only valid boot_mode values are "legacy-bios", "uefi" and "uefi-preferred" (got "{m}")"#));
        }
        if let Some(v) = &self.imds_support
            && !v.is_empty()
            && v != "v2.0"
        {
            f.error("imds_support", format!(r#"The only valid imds_support values are "v2.0" or the empty string (got "{v}")"#));
        }
        if let Some(v) = &self.tpm_support
            && !v.is_empty()
            && v != "v2.0"
        {
            f.error("tpm_support", format!(r#"The only valid tpm_support values are "v2.0" or the empty string (got "{v}")"#));
        }
        if let Some(t) = &self.ami_virtualization_type
            && !t.is_empty()
            && t != "hvm"
            && t != "paravirtual"
        {
            f.error(
                "ami_virtualization_type",
                format!(r#"ami_virtualization_type must be "hvm" or "paravirtual" (got "{t}")"#),
            );
        }
        if let Some(d) = &self.deprecate_at
            && !super::gotmpl::has_actions(d)
            && time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339)
                .is_err()
        {
            f.error("deprecate_at", format!("deprecate_at must be an RFC 3339 timestamp such as 2030-01-01T00:00:00Z (got \"{d}\")"));
        }
        // KMS.
        if (self.kms_key_id.is_some() || !self.region_kms_key_ids.is_empty())
            && self.encrypt_boot != Some(true)
        {
            let field = if self.kms_key_id.is_some() {
                "kms_key_id"
            } else {
                "region_kms_key_ids"
            };
            f.error(field, "If you have set either kms_key_id or region_kms_key_ids, encrypt_boot must also be true.");
        }
        if !self.region_kms_key_ids.is_empty() {
            for r in &self.ami_regions {
                if !self.region_kms_key_ids.contains_key(r) {
                    f.error(
                        "region_kms_key_ids",
                        format!("Region {r} is in ami_regions but not in region_kms_key_ids"),
                    );
                }
            }
            for r in self.region_kms_key_ids.keys() {
                if !self.ami_regions.contains(r) && Some(r) != self.region.as_ref() {
                    f.error(
                        "region_kms_key_ids",
                        format!("Region {r} is in region_kms_key_ids but not in ami_regions"),
                    );
                }
            }
        }
        if self.root_volume_kms_key_id.is_some() && self.root_volume_encrypt_boot != Some(true) {
            f.error("root_volume_kms_key_id", "If you have set root_volume_kms_key_id, root_volume_encrypt_boot must also be true.");
        }
        for (key, t) in [("root_volume_type", &self.root_volume_type)] {
            if let Some(t) = t
                && !VOLUME_TYPES.contains(&t.as_str())
            {
                f.error(
                    key,
                    format!(
                        "unknown volume type \"{t}\": use one of {}",
                        VOLUME_TYPES.join(", ")
                    ),
                );
            }
        }
        if let Some(s) = self.root_volume_size
            && s <= 0
        {
            f.error(
                "root_volume_size",
                format!("root_volume_size must be a positive number of GiB (got {s})"),
            );
        }
        if !self.mount_partition.chars().all(|c| c.is_ascii_digit()) {
            f.error("mount_partition", format!("mount_partition must be a partition number, or \"0\" for the whole device (got \"{}\")", self.mount_partition));
        }
        for (i, m) in self.chroot_mounts.iter().enumerate() {
            if m.iter().any(String::is_empty) {
                f.error(
                    &format!("chroot_mounts[{i}]"),
                    "Each chroot_mounts entry should be three elements.",
                );
            }
        }
        self.validate_host_paths(f);
        if !self.command_wrapper.contains("{{.Command}}") {
            f.warn(
                "command_wrapper",
                "command_wrapper does not contain {{.Command}}: the commands it wraps will not run",
            );
        }
        // from_scratch or source.
        if self.from_scratch {
            if self.source_ami.is_some() || self.source_ami_filter.is_some() {
                f.warn(
                    "from_scratch",
                    "source_ami and source_ami_filter are unused when from_scratch is true",
                );
            }
            if self.root_volume_size.is_none() {
                f.error(
                    "root_volume_size",
                    "root_volume_size is required with from_scratch.",
                );
            }
            if self.pre_mount_commands.is_empty() {
                f.error(
                    "pre_mount_commands",
                    "pre_mount_commands is required with from_scratch.",
                );
            }
            if self
                .ami_virtualization_type
                .as_deref()
                .unwrap_or("")
                .is_empty()
            {
                f.error(
                    "ami_virtualization_type",
                    "ami_virtualization_type is required with from_scratch.",
                );
            }
            if self.root_device_name.is_none() {
                f.error(
                    "root_device_name",
                    "root_device_name is required with from_scratch.",
                );
            }
            if self.ami_block_device_mappings.is_empty() {
                f.error(
                    "ami_block_device_mappings",
                    "ami_block_device_mappings is required with from_scratch.",
                );
            }
        } else {
            if self.source_ami.as_deref().unwrap_or("").is_empty()
                && self.source_ami_filter.is_none()
            {
                f.error("source_ami", "source_ami or source_ami_filter is required.");
            }
            if !self.ami_block_device_mappings.is_empty() && self.root_device_name.is_none() {
                f.error(
                    "root_device_name",
                    "If ami_block_device_mappings is specified, root_device_name must be specified",
                );
            }
            if self.root_device_name.is_some() && self.ami_block_device_mappings.is_empty() {
                f.error(
                    "ami_block_device_mappings",
                    "If root_device_name is specified, ami_block_device_mappings must be specified",
                );
            }
            if !self.ami_block_device_mappings.is_empty() && self.root_volume_size.is_none() {
                f.error(
                    "root_volume_size",
                    "root_volume_size is required if ami_block_device_mappings is specified",
                );
            }
        }
        if let Some(root) = &self.root_device_name
            && !self.ami_block_device_mappings.is_empty()
            && !self
                .ami_block_device_mappings
                .iter()
                .any(|b| &b.device_name == root)
        {
            f.error("root_device_name", format!("root_device_name {root} has no entry in ami_block_device_mappings: add a mapping with device_name = \"{root}\""));
        }
    }
}

impl ChrootConfig {
    /// `device_path`, `nvme_device_path` and `mount_path` name host paths that kiln locks, links,
    /// mounts and unmounts as root: each must be what Packer documents it to be (see
    /// [`device_path_problem`], [`nvme_device_path_problem`], [`mount_path_problem`]).
    fn validate_host_paths(&self, f: &mut Fields<'_>) {
        if let Some(p) = &self.device_path
            && let Some(e) = device_path_problem(p)
        {
            f.error("device_path", e);
        }
        if let Some(p) = &self.nvme_device_path
            && let Some(e) = nvme_device_path_problem(p)
        {
            f.error("nvme_device_path", e);
        }
        match self.sample_mount_path(f.ctx) {
            Ok(p) => {
                if let Some(e) = mount_path_problem(&p) {
                    f.error("mount_path", e);
                }
            }
            Err(e) => f.error("mount_path", e),
        }
    }

    /// `mount_path` as a build renders it, with `{{.Device}}` standing for an attachment point
    /// (`xvdf`; a device name is always one plain path component).
    fn sample_mount_path(&self, ctx: &super::gotmpl::Ctx) -> Result<String, String> {
        if !super::gotmpl::has_actions(&self.mount_path) {
            return Ok(self.mount_path.clone());
        }
        let mut ctx = ctx.clone();
        ctx.placeholders = [("Device".to_owned(), Some("xvdf".to_owned()))].into();
        super::gotmpl::render(&self.mount_path, &ctx).map(|r| r.text)
    }
}

fn decode_polling(f: &mut Fields<'_>) -> Option<AwsPolling> {
    let node = f.raw("aws_polling")?;
    let node = match &node.value {
        super::node::Value::Array(a) if a.len() == 1 => &a[0],
        _ => node,
    };
    let mut diags = Vec::new();
    let mut g = Fields::new(node, f.field("aws_polling"), &mut diags, f.ctx);
    let p = AwsPolling {
        delay_seconds: g.int("delay_seconds"),
        max_attempts: g.int("max_attempts"),
    };
    for (k, v) in [
        ("delay_seconds", p.delay_seconds),
        ("max_attempts", p.max_attempts),
    ] {
        if v.is_some_and(|v| v <= 0) {
            g.error(k, format!("{k} must be a positive number"));
        }
    }
    g.finish(&[]);
    f.diags.append(&mut diags);
    Some(p)
}

fn decode_mounts(f: &mut Fields<'_>) -> Vec<[String; 3]> {
    let Some(node) = f.raw("chroot_mounts") else {
        return Vec::new();
    };
    let super::node::Value::Array(items) = &node.value else {
        f.error(
            "chroot_mounts",
            "expected a list of [fstype, source, path] lists",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("chroot_mounts[{i}]");
        match &item.value {
            super::node::Value::Array(parts) if parts.len() == 3 => {
                let strs: Vec<String> = parts
                    .iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect();
                if strs.len() == 3 {
                    out.push([strs[0].clone(), strs[1].clone(), strs[2].clone()]);
                } else {
                    f.error(&key, "Each chroot_mounts entry should be three elements.");
                }
            }
            _ => f.error(&key, "Each chroot_mounts entry should be three elements."),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// Loads a JSON template with one chroot builder made of `fields`; returns its errors.
    fn errors_of(fields: &str) -> Vec<String> {
        let dir = std::env::temp_dir().join(format!(
            "kiln-config-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("t.json");
        std::fs::write(
            &p,
            format!(
                r#"{{"builders": [{{"type": "amazon-chroot", "ami_name": "kiln-ami", "source_ami": "ami-12345678"{fields}}}]}}"#
            ),
        )
        .expect("write");
        let inputs = crate::template::Inputs {
            cwd: dir.clone(),
            ..Default::default()
        };
        let l = crate::template::load(&p, &inputs);
        let _ = std::fs::remove_dir_all(&dir);
        l.errors().map(ToString::to_string).collect()
    }

    /// The fields that name host paths are checked at validation, each error naming its field.
    #[test]
    fn host_path_fields_are_validated() {
        assert_eq!(errors_of(""), Vec::<String>::new());
        assert_eq!(
            errors_of(
                r#", "device_path": "/dev/xvdg", "nvme_device_path": "/dev/nvme1n1", "mount_path": "/mnt/chroot-{{.Device}}""#
            ),
            Vec::<String>::new()
        );
        // "" is unset, as in Packer's weak decoding.
        assert_eq!(errors_of(r#", "device_path": """#), Vec::<String>::new());
        for (fields, field) in [
            (r#", "device_path": "/dev/../../../tmp/x""#, "device_path"),
            (
                r#", "nvme_device_path": "/dev/nvme1n1/../../sda""#,
                "nvme_device_path",
            ),
            (r#", "mount_path": "/mnt/../tmp/{{.Device}}""#, "mount_path"),
            (r#", "mount_path": "/tmp/{{.Device}}""#, "mount_path"),
            (r#", "mount_path": "/mnt/{{.MountPath}}""#, "mount_path"),
        ] {
            let e = errors_of(fields);
            assert_eq!(e.len(), 1, "{fields}: {e:?}");
            assert!(e[0].contains(field), "{fields}: {e:?}");
        }
        let e = errors_of(r#", "device_path": "/dev/../../../tmp/x""#).join("\n");
        assert!(e.contains("/dev/sd[f-p] or /dev/xvd[f-p]"), "{e}");
    }
}
