//! The EC2 control plane: instance identity from IMDS, volumes, attachments, snapshots, images
//! and their copies, the boot test's instances, and the one generic wait for eventual
//! consistency. Only this module calls EC2; the pipeline's steps call it.

pub mod history;
pub mod identity;
pub mod images;
pub mod instance_types;
pub mod instances;
pub mod lineage;
pub mod schedule;
pub mod volumes;
pub mod wait;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use std::collections::BTreeMap;

/// Errors from EC2 and IMDS, with what was being done to which resource where.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    /// An API call failed.
    #[error("{op} {resource} in {region}: {code}: {message}")]
    Api {
        /// The operation, e.g. `CreateVolume`.
        op: &'static str,
        /// The resource id (or what was asked for).
        resource: String,
        /// The region.
        region: String,
        /// The AWS error code, or `Transport` for network failures.
        code: String,
        /// The message.
        message: String,
        /// Whether a retry may pass (throttling, outages, transport).
        retryable: bool,
    },
    /// A wait gave up.
    #[error(
        "timed out after {waited_s} s waiting for {what} (last state: {last_state}); raise aws_polling or AWS_MAX_ATTEMPTS if it is just slow"
    )]
    Timeout {
        /// What was awaited.
        what: String,
        /// Seconds waited.
        waited_s: u64,
        /// The last state seen.
        last_state: String,
    },
    /// A resource reached a state it never leaves.
    #[error("{what} reached the terminal state {state}{detail}")]
    Terminal {
        /// What was awaited.
        what: String,
        /// The state.
        state: String,
        /// AWS's reason, if any.
        detail: String,
    },
    /// The build was cancelled during a wait.
    #[error("cancelled while waiting for {0}")]
    Cancelled(String),
    /// The instance metadata service could not be reached.
    #[error(
        "cannot read {path} from the instance metadata service at {endpoint}: {message}. kiln must run on an EC2 instance; elsewhere set AWS_EC2_METADATA_SERVICE_ENDPOINT to a metadata service (scripts/emulator up prints one)"
    )]
    Imds {
        /// The endpoint tried.
        endpoint: String,
        /// The path read.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// EC2 answered something kiln cannot use.
    #[error("{0}")]
    Unexpected(String),
}

impl Ec2Error {
    /// Whether retrying the build could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Ec2Error::Api { retryable, .. } => *retryable,
            Ec2Error::Timeout { .. } | Ec2Error::Imds { .. } => true,
            _ => false,
        }
    }

    /// The AWS error code, when this is an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Ec2Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the resource does not exist (any `*.NotFound` / `*.Unavailable` code).
    pub fn is_not_found(&self) -> bool {
        self.code().is_some_and(|c| {
            c.contains("NotFound") || c.ends_with(".Unavailable") || c.ends_with(".Malformed")
        })
    }
}

/// Error codes that a later attempt may not hit (AWS's throttling and service-side failures).
const RETRYABLE_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "InsufficientVolumeCapacity",
    "SnapshotCreationPerVolumeRateExceeded",
    "ResourceLimitExceeded",
];

/// Converts an SDK error into [`Ec2Error::Api`] with context.
pub fn api<E, R>(
    op: &'static str,
    resource: impl Into<String>,
    region: &str,
) -> impl FnOnce(aws_sdk_ec2::error::SdkError<E, R>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let resource = resource.into();
    let region = region.to_owned();
    move |err| {
        let (code, message, retryable) = match &err {
            aws_sdk_ec2::error::SdkError::ServiceError(s) => {
                let code = s.err().code().unwrap_or("Unknown").to_owned();
                let retryable = RETRYABLE_CODES.contains(&code.as_str());
                (code, s.err().message().unwrap_or("").to_owned(), retryable)
            }
            aws_sdk_ec2::error::SdkError::TimeoutError(_)
            | aws_sdk_ec2::error::SdkError::DispatchFailure(_)
            | aws_sdk_ec2::error::SdkError::ResponseError(_) => (
                "Transport".to_owned(),
                format!("{}", aws_sdk_ec2::error::DisplayErrorContext(&err)),
                true,
            ),
            other => (
                "Unknown".to_owned(),
                format!("{}", aws_sdk_ec2::error::DisplayErrorContext(other)),
                false,
            ),
        };
        Ec2Error::Api {
            op,
            resource,
            region,
            code,
            message,
            retryable,
        }
    }
}

/// Which run of a build made something: the build id (the caller's idempotency key) and its
/// generation, a random id made when the build's journal is created (or, without a journal, when
/// `kiln build` starts). A forced rebuild under the same build id is a new generation, so it never
/// mistakes the previous build's resources or idempotency tokens for its own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildRef {
    /// The build id.
    pub id: String,
    /// The generation (empty for journals written before generations existed).
    pub generation: String,
    /// The team (empty: the default team).
    pub team: String,
}

