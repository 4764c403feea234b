//! Step `lint-image`: after the provisioners, while the image is still mounted, the image linter
//! (`crate::lint`) checks that it can do what the AMI's registration promises (architecture,
//! boot mode, ENA, NVMe on Nitro, fstab, IMDSv2), reading the mounted root through `ImageFs`
//! and the build's own block device for its partitions. Errors fail the build here, before the
//! snapshot and the registration, with every finding (file and fix) in the message; the
//! unwinding then removes the volume as for any failure. Warnings, and the checks that did not
//! run, are the step's outputs in the result document (`findings`, `not_checked`). The
//! template's `lint { skip = [...] }` turns checks off. Nothing to undo: the step only reads.

use crate::host::image_fs::ImageFs;
use crate::lint::{self, Disk, Promises};
use crate::pipeline::{Build, StepError};

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let mount = b.mount_path()?;
    let block = b.state.block_device.clone();
    let architecture = super::register_image::architecture(b);
    let promises = Promises::from_config(&b.plan.config, b.state.source.as_ref(), &architecture);
    let skip = b.plan.config.lint.skip.clone();
    // Reading the image and its disk blocks: off the async runtime's threads.
    let report = tokio::task::spawn_blocking(move || {
        let fs = ImageFs::open(&mount)?;
        let disk = block.as_deref().map(Disk::open).transpose()?;
        Ok::<_, lint::LintError>(lint::lint(&fs, disk.as_ref(), &promises, &skip))
    })
    .await
    .map_err(|e| super::invalid(format!("kiln bug: the linter stopped: {e}")))?
    .map_err(|e| super::invalid(format!("the image could not be linted: {e}")))?;
    for f in &report.findings {
        (b.sink)(
            "lint-image",
            &format!(
                "{:?} [{}] {}: {} (fix: {})",
                f.severity, f.check, f.file, f.message, f.fix
            ),
        );
    }
    if report.has_errors() {
        return Err(super::invalid(format!(
            "the image cannot keep what its registration promises (nothing was snapshotted or registered):\n{}",
            report.text().trim_end()
        )));
    }
    Ok(serde_json::to_value(&report).unwrap_or_default())
}
