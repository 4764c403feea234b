//! The nightly run: every template (of every team this trigger serves) whose bake key changed
//! since its last succeeded build is enqueued, saying why. A template whose nightly build failed
//! is tried again under a new build id on a later night, backing off after repeated failures
//! (1, 2, 4, then 8 nights), each failure named in the summary; a template that cannot be
//! evaluated is its own entry in the summary, never the run's end.

pub(super) mod changes;
mod history;
mod lifecycle;
pub mod lifecycle_rule;

use super::cascade::Base;
use super::{
    Settings, Summary, TriggerError, bake, enqueue, index_key, slug, template_channels,
    template_key_problem, template_name,
};
use crate::aws::Clients;
use crate::request::{BuildRequest, REQUEST_VERSION, TemplateLocation};
use crate::team::Team;
use events_nightly::Nightly;
use history::{
    History, attempt_id, backoff_nights, history, read_json, read_text, rfc3339, write_text,
};
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

/// What a run adds up as it goes.
struct Run {
    /// The run's clock.
    now: OffsetDateTime,
    summary: Summary,
    backing_off: u32,
    retries: u32,
    /// The first request that could not be enqueued (the run fails with it, after the others).
    enqueue_error: Option<TriggerError>,
}

/// A nightly run: each template (or those named) whose bake key changed, or all when forced; a
/// failed bake again after its back-off. Errors of one template are its entry in the summary;
/// the run fails (after looking at every template) only when a request could not be enqueued.
///
/// `budget`: how long the run may look at templates (the invocation's deadline less
/// [`FINISH_MARGIN`], or `KILN_NIGHTLY_BUDGET_S`); at least one template is looked at, the others
/// are left to the next run, which starts after the last one looked at (`index/.nightly-cursor`).
///
/// `base`: a cascade (see [`super::cascade`]): only the templates of the base's team whose
/// source is now the base's image, each saying so; the nightly cursor is neither read nor moved.
pub(super) async fn run(
    clients: &Clients,
    settings: &Settings,
    n: &Nightly,
    budget: Option<Duration>,
    base: Option<&Base>,
) -> Result<Summary, TriggerError> {
    let started = std::time::Instant::now();
    let whole = base.is_none() && n.templates.is_empty();
    let templates = match base {
        Some(b) => list_templates(clients, settings, &b.team.key(&settings.prefix)).await?,
        None if whole => {
            let cursor = read_text(clients, settings, &cursor_key(settings)).await?;
            let mut all = Vec::new();
            for (team, _) in settings.teams() {
                all.extend(list_templates(clients, settings, &team.key(&settings.prefix)).await?);
            }
            rotated(all, cursor.as_deref())
        }
        None => n.templates.clone(),
    };
    let mut looked_at: Option<String> = None;
    let mut left = Vec::new();
    let mut run = Run {
        now: now_of(n),
        summary: Summary::default(),
        backing_off: 0,
        retries: 0,
        enqueue_error: None,
    };
    for t in templates {
        if looked_at.is_some() && budget.is_some_and(|b| started.elapsed() >= b) {
            left.push(t);
            continue;
        }
        looked_at = Some(t.clone());
        one_template(clients, settings, n, base, &t, &mut run).await;
        // Lifecycle rules are the nightly run's, not a cascade's (which rebuilds, never removes),
        // and only for the trigger's own team (its role may act on that team's images only).
        if base.is_none()
            && let Some((team, _)) = settings.team_of(&t)
            && team == settings.team
            && template_key_problem(&team.key(&settings.prefix), &t).is_none()
        {
            let entries = lifecycle::apply(clients, settings, &team, &t, run.now).await;
            run.summary.lifecycle.extend(entries);
        }
    }
    if !left.is_empty() {
        tracing::warn!(
            left = left.len(),
            "nightly: the time budget ran out; the next run starts with these templates"
        );
        run.summary.skipped.push(json!({"templates": left, "reason": "not looked at: the run's time budget ran out; the next run starts with them"}));
    }
    if whole
        && let Some(last) = &looked_at
        && let Err(e) = write_text(clients, settings, &cursor_key(settings), last).await
    {
        tracing::error!(error = %e, "nightly: could not note where this run stopped; the next run starts from the first template");
    }
    emit_metrics(run.retries, run.backing_off, run.summary.enqueued.len());
    match run.enqueue_error {
        // Lambda runs the invocation again; what was enqueued names the same builds.
        Some(e) => Err(e),
        None => Ok(run.summary),
    }
}

/// A template the run decided to build: what every one of its requests carries.
struct Chosen<'a> {
    key: &'a str,
    team: Team,
    queue: &'a str,
    bake: crate::request::Bake,
    reason: String,
    channels: Vec<String>,
    /// What the template's last build and its new base changed (the summary's entry).
    report: Value,
}

