//! kiln bakes Amazon Machine Images with the chroot method: a builder instance creates a volume
//! from the source image's root snapshot, attaches, mounts and provisions it in a chroot, then
//! snapshots it and registers an AMI. See ARCHITECTURE.md for the module map.

pub mod aws;
pub mod backend;
pub mod checkpoint;
pub mod ec2;
pub mod gc;
pub mod host;
pub mod observe;
pub mod pipeline;
pub mod template;
pub mod worker;
