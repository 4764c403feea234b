//! Step `inventory-source`: right after the source image's root is mounted, before any command
//! (host or in-image) has run, its packages are read from its own databases (`crate::sbom`,
//! through `ImageFs`; nothing from the image runs). Step `sbom` compares the built image with
//! this list: what the build changed against its parent, whoever built the parent. A database
//! kiln cannot read is a note in the outputs, never a failed build. Nothing to undo: it only
//! reads.

use crate::pipeline::{Build, StepError};

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let mount = b.mount_path()?;
    let (inv, readable) = super::sbom::read_inventory(mount).await?;
    let packages = crate::sbom::all_packages(&inv);
    let out = serde_json::json!({
        "packages": packages.len(),
        "databases": inv.databases,
        "note": inv.note,
    });
    // A parent whose databases could not be read is not compared with (every package would
    // show as added).
    b.state.base_packages = readable.then_some(packages);
    Ok(out)
}