/// Looks at template `t`: its entry in the summary (skipped with the reason, or one request per
/// build enqueued).
async fn one_template(
    clients: &Clients,
    settings: &Settings,
    n: &Nightly,
    base: Option<&Base>,
    t: &str,
    run: &mut Run,
) {
    let skip = |run: &mut Run, reason: String| {
        run.summary
            .skipped
            .push(json!({"template": t, "reason": reason}));
    };
    let Some((team, queue)) = settings.team_of(t) else {
        return skip(
            run,
            "ignored: its team has no request queue in this trigger (KILN_TEAM_QUEUES)".into(),
        );
    };
    if let Some(reason) = template_key_problem(&team.key(&settings.prefix), t) {
        return skip(run, format!("ignored: {reason}"));
    }
    let (bake, builds, index) = match evaluate(clients, settings, n, t).await {
        Ok(e) => e,
        Err(e) => {
            // This template's problem (it does not parse, its source or a data source cannot
            // be resolved, S3 failed for it): its entry, and the run goes on.
            tracing::warn!(template = %t, error = %e, "nightly: template skipped");
            return skip(run, e.to_string());
        }
    };
    if let Some(b) = base {
        if !bake.source_amis.contains(&b.ami) {
            return skip(run, format!("not built on {}", b.parameter));
        }
        if let Some(why) = b.cycle(t) {
            return skip(run, why);
        }
    }
    let report = report(clients, settings, &team, &bake, index.as_ref(), base).await;
    let reason = match reason_for(&bake, index.as_ref(), n.force, base, &report) {
        Ok(r) => r,
        Err(unchanged) => {
            let mut entry = json!({"template": t, "reason": unchanged});
            merge(&mut entry, &report);
            run.summary.skipped.push(entry);
            return;
        }
    };
    let channels = match template_channels::of_template(clients, &settings.bucket, t).await {
        Ok(c) => c,
        Err(e) => return skip(run, e.to_string()),
    };
    let id_base = format!("nightly-{}-{}", slug(t), &bake.key[..16]);
    let chosen = Chosen {
        key: t,
        team,
        queue,
        bake,
        reason,
        channels,
        report,
    };
    // One build per request: a template with several builds is several nightly builds, each
    // with its own id (`<base>-<build>`), history and retries.
    let targets: Vec<(String, Vec<String>)> = match super::per_build_ids(&id_base, &builds) {
        Some(ids) => ids
            .into_iter()
            .zip(builds.iter())
            .map(|(id, b)| (id, vec![b.clone()]))
            .collect(),
        None => vec![(id_base, Vec::new())],
    };
    for (id_base, only) in targets {
        one_build(clients, settings, n, &chosen, &id_base, only, run).await;
    }
}

