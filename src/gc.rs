//! `kiln gc`: finds what kiln created (by its `kiln:build-id` tag) whose build is over (its journal
//! says succeeded or failed) or abandoned (its lease expired long ago, or it has no journal and is
//! old), and removes it: volumes always (a finished build keeps none), snapshots and AMIs of
//! failed or abandoned builds, and the journals of finished builds. The AMIs of succeeded builds
//! and the snapshots they map are never touched.

use crate::aws::Clients;
use crate::checkpoint;
use crate::ec2::{TAG_BUILD_ID, images, volumes};
use aws_sdk_ec2::types::Filter;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What gc did (or would do, with `dry_run`) to one resource.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Action {
    /// `volume`, `snapshot`, `image` or `journal`.
    pub kind: &'static str,
    /// Its id or key.
    pub id: String,
    /// The build it belongs to.
    pub build_id: String,
    /// Why it goes.
    pub reason: String,
    /// `deleted`, `would delete`, or the error.
    pub outcome: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    /// Running with a live lease, or too young to judge: leave everything.
    Keep,
    /// Succeeded: only volumes (and the journal) go.
    Succeeded,
    /// Failed or abandoned: everything goes.
    Gone,
}

fn tag_of(tags: &[aws_sdk_ec2::types::Tag], key: &str) -> Option<String> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value().map(str::to_owned))
}

async fn fate(
    clients: &Clients,
    bucket: &str,
    build_id: &str,
    older_than: Duration,
    cache: &mut BTreeMap<String, (Fate, String)>,
) -> (Fate, String) {
    if let Some(f) = cache.get(build_id) {
        return f.clone();
    }
    let now = checkpoint::now();
    let age = older_than.as_secs();
    let f = match checkpoint::read(&clients.s3, bucket, build_id).await {
        Ok(Some((j, _))) if j.status == "succeeded" => {
            (Fate::Succeeded, "the build succeeded".to_owned())
        }
        Ok(Some((j, _))) if j.status == "failed" => (Fate::Gone, "the build failed".to_owned()),
        Ok(Some((j, _))) if j.lease_expires + age <= now => (
            Fate::Gone,
            format!("the build's lease expired {} s ago", now - j.lease_expires),
        ),
        Ok(Some(_)) => (Fate::Keep, "the build is running".to_owned()),
        Ok(None) => (
            Fate::Gone,
            "no journal: a `kiln build` run or a lost build".to_owned(),
        ),
        Err(e) => (Fate::Keep, format!("journal unreadable: {e}")),
    };
    cache.insert(build_id.to_owned(), f.clone());
    f
}

