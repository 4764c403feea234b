//! Checkpoints: each build's journal in S3 (`checkpoints/<build-id>.json`), created with
//! `If-None-Match: *` and updated with `If-Match: <etag>` (compare-and-swap), holding the outputs
//! of every finished step, the owner (instance and worker) and a lease that the heartbeat renews.
//! Exactly one worker owns a build: a live lease is respected, an expired one is taken over by
//! compare-and-swap, and only one taker wins.

use crate::team::Team;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

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
    /// A random id made with the journal: tags and idempotency tokens name it, so a forced
    /// rebuild (a new journal under the same build id) never reuses the previous build's
    /// resources or tokens (see `ec2::BuildRef`).
    #[serde(default)]
    pub generation: String,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// `(step, outputs)` in the order the steps finished (all attempts).
    pub steps: Vec<(String, serde_json::Value)>,
    /// How many times the journal was written (all attempts): its cost in S3 requests.
    #[serde(default)]
    pub writes: u64,
    /// The published result document, once the build finished: a redelivered request whose
    /// result document is missing (a publish that failed after the journal was closed) is
    /// answered with it instead of building again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
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

/// The S3 key of a build's journal: `checkpoints/<id>.json` in the team's part of the bucket.
pub fn key(team: &Team, build_id: &str) -> String {
    team.key(&format!("checkpoints/{build_id}.json"))
}

/// An owned journal: every write is a compare-and-swap on the last ETag.
#[derive(Debug)]
pub struct JournalHandle {
    s3: aws_sdk_s3::Client,
    bucket: String,
    team: Team,
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

/// Whether a conditional write lost to another write: 412 (the ETag or the key's absence no
/// longer holds) or 409 `ConditionalRequestConflict` (another conditional write to the key was in
/// flight). Either way the journal must be read again before deciding who owns the build.
fn precondition_failed<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    e.raw_response()
        .is_some_and(|r| matches!(r.status().as_u16(), 409 | 412))
}

/// Reads a build's journal and its ETag, if it exists.
pub async fn read(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    team: &Team,
    build_id: &str,
) -> Result<Option<(Journal, String)>, CheckpointError> {
    Ok(read_dated(s3, bucket, team, build_id)
        .await?
        .map(|(j, etag, _)| (j, etag)))
}

