//! Where a build's SBOM document goes and how an earlier build's is read back: beside the
//! build's result in S3 (`<team root>sboms/<build-id>.spdx.json` or `.cdx.json`, the worker,
//! and `kiln build --checkpoint-bucket`; a prefix of their own, since a build id may hold dots
//! and `results/<id>.spdx.json` would be the result of build `<id>.spdx`), in a local directory
//! (`kiln build`), or nowhere. A
//! document is read back only from this store's own place (the same bucket and team prefix, or
//! the same directory): a `kiln:sbom` tag is a string anyone allowed to tag an image could have
//! written, so it never leads a build to another team's documents or a host file.

use super::Format;
use std::path::PathBuf;

/// The key prefix of SBOM documents under a team's root in the bucket.
pub const PREFIX: &str = "sboms/";

/// The largest SBOM document read back (a distribution's full package set renders to a few MiB:
/// Debian's ~60,000 binary packages would be ~60 MiB in SPDX, so no real image comes near).
pub const MAX_DOC_BYTES: usize = 64 << 20;

/// An error storing or reading an SBOM document.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// S3 refused or could not be reached.
    #[error("SBOM {uri}: S3 {call} failed: {message}")]
    S3 {
        /// The document's location.
        uri: String,
        /// PutObject or GetObject.
        call: &'static str,
        /// What S3 said.
        message: String,
        /// Whether a retry could succeed (throttling, 5xx, transport).
        retryable: bool,
    },
    /// A local file could not be written or read.
    #[error("SBOM {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The document is larger than [`MAX_DOC_BYTES`] or not JSON.
    #[error("SBOM {uri}: {detail}")]
    Bad {
        /// The document's location.
        uri: String,
        /// What is wrong with it.
        detail: String,
    },
}

impl StoreError {
    /// Whether a retry could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::S3 { retryable, .. } => *retryable,
            StoreError::Io { .. } => true,
            StoreError::Bad { .. } => false,
        }
    }
}

/// Where documents are kept.
#[derive(Debug, Clone, Default)]
pub enum Location {
    /// Not kept (the step still reads the packages and reports the changes against the parent).
    #[default]
    Off,
    /// A local directory: `<dir>/<build-id>.<suffix>`.
    Dir(PathBuf),
    /// S3: `s3://<bucket>/<prefix><build-id>.<suffix>`.
    S3 {
        /// The client (the worker's own, which writes results).
        s3: aws_sdk_s3::Client,
        /// The bucket.
        bucket: String,
        /// The key prefix (`<team root>sboms/`).
        prefix: String,
    },
}

/// A build's SBOM target: where, and in which format.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// Where.
    pub location: Location,
    /// Which format new documents are written in (either is read back).
    pub format: Format,
}

