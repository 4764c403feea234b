//! Step `copy-files`: each `copy_files` host path copied to the same path inside the image,
//! resolved within the mount (a link in the image's parent directories leads elsewhere in the
//! image, never onto the host). What was there is kept: a symlink (systemd's /etc/resolv.conf) is
//! replaced and restored at cleanup, anything else (a file, and equally a device node or FIFO,
//! which kiln never opens) moved aside and restored, so the image is left as it was; the copy is
//! a new regular file. The host source must be a regular file. Undo (always): remove the copies,
//! restore the originals.

use crate::host::HostError;
use crate::host::image_fs::{self, Entry, ImageFs};
use crate::pipeline::state::CopiedFile;
use crate::pipeline::{Build, StepError};
use std::path::Path;

/// Suffix of the original a copy replaces while the build runs.
const BACKUP_SUFFIX: &str = ".kiln-orig";

fn image_of(b: &Build) -> Result<ImageFs, StepError> {
    let mp = b.mount_path()?;
    Ok(ImageFs::open(&mp)?)
}

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let image = image_of(b)?;
    for src in b.plan.config.copy_files.clone() {
        let mut record = CopiedFile {
            path: src.clone(),
            replaced_link: None,
            backup: None,
        };
        match image.entry(&src)? {
            Entry::Link(target) => {
                image.remove(&src)?;
                record.replaced_link = Some(target);
            }
            Entry::Missing => {}
            Entry::Directory | Entry::Other => {
                let backup = format!("{src}{BACKUP_SUFFIX}");
                image.rename(&src, &backup)?;
                record.backup = Some(backup);
            }
        }
        b.state.copied.push(record);
        let mut from = image_fs::open_host_source(Path::new(&src))?;
        // Created anew (`O_EXCL`, never opening what is there): the original was moved aside.
        let mut to = image.create(&src, 0o644)?;
        std::io::copy(&mut from, &mut to).map_err(HostError::io("copying into the image", &src))?;
    }
    Ok(serde_json::json!({ "copied": b.plan.config.copy_files }))
}

pub fn undo(b: &mut Build) -> Result<(), StepError> {
    if b.state.copied.is_empty() {
        return Ok(());
    }
    let image = image_of(b)?;
    while let Some(c) = b.state.copied.last().cloned() {
        image.remove(&c.path)?;
        if let Some(target) = &c.replaced_link {
            image.symlink(&c.path, target)?;
        }
        if let Some(backup) = &c.backup {
            image.rename(backup, &c.path)?;
        }
        b.state.copied.pop();
    }
    Ok(())
}
