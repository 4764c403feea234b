//! `kiln gc`: finds what kiln created (by its `kiln:build-id` tag, optionally only builds whose id
//! matches a pattern) whose build is over (its journal says succeeded or failed) or abandoned (its
//! lease expired long ago), and removes it: volumes always (a finished build keeps none), snapshots
//! no kept AMI maps, AMIs of failed or abandoned builds, and the journals of finished builds. A
//! build without a journal (a `kiln build` run, or a finished build whose journal an earlier gc
//! removed) keeps its AMIs and loses the rest. The AMIs of succeeded builds and the snapshots they
//! map are never touched. Nothing younger than `--older-than` (by its creation time, or for a
//! journal its last write) and no volume attached to a live instance is touched.
//!
//! The journal speaks for one generation only (its `generation`; see `ec2::BuildRef`): a resource
//! is judged by the journal when its `kiln:generation` tag names the journal's generation (both
//! absent counts as equal: a journal and resources from before generations). A resource of another
//! generation (an earlier build under the same id, whose journal a forced rebuild replaced, or a
//! `kiln build` run) is kept whatever the journal says, with the reason logged: nothing durable
//! says how that generation ended. Once gc has collected the newer journal, such resources are
//! judged as a build without a journal (its AMIs stay).

use crate::aws::Clients;
use crate::checkpoint;
use crate::ec2::{TAG_BUILD_ID, images, volumes};
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{Filter, Image, Snapshot, Volume};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use verdict::{Fate, Journaled, read_journal, verdict};

mod identity;
mod verdict;

pub use identity::glob_match;
use identity::{made, unqualified};

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

/// A boot test's instance that is not terminated: (id, build id, generation, launch time).
type TestInstance = (
    String,
    String,
    String,
    Option<aws_sdk_ec2::primitives::DateTime>,
);

/// The instances carrying kiln's tag (boot tests) that are not terminated.
async fn test_instances(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    exists: &Filter,
) -> Result<Vec<TestInstance>, String> {
    let live = crate::ec2::instances::live_matching(ec2, region, exists.clone())
        .await
        .map_err(|e| e.to_string())?;
    Ok(live
        .iter()
        .filter_map(|i| {
            let (id, build, generation) = made(i.instance_id(), i.tags())?;
            Some((id, build, generation, i.launch_time().cloned()))
        })
        .collect())
}

/// What carries kiln's tag in one region.
struct Listed {
    images: Vec<Image>,
    snapshots: Vec<Snapshot>,
    volumes: Vec<Volume>,
    instances: Vec<TestInstance>,
}

/// Lists, at once, what carries kiln's tag (matching `exists`) in `region`; the first failed
/// listing is the error. Side effects: none (describe calls only).
async fn list_region(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    exists: &Filter,
) -> Result<Listed, String> {
    let (images, snapshots, volumes, instances) = tokio::try_join!(
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
        test_instances(ec2, region, exists),
    )?;
    Ok(Listed {
        images,
        snapshots,
        volumes,
        instances,
    })
}