/// Whether `name` is a document name this store writes: `<build id>.spdx.json` or `.cdx.json`,
/// a build id being letters, digits, `-`, `_` and `.` (never `..` or `/`).
fn document_name(name: &str) -> bool {
    let Some(id) = name
        .strip_suffix(Format::Spdx.file_suffix())
        .or_else(|| name.strip_suffix(Format::Cyclonedx.file_suffix()))
        .and_then(|s| s.strip_suffix('.'))
    else {
        return false;
    };
    !id.is_empty()
        && !id.starts_with('.')
        && !id.contains("..")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// S3 error codes a retry can get past (S3's own "retry" advice).
const RETRYABLE_CODES: &[&str] = &[
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "Throttling",
];

fn s3_error<E, R>(uri: &str, call: &'static str, e: aws_sdk_s3::error::SdkError<E, R>) -> StoreError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_s3::error::SdkError;
    let retryable = match &e {
        SdkError::ServiceError(s) => RETRYABLE_CODES.contains(&s.err().code().unwrap_or("")),
        SdkError::ConstructionFailure(_) => false,
        _ => true,
    };
    StoreError::S3 {
        uri: uri.to_owned(),
        call,
        message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
        retryable,
    }
}

impl Target {
    /// The document's file name for `build_id`.
    fn name(&self, build_id: &str) -> String {
        format!("{build_id}.{}", self.format.file_suffix())
    }

    /// Where `build_id`'s document is (`None`: not kept). Pure.
    pub fn uri(&self, build_id: &str) -> Option<String> {
        match &self.location {
            Location::Off => None,
            Location::Dir(d) => Some(format!("file://{}", d.join(self.name(build_id)).display())),
            Location::S3 { bucket, prefix, .. } => {
                Some(format!("s3://{bucket}/{prefix}{}", self.name(build_id)))
            }
        }
    }

    /// Writes `doc` as `build_id`'s document and returns where (`None`: not kept). Side
    /// effects: one S3 object or one file (written whole: a temporary file renamed), replacing
    /// an earlier attempt's. Safe to run twice.
    pub async fn put(
        &self,
        build_id: &str,
        doc: &serde_json::Value,
    ) -> Result<Option<String>, StoreError> {
        let Some(uri) = self.uri(build_id) else {
            return Ok(None);
        };
        let body = serde_json::to_vec_pretty(doc).unwrap_or_default();
        match &self.location {
            Location::Off => {}
            Location::Dir(d) => {
                let io = |path: PathBuf| move |source| StoreError::Io { path, source };
                std::fs::create_dir_all(d).map_err(io(d.clone()))?;
                let path = d.join(self.name(build_id));
                let tmp = d.join(format!(".{}.{}", self.name(build_id), std::process::id()));
                // A new file (never through a link someone left at that name).
                {
                    use std::io::Write as _;
                    let _ = std::fs::remove_file(&tmp);
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&tmp)
                        .map_err(io(tmp.clone()))?;
                    f.write_all(&body).map_err(io(tmp.clone()))?;
                }
                std::fs::rename(&tmp, &path).map_err(io(path.clone()))?;
            }
            Location::S3 { s3, bucket, prefix } => {
                s3.put_object()
                    .bucket(bucket)
                    .key(format!("{prefix}{}", self.name(build_id)))
                    .content_type("application/json")
                    .body(body.into())
                    .send()
                    .await
                    .map_err(|e| s3_error(&uri, "PutObject", e))?;
            }
        }
        Ok(Some(uri))
    }

    /// Reads the document at `uri` when it is in this store's own place (see the module's
    /// note); `None` when it is elsewhere, or missing. No side effects.
    pub async fn get(&self, uri: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let bytes = match &self.location {
            Location::Off => return Ok(None),
            Location::Dir(d) => {
                let Some(path) = uri.strip_prefix("file://").map(PathBuf::from) else {
                    return Ok(None);
                };
                let own = path.parent() == Some(d.as_path())
                    && path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(document_name);
                if !own {
                    return Ok(None);
                }
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_file() && m.len() <= MAX_DOC_BYTES as u64 => {}
                    Ok(_) => {
                        return Err(StoreError::Bad {
                            uri: uri.to_owned(),
                            detail: format!("not a regular file of at most {MAX_DOC_BYTES} bytes"),
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(source) => return Err(StoreError::Io { path, source }),
                }
                std::fs::read(&path).map_err(|source| StoreError::Io { path, source })?
            }
            Location::S3 { s3, bucket, prefix } => {
                let Some(key) = uri
                    .strip_prefix("s3://")
                    .and_then(|r| r.strip_prefix(bucket.as_str()))
                    .and_then(|r| r.strip_prefix('/'))
                else {
                    return Ok(None);
                };
                let own = key
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|name| !name.contains('/') && document_name(name));
                if !own {
                    return Ok(None);
                }
                let out = match s3.get_object().bucket(bucket).key(key).send().await {
                    Ok(o) => o,
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                        return Ok(None);
                    }
                    Err(e) => return Err(s3_error(uri, "GetObject", e)),
                };
                if out.content_length().unwrap_or(0) > MAX_DOC_BYTES as i64 {
                    return Err(StoreError::Bad {
                        uri: uri.to_owned(),
                        detail: format!("larger than {MAX_DOC_BYTES} bytes"),
                    });
                }
                out.body
                    .collect()
                    .await
                    .map_err(|e| StoreError::Bad {
                        uri: uri.to_owned(),
                        detail: format!("reading the body: {e}"),
                    })?
                    .into_bytes()
                    .to_vec()
            }
        };
        if bytes.len() > MAX_DOC_BYTES {
            return Err(StoreError::Bad {
                uri: uri.to_owned(),
                detail: format!("larger than {MAX_DOC_BYTES} bytes"),
            });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Bad {
                uri: uri.to_owned(),
                detail: format!("not JSON: {e}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_document_names_of_build_ids_are_read_back() {
        assert!(document_name("b-1.spdx.json"));
        assert!(document_name("nightly_2.cdx.json"));
        for bad in [
            "../x.spdx.json",
            "..spdx.json",
            "x.json",
            ".spdx.json",
            "a/b.spdx.json",
        ] {
            assert!(!document_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_tag_pointing_outside_the_store_reads_nothing() {
        let dir = std::env::temp_dir().join(format!("kiln-sbom-store-{}", std::process::id()));
        let t = Target {
            location: Location::Dir(dir.clone()),
            format: Format::Spdx,
        };
        let doc = serde_json::json!({"spdxVersion": "SPDX-2.3"});
        let uri = t.put("b1", &doc).await.expect("put").expect("uri");
        assert_eq!(t.get(&uri).await.expect("get"), Some(doc));
        // A file outside the store's directory, and a link inside it, are never read.
        std::fs::write(dir.join("secret"), b"{}").expect("write");
        std::os::unix::fs::symlink(dir.join("secret"), dir.join("b2.spdx.json")).expect("link");
        assert_eq!(t.get("file:///etc/passwd").await.expect("outside"), None);
        assert!(
            t.get(&format!("file://{}/b2.spdx.json", dir.display()))
                .await
                .is_err()
        );
        assert_eq!(
            t.get("s3://bucket/results/b1.spdx.json").await.expect("s3"),
            None
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