/// Template `t`'s bake key now, its builds' names, and its index entry.
async fn evaluate(
    clients: &Clients,
    settings: &Settings,
    n: &Nightly,
    t: &str,
) -> Result<(crate::request::Bake, Vec<String>, Option<Value>), TriggerError> {
    let work = settings.work_dir.join(slug(t));
    let mut builds = Vec::new();
    let bake = match bake::list(clients, &settings.bucket, t).await {
        Ok(listed) => {
            let b = bake::compute(
                clients,
                &settings.bucket,
                t,
                None,
                &n.variables,
                &work,
                &listed,
            )
            .await;
            builds = bake::builds(&work, t, listed.0.as_deref(), &n.variables);
            b
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&work);
    let bake = bake?;
    let index = read_index(clients, settings, t).await?;
    Ok((bake, builds, index))
}

/// One build of a chosen template: enqueued under the attempt's id, unless it is running or
/// backing off after failures.
async fn one_build(
    clients: &Clients,
    settings: &Settings,
    n: &Nightly,
    c: &Chosen<'_>,
    id_base: &str,
    only: Vec<String>,
    run: &mut Run,
) {
    let t = c.key;
    let label = only.first().cloned();
    let past = if n.force {
        History::default()
    } else {
        match history(clients, settings, &c.team, id_base).await {
            Ok(h) => h,
            Err(e) => {
                run.summary
                    .skipped
                    .push(json!({"template": t, "build": label, "reason": e.to_string()}));
                return;
            }
        }
    };
    if let Some(id) = &past.running {
        run.summary.skipped.push(
            json!({"template": t, "build": label, "reason": format!("build {id} is running")}),
        );
        return;
    }
    let mut reason = c.reason.clone();
    if let Some((at, why)) = &past.last {
        let next = *at + time::Duration::days(backoff_nights(past.failures));
        // A night's schedule fires at about the same time: an hour's slack.
        if run.now + time::Duration::hours(1) < next {
            run.backing_off += 1;
            run.summary.skipped.push(json!({"template": t, "build": label, "failures": past.failures, "reason": format!(
                "backing off after {} failed build(s) (the last on {}: {why}); next try after {}",
                past.failures, rfc3339(*at), rfc3339(next)
            )}));
            return;
        }
        run.retries += 1;
        reason = format!(
            "retry {} after a failure on {}: {why}",
            past.failures,
            rfc3339(*at)
        );
    }
    let build_id = attempt_id(id_base, past.failures);
    let req = BuildRequest {
        version: REQUEST_VERSION,
        build_id: Some(build_id.clone()),
        template: TemplateLocation {
            root: None,
            bucket: settings.bucket.clone(),
            key: t.to_owned(),
            version_id: None,
        },
        variables: n.variables.clone(),
        only,
        except: Vec::new(),
        force: n.force,
        bake: Some(c.bake.clone()),
        backend: None,
        channels: c.channels.clone(),
    };
    if let Err(e) = enqueue(clients, c.queue, &req).await {
        tracing::error!(template = %t, error = %e, "nightly: could not enqueue");
        run.summary
            .skipped
            .push(json!({"template": t, "build": label, "reason": e.to_string()}));
        run.enqueue_error.get_or_insert(e);
        return;
    }
    let mut entry = json!({"template": t, "build": label, "team": c.team.as_str(), "build_id": build_id, "reason": reason, "channels": c.channels});
    merge(&mut entry, &c.report);
    run.summary.enqueued.push(entry);
}

/// Why a template with bake `bake` is built (its last build's `index` entry; `force`d; rebuilt on
/// `base`; the base's changes in `report`), or why not (`Err`: unchanged since its last build).
/// Pure.
fn reason_for(
    bake: &crate::request::Bake,
    index: Option<&Value>,
    force: bool,
    base: Option<&Base>,
    report: &Value,
) -> Result<String, String> {
    let reason = match (why_rebuild(bake, index), force) {
        (Some(r), _) => r,
        (None, true) => "forced".to_owned(),
        (None, false) => {
            let i = index.cloned().unwrap_or_default();
            return Err(format!(
                "unchanged since build {} on {}",
                i["build_id"].as_str().unwrap_or("?"),
                i["finished_at"].as_str().unwrap_or("?")
            ));
        }
    };
    Ok(match (base, report["base_changes"].as_array()) {
        (Some(b), _) => format!("{}: {reason}", b.reason()),
        (None, Some(lines)) => {
            let lines: Vec<String> = lines
                .iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect();
            format!("{reason}{}", changes::in_reason(&lines))
        }
        (None, None) => reason,
    })
}

/// What a template's summary entry says of changes: `last_build` (its last succeeded build and
/// the package changes it made) and, when its source image moved to one a nightly build of the
/// team made, `base_changes` (what that build changed). Side effects: reads of the results and
/// one DescribeImages; what cannot be read is left out.
async fn report(
    clients: &Clients,
    settings: &Settings,
    team: &Team,
    bake: &crate::request::Bake,
    index: Option<&Value>,
    base: Option<&Base>,
) -> Value {
    let mut out = json!({});
    if let Some(id) = index.and_then(|i| i["build_id"].as_str()) {
        let lines = changes::of_build(clients, settings, team, id, None).await;
        out["last_build"] = json!({"build_id": id, "changes": lines});
    }
    let moved = index.is_some_and(|i| i["bake"]["source_amis"] != json!(bake.source_amis));
    let brought = match base {
        Some(b) => b.brought.clone(),
        None if moved => match bake.source_amis.first() {
            Some(ami) => brought_by(clients, settings, team, ami).await,
            None => None,
        },
        None => None,
    };
    if let Some(lines) = brought {
        out["base_changes"] = json!(lines);
    }
    out
}

/// What image `ami` (in the trigger's region) brought, when a nightly build of `team` made it.
async fn brought_by(
    clients: &Clients,
    settings: &Settings,
    team: &Team,
    ami: &str,
) -> Option<Vec<String>> {
    let region = clients.region();
    let image = crate::ec2::images::describe(&clients.ec2, region, ami)
        .await
        .ok()??;
    let build_id = crate::ec2::lineage::tag(image.tags(), crate::ec2::TAG_BUILD_ID)?;
    changes::of_build(clients, settings, team, build_id, Some(ami)).await
}

/// `extra`'s fields added to `entry` (both objects).
fn merge(entry: &mut Value, extra: &Value) {
    if let (Some(e), Some(x)) = (entry.as_object_mut(), extra.as_object()) {
        e.extend(x.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
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
