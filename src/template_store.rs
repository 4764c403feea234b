//! A template's files in S3: the template and every file beside it (its S3 "directory"), listed
//! within the limits a worker fetches ([`crate::request::MAX_TEMPLATE_FILES`] and
//! [`crate::request::MAX_TEMPLATE_BYTES`]). The worker fetches them; the trigger hashes them.

use crate::request::{MAX_TEMPLATE_BYTES, MAX_TEMPLATE_FILES};

/// Why a template's files cannot be listed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ListError {
    /// What failed, naming the bucket and prefix.
    pub message: String,
    /// Whether trying again could help (S3 failed) or not (too many files).
    pub retryable: bool,
}

/// The template's working-directory prefix — `root` when given (`kiln submit` uploads a
/// template with the files it references, relative to the working directory), otherwise the
/// template `key`'s own directory (`a/b/` for `a/b/t.pkr.hcl`; `None` at the top) — and the keys
/// to fetch: the template first, then every file below the prefix (recursively, no folders).
///
/// Side effects: one ListObjectsV2. Safe to call again.
pub async fn keys(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    root: Option<&str>,
) -> Result<(Option<String>, Vec<String>), ListError> {
    let prefix = match root
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| !r.is_empty())
    {
        Some(r) => Some(format!("{r}/")),
        None => key.rsplit_once('/').map(|(p, _)| format!("{p}/")),
    };
    let mut keys = vec![key.to_owned()];
    let Some(p) = &prefix else {
        return Ok((prefix, keys));
    };
    let out = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(p)
        .max_keys(MAX_TEMPLATE_FILES as i32 + 1)
        .send()
        .await
        .map_err(|e| ListError {
            message: format!(
                "listing s3://{bucket}/{p}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ),
            retryable: true,
        })?;
    let listed: Vec<(String, i64)> = out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(|k| (k.to_owned(), o.size().unwrap_or(0))))
        .collect();
    if listed.len() > MAX_TEMPLATE_FILES
        || listed.iter().map(|(_, s)| *s as u64).sum::<u64>() > MAX_TEMPLATE_BYTES
    {
        return Err(ListError {
            message: format!(
                "s3://{bucket}/{p} holds more than {MAX_TEMPLATE_FILES} files or {MAX_TEMPLATE_BYTES} bytes: put the template in a directory of its own"
            ),
            retryable: false,
        });
    }
    keys.extend(
        listed
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k != key && !k.ends_with('/')),
    );
    Ok((prefix, keys))
}

/// `key`'s path below `prefix`, or `None` when it would leave the template's directory (`..`,
/// empty components).
pub fn relative(prefix: Option<&str>, key: &str) -> Option<String> {
    let rel = match prefix {
        Some(p) => key.strip_prefix(p).unwrap_or(key).to_owned(),
        None => key.to_owned(),
    };
    (!rel.split('/').any(|c| c == ".." || c.is_empty())).then_some(rel)
}
