//! A template's `amazon-parameterstore` and `amazon-secretsmanager` data sources, fetched from
//! AWS (`ssm:GetParameter`, `secretsmanager:GetSecretValue`) before the template is loaded for a
//! build, as Packer evaluates data sources before anything uses them. The template language
//! (`template::data`) declares what to fetch; this module fetches it and loads the template again
//! with the values. `kiln build`, the worker and the trigger call [`complete`]; `kiln validate`
//! does not (offline, like `packer validate`).

use crate::team::DataScope;
use crate::template::data::{DataQuery, DataRequest, DataValues, secret_parts, secret_value};
use crate::template::{self, Inputs, Loaded};
use aws_config::{Region, SdkConfig};
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::error::SdkError;
use std::collections::BTreeMap;
use std::path::Path;

/// A data source that could not be fetched for a reason a later attempt may not hit (throttling,
/// a service or transport failure after the SDK's own retries). Permanent failures (not found,
/// access denied) are not errors of this kind: they are the template's diagnostics, at the block.
#[derive(Debug, thiserror::Error)]
pub enum DataSourceError {
    /// The call failed transiently.
    #[error("{address} ({region}): {op} failed: {code}: {message}")]
    Unavailable {
        /// `data.KIND.NAME`.
        address: String,
        /// Region of the call.
        region: String,
        /// The API operation.
        op: &'static str,
        /// AWS's error code, or `Transport`.
        code: String,
        /// AWS's message.
        message: String,
    },
}

impl DataSourceError {
    /// Whether retrying could succeed: always (permanent failures are diagnostics instead).
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// `loaded` (the template at `path` loaded with `inputs`, data sources as placeholders) loaded
/// again with its data sources' values, fetched with `config`'s credentials in each block's
/// `region` (else `config`'s). A data source that does not exist or may not be read is an error
/// diagnostic at its block; secrets are added to the masker. Returns `loaded` unchanged when it
/// has no such data sources. A name outside `scope` (the build's team's prefix) is refused
/// before any call, as the team's build role would refuse it on AWS.
///
/// Side effects: read-only AWS calls. Safe to call twice.
pub async fn complete(
    path: &Path,
    inputs: &Inputs,
    loaded: Loaded,
    config: &SdkConfig,
    scope: &DataScope,
) -> Result<Loaded, DataSourceError> {
    if loaded.data_requests.is_empty() || inputs.data.is_some() {
        return Ok(loaded);
    }
    let values = fetch(config, &loaded.data_requests, scope).await?;
    let inputs = Inputs {
        data: Some(values),
        ..inputs.clone()
    };
    Ok(template::load(path, &inputs))
}

/// Fetches every request's outputs. Permanent failures (and names outside `scope`) land in
/// [`DataValues::errors`].
///
/// Side effects: read-only AWS calls. Safe to call twice.
pub async fn fetch(
    config: &SdkConfig,
    requests: &[DataRequest],
    scope: &DataScope,
) -> Result<DataValues, DataSourceError> {
    let mut values = DataValues::default();
    for request in requests {
        let region = request
            .region
            .clone()
            .or_else(|| config.region().map(|r| r.to_string()))
            .unwrap_or_default();
        let address = request.address();
        let span = tracing::info_span!("data-source", data = %address, region = %region);
        let _entered = span.enter();
        let allowed = match &request.query {
            DataQuery::Parameter { name, .. } => scope.check_parameter(name),
            DataQuery::Secret { name, .. } => scope.check_secret(name),
        };
        if let Err(e) = allowed {
            values.errors.insert(address, e.to_string());
            continue;
        }
        let got = match &request.query {
            DataQuery::Parameter {
                name,
                with_decryption,
            } => parameter(config, &region, name, *with_decryption).await,
            DataQuery::Secret {
                name,
                key,
                version_id,
                version_stage,
            } => {
                let version = match version_id {
                    Some(id) => Version::Id(id),
                    None => Version::Stage(version_stage),
                };
                secret(config, &region, name, key.as_deref(), version).await
            }
        };
        match got {
            Ok(fetched) => {
                tracing::info!("fetched {address}");
                values.secrets.extend(fetched.secrets);
                if let Some(w) = fetched.warning {
                    values.warnings.insert(address.clone(), w);
                }
                values.outputs.insert(address, fetched.outputs);
            }
            Err(Failure::Permanent(message)) => {
                values.errors.insert(address, message);
            }
            Err(Failure::Transient { op, code, message }) => {
                return Err(DataSourceError::Unavailable {
                    address,
                    region,
                    op,
                    code,
                    message,
                });
            }
        }
    }
    Ok(values)
}

/// What one data source gave.
struct Fetched {
    outputs: BTreeMap<String, String>,
    secrets: Vec<String>,
    warning: Option<String>,
}

enum Failure {
    Permanent(String),
    Transient {
        op: &'static str,
        code: String,
        message: String,
    },
}

/// Error codes a later attempt may not hit.
const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyUpdates",
    "InternalServerError",
    "InternalServiceError",
    "InternalFailure",
    "ServiceUnavailable",
];

