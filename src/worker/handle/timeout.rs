//! A build's time limit (`build_timeout_s`): past it the build is cancelled (its undo runs); if
//! the cancellation is stuck too, its slot counts as hung, which stops the watchdog once every
//! slot is hung.

use crate::worker::Ctx;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A build's timeout, as [`watch_timeout`] keeps it.
pub(super) struct Timeout {
    /// Cancelled when the timeout fired.
    pub(super) fired: CancellationToken,
    /// Set while the build counts as hung (still running [`crate::worker::UNDO_GRACE`] after it).
    pub(super) hung: std::sync::Mutex<Option<Hung>>,
}

/// A slot counted in `Ctx::hung` until [`Hung::finished`].
pub(super) struct Hung(Arc<std::sync::atomic::AtomicUsize>);

impl Hung {
    pub(super) fn finished(self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Cancels `build` after the worker's `build_timeout_s`; if the build still runs
/// [`crate::worker::UNDO_GRACE`] later (its undo is stuck too), counts its slot as hung. The task is
/// aborted when the build ends.
pub(super) fn watch_timeout(
    ctx: &Ctx,
    build_id: &str,
    build: &CancellationToken,
) -> (Arc<Timeout>, tokio::task::JoinHandle<()>) {
    let t = Arc::new(Timeout {
        fired: CancellationToken::new(),
        hung: std::sync::Mutex::new(None),
    });
    let limit = Duration::from_secs(ctx.cfg.build_timeout_s.max(1));
    let (t2, build, id, hung) = (
        Arc::clone(&t),
        build.clone(),
        build_id.to_owned(),
        Arc::clone(&ctx.hung),
    );
    let task = tokio::spawn(async move {
        tokio::time::sleep(limit).await;
        tracing::error!(build_id = %id, timeout_s = limit.as_secs(), "the build ran past its timeout; cancelling it");
        t2.fired.cancel();
        build.cancel();
        tokio::time::sleep(crate::worker::UNDO_GRACE).await;
        tracing::error!(build_id = %id, "the timed-out build's cancellation is stuck; its slot counts as hung");
        // Counted and recorded under the lock, so the build's end (which takes it under the same
        // lock after aborting this task) never misses or doubles the count.
        if let Ok(mut h) = t2.hung.lock() {
            hung.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            *h = Some(Hung(hung));
        }
    });
    (t, task)
}
