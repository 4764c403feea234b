//! The worker inside an Auto Scaling group: what the pool tells it through instance metadata, and
//! what it tells the group. A termination lifecycle hook (`Terminating:Wait`, seen as
//! `autoscaling/target-lifecycle-state` = `Terminated`) drains the worker while it keeps the
//! hook alive with `RecordLifecycleActionHeartbeat`, then `CompleteLifecycleAction` lets the
//! instance go; a Spot interruption notice (`spot/instance-action`) stops and undoes running
//! builds at once (their messages become visible again); scale-in protection is on while builds
//! run and off when the worker is idle.

use aws_sdk_autoscaling::Client as AutoScaling;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often instance metadata is read: AWS advises polling the Spot notice every 5 s (it gives
/// about two minutes).
pub const POOL_POLL: Duration = Duration::from_secs(5);
/// How often the lifecycle hook is kept alive while draining: well inside the stack's 900 s
/// `HeartbeatTimeout` (the least Auto Scaling accepts is 30 s).
pub const HOOK_HEARTBEAT: Duration = Duration::from_secs(60);

/// The metadata path of the instance's target lifecycle state.
pub const LIFECYCLE_PATH: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
/// The metadata path of a Spot interruption notice (404 until there is one).
pub const SPOT_PATH: &str = "/latest/meta-data/spot/instance-action";

/// Where the worker stands in its group.
#[derive(Debug, Clone)]
pub struct Pool {
    autoscaling: AutoScaling,
    /// The group and its termination hook (from the worker's settings), if it runs in one.
    group: Option<(String, Option<String>)>,
    instance_id: String,
    /// Set when the group is terminating this instance.
    pub terminating: Arc<AtomicBool>,
    /// Set when a Spot interruption notice arrived.
    pub interrupted: Arc<AtomicBool>,
    protected: Arc<AtomicBool>,
    /// Wakes the hook's heartbeat as soon as termination is noticed.
    noticed: Arc<tokio::sync::Notify>,
}

impl Pool {
    /// A pool view for `instance_id` in `group` (with termination hook `hook`).
    pub fn new(
        config: &aws_config::SdkConfig,
        group: Option<String>,
        hook: Option<String>,
        instance_id: String,
    ) -> Self {
        Pool {
            autoscaling: AutoScaling::new(config),
            group: group.map(|g| (g, hook)),
            instance_id,
            terminating: Arc::default(),
            interrupted: Arc::default(),
            protected: Arc::default(),
            noticed: Arc::default(),
        }
    }

    /// Watches instance metadata every [`POOL_POLL`] until `stop`: a termination notice cancels
    /// `shutdown` (the worker drains); a Spot notice cancels `shutdown` and `builds` (running
    /// builds stop and are undone now).
    pub fn watch(
        &self,
        shutdown: CancellationToken,
        builds: CancellationToken,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let imds = aws_config::imds::Client::builder().build();
        let (terminating, interrupted, noticed) = (
            Arc::clone(&self.terminating),
            Arc::clone(&self.interrupted),
            Arc::clone(&self.noticed),
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(POOL_POLL) => {}
                    _ = stop.cancelled() => return,
                }
                if let Ok(notice) = imds.get(SPOT_PATH).await {
                    tracing::warn!(
                        notice = notice.as_ref(),
                        "Spot interruption notice: stopping and undoing running builds now"
                    );
                    interrupted.store(true, Ordering::SeqCst);
                    shutdown.cancel();
                    builds.cancel();
                    return;
                }
                if let Ok(state) = imds.get(LIFECYCLE_PATH).await
                    && state.as_ref().trim() == "Terminated"
                    && !terminating.swap(true, Ordering::SeqCst)
                {
                    tracing::warn!("the Auto Scaling group is terminating this instance: draining");
                    noticed.notify_one();
                    shutdown.cancel();
                }
            }
        })
    }

    /// Keeps the termination hook alive: once the instance is terminating, a heartbeat within
    /// [`POOL_POLL`] and then every [`HOOK_HEARTBEAT`], until `stop`. Does nothing outside a
    /// group with a hook.
    pub fn heartbeat(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let Some((group, Some(hook))) = &this.group else {
                return;
            };
            let mut last: Option<tokio::time::Instant> = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(POOL_POLL) => {}
                    _ = this.noticed.notified() => {}
                    _ = stop.cancelled() => return,
                }
                if !this.terminating.load(Ordering::SeqCst)
                    || last.is_some_and(|t| t.elapsed() < HOOK_HEARTBEAT)
                {
                    continue;
                }
                last = Some(tokio::time::Instant::now());
                if let Err(e) = this
                    .autoscaling
                    .record_lifecycle_action_heartbeat()
                    .auto_scaling_group_name(group)
                    .lifecycle_hook_name(hook)
                    .instance_id(&this.instance_id)
                    .send()
                    .await
                {
                    tracing::warn!(error = %aws_sdk_autoscaling::error::DisplayErrorContext(&e), "could not keep the lifecycle hook alive");
                }
            }
        })
    }

    /// After draining on a termination notice: lets the instance go (`CONTINUE`). Safe to call
    /// when not terminating (does nothing).
    pub async fn complete(&self) {
        let Some((group, Some(hook))) = &self.group else {
            return;
        };
        if !self.terminating.load(Ordering::SeqCst) {
            return;
        }
        match self
            .autoscaling
            .complete_lifecycle_action()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(&self.instance_id)
            .lifecycle_action_result("CONTINUE")
            .send()
            .await
        {
            Ok(_) => tracing::info!(group, hook, "drained: the lifecycle action is complete"),
            Err(e) => {
                tracing::error!(error = %aws_sdk_autoscaling::error::DisplayErrorContext(&e), "could not complete the lifecycle action; the hook's timeout lets the instance go")
            }
        }
    }

    /// Scale-in protection on while `busy`, off when idle; calls only on a change. Errors are
    /// logged (the next change tries again).
    pub async fn protect(&self, busy: bool) {
        let Some((group, _)) = &self.group else {
            return;
        };
        if self.protected.load(Ordering::SeqCst) == busy {
            return;
        }
        match self
            .autoscaling
            .set_instance_protection()
            .auto_scaling_group_name(group)
            .instance_ids(&self.instance_id)
            .protected_from_scale_in(busy)
            .send()
            .await
        {
            Ok(_) => {
                self.protected.store(busy, Ordering::SeqCst);
                tracing::info!(protected = busy, "scale-in protection");
            }
            Err(e) => {
                tracing::warn!(error = %aws_sdk_autoscaling::error::DisplayErrorContext(&e), "could not set scale-in protection")
            }
        }
    }
}
