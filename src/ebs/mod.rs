//! The EBS direct APIs, for the `direct` backend: a snapshot's blocks read into a local sparse
//! file (`read.rs`; the builder's cache of source snapshots by id in `cache.rs`), the blocks of a
//! local file that differ from a parent snapshot (`delta.rs`), and a child snapshot written from
//! them (`write.rs`: StartSnapshot with the parent, PutSnapshotBlock in parallel, slowing down
//! when throttled, CompleteSnapshot with the aggregate checksum).
//!
//! Everything here is plain files and HTTPS: no volume, no attachment, no device node.

pub mod cache;
pub mod delta;
pub mod read;
pub mod write;

use base64::Engine as _;
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The EBS direct APIs' block size: every block is 512 KiB (AWS, "Concepts for EBS direct APIs":
/// "A block index is a logical index in units of 512 KiB blocks").
pub const BLOCK_SIZE: u64 = 524_288;

/// Blocks read or written at once per snapshot. coldsnap keeps 64 in flight; AWS allows 1,000
/// PutSnapshotBlock and GetSnapshotBlock requests per second per snapshot ("EBS direct APIs
/// quotas"), which 64 requests of ~50 ms each stay under.
pub const IN_FLIGHT: usize = 64;

/// `GiB` in bytes (EBS sizes are whole GiB).
pub const GIB: u64 = 1 << 30;

/// The SHA-256 of each block that holds data, base64 as the APIs carry it, by block index.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockMap {
    /// Block index -> base64 SHA-256 of its 512 KiB.
    pub blocks: BTreeMap<u64, String>,
}

/// The base64 SHA-256 of `data`, as `x-amz-Checksum` carries it. Pure.
pub fn checksum(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))
}

/// CompleteSnapshot's `LINEAR` aggregate: the SHA-256 of the written blocks' raw SHA-256 digests
/// concatenated in ascending block index order, base64. `None` when a checksum is not base64.
pub fn aggregate(written: &BTreeMap<u64, String>) -> Option<String> {
    let mut h = sha2::Sha256::new();
    for c in written.values() {
        h.update(base64::engine::general_purpose::STANDARD.decode(c).ok()?);
    }
    Some(base64::engine::general_purpose::STANDARD.encode(h.finalize()))
}

/// An error from the EBS direct APIs or the local files they read and write.
#[derive(Debug, thiserror::Error)]
pub enum EbsError {
    /// An API call failed.
    #[error("{op} {resource} in {region}: {code}: {message}")]
    Api {
        /// The operation, e.g. `PutSnapshotBlock`.
        op: &'static str,
        /// The snapshot (and block) it was about.
        resource: String,
        /// The region.
        region: String,
        /// The AWS error code, or `Transport`.
        code: String,
        /// The message.
        message: String,
        /// Whether a retry may pass (throttling, outages, transport).
        retryable: bool,
    },
    /// A block's data did not match the checksum the service gave for it.
    #[error(
        "GetSnapshotBlock {snapshot} block {index} in {region}: the data does not match its checksum (a transfer error): retry the build"
    )]
    Corrupt {
        /// The snapshot.
        snapshot: String,
        /// The block index.
        index: u64,
        /// The region.
        region: String,
    },
    /// A local file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// From the host (sparse files, locks).
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    /// The snapshot cannot be used as asked (its size, its state, a missing parent).
    #[error("{0}")]
    Invalid(String),
    /// The build was cancelled.
    #[error("cancelled during {0}")]
    Cancelled(String),
}

impl EbsError {
    /// Whether retrying the build could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            EbsError::Api { retryable, .. } => *retryable,
            EbsError::Corrupt { .. } | EbsError::Cancelled(_) => true,
            EbsError::Host(e) => e.is_retryable(),
            EbsError::Io { .. } | EbsError::Invalid(_) => false,
        }
    }

    /// Whether this is the service asking the caller to slow down.
    pub fn is_throttling(&self) -> bool {
        matches!(self, EbsError::Api { code, .. } if THROTTLING_CODES.contains(&code.as_str()))
    }

    pub(crate) fn io(
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| EbsError::Io { what, path, source }
    }
}

/// The codes with which the EBS direct APIs ask a caller to slow down (API reference, Errors).
const THROTTLING_CODES: &[&str] = &[
    "RequestThrottledException",
    "ThrottlingException",
    "TooManyRequestsException",
];

/// Codes worth a retry besides throttling.
const RETRYABLE_CODES: &[&str] = &[
    "InternalServerException",
    "ServiceUnavailable",
    "InternalError",
];

/// Converts an SDK error into [`EbsError::Api`] with context.
pub fn api<E, R>(
    op: &'static str,
    resource: impl Into<String>,
    region: &str,
) -> impl FnOnce(aws_sdk_ebs::error::SdkError<E, R>) -> EbsError
where
    E: aws_sdk_ebs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let resource = resource.into();
    let region = region.to_owned();
    move |err| {
        use aws_sdk_ebs::error::SdkError;
        let (code, message, retryable) = match &err {
            SdkError::ServiceError(s) => {
                let code = s.err().code().unwrap_or("Unknown").to_owned();
                let retryable = THROTTLING_CODES.contains(&code.as_str())
                    || RETRYABLE_CODES.contains(&code.as_str());
                (code, s.err().message().unwrap_or("").to_owned(), retryable)
            }
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => (
                "Transport".to_owned(),
                format!("{}", aws_sdk_ebs::error::DisplayErrorContext(&err)),
                true,
            ),
            other => (
                "Unknown".to_owned(),
                format!("{}", aws_sdk_ebs::error::DisplayErrorContext(other)),
                false,
            ),
        };
        EbsError::Api {
            op,
            resource,
            region,
            code,
            message,
            retryable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aggregate_is_over_raw_digests_in_index_order() {
        let a = checksum(&[1u8; 16]);
        let b = checksum(&[2u8; 16]);
        let mut m = BTreeMap::new();
        m.insert(7, b.clone());
        m.insert(3, a.clone());
        let mut h = sha2::Sha256::new();
        h.update(sha2::Sha256::digest([1u8; 16]));
        h.update(sha2::Sha256::digest([2u8; 16]));
        let want = base64::engine::general_purpose::STANDARD.encode(h.finalize());
        assert_eq!(aggregate(&m), Some(want));
        m.insert(9, "not base64!".into());
        assert_eq!(aggregate(&m), None);
    }
}
