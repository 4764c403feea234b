//! The queue worker (`kiln worker`): long-polls SQS for build requests, takes only as many as it
//! has free build slots, fetches each template from a trusted S3 bucket, runs the pipeline, keeps
//! the message invisible with a heartbeat while it runs, streams the log to S3, and publishes the
//! result to S3 and the result queue. SIGTERM drains: no new work, running builds get the drain
//! deadline, then are cancelled (undone) and their messages made visible again at once.

pub mod fetch;
pub mod notify;
pub mod pool;
mod publish;
pub use crate::request;
mod sweep;

use fetch::fetch_template;
pub use fetch::{MAX_TEMPLATE_BYTES, MAX_TEMPLATE_FILES};
use publish::{Log, delete, finish, publish, record_bake, release, result_from_journal};
pub use publish::{early_failure, log_key, result_key};
pub use sweep::{sweep_attachments, sweep_host};

use crate::aws::Clients;
use crate::backend::Backend;
use crate::checkpoint::{self, Acquired, JournalRecorder, Owner};
use crate::pipeline::result::{BuildResult, Status};
use crate::pipeline::{self, BuildOptions, OnError};
use crate::template::{self, Inputs};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use request::BuildRequest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// SQS long-poll wait: the maximum SQS allows.
pub const LONG_POLL_SECONDS: i32 = 20;
/// SQS returns at most 10 messages per receive.
pub const MAX_BATCH: usize = 10;
/// How often the build's log is written to S3 while it runs.
pub const LOG_FLUSH: Duration = Duration::from_secs(5);
/// Pause after a failed receive before polling again (the SDK already retried the call).
pub const RECEIVE_BACKOFF: Duration = Duration::from_secs(5);
/// The worker's settings (flags, `KILN_*` variables, or a TOML file).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// The request queue URL.
    pub queue: String,
    /// The result queue URL (optional).
    #[serde(default)]
    pub result_queue: Option<String>,
    /// Trusted template buckets; the first also holds results, logs and checkpoints.
    pub buckets: Vec<String>,
    /// Builds at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// `ebs` or `loop`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// The loop backend's state directory.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Seconds running builds get to finish after SIGTERM.
    #[serde(default = "default_drain")]
    pub drain_timeout_s: u64,
    /// Seconds each heartbeat makes the message invisible for; the heartbeat runs every third of
    /// it, so two heartbeats may fail before the message reappears.
    #[serde(default = "default_visibility")]
    pub visibility_s: u64,
    /// Seconds before a retryable failure's message is visible again.
    #[serde(default = "default_retry_delay")]
    pub retry_delay_s: u64,
    /// Where templates are fetched to.
    #[serde(default = "default_work_dir")]
    pub work_dir: PathBuf,
    /// The Auto Scaling group the worker's instance belongs to: scale-in protection while builds
    /// run, and the termination hook below.
    #[serde(default)]
    pub auto_scaling_group: Option<String>,
    /// The group's termination lifecycle hook, completed once the worker drained.
    #[serde(default)]
    pub lifecycle_hook: Option<String>,
}

fn default_concurrency() -> usize {
    1
}
fn default_backend() -> String {
    "ebs".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/kiln")
}
/// Builds usually finish in minutes; the default drain deadline leaves a scale-in lifecycle hook
/// (30 s minimum heartbeat) room while not holding an instance for long.
fn default_drain() -> u64 {
    300
}
/// Two minutes: short enough that a dead worker's message reappears soon, long enough that a
/// heartbeat every 40 s is cheap.
fn default_visibility() -> u64 {
    120
}
/// A minute gives a throttled or failing AWS dependency time before the next attempt.
fn default_retry_delay() -> u64 {
    60
}
fn default_work_dir() -> PathBuf {
    std::env::temp_dir().join("kiln-worker")
}

/// Errors that stop the worker (per-message problems never do).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration cannot work.
    #[error("worker configuration: {0}")]
    Config(String),
    /// The queue cannot be read at all.
    #[error("queue {queue}: {message}")]
    Queue {
        /// The queue URL.
        queue: String,
        /// What failed.
        message: String,
    },
}

