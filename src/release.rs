//! Whether an image should still be launched: `kiln promote` points another channel at an image
//! (`--from` checks the channel it comes from holds it), `kiln revoke` withdraws an image and,
//! when asked, every image built on it: deprecated (EC2 EnableImageDeprecation, a minute ahead),
//! the `kiln:revoked` tag with the reason, and every channel parameter of its team that points at
//! it removed, in each region asked where the build has an image. Images are found by their kiln tags (`ec2::lineage`), channels by their SSM
//! parameters (`channels`).

use crate::aws::Clients;
use crate::channels::{self, ChannelError};
use crate::ec2::lineage::{self, TAG_REVOKED, TAG_TEMPLATE_NAME};
use crate::ec2::{Ec2Error, TAG_BUILD_ID, api};
use aws_sdk_ec2::types::{Filter, Image, Tag};
use aws_sdk_ssm::Client;

/// How far ahead an image is deprecated "now": EC2 refuses a time in the past (the
/// EnableImageDeprecation reference: "You can't specify a date in the past") and rounds to the
/// nearest minute.
pub const DEPRECATE_DELAY_S: i64 = 60;

/// Deprecates `ami` in `region` as soon as EC2 takes ([`DEPRECATE_DELAY_S`] ahead). Side
/// effects: the image's deprecation time. Safe to run twice.
pub async fn deprecate_now(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    ami: &str,
) -> Result<(), Ec2Error> {
    let at = aws_sdk_ec2::primitives::DateTime::from_secs(
        time::OffsetDateTime::now_utc().unix_timestamp() + DEPRECATE_DELAY_S,
    );
    ec2.enable_image_deprecation()
        .image_id(ami)
        .deprecate_at(at)
        .send()
        .await
        .map(|_| ())
        .map_err(api("EnableImageDeprecation", ami, region))
}

/// An error promoting or revoking.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// From EC2.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    /// From SSM.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The image cannot be promoted or revoked as asked (what to do is in the message).
    #[error("{0}")]
    Refused(String),
}

impl ReleaseError {
    /// Whether a retry could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReleaseError::Ec2(e) => e.is_retryable(),
            ReleaseError::Channel(e) => e.is_retryable(),
            ReleaseError::Refused(_) => false,
        }
    }
}

/// One thing done (or found already done), for the command's output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Action {
    /// The region.
    pub region: String,
    /// The AMI.
    pub ami: String,
    /// What was done: `published /kiln/...`, `deprecated`, `tagged kiln:revoked`, `removed
    /// /kiln/...`.
    pub what: String,
}

fn tag_of(image: &Image, key: &str) -> Option<String> {
    lineage::tag(image.tags(), key).map(str::to_owned)
}

async fn image(clients: &Clients, region: &str, ami: &str) -> Result<Image, ReleaseError> {
    crate::ec2::images::describe(&clients.ec2_in(region), region, ami)
        .await?
        .ok_or_else(|| ReleaseError::Refused(format!("{ami} does not exist in {region}")))
}

/// The same build's image in `region` (`home`'s own id there), found by its build id and team
/// tags; `None` when the build has none there. Read only.
async fn in_region(
    clients: &Clients,
    home: &str,
    region: &str,
    src: &Image,
) -> Result<Option<String>, ReleaseError> {
    if region == home {
        return Ok(src.image_id().map(str::to_owned));
    }
    let Some(build) = tag_of(src, TAG_BUILD_ID) else {
        return Ok(None);
    };
    let team = tag_of(src, crate::team::TAG_TEAM).unwrap_or_default();
    let generation = tag_of(src, crate::ec2::TAG_GENERATION).unwrap_or_default();
    let out = clients
        .ec2_in(region)
        .describe_images()
        .owners("self")
        .filters(
            Filter::builder()
                .name(format!("tag:{TAG_BUILD_ID}"))
                .values(&build)
                .build(),
        )
        .filters(
            Filter::builder()
                .name(format!("tag:{}", crate::team::TAG_TEAM))
                .values(&team)
                .build(),
        )
        .send()
        .await
        .map_err(api("DescribeImages", build.clone(), region))?;
    // Only the registered image of the build's generation (not the boot test's private image,
    // which is deregistered after the test, nor a forced rebuild's under the same build id).
    let found: Vec<String> = out
        .images()
        .iter()
        .filter(|i| lineage::tag(i.tags(), crate::ec2::TAG_STEP) != Some("boot-test"))
        .filter(|i| lineage::tag(i.tags(), crate::ec2::TAG_GENERATION).unwrap_or("") == generation)
        .filter_map(|i| i.image_id().map(str::to_owned))
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        more => Err(ReleaseError::Refused(format!(
            "build {build} has {} images in {region} ({}): name the one meant in that region",
            more.len(),
            more.join(", ")
        ))),
    }
}

