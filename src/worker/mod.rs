//! The queue worker (`kiln worker`): long-polls SQS for build requests, takes only as many as it
//! has free build slots, fetches each template from a trusted S3 bucket, runs the pipeline, keeps
//! the message invisible with a heartbeat while it runs, streams the log to S3, and publishes the
//! result to S3 and the result queue. SIGTERM drains: no new work, running builds get the drain
//! deadline, then are cancelled (undone) and their messages made visible again at once.

pub mod fetch;
mod handle;
pub mod lanes;
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
use crate::team::Team;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use lanes::Lane;
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
    /// The SBOM's format, `spdx` (SPDX 2.3 JSON, the default) or `cyclonedx` (CycloneDX 1.5
    /// JSON), written beside each result (`sboms/<build-id>.spdx.json` or `.cdx.json`).
    #[serde(default)]
    pub sbom_format: crate::sbom::Format,
    /// The loop backend's state directory.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How this host names attached EBS volumes (`auto`, `xen`, `nitro`).
    #[serde(default)]
    pub device_naming: crate::backend::Naming,
    /// The host's device directory.
    #[serde(default = "default_device_dir")]
    pub device_dir: PathBuf,
    /// Seconds a device node may take to appear after EC2 reports the attachment.
    #[serde(default = "default_device_timeout")]
    pub device_timeout_s: u64,
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
    /// Seconds a build may run before it is cancelled (its undo runs) and fails as timed out.
    #[serde(default = "default_build_timeout")]
    pub build_timeout_s: u64,
    /// Most seconds a duplicate delivery of a running build is parked (sent again, delayed until
    /// the owner's lease ends, at most this and SQS's 900) before it looks again.
    #[serde(default = "default_park")]
    pub duplicate_park_s: u64,
    /// The teams besides the default one (whose queue is `queue`), each with its own queue,
    /// build role and share; an entry named `default` sets the default team's.
    #[serde(default)]
    pub teams: Vec<lanes::TeamSettings>,
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
fn default_device_dir() -> PathBuf {
    PathBuf::from(crate::backend::DEVICE_DIR)
}
fn default_device_timeout() -> u64 {
    crate::backend::NODE_TIMEOUT.as_secs()
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
/// Six hours: a chroot build takes minutes, a copy of a large image to a far region an hour or
/// two; a build past this is stuck (a command that never ends, an AWS wait that never settles).
fn default_build_timeout() -> u64 {
    6 * 3600
}

/// How long a timed-out build's cancellation (its undo) may take before its slot counts as hung:
/// 30 minutes, longer than any undo's own waits (a detach, a termination).
pub const UNDO_GRACE: Duration = Duration::from_secs(30 * 60);

/// SQS's longest message delay: 15 minutes.
pub const MAX_SQS_DELAY_S: u64 = 900;
/// A duplicate looks again every 15 minutes (SQS's longest delay): builds take minutes, and the
/// duplicate only repeats the result.
fn default_park() -> u64 {
    MAX_SQS_DELAY_S
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
    /// Builds still running [`UNDO_GRACE`] after their timeout cancelled them: slots that will
    /// not come free. When every slot is hung the poll loop stops petting the watchdog, so
    /// systemd restarts the worker (and the next one's sweep cleans up).
    hung: Arc<std::sync::atomic::AtomicUsize>,
    cfg: WorkerConfig,
    clients: Clients,
    backend: Backend,
    /// One per team queue; the default team's first.
    lanes: Vec<Arc<Lane>>,
    fair: lanes::FairShare,
    owner: Owner,
}

impl Ctx {
    /// The backend for a request: the one it asks for (with this worker's devices and state
    /// directory), else the worker's.
    pub(crate) fn backend_for(&self, asked: Option<crate::request::RequestBackend>) -> Backend {
        use crate::request::RequestBackend;
        match (asked, &self.backend) {
            (None, b) | (Some(RequestBackend::Ebs), b @ Backend::Ebs(_)) => b.clone(),
            (Some(RequestBackend::Direct), _) => Backend::Direct {
                state_dir: self.cfg.state_dir.clone(),
            },
            (Some(RequestBackend::Ebs), _) => Backend::Ebs(crate::backend::Devices {
                dir: self.cfg.device_dir.clone(),
                naming: self.cfg.device_naming,
                node_timeout: Duration::from_secs(self.cfg.device_timeout_s),
            }),
        }
    }
}

/// A received request and the team lane whose queue it came on: the team is the queue's, never
/// what the request's body says.
pub(crate) struct Delivery {
    msg: aws_sdk_sqs::types::Message,
    lane: Arc<Lane>,
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
        "ebs" => Backend::Ebs(crate::backend::Devices {
            dir: cfg.device_dir.clone(),
            naming: cfg.device_naming,
            node_timeout: Duration::from_secs(cfg.device_timeout_s),
        }),
        "loop" => Backend::Loop {
            state_dir: cfg.state_dir.clone(),
        },
        "direct" => Backend::Direct {
            state_dir: cfg.state_dir.clone(),
        },
        other => {
            return Err(WorkerError::Config(format!(
                "unknown backend {other:?}: use ebs, direct or loop"
            )));
        }
    };
    // Waits start from what earlier runs on this builder observed (ec2/history.rs).
    crate::ec2::history::use_state_dir(&cfg.state_dir);
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
    let lanes = lanes::lanes_of(&cfg, &clients, concurrency, &owner.instance_id).await?;
    let lane_clients: Vec<(Team, Clients)> = lanes
        .iter()
        .map(|l| (l.team.clone(), l.clients.clone()))
        .collect();
    sweep_host(Path::new(crate::host::lock::LOCK_DIR)).await;
    sweep_attachments(
        &clients,
        &lane_clients,
        &owner.instance_id,
        Path::new(crate::host::lock::LOCK_DIR),
        &backend,
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
        hung: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        cfg,
        clients,
        backend,
        lanes,
        fair: lanes::FairShare::default(),
        owner,
    });
    let slots = Arc::new(Semaphore::new(concurrency));
    let builds_cancel = CancellationToken::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    for l in &ctx.lanes {
        tracing::info!(team = %l.team, queue = %l.queue, weight = l.weight, max_concurrent = l.max_concurrent, host_features = l.host_features, role = ?l.role_arn, max_receive = ?l.max_receive, "team lane");
    }
    tracing::info!(
        concurrency,
        teams = ctx.lanes.len(),
        backend = ctx.backend.name(),
        "worker polling"
    );
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

