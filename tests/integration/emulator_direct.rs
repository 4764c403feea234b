//! Patch 15: the emulator's EBS direct APIs answer as AWS's do where kiln's `direct` backend relies
//! on them: 512 KiB blocks checked by their SHA-256, a completion checked by its block count and
//! aggregate checksum, children of a parent snapshot, block and page tokens, ClientToken, the
//! snapshot as EC2 sees it (pending, then completed, VolumeId vol-ffffffff, its data in CreateVolume),
//! and throttling on request.

use crate::support::{
    Emulator, Janitor, Resource, emulator_script, snapshot_data, unique, volume_data, with_janitor,
};
use aws_sdk_ebs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// AWS's only block size (PutSnapshotBlock DataLength).
const BLOCK: usize = 524_288;

async fn ebs(region: &str) -> aws_sdk_ebs::Client {
    aws_sdk_ebs::Client::new(&Emulator::get().sdk_config(region).await)
}

/// A client that does not retry, to see a throttled answer itself.
async fn ebs_without_retries(region: &str) -> aws_sdk_ebs::Client {
    let config = Emulator::get()
        .sdk_config(region)
        .await
        .into_builder()
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_ebs::Client::new(&config)
}

/// A block whose bytes depend on `seed` (never all zeros).
fn block(seed: u8) -> Vec<u8> {
    (0..BLOCK)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// A block and its SHA-256, computed once (a debug build hashes 512 KiB slowly).
#[derive(Clone)]
struct Blk {
    data: Vec<u8>,
    digest: [u8; 32],
}

fn blk(data: Vec<u8>) -> Blk {
    let digest = sha(&data);
    Blk { data, digest }
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn b64sha(data: &[u8]) -> String {
    B64.encode(sha(data))
}

/// The linear aggregate checksum of the written blocks (coldsnap's and AWS's): SHA-256 of the
/// blocks' raw digests in ascending block index order.
fn aggregate(blocks: &BTreeMap<i32, Blk>) -> String {
    let mut all = Sha256::new();
    for b in blocks.values() {
        all.update(b.digest);
    }
    B64.encode(all.finalize())
}

fn build_tag(build: &str) -> Tag {
    Tag::builder().key("kiln:build-id").value(build).build()
}

/// StartSnapshot of `size` GiB (child of `parent`), tagged and tracked: (id, block size, status).
async fn start(
    ebs: &aws_sdk_ebs::Client,
    janitor: &Janitor,
    region: &str,
    size: i64,
    parent: Option<&str>,
) -> (String, i32, String) {
    let out = ebs
        .start_snapshot()
        .volume_size(size)
        .set_parent_snapshot_id(parent.map(str::to_owned))
        .tags(build_tag(&unique("direct")))
        .description("kiln emulator_direct test")
        .send()
        .await
        .expect("StartSnapshot");
    let id = out.snapshot_id().expect("SnapshotId").to_owned();
    janitor.track(region, Resource::Snapshot(id.clone()));
    let status = out
        .status()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default();
    (id, out.block_size().unwrap_or_default(), status)
}

async fn put(
    ebs: &aws_sdk_ebs::Client,
    id: &str,
    index: i32,
    data: &[u8],
) -> Result<
    aws_sdk_ebs::operation::put_snapshot_block::PutSnapshotBlockOutput,
    SdkError<aws_sdk_ebs::operation::put_snapshot_block::PutSnapshotBlockError>,
> {
    put_blk(ebs, id, index, &blk(data.to_vec())).await
}

async fn put_blk(
    ebs: &aws_sdk_ebs::Client,
    id: &str,
    index: i32,
    b: &Blk,
) -> Result<
    aws_sdk_ebs::operation::put_snapshot_block::PutSnapshotBlockOutput,
    SdkError<aws_sdk_ebs::operation::put_snapshot_block::PutSnapshotBlockError>,
> {
    ebs.put_snapshot_block()
        .snapshot_id(id)
        .block_index(index)
        .block_data(ByteStream::from(b.data.clone()))
        .data_length(b.data.len() as i32)
        .checksum(B64.encode(b.digest))
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .send()
        .await
}

/// Writes every block (`in_flight` at a time) and completes the snapshot with the right count and
/// aggregate checksum; returns CompleteSnapshot's status.
async fn write_and_complete(
    ebs: &aws_sdk_ebs::Client,
    id: &str,
    blocks: &BTreeMap<i32, Blk>,
    in_flight: usize,
) -> String {
    let owned: Vec<(i32, Blk)> = blocks.iter().map(|(i, b)| (*i, b.clone())).collect();
    let results: Vec<_> = futures_util::stream::iter(owned)
        .map(|(i, b)| {
            let (ebs, id) = (ebs.clone(), id.to_owned());
            async move { (i, put_blk(&ebs, &id, i, &b).await) }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    for (i, r) in results {
        let out = r.unwrap_or_else(|e| panic!("PutSnapshotBlock {id} {i}: {e:?}"));
        assert_eq!(
            out.checksum(),
            Some(B64.encode(blocks[&i].digest).as_str()),
            "PutSnapshotBlock answers the block's checksum"
        );
    }
    complete(ebs, id, blocks)
        .await
        .unwrap_or_else(|e| panic!("CompleteSnapshot {id}: {e:?}"))
}

async fn complete(
    ebs: &aws_sdk_ebs::Client,
    id: &str,
    blocks: &BTreeMap<i32, Blk>,
) -> Result<String, SdkError<aws_sdk_ebs::operation::complete_snapshot::CompleteSnapshotError>> {
    ebs.complete_snapshot()
        .snapshot_id(id)
        .changed_blocks_count(blocks.len() as i32)
        .checksum(aggregate(blocks))
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
        .send()
        .await
        .map(|o| {
            o.status()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default()
        })
}

/// Every block ListSnapshotBlocks lists (all pages), with its token.
async fn list_all(ebs: &aws_sdk_ebs::Client, id: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = ebs
            .list_snapshot_blocks()
            .snapshot_id(id)
            .set_next_token(token)
            .send()
            .await
            .expect("ListSnapshotBlocks");
        assert_eq!(page.block_size(), Some(BLOCK as i32));
        out.extend(page.blocks().iter().map(|b| {
            (
                b.block_index().expect("index"),
                b.block_token().expect("token").to_owned(),
            )
        }));
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return out;
        }
    }
}

async fn get_block(ebs: &aws_sdk_ebs::Client, id: &str, index: i32, token: &str) -> Vec<u8> {
    let out = ebs
        .get_snapshot_block()
        .snapshot_id(id)
        .block_index(index)
        .block_token(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetSnapshotBlock {id} {index}: {e:?}"));
    assert_eq!(out.data_length(), Some(BLOCK as i32));
    let checksum = out.checksum().map(str::to_owned);
    let data = out
        .block_data
        .collect()
        .await
        .expect("block data")
        .into_bytes()
        .to_vec();
    assert_eq!(
        checksum,
        Some(b64sha(&data)),
        "x-amz-Checksum is the data's"
    );
    data
}

fn direct_state(id: &str) -> serde_json::Value {
    let state: serde_json::Value =
        serde_json::from_str(&emulator_script(&["state"])).expect("emulator state");
    state["direct"][id].clone()
}

/// Clears a region's delays when dropped, also when the test fails.
struct ClearDelays(&'static str);

impl Drop for ClearDelays {
    fn drop(&mut self) {
        let _ = std::process::Command::new(crate::support::repo_root().join("scripts/emulator"))
            .args(["delays", self.0])
            .status();
    }
}

/// Blocks are 512 KiB; a written block reads back with its SHA-256.
#[tokio::test]
async fn a_written_block_reads_back_with_its_checksum() {
    with_janitor(|janitor| async move {
        let region = Emulator::get().region();
        let ebs = ebs(region).await;
        let (id, block_size, status) = start(&ebs, &janitor, region, 1, None).await;
        assert_eq!(block_size, BLOCK as i32, "StartSnapshot's BlockSize");
        assert_eq!(status, "pending");
        let blocks = BTreeMap::from([(1, blk(block(7))), (5, blk(block(9)))]);
        assert_eq!(write_and_complete(&ebs, &id, &blocks, 2).await, "completed");
        let listed = list_all(&ebs, &id).await;
        assert_eq!(
            listed.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![1, 5],
            "ListSnapshotBlocks lists the written blocks"
        );
        for (i, token) in &listed {
            assert_eq!(get_block(&ebs, &id, *i, token).await, blocks[i].data);
        }
        let err = ebs
            .get_snapshot_block()
            .snapshot_id(&id)
            .block_index(5)
            .block_token(&listed[0].1)
            .send()
            .await
            .expect_err("block 1's token for block 5");
        assert_eq!(err.code(), Some("ValidationException"), "{err:?}");
        let stats = direct_state(&id);
        assert_eq!(stats["puts"], 2, "{stats}");
        assert_eq!(stats["written"], 2, "{stats}");
    })
    .await;
}

/// A child of a parent snapshot has the parent's blocks; ListChangedBlocks lists exactly the blocks
/// the child changed, with a token for each side that has the block.
#[tokio::test]
async fn a_child_has_its_parents_blocks_and_changed_blocks_are_its_own() {
    with_janitor(|janitor| async move {
        let region = Emulator::get().region();
        let ebs = ebs(region).await;
        let (parent, _, _) = start(&ebs, &janitor, region, 1, None).await;
        let parents = BTreeMap::from([(0, blk(block(1))), (1, blk(block(2))), (2, blk(block(3)))]);
        write_and_complete(&ebs, &parent, &parents, 3).await;
        let err = ebs
            .start_snapshot()
            .volume_size(1)
            .parent_snapshot_id("snap-0000000000000dead")
            .tags(build_tag(&unique("direct")))
            .send()
            .await
            .expect_err("an unknown parent");
        assert_eq!(err.code(), Some("ResourceNotFoundException"), "{err:?}");
        // The child's volume is larger: block 3000 lies beyond the parent's 1 GiB (2048 blocks).
        let (child, _, _) = start(&ebs, &janitor, region, 2, Some(&parent)).await;
        // Block 1 changes; block 3000 is written with zeros (written: it is listed all the same).
        let changes = BTreeMap::from([(1, blk(block(42))), (3000, blk(vec![0u8; BLOCK]))]);
        write_and_complete(&ebs, &child, &changes, 2).await;
        let listed = list_all(&ebs, &child).await;
        assert_eq!(
            listed.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 1, 2, 3000]
        );
        let tokens: BTreeMap<i32, String> = listed.into_iter().collect();
        assert_eq!(
            get_block(&ebs, &child, 0, &tokens[&0]).await,
            parents[&0].data
        );
        assert_eq!(
            get_block(&ebs, &child, 1, &tokens[&1]).await,
            changes[&1].data
        );
        let changed = ebs
            .list_changed_blocks()
            .first_snapshot_id(&parent)
            .second_snapshot_id(&child)
            .send()
            .await
            .expect("ListChangedBlocks");
        assert_eq!(changed.block_size(), Some(BLOCK as i32));
        let seen: Vec<_> = changed
            .changed_blocks()
            .iter()
            .map(|b| {
                (
                    b.block_index().expect("index"),
                    b.first_block_token().is_some(),
                    b.second_block_token().is_some(),
                )
            })
            .collect();
        assert_eq!(seen, vec![(1, true, true), (3000, false, true)]);
        let first = &changed.changed_blocks()[0];
        let old = get_block(&ebs, &parent, 1, first.first_block_token().expect("first")).await;
        assert_eq!(
            old, parents[&1].data,
            "the first token reads the parent's block"
        );
        assert_eq!(direct_state(&child)["parent"], parent.as_str());
    })
    .await;
}

/// A bad checksum, a wrong length, a block beyond the volume, a wrong ChangedBlocksCount and a wrong
/// aggregate checksum are refused (ValidationException); a completed snapshot takes no more blocks.
#[tokio::test]
async fn bad_blocks_and_bad_completions_are_refused() {
    with_janitor(|janitor| async move {
        let region = Emulator::get().region();
        let ebs = ebs(region).await;
        let (id, _, _) = start(&ebs, &janitor, region, 1, None).await;
        let data = block(5);
        let bad_checksum = ebs
            .put_snapshot_block()
            .snapshot_id(&id)
            .block_index(0)
            .block_data(ByteStream::from(data.clone()))
            .data_length(BLOCK as i32)
            .checksum(b64sha(&block(6)))
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .send()
            .await
            .expect_err("a checksum of other data");
        assert_eq!(bad_checksum.code(), Some("ValidationException"));
        let short = put(&ebs, &id, 0, &data[..4096])
            .await
            .expect_err("a 4 KiB block");
        assert_eq!(short.code(), Some("ValidationException"), "{short:?}");
        let beyond = put(&ebs, &id, 2048, &data)
            .await
            .expect_err("block 2048 of a 1 GiB volume");
        assert_eq!(beyond.code(), Some("ValidationException"), "{beyond:?}");
        put(&ebs, &id, 0, &block(1)).await.expect("a first write");
        // Writing a block again overwrites it (AWS documents it); it counts once.
        put(&ebs, &id, 0, &data)
            .await
            .expect("the same block again");
        put(&ebs, &id, 3, &data).await.expect("another block");
        let blocks = BTreeMap::from([(0, blk(data.clone())), (3, blk(data.clone()))]);
        let wrong_count = ebs
            .complete_snapshot()
            .snapshot_id(&id)
            .changed_blocks_count(3)
            .send()
            .await
            .expect_err("3 blocks claimed, 2 written");
        assert_eq!(wrong_count.code(), Some("ValidationException"));
        let wrong_sum = ebs
            .complete_snapshot()
            .snapshot_id(&id)
            .changed_blocks_count(2)
            .checksum(aggregate(&BTreeMap::from([
                (0, blk(block(1))),
                (3, blocks[&3].clone()),
            ])))
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
            .send()
            .await
            .expect_err("the aggregate of the overwritten data");
        assert_eq!(wrong_sum.code(), Some("ValidationException"));
        assert_eq!(
            complete(&ebs, &id, &blocks).await.expect("complete"),
            "completed"
        );
        let late = put(&ebs, &id, 4, &data)
            .await
            .expect_err("a completed snapshot");
        assert_eq!(late.code(), Some("ValidationException"), "{late:?}");
        let tokens = list_all(&ebs, &id).await;
        assert_eq!(get_block(&ebs, &id, 0, &tokens[0].1).await, data);
    })
    .await;
}

/// StartSnapshot with a ClientToken is idempotent; the same token with other parameters is a
/// ConflictException (AWS: "Idempotency for StartSnapshot API").
#[tokio::test]
async fn start_snapshot_honours_the_client_token() {
    with_janitor(|janitor| async move {
        let region = Emulator::get().region();
        let ebs = ebs(region).await;
        let token = unique("token");
        let build = unique("direct");
        let send = |size: i64| {
            ebs.start_snapshot()
                .volume_size(size)
                .client_token(&token)
                .tags(build_tag(&build))
                .send()
        };
        let first = send(1).await.expect("StartSnapshot");
        let id = first.snapshot_id().expect("id").to_owned();
        janitor.track(region, Resource::Snapshot(id.clone()));
        let again = send(1).await.expect("the same request again");
        assert_eq!(again.snapshot_id(), Some(id.as_str()));
        let err = send(2).await.expect_err("the token with another size");
        assert_eq!(err.code(), Some("ConflictException"), "{err:?}");
    })
    .await;
}

/// EC2 sees a direct snapshot: pending (VolumeId vol-ffffffff, its tags, no volume) until
/// CompleteSnapshot and the region's `direct` delay, then completed; its blocks cannot be read
/// before; CreateVolume from it has its data and RegisterImage maps it.
#[tokio::test]
async fn ec2_sees_the_snapshot_pending_then_completed_with_its_data() {
    // A region no other test uses: the delay touches only this test.
    let region = "ap-northeast-3";
    Emulator::get();
    emulator_script(&["delays", region, "direct=1.5"]);
    let _clear = ClearDelays(region);
    with_janitor(move |janitor| async move {
        let emu = Emulator::get();
        let ec2 = emu.clients(region).await.ec2;
        let ebs = ebs(region).await;
        let volumes_before = ec2
            .describe_volumes()
            .send()
            .await
            .expect("DescribeVolumes")
            .volumes()
            .len();
        let (id, _, _) = start(&ebs, &janitor, region, 1, None).await;
        let describe = || async {
            ec2.describe_snapshots()
                .snapshot_ids(&id)
                .send()
                .await
                .expect("DescribeSnapshots")
                .snapshots()[0]
                .clone()
        };
        let snap = describe().await;
        assert_eq!(snap.state().map(|s| s.as_str()), Some("pending"));
        assert_eq!(snap.volume_id(), Some("vol-ffffffff"));
        assert_eq!(snap.volume_size(), Some(1));
        assert!(
            snap.tags().iter().any(|t| t.key() == Some("kiln:build-id")),
            "StartSnapshot's tags are the snapshot's: {snap:?}"
        );
        let volumes = ec2
            .describe_volumes()
            .send()
            .await
            .expect("DescribeVolumes")
            .volumes()
            .to_vec();
        assert_eq!(
            volumes.len(),
            volumes_before,
            "no volume leaked: {volumes:?}"
        );
        let data = block(77);
        let blocks = BTreeMap::from([(2, blk(data.clone()))]);
        assert_eq!(
            write_and_complete(&ebs, &id, &blocks, 1).await,
            "pending",
            "CompleteSnapshot during the `direct` delay"
        );
        assert_eq!(
            describe().await.state().map(|s| s.as_str()),
            Some("pending")
        );
        let early = ebs
            .list_snapshot_blocks()
            .snapshot_id(&id)
            .send()
            .await
            .expect_err("a snapshot still pending");
        assert_eq!(early.code(), Some("ValidationException"), "{early:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let snap = describe().await;
            if snap.state().map(|s| s.as_str()) == Some("completed") {
                assert_eq!(snap.progress(), Some("100%"));
                break;
            }
            assert!(Instant::now() < deadline, "never completed: {snap:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let vol = ec2
            .create_volume()
            .availability_zone(format!("{region}a"))
            .snapshot_id(&id)
            .send()
            .await
            .expect("CreateVolume from the direct snapshot")
            .volume_id
            .expect("id");
        janitor.track(region, Resource::Volume(vol.clone()));
        let file = std::fs::File::open(volume_data(&vol)).expect("the volume's data");
        assert_eq!(file.metadata().expect("stat").len(), 1 << 30);
        let mut head = vec![0u8; 3 * BLOCK];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0).expect("read");
        assert!(head[2 * BLOCK..] == data[..], "the volume holds block 2");
        assert!(head[..2 * BLOCK].iter().all(|b| *b == 0));
        let ami = ec2
            .register_image()
            .name(unique("direct-ami"))
            .root_device_name("/dev/xvda")
            .block_device_mappings(crate::emulator::root_mapping(&id, 1))
            .send()
            .await
            .expect("RegisterImage with the direct snapshot")
            .image_id
            .expect("id");
        janitor.track(region, Resource::Image(ami));
        // CopySnapshot copies the data (the plane's file of the copy).
        let copy = ec2
            .copy_snapshot()
            .source_snapshot_id(&id)
            .source_region(region)
            .send()
            .await
            .expect("CopySnapshot of the direct snapshot")
            .snapshot_id
            .expect("id");
        janitor.track(region, Resource::Snapshot(copy.clone()));
        let copied = std::fs::File::open(snapshot_data(&copy)).expect("the copy's data");
        let mut got = vec![0u8; BLOCK];
        std::os::unix::fs::FileExt::read_exact_at(&copied, &mut got, 2 * BLOCK as u64)
            .expect("read");
        assert!(got == data, "the copy holds block 2");
    })
    .await;
}

/// ListSnapshotBlocks pages as AWS does (MaxResults 100, NextToken, StartingBlockIndex); 64
/// concurrent puts with a per-put latency overlap (the emulator holds no lock while one waits).
#[tokio::test]
async fn list_snapshot_blocks_pages_and_puts_run_concurrently() {
    let region = "sa-east-1";
    Emulator::get();
    emulator_script(&["delays", region, "put-block=0.1"]);
    let _clear = ClearDelays(region);
    with_janitor(move |janitor| async move {
        let ebs = ebs(region).await;
        let (id, _, _) = start(&ebs, &janitor, region, 1, None).await;
        // Four contents, hashed once: the client's own hashing stays out of the timing.
        let contents: Vec<Blk> = (0..4).map(|seed| blk(block(seed))).collect();
        let blocks: BTreeMap<i32, Blk> = (0..256)
            .map(|i| (i * 3, contents[i as usize % 4].clone()))
            .collect();
        let began = Instant::now();
        write_and_complete(&ebs, &id, &blocks, 64).await;
        let took = began.elapsed();
        // 256 puts of 0.1 s each: 25.6 s one at a time, 0.4 s with 64 in flight.
        assert!(
            took < Duration::from_secs(8),
            "256 puts with 64 in flight took {took:?}"
        );
        let mut pages = Vec::new();
        let mut token = None;
        loop {
            let page = ebs
                .list_snapshot_blocks()
                .snapshot_id(&id)
                .max_results(100)
                .set_next_token(token)
                .send()
                .await
                .expect("ListSnapshotBlocks");
            pages.push(
                page.blocks()
                    .iter()
                    .map(|b| b.block_index().expect("index"))
                    .collect::<Vec<_>>(),
            );
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![100, 100, 56]
        );
        let all: Vec<i32> = pages.concat();
        assert_eq!(
            all,
            blocks.keys().copied().collect::<Vec<_>>(),
            "sorted, each once"
        );
        let from = ebs
            .list_snapshot_blocks()
            .snapshot_id(&id)
            .starting_block_index(700)
            .send()
            .await
            .expect("StartingBlockIndex");
        assert_eq!(from.blocks()[0].block_index(), Some(702));
        assert_eq!(from.blocks().len(), 256 - 234);
        let err = ebs
            .list_snapshot_blocks()
            .snapshot_id(&id)
            .max_results(10)
            .send()
            .await
            .expect_err("MaxResults below 100");
        assert_eq!(err.code(), Some("ValidationException"), "{err:?}");
        assert_eq!(direct_state(&id)["puts"], 256);
    })
    .await;
}

/// The emulator keeps one throttle-direct setting: the tests that set it take turns.
pub(crate) static THROTTLE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `scripts/emulator throttle-direct`: a share of the matching calls answer 400
/// RequestThrottledException, counted per snapshot; the SDK's retries get through.
#[tokio::test]
async fn throttled_calls_answer_request_throttled_and_are_counted() {
    let _turn = THROTTLE.lock().await;
    with_janitor(|janitor| async move {
        let region = Emulator::get().region();
        let ebs = ebs(region).await;
        let (id, _, _) = start(&ebs, &janitor, region, 1, None).await;
        emulator_script(&[
            "throttle-direct",
            "0.5",
            "PutSnapshotBlock",
            "--snapshot",
            &id,
        ]);
        struct Stop;
        impl Drop for Stop {
            fn drop(&mut self) {
                let _ = std::process::Command::new(
                    crate::support::repo_root().join("scripts/emulator"),
                )
                .args(["throttle-direct", "0"])
                .status();
            }
        }
        let _stop = Stop;
        let strict = ebs_without_retries(region).await;
        let data = block(3);
        let mut throttled = 0;
        for i in 0..10 {
            match put(&strict, &id, i, &data).await {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.code(), Some("RequestThrottledException"), "{e:?}");
                    assert_eq!(
                        e.raw_response().map(|r| r.status().as_u16()),
                        Some(400),
                        "{e:?}"
                    );
                    throttled += 1;
                }
            }
        }
        assert_eq!(throttled, 5, "half of the puts");
        // The SDK retries a throttled call: every put gets through (one at a time, each after
        // at most one throttled answer: every second matching call is throttled).
        let one = blk(data.clone());
        let blocks: BTreeMap<i32, Blk> = (0..10).map(|i| (i, one.clone())).collect();
        write_and_complete(&ebs, &id, &blocks, 1).await;
        let stats = direct_state(&id);
        assert_eq!(stats["written"], 10, "{stats}");
        assert_eq!(stats["puts"], 15, "5 + 10 successful puts: {stats}");
        assert_eq!(stats["throttled"], 14, "5 + 9 throttled answers: {stats}");
    })
    .await;
}

/// As for EC2 (patch 9): kiln's StartSnapshot (user agent app/kiln) needs the kiln:build-id tag.
#[tokio::test]
async fn an_untagged_start_snapshot_from_kiln_is_refused() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region();
        let kiln = aws_sdk_ebs::Client::new(&emu.kiln_sdk_config(region).await);
        let err = kiln
            .start_snapshot()
            .volume_size(1)
            .send()
            .await
            .expect_err("untagged");
        assert_eq!(err.code(), Some("KilnUntaggedResource"), "{err:?}");
        let tagged = kiln
            .start_snapshot()
            .volume_size(1)
            .tags(build_tag(&unique("direct")))
            .send()
            .await
            .expect("tagged");
        janitor.track(
            region,
            Resource::Snapshot(tagged.snapshot_id().expect("id").to_owned()),
        );
    })
    .await;
}