/// Points channel `to` of the image's template at `ami` in the clients' region and `regions`
/// (the same build's image in each). With `from`, refuses unless channel `from` holds the image
/// now in every region. Refuses a revoked image. Side effects: a new version of each channel
/// parameter. Safe to run twice.
pub async fn promote(
    clients: &Clients,
    regions: &[String],
    ami: &str,
    to: &str,
    from: Option<&str>,
) -> Result<Vec<Action>, ReleaseError> {
    channels::check_channel(to)?;
    let home = clients.region().to_owned();
    let src = image(clients, &home, ami).await?;
    let Some(template) = tag_of(&src, TAG_TEMPLATE_NAME) else {
        return Err(ReleaseError::Refused(format!(
            "{ami} has no {TAG_TEMPLATE_NAME} tag: only images kiln built have channels"
        )));
    };
    if let Some(reason) = tag_of(&src, TAG_REVOKED) {
        return Err(ReleaseError::Refused(format!(
            "{ami} was revoked ({reason}): build a new image and promote that one"
        )));
    }
    let team = tag_of(&src, crate::team::TAG_TEAM).unwrap_or_else(|| "default".into());
    let mut all = vec![home.clone()];
    all.extend(regions.iter().filter(|r| **r != home).cloned());
    let mut targets = Vec::new();
    for region in &all {
        let Some(id) = in_region(clients, &home, region, &src).await? else {
            return Err(ReleaseError::Refused(format!(
                "build {} has no image in {region}: promote without --region {region}, or copy the image there first",
                tag_of(&src, TAG_BUILD_ID).unwrap_or_default()
            )));
        };
        if let Some(from) = from {
            let name = channels::parameter(&team, &template, from)?;
            let ssm = clients.ssm_in(region);
            let now = current(&ssm, region, &name).await?;
            if now.as_deref() != Some(id.as_str()) {
                return Err(ReleaseError::Refused(format!(
                    "channel {from} ({name}) in {region} holds {}, not {id}: promote what {from} holds, or leave out --from",
                    now.as_deref().unwrap_or("nothing")
                )));
            }
        }
        targets.push((region.clone(), id));
    }
    let name = channels::parameter(&team, &template, to)?;
    let mut done = Vec::new();
    for (region, id) in targets {
        channels::publish(&clients.ssm_in(&region), &region, &name, &id).await?;
        done.push(Action {
            region,
            ami: id,
            what: format!("published {name}"),
        });
    }
    Ok(done)
}

/// Withdraws each of `amis` (an image and, as the caller chose, its descendants) in the clients'
/// region and `regions` (the same build's copy there): deprecated a minute from now
/// (EnableImageDeprecation), tagged `kiln:revoked` = `reason`, and every channel parameter of
/// its team (`/kiln/<team>/`, `aws:ec2:image`) that holds it deleted. An image already revoked
/// is revoked again (the same calls). Side effects: as said. Safe to run twice.
///
/// What was done goes into `done` as it is done, so a revocation that fails half way still says
/// which images are already withdrawn.
pub async fn revoke(
    clients: &Clients,
    regions: &[String],
    amis: &[String],
    reason: &str,
    done: &mut Vec<Action>,
) -> Result<(), ReleaseError> {
    let home = clients.region().to_owned();
    let mut all = vec![home.clone()];
    all.extend(regions.iter().filter(|r| **r != home).cloned());
    for ami in amis {
        let src = image(clients, &home, ami).await?;
        for region in &all {
            let Some(id) = in_region(clients, &home, region, &src).await? else {
                continue;
            };
            let ec2 = clients.ec2_in(region);
            deprecate_now(&ec2, region, &id).await?;
            done.push(action(region, &id, "deprecated (in a minute)"));
            ec2.create_tags()
                .resources(&id)
                .tags(
                    Tag::builder()
                        .key(TAG_REVOKED)
                        .value(lineage::tag_value(reason))
                        .build(),
                )
                .send()
                .await
                .map_err(api("CreateTags", id.clone(), region))?;
            done.push(action(region, &id, &format!("tagged {TAG_REVOKED}")));
            let ssm = clients.ssm_in(region);
            // Only the image's team's channels: another team's parameters are not this
            // revocation's (and that team's role may not delete them).
            let team = tag_of(&src, crate::team::TAG_TEAM).unwrap_or_else(|| "default".into());
            let path = format!("{}/{team}/", channels::ROOT);
            for name in pointing_at(&ssm, region, &path, &id).await? {
                remove(&ssm, region, &name).await?;
                done.push(action(region, &id, &format!("removed {name}")));
            }
        }
    }
    Ok(())
}

