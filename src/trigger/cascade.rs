//! Cascading rebuilds: when a channel moves (Parameter Store's `Parameter Store Change` event for
//! `/kiln/<team>/<template>/<channel>`: a base template's new build published, or `kiln promote`),
//! the templates of that team whose source image is now the channel's image are enqueued at once,
//! each naming the base's build as its reason, instead of waiting for the next nightly run.
//! Dependency order follows: a dependent's own channel moves when its build publishes, which
//! cascades to the templates built on it in turn, the same night.
//!
//! The work is the nightly run's (`nightly::run` with a [`Base`]): the same bake keys, so the
//! build ids are those the next nightly run would pick and a cascade and a nightly run never
//! build one bake twice; the same back-off after failures. A template whose image would be its
//! own ancestor (it built the base, or an image the base was built on) is not enqueued: a
//! cycle of channels would otherwise rebuild forever.

use super::events::{Nightly, ParameterChange};
use super::{Settings, Summary, TriggerError};
use crate::aws::Clients;
use crate::team::Team;
use serde_json::json;
use std::time::Duration;

/// The operations after which a channel names a new image.
const MOVED: &[&str] = &["Create", "Update"];

/// A channel that moved: what its dependents are rebuilt on.
#[derive(Debug, Clone)]
pub struct Base {
    /// The channel's team: only its templates can read the parameter (`team::DataScope`).
    pub team: Team,
    /// The parameter (`/kiln/<team>/<template>/<channel>`).
    pub parameter: String,
    /// The image it now names.
    pub ami: String,
    /// The kiln build that made the image, when kiln did.
    pub built_by: Option<String>,
    /// The channel names (`kiln:template-name`) of the image's templates and its ancestors'.
    pub lineage_templates: Vec<String>,
    /// The package changes the base's build made against the previous image of its template,
    /// when known (a nightly build of the team's, with an SBOM and a previous image).
    pub brought: Option<Vec<String>>,
}

impl Base {
    /// The reason a dependent's request gives. Pure.
    pub fn reason(&self) -> String {
        let by = match &self.built_by {
            Some(b) => format!(", built by build {b}"),
            None => " (not built by kiln)".to_owned(),
        };
        let brought = self
            .brought
            .as_deref()
            .map(super::nightly::changes::in_reason)
            .unwrap_or_default();
        format!(
            "its base {} now points at {}{by}{brought}",
            self.parameter, self.ami
        )
    }

    /// Why template `key` must not be rebuilt on this base: its own image is the base or one of
    /// the base's ancestors (a cycle). Pure.
    pub fn cycle(&self, key: &str) -> Option<String> {
        let name = crate::channels::template_name_of_key(key, None);
        let own =
            |t: &String| *t == name || t.strip_prefix(&name).is_some_and(|r| r.starts_with('.'));
        self.lineage_templates.iter().find(|t| own(t)).map(|t| {
            format!(
                "not rebuilt on {}: {} is built from this template ({t}) or from an image of it, which would rebuild in a cycle; the nightly run rebuilds it when its bake key changes",
                self.parameter, self.ami
            )
        })
    }
}

/// The team and channel a parameter name is a channel of, for a team this trigger serves;
/// otherwise why not. Pure.
fn channel_of<'a>(settings: &Settings, name: &'a str) -> Result<(Team, &'a str), String> {
    let rest = name
        .strip_prefix(crate::channels::ROOT)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| format!("not a channel: outside {}/", crate::channels::ROOT))?;
    let (team, rest) = rest
        .split_once('/')
        .ok_or_else(|| "not a channel: no template in the name".to_owned())?;
    let (_, channel) = rest
        .rsplit_once('/')
        .ok_or_else(|| "not a channel: /kiln/<team>/<template>/<channel>".to_owned())?;
    crate::channels::check_channel(channel).map_err(|e| format!("not a channel: {e}"))?;
    let team = settings
        .teams()
        .into_iter()
        .map(|(t, _)| t)
        .find(|t| t.as_str() == team)
        .ok_or_else(|| {
            format!("team {team} has no request queue in this trigger (KILN_TEAM_QUEUES)")
        })?;
    Ok((team, channel))
}