/// Runs gc over the build region and `regions`. Side effects: deletes (unless `dry_run`). Safe to
/// run twice and alongside running builds (their live leases protect them).
pub async fn run(
    clients: &Clients,
    bucket: &str,
    regions: &[String],
    older_than: Duration,
    dry_run: bool,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut cache = BTreeMap::new();
    let cancel = CancellationToken::new();
    let polling = crate::ec2::wait::Polling::default();
    let exists = Filter::builder()
        .name("tag-key")
        .values(TAG_BUILD_ID)
        .build();
    let old_enough = |created: Option<&aws_sdk_ec2::primitives::DateTime>| {
        created.is_none_or(|t| (checkpoint::now() as i64 - t.secs()) as u64 >= older_than.as_secs())
    };
    let mut all_regions = vec![clients.region().to_owned()];
    all_regions.extend(
        regions
            .iter()
            .filter(|r| r.as_str() != clients.region())
            .cloned(),
    );
    for region in all_regions {
        let ec2 = clients.ec2_in(&region);
        let mut act = |kind: &'static str,
                       id: String,
                       build_id: String,
                       reason: String,
                       result: Result<(), String>| {
            let outcome = if dry_run {
                "would delete".to_owned()
            } else {
                result.map(|_| "deleted".to_owned()).unwrap_or_else(|e| e)
            };
            actions.push(Action {
                kind,
                id,
                build_id,
                reason,
                outcome,
            });
        };
        // Images of failed or abandoned builds (and their snapshots).
        let imgs = ec2
            .describe_images()
            .owners("self")
            .filters(exists.clone())
            .send()
            .await;
        let mut kept_snapshots = Vec::new();
        for img in imgs
            .map(|o| o.images.unwrap_or_default())
            .unwrap_or_default()
        {
            let (Some(id), Some(build)) = (
                img.image_id().map(str::to_owned),
                tag_of(img.tags(), TAG_BUILD_ID),
            ) else {
                continue;
            };
            let (f, why) = fate(clients, bucket, &build, older_than, &mut cache).await;
            if f != Fate::Gone {
                kept_snapshots.extend(images::snapshots_of(&img));
                continue;
            }
            let r = if dry_run {
                Ok(())
            } else {
                images::remove(&ec2, &region, &id)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            act("image", id, build, why, r);
        }
        // Snapshots of failed or abandoned builds that no kept image maps.
        let snaps = ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(exists.clone())
            .send()
            .await;
        for s in snaps
            .map(|o| o.snapshots.unwrap_or_default())
            .unwrap_or_default()
        {
            let (Some(id), Some(build)) = (
                s.snapshot_id().map(str::to_owned),
                tag_of(s.tags(), TAG_BUILD_ID),
            ) else {
                continue;
            };
            if kept_snapshots.contains(&id) {
                continue;
            }
            let (f, why) = fate(clients, bucket, &build, older_than, &mut cache).await;
            if f != Fate::Gone || !old_enough(s.start_time()) {
                continue;
            }
            let r = if dry_run {
                Ok(())
            } else {
                images::delete_snapshot(&ec2, &region, &id)
                    .await
                    .map_err(|e| e.to_string())
            };
            act("snapshot", id, build, why, r);
        }
        // Volumes: a finished or abandoned build keeps none.
        let vols = ec2.describe_volumes().filters(exists.clone()).send().await;
        for v in vols
            .map(|o| o.volumes.unwrap_or_default())
            .unwrap_or_default()
        {
            let (Some(id), Some(build)) = (
                v.volume_id().map(str::to_owned),
                tag_of(v.tags(), TAG_BUILD_ID),
            ) else {
                continue;
            };
            let (f, why) = fate(clients, bucket, &build, older_than, &mut cache).await;
            if f == Fate::Keep || !old_enough(v.create_time()) {
                continue;
            }
            let r = if dry_run {
                Ok(())
            } else {
                match volumes::detach(&ec2, &region, &id, &polling, &cancel).await {
                    Ok(()) => volumes::delete(&ec2, &region, &id)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            };
            act("volume", id, build, why, r);
        }
    }
    // Journals of finished builds.
    let listed = clients
        .s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix("checkpoints/")
        .send()
        .await;
    for o in listed
        .map(|l| l.contents.unwrap_or_default())
        .unwrap_or_default()
    {
        let Some(key) = o.key().map(str::to_owned) else {
            continue;
        };
        let build = key
            .trim_start_matches("checkpoints/")
            .trim_end_matches(".json")
            .to_owned();
        let (f, why) = fate(clients, bucket, &build, older_than, &mut cache).await;
        let old = o
            .last_modified()
            .is_none_or(|t| (checkpoint::now() as i64 - t.secs()) as u64 >= older_than.as_secs());
        if f == Fate::Keep || !old {
            continue;
        }
        let outcome = if dry_run {
            "would delete".to_owned()
        } else {
            match clients
                .s3
                .delete_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
            {
                Ok(_) => "deleted".to_owned(),
                Err(e) => format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e)),
            }
        };
        actions.push(Action {
            kind: "journal",
            id: key,
            build_id: build,
            reason: why,
            outcome,
        });
    }
    actions
}
