//! The nightly run's lifecycle rules: a template whose S3 object carries `kiln-lifecycle`
//! (`lifecycle_rule`) has its old images deprecated and deregistered, in every region its last
//! build published to, each action an entry of the run's summary.
//!
//! What is looked at: this account's images tagged with the template (`kiln:template`
//! `s3://<bucket>/<key>#<build>`, the prefix compared exactly; a value `ec2::lineage::tag_value`
//! shortened is never taken for one) and the trigger's own team (`kiln:team`), one build's images
//! at a time, and that build's channels (`/kiln/<team>/<template-name>/*`, with their SSM
//! history). What is never touched: the images the rule keeps, any image a channel of the team
//! points at in the region, images of unknown age, and snapshots the image's own build did not
//! make (a source image's snapshots that its mapping names). A deregistered image's snapshots
//! that its build made (`kiln:build-id` and `kiln:team`) are deleted with it, by id; one whose
//! deletion fails is named in the summary and left to `kiln gc` (which removes the snapshots of
//! finished builds that no AMI maps). At most [`MAX_ACTIONS`] actions per template a night: the
//! rest waits for the next night, so a rule newly set on a long history stays within the run's
//! time.

use super::super::{Settings, TriggerError, template_channels};
use super::lifecycle_rule::{self, Action, Channel, Decision, Rule};
use crate::aws::Clients;
use crate::ec2::lineage::{self, TAG_TEMPLATE, TAG_TEMPLATE_NAME, tag};
use crate::ec2::{Ec2Error, TAG_BUILD_ID, TAG_STEP, api};
use crate::team::{TAG_TEAM, Team};
use aws_sdk_ec2::types::Image;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;

/// The most images one template's rule acts on in a night: each is up to four calls (deprecate,
/// or deregister, describe and delete its snapshots), so 25 stay within a minute of the run's
/// five (the function's timeout) however many templates come after.
pub const MAX_ACTIONS: usize = 25;
/// How far ahead a deprecation time counts as deprecated already (one set later is brought
/// forward): a day, the nightly run's period.
const DEPRECATED_WITHIN: time::Duration = time::Duration::days(1);

/// Applies template `t`'s lifecycle rule (if its object names one) on `now` (the run's clock).
/// Returns the summary's entries: per build and region the images kept, then one per image
/// deprecated or deregistered, or an `error` (a malformed rule, a failed call; the run goes on).
/// Side effects: EnableImageDeprecation, DeregisterImage and DeleteSnapshot as decided. Safe to
/// run twice: a deprecated image is not deprecated again, a deregistered one is gone (a snapshot
/// whose deletion failed then is `kiln gc`'s).
pub(super) async fn apply(
    clients: &Clients,
    settings: &Settings,
    team: &Team,
    t: &str,
    now: OffsetDateTime,
) -> Vec<Value> {
    let rule = match template_channels::user_metadata(clients, &settings.bucket, t).await {
        Ok(m) => match m.get(lifecycle_rule::METADATA_KEY) {
            None => return Vec::new(),
            Some(v) => match lifecycle_rule::parse(v) {
                Ok(r) => r,
                Err(e) => return vec![json!({"template": t, "error": e})],
            },
        },
        Err(e) => return vec![json!({"template": t, "error": e.to_string()})],
    };
    let regions = match regions_of(clients, settings, t).await {
        Ok(r) => r,
        Err(e) => return vec![json!({"template": t, "error": e.to_string()})],
    };
    let mut out = Vec::new();
    let mut budget = MAX_ACTIONS;
    for region in regions {
        let at = Where {
            clients,
            team,
            template: t,
            region: &region,
        };
        if let Err(e) = in_region(&at, &settings.bucket, &rule, now, &mut budget, &mut out).await {
            tracing::warn!(template = %t, region = %region, error = %e, "lifecycle: not applied in this region");
            out.push(json!({"template": t, "region": region, "error": e.to_string()}));
        }
    }
    out
}

/// The regions a template's images are in: the trigger's, and those its last succeeded build
/// published to (the bake index's artifacts).
async fn regions_of(
    clients: &Clients,
    settings: &Settings,
    t: &str,
) -> Result<Vec<String>, TriggerError> {
    let home = clients.region().to_owned();
    let mut regions = vec![home.clone()];
    if let Some(index) = super::read_index(clients, settings, t).await?
        && let Some(artifacts) = index["artifacts"].as_object()
    {
        regions.extend(artifacts.keys().filter(|r| **r != home).cloned());
    }
    Ok(regions)
}

/// One template's images in one region.
struct Where<'a> {
    clients: &'a Clients,
    team: &'a Team,
    template: &'a str,
    region: &'a str,
}