/// Deregisters image `id` and deletes the snapshots it maps (`snaps`) except those a kept image
/// maps (`kept`). A missing image or snapshot counts as removed (safe to run twice).
async fn remove_image(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    id: &str,
    snaps: &[String],
    kept: &[String],
) -> Result<(), String> {
    images::deregister(ec2, region, id)
        .await
        .map_err(|e| e.to_string())?;
    for s in snaps.iter().filter(|s| !kept.contains(s)) {
        images::delete_snapshot(ec2, region, s)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One gc run: its settings, the journals read so far (once per build) and what it did.
struct Run<'a> {
    clients: &'a Clients,
    bucket: &'a str,
    older_than: Duration,
    dry_run: bool,
    journals: BTreeMap<String, Journaled>,
    actions: Vec<Action>,
}

impl Run<'_> {
    /// Build `build`'s journal as read (once per run). Side effects: reads S3 the first time.
    async fn journal(&mut self, build: &str) -> &Journaled {
        if !self.journals.contains_key(build) {
            let (team, id) = unqualified(build);
            let j = read_journal(self.clients, self.bucket, &team, id, self.older_than).await;
            self.journals.insert(build.to_owned(), j);
        }
        &self.journals[build]
    }

    /// The verdict on resource `id` (a `kind`) of `build`, made by `generation` (see [`verdict`]).
    /// Side effects: reads the journal (once per build); logs a resource kept for being another
    /// generation's, in dry runs too.
    async fn judge(
        &mut self,
        kind: &str,
        id: &str,
        build: &str,
        generation: &str,
    ) -> (Fate, String) {
        let (fate, why) = verdict(self.journal(build).await, generation);
        if fate == Fate::OtherGeneration {
            tracing::info!(kind, id, build_id = build, reason = %why, "kept");
        }
        (fate, why)
    }

    /// Whether something created at `created` (Unix seconds; unknown counts as old) is at least
    /// `older_than` old.
    fn old_enough(&self, created: Option<i64>) -> bool {
        created.is_none_or(|t| checkpoint::now() as i64 - t >= self.older_than.as_secs() as i64)
    }

    /// Records what was done to one resource: `result` of the deletion, or `would delete` in a
    /// dry run.
    fn record(
        &mut self,
        kind: &'static str,
        id: String,
        build: String,
        reason: String,
        result: Result<(), String>,
    ) {
        let outcome = if self.dry_run {
            "would delete".to_owned()
        } else {
            result.map(|_| "deleted".to_owned()).unwrap_or_else(|e| e)
        };
        self.actions.push(Action {
            kind,
            id,
            build_id: build,
            reason,
            outcome,
        });
    }

    /// Collects one region's images, snapshots, volumes and boot-test instances.
    /// Side effects: deletes (unless `dry_run`).
    async fn region(&mut self, ec2: &aws_sdk_ec2::Client, region: &str, listed: Listed) {
        let kept = self.images(ec2, region, listed.images).await;
        self.snapshots(ec2, region, listed.snapshots, &kept).await;
        self.volumes(ec2, region, listed.volumes).await;
        self.instances(ec2, region, listed.instances).await;
    }

    /// Removes the images of failed or abandoned generations (and the snapshots they map that no
    /// kept image maps); returns the snapshots the kept images map. Every image is judged before
    /// any goes. Side effects: deregisters and deletes (unless `dry_run`).
    async fn images(
        &mut self,
        ec2: &aws_sdk_ec2::Client,
        region: &str,
        imgs: Vec<Image>,
    ) -> Vec<String> {
        let mut kept = Vec::new();
        let mut doomed = Vec::new();
        for img in imgs {
            let Some((id, build, generation)) = made(img.image_id(), img.tags()) else {
                continue;
            };
            let (f, why) = self.judge("image", &id, &build, &generation).await;
            let created = img.creation_date().and_then(|d| {
                time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339).ok()
            });
            if f != Fate::Gone || !self.old_enough(created.map(|t| t.unix_timestamp())) {
                kept.extend(images::snapshots_of(&img));
            } else {
                doomed.push((id, build, why, images::snapshots_of(&img)));
            }
        }
        for (id, build, why, snaps) in doomed {
            let r = if self.dry_run {
                Ok(())
            } else {
                remove_image(ec2, region, &id, &snaps, &kept).await
            };
            self.record("image", id, build, why, r);
        }
        kept
    }

    /// Deletes the snapshots no kept image maps, of generations that are over (a crashed
    /// attempt's leftovers). Side effects: deletes (unless `dry_run`).
    async fn snapshots(
        &mut self,
        ec2: &aws_sdk_ec2::Client,
        region: &str,
        snaps: Vec<Snapshot>,
        kept: &[String],
    ) {
        for s in snaps {
            let Some((id, build, generation)) = made(s.snapshot_id(), s.tags()) else {
                continue;
            };
            if kept.contains(&id) {
                continue;
            }
            let (f, why) = self.judge("snapshot", &id, &build, &generation).await;
            if f.keeps_all() || !self.old_enough(s.start_time().map(|t| t.secs())) {
                continue;
            }
            let r = if self.dry_run {
                Ok(())
            } else {
                images::delete_snapshot(ec2, region, &id)
                    .await
                    .map_err(|e| e.to_string())
            };
            self.record("snapshot", id, build, why, r);
        }
    }

    /// Deletes the volumes of generations that are over or abandoned (they keep none); one
    /// attached to a live instance is in use (a `kiln build` without a journal, or a build gc
    /// cannot judge) and stays. Side effects: detaches and deletes (unless `dry_run`).
    async fn volumes(&mut self, ec2: &aws_sdk_ec2::Client, region: &str, vols: Vec<Volume>) {
        let live = live_instances(ec2, &vols).await;
        let (polling, cancel) = (
            crate::ec2::wait::Polling::default(),
            CancellationToken::new(),
        );
        for v in vols {
            let attached_to_live = v
                .attachments()
                .iter()
                .filter_map(|a| a.instance_id())
                .any(|i| live.as_ref().is_none_or(|l| l.iter().any(|x| x == i)));
            if attached_to_live {
                continue;
            }
            let Some((id, build, generation)) = made(v.volume_id(), v.tags()) else {
                continue;
            };
            let (f, why) = self.judge("volume", &id, &build, &generation).await;
            if f.keeps_all() || !self.old_enough(v.create_time().map(|t| t.secs())) {
                continue;
            }
            let r = if self.dry_run {
                Ok(())
            } else {
                match volumes::detach(ec2, region, &id, &polling, &cancel).await {
                    Ok(()) => volumes::delete(ec2, region, &id)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            };
            self.record("volume", id, build, why, r);
        }
    }

    /// Terminates the boot-test instances of generations that are over (a crash during the
    /// test); their root volumes go with them (deleted on termination). Side effects: terminates
    /// (unless `dry_run`).
    async fn instances(
        &mut self,
        ec2: &aws_sdk_ec2::Client,
        region: &str,
        insts: Vec<TestInstance>,
    ) {
        let polling = crate::ec2::wait::Polling::default();
        for (id, build, generation, launched) in insts {
            let (f, why) = self.judge("instance", &id, &build, &generation).await;
            if f.keeps_all() || !self.old_enough(launched.map(|t| t.secs())) {
                continue;
            }
            let r = if self.dry_run {
                Ok(())
            } else {
                crate::ec2::instances::terminate(ec2, region, &id, &polling)
                    .await
                    .map_err(|e| e.to_string())
            };
            self.record("instance", id, build, why, r);
        }
    }

    /// Deletes the journals of finished (or abandoned) builds whose id matches `build_ids`, by
    /// the journal's own generation; the pattern's literal head narrows the listing. Side
    /// effects: lists and deletes S3 objects (unless `dry_run`).
    async fn journals(&mut self, build_ids: &str) {
        let mut roots = vec![String::new()];
        roots.extend(self.team_roots().await);
        for root in roots {
            self.journals_under(&root, build_ids).await;
        }
    }

    /// The key roots of the teams that have documents in the bucket (`teams/<name>/`).
    async fn team_roots(&mut self) -> Vec<String> {
        let mut pages = self
            .clients
            .s3
            .list_objects_v2()
            .bucket(self.bucket)
            .prefix("teams/")
            .delimiter("/")
            .into_paginator()
            .send();
        let mut roots = Vec::new();
        while let Some(page) = pages.next().await {
            match page {
                Ok(p) => roots.extend(
                    p.common_prefixes()
                        .iter()
                        .filter_map(|c| c.prefix().map(str::to_owned)),
                ),
                Err(e) => {
                    tracing::warn!(error = %aws_sdk_s3::error::DisplayErrorContext(&e), "could not list the teams' journals; only the default team's are collected");
                    break;
                }
            }
        }
        roots
    }

    /// [`Run::journals`] within one team's key root.
    async fn journals_under(&mut self, root: &str, build_ids: &str) {
        let head = build_ids.split(['*', '?']).next().unwrap_or_default();
        let mut pages = self
            .clients
            .s3
            .list_objects_v2()
            .bucket(self.bucket)
            .prefix(format!("{root}checkpoints/{head}"))
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            match page {
                Ok(p) => found.extend(p.contents.unwrap_or_default()),
                Err(e) => {
                    self.actions.push(Action {
                        kind: "listing",
                        id: format!("s3://{}/{root}checkpoints/", self.bucket),
                        build_id: build_ids.to_owned(),
                        reason: "could not list the journals".to_owned(),
                        outcome: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
                    });
                    break;
                }
            }
        }
        for o in found {
            let Some(key) = o.key().map(str::to_owned) else {
                continue;
            };
            let Some(id) = key
                .strip_prefix(root)
                .and_then(|k| k.strip_prefix("checkpoints/"))
                .and_then(|k| k.strip_suffix(".json"))
            else {
                continue;
            };
            if !glob_match(build_ids, id) {
                continue;
            }
            let build = format!("{root}{id}");
            let Journaled { fate, why, .. } = self.journal(&build).await.clone();
            if fate.keeps_all() || !self.old_enough(o.last_modified().map(|t| t.secs())) {
                continue;
            }
            let r = if self.dry_run {
                Ok(())
            } else {
                let call = self
                    .clients
                    .s3
                    .delete_object()
                    .bucket(self.bucket)
                    .key(&key);
                call.send()
                    .await
                    .map(|_| ())
                    .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(&e).to_string())
            };
            self.record("journal", key, build, why, r);
        }
    }
}

