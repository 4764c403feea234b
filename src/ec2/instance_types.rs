//! Which hypervisor an EC2 instance type runs on, and so how an instance of it sees its EBS root
//! volume: on the Nitro System (every current generation) as an NVMe device, so the image's
//! initramfs needs the `nvme` driver; on the Xen-era types as a Xen paravirtual disk
//! (`xen-blkfront`; the firmware and boot loader read it through emulated IDE). One table of the
//! Xen families ([`XEN_FAMILIES`]); every other type is Nitro, so a family AWS adds later is
//! classified right without an update. The boot test attaches its disk by this, and the
//! emulator's RunInstances (`scripts/emulator_launcher.py`, section 11) keeps the same table (a
//! unit test compares them).

/// The hypervisor an instance type runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypervisor {
    /// The Nitro System: EBS volumes are NVMe devices (`/dev/nvme0n1`).
    Nitro,
    /// Xen: EBS volumes are Xen paravirtual block devices (`/dev/xvda`).
    Xen,
}

/// The instance families that run on Xen: those missing from AWS's list "Instances built on the
/// AWS Nitro System" (EC2 User Guide, instance types), current and previous generation. Their
/// `.metal` sizes (`i3.metal`) are Nitro; `i3en` and `p3dn` are families of their own (Nitro).
pub const XEN_FAMILIES: &[&str] = &[
    "c1", "c3", "c4", "cc1", "cc2", "cg1", "cr1", "d2", "f1", "g2", "g3", "g3s", "h1", "hi1",
    "hs1", "i2", "i3", "m1", "m2", "m3", "m4", "p2", "p3", "r3", "r4", "t1", "t2", "x1", "x1e",
];

/// The hypervisor of `instance_type` (`t3.micro`, `m4.large`, ...): Xen for a family in
/// [`XEN_FAMILIES`] unless the size is bare metal, Nitro otherwise (also for names EC2 does not
/// know: RunInstances refuses those, and the boot test's own QEMU then boots as the default does).
pub fn hypervisor(instance_type: &str) -> Hypervisor {
    let name = instance_type.trim().to_ascii_lowercase();
    let (family, size) = name.split_once('.').unwrap_or((name.as_str(), ""));
    if XEN_FAMILIES.contains(&family) && !size.starts_with("metal") {
        Hypervisor::Xen
    } else {
        Hypervisor::Nitro
    }
}

#[cfg(test)]
mod tests {
    use super::{Hypervisor, XEN_FAMILIES, hypervisor};

    #[test]
    fn current_generations_are_nitro_and_the_xen_families_are_xen() {
        for t in [
            "t3.micro",
            "t4g.micro",
            "m5.large",
            "c7i.xlarge",
            "i3en.large",
            "p3dn.24xlarge",
            "i3.metal",
            "a1.medium",
            "z1d.large",
            "u-6tb1.metal",
            "mac1.metal",
            "x2iedn.xlarge",
        ] {
            assert_eq!(hypervisor(t), Hypervisor::Nitro, "{t}");
        }
        for t in [
            "t2.micro",
            "T2.Micro",
            "m4.16xlarge",
            "c4.large",
            "i3.large",
            "p3.2xlarge",
            "x1e.xlarge",
            "m1.small",
            "g3s.xlarge",
            "h1.2xlarge",
            "f1.2xlarge",
        ] {
            assert_eq!(hypervisor(t), Hypervisor::Xen, "{t}");
        }
    }

    /// The emulator's RunInstances attaches disks by the same table.
    #[test]
    fn the_emulator_keeps_the_same_xen_families() {
        let launcher = include_str!("../../scripts/emulator_launcher.py");
        let start = launcher
            .find("XEN_FAMILIES = (")
            .expect("scripts/emulator_launcher.py defines XEN_FAMILIES = (...)");
        let table = &launcher[start..];
        let table = &table[..table.find(')').expect("the tuple ends")];
        let mut theirs: Vec<&str> = table.split('"').skip(1).step_by(2).collect();
        let mut ours = XEN_FAMILIES.to_vec();
        theirs.sort_unstable();
        ours.sort_unstable();
        assert_eq!(theirs, ours);
    }
}
