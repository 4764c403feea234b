//! The events `kiln-trigger` is invoked with, recognised by their shape: S3 `ObjectCreated:*`
//! notifications (directly, or wrapped in SQS messages), EventBridge `Object Created` events,
//! EventBridge `Scheduled Event`s, and the constant input a schedule rule may carry instead;
//! and Parameter Store's `Parameter Store Change` events, which say a channel moved (a base
//! image's new build: its dependents are rebuilt, see `trigger::cascade`).

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::SqsEvent;
use serde::Deserialize;
use serde_json::Value;

/// One object created in S3, as every kind of notification names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The bucket.
    pub bucket: String,
    /// The key, URL-decoded (S3 notifications encode it: `+` for space, `%2F`).
    pub key: String,
    /// The object version (versioned buckets).
    pub version_id: Option<String>,
    /// The object's ETag.
    pub etag: Option<String>,
    /// S3's sequencer, which orders events of one key.
    pub sequencer: Option<String>,
}

/// What a nightly rebuild covers: a schedule's constant input (all fields optional).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Nightly {
    /// Template keys to consider; every template under the prefix when empty.
    #[serde(default)]
    pub templates: Vec<String>,
    /// Enqueue even when a template's bake key did not change.
    #[serde(default)]
    pub force: bool,
    /// Template variables for the builds (part of the bake key).
    #[serde(default)]
    pub variables: std::collections::BTreeMap<String, String>,
    /// The run's time (RFC 3339; a Scheduled Event's `time`), which back-offs count from; now
    /// when absent.
    #[serde(default)]
    pub time: Option<String>,
}

/// An invocation's event.
#[derive(Debug)]
pub enum Event {
    /// Objects created (an S3 notification or an EventBridge `Object Created` event).
    Created(Vec<Created>),
    /// An SQS batch: each message with its id and what it holds (or why it could not be read).
    Sqs(Vec<(String, Result<Vec<Created>, String>)>),
    /// A nightly rebuild.
    Nightly(Nightly),
    /// A Parameter Store parameter changed (possibly a channel).
    ParameterChanged(ParameterChange),
}

/// A `Parameter Store Change` event's detail, as EventBridge delivers it from SSM.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ParameterChange {
    /// The parameter's name (`/kiln/<team>/<template>/<channel>` for a channel).
    pub name: String,
    /// `Create`, `Update`, `Delete`, `LabelParameterVersion`.
    pub operation: String,
    /// The event's region (where the parameter is); the trigger's when absent.
    #[serde(skip)]
    pub region: Option<String>,
}

/// Decodes an S3 notification key: `+` is a space, `%XX` a byte.
pub fn decode_key(key: &str) -> String {
    let plus = key.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8_lossy()
        .into_owned()
}

fn from_s3_event(e: S3Event) -> Vec<Created> {
    e.records
        .into_iter()
        .filter(|r| {
            r.event_name
                .as_deref()
                .is_none_or(|n| n.starts_with("ObjectCreated:"))
        })
        .filter_map(|r| {
            Some(Created {
                bucket: r.s3.bucket.name?,
                key: decode_key(&r.s3.object.key?),
                version_id: r.s3.object.version_id.filter(|v| !v.is_empty()),
                etag: r.s3.object.e_tag.filter(|v| !v.is_empty()),
                sequencer: r.s3.object.sequencer.filter(|v| !v.is_empty()),
            })
        })
        .collect()
}

/// The `detail` of EventBridge's S3 `Object Created` event.
#[derive(Debug, Deserialize)]
struct ObjectCreatedDetail {
    bucket: NameOnly,
    object: ObjectDetail,
}

#[derive(Debug, Deserialize)]
struct NameOnly {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ObjectDetail {
    key: String,
    #[serde(rename = "version-id", default)]
    version_id: Option<String>,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    sequencer: Option<String>,
}

fn is_s3_notification(v: &Value) -> bool {
    v.get("Records")
        .and_then(Value::as_array)
        .and_then(|r| r.first())
        .and_then(|r| r.get("eventSource"))
        .and_then(Value::as_str)
        == Some("aws:s3")
}

/// The objects an SQS message body names: an S3 notification (S3 → SQS), or an EventBridge
/// `Object Created` event (EventBridge → SQS). S3's `s3:TestEvent` holds none.
fn from_sqs_body(body: &str) -> Result<Vec<Created>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    if v.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    match parse(v)? {
        Event::Created(c) => Ok(c),
        _ => Err("the body is not an S3 notification or an Object Created event".into()),
    }
}

