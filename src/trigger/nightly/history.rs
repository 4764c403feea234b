//! What earlier nightly builds of one bake came to (their results in the team's part of the
//! bucket), and the bucket reads and writes the nightly run makes: the back-off's arithmetic and
//! the attempt ids.

use super::super::{Settings, TriggerError};
use crate::aws::Clients;
use crate::team::Team;
use serde_json::Value;
use time::OffsetDateTime;

/// Nights to wait before the next try after `failures` failed nightly builds of one bake:
/// 1, 2, 4, then 8 (a mirror down for an hour is retried the next night; a template broken for
/// good is tried about weekly, not every night).
pub(super) fn backoff_nights(failures: u32) -> i64 {
    1i64 << failures.saturating_sub(1).min(3)
}

/// The most nightly builds of one bake that are looked up (`<base>`, `<base>-r1`, ...).
const MAX_ATTEMPTS: u32 = 30;

/// What earlier nightly builds of one bake came to.
#[derive(Debug, Default)]
pub(super) struct History {
    /// Failed builds, in order.
    pub(super) failures: u32,
    /// The last failure's end and message.
    pub(super) last: Option<(OffsetDateTime, String)>,
    /// A build of the bake that is running (its id).
    pub(super) running: Option<String>,
}

/// The id of attempt `n` of the nightly build `base`.
pub(super) fn attempt_id(base: &str, n: u32) -> String {
    if n == 0 {
        base.to_owned()
    } else {
        format!("{base}-r{n}")
    }
}

/// Reads the results of `base`'s nightly builds in `team`'s part of the bucket.
pub(super) async fn history(
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
pub(super) async fn read_text(
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
pub(super) async fn write_text(
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
pub(super) async fn read_json(
    clients: &Clients,
    settings: &Settings,
    key: &str,
) -> Result<Option<Value>, TriggerError> {
    Ok(read_text(clients, settings, key)
        .await?
        .and_then(|t| serde_json::from_str(&t).ok()))
}

pub(super) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
