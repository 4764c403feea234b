//! The worker's lanes: one per team's request queue, holding the team's settings, the AWS
//! clients its builds use (its build role, assumed with a `kiln:team` session tag, so IAM holds
//! the team's boundary even where kiln had a bug) and its running builds; and the fair share that
//! picks which lane fills the next free build slot (smooth weighted round robin over the lanes
//! under their cap), so one team's backlog cannot starve another team's single request.

use super::{WorkerConfig, WorkerError};
use crate::aws::Clients;
use crate::team::{DataScope, Team};
use aws_sdk_sqs::types::QueueAttributeName;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A team's settings in the worker's configuration (`[[teams]]` in its TOML file).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSettings {
    /// The team.
    pub name: Team,
    /// Its request queue URL (for `default`: the top-level `queue`, which it may not differ from).
    #[serde(default)]
    pub queue: Option<String>,
    /// The build role the worker assumes for the team's builds (with the session tag
    /// `kiln:team=<name>`); absent: the worker's own credentials (local runs, the emulator).
    #[serde(default)]
    pub role_arn: Option<String>,
    /// Its share of the build slots against the other teams' (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// The most of its builds at once on this worker (default: all the worker's slots).
    #[serde(default)]
    pub max_concurrent: Option<usize>,
    /// Whether its templates may run commands on the builder or read its files (default: yes for
    /// the default team, no for the others).
    #[serde(default)]
    pub host_features: Option<bool>,
    /// The prefix of the secrets (and, with a leading `/`, parameters) its data sources may
    /// read (default `kiln/<name>/`; the default team: any, unless set).
    #[serde(default)]
    pub secret_prefix: Option<String>,
}

fn one() -> u32 {
    1
}

/// A team's lane in a running worker.
#[derive(Debug)]
pub struct Lane {
    /// The team.
    pub team: Team,
    /// Its request queue.
    pub queue: String,
    /// The build role its builds' clients assume, if any.
    pub role_arn: Option<String>,
    /// The clients its builds (EC2, data sources) use.
    pub clients: Clients,
    /// Its weight in the fair share.
    pub weight: u32,
    /// Its cap on builds at once.
    pub max_concurrent: usize,
    /// Whether host-side features are allowed.
    pub host_features: bool,
    /// What its data sources may name.
    pub data_scope: DataScope,
    /// The queue's `maxReceiveCount` (its redrive policy), if it has a dead-letter queue.
    pub max_receive: Option<u32>,
    /// Its builds running now.
    running: AtomicUsize,
}

impl Lane {
    /// A lane for `settings`, its builds using `clients`.
    pub fn new(
        settings: &TeamSettings,
        queue: String,
        clients: Clients,
        concurrency: usize,
        max_receive: Option<u32>,
    ) -> Self {
        let team = settings.name.clone();
        let data_scope = match (&settings.secret_prefix, team.is_default()) {
            (None, true) => DataScope::unrestricted(),
            (prefix, _) => DataScope::of_team(&team, prefix.as_deref()),
        };
        Lane {
            host_features: settings.host_features.unwrap_or(team.is_default()),
            max_concurrent: settings
                .max_concurrent
                .unwrap_or(concurrency)
                .clamp(1, concurrency.max(1)),
            weight: settings.weight.max(1),
            team,
            queue,
            role_arn: settings.role_arn.clone(),
            clients,
            data_scope,
            max_receive,
            running: AtomicUsize::new(0),
        }
    }

    /// Whether the lane may start another build.
    pub fn has_room(&self) -> bool {
        self.running.load(Ordering::SeqCst) < self.max_concurrent
    }

    /// Its builds running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Counts a build as running until the guard drops.
    pub fn start(self: &std::sync::Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::SeqCst);
        Running(std::sync::Arc::clone(self))
    }
}

/// A running build of a lane (see [`Lane::start`]).
pub struct Running(std::sync::Arc<Lane>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The `maxReceiveCount` of `queue`'s redrive policy, if it has one.
async fn max_receive_of(clients: &Clients, queue: &str) -> Result<Option<u32>, WorkerError> {
    let attrs = clients
        .sqs
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| WorkerError::Queue {
            queue: queue.to_owned(),
            message: format!("{}", aws_sdk_sqs::error::DisplayErrorContext(&e)),
        })?;
    Ok(attrs
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .and_then(|v| {
            v.get("maxReceiveCount").and_then(|m| {
                m.as_u64()
                    .or_else(|| m.as_str().and_then(|s| s.parse().ok()))
            })
        })
        .map(|m| m as u32))
}

/// The session tag naming the builder instance whose worker assumed a team's build role.
pub const TAG_INSTANCE: &str = "kiln:instance";

/// The clients a team's builds use: its build role's (assumed with the session tags
/// `kiln:team=<team>` and `kiln:instance=<this instance>`, refreshed by the SDK before they
/// expire), or the worker's own. The role's trust policy checks the instance tag against the
/// caller's instance, and its attach statements name only that instance.
async fn team_clients(
    clients: &Clients,
    team: &Team,
    role_arn: Option<&str>,
    instance_id: &str,
) -> Clients {
    let Some(role) = role_arn else {
        return clients.clone();
    };
    let provider = aws_config::sts::AssumeRoleProvider::builder(role)
        .session_name(format!("kiln-{team}"))
        .tags([
            (crate::team::TAG_TEAM, team.as_str()),
            (TAG_INSTANCE, instance_id),
        ])
        .configure(clients.config())
        .build()
        .await;
    let config = clients
        .config()
        .to_builder()
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(provider),
        )
        .build();
    Clients::new(&config)
}

