//! One build request's handling, from the message to its end: parse and vet the request, answer
//! a finished build id from its result (or journal), take the build's checkpoint journal, keep the
//! message and the lease alive while the pipeline runs, stream the log, then publish the result and
//! delete the message, or make it visible again for a retry, a drain or the dead-letter queue.
//!
//! A panic anywhere in a build (its template's load, its pipeline outside the steps, which the
//! engine contains itself) fails that build with the panic's message, like any other failure: the
//! heartbeat and the lease stop, the result is published, and the worker goes on with its other
//! builds. A template is evaluated with an allow-listed environment
//! ([`contain::TEMPLATE_ENV`]), never the worker's own (`AWS_*`, `KILN_*`).

use super::publish::{Log, delete, finish, publish, record_bake, release, result_from_journal};
use super::{Ctx, Delivery, LOG_FLUSH, early_failure, log_key, metrics, request, result_key};
use crate::checkpoint::{self, Acquired, JournalRecorder};
use crate::pipeline::result::{BuildResult, Status};
use crate::pipeline::{self, BuildOptions, OnError};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use request::BuildRequest;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod contain;
mod load;
mod park;
mod timeout;

use contain::{caught, panicked};
use park::park;
use timeout::watch_timeout;

/// Handles one message to the end: never panics the worker, never loses the message.
pub(super) async fn handle(ctx: &Ctx, d: Delivery, cancel: CancellationToken) {
    let Some(Accepted {
        req,
        build_id,
        receive_count,
        queue_wait_s,
    }) = accept(ctx, &d).await
    else {
        return;
    };
    let team = d.lane.team.clone();
    let span = tracing::info_span!("build", build_id = %build_id, team = %team, message_id = d.msg.message_id().unwrap_or("unknown"));
    let _enter = span.enter();
    if answered_before(ctx, &d, &req, &build_id).await {
        return;
    }
    let Some(journal) = acquire(ctx, &d, &req, &build_id).await else {
        return;
    };
    // Cancelled (with `cancel`) when a journal write finds that another worker took the build
    // over after this one's lease lapsed (a stalled host): the build stops, undoes only what is
    // its own, and publishes nothing.
    let handed_over = CancellationToken::new();
    // Heartbeat: renew the lease and keep the message invisible while the build runs.
    let hb_stop = CancellationToken::new();
    // Stops the heartbeat and the lease renewal even if this function unwinds.
    let _hb_guard = hb_stop.clone().drop_guard();
    let visibility = ctx.cfg.visibility_s.max(3);
    let on_lost = checkpoint::hand_over(&build_id, handed_over.clone(), cancel.clone());
    let renewal = checkpoint::spawn_renewal(
        Arc::clone(&journal),
        Duration::from_secs(visibility / 3),
        Arc::clone(&on_lost),
        hb_stop.clone(),
    );
    let heartbeat = spawn_heartbeat(ctx, &d, &build_id, visibility, &hb_stop, &handed_over);
    let log = Arc::new(Log::default());
    let work = ctx
        .cfg
        .work_dir
        .join(team.as_str())
        .join(&build_id)
        .join(uuid::Uuid::new_v4().simple().to_string());
    let recorder = Arc::new(JournalRecorder::new(Arc::clone(&journal), on_lost));
    ctx.in_flight
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    // The build's own token: its timeout cancels it (and its undo runs) without being taken for
    // a drain; a drain or a hand-over (the parent) cancels it too.
    let build_cancel = cancel.child_token();
    let (timed_out, watch) = watch_timeout(ctx, &build_id, &build_cancel);
    let outcome = caught(run_request(
        ctx,
        &d,
        &req,
        &build_id,
        &work,
        Arc::clone(&log),
        &build_cancel,
        &handed_over,
        Arc::clone(&recorder) as Arc<dyn crate::pipeline::state::Recorder>,
        journal.journal(),
    ))
    .await
    .unwrap_or_else(|p| panicked(&build_id, "build", &p));
    // Builds running when this one ended, itself included.
    let running = ctx
        .in_flight
        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    watch.abort();
    // Wait for the aborted watcher (it may be running on another thread right now), so it cannot
    // count the slot as hung after this build ended.
    let _ = watch.await;
    if let Some(hung) = timed_out.hung.lock().ok().and_then(|mut h| h.take()) {
        hung.finished();
    }
    let mut outcome = outcome;
    // A build that finished as its timeout fired keeps its result.
    if timed_out.fired.is_cancelled()
        && !cancel.is_cancelled()
        && outcome.status != Status::Succeeded
    {
        outcome.status = Status::Failed;
        let step = outcome
            .error
            .as_ref()
            .map(|e| e.step.clone())
            .unwrap_or_default();
        outcome.error = Some(crate::pipeline::result::Failure {
            step,
            message: format!(
                "the build ran longer than build_timeout_s ({} s) and was cancelled; what it made was undone",
                ctx.cfg.build_timeout_s
            ),
            retryable: false,
        });
    }
    outcome.bake_key = req.bake.as_ref().map(|b| b.key.clone());
    if let Err(e) = recorder.flush().await {
        tracing::error!(build_id = %build_id, error = %e, "could not write the last checkpoint");
    }
    hb_stop.cancel();
    let _ = heartbeat.await;
    let _ = renewal.await;
    if handed_over.is_cancelled() {
        // The new owner publishes the result, writes the journal and the log, and deletes the
        // message (this receipt is stale): nothing of that is this attempt's to touch.
        let _ = std::fs::remove_dir_all(&work);
        tracing::warn!(build_id = %build_id, left_behind = ?outcome.left_behind, "stopped: another worker owns this build now; its snapshot and AMIs are left to it");
        return;
    }
    let finished = Finished {
        req: &req,
        build_id: &build_id,
        receive_count,
        queue_wait_s,
        running,
    };
    conclude(ctx, &d, &journal, outcome, &log, &work, &cancel, finished).await;
}

