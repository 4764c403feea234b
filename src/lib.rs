//! kiln bakes Amazon Machine Images with the chroot method: a builder instance creates a volume
//! from the source image's root snapshot, attaches, mounts and provisions it in a chroot, then
//! snapshots it and registers an AMI. See ARCHITECTURE.md for the module map.

//!
//! Features: `builder` (default) is everything that runs builds on a builder host: the host's
//! devices and mounts, the pipeline, checkpoints, the worker and gc. `trigger` (default) is the
//! `kiln-trigger` Lambda function; built alone (`--no-default-features --features trigger`) it
//! carries no privileged host code.

pub mod aws;
#[cfg(feature = "builder")]
pub mod backend;
pub mod channels;
#[cfg(feature = "builder")]
pub mod checkpoint;
pub mod data_sources;
#[cfg(feature = "builder")]
pub mod ebs;
pub mod ec2;
#[cfg(feature = "builder")]
pub mod gc;
#[cfg(feature = "builder")]
pub mod host;
#[cfg(feature = "builder")]
pub mod lint;
pub mod observe;
#[cfg(feature = "builder")]
pub mod pipeline;
pub mod release;
pub mod request;
pub mod sbom;
pub mod team;
pub mod template;
pub mod template_store;
#[cfg(feature = "trigger")]
pub mod trigger;
#[cfg(feature = "builder")]
pub mod worker;
