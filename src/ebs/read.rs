//! Reading a snapshot: ListSnapshotBlocks (every page) names the blocks that hold data,
//! GetSnapshotBlock fetches them, [`IN_FLIGHT`] at a time, each checked against its checksum and
//! written at its offset into a sparse file the size of the snapshot's volume. Blocks the
//! snapshot does not list stay holes (they read as zeros, as on a volume made from it).

use super::{BLOCK_SIZE, BlockMap, EbsError, GIB, IN_FLIGHT, api, checksum};
use futures_util::StreamExt as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// What a read found.
#[derive(Debug, Clone)]
pub struct Read {
    /// The blocks that hold data, with their checksums (the parent's map for a delta).
    pub map: BlockMap,
    /// The snapshot's volume size (GiB).
    pub volume_size_gib: u64,
    /// Bytes fetched.
    pub bytes: u64,
}

/// Lists `snapshot`'s blocks: `(index, token)` in index order, and its volume size in GiB.
pub async fn list(
    ebs: &aws_sdk_ebs::Client,
    region: &str,
    snapshot: &str,
) -> Result<(Vec<(u64, String)>, u64), EbsError> {
    let mut blocks = Vec::new();
    let mut token = None;
    let mut size;
    loop {
        let out = ebs
            .list_snapshot_blocks()
            .snapshot_id(snapshot)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(api("ListSnapshotBlocks", snapshot, region))?;
        if let Some(bs) = out.block_size()
            && bs as u64 != BLOCK_SIZE
        {
            return Err(EbsError::Invalid(format!(
                "ListSnapshotBlocks {snapshot} in {region}: block size {bs}, but the EBS direct APIs use {BLOCK_SIZE}"
            )));
        }
        size = out.volume_size().unwrap_or(0).max(0) as u64;
        for b in out.blocks() {
            if let (Some(i), Some(t)) = (b.block_index(), b.block_token()) {
                blocks.push((i.max(0) as u64, t.to_owned()));
            }
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => break,
        }
    }
    Ok((blocks, size))
}

/// Whether the caller may read `snapshot`: one ListSnapshotBlocks call of the smallest page,
/// made with the caller's (the team's) credentials. A cached copy is only handed to a build that
/// passes it, so the cache never gives one team a snapshot its role may not read.
pub async fn check_access(
    ebs: &aws_sdk_ebs::Client,
    region: &str,
    snapshot: &str,
) -> Result<(), EbsError> {
    ebs.list_snapshot_blocks()
        .snapshot_id(snapshot)
        .max_results(MIN_PAGE)
        .send()
        .await
        .map_err(api("ListSnapshotBlocks", snapshot, region))?;
    Ok(())
}

/// ListSnapshotBlocks' smallest page (API reference: MaxResults 100 to 10,000).
const MIN_PAGE: i32 = 100;

/// Reads `snapshot` into `file` (created or truncated; sparse, sized to the volume). Returns the
/// snapshot's block map. Stops at the next block when `cancel` fires. Safe to run twice (the file
/// is rewritten).
pub async fn read_snapshot(
    ebs: &aws_sdk_ebs::Client,
    region: &str,
    snapshot: &str,
    file: &Path,
    cancel: &CancellationToken,
) -> Result<Read, EbsError> {
    let (blocks, size) = list(ebs, region, snapshot).await?;
    let out = std::fs::File::create(file).map_err(EbsError::io("creating", file))?;
    out.set_len(size * GIB)
        .map_err(EbsError::io("sizing", file))?;
    let out = &out;
    let fetches = futures_util::stream::iter(blocks).map(|(index, token)| async move {
        if cancel.is_cancelled() {
            return Err(EbsError::Cancelled(format!("the read of {snapshot}")));
        }
        let got = ebs
            .get_snapshot_block()
            .snapshot_id(snapshot)
            .block_index(index as i32)
            .block_token(token)
            .send()
            .await
            .map_err(api(
                "GetSnapshotBlock",
                format!("{snapshot} block {index}"),
                region,
            ))?;
        let sum = got.checksum().map(str::to_owned);
        let data = got
            .block_data
            .collect()
            .await
            .map_err(|e| EbsError::Api {
                op: "GetSnapshotBlock",
                resource: format!("{snapshot} block {index}"),
                region: region.to_owned(),
                code: "Transport".into(),
                message: e.to_string(),
                retryable: true,
            })?
            .into_bytes();
        let mine = checksum(&data);
        if data.len() as u64 != BLOCK_SIZE || sum.as_deref().is_some_and(|s| s != mine) {
            return Err(EbsError::Corrupt {
                snapshot: snapshot.to_owned(),
                index,
                region: region.to_owned(),
            });
        }
        out.write_all_at(&data, index * BLOCK_SIZE)
            .map_err(EbsError::io("writing a block into", file))?;
        Ok::<_, EbsError>((index, mine, data.len() as u64))
    });
    let mut fetches = fetches.buffer_unordered(IN_FLIGHT);
    let mut map = BlockMap::default();
    let mut bytes = 0;
    while let Some(r) = fetches.next().await {
        let (index, sum, n) = r?;
        map.blocks.insert(index, sum);
        bytes += n;
    }
    out.sync_all().map_err(EbsError::io("syncing", file))?;
    Ok(Read {
        map,
        volume_size_gib: size,
        bytes,
    })
}