/// A message that is a well-formed request for a trusted bucket.
struct Accepted {
    req: BuildRequest,
    build_id: String,
    receive_count: u32,
    queue_wait_s: Option<f64>,
}

/// Parses the message; a malformed request or an untrusted bucket is answered (a failed result,
/// the message deleted) and gives `None`.
async fn accept(ctx: &Ctx, d: &Delivery) -> Option<Accepted> {
    let msg = &d.msg;
    let message_id = msg.message_id().unwrap_or("unknown").to_owned();
    let receive_count: u32 = msg
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    // From SendMessage to now (the last delivery's wait, for a redelivered message).
    let queue_wait_s = msg
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|t| t.parse::<u64>().ok())
        .map(|sent| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(sent);
            now.saturating_sub(sent) as f64 / 1000.0
        });
    let body = msg.body().unwrap_or("");
    let req = match request::parse(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(message_id, error = %e, "rejected a malformed message");
            finish(
                ctx,
                d,
                &early_failure(
                    &format!("invalid-{message_id}"),
                    "request",
                    e.to_string(),
                    false,
                ),
            )
            .await;
            return None;
        }
    };
    // A request without a build id names the same build at every delivery of its message.
    let build_id = req
        .build_id
        .clone()
        .unwrap_or_else(|| request::derived_build_id(&message_id, body));
    if !ctx.cfg.buckets.contains(&req.template.bucket) {
        let msg_text = format!(
            "the template bucket {} is not trusted by this worker (trusted: {}); ask its operators to add it with --bucket",
            req.template.bucket,
            ctx.cfg.buckets.join(", ")
        );
        finish(
            ctx,
            d,
            &early_failure(&build_id, "request", msg_text, false),
        )
        .await;
        return None;
    }
    let team = &d.lane.team;
    // The root (`kiln submit`'s upload prefix) is fetched whole: it must be the team's too, and
    // hold the template.
    let root_refused = req.template.root.as_ref().and_then(|root| {
        let root = root.trim_end_matches('/');
        let ok = !root.is_empty()
            && team.owns_template_key(&format!("{root}/"))
            && req.template.key.starts_with(&format!("{root}/"));
        (!ok).then(|| {
            format!(
                "template.root {root:?} is not team {team}'s or does not hold template.key {:?}: a root is a prefix under s3://{}/{}templates/ or {}submissions/ that holds the template",
                req.template.key,
                req.template.bucket,
                team.key_root(),
                team.key_root(),
            )
        })
    });
    if let Some(msg_text) = root_refused {
        tracing::warn!(build_id = %build_id, team = %team, root = ?req.template.root, "refused a template root outside the team's prefix");
        finish(
            ctx,
            d,
            &early_failure(&build_id, "request", msg_text, false),
        )
        .await;
        return None;
    }
    if !team.owns_template_key(&req.template.key) {
        let msg_text = format!(
            "template.key {:?} is not team {team}'s: a request on team {team}'s queue builds templates under s3://{}/{}templates/ or {}submissions/ only",
            req.template.key,
            req.template.bucket,
            team.key_root(),
            team.key_root(),
        );
        tracing::warn!(build_id = %build_id, team = %team, key = %req.template.key, "refused a template outside the team's prefix");
        finish(
            ctx,
            d,
            &early_failure(&build_id, "request", msg_text, false),
        )
        .await;
        return None;
    }
    Some(Accepted {
        req,
        build_id,
        receive_count,
        queue_wait_s,
    })
}

