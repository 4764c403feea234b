//! kiln's integration tests: one test binary (aws-sdk-ec2 is linked once), one module per concern.
//! They run against the emulator started by `scripts/emulator up` and, where they need it, real
//! loop devices and mounts (as root). Every test uses its own names and cleans up after itself.

mod ansible;
mod boot;
mod build_timeout;
mod cascade;
mod checkpoint;
mod data_sources;
mod debian;
mod direct;
mod duplicates;
mod ebs;
mod emulator;
mod emulator_direct;
mod emulator_images;
mod emulator_strict;
mod eval_bombs;
mod exactly_once;
mod gc_generations;
mod host_paths;
mod host_safety;
mod lambda;
mod lifecycle;
mod lint;
mod nightly;
mod packer_diff;
mod pipeline;
mod pool;
mod sandbox;
mod sbom;
mod submit;
mod support;
mod teams;
mod template_files;
mod template_gaps;
mod templates;
mod terminal;
mod trigger;
mod undo;
mod waits;
mod worker;