/// The worker's lanes: the default team's on `queue` first, then every other team's.
pub(super) async fn lanes_of(
    cfg: &WorkerConfig,
    clients: &Clients,
    concurrency: usize,
    instance_id: &str,
) -> Result<Vec<Arc<Lane>>, WorkerError> {
    let default = cfg
        .teams
        .iter()
        .find(|t| t.name.is_default())
        .cloned()
        .unwrap_or_else(|| TeamSettings {
            name: Team::default_team(),
            queue: None,
            role_arn: None,
            weight: 1,
            max_concurrent: None,
            host_features: None,
            secret_prefix: None,
        });
    if default.queue.as_ref().is_some_and(|q| *q != cfg.queue) {
        return Err(WorkerError::Config(
            "the `default` team's queue is the top-level `queue`: leave `queue` out of its [[teams]] entry".into(),
        ));
    }
    let mut settings = vec![(default, cfg.queue.clone())];
    for t in cfg.teams.iter().filter(|t| !t.name.is_default()) {
        let Some(q) = &t.queue else {
            return Err(WorkerError::Config(format!(
                "team {}: its [[teams]] entry needs its request queue (`queue = \"https://...\"`)",
                t.name
            )));
        };
        if settings
            .iter()
            .any(|(s, queue)| s.name == t.name || queue == q)
        {
            return Err(WorkerError::Config(format!(
                "team {}: each team appears once, with a queue of its own",
                t.name
            )));
        }
        settings.push((t.clone(), q.clone()));
    }
    let mut lanes = Vec::new();
    for (s, queue) in settings {
        let max_receive = max_receive_of(clients, &queue).await?;
        let team_clients = team_clients(clients, &s.name, s.role_arn.as_deref(), instance_id).await;
        lanes.push(Arc::new(Lane::new(
            &s,
            queue,
            team_clients,
            concurrency,
            max_receive,
        )));
    }
    Ok(lanes)
}

/// Smooth weighted round robin (nginx's): each pick adds every eligible lane's weight to its
/// credit, tries lanes in credit order, and takes the total from the lane that gave a build.
/// Weights 1:1 alternate; 2:1 give A, B, A, A, B, A, ...
#[derive(Debug, Default)]
pub struct FairShare {
    credit: Mutex<Vec<i64>>,
}

impl FairShare {
    /// The eligible lanes' total weight.
    fn total(weights: &[u32], eligible: &[bool]) -> i64 {
        eligible
            .iter()
            .zip(weights)
            .filter(|(e, _)| **e)
            .map(|(_, w)| i64::from(*w))
            .sum()
    }

    /// The eligible lanes (`eligible[i]` for lane `i`) in the order to try them.
    pub fn order(&self, weights: &[u32], eligible: &[bool]) -> Vec<usize> {
        let Ok(mut credit) = self.credit.lock() else {
            return (0..weights.len()).filter(|i| eligible[*i]).collect();
        };
        credit.resize(weights.len(), 0);
        let total = Self::total(weights, eligible);
        let mut order: Vec<usize> = (0..weights.len()).filter(|i| eligible[*i]).collect();
        for i in &order {
            // Bounded, so a lane idle for a long time does not bank an unbounded burst.
            credit[*i] = (credit[*i] + i64::from(weights[*i])).min(total);
        }
        order.sort_by_key(|i| (std::cmp::Reverse(credit[*i]), *i));
        order
    }

    /// Records that lane `i` gave a build (among lanes of `total` weight).
    pub fn took(&self, i: usize, weights: &[u32], eligible: &[bool]) {
        let total = Self::total(weights, eligible);
        if let Ok(mut credit) = self.credit.lock()
            && let Some(c) = credit.get_mut(i)
        {
            *c -= total;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(weights: &[u32], idle: &[bool], n: usize) -> Vec<usize> {
        let f = FairShare::default();
        let eligible = vec![true; weights.len()];
        let mut out = Vec::new();
        for _ in 0..n {
            let order = f.order(weights, &eligible);
            // The first lane in order that has work gives the build.
            let i = order.into_iter().find(|i| !idle[*i]).expect("a lane");
            f.took(i, weights, &eligible);
            out.push(i);
        }
        out
    }

    #[test]
    fn equal_weights_alternate_and_weights_share() {
        assert_eq!(picks(&[1, 1], &[false, false], 4), vec![0, 1, 0, 1]);
        let p = picks(&[2, 1], &[false, false], 6);
        assert_eq!(p.iter().filter(|i| **i == 0).count(), 4, "{p:?}");
        // A lane without work does not hold the others up.
        assert_eq!(picks(&[1, 1], &[true, false], 3), vec![1, 1, 1]);
    }
}
