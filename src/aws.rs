//! The AWS connection: the one `SdkConfig` every client is cloned from, and the clients kiln uses.
//!
//! Only this module builds SDK configuration. Transport errors and throttling are retried by the
//! SDK's own retry configuration set here; application-level waits (resource states) live in the
//! EC2 control plane, not here.

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use std::time::Duration;

/// Attempts per AWS call (the first try included) in the SDK's standard retry mode. The SDK's
/// default is 3; EC2's control plane throttles bursts (`RequestLimitExceeded`) and AWS's guidance
/// for EC2 is to back off for longer, so kiln allows more attempts.
pub const MAX_ATTEMPTS: u32 = 8;

/// Longest back-off between two retried attempts. The SDK's default is 20 s; a builder that waits
/// longer than this per attempt would rather fail and let the queue redeliver.
pub const MAX_BACKOFF: Duration = Duration::from_secs(20);

/// Time to open a connection: a healthy endpoint answers in milliseconds.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest single attempt of a call. SQS long polls take 20 s; nothing kiln calls should take a
/// minute, and a call that hangs (a lost response) must fail and be retried rather than stall a
/// build or a worker forever.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The application name kiln's requests carry in their user agent (`app/kiln`): AWS logs it
/// (CloudTrail's userAgent), and the local emulator uses it to refuse a creation call of kiln's
/// that lacks kiln's tags (a resource kiln forgot to tag would otherwise leak unseen).
pub const APP_NAME: &str = "kiln";

/// Errors building the AWS configuration.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// No region in flags, environment, profile or instance metadata.
    #[error("no AWS region is configured: set AWS_REGION (or `region` in the template)")]
    MissingRegion,
}

impl AwsError {
    /// Whether retrying the same operation could succeed.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Where and how to reach AWS. Everything unset comes from the standard chain: environment
/// (`AWS_REGION`, `AWS_ENDPOINT_URL`, keys), shared config and credentials files, SSO, IMDS.
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// Region for the build's API calls; overrides the environment.
    pub region: Option<String>,
    /// Endpoint URL for every service; overrides `AWS_ENDPOINT_URL`.
    pub endpoint_url: Option<String>,
    /// Static access key id and secret, for an emulator or tests; production leaves this unset.
    pub static_credentials: Option<(String, String)>,
}

/// Loads the one `SdkConfig`: region, credentials, endpoint and the retry policy above.
///
/// Side effects: reads the environment and the shared config files; may query IMDS for a region.
/// Safe to call twice (each call builds a fresh configuration).
pub async fn load(settings: &AwsSettings) -> Result<SdkConfig, AwsError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_max_backoff(MAX_BACKOFF),
        )
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        );
    if let Ok(name) = aws_config::AppName::new(APP_NAME) {
        loader = loader.app_name(name);
    }
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let Some((key, secret)) = &settings.static_credentials {
        loader = loader.credentials_provider(aws_sdk_ec2::config::Credentials::new(
            key.clone(),
            secret.clone(),
            None,
            None,
            "kiln-static",
        ));
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(AwsError::MissingRegion);
    }
    Ok(config)
}

/// The service clients, cloned from one `SdkConfig`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Clients {
    config: SdkConfig,
    /// EC2 in the configuration's region.
    pub ec2: aws_sdk_ec2::Client,
    /// S3, path-style when a custom endpoint is configured (S3-compatible stores need it).
    pub s3: aws_sdk_s3::Client,
    /// SQS in the configuration's region.
    pub sqs: aws_sdk_sqs::Client,
}

impl Clients {
    /// Builds every client from `config`. No network access.
    pub fn new(config: &SdkConfig) -> Self {
        let s3_config = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(config.endpoint_url().is_some())
            .build();
        Self {
            config: config.clone(),
            ec2: aws_sdk_ec2::Client::new(config),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            sqs: aws_sdk_sqs::Client::new(config),
        }
    }

    /// The configuration the clients were built from.
    pub fn config(&self) -> &SdkConfig {
        &self.config
    }

    /// The region of the default clients.
    pub fn region(&self) -> &str {
        self.config.region().map(|r| r.as_ref()).unwrap_or("")
    }

    /// An EBS direct APIs client for `region` (the `direct` backend), sharing credentials and
    /// retry policy.
    #[cfg(feature = "builder")]
    pub fn ebs_in(&self, region: &str) -> aws_sdk_ebs::Client {
        let conf = aws_sdk_ebs::config::Builder::from(&self.config)
            .region(Region::new(region.to_owned()))
            .build();
        aws_sdk_ebs::Client::from_conf(conf)
    }

    /// An SSM client for `region` (channels), sharing credentials and retry policy.
    pub fn ssm_in(&self, region: &str) -> aws_sdk_ssm::Client {
        let conf = aws_sdk_ssm::config::Builder::from(&self.config)
            .region(Region::new(region.to_owned()))
            .build();
        aws_sdk_ssm::Client::from_conf(conf)
    }

    /// An EC2 client for another region (AMI copies), sharing credentials and retry policy.
    pub fn ec2_in(&self, region: &str) -> aws_sdk_ec2::Client {
        let conf = aws_sdk_ec2::config::Builder::from(&self.config)
            .region(Region::new(region.to_owned()))
            .build();
        aws_sdk_ec2::Client::from_conf(conf)
    }
}