/// Whether the build id already finished: its result is published again (unless `force`) and the
/// message deleted, or released to try the answer again.
async fn answered_before(ctx: &Ctx, d: &Delivery, req: &BuildRequest, build_id: &str) -> bool {
    // A build id that already finished: answer with its result instead of building again.
    if !req.force
        && let Ok(o) = ctx
            .clients
            .s3
            .get_object()
            .bucket(&ctx.cfg.buckets[0])
            .key(result_key(&d.lane.team, build_id))
            .send()
            .await
        && let Ok(bytes) = o.body.collect().await
        && let Ok(existing) = serde_json::from_slice::<serde_json::Value>(&bytes.into_bytes())
        && existing["status"] != "running"
        // Only a result document of this very build (never another document at that key).
        && existing["build_id"] == build_id
    {
        tracing::info!(build_id = %build_id, "this build id already finished; answering with its result (set force to build again)");
        if let Some(q) = &ctx.cfg.result_queue
            && let Err(e) = ctx
                .clients
                .sqs
                .send_message()
                .queue_url(q)
                .message_body(existing.to_string())
                .send()
                .await
        {
            tracing::error!(build_id = %build_id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "could not re-publish the result");
            release(ctx, d, ctx.cfg.retry_delay_s as i32).await;
            return true;
        }
        delete(ctx, d).await;
        return true;
    }
    false
}

/// The build's journal, acquired for this worker (a forced rebuild first clears a finished one);
/// `None` when another worker holds it or the journal cannot be read (the message is released), or
/// the build finished (its result published from the journal).
async fn acquire(
    ctx: &Ctx,
    d: &Delivery,
    req: &BuildRequest,
    build_id: &str,
) -> Option<Arc<checkpoint::JournalHandle>> {
    let team = &d.lane.team;
    // Exactly one worker runs a build: the journal's lease decides.
    let lease = ctx.cfg.visibility_s.max(3);
    if req.force
        && let Ok(Some((j, _))) =
            checkpoint::read(&ctx.clients.s3, &ctx.cfg.buckets[0], team, build_id).await
        && j.status != "running"
    {
        let _ = ctx
            .clients
            .s3
            .delete_object()
            .bucket(&ctx.cfg.buckets[0])
            .key(checkpoint::key(team, build_id))
            .send()
            .await;
    }
    let journal = match checkpoint::acquire(
        &ctx.clients.s3,
        &ctx.cfg.buckets[0],
        team,
        build_id,
        &ctx.owner,
        lease,
    )
    .await
    {
        Ok(Acquired::Fresh(h)) => Arc::new(h),
        Ok(Acquired::TakenOver(h)) => {
            tracing::warn!(build_id = %build_id, attempt = h.journal().attempt, "resuming a build an earlier attempt started");
            Arc::new(h)
        }
        Ok(Acquired::Held(owner, until)) => {
            tracing::info!(build_id = %build_id, owner = ?owner, lease_until = until, "a duplicate of a running build; parked until its owner is done");
            park(ctx, d, req, build_id, until).await;
            return None;
        }
        Ok(Acquired::Finished(status)) => {
            tracing::info!(build_id = %build_id, status, "this build finished but its result document is missing; publishing the result its journal kept");
            let r = result_from_journal(ctx, team, build_id, &status).await;
            finish(ctx, d, &r).await;
            return None;
        }
        Err(e) => {
            tracing::error!(build_id = %build_id, error = %e, "cannot read or write the checkpoint; trying again later");
            release(ctx, d, ctx.cfg.retry_delay_s as i32).await;
            return None;
        }
    };
    Some(journal)
}

