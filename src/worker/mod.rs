//! The queue worker (`kiln worker`): long-polls SQS for build requests, takes only as many as it
//! has free build slots, fetches each template from a trusted S3 bucket, runs the pipeline, keeps
//! the message invisible with a heartbeat while it runs, streams the log to S3, and publishes the
//! result to S3 and the result queue. SIGTERM drains: no new work, running builds get the drain
//! deadline, then are cancelled (undone) and their messages made visible again at once.

pub mod fetch;
mod handle;
pub mod metrics;
pub mod notify;
pub mod pool;
mod publish;
pub use crate::request;
mod sweep;

pub use fetch::{MAX_TEMPLATE_BYTES, MAX_TEMPLATE_FILES};
use handle::handle;
use publish::release;
pub use publish::{early_failure, log_key, result_key};
pub use sweep::{sweep_attachments, sweep_host};

use crate::aws::Clients;
use crate::backend::Backend;
use crate::checkpoint::Owner;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
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
    /// Builds running now (for the metrics).
    in_flight: std::sync::atomic::AtomicUsize,
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
        in_flight: std::sync::atomic::AtomicUsize::new(0),
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
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
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
