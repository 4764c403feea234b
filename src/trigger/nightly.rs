//! The nightly run: every template (of every team this trigger serves) whose bake key changed
//! since its last succeeded build is enqueued, saying why. A template whose nightly build failed
//! is tried again under a new build id on a later night, backing off after repeated failures
//! (1, 2, 4, then 8 nights), each failure named in the summary; a template that cannot be
//! evaluated is its own entry in the summary, never the run's end.

use super::{
    Settings, Summary, TriggerError, bake, enqueue, index_key, slug, template_key_problem,
    template_name,
};
use crate::aws::Clients;
use crate::request::{BuildRequest, REQUEST_VERSION, TemplateLocation};
use crate::team::Team;
use events_nightly::Nightly;
use serde_json::{Value, json};
use std::time::Duration;
use time::OffsetDateTime;

use super::events as events_nightly;

/// The templates under `prefix` (a team's template prefix).
async fn list_templates(
    clients: &Clients,
    settings: &Settings,
    prefix: &str,
) -> Result<Vec<String>, TriggerError> {
    let mut pages = clients
        .s3
        .list_objects_v2()
        .bucket(&settings.bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            TriggerError::aws(format!("listing s3://{}/{prefix}", settings.bucket), &e)
        })?;
        out.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key())
                .filter(|k| template_key_problem(prefix, k).is_none())
                .map(str::to_owned),
        );
    }
    // One name per directory template.
    let mut names: Vec<String> = out.iter().map(|k| template_name(k, &out)).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The index entry of a template's last succeeded build (written by the worker).
async fn read_index(
    clients: &Clients,
    settings: &Settings,
    template: &str,
) -> Result<Option<Value>, TriggerError> {
    let key = index_key(&crate::team::Team::of_key(template), template);
    read_json(clients, settings, &key).await
}

/// Why a template with bake `now` is rebuilt, compared with its last build's `index` entry; `None`
/// when nothing changed.
fn why_rebuild(now: &crate::request::Bake, index: Option<&Value>) -> Option<String> {
    let Some(index) = index else {
        return Some("never built by kiln-trigger".into());
    };
    let old = |k: &str| index["bake"][k].clone();
    if old("key") == json!(now.key) {
        return None;
    }
    if old("source_amis") != json!(now.source_amis) {
        let before: Vec<String> = serde_json::from_value(old("source_amis")).unwrap_or_default();
        return Some(format!(
            "source AMI {} → {}",
            before.join(","),
            now.source_amis.join(",")
        ));
    }
    if old("template_hash") != json!(now.template_hash) {
        return Some("template changed".into());
    }
    if old("variables_hash") != json!(now.variables_hash) {
        return Some("variables changed".into());
    }
    Some(format!(
        "kiln version {} → {}",
        old("kiln_version").as_str().unwrap_or("?"),
        now.kiln_version
    ))
}

/// Nights to wait before the next try after `failures` failed nightly builds of one bake:
/// 1, 2, 4, then 8 (a mirror down for an hour is retried the next night; a template broken for
/// good is tried about weekly, not every night).
fn backoff_nights(failures: u32) -> i64 {
    1i64 << failures.saturating_sub(1).min(3)
}

/// The most nightly builds of one bake that are looked up (`<base>`, `<base>-r1`, ...).
const MAX_ATTEMPTS: u32 = 30;

/// What earlier nightly builds of one bake came to.
#[derive(Debug, Default)]
struct History {
    /// Failed builds, in order.
    failures: u32,
    /// The last failure's end and message.
    last: Option<(OffsetDateTime, String)>,
    /// A build of the bake that is running (its id).
    running: Option<String>,
}

/// The id of attempt `n` of the nightly build `base`.
fn attempt_id(base: &str, n: u32) -> String {
    if n == 0 {
        base.to_owned()
    } else {
        format!("{base}-r{n}")
    }
}

