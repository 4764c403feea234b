//! Teams: who a build belongs to, and what that decides. A build's identity is (team, build id),
//! the team taken from the queue its request came on, never from the request's body. The team
//! chooses where the build's documents live in the bucket (its key root), the `kiln:team` tag on
//! everything the build makes, the secrets and parameters its data sources may name, and whether
//! its templates may run commands on the builder host or read its files ([`HostFeatures`]).
//!
//! One team is the default (`default`): its documents stay at the bucket's root (`results/`,
//! `checkpoints/`, ...) and it may use host-side features, so a single-team pool works as before
//! teams existed. Every other team lives under `teams/<name>/`.

use std::fmt;

/// The default team's name.
pub const DEFAULT_TEAM: &str = "default";

/// The tag naming the team a resource belongs to.
pub const TAG_TEAM: &str = "kiln:team";

/// Longest team name: 31 characters, so `kiln-build-<team>` (a role name, at most 64) and
/// `teams/<team>/` stay short.
pub const MAX_TEAM_NAME: usize = 31;

/// A team's name: a lowercase letter, then lowercase letters, digits or `-`, at most
/// [`MAX_TEAM_NAME`] characters (a valid role name, tag value and key segment).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Team(String);

/// Why a team setting is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TeamError {
    /// The name does not follow the rule.
    #[error(
        "team name {0:?} must start with a lowercase letter and hold only lowercase letters, digits and '-', at most {MAX_TEAM_NAME} characters"
    )]
    Name(String),
    /// A data source names a secret or parameter outside the team's prefix.
    #[error(
        "team {team}: {what} {name:?} is outside the team's prefix {prefix:?}; a build may read only its own team's {what}s (ask the pool's operators to store it under {prefix:?})"
    )]
    OutsidePrefix {
        /// The team.
        team: String,
        /// `secret` or `parameter`.
        what: &'static str,
        /// The name asked for.
        name: String,
        /// The team's prefix.
        prefix: String,
    },
    /// A template asks for something that runs on, or reads from, the builder host.
    #[error(
        "team {team}: the template uses {feature}, which {why}; this pool does not allow host-side features for team {team} (its operators can set `host_features = true` for the team in the worker's [[teams]] settings)"
    )]
    HostFeature {
        /// The team.
        team: String,
        /// The feature, as the template names it.
        feature: String,
        /// What the feature does on the host.
        why: &'static str,
    },
}

impl TeamError {
    /// Whether retrying could help: never (the request or the settings must change).
    pub fn is_retryable(&self) -> bool {
        false
    }
}

impl Team {
    /// The default team.
    pub fn default_team() -> Self {
        Team(DEFAULT_TEAM.to_owned())
    }

    /// A team by name, checked against the rule.
    pub fn new(name: &str) -> Result<Self, TeamError> {
        let mut chars = name.chars();
        let ok = name.len() <= MAX_TEAM_NAME
            && chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Team(name.to_owned()))
        } else {
            Err(TeamError::Name(name.to_owned()))
        }
    }

    /// The team's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the default team.
    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_TEAM
    }

    /// Where the team's documents start in the bucket: `""` for the default team,
    /// `teams/<name>/` for the others.
    pub fn key_root(&self) -> String {
        if self.is_default() {
            String::new()
        } else {
            format!("teams/{}/", self.0)
        }
    }

    /// `path` (such as `results/<id>.json`) within the team's part of the bucket.
    pub fn key(&self, path: &str) -> String {
        format!("{}{path}", self.key_root())
    }

    /// Whether `key` (a template's S3 key) is the team's own: under its `templates/` or
    /// `submissions/`; for the default team (the pool's own, whose keys are the bucket's root
    /// as before teams), anything outside `teams/`.
    pub fn owns_template_key(&self, key: &str) -> bool {
        if key.split('/').any(|s| s == ".." || s == ".") {
            return false;
        }
        if self.is_default() {
            return !key.starts_with("teams/");
        }
        let root = self.key_root();
        let Some(rest) = key.strip_prefix(&root) else {
            return false;
        };
        (rest.starts_with("templates/") || rest.starts_with("submissions/"))
            && !rest.split('/').any(|s| s == ".." || s == ".")
    }

    /// The team whose part of the bucket `key` is in (`teams/<name>/...`; else the default team).
    pub fn of_key(key: &str) -> Self {
        key.strip_prefix("teams/")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(name, _)| Team::new(name).ok())
            .unwrap_or_else(Team::default_team)
    }

    /// The team a resource's `kiln:team` tag value names (a resource made before teams existed
    /// has none: the default team's).
    pub fn of_tag(value: Option<&str>) -> Self {
        value
            .and_then(|v| Team::new(v).ok())
            .unwrap_or_else(Team::default_team)
    }
}

