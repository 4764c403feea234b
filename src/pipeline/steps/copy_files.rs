//! Step `copy-files`: each `copy_files` host path copied to the same path in the chroot. What was
//! there is kept: a symlink (systemd's /etc/resolv.conf) or a file is restored at cleanup, so the
//! image is left as it was. Undo (always): remove the copies, restore the originals.

use crate::host::HostError;
use crate::pipeline::state::CopiedFile;
use crate::pipeline::{Build, StepError};
use std::path::Path;

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let mp = b
        .state
        .mount_path
        .clone()
        .ok_or_else(|| super::invalid("no mount path"))?;
    for src in b.plan.config.copy_files.clone() {
        let dst = mp.join(src.trim_start_matches('/'));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(HostError::io("creating", parent))?;
        }
        let mut record = CopiedFile {
            path: dst.clone(),
            replaced_link: None,
            backup: None,
        };
        match std::fs::symlink_metadata(&dst) {
            Ok(m) if m.file_type().is_symlink() => {
                record.replaced_link = Some(
                    std::fs::read_link(&dst).map_err(HostError::io("reading the link", &dst))?,
                );
                std::fs::remove_file(&dst).map_err(HostError::io("removing the link", &dst))?;
            }
            Ok(_) => {
                let backup = dst.with_file_name(format!(
                    "{}.kiln-orig",
                    dst.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                ));
                std::fs::rename(&dst, &backup).map_err(HostError::io("moving aside", &dst))?;
                record.backup = Some(backup);
            }
            Err(_) => {}
        }
        b.state.copied.push(record);
        std::fs::copy(Path::new(&src), &dst)
            .map_err(HostError::io("copying into the chroot", &dst))?;
    }
    Ok(serde_json::json!({ "copied": b.plan.config.copy_files }))
}

pub fn undo(b: &mut Build) -> Result<(), StepError> {
    while let Some(c) = b.state.copied.pop() {
        let _ = std::fs::remove_file(&c.path);
        if let Some(target) = &c.replaced_link {
            std::os::unix::fs::symlink(target, &c.path)
                .map_err(HostError::io("restoring the link", &c.path))?;
        }
        if let Some(backup) = &c.backup {
            std::fs::rename(backup, &c.path).map_err(HostError::io("restoring", &c.path))?;
        }
    }
    Ok(())
}