impl WorkerError {
    /// Whether restarting the worker could help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WorkerError::Queue { .. })
    }
}

pub(crate) struct Ctx {
    pool: pool::Pool,
    cfg: WorkerConfig,
    clients: Clients,
    backend: Backend,
    max_receive: Option<u32>,
    owner: Owner,
}

/// Runs the worker until `shutdown` is cancelled, then drains. Returns when every build has
/// finished or been cancelled and undone.
pub async fn run(
    cfg: WorkerConfig,
    clients: Clients,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    if cfg.buckets.is_empty() {
        return Err(WorkerError::Config(
            "at least one --bucket is required (the first holds results and logs)".into(),
        ));
    }
    let backend = match cfg.backend.as_str() {
        "ebs" => Backend::Ebs,
        "loop" => Backend::Loop {
            state_dir: cfg.state_dir.clone(),
        },
        other => {
            return Err(WorkerError::Config(format!(
                "unknown backend {other:?}: use ebs or loop"
            )));
        }
    };
    let attrs = clients
        .sqs
        .get_queue_attributes()
        .queue_url(&cfg.queue)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| WorkerError::Queue {
            queue: cfg.queue.clone(),
            message: format!("{}", aws_sdk_sqs::error::DisplayErrorContext(&e)),
        })?;
    let max_receive = attrs
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .and_then(|v| {
            v.get("maxReceiveCount").and_then(|m| {
                m.as_u64()
                    .or_else(|| m.as_str().and_then(|s| s.parse().ok()))
            })
        })
        .map(|m| m as u32);
    let concurrency = cfg.concurrency.max(1);
    let instance_id = match crate::ec2::identity::read().await {
        Ok(i) => i.instance_id,
        Err(e) => {
            tracing::warn!(error = %e, "no instance identity; checkpoints name this host by its hostname");
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "unknown-host".into())
        }
    };
    let owner = Owner {
        instance_id,
        worker_id: uuid::Uuid::new_v4().to_string(),
    };
    sweep_host(Path::new(crate::host::lock::LOCK_DIR)).await;
    sweep_attachments(
        &clients,
        &owner.instance_id,
        Path::new(crate::host::lock::LOCK_DIR),
    )
    .await;
    let pool = pool::Pool::new(
        clients.config(),
        cfg.auto_scaling_group.clone(),
        cfg.lifecycle_hook.clone(),
        owner.instance_id.clone(),
    );
    let ctx = Arc::new(Ctx {
        pool,
        cfg,
        clients,
        backend,
        max_receive,
        owner,
    });
    let slots = Arc::new(Semaphore::new(concurrency));
    let builds_cancel = CancellationToken::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    tracing::info!(queue = %ctx.cfg.queue, concurrency, backend = ctx.backend.name(), max_receive = ?ctx.max_receive, "worker polling");
    notify::notify("READY=1\nSTATUS=polling");
    let watchdog = notify::Watchdog::from_env();
    // The pool's notices: termination drains (with the hook kept alive), Spot stops builds now.
    let pool_stop = CancellationToken::new();
    let watcher = ctx
        .pool
        .watch(shutdown.clone(), builds_cancel.clone(), pool_stop.clone());
    let hook_heartbeat = ctx.pool.heartbeat(pool_stop.clone());
    poll(
        &ctx,
        &slots,
        &builds_cancel,
        &mut tasks,
        &shutdown,
        watchdog,
    )
    .await;
    drain(&ctx, &builds_cancel, &mut tasks, watchdog).await;
    ctx.pool.protect(false).await;
    pool_stop.cancel();
    let _ = watcher.await;
    let _ = hook_heartbeat.await;
    ctx.pool.complete().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// Longest wait for one receive: the long poll plus a margin for the reply. A receive that takes
/// longer (a frozen endpoint) is abandoned and tried again, so the loop never hangs in it.
pub const RECEIVE_DEADLINE: Duration = Duration::from_secs(LONG_POLL_SECONDS as u64 + 15);

