//! The channels a template's builds publish to when the trigger asks for them: named on the
//! template's object in S3 by its user metadata `kiln-channels`, a comma-separated list
//! (`aws s3 cp base.pkr.hcl s3://<bucket>/templates/web/base.pkr.hcl --metadata kiln-channels=dev`).
//! The template's text stays what `packer validate` accepts; the trigger puts the channels in
//! every request it makes for the template (an upload, a nightly rebuild, a cascade). S3 keeps
//! user metadata under 2 KB, which bounds the list. [`user_metadata`] reads the object's metadata
//! for the other settings kept there (`kiln-lifecycle`, read by the nightly run).

use super::TriggerError;
use crate::aws::Clients;

/// The user-metadata key (S3 sends it as `x-amz-meta-kiln-channels`).
pub const METADATA_KEY: &str = "kiln-channels";

/// The channels in a `kiln-channels` value: names separated by commas (spaces around them are
/// ignored), each checked by [`crate::channels::check_channel`], duplicates dropped. An error
/// names the metadata and the fix. Pure.
pub fn parse(value: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for c in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        crate::channels::check_channel(c).map_err(|e| {
            format!(
                "the template's S3 metadata {METADATA_KEY} = {value:?}: {e}; upload it again with --metadata {METADATA_KEY}=dev,prod"
            )
        })?;
        if !out.iter().any(|o| o == c) {
            out.push(c.to_owned());
        }
    }
    Ok(out)
}

/// The channels template `key` in `bucket` names (none when the object has no such metadata).
/// Side effects: one S3 HeadObject. An object that is gone names none. A template whose metadata is malformed is
/// [`TriggerError::Template`]; an S3 failure [`TriggerError::Io`] (retryable).
pub async fn of_template(
    clients: &Clients,
    bucket: &str,
    key: &str,
) -> Result<Vec<String>, TriggerError> {
    match user_metadata(clients, bucket, key).await?.get(METADATA_KEY) {
        Some(v) => parse(v).map_err(TriggerError::Template),
        None => Ok(Vec::new()),
    }
}

/// The user metadata of template `key` in `bucket` (`kiln-channels`, `kiln-lifecycle`, ...):
/// empty when the object is gone (its build reports that). Side effects: one S3 HeadObject; an
/// S3 failure is [`TriggerError::Io`] (retryable).
pub async fn user_metadata(
    clients: &Clients,
    bucket: &str,
    key: &str,
) -> Result<std::collections::HashMap<String, String>, TriggerError> {
    match clients
        .s3
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
    {
        Ok(h) => Ok(h.metadata().cloned().unwrap_or_default()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(Default::default()),
        Err(e) => Err(TriggerError::Io(format!(
            "reading the metadata of s3://{bucket}/{key}: {}",
            aws_sdk_s3::error::DisplayErrorContext(&e)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_a_comma_separated_list() {
        assert_eq!(parse("dev, prod,dev,").unwrap(), vec!["dev", "prod"]);
        assert_eq!(parse("").unwrap(), Vec::<String>::new());
        let e = parse("dev,../prod").unwrap_err();
        assert!(e.contains(METADATA_KEY) && e.contains("../prod"), "{e}");
    }
}