/// Recognises `event` by its shape. An unknown shape is an error naming what was expected.
pub fn parse(event: Value) -> Result<Event, String> {
    if is_s3_notification(&event) {
        let e: S3Event = serde_json::from_value(event)
            .map_err(|e| format!("an S3 notification that cannot be read: {e}"))?;
        return Ok(Event::Created(from_s3_event(e)));
    }
    let first_source = event
        .get("Records")
        .and_then(Value::as_array)
        .and_then(|r| r.first())
        .and_then(|r| r.get("eventSource"))
        .and_then(Value::as_str);
    if first_source == Some("aws:sqs") {
        let e: SqsEvent = serde_json::from_value(event)
            .map_err(|e| format!("an SQS event that cannot be read: {e}"))?;
        let out = e
            .records
            .into_iter()
            .map(|m| {
                let id = m.message_id.unwrap_or_default();
                let objects = match m.body {
                    Some(b) => from_sqs_body(&b),
                    None => Err("the message has no body".into()),
                };
                (id, objects)
            })
            .collect();
        return Ok(Event::Sqs(out));
    }
    if event.get("detail-type").is_some() && event.get("source").is_some() {
        let e: EventBridgeEvent<Value> = serde_json::from_value(event)
            .map_err(|e| format!("an EventBridge event that cannot be read: {e}"))?;
        return match (e.source.as_str(), e.detail_type.as_str()) {
            ("aws.s3", "Object Created") => {
                let d: ObjectCreatedDetail = serde_json::from_value(e.detail)
                    .map_err(|err| format!("an Object Created event without {err}"))?;
                Ok(Event::Created(vec![Created {
                    bucket: d.bucket.name,
                    key: d.object.key,
                    version_id: d.object.version_id.filter(|v| !v.is_empty()),
                    etag: d.object.etag.filter(|v| !v.is_empty()),
                    sequencer: d.object.sequencer.filter(|v| !v.is_empty()),
                }]))
            }
            (_, "Scheduled Event") => Ok(Event::Nightly(Nightly {
                time: e.time.map(|t| t.to_rfc3339()),
                ..Nightly::default()
            })),
            ("aws.ssm", "Parameter Store Change") => {
                let mut d: ParameterChange = serde_json::from_value(e.detail)
                    .map_err(|err| format!("a Parameter Store Change event without {err}"))?;
                d.region = e.region.filter(|r| !r.is_empty());
                Ok(Event::ParameterChanged(d))
            }
            (source, kind) => Err(format!(
                "an EventBridge event kiln-trigger does not handle: source {source:?}, detail-type {kind:?} (it handles S3 Object Created, Scheduled Event and Parameter Store Change)"
            )),
        };
    }
    if let Some(n) = event.get("nightly") {
        let n: Nightly = serde_json::from_value(n.clone())
            .map_err(|e| format!("the schedule's constant input `nightly` is not valid: {e}"))?;
        return Ok(Event::Nightly(n));
    }
    let shape = match &event {
        Value::Object(m) => format!(
            "an object with keys {:?}",
            m.keys().take(8).collect::<Vec<_>>()
        ),
        other => format!("{other}").chars().take(80).collect(),
    };
    Err(format!(
        "unknown event shape ({shape}): kiln-trigger handles S3 ObjectCreated notifications (direct or through SQS), EventBridge Object Created and Scheduled Event events, and a schedule's constant input {{\"nightly\": {{...}}}}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_url_decoded() {
        assert_eq!(
            decode_key("templates/my+app%2Fv1.pkr.hcl"),
            "templates/my app/v1.pkr.hcl"
        );
        assert_eq!(decode_key("a%2Bb.json"), "a+b.json");
    }

    #[test]
    fn unknown_shapes_are_named() {
        let e = parse(serde_json::json!({"hello": 1})).unwrap_err();
        assert!(
            e.contains("unknown event shape") && e.contains("hello"),
            "{e}"
        );
        let e = parse(serde_json::json!({"nightly": {"colour": 1}})).unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn parameter_store_changes_are_read() {
        let event = serde_json::json!({
            "version": "0", "id": "1", "detail-type": "Parameter Store Change",
            "source": "aws.ssm", "account": "123456789012", "time": "2026-12-02T02:10:00Z",
            "region": "eu-west-1", "resources": [],
            "detail": {"operation": "Update", "name": "/kiln/web/base/dev", "type": "String", "description": ""}
        });
        match parse(event) {
            Ok(Event::ParameterChanged(c)) => {
                assert_eq!(c.name, "/kiln/web/base/dev");
                assert_eq!(c.operation, "Update");
                assert_eq!(c.region.as_deref(), Some("eu-west-1"));
            }
            other => panic!("{other:?}"),
        }
        let e = parse(serde_json::json!({
            "detail-type": "Parameter Store Change", "source": "aws.ssm", "detail": {"name": "/x"}
        }))
        .unwrap_err();
        assert!(e.contains("operation"), "{e}");
    }
}