impl BuildRef {
    /// The build's team ([`crate::team::Team::of_tag`] of `team`).
    pub fn team(&self) -> crate::team::Team {
        crate::team::Team::of_tag(Some(self.team.as_str()).filter(|t| !t.is_empty()))
    }
}

/// Tags kiln puts on everything it creates, so every resource can be found from its build.
pub fn kiln_tags(build: &BuildRef, step: &str, extra: &BTreeMap<String, String>) -> Vec<Tag> {
    let mut tags: Vec<Tag> = extra
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    tags.push(Tag::builder().key(TAG_BUILD_ID).value(&build.id).build());
    tags.push(
        Tag::builder()
            .key(crate::team::TAG_TEAM)
            .value(build.team().as_str())
            .build(),
    );
    tags.push(Tag::builder().key(TAG_STEP).value(step).build());
    if !build.generation.is_empty() {
        tags.push(
            Tag::builder()
                .key(TAG_GENERATION)
                .value(&build.generation)
                .build(),
        );
    }
    tags
}

/// Whether a resource's tags say that `build` (this team, id and generation) made it (a resource
/// without a team tag is the default team's).
pub fn made_by(tags: &[Tag], build: &BuildRef) -> bool {
    let value = |k: &str| {
        tags.iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
    };
    value(TAG_BUILD_ID) == Some(build.id.as_str())
        && value(TAG_GENERATION).unwrap_or("") == build.generation
        && crate::team::Team::of_tag(value(crate::team::TAG_TEAM)) == build.team()
}

/// A `TagSpecification` for `kind` with `tags`.
pub fn tag_spec(kind: ResourceType, tags: &[Tag]) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(tags.to_vec()))
        .build()
}

/// The tag naming the build that created a resource.
pub const TAG_BUILD_ID: &str = "kiln:build-id";
/// The tag naming the step that created it.
pub const TAG_STEP: &str = "kiln:step";

/// On a snapshot in another region: the build region's snapshot it holds the same data as (a
/// CopyImage copy, or the direct backend's upload to that region). The direct backend builds on
/// it in that region, as on the original in the build region.
pub const TAG_COPY_OF: &str = "kiln:copy-of";

/// The tag naming the build's generation (see [`BuildRef`]).
pub const TAG_GENERATION: &str = "kiln:generation";

/// An idempotency token (EC2's `ClientToken`, at most 64 ASCII characters) for one call of
/// `build`. The rule: a token covers everything that makes the call distinct, so a retry of the
/// same call gets the same token and any other call a different one: the build id, its generation
/// (a forced rebuild is new), and in `parts` the call's kind plus what it depends on (the attempt
/// for a volume each attempt makes anew, the source image and target region for a copy).
pub fn client_token(build: &BuildRef, parts: &[&str]) -> String {
    let mut t = format!("kiln-{}", build.id);
    // Another team's build of the same id is another build (the default team's tokens are as
    // they were before teams).
    let team = build.team();
    if !team.is_default() {
        t.push('-');
        t.push_str(team.as_str());
    }
    if !build.generation.is_empty() {
        t.push('-');
        t.push_str(&build.generation);
    }
    for p in parts {
        t.push('-');
        t.push_str(p);
    }
    if t.len() <= 64 && t.is_ascii() {
        return t;
    }
    // FNV-1a (two seeds, 128 bits) keeps long tokens within the limit while staying deterministic.
    let fnv = |seed: u64| {
        let mut h = seed;
        for b in t.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
        h
    };
    let prefix: String = t.chars().filter(char::is_ascii).take(30).collect();
    format!(
        "{prefix}-{:016x}{:016x}",
        fnv(0xcbf29ce484222325),
        fnv(0x84222325cbf29ce4)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(id: &str, generation: &str) -> BuildRef {
        BuildRef {
            id: id.into(),
            generation: generation.into(),
            team: String::new(),
        }
    }

    #[test]
    fn client_tokens_differ_by_generation_attempt_and_source() {
        let a = build("b-1", "g1");
        let t = client_token(&a, &["root-volume", "1"]);
        assert_eq!(t, client_token(&a, &["root-volume", "1"]), "deterministic");
        assert_ne!(t, client_token(&a, &["root-volume", "2"]), "attempt");
        assert_ne!(
            t,
            client_token(&build("b-1", "g2"), &["root-volume", "1"]),
            "generation"
        );
        let long = build(&"x".repeat(80), "0123456789abcdef0123456789abcdef");
        let c1 = client_token(&long, &["copy", "us-west-2", "ami-1"]);
        let c2 = client_token(&long, &["copy", "us-west-2", "ami-2"]);
        assert!(c1.len() <= 64 && c2.len() <= 64, "{c1} {c2}");
        assert_ne!(c1, c2, "source image");
    }

    #[test]
    fn made_by_needs_id_and_generation() {
        let tags = kiln_tags(&build("b", "g"), "snapshot", &BTreeMap::new());
        assert!(made_by(&tags, &build("b", "g")));
        assert!(!made_by(&tags, &build("b", "h")));
        assert!(!made_by(&tags, &build("c", "g")));
    }
}
