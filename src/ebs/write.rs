//! Writing a snapshot: StartSnapshot (on top of a parent, or empty), PutSnapshotBlock for each
//! block of a delta with up to [`IN_FLIGHT`] in flight, CompleteSnapshot with the count and the
//! `LINEAR` aggregate checksum.
//!
//! Throttling slows the upload down instead of failing it: the SDK retries a throttled call
//! first (its retry configuration); a block still throttled then goes back in the queue, the
//! window of calls in flight halves and the upload pauses, and each success widens the window by
//! one again (additive increase, multiplicative decrease, as TCP does).

use super::delta::{Delta, read_block};
use super::{EbsError, IN_FLIGHT, aggregate, api};
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The pause after a block is throttled, doubled for each throttle in a row (up to
/// [`MAX_PAUSE`]). 100 ms is a tenth of a second at the per-snapshot limit of 1,000 requests
/// per second.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between throttled attempts.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// Throttles of one block in a row (after the SDK's own retries) before the upload gives up:
/// at [`MAX_PAUSE`] this is over a minute of the service refusing.
const MAX_THROTTLES_PER_BLOCK: u32 = 20;

/// A snapshot to start.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    /// Size of the volume it describes (GiB).
    pub volume_size_gib: u64,
    /// The snapshot it is built on (its blocks are the child's until overwritten).
    pub parent: Option<String>,
    /// Tags (kiln's included: tagged at creation).
    pub tags: Vec<(String, String)>,
    /// Its description.
    pub description: String,
    /// Idempotency token: the same token returns the same snapshot.
    pub client_token: String,
    /// Encrypt it (a child of an encrypted parent is encrypted whatever this says).
    pub encrypted: Option<bool>,
    /// The KMS key for an encrypted snapshot.
    pub kms_key_arn: Option<String>,
    /// Minutes before a snapshot not completed goes to `error` (AWS: 10 to 4320, default 60).
    pub timeout_minutes: i32,
}

/// StartSnapshot. Returns the snapshot id. Safe to run twice with the same token.
pub async fn start(
    ebs: &aws_sdk_ebs::Client,
    region: &str,
    spec: &NewSnapshot,
) -> Result<String, EbsError> {
    let tags = spec
        .tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    let out = ebs
        .start_snapshot()
        .volume_size(spec.volume_size_gib as i64)
        .set_parent_snapshot_id(spec.parent.clone())
        .set_tags(Some(tags))
        .description(&spec.description)
        .client_token(&spec.client_token)
        .set_encrypted(spec.encrypted)
        .set_kms_key_arn(spec.kms_key_arn.clone())
        .timeout(spec.timeout_minutes)
        .send()
        .await
        .map_err(api(
            "StartSnapshot",
            spec.parent.as_deref().unwrap_or("(no parent)"),
            region,
        ))?;
    out.snapshot_id
        .ok_or_else(|| EbsError::Invalid(format!("StartSnapshot in {region} returned no id")))
}

/// What an upload did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Uploaded {
    /// PutSnapshotBlock calls that succeeded.
    pub puts: u64,
    /// Calls throttled after the SDK's retries (and queued again).
    pub throttled: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// The smallest window of calls in flight the upload slowed down to.
    pub min_window: usize,
}

async fn put(
    ebs: &aws_sdk_ebs::Client,
    region: &str,
    snapshot: &str,
    f: &std::fs::File,
    file: &Path,
    index: u64,
    sum: &str,
) -> Result<u64, EbsError> {
    let data = read_block(f, file, index)?;
    let n = data.len() as u64;
    ebs.put_snapshot_block()
        .snapshot_id(snapshot)
        .block_index(index as i32)
        .data_length(n as i32)
        .checksum(sum)
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .block_data(data.into())
        .send()
        .await
        .map_err(api(
            "PutSnapshotBlock",
            format!("{snapshot} block {index}"),
            region,
        ))?;
    Ok(n)
}

/// Where an upload goes: a pending snapshot in a region, from a local image.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The region's EBS direct APIs client.
    pub ebs: &'a aws_sdk_ebs::Client,
    /// The region.
    pub region: &'a str,
    /// The pending snapshot.
    pub snapshot: &'a str,
    /// The local image the blocks are read from.
    pub file: &'a Path,
}

/// Writes the blocks of `delta` not in `done` from `file` into the pending `snapshot`, calling
/// `written(index)` after each. Safe to run again on the same snapshot (a block written twice
/// is overwritten with the same data).
pub async fn upload(
    to: Target<'_>,
    delta: &Delta,
    done: &BTreeSet<u64>,
    written: &(dyn Fn(u64) + Sync),
    cancel: &CancellationToken,
) -> Result<Uploaded, EbsError> {
    let Target {
        ebs,
        region,
        snapshot,
        file,
    } = to;
    let f = std::fs::File::open(file).map_err(EbsError::io("opening", file))?;
    let mut queue: VecDeque<(u64, &String, u32)> = delta
        .iter()
        .filter(|(i, _)| !done.contains(i))
        .map(|(i, s)| (*i, s, 0))
        .collect();
    let mut window = IN_FLIGHT;
    let mut stats = Uploaded {
        min_window: IN_FLIGHT,
        ..Uploaded::default()
    };
    let mut pause = Duration::ZERO;
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < window
            && pause.is_zero()
            && let Some((index, sum, tries)) = queue.pop_front()
        {
            let f = &f;
            running.push(async move {
                (
                    index,
                    sum,
                    tries,
                    put(ebs, region, snapshot, f, file, index, sum).await,
                )
            });
        }
        if !pause.is_zero() {
            tokio::select! {
                _ = cancel.cancelled() => return Err(EbsError::Cancelled(format!("the upload to {snapshot}"))),
                _ = tokio::time::sleep(pause) => {}
            }
            pause = Duration::ZERO;
            continue;
        }
        let next = tokio::select! {
            _ = cancel.cancelled() => return Err(EbsError::Cancelled(format!("the upload to {snapshot}"))),
            n = running.next() => n,
        };
        let Some((index, sum, tries, result)) = next else {
            break;
        };
        match result {
            Ok(n) => {
                stats.puts += 1;
                stats.bytes += n;
                window = (window + 1).min(IN_FLIGHT);
                written(index);
            }
            Err(e) if e.is_throttling() && tries < MAX_THROTTLES_PER_BLOCK => {
                stats.throttled += 1;
                window = (window / 2).max(1);
                stats.min_window = stats.min_window.min(window);
                pause = (FIRST_PAUSE * 2u32.saturating_pow(tries)).min(MAX_PAUSE);
                tracing::debug!(
                    snapshot,
                    index,
                    window,
                    ?pause,
                    "PutSnapshotBlock throttled: slowing down"
                );
                queue.push_back((index, sum, tries + 1));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(stats)
}

/// CompleteSnapshot with the number of blocks in `delta` and their aggregate checksum. Safe to
/// run twice (a completed snapshot answers `completed`).
pub async fn complete(
    ebs: &aws_sdk_ebs::Client,
    region: &str,
    snapshot: &str,
    delta: &Delta,
) -> Result<(), EbsError> {
    let sum = aggregate(delta).ok_or_else(|| {
        EbsError::Invalid(format!(
            "the checksums of {snapshot}'s blocks are not base64"
        ))
    })?;
    ebs.complete_snapshot()
        .snapshot_id(snapshot)
        .changed_blocks_count(delta.len() as i32)
        .checksum(sum)
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
        .send()
        .await
        .map_err(api("CompleteSnapshot", snapshot, region))?;
    Ok(())
}
