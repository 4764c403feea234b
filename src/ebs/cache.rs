//! The builder's cache of source snapshots, by snapshot id: `<dir>/<snap>.img` (the sparse image)
//! and `<dir>/<snap>.json` (its block map and size, written last: a snapshot is cached only when
//! both are there). A snapshot's data never changes, so a cached copy is good for as long as the
//! id exists; the second build on the same base reads no block. One build fills an entry at a
//! time (a lock per snapshot); the others wait and then use it. A build served from the cache
//! first proves with its own credentials that it may read the snapshot (one ListSnapshotBlocks
//! call): builds of several teams share a builder, and its cache must not widen what a team's
//! role may read.

use super::read::{Read, read_snapshot};
use super::{BlockMap, EbsError};
use crate::host::lock::DeviceLock;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a build waiting for another's read of the same snapshot looks again.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// A source snapshot on local disk.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The sparse image file (read only: builds copy it).
    pub file: PathBuf,
    /// Its blocks and their checksums.
    pub map: BlockMap,
    /// The snapshot's volume size (GiB).
    pub volume_size_gib: u64,
    /// Whether it was there already (nothing was read).
    pub hit: bool,
    /// Bytes read from the service (0 on a hit).
    pub bytes_read: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    volume_size_gib: u64,
    map: BlockMap,
}

/// The cache under one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// Whether `id` is a snapshot id (`snap-` and hex): the only names the cache makes files of.
fn is_snapshot_id(id: &str) -> bool {
    id.strip_prefix("snap-").is_some_and(|h| {
        !h.is_empty() && h.len() <= 32 && h.bytes().all(|c| c.is_ascii_alphanumeric())
    })
}

impl Cache {
    /// A cache in `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Cache { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn paths(&self, snapshot: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{snapshot}.img")),
            self.dir.join(format!("{snapshot}.json")),
        )
    }

    /// `snapshot` if it is cached (read only).
    pub fn load(&self, snapshot: &str) -> Option<Cached> {
        let (img, meta) = self.paths(snapshot);
        let entry: Entry = serde_json::from_slice(&std::fs::read(&meta).ok()?).ok()?;
        img.exists().then_some(Cached {
            file: img,
            map: entry.map,
            volume_size_gib: entry.volume_size_gib,
            hit: true,
            bytes_read: 0,
        })
    }

    /// `snapshot`'s image and block map, read from the service unless cached. Side effects: fills
    /// the cache entry (atomically: a crash leaves no half entry). Safe to run twice and from
    /// several builds at once.
    pub async fn fetch(
        &self,
        ebs: &aws_sdk_ebs::Client,
        region: &str,
        snapshot: &str,
        cancel: &CancellationToken,
    ) -> Result<Cached, EbsError> {
        if !is_snapshot_id(snapshot) {
            return Err(EbsError::Invalid(format!(
                "{snapshot:?} is not a snapshot id (snap- and hex digits): the source image's root mapping names no snapshot the EBS direct APIs can read"
            )));
        }
        if let Some(c) = self.load(snapshot) {
            // Cached for another build (perhaps another team's): this caller must still be
            // allowed to read it.
            super::read::check_access(ebs, region, snapshot).await?;
            return Ok(c);
        }
        std::fs::create_dir_all(&self.dir).map_err(EbsError::io("creating", &self.dir))?;
        let _lock = loop {
            if let Some(l) = DeviceLock::try_lock(&self.dir, snapshot)? {
                break l;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(EbsError::Cancelled(format!("the wait for the cache of {snapshot}"))),
                _ = tokio::time::sleep(LOCK_POLL) => {}
            }
        };
        // Another build may have filled it while this one waited.
        if let Some(c) = self.load(snapshot) {
            super::read::check_access(ebs, region, snapshot).await?;
            return Ok(c);
        }
        let (img, meta) = self.paths(snapshot);
        let partial = img.with_extension("img.partial");
        let read = read_snapshot(ebs, region, snapshot, &partial, cancel).await;
        let Read {
            map,
            volume_size_gib,
            bytes,
        } = match read {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        std::fs::rename(&partial, &img).map_err(EbsError::io("renaming into place", &img))?;
        let entry = Entry {
            volume_size_gib,
            map: map.clone(),
        };
        let tmp = meta.with_extension("json.partial");
        let text = serde_json::to_vec(&entry).map_err(|e| EbsError::Invalid(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(EbsError::io("writing", &tmp))?;
        std::fs::rename(&tmp, &meta).map_err(EbsError::io("renaming into place", &meta))?;
        Ok(Cached {
            file: img,
            map,
            volume_size_gib,
            hit: false,
            bytes_read: bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_snapshot_ids_name_files() {
        assert!(is_snapshot_id("snap-0123abcd"));
        for bad in [
            "snap-",
            "snap-../x",
            "vol-1",
            "snap-a/b",
            "../../etc/passwd",
            "",
        ] {
            assert!(!is_snapshot_id(bad), "{bad}");
        }
    }
}
