//! systemd's notify protocol (`Type=notify`, `WatchdogSec=`): READY, STOPPING, WATCHDOG and
//! STATUS datagrams to `$NOTIFY_SOCKET`. Without the variable (not under systemd) it does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `READY=1`). Errors are logged, never fatal.
pub fn notify(state: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "sd_notify: cannot create a socket"),
    };
    let result = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, socket = %path, "sd_notify failed");
    }
}

/// The watchdog as the worker's poll loop pets it: `WATCHDOG=1` every half of systemd's
/// `WATCHDOG_USEC` (as sd_watchdog_enabled advises), sent only while the loop itself runs, so a
/// hung loop stops the pings and systemd restarts the worker. Disabled without `WATCHDOG_USEC`,
/// or when `WATCHDOG_PID` names another process (the watchdog is then not ours).
#[derive(Debug, Clone, Copy)]
pub struct Watchdog {
    every: Option<Duration>,
}

impl Watchdog {
    /// From the environment systemd sets.
    pub fn from_env() -> Self {
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(|u| Duration::from_micros(u / 2));
        Self { every }
    }

    /// Sends `WATCHDOG=1` now (if enabled).
    pub fn pet(&self) {
        if self.every.is_some() {
            notify("WATCHDOG=1");
        }
    }

    /// Awaits `fut`, petting the watchdog at every interval meanwhile while `healthy()` holds:
    /// for a wait on build slots, which is healthy only while some slot can still come free.
    pub async fn while_waiting_if<F: Future>(
        &self,
        fut: F,
        healthy: impl Fn() -> bool,
    ) -> F::Output {
        let Some(every) = self.every else {
            return fut.await;
        };
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return out,
                _ = tokio::time::sleep(every) => if healthy() { self.pet() },
            }
        }
    }

    /// Awaits `fut`, petting the watchdog at every interval meanwhile: for the loop's own waits
    /// that are bounded or healthy (a long poll with a deadline, a free build slot, the drain).
    pub async fn while_waiting<F: Future>(&self, fut: F) -> F::Output {
        self.while_waiting_if(fut, || true).await
    }
}
