//! Checkpoints: each build's journal in S3 (`checkpoints/<build-id>.json`), created with
//! `If-None-Match: *` and updated with `If-Match: <etag>` (compare-and-swap), holding the outputs
//! of every finished step, the owner (instance and worker) and a lease that the heartbeat renews.
//! Exactly one worker owns a build: a live lease is respected, an expired one is taken over by
//! compare-and-swap, and only one taker wins.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Who runs a build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Owner {
    /// The builder instance.
    pub instance_id: String,
    /// The worker process on it.
    pub worker_id: String,
}

/// The journal document.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Journal {
    /// The build id.
    pub build_id: String,
    /// The current owner.
    pub owner: Option<Owner>,
    /// Unix seconds when the lease ends unless renewed.
    pub lease_expires: u64,
    /// 1 for the first run; each takeover adds one.
    pub attempt: u32,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// `(step, outputs)` in the order the steps finished (all attempts).
    pub steps: Vec<(String, serde_json::Value)>,
}

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// S3 failed.
    #[error("checkpoint s3://{bucket}/{key}: {message}")]
    S3 {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What failed.
        message: String,
    },
    /// Another worker changed the journal (it took the build over).
    #[error("checkpoint of {build_id}: another worker owns the build now")]
    Lost {
        /// The build id.
        build_id: String,
    },
}

impl CheckpointError {
    /// Whether retrying could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CheckpointError::S3 { .. })
    }
}

/// What acquiring a build found.
#[derive(Debug)]
pub enum Acquired {
    /// No journal: this worker starts the build.
    Fresh(JournalHandle),
    /// A journal whose lease had expired (or was ours): taken over; the previous attempts' steps
    /// are in the handle's journal.
    TakenOver(JournalHandle),
    /// A live owner holds it until the given Unix time.
    Held(Owner, u64),
    /// The build finished (`succeeded` or `failed`).
    Finished(String),
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The S3 key of a build's journal.
pub fn key(build_id: &str) -> String {
    format!("checkpoints/{build_id}.json")
}

/// An owned journal: every write is a compare-and-swap on the last ETag.
#[derive(Debug)]
pub struct JournalHandle {
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    lease_s: u64,
    state: Mutex<(Journal, String)>,
    /// One write at a time: the heartbeat and the step writer share the ETag chain.
    writing: tokio::sync::Mutex<()>,
}

fn s3_err(bucket: &str, key: &str, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::S3 {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        message: e.to_string(),
    }
}

fn precondition_failed<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    e.raw_response().is_some_and(|r| r.status().as_u16() == 412)
}

/// Reads a build's journal and its ETag, if it exists.
pub async fn read(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    build_id: &str,
) -> Result<Option<(Journal, String)>, CheckpointError> {
    let key = key(build_id);
    match s3.get_object().bucket(bucket).key(&key).send().await {
        Ok(o) => {
            let etag = o.e_tag().unwrap_or_default().to_owned();
            let bytes = o
                .body
                .collect()
                .await
                .map_err(|e| s3_err(bucket, &key, e))?
                .into_bytes();
            let j: Journal = serde_json::from_slice(&bytes)
                .map_err(|e| s3_err(bucket, &key, format!("not a journal: {e}")))?;
            Ok(Some((j, etag)))
        }
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
        Err(e) => Err(s3_err(
            bucket,
            &key,
            aws_sdk_s3::error::DisplayErrorContext(&e),
        )),
    }
}