/// Reads the results of `base`'s nightly builds in `team`'s part of the bucket.
async fn history(
    clients: &Clients,
    settings: &Settings,
    team: &Team,
    base: &str,
) -> Result<History, TriggerError> {
    let mut h = History::default();
    for n in 0..MAX_ATTEMPTS {
        let id = attempt_id(base, n);
        let key = team.key(&format!("results/{id}.json"));
        let Some(doc) = read_json(clients, settings, &key).await? else {
            break;
        };
        match doc["status"].as_str() {
            Some("failed") => {
                h.failures += 1;
                let at = doc["finished_at"]
                    .as_str()
                    .and_then(|t| {
                        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                let why = doc["error"]["message"].as_str().unwrap_or("failed");
                let why: String = why.lines().next().unwrap_or("").chars().take(200).collect();
                h.last = Some((at, why));
            }
            Some("running") => {
                h.running = Some(id);
                break;
            }
            _ => break,
        }
    }
    Ok(h)
}

/// An object of the bucket as text; `None` when it does not exist.
async fn read_text(
    clients: &Clients,
    settings: &Settings,
    key: &str,
) -> Result<Option<String>, TriggerError> {
    match clients
        .s3
        .get_object()
        .bucket(&settings.bucket)
        .key(key)
        .send()
        .await
    {
        Ok(o) => {
            let bytes = o
                .body
                .collect()
                .await
                .map_err(|e| {
                    TriggerError::Io(format!("reading s3://{}/{key}: {e}", settings.bucket))
                })?
                .into_bytes();
            Ok(Some(String::from_utf8_lossy(&bytes).trim().to_owned()))
        }
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
        Err(e) => Err(TriggerError::aws(
            format!("reading s3://{}/{key}", settings.bucket),
            &e,
        )),
    }
}

/// Writes `text` to `key` in the bucket.
async fn write_text(
    clients: &Clients,
    settings: &Settings,
    key: &str,
    text: &str,
) -> Result<(), TriggerError> {
    clients
        .s3
        .put_object()
        .bucket(&settings.bucket)
        .key(key)
        .body(text.as_bytes().to_vec().into())
        .send()
        .await
        .map(|_| ())
        .map_err(|e| TriggerError::aws(format!("writing s3://{}/{key}", settings.bucket), &e))
}

/// An object of the bucket as JSON; `None` when it does not exist or is not JSON.
async fn read_json(
    clients: &Clients,
    settings: &Settings,
    key: &str,
) -> Result<Option<Value>, TriggerError> {
    Ok(read_text(clients, settings, key)
        .await?
        .and_then(|t| serde_json::from_str(&t).ok()))
}

/// What a nightly run leaves for the function's end: a minute, enough to write the cursor and
/// answer before Lambda's timeout.
pub const FINISH_MARGIN: Duration = Duration::from_secs(60);

/// Where a nightly run notes the last template it looked at (in the trigger's team's part of the
/// bucket): the next run starts after it, so a run cut short by its time budget continues where
/// it stopped and no template starves for being late in the alphabet.
fn cursor_key(settings: &Settings) -> String {
    settings.team.key("index/.nightly-cursor")
}

/// `templates` (sorted) starting after `cursor`, wrapping around.
fn rotated(mut templates: Vec<String>, cursor: Option<&str>) -> Vec<String> {
    templates.sort();
    templates.dedup();
    let start = cursor
        .map(|c| templates.iter().position(|t| t.as_str() > c).unwrap_or(0))
        .unwrap_or(0);
    templates.rotate_left(start);
    templates
}

/// The run's clock: the scheduled event's time, else now.
fn now_of(n: &Nightly) -> OffsetDateTime {
    n.time
        .as_deref()
        .and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(OffsetDateTime::now_utc)
}

/// A nightly run: each template (or those named) whose bake key changed, or all when forced; a
/// failed bake again after its back-off. Errors of one template are its entry in the summary;
/// the run fails (after looking at every template) only when a request could not be enqueued.
///
/// `budget`: how long the run may look at templates (the invocation's deadline less
/// [`FINISH_MARGIN`], or `KILN_NIGHTLY_BUDGET_S`); at least one template is looked at, the others
/// are left to the next run, which starts after the last one looked at (`index/.nightly-cursor`).
pub(super) async fn run(
    clients: &Clients,
    settings: &Settings,
    n: &Nightly,
    budget: Option<Duration>,
) -> Result<Summary, TriggerError> {
    let started = std::time::Instant::now();
    let cursor = read_text(clients, settings, &cursor_key(settings)).await?;
    let templates = if n.templates.is_empty() {
        let mut all = Vec::new();
        for (team, _) in settings.teams() {
            all.extend(list_templates(clients, settings, &team.key(&settings.prefix)).await?);
        }
        rotated(all, cursor.as_deref())
    } else {
        n.templates.clone()
    };
    let mut looked_at: Option<String> = None;
    let mut left = Vec::new();
    let now = now_of(n);
    let mut summary = Summary::default();
    let mut backing_off = 0u32;
    let mut retries = 0u32;
    let mut enqueue_error = None;
    for t in templates {
        if looked_at.is_some() && budget.is_some_and(|b| started.elapsed() >= b) {
            left.push(t);
            continue;
        }
        looked_at = Some(t.clone());
        let Some((team, queue)) = settings.team_of(&t) else {
            summary.skipped.push(json!({"template": t, "reason": "ignored: its team has no request queue in this trigger (KILN_TEAM_QUEUES)"}));
            continue;
        };
        if let Some(reason) = template_key_problem(&team.key(&settings.prefix), &t) {
            summary
                .skipped
                .push(json!({"template": t, "reason": format!("ignored: {reason}")}));
            continue;
        }
        let work = settings.work_dir.join(slug(&t));
        let mut builds = Vec::new();
        let bake = match bake::list(clients, &settings.bucket, &t).await {
            Ok(listed) => {
                let b = bake::compute(
                    clients,
                    &settings.bucket,
                    &t,
                    None,
                    &n.variables,
                    &work,
                    &listed,
                )
                .await;
                builds = bake::builds(&work, &t, listed.0.as_deref(), &n.variables);
                b
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&work);
        let bake = match bake {
            Ok(b) => b,
            Err(e) => {
                // This template's problem (it does not parse, its source or a data source cannot
                // be resolved, S3 failed for it): its entry, and the run goes on.
                tracing::warn!(template = %t, error = %e, "nightly: template skipped");
                summary
                    .skipped
                    .push(json!({"template": t, "reason": e.to_string()}));
                continue;
            }
        };
        let index = match read_index(clients, settings, &t).await {
            Ok(i) => i,
            Err(e) => {
                summary
                    .skipped
                    .push(json!({"template": t, "reason": e.to_string()}));
                continue;
            }
        };
        let changed = why_rebuild(&bake, index.as_ref());
        let reason = match (changed, n.force) {
            (Some(r), _) => r,
            (None, true) => "forced".to_owned(),
            (None, false) => {
                let i = index.unwrap_or_default();
                summary
                    .skipped
                    .push(json!({"template": t, "reason": format!(
                        "unchanged since build {} on {}",
                        i["build_id"].as_str().unwrap_or("?"),
                        i["finished_at"].as_str().unwrap_or("?")
                    )}));
                continue;
            }
        };
        let base = format!("nightly-{}-{}", slug(&t), &bake.key[..16]);
        // One build per request: a template with several builds is several nightly builds, each
        // with its own id (`<base>-<build>`), history and retries.
        let targets: Vec<(String, Vec<String>)> = match super::per_build_ids(&base, &builds) {
            Some(ids) => ids
                .into_iter()
                .zip(builds.iter())
                .map(|(id, b)| (id, vec![b.clone()]))
                .collect(),
            None => vec![(base.clone(), Vec::new())],
        };
        for (base, only) in targets {
            let label = only.first().cloned();
            let past = if n.force {
                History::default()
            } else {
                match history(clients, settings, &team, &base).await {
                    Ok(h) => h,
                    Err(e) => {
                        summary
                            .skipped
                            .push(json!({"template": t, "build": label, "reason": e.to_string()}));
                        continue;
                    }
                }
            };
            if let Some(id) = &past.running {
                summary.skipped.push(
                    json!({"template": t, "build": label, "reason": format!("build {id} is running")}),
                );
                continue;
            }
            let mut reason = reason.clone();
            if let Some((at, why)) = &past.last {
                let next = *at + time::Duration::days(backoff_nights(past.failures));
                // A night's schedule fires at about the same time: an hour's slack.
                if now + time::Duration::hours(1) < next {
                    backing_off += 1;
                    summary.skipped.push(json!({"template": t, "build": label, "failures": past.failures, "reason": format!(
                        "backing off after {} failed build(s) (the last on {}: {why}); next try after {}",
                        past.failures, rfc3339(*at), rfc3339(next)
                    )}));
                    continue;
                }
                retries += 1;
                reason = format!(
                    "retry {} after a failure on {}: {why}",
                    past.failures,
                    rfc3339(*at)
                );
            }
            let build_id = attempt_id(&base, past.failures);
            let req = BuildRequest {
                version: REQUEST_VERSION,
                build_id: Some(build_id.clone()),
                template: TemplateLocation {
                    root: None,
                    bucket: settings.bucket.clone(),
                    key: t.clone(),
                    version_id: None,
                },
                variables: n.variables.clone(),
                only,
                except: Vec::new(),
                force: n.force,
                bake: Some(bake.clone()),
                backend: None,
                channels: Vec::new(),
            };
            if let Err(e) = enqueue(clients, queue, &req).await {
                tracing::error!(template = %t, error = %e, "nightly: could not enqueue");
                summary
                    .skipped
                    .push(json!({"template": t, "build": label, "reason": e.to_string()}));
                enqueue_error.get_or_insert(e);
                continue;
            }
            summary.enqueued.push(json!({"template": t, "build": label, "team": team.as_str(), "build_id": build_id, "reason": reason}));
        }
    }
    if !left.is_empty() {
        tracing::warn!(
            left = left.len(),
            "nightly: the time budget ran out; the next run starts with these templates"
        );
        summary.skipped.push(json!({"templates": left, "reason": "not looked at: the run's time budget ran out; the next run starts with them"}));
    }
    if n.templates.is_empty()
        && let Some(last) = &looked_at
        && let Err(e) = write_text(clients, settings, &cursor_key(settings), last).await
    {
        tracing::error!(error = %e, "nightly: could not note where this run stopped; the next run starts from the first template");
    }
    emit_metrics(retries, backing_off, summary.enqueued.len());
    match enqueue_error {
        // Lambda runs the invocation again; what was enqueued names the same builds.
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The run's figures in CloudWatch embedded metric format (namespace `kiln`): the function's log
/// becomes metrics `NightlyEnqueued`, `NightlyRetries` and `NightlyBackingOff`, which an alarm
/// can watch (a template failing night after night).
fn emit_metrics(retries: u32, backing_off: u32, enqueued: usize) {
    let ts = OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let doc = json!({
        "_aws": {"Timestamp": ts, "CloudWatchMetrics": [{"Namespace": "kiln", "Dimensions": [[]], "Metrics": [
            {"Name": "NightlyEnqueued", "Unit": "Count"},
            {"Name": "NightlyRetries", "Unit": "Count"},
            {"Name": "NightlyBackingOff", "Unit": "Count"}
        ]}]},
        "NightlyEnqueued": enqueued,
        "NightlyRetries": retries,
        "NightlyBackingOff": backing_off,
    });
    println!("{doc}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_starts_after_the_last_template_looked_at() {
        let t = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(rotated(t(&["c", "a", "b"]), None), t(&["a", "b", "c"]));
        assert_eq!(rotated(t(&["c", "a", "b"]), Some("a")), t(&["b", "c", "a"]));
        assert_eq!(rotated(t(&["c", "a", "b"]), Some("c")), t(&["a", "b", "c"]));
        assert_eq!(rotated(t(&["c", "a"]), Some("b")), t(&["c", "a"]));
    }

    #[test]
    fn back_off_doubles_to_a_week() {
        let nights: Vec<i64> = (1..=6).map(backoff_nights).collect();
        assert_eq!(nights, vec![1, 2, 4, 8, 8, 8]);
        assert_eq!(attempt_id("b", 0), "b");
        assert_eq!(attempt_id("b", 2), "b-r2");
    }
}
