//! `kiln-trigger`: the Lambda function that turns events into build requests on the queue the
//! workers read. A template uploaded under the prefix (an S3 notification, directly or through
//! SQS, or an EventBridge `Object Created` event) is built; a nightly schedule rebuilds each
//! template whose bake key (see [`bake`]) changed since its last succeeded build. Build ids are
//! derived from the event, so a duplicate event names the same build and the worker's duplicate
//! handling answers it. A channel that moves (Parameter Store's change event) rebuilds the
//! templates built on it ([`cascade`]). The requests carry the channels the template's S3
//! metadata names ([`template_channels`]).

pub mod bake;
pub mod cascade;
pub mod events;
mod nightly;
mod settings;
pub mod template_channels;

pub use settings::Settings;

use crate::aws::Clients;
use crate::request::{BuildRequest, REQUEST_VERSION, TemplateLocation};
use events::{Created, Event};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The template prefix when `KILN_TEMPLATE_PREFIX` is unset.
pub const DEFAULT_PREFIX: &str = "templates/";
/// The file names a template has (as `packer build` takes them).
pub const TEMPLATE_SUFFIXES: &[&str] = &[".pkr.hcl", ".pkr.json", ".json"];

/// Errors of the trigger. Every one reaches Lambda as the invocation's error with its message.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// A setting is missing or wrong.
    #[error("kiln-trigger configuration: {0}")]
    Config(String),
    /// The event is not one kiln-trigger handles.
    #[error("{0}")]
    Event(String),
    /// The template cannot be read or does not parse.
    #[error("{0}")]
    Template(String),
    /// The template's source image cannot be resolved.
    #[error("resolving the source image: {0}")]
    Source(String),
    /// An AWS call failed.
    #[error("{what}: {message}")]
    Aws {
        /// What was being done.
        what: String,
        /// The SDK's error.
        message: String,
    },
    /// Local files.
    #[error("{0}")]
    Io(String),
}

impl TriggerError {
    fn aws(what: String, e: &dyn std::error::Error) -> Self {
        let mut message = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            message.push_str(": ");
            message.push_str(&s.to_string());
            src = s.source();
        }
        TriggerError::Aws { what, message }
    }

    /// Whether invoking again could succeed (Lambda's own retries, an SQS redelivery).
    pub fn is_retryable(&self) -> bool {
        matches!(self, TriggerError::Aws { .. } | TriggerError::Io(_))
    }
}

pub use crate::request::index_key;