/// Fault injection for the watchdog test: `KILN_FAULT_HANG=poll` makes the poll loop hang after
/// its first pet, as a deadlocked loop would (until shutdown, so the test can stop it).
async fn hang_if_asked(shutdown: &CancellationToken) {
    if std::env::var("KILN_FAULT_HANG").is_ok_and(|s| s == "poll") {
        tracing::warn!("KILN_FAULT_HANG: the poll loop hangs");
        shutdown.cancelled().await;
    }
}

/// The poll loop: takes messages while build slots are free, until `shutdown`. It pets the
/// watchdog itself, at each turn and during its bounded waits, so a hung loop stops the pings.
async fn poll(
    ctx: &Arc<Ctx>,
    slots: &Arc<Semaphore>,
    builds_cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
    watchdog: notify::Watchdog,
) {
    loop {
        watchdog.pet();
        hang_if_asked(shutdown).await;
        while tasks.try_join_next().is_some() {}
        ctx.pool.protect(!tasks.is_empty()).await;
        let first = tokio::select! {
            p = watchdog.while_waiting(Arc::clone(slots).acquire_owned()) => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.cancelled() => return,
        };
        let free = (1 + slots.available_permits()).min(MAX_BATCH);
        let receive = ctx
            .clients
            .sqs
            .receive_message()
            .queue_url(&ctx.cfg.queue)
            .max_number_of_messages(free as i32)
            .wait_time_seconds(LONG_POLL_SECONDS)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send();
        let received = tokio::select! {
            r = watchdog.while_waiting(tokio::time::timeout(RECEIVE_DEADLINE, receive)) => r,
            _ = shutdown.cancelled() => return,
        };
        let messages = match received {
            Ok(Ok(out)) => out.messages.unwrap_or_default(),
            failed => {
                let error = match failed {
                    Ok(Err(e)) => aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
                    _ => format!("no reply within {} s", RECEIVE_DEADLINE.as_secs()),
                };
                tracing::error!(queue = %ctx.cfg.queue, error, "receive failed; polling again shortly");
                drop(first);
                tokio::select! {
                    _ = watchdog.while_waiting(tokio::time::sleep(RECEIVE_BACKOFF)) => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
        };
        let mut first = Some(first);
        for msg in messages {
            let permit = match first.take() {
                Some(p) => p,
                None => match Arc::clone(slots).try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        // Cannot happen (we asked for no more than the free slots); give it back.
                        release(ctx, &msg, 0).await;
                        continue;
                    }
                },
            };
            let ctx = Arc::clone(ctx);
            let cancel = builds_cancel.child_token();
            tasks.spawn(async move {
                handle(&ctx, msg, cancel).await;
                drop(permit);
            });
        }
        ctx.pool.protect(!tasks.is_empty()).await;
    }
}

/// Drains: running builds get the drain deadline, then are cancelled (and undone).
async fn drain(
    ctx: &Ctx,
    builds_cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
    watchdog: notify::Watchdog,
) {
    notify::notify("STOPPING=1\nSTATUS=draining");
    tracing::info!(
        in_flight = tasks.len(),
        drain_timeout_s = ctx.cfg.drain_timeout_s,
        "draining"
    );
    let deadline = Duration::from_secs(ctx.cfg.drain_timeout_s);
    let finished = async { while tasks.join_next().await.is_some() {} };
    let timed_out = watchdog
        .while_waiting(tokio::time::timeout(deadline, finished))
        .await
        .is_err();
    if timed_out {
        tracing::warn!(
            in_flight = tasks.len(),
            "drain deadline passed: cancelling running builds"
        );
        builds_cancel.cancel();
        watchdog
            .while_waiting(async { while tasks.join_next().await.is_some() {} })
            .await;
    }
}