/// How long each receive waits when the worker serves several team queues: one second, so a
/// round over the teams stays short (a long poll on one queue would hold the others' requests),
/// while SQS still queries all its servers (a wait of 0 samples only some).
pub const MULTI_LANE_WAIT_S: i32 = 1;
/// Pause when every team is at its cap: a build ending frees a lane.
pub const LANES_FULL_PAUSE: Duration = Duration::from_secs(1);

/// What one receive gave.
enum Received {
    Messages(Vec<aws_sdk_sqs::types::Message>),
    Failed,
    Shutdown,
}

/// Receives up to `max` messages from `lane`'s queue, waiting at most `wait_s`.
async fn receive(
    ctx: &Ctx,
    lane: &Lane,
    max: usize,
    wait_s: i32,
    watchdog: notify::Watchdog,
    shutdown: &CancellationToken,
) -> Received {
    let call = ctx
        .clients
        .sqs
        .receive_message()
        .queue_url(&lane.queue)
        .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
        .wait_time_seconds(wait_s)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .send();
    let received = tokio::select! {
        r = watchdog.while_waiting(tokio::time::timeout(RECEIVE_DEADLINE, call)) => r,
        _ = shutdown.cancelled() => return Received::Shutdown,
    };
    match received {
        Ok(Ok(out)) => Received::Messages(out.messages.unwrap_or_default()),
        Ok(Err(e)) => {
            let error = aws_sdk_sqs::error::DisplayErrorContext(&e).to_string();
            tracing::error!(team = %lane.team, queue = %lane.queue, error, "receive failed");
            Received::Failed
        }
        Err(_) => {
            tracing::error!(team = %lane.team, queue = %lane.queue, "receive: no reply within {} s", RECEIVE_DEADLINE.as_secs());
            Received::Failed
        }
    }
}

/// The poll loop: takes messages while build slots are free, until `shutdown`. Each free slot
/// goes to the team the fair share picks among those under their cap and with a request waiting.
/// It pets the watchdog itself, at each turn and during its bounded waits, so a hung loop stops
/// the pings.
async fn poll(
    ctx: &Arc<Ctx>,
    slots: &Arc<Semaphore>,
    builds_cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
    watchdog: notify::Watchdog,
) {
    let concurrency = ctx.cfg.concurrency.max(1);
    let weights: Vec<u32> = ctx.lanes.iter().map(|l| l.weight).collect();
    let single = ctx.lanes.len() == 1;
    loop {
        watchdog.pet();
        hang_if_asked(shutdown).await;
        while tasks.try_join_next().is_some() {}
        ctx.pool.protect(!tasks.is_empty()).await;
        let first = tokio::select! {
            p = watchdog.while_waiting_if(Arc::clone(slots).acquire_owned(), || ctx.hung.load(std::sync::atomic::Ordering::SeqCst) < concurrency) => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.cancelled() => return,
        };
        let eligible: Vec<bool> = ctx.lanes.iter().map(|l| l.has_room()).collect();
        let mut got = None;
        let mut failures = 0;
        for i in ctx.fair.order(&weights, &eligible) {
            let lane = &ctx.lanes[i];
            let (max, wait) = if single {
                let free = 1 + slots.available_permits();
                let room = lane.max_concurrent.saturating_sub(lane.running());
                (free.min(room), LONG_POLL_SECONDS)
            } else {
                (1, MULTI_LANE_WAIT_S)
            };
            match receive(ctx, lane, max, wait, watchdog, shutdown).await {
                Received::Shutdown => return,
                Received::Failed => failures += 1,
                Received::Messages(m) if !m.is_empty() => {
                    ctx.fair.took(i, &weights, &eligible);
                    got = Some((Arc::clone(lane), m));
                    break;
                }
                Received::Messages(_) => {}
            }
        }
        let Some((lane, messages)) = got else {
            drop(first);
            let every_lane_full = !eligible.iter().any(|e| *e);
            let pause = if every_lane_full {
                LANES_FULL_PAUSE
            } else if failures > 0 && failures == eligible.iter().filter(|e| **e).count() {
                RECEIVE_BACKOFF
            } else {
                continue;
            };
            tokio::select! {
                _ = watchdog.while_waiting(tokio::time::sleep(pause)) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        };
        let mut first = Some(first);
        for msg in messages {
            let delivery = Delivery {
                msg,
                lane: Arc::clone(&lane),
            };
            let permit = match first.take() {
                Some(p) => p,
                None => match Arc::clone(slots).try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        // Cannot happen (we asked for no more than the free slots); give it back.
                        release(ctx, &delivery, 0).await;
                        continue;
                    }
                },
            };
            let running = lane.start();
            let ctx = Arc::clone(ctx);
            let cancel = builds_cancel.child_token();
            tasks.spawn(async move {
                handle(&ctx, delivery, cancel).await;
                drop(running);
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