/// Runs gc over the build region and `regions`, for the builds whose id matches `build_ids` (a
/// pattern with `*` and `?`; `*` for all). Side effects: deletes (unless `dry_run`); logs each
/// resource kept for being another generation's than its build's journal. Safe to run twice and
/// alongside running builds (their live leases, and `older_than` for builds without a journal,
/// protect them). A listing that fails is reported as an action with its error.
pub async fn run(
    clients: &Clients,
    bucket: &str,
    regions: &[String],
    build_ids: &str,
    older_than: Duration,
    dry_run: bool,
) -> Vec<Action> {
    let mut gc = Run {
        clients,
        bucket,
        older_than,
        dry_run,
        journals: BTreeMap::new(),
        actions: Vec::new(),
    };
    let exists = Filter::builder()
        .name(format!("tag:{TAG_BUILD_ID}"))
        .values(build_ids)
        .build();
    let mut all_regions = vec![clients.region().to_owned()];
    all_regions.extend(
        regions
            .iter()
            .filter(|r| r.as_str() != clients.region())
            .cloned(),
    );
    for region in all_regions {
        let ec2 = clients.ec2_in(&region);
        // A failed listing skips the region.
        match list_region(&ec2, &region, &exists).await {
            Ok(listed) => gc.region(&ec2, &region, listed).await,
            Err(e) => gc.actions.push(Action {
                kind: "listing",
                id: region.clone(),
                build_id: build_ids.to_owned(),
                reason: "could not list what kiln made there".to_owned(),
                outcome: e,
            }),
        }
    }
    gc.journals(build_ids).await;
    gc.actions
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