/// Like [`read`], with the Unix time S3 last wrote the journal (its `Last-Modified`): how long
/// ago its owner was last heard of, whatever its lease says (a released lease is 0).
pub async fn read_dated(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    team: &Team,
    build_id: &str,
) -> Result<Option<(Journal, String, Option<u64>)>, CheckpointError> {
    let key = key(team, build_id);
    match s3.get_object().bucket(bucket).key(&key).send().await {
        Ok(o) => {
            let etag = o.e_tag().unwrap_or_default().to_owned();
            let written = o.last_modified().map(|t| t.secs().max(0) as u64);
            let bytes = o
                .body
                .collect()
                .await
                .map_err(|e| s3_err(bucket, &key, e))?
                .into_bytes();
            let j: Journal = serde_json::from_slice(&bytes)
                .map_err(|e| s3_err(bucket, &key, format!("not a journal: {e}")))?;
            Ok(Some((j, etag, written)))
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
    team: &Team,
    build_id: &str,
    owner: &Owner,
    lease_s: u64,
) -> Result<Acquired, CheckpointError> {
    let key = key(team, build_id);
    let handle = |j: Journal, etag: String| JournalHandle {
        s3: s3.clone(),
        bucket: bucket.to_owned(),
        team: team.clone(),
        key: key.clone(),
        lease_s,
        state: Mutex::new((j, etag)),
        writing: tokio::sync::Mutex::new(()),
    };
    match read(s3, bucket, team, build_id).await? {
        None => {
            let j = Journal {
                build_id: build_id.to_owned(),
                owner: Some(owner.clone()),
                lease_expires: now() + lease_s,
                attempt: 1,
                generation: uuid::Uuid::new_v4().simple().to_string(),
                status: "running".into(),
                steps: Vec::new(),
                writes: 1,
                result: None,
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
                Err(e) if precondition_failed(&e) => {
                    match read(s3, bucket, team, build_id).await? {
                        Some((other, _)) => Ok(Acquired::Held(
                            other.owner.unwrap_or(Owner {
                                instance_id: "?".into(),
                                worker_id: "?".into(),
                            }),
                            other.lease_expires,
                        )),
                        // Another creation was in flight (409) and has not landed: it owns the build.
                        None => Ok(Acquired::Held(
                            Owner {
                                instance_id: "?".into(),
                                worker_id: "?".into(),
                            },
                            now() + 1,
                        )),
                    }
                }
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
            next.writes += 1;
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

    /// Writes the journal as `change` makes it, by compare-and-swap on the last ETag.
    ///
    /// A precondition failure is ambiguous: another owner wrote, or a write of this handle went
    /// through although its reply was lost (the SDK then retried it, or the caller saw an error).
    /// The journal is read again: if its owner and attempt are still this handle's, the write
    /// stands on top of what is there; otherwise the build is [`CheckpointError::Lost`].
    async fn update(&self, change: impl FnOnce(&mut Journal)) -> Result<(), CheckpointError> {
        let _one_at_a_time = self.writing.lock().await;
        let (mut next, mut etag) = self
            .state
            .lock()
            .map(|s| s.clone())
            .map_err(|_| s3_err(&self.bucket, &self.key, "poisoned"))?;
        change(&mut next);
        next.writes += 1;
        let body = serde_json::to_vec(&next).unwrap_or_default();
        for _ in 0..AMBIGUOUS_WRITE_RETRIES {
            match self
                .s3
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .if_match(&etag)
                .body(body.clone().into())
                .send()
                .await
            {
                Ok(o) => {
                    if let Ok(mut s) = self.state.lock() {
                        *s = (next, o.e_tag().unwrap_or_default().to_owned());
                    }
                    return Ok(());
                }
                Err(e) if precondition_failed(&e) => {
                    let build_id = next.build_id.clone();
                    match read(&self.s3, &self.bucket, &self.team, &build_id).await? {
                        Some((there, there_etag))
                            if there.owner == next.owner && there.attempt == next.attempt =>
                        {
                            tracing::info!(key = %self.key, "a journal write found this worker's own earlier write (its reply was lost); writing on top of it");
                            etag = there_etag;
                        }
                        _ => return Err(CheckpointError::Lost { build_id }),
                    }
                }
                Err(e) => {
                    return Err(s3_err(
                        &self.bucket,
                        &self.key,
                        aws_sdk_s3::error::DisplayErrorContext(&e),
                    ));
                }
            }
        }
        Err(s3_err(
            &self.bucket,
            &self.key,
            "the journal kept changing under this worker's own writes",
        ))
    }

    /// Records finished steps, in order, renews the lease and, with `status`, marks the build
    /// finished, in one conditional write.
    pub async fn record_all(
        &self,
        steps: &[(String, serde_json::Value)],
        status: Option<&str>,
    ) -> Result<(), CheckpointError> {
        let lease = self.lease_s;
        self.update(|j| {
            j.steps.extend_from_slice(steps);
            j.lease_expires = now() + lease;
            if let Some(s) = status {
                j.status = s.to_owned();
            }
        })
        .await
    }

    /// Renews the lease (the heartbeat calls this).
    pub async fn renew(&self) -> Result<(), CheckpointError> {
        let lease = self.lease_s;
        self.update(|j| j.lease_expires = now() + lease).await
    }

    /// Marks the build finished, keeping its result document (see [`Journal::result`]).
    pub async fn finish(
        &self,
        status: &str,
        result: Option<serde_json::Value>,
    ) -> Result<(), CheckpointError> {
        self.update(|j| {
            j.status = status.to_owned();
            j.result = result;
        })
        .await
    }

    /// Gives the build up (lease ends now), e.g. when a drain cancelled it.
    pub async fn release(&self) -> Result<(), CheckpointError> {
        self.update(|j| j.lease_expires = 0).await
    }
}

/// Writes tried when a compare-and-swap fails but the journal is still this worker's (see
/// `JournalHandle::update`): one for the lost reply, one more for a concurrent writer of this
/// handle's own; a third failure means something else keeps writing it.
pub const AMBIGUOUS_WRITE_RETRIES: usize = 3;

/// How long the journal writer waits after a step finishes for more steps to put in the same
/// write. Most steps take milliseconds against EC2's control plane, so without it a build makes a
/// write per step (16 in the pipeline bench, each also load on a shared S3 endpoint); with it,
/// bursts of fast steps share one. 100 ms is small next to any step worth resuming from, and a
/// step whose record is lost in a crash is found again by its tags.
pub const JOURNAL_BATCH_WINDOW: Duration = Duration::from_millis(100);

/// Called when a journal write finds that another worker owns the build now (it may be called
/// more than once; the callee makes that harmless).
pub type OnLost = Arc<dyn Fn(&CheckpointError) + Send + Sync>;

/// The usual [`OnLost`]: logs once, then cancels `handed_over` (which tells the pipeline to leave
/// the snapshot and AMIs to the new owner) and the build's own token `build`.
pub fn hand_over(
    build_id: &str,
    handed_over: CancellationToken,
    build: CancellationToken,
) -> OnLost {
    let build_id = build_id.to_owned();
    Arc::new(move |e: &CheckpointError| {
        if !handed_over.is_cancelled() {
            tracing::warn!(build_id = %build_id, error = %e, "another worker took this build over; stopping this attempt");
        }
        handed_over.cancel();
        build.cancel();
    })
}

/// Writes each step to the build's journal in order, off the build's critical path: a writer
/// task makes the compare-and-swap writes while the next step runs, and steps that finished while
/// it was writing go together in its next write (fast steps do not queue up a write each, so the
/// build rarely waits for the journal at the end). A write lost in a crash is
/// harmless (what a step made is found again by the build's tags); `flush` waits for the writes
/// before the journal is marked finished. A write that finds another owner calls `on_lost` and
/// ends the writing.
pub struct JournalRecorder {
    tx: Mutex<Option<tokio::sync::mpsc::UnboundedSender<(String, serde_json::Value)>>>,
    /// Steps sent to the writer, and (watched) steps it wrote or gave up on.
    sent: std::sync::atomic::AtomicUsize,
    done: tokio::sync::watch::Receiver<usize>,
    writer: Mutex<Option<tokio::task::JoinHandle<Result<(), CheckpointError>>>>,
    /// The status the last write sets, when [`JournalRecorder::finish`] closes the journal.
    status: Arc<Mutex<Option<String>>>,
}

impl JournalRecorder {
    /// Starts the writer task (needs a Tokio runtime).
    pub fn new(journal: Arc<JournalHandle>, on_lost: OnLost) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, serde_json::Value)>();
        let status: Arc<Mutex<Option<String>>> = Arc::default();
        let final_status = Arc::clone(&status);
        let (done_tx, done) = tokio::sync::watch::channel(0usize);
        let writer = tokio::spawn(async move {
            let mut written = 0usize;
            // Steps not yet written: a failed write keeps them for the next one.
            let mut pending = Vec::new();
            let mut open = true;
            while open {
                match rx.recv().await {
                    Some(first) => pending.push(first),
                    None => break,
                }
                // Steps that finish soon after go in the same write.
                let window = tokio::time::sleep(JOURNAL_BATCH_WINDOW);
                tokio::pin!(window);
                loop {
                    tokio::select! {
                        next = rx.recv() => match next {
                            Some(n) => pending.push(n),
                            None => {
                                open = false;
                                break;
                            }
                        },
                        _ = &mut window => break,
                    }
                }
                if !open {
                    // Closed: the last write below takes these steps and the final status.
                    break;
                }
                match journal.record_all(&pending, None).await {
                    Ok(()) => {
                        written += pending.len();
                        done_tx.send_replace(written);
                        pending.clear();
                    }
                    Err(e @ CheckpointError::Lost { .. }) => {
                        done_tx.send_replace(usize::MAX);
                        on_lost(&e);
                        return Err(e);
                    }
                    Err(e) => {
                        let steps: Vec<&str> = pending.iter().map(|(s, _)| s.as_str()).collect();
                        tracing::error!(key = %journal.key, ?steps, error = %e, "could not write the checkpoint; trying again with the next step");
                    }
                }
            }
            let status = final_status.lock().ok().and_then(|mut s| s.take());
            if pending.is_empty() && status.is_none() {
                return Ok(());
            }
            let last = journal.record_all(&pending, status.as_deref()).await;
            done_tx.send_replace(usize::MAX);
            if let Err(e @ CheckpointError::Lost { .. }) = &last {
                on_lost(e);
            }
            last
        });
        Self {
            tx: Mutex::new(Some(tx)),
            sent: std::sync::atomic::AtomicUsize::new(0),
            done,
            writer: Mutex::new(Some(writer)),
            status,
        }
    }

    /// Waits until every recorded step is written; later records are dropped. Returns the last
    /// write's error (earlier ones are logged). Safe to call twice (the second does nothing).
    pub async fn flush(&self) -> Result<(), CheckpointError> {
        drop(self.tx.lock().ok().and_then(|mut t| t.take()));
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        match writer {
            Some(w) => w.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    /// Like [`JournalRecorder::flush`], and marks the build finished (`succeeded` or `failed`)
    /// in the same last write.
    pub async fn finish(&self, status: &str) -> Result<(), CheckpointError> {
        if let Ok(mut s) = self.status.lock() {
            *s = Some(status.to_owned());
        }
        self.flush().await
    }
}

impl crate::pipeline::state::Recorder for JournalRecorder {
    fn record<'a>(
        &'a self,
        _build_id: &'a str,
        step: &'a str,
        outputs: &'a serde_json::Value,
    ) -> futures_util::future::BoxFuture<'a, ()> {
        if let Ok(guard) = self.tx.lock()
            && let Some(tx) = guard.as_ref()
            && tx.send((step.to_owned(), outputs.clone())).is_ok()
        {
            self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Box::pin(async {})
    }

    fn written(&self) -> futures_util::future::BoxFuture<'_, ()> {
        let want = self.sent.load(std::sync::atomic::Ordering::SeqCst);
        let mut done = self.done.clone();
        Box::pin(async move {
            // The writer ending (channel closed) also ends the wait.
            let _ = done.wait_for(|n| *n >= want).await;
        })
    }
}

/// Renews the lease every `every` (the first time `every` from now: acquiring just set it) until
/// `stop` is cancelled. A renewal that finds another owner calls `on_lost` and ends the task; other
/// failures are logged and retried at the next beat.
pub fn spawn_renewal(
    journal: Arc<JournalHandle>,
    every: Duration,
    on_lost: OnLost,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            match journal.renew().await {
                Ok(()) => {}
                Err(e @ CheckpointError::Lost { .. }) => {
                    on_lost(&e);
                    return;
                }
                Err(e) => {
                    tracing::warn!(key = %journal.key, error = %e, "could not renew the lease")
                }
            }
        }
    })
}
