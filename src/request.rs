//! Build requests: the versioned JSON message teams, `kiln submit` and `kiln-trigger` put on the
//! queue (schema: infra/build-request.schema.json). Parsing never panics and says exactly what is
//! wrong. Also the limits of a template's S3 directory, which the worker and the trigger share.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The request version this worker understands.
pub const REQUEST_VERSION: u32 = 1;
/// Largest message body accepted. A request is a few hundred bytes; 64 KiB leaves room for many
/// variables and stays well under SQS's own 256 KiB limit, so oversized bodies reach the worker
/// and get a clear failure instead of being refused at send time.
pub const MAX_BODY: usize = 64 * 1024;

/// Most files fetched from a template's S3 directory, and their total size: a template and its
/// scripts and uploads, not a data set.
pub const MAX_TEMPLATE_FILES: usize = 200;
/// See [`MAX_TEMPLATE_FILES`].
pub const MAX_TEMPLATE_BYTES: u64 = 64 << 20;

/// What an image is made from, hashed (computed by `kiln-trigger`; see `trigger::bake`). The
/// worker copies it into the result and, on success, into the template's index
/// (`index/<template key>.json`), which the next nightly run compares against.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Bake {
    /// SHA-256 over everything below.
    pub key: String,
    /// SHA-256 over the template's files (path and content hash each).
    pub template_hash: String,
    /// SHA-256 over the variables.
    pub variables_hash: String,
    /// The source image each build resolved to (`scratch` for from_scratch).
    pub source_amis: Vec<String>,
    /// kiln's version.
    pub kiln_version: String,
}

/// The S3 key of a template's bake index: its last succeeded build's [`Bake`] (written by the
/// worker, read by `kiln-trigger`'s nightly run), in the team's part of the bucket
/// (`index/templates/web.json.json`; team `b`: `teams/b/index/templates/web.json.json`).
pub fn index_key(team: &crate::team::Team, template_key: &str) -> String {
    let root = team.key_root();
    let within = template_key.strip_prefix(&root).unwrap_or(template_key);
    team.key(&format!("index/{within}.json"))
}

/// Where the template is.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TemplateLocation {
    /// The bucket (must be one the worker trusts).
    pub bucket: String,
    /// The key of the template file; files next to it (scripts, uploads) come along.
    pub key: String,
    /// A specific object version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// The prefix that stands for the working directory (`kiln submit` sets it): every file
    /// below it is fetched, laid out as below it, and the template's relative paths resolve from
    /// there, as from Packer's working directory. Default: the template's own directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

/// A build request.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    /// Request format version (1).
    pub version: u32,
    /// The caller's idempotency key; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// The template.
    pub template: TemplateLocation,
    /// Template variables.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Build only these (as `--only`).
    #[serde(default)]
    pub only: Vec<String>,
    /// Skip these builds (as `--except`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    /// Build again even if this build id finished before.
    #[serde(default)]
    pub force: bool,
    /// The bake key the trigger computed, with its parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<Bake>,
    /// Where the build's data lives, if not the worker's setting: `ebs` (a volume attached to
    /// the builder) or `direct` (the EBS direct APIs; no volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<RequestBackend>,
    /// The channels a successful build publishes its AMIs to (`dev`, `prod`, ...: SSM
    /// parameters `/kiln/<team>/<template>/<channel>`, see `crate::channels`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
}

/// The backends a request may ask for (a pool never builds on `loop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestBackend {
    /// A volume attached to the builder.
    Ebs,
    /// The EBS direct APIs.
    Direct,
}

/// The build id of a request that names none: derived from the queue message's id and the body,
/// so every delivery of the same message names the same build (a redelivery after a crash resumes
/// it), while two messages with the same body are two builds, as two `packer build` runs are.
pub fn derived_build_id(message_id: &str, body: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{message_id}\n{body}").as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("auto-{hex}")
}

/// Why a message is not a usable request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// Too large.
    #[error("the message body is {0} bytes; a build request is at most {MAX_BODY} bytes")]
    TooLarge(usize),
    /// Not JSON, or not the right shape.
    #[error("the message is not a valid build request: {0}")]
    Invalid(String),
    /// A version this worker does not know.
    #[error("unsupported request version {0}: this worker understands version {REQUEST_VERSION}")]
    Version(u64),
}

