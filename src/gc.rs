//! `kiln gc`: finds what kiln created (by its `kiln:build-id` tag, optionally only builds whose id
//! matches a pattern) whose build is over (its journal says succeeded or failed) or abandoned (its
//! lease expired long ago), and removes it: volumes always (a finished build keeps none), snapshots
//! no kept AMI maps, AMIs of failed or abandoned builds, and the journals of finished builds. A
//! build without a journal (a `kiln build` run, or a finished build whose journal an earlier gc
//! removed) keeps its AMIs and loses the rest. The AMIs of succeeded builds and the snapshots they
//! map are never touched. Nothing younger than `--older-than` (by its creation time, or for a
//! journal its last write) and no volume attached to a live instance is touched.

use crate::aws::Clients;
use crate::checkpoint;
use crate::ec2::{TAG_BUILD_ID, images, volumes};
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::Filter;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What gc did (or would do, with `dry_run`) to one resource.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Action {
    /// `volume`, `snapshot`, `image`, `instance` (a boot test's) or `journal`.
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
    /// Succeeded: its AMIs and the snapshots they map stay; volumes, other snapshots and the
    /// journal go.
    Succeeded,
    /// Failed or abandoned: everything goes.
    Gone,
    /// No journal: its AMIs (and the snapshots they map) stay, volumes and other snapshots go.
    NoJournal,
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters and `?` any one
/// character: the wildcards of EC2's tag filters, so that journals and resources are chosen alike.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and the text position it was tried at (classic linear backtracking).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
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
    let f = match checkpoint::read_dated(&clients.s3, bucket, build_id).await {
        Ok(Some((j, ..))) if j.status == "succeeded" => {
            (Fate::Succeeded, "the build succeeded".to_owned())
        }
        Ok(Some((j, ..))) if j.status == "failed" => (Fate::Gone, "the build failed".to_owned()),
        // Abandoned: no owner heard of for `older_than`, counted from the lease's end or the
        // journal's last write, whichever is later (a released lease is 0: a drained or retried
        // build whose next attempt has not started yet is not abandoned).
        Ok(Some((j, _, written))) if j.lease_expires.max(written.unwrap_or(0)) + age <= now => {
            let since = j.lease_expires.max(written.unwrap_or(0));
            (
                Fate::Gone,
                format!("no owner heard of for {} s", now.saturating_sub(since)),
            )
        }
        Ok(Some(_)) => (Fate::Keep, "the build is running".to_owned()),
        Ok(None) => (
            Fate::NoJournal,
            "no journal (a `kiln build` run, or a finished build's journal already collected)"
                .to_owned(),
        ),
        Err(e) => (Fate::Keep, format!("journal unreadable: {e}")),
    };
    cache.insert(build_id.to_owned(), f.clone());
    f
}

/// The instances among those `vols` are attached to that are not terminated or shutting down;
/// `None` when that cannot be known (then every attachment counts as live).
async fn live_instances(
    ec2: &aws_sdk_ec2::Client,
    vols: &[aws_sdk_ec2::types::Volume],
) -> Option<Vec<String>> {
    let ids: Vec<String> = vols
        .iter()
        .flat_map(|v| v.attachments())
        .filter_map(|a| a.instance_id().map(str::to_owned))
        .collect();
    if ids.is_empty() {
        return Some(Vec::new());
    }
    let out = ec2
        .describe_instances()
        .set_instance_ids(Some(ids))
        .send()
        .await
        .ok()?;
    Some(
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                !matches!(
                    i.state().and_then(|s| s.name()),
                    Some(
                        aws_sdk_ec2::types::InstanceStateName::Terminated
                            | aws_sdk_ec2::types::InstanceStateName::ShuttingDown
                    )
                )
            })
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect(),
    )
}

/// The instances carrying kiln's tag (boot tests) that are not terminated: (id, build, launch).
async fn test_instances(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    exists: &Filter,
) -> Result<Vec<(String, String, Option<aws_sdk_ec2::primitives::DateTime>)>, String> {
    let live = crate::ec2::instances::live_matching(ec2, region, exists.clone())
        .await
        .map_err(|e| e.to_string())?;
    Ok(live
        .iter()
        .filter_map(|i| {
            Some((
                i.instance_id()?.to_owned(),
                tag_of(i.tags(), TAG_BUILD_ID)?,
                i.launch_time().cloned(),
            ))
        })
        .collect())
}