/// Classifies an SDK error: one of the `not_found` codes (answered with `missing`, Packer's
/// words), other permanent refusals (with what to do), or transient failures.
fn failure<E, R>(
    op: &'static str,
    err: SdkError<E, R>,
    (not_found, missing): (&[&str], String),
    action: &str,
) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("Unknown").to_owned();
            let message = s.err().message().unwrap_or("").to_owned();
            if not_found.contains(&code.as_str()) {
                Failure::Permanent(missing)
            } else if RETRYABLE_CODES.contains(&code.as_str()) {
                Failure::Transient { op, code, message }
            } else if code.contains("AccessDenied") {
                Failure::Permanent(format!(
                    "{op} was refused ({code}: {message}): the builder's role needs `{action}` on it"
                ))
            } else {
                Failure::Permanent(format!("{op} failed: {code}: {message}"))
            }
        }
        _ => Failure::Transient {
            op,
            code: "Transport".to_owned(),
            message: format!("{}", aws_sdk_ssm::error::DisplayErrorContext(&err)),
        },
    }
}

async fn parameter(
    config: &SdkConfig,
    region: &str,
    name: &str,
    with_decryption: bool,
) -> Result<Fetched, Failure> {
    let conf = aws_sdk_ssm::config::Builder::from(config)
        .region(Region::new(region.to_owned()))
        .build();
    let out = aws_sdk_ssm::Client::from_conf(conf)
        .get_parameter()
        .name(name)
        .with_decryption(with_decryption)
        .send()
        .await
        .map_err(|e| {
            let missing = format!("The parameter name \"{name}\" not found (region {region})");
            failure(
                "GetParameter",
                e,
                (&["ParameterNotFound"], missing),
                "ssm:GetParameter",
            )
        })?;
    let Some(p) = out.parameter else {
        return Err(Failure::Permanent(format!(
            "GetParameter answered without the parameter \"{name}\" (region {region})"
        )));
    };
    let value = p.value.clone().unwrap_or_default();
    let secure = p.r#type == Some(aws_sdk_ssm::types::ParameterType::SecureString);
    Ok(Fetched {
        outputs: [
            ("value".to_owned(), value.clone()),
            ("version".to_owned(), p.version.to_string()),
            ("arn".to_owned(), p.arn.clone().unwrap_or_default()),
        ]
        .into_iter()
        .collect(),
        secrets: if secure { vec![value] } else { Vec::new() },
        warning: None,
    })
}

/// Which version of a secret: by id (overrides the stage), or by stage.
enum Version<'a> {
    Id(&'a str),
    Stage(&'a str),
}

async fn secret(
    config: &SdkConfig,
    region: &str,
    name: &str,
    key: Option<&str>,
    version: Version<'_>,
) -> Result<Fetched, Failure> {
    let conf = aws_sdk_secretsmanager::config::Builder::from(config)
        .region(Region::new(region.to_owned()))
        .build();
    let mut call = aws_sdk_secretsmanager::Client::from_conf(conf)
        .get_secret_value()
        .secret_id(name);
    let label = match version {
        Version::Id(id) => {
            call = call.version_id(id);
            id
        }
        Version::Stage(stage) => {
            call = call.version_stage(stage);
            stage
        }
    };
    let out = call.send().await.map_err(|e| {
        let missing = format!(
            "Secrets Manager Secret \"{name}\" Version \"{label}\" not found (region {region})"
        );
        failure(
            "GetSecretValue",
            e,
            (&["ResourceNotFoundException"], missing),
            "secretsmanager:GetSecretValue",
        )
    })?;
    let string = out.secret_string.clone().unwrap_or_default();
    let binary = out
        .secret_binary
        .as_ref()
        .map(|b| String::from_utf8_lossy(b.as_ref()).into_owned())
        .unwrap_or_default();
    let mut secrets = secret_parts(&string);
    secrets.push(binary.clone());
    // A key the secret lacks is the template's mistake; a secret of several keys and no `key`
    // leaves `value` empty (Packer picks one at random) and says so, since a template may read
    // only `secret_string`.
    let (value, warning) = match secret_value(&string, key) {
        Ok(v) => (v, None),
        Err(e) if key.is_some() => return Err(Failure::Permanent(e)),
        Err(e) => (String::new(), Some(format!("`value` is empty: {e}"))),
    };
    secrets.push(value.clone());
    Ok(Fetched {
        outputs: [
            ("value".to_owned(), value),
            ("secret_string".to_owned(), string),
            ("secret_binary".to_owned(), binary),
            (
                "version_id".to_owned(),
                out.version_id.clone().unwrap_or_default(),
            ),
        ]
        .into_iter()
        .collect(),
        secrets,
        warning,
    })
}