impl fmt::Display for Team {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Team {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Team::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Which secrets and parameters a team's data sources may name: everything (the default team
/// unless its settings say otherwise) or the names under a prefix.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataScope {
    /// The team (for messages).
    pub team: String,
    /// Secrets Manager names must start with this (`kiln/<team>/`).
    pub secret_prefix: Option<String>,
    /// Parameter Store names must start with this (`/kiln/<team>/`).
    pub parameter_prefix: Option<String>,
}

impl DataScope {
    /// No restriction (`kiln build`, the trigger's own evaluation, the default team).
    pub fn unrestricted() -> Self {
        DataScope::default()
    }

    /// The scope of a team: `kiln/<team>/` for secrets and `/kiln/<team>/` for parameters, or
    /// `prefix` (given for secrets, without the leading `/`; parameters get it with one).
    pub fn of_team(team: &Team, prefix: Option<&str>) -> Self {
        let p = prefix
            .map(|p| p.trim_start_matches('/').to_owned())
            .unwrap_or_else(|| format!("kiln/{}/", team.as_str()));
        DataScope {
            team: team.to_string(),
            parameter_prefix: Some(format!("/{p}")),
            secret_prefix: Some(p),
        }
    }

    /// Checks a secret's name (or ARN: its name part) against the scope.
    pub fn check_secret(&self, name: &str) -> Result<(), TeamError> {
        let bare = name.split_once(":secret:").map(|(_, n)| n).unwrap_or(name);
        check(&self.team, "secret", bare, self.secret_prefix.as_deref())
    }

    /// Checks a parameter's name against the scope (AWS's public `/aws/service/` parameters are
    /// everyone's).
    pub fn check_parameter(&self, name: &str) -> Result<(), TeamError> {
        let bare = name
            .split_once(":parameter")
            .map(|(_, n)| n)
            .unwrap_or(name);
        if bare.starts_with("/aws/service/") {
            return Ok(());
        }
        let bare = if bare.starts_with('/') {
            bare.to_owned()
        } else {
            format!("/{bare}")
        };
        check(
            &self.team,
            "parameter",
            &bare,
            self.parameter_prefix.as_deref(),
        )
    }
}

fn check(
    team: &str,
    what: &'static str,
    name: &str,
    prefix: Option<&str>,
) -> Result<(), TeamError> {
    match prefix {
        Some(p) if !name.starts_with(p) || name.split('/').any(|s| s == "..") => {
            Err(TeamError::OutsidePrefix {
                team: team.to_owned(),
                what,
                name: name.to_owned(),
                prefix: p.to_owned(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roots_and_keys() {
        assert!(Team::new("web-2").is_ok());
        for bad in ["", "Web", "2web", "a/b", "a..", &"a".repeat(32)] {
            assert!(Team::new(bad).is_err(), "{bad}");
        }
        let d = Team::default_team();
        let b = Team::new("b").unwrap();
        assert_eq!(d.key("results/x.json"), "results/x.json");
        assert_eq!(b.key("results/x.json"), "teams/b/results/x.json");
        assert!(b.owns_template_key("teams/b/templates/web/t.json"));
        assert!(!b.owns_template_key("templates/web/t.json"));
        assert!(!b.owns_template_key("teams/b/results/x.json"));
        assert!(!b.owns_template_key("teams/b/templates/../../a/templates/t.json"));
        assert!(d.owns_template_key("templates/t.json"));
        assert!(!d.owns_template_key("teams/b/templates/t.json"));
        assert_eq!(Team::of_tag(None), d);
        assert_eq!(Team::of_key("teams/b/templates/t.json"), b);
        assert_eq!(Team::of_key("templates/t.json"), d);
        assert_eq!(Team::of_tag(Some("b")), b);
    }

    #[test]
    fn data_scopes() {
        let b = DataScope::of_team(&Team::new("b").unwrap(), None);
        assert!(b.check_secret("kiln/b/db").is_ok());
        assert!(
            b.check_secret("arn:aws:secretsmanager:us-east-1:1:secret:kiln/b/db-AbCdEf")
                .is_ok()
        );
        let e = b.check_secret("kiln/a/db").unwrap_err().to_string();
        assert!(e.contains("kiln/b/"), "{e}");
        assert!(b.check_secret("kiln/b/../a/db").is_err());
        assert!(b.check_parameter("/kiln/b/ami").is_ok());
        assert!(b.check_parameter("kiln/b/ami").is_ok());
        assert!(b.check_parameter("/kiln/a/ami").is_err());
        assert!(
            b.check_parameter("/aws/service/debian/release/12/latest/amd64")
                .is_ok()
        );
        assert!(DataScope::unrestricted().check_secret("anything").is_ok());
    }
}