/// Whether `id` can be a build id: 1 to 128 letters, digits, `-`, `_` or `.` (it names S3 keys
/// and files).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Parses a message body.
pub fn parse(body: &str) -> Result<BuildRequest, RequestError> {
    if body.len() > MAX_BODY {
        return Err(RequestError::TooLarge(body.len()));
    }
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| RequestError::Invalid(format!("not JSON: {e}")))?;
    match value.get("version") {
        Some(serde_json::Value::Number(n)) if n.as_u64() != Some(u64::from(REQUEST_VERSION)) => {
            return Err(RequestError::Version(n.as_u64().unwrap_or(0)));
        }
        None => {
            return Err(RequestError::Invalid(
                "missing field `version` (use 1)".into(),
            ));
        }
        _ => {}
    }
    let req: BuildRequest =
        serde_json::from_value(value).map_err(|e| RequestError::Invalid(e.to_string()))?;
    if let Some(id) = &req.build_id
        && !valid_id(id)
    {
        return Err(RequestError::Invalid(format!(
            "build_id {id:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"
        )));
    }
    if let Some(e) = req
        .channels
        .iter()
        .find_map(|c| crate::channels::check_channel(c).err())
    {
        return Err(RequestError::Invalid(format!("channels: {e}")));
    }
    if req.template.bucket.is_empty() || req.template.key.is_empty() {
        return Err(RequestError::Invalid(
            "template.bucket and template.key must not be empty".into(),
        ));
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_may_ask_for_ebs_or_direct_and_never_loop() {
        let body = |b: &str| {
            format!(r#"{{"version":1,"template":{{"bucket":"b","key":"t.json"}},"backend":"{b}"}}"#)
        };
        assert_eq!(
            parse(&body("direct")).map(|r| r.backend),
            Ok(Some(RequestBackend::Direct))
        );
        assert_eq!(
            parse(&body("ebs")).map(|r| r.backend),
            Ok(Some(RequestBackend::Ebs))
        );
        let e = parse(&body("loop")).unwrap_err().to_string();
        assert!(e.contains("ebs") && e.contains("direct"), "{e}");
        let none = r#"{"version":1,"template":{"bucket":"b","key":"t.json"}}"#;
        assert_eq!(parse(none).map(|r| r.backend), Ok(None));
    }

    #[test]
    fn derived_build_ids_follow_the_message() {
        let a = derived_build_id("m-1", "{}");
        assert_eq!(a, derived_build_id("m-1", "{}"));
        assert_ne!(a, derived_build_id("m-2", "{}"));
        assert!(valid_id(&a), "{a}");
    }

    #[test]
    fn table() {
        let ok = r#"{"version": 1, "template": {"bucket": "b", "key": "t.json"}, "variables": {"a": "1"}}"#;
        assert_eq!(parse(ok).unwrap().variables["a"], "1");
        let cases: &[(&str, &str)] = &[
            ("not json", "not JSON"),
            ("[]", "missing field `version`"),
            (
                r#"{"version": 2, "template": {"bucket": "b", "key": "k"}}"#,
                "unsupported request version 2",
            ),
            (r#"{"version": 1}"#, "missing field `template`"),
            (
                r#"{"version": 1, "template": {"bucket": "b"}}"#,
                "missing field `key`",
            ),
            (
                r#"{"version": 1, "template": {"bucket": "b", "key": "k"}, "colour": 1}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"version": 1, "template": {"bucket": 3, "key": "k"}}"#,
                "invalid type",
            ),
            (
                r#"{"version": "1", "template": {"bucket": "b", "key": "k"}}"#,
                "invalid type",
            ),
            (
                r#"{"version": 1, "build_id": "a b", "template": {"bucket": "b", "key": "k"}}"#,
                "build_id",
            ),
        ];
        for (body, want) in cases {
            let e = parse(body).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
        assert!(matches!(
            parse(&"x".repeat(MAX_BODY + 1)),
            Err(RequestError::TooLarge(_))
        ));
    }
}