/// Keeps the message invisible while the build runs (every third of the visibility timeout),
/// until `stop`, or until the build is `lost` to another worker.
fn spawn_heartbeat(
    ctx: &Ctx,
    d: &Delivery,
    build_id: &str,
    visibility: u64,
    stop: &CancellationToken,
    lost: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let sqs = ctx.clients.sqs.clone();
    let queue = d.lane.queue.clone();
    let receipt = d.msg.receipt_handle().unwrap_or_default().to_owned();
    let (stop, lost, id) = (stop.clone(), lost.clone(), build_id.to_owned());
    tokio::spawn(async move {
        // Once the build is lost the message is the new owner's: stop extending it.
        while !lost.is_cancelled() {
            if let Err(e) = sqs
                .change_message_visibility()
                .queue_url(&queue)
                .receipt_handle(&receipt)
                .visibility_timeout(visibility as i32)
                .send()
                .await
            {
                tracing::warn!(build_id = %id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "heartbeat failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(visibility / 3)) => {}
                _ = stop.cancelled() => return,
                _ = lost.cancelled() => return,
            }
        }
    })
}

/// What [`conclude`] needs to know of the build besides its outcome.
struct Finished<'a> {
    req: &'a BuildRequest,
    build_id: &'a str,
    receive_count: u32,
    queue_wait_s: Option<f64>,
    running: usize,
}

