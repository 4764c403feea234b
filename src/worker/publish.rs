//! A build's way out: the result document and log in S3, the result on the result queue, and the
//! request message deleted or made visible again. Publishing retries transient failures, so a
//! finished build is not reported as failed because S3 hiccuped once.

use super::{Ctx, Delivery};
use crate::pipeline::result::{BuildResult, Failure, RESULT_VERSION, Status};
use crate::team::Team;
use std::time::Duration;

/// Makes a message visible again (on its team's queue) after `delay_s` seconds.
pub(super) async fn release(ctx: &Ctx, d: &Delivery, delay_s: i32) {
    let msg = &d.msg;
    let Some(receipt) = msg.receipt_handle() else {
        return;
    };
    if let Err(e) = ctx
        .clients
        .sqs
        .change_message_visibility()
        .queue_url(&d.lane.queue)
        .receipt_handle(receipt)
        .visibility_timeout(delay_s)
        .send()
        .await
    {
        tracing::error!(message_id = ?msg.message_id(), error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "could not release the message; it reappears when its visibility expires");
    }
}

/// Deletes a message from its team's queue.
pub(super) async fn delete(ctx: &Ctx, d: &Delivery) {
    let msg = &d.msg;
    let Some(receipt) = msg.receipt_handle() else {
        return;
    };
    if let Err(e) = ctx
        .clients
        .sqs
        .delete_message()
        .queue_url(&d.lane.queue)
        .receipt_handle(receipt)
        .send()
        .await
    {
        tracing::error!(message_id = ?msg.message_id(), error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "could not delete the message; it will be delivered again");
    }
}

/// A failure result for a build that never started.
pub fn early_failure(build_id: &str, step: &str, message: String, retryable: bool) -> BuildResult {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    BuildResult {
        version: RESULT_VERSION,
        build_id: build_id.to_owned(),
        build_name: String::new(),
        status: Status::Failed,
        backend: String::new(),
        region: String::new(),
        source_ami: None,
        artifacts: Default::default(),
        steps: Vec::new(),
        error: Some(Failure {
            step: step.to_owned(),
            message,
            retryable,
        }),
        left_behind: Vec::new(),
        started_at: now.clone(),
        finished_at: now,
        duration_s: 0.0,
        bake_key: None,
    }
}

/// The S3 key of a build's result, in its team's part of the bucket.
pub fn result_key(team: &Team, build_id: &str) -> String {
    team.key(&format!("results/{build_id}.json"))
}

/// The S3 key of a build's log, in its team's part of the bucket.
pub fn log_key(team: &Team, build_id: &str) -> String {
    team.key(&format!("logs/{build_id}.log"))
}

/// Attempts at publishing (each after the SDK's own retries): a result that exists must not be
/// lost to a brief S3 or SQS outage. Five attempts, 1 s doubling, span about 15 s.
pub const PUBLISH_ATTEMPTS: u32 = 5;
/// The first pause between publishing attempts (doubling after each).
pub const PUBLISH_BACKOFF: Duration = Duration::from_secs(1);

/// Runs `call` until it succeeds, at most [`PUBLISH_ATTEMPTS`] times; returns the last error.
async fn retried<F, Fut>(what: &str, mut call: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut pause = PUBLISH_BACKOFF;
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < PUBLISH_ATTEMPTS => {
                tracing::warn!(attempt, retry_in_s = pause.as_secs_f64(), error = %e, "{what} failed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes `body` to `key` in the results bucket, once (see [`retried`]).
pub(super) async fn put(
    ctx: &Ctx,
    key: &str,
    body: Vec<u8>,
    content_type: &str,
) -> Result<(), String> {
    ctx.clients
        .s3
        .put_object()
        .bucket(&ctx.cfg.buckets[0])
        .key(key)
        .content_type(content_type)
        .body(body.into())
        .send()
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "s3://{}/{key}: {}",
                ctx.cfg.buckets[0],
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        })
}

/// Writes the result (with its `team`) to the team's results in S3 and to the result queue,
/// each retried (see [`PUBLISH_ATTEMPTS`]). Errors are returned so the message is kept. Safe to
/// run twice (the S3 document is replaced; the result queue may see the result twice, as SQS
/// consumers expect).
pub(super) async fn publish(ctx: &Ctx, team: &Team, result: &BuildResult) -> Result<(), String> {
    let mut doc = serde_json::to_value(result).map_err(|e| e.to_string())?;
    if let Some(o) = doc.as_object_mut() {
        o.insert("team".into(), team.as_str().into());
    }
    let body = serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?;
    let key = result_key(team, &result.build_id);
    retried("writing the result document", || {
        put(ctx, &key, body.clone(), "application/json")
    })
    .await?;
    if let Some(q) = &ctx.cfg.result_queue {
        retried("sending the result", || async {
            ctx.clients
                .sqs
                .send_message()
                .queue_url(q)
                .message_body(String::from_utf8_lossy(&body))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| {
                    format!(
                        "result queue {q}: {}",
                        aws_sdk_sqs::error::DisplayErrorContext(&e)
                    )
                })
        })
        .await?;
    }
    tracing::info!(build_id = %result.build_id, status = ?result.status, "result published");
    Ok(())
}