/// Why a region could not be looked at (the summary's entry; the next night tries again).
#[derive(Debug, thiserror::Error)]
enum LifecycleError {
    /// Listing the images.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    /// Reading every channel of the team.
    #[error(transparent)]
    Release(#[from] crate::release::ReleaseError),
    /// Reading the build's channels and their history.
    #[error(transparent)]
    Channel(#[from] crate::channels::ChannelError),
}

/// Applies `rule` to the template's images in one region, build by build, within `budget`
/// actions (what is left of the template's night); the entries go to `out`. An error is a read
/// that failed (nothing more is done in the region); a failed action is its entry's `error`.
async fn in_region(
    at: &Where<'_>,
    bucket: &str,
    rule: &Rule,
    now: OffsetDateTime,
    budget: &mut usize,
    out: &mut Vec<Value>,
) -> Result<(), LifecycleError> {
    let ec2 = at.clients.ec2_in(at.region);
    let ssm = at.clients.ssm_in(at.region);
    let builds = images_by_build(&ec2, at, bucket).await?;
    // Every image a channel of the team points at here, read once and only if needed.
    let mut pointed: Option<BTreeSet<String>> = None;
    for (build, images) in builds {
        let channels = match images
            .first()
            .and_then(|i| tag(i.tags(), TAG_TEMPLATE_NAME))
        {
            Some(name) => channels_of(&ssm, at, name).await?,
            None => Vec::new(),
        };
        let seen: Vec<lifecycle_rule::Image> = images.iter().map(|i| rule_image(i, now)).collect();
        let (decisions, kept) = lifecycle_rule::decide(rule, &seen, &channels, now);
        out.push(
            json!({"template": at.template, "build": build, "region": at.region, "kept": kept}),
        );
        if decisions.is_empty() {
            continue;
        }
        if pointed.is_none() {
            let path = format!("{}/{}/", crate::channels::ROOT, at.team.as_str());
            let all = crate::release::channels_under(&ssm, at.region, &path, true).await?;
            pointed = Some(all.into_iter().map(|(_, v)| v).collect());
        }
        let held = |d: &Decision| pointed.as_ref().is_some_and(|p| p.contains(&d.ami));
        let (held, todo): (Vec<Decision>, Vec<Decision>) = decisions.into_iter().partition(held);
        for d in held {
            out.push(
                json!({"template": at.template, "build": build, "region": at.region, "ami": d.ami,
                "action": "kept", "reason": "a channel of the team points at it"}),
            );
        }
        let waiting = todo.len().saturating_sub(*budget);
        if waiting > 0 {
            out.push(json!({"template": at.template, "build": build, "region": at.region, "waiting": waiting,
                "reason": format!("at most {MAX_ACTIONS} actions per template a night: the next nights do the rest")}));
        }
        // The oldest first (decisions come newest first): they are the most overdue.
        for d in todo.into_iter().rev().take(*budget) {
            *budget -= 1;
            let Some(image) = images.iter().find(|i| i.image_id() == Some(d.ami.as_str())) else {
                continue;
            };
            let mut entry = json!({
                "template": at.template, "build": build, "region": at.region, "ami": d.ami,
                "build_id": tag(image.tags(), TAG_BUILD_ID), "reason": d.reason,
            });
            act(&ec2, at, image, &d, &mut entry).await;
            out.push(entry);
        }
    }
    Ok(())
}

/// The team's available images of template `t` in the region, per build name, newest first
/// (without the boot test's private images).
async fn images_by_build(
    ec2: &aws_sdk_ec2::Client,
    at: &Where<'_>,
    bucket: &str,
) -> Result<BTreeMap<String, Vec<Image>>, Ec2Error> {
    let prefix = format!("s3://{bucket}/{}#", at.template);
    let pattern = format!("{}*", lineage::literal(&prefix));
    let found = lineage::team_images(ec2, at.region, at.team.as_str(), &pattern).await?;
    let mut builds: BTreeMap<String, Vec<Image>> = BTreeMap::new();
    for image in found {
        // Exactly this template's (the filter's wildcard is only a first cut).
        let Some(build) = tag(image.tags(), TAG_TEMPLATE)
            .and_then(|v| v.strip_prefix(prefix.as_str()))
            // A `#` would be another template's key part; `…` a value cut to fit a tag.
            .filter(|b| !b.is_empty() && !b.contains('#') && !b.contains('…'))
            .map(str::to_owned)
        else {
            continue;
        };
        if tag(image.tags(), TAG_STEP) == Some("boot-test") {
            continue;
        }
        // Grouping keeps the order: newest first within each build.
        builds.entry(build).or_default().push(image);
    }
    Ok(builds)
}

/// The decision's view of an image on `now`.
fn rule_image(image: &Image, now: OffsetDateTime) -> lifecycle_rule::Image {
    let parse =
        |t: &str| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok();
    lifecycle_rule::Image {
        ami: image.image_id().unwrap_or_default().to_owned(),
        created: image.creation_date().and_then(parse),
        deprecated: image
            .deprecation_time()
            .and_then(parse)
            .is_some_and(|at| at <= now + DEPRECATED_WITHIN),
        revoked: tag(image.tags(), crate::ec2::lineage::TAG_REVOKED).is_some(),
    }
}

/// The channels of template name `name` (`/kiln/<team>/<name>/<channel>`) with the images each
/// held, newest first (from the parameter's history).
async fn channels_of(
    ssm: &aws_sdk_ssm::Client,
    at: &Where<'_>,
    name: &str,
) -> Result<Vec<Channel>, LifecycleError> {
    let path = format!("{}/{}/{name}", crate::channels::ROOT, at.team.as_str());
    let mut out = Vec::new();
    for (name, _) in crate::release::channels_under(ssm, at.region, &path, false).await? {
        let held = held_by(ssm, at.region, &name).await?;
        out.push(Channel { name, held });
    }
    Ok(out)
}

/// The images parameter `name` held, newest first, each once.
async fn held_by(
    ssm: &aws_sdk_ssm::Client,
    region: &str,
    name: &str,
) -> Result<Vec<String>, LifecycleError> {
    let mut versions: Vec<(i64, String)> = Vec::new();
    let mut token = None;
    loop {
        let page = ssm
            .get_parameter_history()
            .name(name)
            .set_next_token(token)
            .send()
            .await
            .map_err(crate::channels::ssm_error(
                "GetParameterHistory",
                name,
                region,
            ))?;
        versions.extend(
            page.parameters()
                .iter()
                .filter_map(|p| Some((p.version(), p.value()?.to_owned()))),
        );
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    let mut held: Vec<String> = Vec::new();
    for (_, ami) in versions {
        if !held.contains(&ami) {
            held.push(ami);
        }
    }
    Ok(held)
}

/// Does decision `d` to `image`, noting the outcome in `entry` (`action`, and `error` or the
/// snapshots deleted and kept).
async fn act(
    ec2: &aws_sdk_ec2::Client,
    at: &Where<'_>,
    image: &Image,
    d: &Decision,
    entry: &mut Value,
) {
    let ami = d.ami.as_str();
    let done = match d.action {
        Action::Deprecate => crate::release::deprecate_now(ec2, at.region, ami)
            .await
            .map(|_| "deprecated"),
        Action::Deregister => ec2
            .deregister_image()
            .image_id(ami)
            .send()
            .await
            .map(|_| "deregistered")
            .map_err(api("DeregisterImage", ami, at.region)),
    };
    match done {
        Ok(what) => {
            tracing::info!(template = %at.template, region = %at.region, ami, action = what, reason = %d.reason, "lifecycle");
            entry["action"] = json!(what);
        }
        Err(e) => {
            tracing::warn!(template = %at.template, region = %at.region, ami, error = %e, "lifecycle: not done");
            entry["action"] = json!("failed");
            entry["error"] = json!(e.to_string());
            return;
        }
    }
    if d.action == Action::Deregister {
        let (deleted, kept) = delete_snapshots(ec2, at, image).await;
        entry["snapshots_deleted"] = json!(deleted);
        if !kept.is_empty() {
            entry["snapshots_kept"] = json!(kept);
        }
    }
}

/// Deletes the snapshots deregistered `image` mapped that its own build made (tagged with its
/// `kiln:build-id` and the team), by id. Returns those deleted and the others with why each
/// was kept (not the build's, or the call failed: logged with the id).
async fn delete_snapshots(
    ec2: &aws_sdk_ec2::Client,
    at: &Where<'_>,
    image: &Image,
) -> (Vec<String>, Vec<String>) {
    let build = tag(image.tags(), TAG_BUILD_ID);
    let ids: Vec<&str> = image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
        .collect();
    let (mut deleted, mut kept) = (Vec::new(), Vec::new());
    for id in ids {
        let described = ec2
            .describe_snapshots()
            .owner_ids("self")
            .snapshot_ids(id)
            .send()
            .await
            .map_err(api("DescribeSnapshots", id, at.region));
        let ours = match described {
            Ok(o) => o.snapshots().first().is_some_and(|s| {
                build.is_some()
                    && tag(s.tags(), TAG_BUILD_ID) == build
                    && tag(s.tags(), TAG_TEAM) == Some(at.team.as_str())
            }),
            Err(e) => {
                tracing::warn!(snapshot = id, error = %e, "lifecycle: snapshot left behind");
                kept.push(format!("{id}: {e}"));
                continue;
            }
        };
        if !ours {
            kept.push(format!("{id}: not made by the image's build"));
            continue;
        }
        match ec2.delete_snapshot().snapshot_id(id).send().await {
            Ok(_) => deleted.push(id.to_owned()),
            Err(e) => {
                let e = api("DeleteSnapshot", id, at.region)(e);
                tracing::warn!(snapshot = id, error = %e, "lifecycle: snapshot left behind");
                kept.push(format!("{id}: {e}"));
            }
        }
    }
    (deleted, kept)
}