/// Handles a `Parameter Store Change`: for a channel of a served team that now names an image,
/// the dependents' requests (see the module's doc); anything else is one skipped entry with the
/// reason. Side effects: SSM GetParameter, EC2 DescribeImages, the nightly run's reads and
/// requests. Safe to run twice (the same bake keys name the same builds).
pub async fn run(
    clients: &Clients,
    settings: &Settings,
    change: &ParameterChange,
    budget: Option<Duration>,
) -> Result<Summary, TriggerError> {
    let mut summary = Summary::default();
    let name = change.name.as_str();
    let skipped = |mut s: Summary, reason: String| {
        tracing::info!(parameter = %name, "cascade: {reason}");
        s.skipped.push(json!({"parameter": name, "reason": reason}));
        Ok(s)
    };
    let team = match channel_of(settings, name) {
        Ok((team, _)) => team,
        Err(why) => return skipped(summary, format!("ignored: {why}")),
    };
    if !MOVED.contains(&change.operation.as_str()) {
        return skipped(
            summary,
            format!(
                "ignored: operation {}; templates built on the channel are rebuilt when it names an image again",
                change.operation
            ),
        );
    }
    let region = change
        .region
        .clone()
        .unwrap_or_else(|| clients.region().to_owned());
    let Some(ami) = channel_image(clients, &region, name).await? else {
        return skipped(
            summary,
            "ignored: the parameter is gone, or is not a channel (its data type is not aws:ec2:image)".into(),
        );
    };
    let ec2 = clients.ec2_in(&region);
    let (image, ancestors) = crate::ec2::lineage::ancestors(&ec2, &region, &ami)
        .await
        .map_err(|e| TriggerError::Aws {
            what: format!("describing {ami}'s lineage in {region}"),
            message: e.to_string(),
        })?;
    let base = Base {
        team,
        parameter: name.to_owned(),
        ami,
        built_by: image.build_id.clone(),
        lineage_templates: std::iter::once(&image)
            .chain(ancestors.iter())
            .filter_map(|m| m.template_name.clone())
            .collect(),
        brought: None,
    };
    let brought = match &base.built_by {
        Some(id) => {
            super::nightly::changes::of_build(clients, settings, &base.team, id, Some(&base.ami))
                .await
        }
        None => None,
    };
    let base = Base { brought, ..base };
    tracing::info!(parameter = %name, ami = %base.ami, built_by = ?base.built_by, "cascade: rebuilding the templates built on this channel");
    let s = Box::pin(super::nightly::run(
        clients,
        settings,
        &Nightly::default(),
        budget,
        Some(&base),
    ))
    .await?;
    summary.enqueued = s.enqueued;
    summary.skipped = s.skipped;
    Ok(summary)
}

/// The image channel `name` names in `region`; `None` when the parameter is gone or is not a
/// channel.
async fn channel_image(
    clients: &Clients,
    region: &str,
    name: &str,
) -> Result<Option<String>, TriggerError> {
    match clients
        .ssm_in(region)
        .get_parameter()
        .name(name)
        .send()
        .await
    {
        Ok(o) => Ok(o
            .parameter()
            .filter(|p| p.data_type() == Some(crate::channels::DATA_TYPE))
            .and_then(|p| p.value())
            .map(str::to_owned)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            Ok(None)
        }
        Err(e) => Err(TriggerError::aws(
            format!("reading the channel {name} in {region}"),
            &e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(templates: &[&str]) -> Base {
        Base {
            team: Team::default_team(),
            parameter: "/kiln/default/web/base/dev".into(),
            ami: "ami-1".into(),
            built_by: Some("nightly-b".into()),
            lineage_templates: templates.iter().map(|t| (*t).to_owned()).collect(),
            brought: Some(vec!["openssl 3.0.13 → 3.0.14".into()]),
        }
    }

    #[test]
    fn a_template_is_not_rebuilt_on_its_own_image() {
        let b = base(&["web/base", "os/debian.x86"]);
        assert!(b.cycle("templates/web/base.pkr.hcl").is_some());
        assert!(b.cycle("templates/os/debian.pkr.hcl").is_some());
        assert!(b.cycle("templates/web/app.pkr.hcl").is_none());
        assert!(b.cycle("templates/web/base-two.pkr.hcl").is_none());
        assert!(
            b.reason()
                .contains("built by build nightly-b; it brought openssl 3.0.13 → 3.0.14"),
            "{}",
            b.reason()
        );
    }
}
