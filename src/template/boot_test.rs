//! kiln's `boot_test` block in an `amazon-chroot` source (a kiln extension; Packer has no such
//! field): boot the new image before it is published, and fail the build unless its console shows
//! the success marker in time.
//!
//! ```hcl
//! boot_test {
//!   marker  = "login:"   # a regular expression matched against each console line
//!   timeout = "5m"
//!   memory  = 1024       # MiB
//!   accelerator = "tcg"  # or "kvm" where /dev/kvm works (bare metal)
//!   method  = "qemu"     # or "instance": launch the AMI on EC2 (default on the ebs backend)
//!   instance_type = "t3.micro"   # the instance the image is for (t4g.micro for arm64): the
//!                                # instance method launches it; both methods attach the disk
//!                                # as it sees it (NVMe on Nitro, virtio for Xen types)
//!   subnet_id     = "subnet-..." # instance method: default the builder's subnet
//! }
//! ```

use super::decode::Fields;
use super::provisioner::parse_duration;
use serde::Serialize;

/// Default success marker: a getty's login prompt, or systemd reaching its multi-user target.
pub const DEFAULT_MARKER: &str = r"login:|Reached target .*Multi-User";
/// Default time to wait for the marker. A Debian image under KVM reaches its login prompt in about
/// 10 s; without KVM (TCG) in about 60 s on this project's 2-core CI machines: 5 minutes leaves
/// room for slow hosts without hiding a hang for long.
pub const DEFAULT_TIMEOUT_S: f64 = 300.0;
/// Default guest memory in MiB: enough for a systemd distribution's initramfs to unpack.
pub const DEFAULT_MEMORY_MIB: i64 = 1024;
/// Default test instance for x86_64 images: the smallest current burstable type with a Nitro
/// serial console (1 GiB, like the QEMU default), in every region. A Nitro type, so by default
/// the boot test sees the root volume as NVMe, as most instances will.
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.micro";
/// Default test instance for arm64 images (Graviton).
pub const DEFAULT_INSTANCE_TYPE_ARM64: &str = "t4g.micro";

/// How the image is booted.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BootMethod {
    /// The snapshot's data file in QEMU on the builder (loop backend; x86_64 and arm64).
    Qemu,
    /// The image launched on an EC2 instance, its serial console read with GetConsoleOutput.
    Instance,
}

/// The boot test's settings.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BootTest {
    /// A regular expression; the first console line matching it means the image booted.
    pub marker: String,
    /// Seconds to wait for it.
    pub timeout_s: f64,
    /// Guest memory, MiB.
    pub memory_mib: i64,
    /// Use KVM (`accelerator = "kvm"`) instead of QEMU's emulation (TCG, the default: KVM is
    /// missing on virtualised builders, and nested KVM is not reliable there).
    pub kvm: bool,
    /// `method`; `None` picks by backend: `qemu` on loop, `instance` on ebs (where the
    /// snapshot's data is on EBS, not on the builder).
    pub method: Option<BootMethod>,
    /// `instance_type`: the instance method's test instance, and for both methods the type
    /// whose hypervisor decides how the disk is attached (default by architecture, see
    /// [`BootTest::instance_type_for`]).
    pub instance_type: Option<String>,
    /// `subnet_id` for the instance method (default: the builder's subnet).
    pub subnet_id: Option<String>,
}

impl Default for BootTest {
    fn default() -> Self {
        Self {
            marker: DEFAULT_MARKER.into(),
            timeout_s: DEFAULT_TIMEOUT_S,
            memory_mib: DEFAULT_MEMORY_MIB,
            kvm: false,
            method: None,
            instance_type: None,
            subnet_id: None,
        }
    }
}

impl BootTest {
    /// The instance type the image is tested for: `instance_type`, else the default of the
    /// image's architecture (both Nitro).
    pub fn instance_type_for(&self, arm64: bool) -> &str {
        match &self.instance_type {
            Some(t) => t,
            None if arm64 => DEFAULT_INSTANCE_TYPE_ARM64,
            None => DEFAULT_INSTANCE_TYPE,
        }
    }
}

/// Decodes `boot_test` (an object in JSON, a block in HCL2), if present.
pub fn decode(f: &mut Fields<'_>) -> Option<BootTest> {
    let node = f.raw("boot_test")?;
    let node = match &node.value {
        super::node::Value::Array(a) if a.len() == 1 => &a[0],
        _ => node,
    };
    let mut diags = Vec::new();
    let path = f.field("boot_test");
    let mut g = Fields::new(node, path, &mut diags, f.ctx);
    let mut b = BootTest::default();
    if let Some(m) = g.string("marker", &[]) {
        if let Err(e) = regex::Regex::new(&m) {
            g.error("marker", format!("marker is not a regular expression: {e}"));
        }
        b.marker = m;
    }
    if let Some(t) = g.string("timeout", &[]) {
        match parse_duration(&t) {
            Some(s) if s > 0.0 => b.timeout_s = s,
            _ => g.error(
                "timeout",
                format!("invalid duration \"{t}\": use a Go duration such as 5m"),
            ),
        }
    }
    if let Some(m) = g.int("memory") {
        if m < 128 {
            g.error("memory", "memory is in MiB and must be at least 128");
        }
        b.memory_mib = m;
    }
    match g.string("accelerator", &[]).as_deref() {
        None | Some("tcg") => {}
        Some("kvm") => b.kvm = true,
        Some(other) => g.error(
            "accelerator",
            format!("accelerator must be \"tcg\" or \"kvm\", got \"{other}\""),
        ),
    }
    match g.string("method", &[]).as_deref() {
        None => {}
        Some("qemu") => b.method = Some(BootMethod::Qemu),
        Some("instance") => b.method = Some(BootMethod::Instance),
        Some(other) => g.error(
            "method",
            format!("method must be \"qemu\" or \"instance\", got \"{other}\""),
        ),
    }
    b.instance_type = g.string("instance_type", &[]).filter(|t| !t.is_empty());
    b.subnet_id = g.string("subnet_id", &[]).filter(|t| !t.is_empty());
    if b.method == Some(BootMethod::Qemu) && g.has("subnet_id") {
        g.warn(
            "subnet_id",
            "subnet_id is for method = \"instance\"; ignored with qemu",
        );
    }
    g.finish(&[]);
    f.diags.append(&mut diags);
    Some(b)
}