/// Acquires build `build_id` for `owner` with a lease of `lease_s` seconds.
///
/// Side effects: creates or updates the journal. Safe to call again: a live lease, this owner's
/// included, is never taken over.
pub async fn acquire(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    build_id: &str,
    owner: &Owner,
    lease_s: u64,
) -> Result<Acquired, CheckpointError> {
    let key = key(build_id);
    let handle = |j: Journal, etag: String| JournalHandle {
        s3: s3.clone(),
        bucket: bucket.to_owned(),
        key: key.clone(),
        lease_s,
        state: Mutex::new((j, etag)),
        writing: tokio::sync::Mutex::new(()),
    };
    match read(s3, bucket, build_id).await? {
        None => {
            let j = Journal {
                build_id: build_id.to_owned(),
                owner: Some(owner.clone()),
                lease_expires: now() + lease_s,
                attempt: 1,
                status: "running".into(),
                steps: Vec::new(),
            };
            let body = serde_json::to_vec(&j).unwrap_or_default();
            match s3
                .put_object()
                .bucket(bucket)
                .key(&key)
                .if_none_match("*")
                .body(body.into())
                .send()
                .await
            {
                Ok(o) => Ok(Acquired::Fresh(handle(
                    j,
                    o.e_tag().unwrap_or_default().to_owned(),
                ))),
                Err(e) if precondition_failed(&e) => match read(s3, bucket, build_id).await? {
                    Some((other, _)) => Ok(Acquired::Held(
                        other.owner.unwrap_or(Owner {
                            instance_id: "?".into(),
                            worker_id: "?".into(),
                        }),
                        other.lease_expires,
                    )),
                    None => Err(s3_err(
                        bucket,
                        &key,
                        "the journal vanished while being created",
                    )),
                },
                Err(e) => Err(s3_err(
                    bucket,
                    &key,
                    aws_sdk_s3::error::DisplayErrorContext(&e),
                )),
            }
        }
        Some((j, etag)) => {
            if j.status != "running" {
                return Ok(Acquired::Finished(j.status));
            }
            // A live lease is respected even when it is this worker's own: another of its build
            // tasks runs the build (a duplicate delivery).
            if j.lease_expires > now() {
                let holder = j.owner.clone().unwrap_or(Owner {
                    instance_id: "?".into(),
                    worker_id: "?".into(),
                });
                return Ok(Acquired::Held(holder, j.lease_expires));
            }
            let mut next = j.clone();
            next.owner = Some(owner.clone());
            next.lease_expires = now() + lease_s;
            next.attempt += 1;
            let body = serde_json::to_vec(&next).unwrap_or_default();
            match s3
                .put_object()
                .bucket(bucket)
                .key(&key)
                .if_match(&etag)
                .body(body.into())
                .send()
                .await
            {
                Ok(o) => Ok(Acquired::TakenOver(handle(
                    next,
                    o.e_tag().unwrap_or_default().to_owned(),
                ))),
                Err(e) if precondition_failed(&e) => Ok(Acquired::Held(
                    j.owner.unwrap_or(Owner {
                        instance_id: "?".into(),
                        worker_id: "?".into(),
                    }),
                    now() + lease_s,
                )),
                Err(e) => Err(s3_err(
                    bucket,
                    &key,
                    aws_sdk_s3::error::DisplayErrorContext(&e),
                )),
            }
        }
    }
}

impl JournalHandle {
    /// The journal as last written.
    pub fn journal(&self) -> Journal {
        self.state.lock().map(|s| s.0.clone()).unwrap_or_default()
    }

    async fn update(&self, change: impl FnOnce(&mut Journal)) -> Result<(), CheckpointError> {
        let _one_at_a_time = self.writing.lock().await;
        let (mut next, etag) = self
            .state
            .lock()
            .map(|s| s.clone())
            .map_err(|_| s3_err(&self.bucket, &self.key, "poisoned"))?;
        change(&mut next);
        let body = serde_json::to_vec(&next).unwrap_or_default();
        match self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .if_match(&etag)
            .body(body.into())
            .send()
            .await
        {
            Ok(o) => {
                if let Ok(mut s) = self.state.lock() {
                    *s = (next, o.e_tag().unwrap_or_default().to_owned());
                }
                Ok(())
            }
            Err(e) if precondition_failed(&e) => Err(CheckpointError::Lost {
                build_id: next.build_id,
            }),
            Err(e) => Err(s3_err(
                &self.bucket,
                &self.key,
                aws_sdk_s3::error::DisplayErrorContext(&e),
            )),
        }
    }

    /// Records a finished step and renews the lease.
    pub async fn record(
        &self,
        step: &str,
        outputs: &serde_json::Value,
    ) -> Result<(), CheckpointError> {
        let lease = self.lease_s;
        self.update(|j| {
            j.steps.push((step.to_owned(), outputs.clone()));
            j.lease_expires = now() + lease;
        })
        .await
    }

    /// Renews the lease (the heartbeat calls this).
    pub async fn renew(&self) -> Result<(), CheckpointError> {
        let lease = self.lease_s;
        self.update(|j| j.lease_expires = now() + lease).await
    }

    /// Marks the build finished.
    pub async fn finish(&self, status: &str) -> Result<(), CheckpointError> {
        self.update(|j| j.status = status.to_owned()).await
    }

    /// Gives the build up (lease ends now), e.g. when a drain cancelled it.
    pub async fn release(&self) -> Result<(), CheckpointError> {
        self.update(|j| j.lease_expires = 0).await
    }
}
