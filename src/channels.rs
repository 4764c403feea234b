//! Channels: where launch templates find an image. A channel is an SSM parameter
//! `/kiln/<team>/<template>/<channel>` (EC2 Image Builder's convention) holding an AMI id, one
//! parameter per region, with the `aws:ec2:image` data type so `resolve:ssm:` references in
//! launch templates follow it. A successful build publishes to the channels its request or
//! `kiln build --channel` names (step `publish-channels`); `kiln promote` moves an image from
//! one channel to another; `kiln revoke` removes an image from every channel that points at it
//! (`crate::release`, the operators' commands, holds the reads and deletes).
//! SSM keeps each parameter's history, so the image a channel held before is its previous
//! version.

use aws_sdk_ssm::Client;
use aws_sdk_ssm::types::ParameterType;

/// The root of every channel parameter.
pub const ROOT: &str = "/kiln";
/// SSM's data type for AMI ids: PutParameter checks the value is an image the caller can see.
pub const DATA_TYPE: &str = "aws:ec2:image";
/// The longest channel name (SSM parameter names are at most 1011 characters in all; a channel
/// is one path segment, kept short as Image Builder's are).
pub const CHANNEL_MAX: usize = 64;
/// The longest template part of a parameter name: within an EC2 tag value (256, as
/// `kiln:template-name`, which `kiln promote` reads back) and far within SSM's 1011.
pub const TEMPLATE_MAX: usize = 200;
/// The most path segments of the template part: SSM allows 15 levels in a parameter name, and
/// `/kiln/<team>/.../<channel>` takes three.
pub const TEMPLATE_LEVELS: usize = 12;

/// An error naming a channel or publishing to it.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The channel's name cannot be a parameter path segment.
    #[error(
        "channel {0:?}: a channel is 1 to {CHANNEL_MAX} letters, digits, '-', '_' or '.' (as `dev`, `prod`, `canary-1`)"
    )]
    BadName(String),
    /// A parameter of the channel's name exists and is not a channel.
    #[error(
        "{name} in {region} exists and is not a channel (its data type is {data_type}, not {DATA_TYPE}): kiln does not overwrite it; rename the parameter, or publish to another channel"
    )]
    NotAChannel {
        /// The parameter.
        name: String,
        /// The region.
        region: String,
        /// Its data type.
        data_type: String,
    },
    /// SSM refused or could not be reached.
    #[error("SSM {call} {name} in {region}: {message}")]
    Ssm {
        /// The call.
        call: &'static str,
        /// The parameter (or path).
        name: String,
        /// The region.
        region: String,
        /// What SSM said.
        message: String,
        /// Whether a retry could succeed.
        retryable: bool,
    },
}

impl ChannelError {
    /// Whether a retry could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ChannelError::BadName(_) | ChannelError::NotAChannel { .. } => false,
            ChannelError::Ssm { retryable, .. } => *retryable,
        }
    }
}

/// SSM error codes a retry can get past.
const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "InternalServerError",
    "TooManyUpdates",
    "ServiceUnavailable",
];

pub(crate) fn ssm_error<E, R>(
    call: &'static str,
    name: &str,
    region: &str,
) -> impl FnOnce(aws_sdk_ssm::error::SdkError<E, R>) -> ChannelError
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let (name, region) = (name.to_owned(), region.to_owned());
    move |e| {
        use aws_sdk_ssm::error::SdkError;
        let retryable = match &e {
            SdkError::ServiceError(s) => RETRYABLE_CODES.contains(&s.err().code().unwrap_or("")),
            SdkError::ConstructionFailure(_) => false,
            _ => true,
        };
        ChannelError::Ssm {
            call,
            name,
            region,
            message: aws_sdk_ssm::error::DisplayErrorContext(&e).to_string(),
            retryable,
        }
    }
}

/// Checks a channel's name (see [`ChannelError::BadName`]). Pure.
pub fn check_channel(channel: &str) -> Result<(), ChannelError> {
    let ok = !channel.is_empty()
        && channel.len() <= CHANNEL_MAX
        && channel != "."
        && channel != ".."
        && channel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ChannelError::BadName(channel.to_owned()))
    }
}

