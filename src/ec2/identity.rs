//! The builder instance's identity from IMDSv2, through aws-config's IMDS client.

use super::Ec2Error;

/// Who and where this builder is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Instance {
    /// `i-...`
    pub instance_id: String,
    /// e.g. `us-east-1a`
    pub availability_zone: String,
    /// e.g. `us-east-1`
    pub region: String,
}

/// The IMDS endpoint aws-config will use (for error messages).
pub fn endpoint() -> String {
    std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap_or_else(|_| "http://169.254.169.254".into())
}

/// Reads the instance id, zone and region. Side effects: HTTP calls to IMDS. Safe to repeat.
pub async fn read() -> Result<Instance, Ec2Error> {
    let client = aws_config::imds::Client::builder().build();
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            client
                .get(path)
                .await
                .map(|s| s.as_ref().trim().to_owned())
                .map_err(|e| Ec2Error::Imds {
                    endpoint: endpoint(),
                    path: path.to_owned(),
                    message: format!("{}", aws_sdk_ec2::error::DisplayErrorContext(&e)),
                })
        }
    };
    let instance_id = get("/latest/meta-data/instance-id").await?;
    let availability_zone = get("/latest/meta-data/placement/availability-zone").await?;
    let region = match get("/latest/meta-data/placement/region").await {
        Ok(r) => r,
        Err(_) => availability_zone
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .to_owned(),
    };
    Ok(Instance {
        instance_id,
        availability_zone,
        region,
    })
}
