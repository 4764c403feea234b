//! kiln-trigger's settings, from the function's environment: the bucket, the template prefix,
//! and the request queue of each team it serves (the default team's `KILN_QUEUE`, the others'
//! `KILN_TEAM_QUEUES`). A template's team is its key's (`teams/<name>/templates/...`), and its
//! request goes to that team's queue, where only that team's lane of the workers reads it.

use super::{DEFAULT_PREFIX, TriggerError};
use crate::team::Team;
use std::path::PathBuf;

/// The function's settings, from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `KILN_TEAM`: the team `queue` belongs to (default: the default team). A pool's stack runs
    /// one trigger per team, each with its team's queue and only its team's reads.
    pub team: Team,
    /// `KILN_QUEUE`: that team's request queue URL.
    pub queue: String,
    /// `KILN_TEAM_QUEUES`: the other teams' queues (`name=URL,name=URL`).
    pub team_queues: Vec<(Team, String)>,
    /// `KILN_BUCKET`: the artifacts bucket (templates, results, checkpoints, the bake index).
    pub bucket: String,
    /// `KILN_TEMPLATE_PREFIX`: where templates live within each team's part of the bucket
    /// (default `templates/`: the default team's `templates/`, team b's `teams/b/templates/`).
    pub prefix: String,
    /// Scratch space for templates (Lambda's `/tmp`).
    pub work_dir: PathBuf,
}

/// `name=URL,name=URL` (empty: none).
fn parse_team_queues(text: &str) -> Result<Vec<(Team, String)>, TriggerError> {
    let mut out: Vec<(Team, String)> = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = pair.split_once('=').ok_or_else(|| {
            TriggerError::Config(format!(
                "KILN_TEAM_QUEUES: {pair:?} is not name=URL (e.g. web=https://sqs.../kiln-requests-web)"
            ))
        })?;
        let team = Team::new(name.trim())
            .map_err(|e| TriggerError::Config(format!("KILN_TEAM_QUEUES: {e}")))?;
        if team.is_default() || out.iter().any(|(t, _)| *t == team) {
            return Err(TriggerError::Config(format!(
                "KILN_TEAM_QUEUES: team {team} appears twice (the default team's queue is KILN_QUEUE)"
            )));
        }
        out.push((team, url.trim().to_owned()));
    }
    Ok(out)
}

impl Settings {
    /// Reads `KILN_TEAM`, `KILN_QUEUE`, `KILN_TEAM_QUEUES`, `KILN_BUCKET` and
    /// `KILN_TEMPLATE_PREFIX`.
    pub fn from_env() -> Result<Self, TriggerError> {
        let get = |k: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| TriggerError::Config(format!("{k} is not set")))
        };
        let team = match std::env::var("KILN_TEAM") {
            Ok(t) if !t.is_empty() => {
                Team::new(&t).map_err(|e| TriggerError::Config(format!("KILN_TEAM: {e}")))?
            }
            _ => Team::default_team(),
        };
        let team_queues =
            parse_team_queues(&std::env::var("KILN_TEAM_QUEUES").unwrap_or_default())?;
        if team_queues.iter().any(|(t, _)| *t == team) {
            return Err(TriggerError::Config(format!(
                "KILN_TEAM_QUEUES names team {team}, whose queue is KILN_QUEUE"
            )));
        }
        Ok(Settings {
            team,
            queue: get("KILN_QUEUE")?,
            team_queues,
            bucket: get("KILN_BUCKET")?,
            prefix: std::env::var("KILN_TEMPLATE_PREFIX").unwrap_or_else(|_| DEFAULT_PREFIX.into()),
            work_dir: std::env::temp_dir().join("kiln-trigger"),
        })
    }

    /// Every team served, with its queue: `KILN_TEAM`'s first.
    pub fn teams(&self) -> Vec<(Team, &str)> {
        let mut v = vec![(self.team.clone(), self.queue.as_str())];
        v.extend(
            self.team_queues
                .iter()
                .map(|(t, q)| (t.clone(), q.as_str())),
        );
        v
    }

    /// The team whose part of the bucket `key` is in, and its queue; `None` for a team this
    /// trigger has no queue for.
    pub fn team_of(&self, key: &str) -> Option<(Team, &str)> {
        let team = Team::of_key(key);
        self.teams().into_iter().find(|(t, _)| *t == team)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_queues_and_routing() {
        let s = Settings {
            team: Team::default_team(),
            queue: "qa".into(),
            team_queues: parse_team_queues("web=qw, db=qd").unwrap(),
            bucket: "b".into(),
            prefix: DEFAULT_PREFIX.into(),
            work_dir: PathBuf::new(),
        };
        assert_eq!(s.team_of("templates/a.pkr.hcl").map(|(_, q)| q), Some("qa"));
        assert_eq!(
            s.team_of("teams/web/templates/a.pkr.hcl").map(|(_, q)| q),
            Some("qw")
        );
        assert!(s.team_of("teams/other/templates/a.pkr.hcl").is_none());
        let web_only = Settings {
            team: Team::new("web").unwrap(),
            queue: "qw".into(),
            team_queues: Vec::new(),
            ..s.clone()
        };
        assert!(web_only.team_of("templates/a.pkr.hcl").is_none());
        assert_eq!(
            web_only
                .team_of("teams/web/templates/a.pkr.hcl")
                .map(|(_, q)| q),
            Some("qw")
        );
        assert!(parse_team_queues("default=x").is_err());
        assert!(parse_team_queues("web").is_err());
        assert!(parse_team_queues("").unwrap().is_empty());
    }
}