/// A template's name in parameter paths: its path relative to the team's `templates/` (or its
/// file name for a local template), without the `.pkr.hcl`/`.pkr.json`/`.json` extension, each
/// character SSM does not allow replaced by `-`, with `.<build>` when the template has more
/// than one build. Pure.
pub fn template_name(path: &str, build: Option<&str>) -> String {
    let mut p = path.trim_matches('/');
    for ext in [".pkr.hcl", ".pkr.json", ".json", ".hcl"] {
        if let Some(s) = p.strip_suffix(ext) {
            p = s;
            break;
        }
    }
    let mut name: String = p
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if let Some(b) = build {
        name.push('.');
        name.extend(b.chars().map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        }));
    }
    // No empty or dot-only segments (`a//b`, `../x`): SSM refuses them, and they would read as
    // another template's path.
    let clean = |n: &str| -> String {
        n.split('/')
            .filter(|s| !s.is_empty() && s.chars().any(|c| c != '.'))
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut segments: Vec<String> = clean(&name).split('/').map(str::to_owned).collect();
    // Deep paths keep their last levels (the template's own name) joined by `-`.
    if segments.len() > TEMPLATE_LEVELS {
        let tail = segments.split_off(TEMPLATE_LEVELS - 1).join("-");
        segments.push(tail);
    }
    // Cut to the limit, then clean again (a cut may leave an empty or dot-only last segment).
    let cut: String = segments.join("/").chars().take(TEMPLATE_MAX).collect();
    let out = clean(&cut);
    if out.is_empty() {
        "template".into()
    } else {
        out
    }
}

/// [`template_name`] of a template's key under its team's root: `templates/web/base.pkr.hcl` is
/// `web/base`, and `kiln submit`'s `submissions/<build-id>/app.json` is `app` (the same
/// template submitted twice publishes to the same channels). Pure.
pub fn template_name_of_key(key: &str, build: Option<&str>) -> String {
    let path = if let Some(rest) = key.strip_prefix("templates/") {
        rest
    } else if let Some(rest) = key.strip_prefix("submissions/") {
        rest.split_once('/').map_or(rest, |(_, r)| r)
    } else {
        key
    };
    template_name(path, build)
}

/// The parameter of `channel` for `template` in `team`: `/kiln/<team>/<template>/<channel>`.
pub fn parameter(team: &str, template: &str, channel: &str) -> Result<String, ChannelError> {
    check_channel(channel)?;
    Ok(format!("{ROOT}/{team}/{template}/{channel}"))
}

/// Points `name` at `ami` in the client's region. A parameter of that name that is not a
/// channel (its data type is not `aws:ec2:image`: a team's data-source value) is never
/// overwritten. Side effects: a new version of the parameter (SSM keeps the previous ones).
/// Safe to run twice.
pub async fn publish(
    ssm: &Client,
    region: &str,
    name: &str,
    ami: &str,
) -> Result<(), ChannelError> {
    match ssm.get_parameter().name(name).send().await {
        Ok(o) => {
            let kind = o.parameter().and_then(|p| p.data_type()).unwrap_or("text");
            if kind != DATA_TYPE {
                return Err(ChannelError::NotAChannel {
                    name: name.to_owned(),
                    region: region.to_owned(),
                    data_type: kind.to_owned(),
                });
            }
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) => {}
        Err(e) => return Err(ssm_error("GetParameter", name, region)(e)),
    }
    ssm.put_parameter()
        .name(name)
        .value(ami)
        .r#type(ParameterType::String)
        .data_type(DATA_TYPE)
        .overwrite(true)
        .description("kiln channel: the AMI this channel launches")
        .send()
        .await
        .map(|_| ())
        .map_err(ssm_error("PutParameter", name, region))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names_are_parameter_paths() {
        assert_eq!(template_name("web/base.pkr.hcl", None), "web/base");
        assert_eq!(
            template_name("app.json", Some("amazon-chroot")),
            "app.amazon-chroot"
        );
        assert_eq!(template_name("../a//b c/x.pkr.hcl", None), "a/b-c/x");
        assert_eq!(template_name("", None), "template");
        assert_eq!(
            template_name_of_key("templates/web/base.pkr.hcl", None),
            "web/base"
        );
        assert_eq!(
            template_name_of_key("submissions/b-1/app.json", None),
            "app"
        );
        assert!(template_name(&"x".repeat(2000), None).len() <= TEMPLATE_MAX);
        let deep = (0..20)
            .map(|i| format!("d{i}"))
            .collect::<Vec<_>>()
            .join("/");
        let n = template_name(&deep, None);
        assert_eq!(n.split('/').count(), TEMPLATE_LEVELS, "{n}");
        assert!(n.ends_with("d11-d12-d13-d14-d15-d16-d17-d18-d19"), "{n}");
        let cut = template_name(&format!("{}/.x", "y".repeat(TEMPLATE_MAX - 1)), None);
        assert!(!cut.ends_with('/') && !cut.ends_with('.'), "{cut}");
    }

    #[test]
    fn channels_are_one_plain_segment() {
        assert_eq!(
            parameter("team-a", "web/base", "prod").expect("ok"),
            "/kiln/team-a/web/base/prod"
        );
        for bad in ["", "a/b", "..", "prod ", &"x".repeat(65), "dév"] {
            let e = parameter("t", "x", bad).expect_err(bad);
            assert!(e.to_string().contains("letters, digits"), "{e}");
        }
    }
}