/// After the build: metrics, the log, the bake index, the result published and the message
/// deleted, released or left to the dead-letter queue, then the journal closed or released.
#[allow(clippy::too_many_arguments)]
async fn conclude(
    ctx: &Ctx,
    d: &Delivery,
    journal: &checkpoint::JournalHandle,
    outcome: BuildResult,
    log: &Log,
    work: &Path,
    cancel: &CancellationToken,
    f: Finished<'_>,
) {
    let Finished {
        req,
        build_id,
        receive_count,
        queue_wait_s,
        running,
    } = f;
    metrics::emit(&metrics::documents(&outcome, queue_wait_s, running));
    let retryable_failure =
        outcome.status == Status::Failed && outcome.error.as_ref().is_some_and(|e| e.retryable);
    let _ = std::fs::remove_dir_all(work);
    if let Err(e) = log
        .write(
            &ctx.clients.s3,
            &ctx.cfg.buckets[0],
            &log_key(&d.lane.team, build_id),
        )
        .await
    {
        tracing::error!(build_id = %build_id, error = %e, "could not write the log");
    }
    let retryable = outcome.error.as_ref().is_some_and(|e| e.retryable);
    // Before the result is published: whoever sees the result finds the index up to date.
    record_bake(ctx, &d.lane.team, req, &outcome).await;
    if cancel.is_cancelled() && outcome.status == Status::Failed {
        tracing::warn!(build_id = %build_id, "build cancelled by the drain deadline; its message is visible again");
        release(ctx, d, 0).await;
    } else if outcome.status == Status::Succeeded || !retryable {
        finish(ctx, d, &outcome).await;
    } else if d.lane.max_receive.is_some_and(|m| receive_count >= m) {
        tracing::warn!(build_id = %build_id, receive_count, "last attempt failed; the queue moves the message to its dead-letter queue");
        if let Err(e) = publish(ctx, &d.lane.team, &outcome).await {
            tracing::error!(build_id = %build_id, error = %e, "could not publish the final failure");
        }
        release(ctx, d, 0).await;
    } else {
        tracing::warn!(build_id = %build_id, receive_count, retry_in_s = ctx.cfg.retry_delay_s, "retryable failure; the message will be tried again");
        release(ctx, d, ctx.cfg.retry_delay_s as i32).await;
    }
    // Only now, after the result is published: a duplicate that sees the journal finished
    // must find the result too.
    let journal_result = if cancel.is_cancelled() || retryable_failure {
        journal.release().await
    } else {
        journal
            .finish(
                if outcome.status == Status::Succeeded {
                    "succeeded"
                } else {
                    "failed"
                },
                serde_json::to_value(&outcome).ok(),
            )
            .await
    };
    if let Err(e) = journal_result {
        tracing::error!(build_id = %build_id, error = %e, "could not update the checkpoint");
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_request(
    ctx: &Ctx,
    d: &Delivery,
    req: &BuildRequest,
    build_id: &str,
    work: &Path,
    log: Arc<Log>,
    cancel: &CancellationToken,
    handed_over: &CancellationToken,
    recorder: Arc<dyn crate::pipeline::state::Recorder>,
    journal: crate::checkpoint::Journal,
) -> BuildResult {
    let (plan, masker) = match caught(load::load_plan(ctx, d, req, build_id, work)).await {
        Ok(Ok(p)) => p,
        Ok(Err(failed)) => return *failed,
        Err(p) => return panicked(build_id, "validate", &p),
    };
    let sink_log = Arc::clone(&log);
    let sink_masker = masker.clone();
    let sink: crate::host::command::Sink = Arc::new(move |source: &str, line: &str| {
        let line = sink_masker.mask(line);
        tracing::info!(source, "{line}");
        sink_log.push(&if source == "kiln" {
            line
        } else {
            format!("    {source}: {line}")
        });
    });
    // Stream the log to S3 while the build runs.
    let flush_stop = CancellationToken::new();
    // Stops the flusher even if the pipeline unwinds.
    let _flush_guard = flush_stop.clone().drop_guard();
    let flusher = {
        let s3 = ctx.clients.s3.clone();
        let bucket = ctx.cfg.buckets[0].clone();
        let key = log_key(&d.lane.team, build_id);
        let log = Arc::clone(&log);
        let stop = flush_stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(LOG_FLUSH) => {}
                    _ = stop.cancelled() => return,
                }
                if let Err(e) = log.write(&s3, &bucket, &key).await {
                    tracing::warn!(key = %key, error = %e, "could not write the log");
                }
            }
        })
    };
    let options = BuildOptions {
        build_id: build_id.to_owned(),
        team: d.lane.team.clone(),
        backend: ctx.backend_for(req.backend),
        on_error: OnError::Cleanup,
        lock_dir: crate::host::lock::LOCK_DIR.into(),
        sink,
        recorder,
        attempt: journal.attempt,
        generation: journal.generation,
        earlier: journal.steps,
        handed_over: handed_over.clone(),
        template_ref: format!(
            "s3://{}/{}#{}",
            req.template.bucket, req.template.key, plan.name
        ),
        bake_key: req.bake.as_ref().map(|b| b.key.clone()),
        template_name: crate::channels::template_name_of_key(
            req.template
                .key
                .strip_prefix(&d.lane.team.key_root())
                .unwrap_or(&req.template.key),
            (!req.only.is_empty()).then_some(plan.name.as_str()),
        ),
        channels: req.channels.clone(),
        sbom: crate::sbom::store::Target {
            location: crate::sbom::store::Location::S3 {
                s3: ctx.clients.s3.clone(),
                bucket: ctx.cfg.buckets[0].clone(),
                prefix: d.lane.team.key(crate::sbom::store::PREFIX),
            },
            format: ctx.cfg.sbom_format,
        },
    };
    let result = pipeline::run(
        plan,
        masker,
        d.lane.clients.clone(),
        options,
        cancel.clone(),
    )
    .await;
    flush_stop.cancel();
    let _ = flusher.await;
    result
}