/// Runs gc over the build region and `regions`, for the builds whose id matches `build_ids` (a
/// pattern with `*` and `?`; `*` for all). Side effects: deletes (unless `dry_run`). Safe to run
/// twice and alongside running builds (their live leases, and `older_than` for builds without a
/// journal, protect them). A listing that fails is reported as an action with its error.
pub async fn run(
    clients: &Clients,
    bucket: &str,
    regions: &[String],
    build_ids: &str,
    older_than: Duration,
    dry_run: bool,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut cache = BTreeMap::new();
    let cancel = CancellationToken::new();
    let polling = crate::ec2::wait::Polling::default();
    let exists = Filter::builder()
        .name(format!("tag:{TAG_BUILD_ID}"))
        .values(build_ids)
        .build();
    let age_s = older_than.as_secs();
    let old_enough = |created: Option<&aws_sdk_ec2::primitives::DateTime>| {
        created.is_none_or(|t| checkpoint::now() as i64 - t.secs() >= age_s as i64)
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
        // What carries the tag here, listed at once; a failed listing skips the region.
        let listed = tokio::try_join!(
            async {
                let o = ec2.describe_images().owners("self").filters(exists.clone());
                o.send()
                    .await
                    .map(|o| o.images.unwrap_or_default())
                    .map_err(|e| format!("DescribeImages: {}", DisplayErrorContext(&e)))
            },
            async {
                let o = ec2
                    .describe_snapshots()
                    .owner_ids("self")
                    .filters(exists.clone());
                o.send()
                    .await
                    .map(|o| o.snapshots.unwrap_or_default())
                    .map_err(|e| format!("DescribeSnapshots: {}", DisplayErrorContext(&e)))
            },
            async {
                let o = ec2.describe_volumes().filters(exists.clone());
                o.send()
                    .await
                    .map(|o| o.volumes.unwrap_or_default())
                    .map_err(|e| format!("DescribeVolumes: {}", DisplayErrorContext(&e)))
            },
            test_instances(&ec2, &region, &exists),
        );
        let (imgs, snaps, vols, insts) = match listed {
            Ok(l) => l,
            Err(e) => {
                actions.push(Action {
                    kind: "listing",
                    id: region.clone(),
                    build_id: build_ids.to_owned(),
                    reason: "could not list what kiln made there".to_owned(),
                    outcome: e,
                });
                continue;
            }
        };
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
        let mut kept_snapshots = Vec::new();
        for img in imgs {
            let (Some(id), Some(build)) = (
                img.image_id().map(str::to_owned),
                tag_of(img.tags(), TAG_BUILD_ID),
            ) else {
                continue;
            };
            let (f, why) = fate(clients, bucket, &build, older_than, &mut cache).await;
            let created = img.creation_date().and_then(|d| {
                time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339).ok()
            });
            let young = created
                .is_some_and(|t| checkpoint::now() as i64 - t.unix_timestamp() < age_s as i64);
            if f != Fate::Gone || young {
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
        // Snapshots no kept image maps, of builds that are over (a crashed attempt's leftovers).
        for s in snaps {
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
            if f == Fate::Keep || !old_enough(s.start_time()) {
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
        // Volumes: a finished or abandoned build keeps none; but one attached to a live instance
        // is in use (a `kiln build` without a journal, or a build gc cannot judge): untouched.
        let live = live_instances(&ec2, &vols).await;
        for v in vols {
            let attached_to_live = v
                .attachments()
                .iter()
                .filter_map(|a| a.instance_id())
                .any(|i| live.as_ref().is_none_or(|l| l.iter().any(|x| x == i)));
            if attached_to_live {
                continue;
            }
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
        // Boot-test instances of builds that are over (a crash during the test); their root
        // volumes, attached to them above, go with them (deleted on termination).
        for (id, build, launched) in insts {
            let (f, why) = fate(clients, bucket, &build, older_than, &mut cache).await;
            if f == Fate::Keep || !old_enough(launched.as_ref()) {
                continue;
            }
            let r = if dry_run {
                Ok(())
            } else {
                crate::ec2::instances::terminate(&ec2, &region, &id, &polling)
                    .await
                    .map_err(|e| e.to_string())
            };
            act("instance", id, build, why, r);
        }
    }
    // Journals of finished builds. The pattern's literal head narrows the listing.
    let head = build_ids.split(['*', '?']).next().unwrap_or_default();
    let mut pages = clients
        .s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(format!("checkpoints/{head}"))
        .into_paginator()
        .send();
    let mut journals = Vec::new();
    while let Some(page) = pages.next().await {
        match page {
            Ok(p) => journals.extend(p.contents.unwrap_or_default()),
            Err(e) => {
                actions.push(Action {
                    kind: "listing",
                    id: format!("s3://{bucket}/checkpoints/"),
                    build_id: build_ids.to_owned(),
                    reason: "could not list the journals".to_owned(),
                    outcome: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
                });
                break;
            }
        }
    }
    for o in journals {
        let Some(key) = o.key().map(str::to_owned) else {
            continue;
        };
        let build = key
            .trim_start_matches("checkpoints/")
            .trim_end_matches(".json")
            .to_owned();
        if !glob_match(build_ids, &build) {
            continue;
        }
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

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob_matches_as_ec2_tag_filters_do() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "anything", true),
            ("nightly-*", "nightly-2026-11-26", true),
            ("nightly-*", "weekly-1", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*-ok", "kiln-test-gc-1-ok", true),
            ("*-ok", "kiln-test-gc-1-okay", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_match(p, t), want, "{p} ~ {t}");
        }
    }
}