/// Handles one message to the end: never panics the worker, never loses the message.
async fn handle(ctx: &Ctx, msg: aws_sdk_sqs::types::Message, cancel: CancellationToken) {
    let message_id = msg.message_id().unwrap_or("unknown").to_owned();
    let receive_count: u32 = msg
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    let body = msg.body().unwrap_or("");
    let req = match request::parse(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(message_id, error = %e, "rejected a malformed message");
            finish(
                ctx,
                &msg,
                &early_failure(
                    &format!("invalid-{message_id}"),
                    "request",
                    e.to_string(),
                    false,
                ),
            )
            .await;
            return;
        }
    };
    let build_id = req
        .build_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!("build", build_id = %build_id, message_id = %message_id);
    let _enter = span.enter();
    if !ctx.cfg.buckets.contains(&req.template.bucket) {
        let msg_text = format!(
            "the template bucket {} is not trusted by this worker (trusted: {}); ask its operators to add it with --bucket",
            req.template.bucket,
            ctx.cfg.buckets.join(", ")
        );
        finish(
            ctx,
            &msg,
            &early_failure(&build_id, "request", msg_text, false),
        )
        .await;
        return;
    }
    // A build id that already finished: answer with its result instead of building again.
    if !req.force
        && let Ok(o) = ctx
            .clients
            .s3
            .get_object()
            .bucket(&ctx.cfg.buckets[0])
            .key(result_key(&build_id))
            .send()
            .await
        && let Ok(bytes) = o.body.collect().await
        && let Ok(existing) = serde_json::from_slice::<serde_json::Value>(&bytes.into_bytes())
        && existing["status"] != "running"
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
            release(ctx, &msg, ctx.cfg.retry_delay_s as i32).await;
            return;
        }
        delete(ctx, &msg).await;
        return;
    }
    // Exactly one worker runs a build: the journal's lease decides.
    let lease = ctx.cfg.visibility_s.max(3);
    if req.force
        && let Ok(Some((j, _))) =
            checkpoint::read(&ctx.clients.s3, &ctx.cfg.buckets[0], &build_id).await
        && j.status != "running"
    {
        let _ = ctx
            .clients
            .s3
            .delete_object()
            .bucket(&ctx.cfg.buckets[0])
            .key(checkpoint::key(&build_id))
            .send()
            .await;
    }
    let journal = match checkpoint::acquire(
        &ctx.clients.s3,
        &ctx.cfg.buckets[0],
        &build_id,
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
            let wait = until.saturating_sub(checkpoint::now()).clamp(1, 43_200);
            tracing::info!(build_id = %build_id, owner = ?owner, retry_in_s = wait, "another worker runs this build; looking again when its lease ends");
            release(ctx, &msg, wait as i32).await;
            return;
        }
        Ok(Acquired::Finished(status)) => {
            tracing::info!(build_id = %build_id, status, "this build finished but its result document is missing; publishing the result its journal kept");
            let r = result_from_journal(ctx, &build_id, &status).await;
            finish(ctx, &msg, &r).await;
            return;
        }
        Err(e) => {
            tracing::error!(build_id = %build_id, error = %e, "cannot read or write the checkpoint; trying again later");
            release(ctx, &msg, ctx.cfg.retry_delay_s as i32).await;
            return;
        }
    };
    let attempt = journal.journal().attempt;
    // Cancelled (with `cancel`) when a journal write finds that another worker took the build
    // over after this one's lease lapsed (a stalled host): the build stops, undoes only what is
    // its own, and publishes nothing.
    let handed_over = CancellationToken::new();
    // Heartbeat: renew the lease and keep the message invisible while the build runs.
    let hb_stop = CancellationToken::new();
    let visibility = ctx.cfg.visibility_s.max(3);
    let on_lost = checkpoint::hand_over(&build_id, handed_over.clone(), cancel.clone());
    let renewal = checkpoint::spawn_renewal(
        Arc::clone(&journal),
        Duration::from_secs(visibility / 3),
        Arc::clone(&on_lost),
        hb_stop.clone(),
    );
    let heartbeat = {
        let sqs = ctx.clients.sqs.clone();
        let queue = ctx.cfg.queue.clone();
        let receipt = msg.receipt_handle().unwrap_or_default().to_owned();
        let stop = hb_stop.clone();
        let lost = handed_over.clone();
        let id = build_id.clone();
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
    };
    let log = Arc::new(Log::default());
    let work = ctx
        .cfg
        .work_dir
        .join(&build_id)
        .join(uuid::Uuid::new_v4().simple().to_string());
    let recorder = Arc::new(JournalRecorder::new(Arc::clone(&journal), on_lost));
    let outcome = run_request(
        ctx,
        &req,
        &build_id,
        &work,
        Arc::clone(&log),
        &cancel,
        &handed_over,
        Arc::clone(&recorder) as Arc<dyn crate::pipeline::state::Recorder>,
        attempt,
        journal.journal().generation,
    )
    .await;
    let mut outcome = outcome;
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
    let retryable_failure =
        outcome.status == Status::Failed && outcome.error.as_ref().is_some_and(|e| e.retryable);
    let _ = std::fs::remove_dir_all(&work);
    if let Err(e) = log
        .write(&ctx.clients.s3, &ctx.cfg.buckets[0], &log_key(&build_id))
        .await
    {
        tracing::error!(build_id = %build_id, error = %e, "could not write the log");
    }
    let retryable = outcome.error.as_ref().is_some_and(|e| e.retryable);
    // Before the result is published: whoever sees the result finds the index up to date.
    record_bake(ctx, &req, &outcome).await;
    if cancel.is_cancelled() && outcome.status == Status::Failed {
        tracing::warn!(build_id = %build_id, "build cancelled by the drain deadline; its message is visible again");
        release(ctx, &msg, 0).await;
    } else if outcome.status == Status::Succeeded || !retryable {
        finish(ctx, &msg, &outcome).await;
    } else if ctx.max_receive.is_some_and(|m| receive_count >= m) {
        tracing::warn!(build_id = %build_id, receive_count, "last attempt failed; the queue moves the message to its dead-letter queue");
        if let Err(e) = publish(ctx, &outcome).await {
            tracing::error!(build_id = %build_id, error = %e, "could not publish the final failure");
        }
        release(ctx, &msg, 0).await;
    } else {
        tracing::warn!(build_id = %build_id, receive_count, retry_in_s = ctx.cfg.retry_delay_s, "retryable failure; the message will be tried again");
        release(ctx, &msg, ctx.cfg.retry_delay_s as i32).await;
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
    req: &BuildRequest,
    build_id: &str,
    work: &Path,
    log: Arc<Log>,
    cancel: &CancellationToken,
    handed_over: &CancellationToken,
    recorder: Arc<dyn crate::pipeline::state::Recorder>,
    attempt: u32,
    generation: String,
) -> BuildResult {
    if let Err(e) = std::fs::create_dir_all(work) {
        return early_failure(
            build_id,
            "fetch-template",
            format!("creating {}: {e}", work.display()),
            true,
        );
    }
    let path = match fetch_template(ctx, req, work).await {
        Ok(p) => p,
        Err((m, retryable)) => return early_failure(build_id, "fetch-template", m, retryable),
    };
    let inputs = Inputs {
        vars: req
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        only: req.only.clone(),
        ..Inputs::default()
    };
    let loaded = template::load(&path, &inputs);
    if loaded.has_errors() {
        let errors: Vec<String> = loaded
            .errors()
            .map(|d| {
                loaded
                    .masker
                    .mask(&d.to_string().replace(&format!("{}/", work.display()), ""))
            })
            .collect();
        return early_failure(
            build_id,
            "validate",
            format!("the template is invalid:\n{}", errors.join("\n")),
            false,
        );
    }
    if loaded.plans.len() != 1 {
        let names: Vec<&str> = loaded.plans.iter().map(|p| p.name.as_str()).collect();
        return early_failure(
            build_id,
            "validate",
            format!(
                "the template has {} builds ({}); set `only` to pick one",
                names.len(),
                names.join(", ")
            ),
            false,
        );
    }
    let plan = loaded.plans[0].clone();
    let masker = loaded.masker.clone();
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
    let flusher = {
        let s3 = ctx.clients.s3.clone();
        let bucket = ctx.cfg.buckets[0].clone();
        let key = log_key(build_id);
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
        backend: ctx.backend.clone(),
        on_error: OnError::Cleanup,
        lock_dir: crate::host::lock::LOCK_DIR.into(),
        sink,
        recorder,
        attempt,
        generation,
        handed_over: handed_over.clone(),
    };
    let result = pipeline::run(plan, masker, ctx.clients.clone(), options, cancel.clone()).await;
    flush_stop.cancel();
    let _ = flusher.await;
    result
}