/// A build-id-safe rendering of a template key.
pub(super) fn slug(key: &str) -> String {
    let s: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let s = s.trim_matches('-');
    s.chars()
        .take(60)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

/// The build id of an uploaded object: the same object (bucket, key and version, or ETag and
/// sequencer when the bucket is unversioned) always names the same build.
pub fn upload_build_id(c: &Created) -> String {
    let identity = match &c.version_id {
        Some(v) => format!("{}\n{}\nversion {v}", c.bucket, c.key),
        None => format!(
            "{}\n{}\netag {}\nsequencer {}",
            c.bucket,
            c.key,
            c.etag.as_deref().unwrap_or(""),
            c.sequencer.as_deref().unwrap_or("")
        ),
    };
    format!(
        "s3-{}-{}",
        slug(&c.key),
        &bake::sha256_hex(identity.as_bytes())[..16]
    )
}

/// Whether `key` is a template under `prefix`; otherwise why not.
pub(super) fn template_key_problem(prefix: &str, key: &str) -> Option<String> {
    if !key.starts_with(prefix) {
        return Some(format!("outside the template prefix {prefix:?}"));
    }
    if !TEMPLATE_SUFFIXES.iter().any(|s| key.ends_with(s)) {
        return Some("not a template (*.json, *.pkr.hcl, *.pkr.json)".into());
    }
    None
}

/// The key that names a template: for one of several `*.pkr.hcl` files in a folder (a directory
/// template) the folder's first such file, so every file of the directory names one template
/// (one index entry, one nightly build); otherwise `key` itself.
pub(super) fn template_name(key: &str, siblings: &[String]) -> String {
    if !key.ends_with(".pkr.hcl") {
        return key.to_owned();
    }
    let folder = key
        .rsplit_once('/')
        .map(|(p, _)| format!("{p}/"))
        .unwrap_or_default();
    siblings
        .iter()
        .filter(|k| {
            k.ends_with(".pkr.hcl")
                && k.strip_prefix(folder.as_str())
                    .is_some_and(|rest| !rest.contains('/'))
        })
        .min()
        .cloned()
        .unwrap_or_else(|| key.to_owned())
}

/// The build ids of one request per build for a template with several `builds` (`<base>-<build>`,
/// in order); `None` for a template with one build (or none known), or when the ids would be too
/// long (the worker then reports the several builds). See `kiln submit`, which does the same.
pub(super) fn per_build_ids(base: &str, builds: &[String]) -> Option<Vec<String>> {
    if builds.len() < 2 {
        return None;
    }
    bake::build_ids(base, builds)
}

/// How long a nightly run may look at templates: until `deadline` less
/// [`nightly::FINISH_MARGIN`], or `KILN_NIGHTLY_BUDGET_S` when that is shorter.
fn budget(deadline: Option<std::time::SystemTime>) -> Option<std::time::Duration> {
    let from_deadline = deadline.map(|d| {
        d.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .saturating_sub(nightly::FINISH_MARGIN)
    });
    let from_env = std::env::var("KILN_NIGHTLY_BUDGET_S")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    match (from_deadline, from_env) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The summary an invocation answers with.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    /// Requests put on the queue.
    pub enqueued: Vec<Value>,
    /// Templates or objects left alone, with the reason.
    pub skipped: Vec<Value>,
    /// What the nightly run's lifecycle rules did to each template's images (and kept), one
    /// entry per image acted on (see `nightly::lifecycle`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lifecycle: Vec<Value>,
}

/// Handles one invocation. Side effects: build requests on the queue; reads of the bucket and
/// of EC2 images. Safe to run twice with the same event (the build ids are the same).
pub async fn handle(
    clients: &Clients,
    settings: &Settings,
    event: Value,
) -> Result<Value, TriggerError> {
    handle_until(clients, settings, event, None).await
}

/// [`handle`] for an invocation that must answer by `deadline` (Lambda's): a nightly run looks at
/// templates until then (less a margin, or `KILN_NIGHTLY_BUDGET_S` if shorter) and leaves the
/// others to the next run.
pub async fn handle_until(
    clients: &Clients,
    settings: &Settings,
    event: Value,
    deadline: Option<std::time::SystemTime>,
) -> Result<Value, TriggerError> {
    match events::parse(event).map_err(TriggerError::Event)? {
        Event::Created(objects) => {
            let mut summary = Summary::default();
            for c in objects {
                uploaded(clients, settings, &c, &mut summary).await?;
            }
            Ok(json!(summary))
        }
        Event::Sqs(messages) => {
            // Partial batch response: only the messages that failed come back.
            let mut failures = Vec::new();
            for (id, objects) in messages {
                let mut summary = Summary::default();
                let outcome = match objects {
                    Ok(objects) => {
                        let mut r = Ok(());
                        for c in objects {
                            if let Err(e) = uploaded(clients, settings, &c, &mut summary).await {
                                r = Err(e.to_string());
                                break;
                            }
                        }
                        r
                    }
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(()) => {
                        tracing::info!(message_id = %id, summary = %json!(summary), "message handled")
                    }
                    Err(e) => {
                        tracing::error!(message_id = %id, error = %e, "message failed; SQS delivers it again");
                        failures.push(json!({"itemIdentifier": id}));
                    }
                }
            }
            Ok(json!({"batchItemFailures": failures}))
        }
        // Boxed: the nightly run's future is deep (every template's bake, history and
        // enqueue), and the function's runtime nests it further.
        Event::Nightly(n) => Box::pin(nightly::run(clients, settings, &n, budget(deadline), None))
            .await
            .map(|s| json!(s)),
        Event::ParameterChanged(c) => {
            Box::pin(cascade::run(clients, settings, &c, budget(deadline)))
                .await
                .map(|s| json!(s))
        }
    }
}

/// One uploaded object: a build request for a template under the prefix; anything else is
/// skipped with its reason.
async fn uploaded(
    clients: &Clients,
    settings: &Settings,
    c: &Created,
    summary: &mut Summary,
) -> Result<(), TriggerError> {
    if c.bucket != settings.bucket {
        let reason = format!(
            "bucket {} is not kiln's bucket {} (workers fetch templates only from the buckets they trust)",
            c.bucket, settings.bucket
        );
        tracing::warn!(bucket = %c.bucket, key = %c.key, "{reason}");
        summary
            .skipped
            .push(json!({"template": format!("s3://{}/{}", c.bucket, c.key), "reason": reason}));
        return Ok(());
    }
    let Some((team, queue)) = settings.team_of(&c.key) else {
        let reason = format!(
            "ignored: team {} has no request queue in this trigger (KILN_TEAM_QUEUES)",
            crate::team::Team::of_key(&c.key)
        );
        tracing::warn!(key = %c.key, "{reason}");
        summary
            .skipped
            .push(json!({"template": c.key, "reason": reason}));
        return Ok(());
    };
    if let Some(reason) = template_key_problem(&team.key(&settings.prefix), &c.key) {
        tracing::info!(key = %c.key, "ignored: {reason}");
        summary
            .skipped
            .push(json!({"template": c.key, "reason": format!("ignored: {reason}")}));
        return Ok(());
    }
    let build_id = upload_build_id(c);
    // One listing of the directory: it names a directory template (by its first *.pkr.hcl
    // file) and gives the files the bake key hashes.
    let listed = bake::list(clients, &c.bucket, &c.key).await;
    let name = match &listed {
        Ok((_, keys)) => template_name(&c.key, keys),
        Err(_) => c.key.clone(),
    };
    let work = settings.work_dir.join(&build_id);
    let mut builds = Vec::new();
    let bake = match &listed {
        Ok(listed) => {
            let b = bake::compute(
                clients,
                &c.bucket,
                &name,
                c.version_id.as_deref().filter(|_| name == c.key),
                &BTreeMap::new(),
                &work,
                listed,
            )
            .await;
            builds = bake::builds(&work, &name, listed.0.as_deref(), &BTreeMap::new());
            b
        }
        Err(TriggerError::Template(e)) => Err(TriggerError::Template(e.clone())),
        Err(e) => return Err(TriggerError::Io(e.to_string())),
    };
    let _ = std::fs::remove_dir_all(&work);
    // A template whose channel metadata is wrong is still built (its result says nothing was
    // published); the summary names the metadata and the fix.
    let channels = match template_channels::of_template(clients, &c.bucket, &name).await {
        Ok(ch) => ch,
        Err(TriggerError::Template(e)) => {
            tracing::warn!(key = %name, "{e}");
            summary
                .skipped
                .push(json!({"template": name, "reason": format!("channels: {e}")}));
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let (bake, reason) = match bake {
        Ok(b) => (Some(b), "uploaded".to_owned()),
        // The worker reports a template that does not parse in its failure result, where the
        // team that uploaded it looks; the trigger still asks for the build.
        Err(TriggerError::Template(e)) | Err(TriggerError::Source(e)) => {
            (None, format!("uploaded (the worker will report: {e})"))
        }
        Err(e) => return Err(e),
    };
    let req = BuildRequest {
        version: REQUEST_VERSION,
        build_id: Some(build_id.clone()),
        template: TemplateLocation {
            root: None,
            bucket: c.bucket.clone(),
            key: name.clone(),
            // The event's version is the named file's only when it is that file.
            version_id: c.version_id.clone().filter(|_| name == c.key),
        },
        variables: BTreeMap::new(),
        only: Vec::new(),
        except: Vec::new(),
        force: false,
        bake,
        backend: None,
        channels: channels.clone(),
    };
    // A template with several builds: one request per build, each with its own id and result.
    let requests: Vec<(BuildRequest, Option<String>)> = match per_build_ids(&build_id, &builds) {
        Some(ids) => ids
            .into_iter()
            .zip(builds.iter())
            .map(|(id, b)| {
                let r = BuildRequest {
                    build_id: Some(id),
                    only: vec![b.clone()],
                    ..req.clone()
                };
                (r, Some(b.clone()))
            })
            .collect(),
        None => vec![(req, None)],
    };
    for (req, build) in requests {
        enqueue(clients, queue, &req).await?;
        summary.enqueued.push(json!({"template": name, "build": build, "team": team.as_str(), "build_id": req.build_id, "reason": reason, "channels": channels}));
    }
    Ok(())
}

/// Sends a build request to a team's queue.
pub(super) async fn enqueue(
    clients: &Clients,
    queue: &str,
    req: &BuildRequest,
) -> Result<(), TriggerError> {
    let body = serde_json::to_string(req).map_err(|e| TriggerError::Io(e.to_string()))?;
    clients
        .sqs
        .send_message()
        .queue_url(queue)
        .message_body(body)
        .send()
        .await
        .map_err(|e| TriggerError::aws(format!("sending to {queue}"), &e))?;
    tracing::info!(build_id = ?req.build_id, template = %req.template.key, "build request enqueued");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(version: Option<&str>, etag: &str, seq: &str) -> Created {
        Created {
            bucket: "b".into(),
            key: "templates/app v1.pkr.hcl".into(),
            version_id: version.map(str::to_owned),
            etag: Some(etag.into()),
            sequencer: Some(seq.into()),
        }
    }

    #[test]
    fn build_ids_name_the_object_version() {
        let a = upload_build_id(&created(Some("v1"), "e", "s"));
        assert_eq!(a, upload_build_id(&created(Some("v1"), "other", "other")));
        assert_ne!(a, upload_build_id(&created(Some("v2"), "e", "s")));
        let u = upload_build_id(&created(None, "e1", "s1"));
        assert_ne!(u, upload_build_id(&created(None, "e1", "s2")));
        assert!(a.starts_with("s3-templates-app-v1-pkr-hcl-"), "{a}");
        assert!(
            crate::request::parse(&format!(
                r#"{{"version": 1, "build_id": "{a}", "template": {{"bucket": "b", "key": "k"}}}}"#
            ))
            .is_ok()
        );
    }

    #[test]
    fn a_directory_template_is_named_by_its_first_file() {
        let keys: Vec<String> = [
            "t/app/sources.pkr.hcl",
            "t/app/build.pkr.hcl",
            "t/app/x.sh",
            "t/app/sub/z.pkr.hcl",
            "t/one.pkr.hcl",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            template_name("t/app/sources.pkr.hcl", &keys),
            "t/app/build.pkr.hcl"
        );
        assert_eq!(
            template_name("t/app/build.pkr.hcl", &keys),
            "t/app/build.pkr.hcl"
        );
        assert_eq!(template_name("t/one.pkr.hcl", &keys), "t/one.pkr.hcl");
        assert_eq!(template_name("t/app/a.json", &keys), "t/app/a.json");
    }

    #[test]
    fn only_templates_under_the_prefix() {
        assert!(template_key_problem("templates/", "templates/a.pkr.hcl").is_none());
        assert!(template_key_problem("templates/", "templates/d/a.json").is_none());
        assert!(template_key_problem("templates/", "other/a.json").is_some());
        assert!(template_key_problem("templates/", "templates/script.sh").is_some());
    }
}