/// Publishes, then deletes the message; keeps the message if publishing failed.
pub(super) async fn finish(ctx: &Ctx, d: &Delivery, result: &BuildResult) {
    match publish(ctx, &d.lane.team, result).await {
        Ok(()) => delete(ctx, d).await,
        Err(e) => {
            tracing::error!(build_id = %result.build_id, error = %e, "could not publish the result; the message stays for another attempt");
            release(ctx, d, ctx.cfg.retry_delay_s as i32).await;
        }
    }
}

/// The result of a build whose journal says it finished (`status`) but whose result document is
/// missing (publishing failed after the journal was closed): the result the journal kept, or,
/// for a journal without one, a failure that says what is missing.
pub(super) async fn result_from_journal(
    ctx: &Ctx,
    team: &Team,
    build_id: &str,
    status: &str,
) -> BuildResult {
    let kept = crate::checkpoint::read(&ctx.clients.s3, &ctx.cfg.buckets[0], team, build_id)
        .await
        .ok()
        .flatten()
        .and_then(|(j, _)| j.result)
        .and_then(|r| serde_json::from_value::<BuildResult>(r).ok());
    match kept {
        Some(r) => r,
        None => early_failure(
            build_id,
            "checkpoint",
            format!(
                "the build finished ({status}) but neither its result document s3://{}/{} nor its journal holds the result",
                ctx.cfg.buckets[0],
                result_key(team, build_id)
            ),
            false,
        ),
    }
}

/// After a succeeded build a trigger asked for: records its bake key in the template's index
/// (`index/<template key>.json` in the team's part of the bucket), which the next nightly run
/// compares against. A failure is logged: the next nightly run then rebuilds, which is safe.
pub(super) async fn record_bake(
    ctx: &Ctx,
    team: &Team,
    req: &crate::request::BuildRequest,
    result: &BuildResult,
) {
    let Some(bake) = &req.bake else { return };
    if result.status != Status::Succeeded {
        return;
    }
    let entry = serde_json::json!({
        "template": req.template.key,
        "build_id": result.build_id,
        "finished_at": result.finished_at,
        "bake": bake,
        "artifacts": result.artifacts,
    });
    let key = crate::request::index_key(team, &req.template.key);
    let body = serde_json::to_vec_pretty(&entry).unwrap_or_default();
    if let Err(e) = retried("writing the bake index", || {
        put(ctx, &key, body.clone(), "application/json")
    })
    .await
    {
        tracing::error!(build_id = %result.build_id, error = %e, "could not record the bake key; the next nightly run rebuilds");
    }
}

/// A build's log: appended while the build runs, written to S3 periodically and at the end. The
/// first write of an attempt is unconditional (it starts the attempt's log); every later one is a
/// compare-and-swap on the last ETag, so a stalled attempt whose build another worker took over
/// stops writing at its next try instead of overwriting the new owner's log.
#[derive(Default)]
pub(super) struct Log {
    text: std::sync::Mutex<String>,
    /// (ETag of the last write, length written, another writer took over).
    written: tokio::sync::Mutex<(Option<String>, usize, bool)>,
}

impl Log {
    /// Appends a line.
    pub(super) fn push(&self, line: &str) {
        if let Ok(mut t) = self.text.lock() {
            t.push_str(line);
            t.push('\n');
        }
    }

    fn snapshot(&self) -> String {
        self.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Writes the log to `bucket`/`key` if it grew. After another writer replaced it, does
    /// nothing (and says so once).
    pub(super) async fn write(
        &self,
        s3: &aws_sdk_s3::Client,
        bucket: &str,
        key: &str,
    ) -> Result<(), String> {
        let mut w = self.written.lock().await;
        let text = self.snapshot();
        if w.2 || (w.0.is_some() && text.len() == w.1) {
            return Ok(());
        }
        let mut put = s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("text/plain");
        if let Some(etag) = &w.0 {
            put = put.if_match(etag);
        }
        let len = text.len();
        match put.body(text.into_bytes().into()).send().await {
            Ok(o) => {
                *w = (o.e_tag().map(str::to_owned), len, false);
                Ok(())
            }
            Err(e)
                if e.raw_response()
                    .is_some_and(|r| matches!(r.status().as_u16(), 409 | 412)) =>
            {
                w.2 = true;
                Err(format!(
                    "s3://{bucket}/{key} was replaced by another writer (another attempt of this build): this attempt stops writing it"
                ))
            }
            Err(e) => Err(format!(
                "s3://{bucket}/{key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )),
        }
    }
}