/// How many parameters `pointing_at` reads under the root (10 per GetParametersByPath page, so
/// 1,000 pages at most; SSM's standard tier holds 10,000 parameters per account and region).
pub const SCAN_MAX: usize = 10_000;

/// The AMI `name` points at now; `None` when the channel has no parameter. Read only.
pub async fn current(
    ssm: &Client,
    region: &str,
    name: &str,
) -> Result<Option<String>, ChannelError> {
    match ssm.get_parameter().name(name).send().await {
        Ok(o) => Ok(o.parameter().and_then(|p| p.value()).map(str::to_owned)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            Ok(None)
        }
        Err(e) => Err(channels::ssm_error("GetParameter", name, region)(e)),
    }
}

/// Every channel parameter (data type `aws:ec2:image`) under `path` (recursively) whose value is
/// `ami`. Read only; more than [`SCAN_MAX`] parameters under `path` is an error (a revoke that
/// looked at only some channels must not look complete).
pub async fn pointing_at(
    ssm: &Client,
    region: &str,
    path: &str,
    ami: &str,
) -> Result<Vec<String>, ReleaseError> {
    let all = channels_under(ssm, region, path, true)
        .await
        .map_err(|e| match e {
            ReleaseError::Refused(m) => {
                ReleaseError::Refused(format!("{m}; remove {ami} from them by hand"))
            }
            e => e,
        })?;
    Ok(all
        .into_iter()
        .filter(|(_, v)| v == ami)
        .map(|(n, _)| n)
        .collect())
}

/// Every channel parameter (data type `aws:ec2:image`) under `path` (with `recursive`, at any
/// depth; otherwise only its own children), with the AMI it points at. Read only; more than
/// [`SCAN_MAX`] parameters under `path` is an error (a caller that looked at only some channels
/// must not act as if it saw them all).
pub async fn channels_under(
    ssm: &Client,
    region: &str,
    path: &str,
    recursive: bool,
) -> Result<Vec<(String, String)>, ReleaseError> {
    let mut found = Vec::new();
    let mut seen = 0;
    let mut token: Option<String> = None;
    loop {
        let out = ssm
            .get_parameters_by_path()
            .path(path)
            .recursive(recursive)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(channels::ssm_error("GetParametersByPath", path, region))?;
        for p in out.parameters() {
            seen += 1;
            if p.data_type() == Some(channels::DATA_TYPE)
                && let (Some(n), Some(v)) = (p.name(), p.value())
            {
                found.push((n.to_owned(), v.to_owned()));
            }
        }
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(found);
        }
        if seen >= SCAN_MAX {
            return Err(ReleaseError::Refused(format!(
                "more than {SCAN_MAX} parameters under {path} in {region}: kiln stopped reading the channels there"
            )));
        }
    }
}

/// Removes channel parameter `name` (its history goes with it, as SSM deletes parameters whole).
/// A parameter already gone is not an error. Side effects: the parameter deleted. Safe to run
/// twice.
pub async fn remove(ssm: &Client, region: &str, name: &str) -> Result<(), ChannelError> {
    match ssm.delete_parameter().name(name).send().await {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            Ok(())
        }
        Err(e) => Err(channels::ssm_error("DeleteParameter", name, region)(e)),
    }
}

fn action(region: &str, ami: &str, what: &str) -> Action {
    Action {
        region: region.to_owned(),
        ami: ami.to_owned(),
        what: what.to_owned(),
    }
}
