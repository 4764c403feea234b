//! The one wait for eventual consistency: poll at an interval until a probe reports ready a
//! number of times in a row, fail fast on terminal states, give up at a deadline, stop on cancel.

use super::Ec2Error;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The first pause between polls; pauses double up to the wait's interval. Most resources are
/// ready within a second (attachments, volumes from small snapshots), so a fixed multi-second
/// first pause would dominate short builds.
pub const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// What a probe saw.
#[derive(Debug, Clone)]
pub enum Probe<T> {
    /// Done, with the value to return.
    Ready(T),
    /// Not yet; the current state (and progress, e.g. `pending 45%`).
    Pending(String),
    /// A state the resource never leaves (e.g. snapshot `error`), with AWS's reason.
    Terminal(String, String),
}

/// How to wait.
#[derive(Debug, Clone)]
pub struct Wait {
    /// What is awaited, for logs and errors (e.g. `volume vol-1 to become available`).
    pub what: String,
    /// Time between polls.
    pub interval: Duration,
    /// When to give up.
    pub deadline: Duration,
    /// Ready results needed in a row (more than one rides out eventual consistency).
    pub successes: u32,
}

/// Polling settings from the template's `aws_polling` or `AWS_POLL_DELAY_SECONDS` /
/// `AWS_MAX_ATTEMPTS` (as Packer reads them); `None` keeps kiln's per-wait defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Polling {
    /// Seconds between polls.
    pub delay_seconds: Option<u64>,
    /// Polls before giving up.
    pub max_attempts: Option<u64>,
}

impl Polling {
    /// The template's values, overridden by the environment as in Packer.
    pub fn from_env(delay_seconds: Option<i64>, max_attempts: Option<i64>) -> Self {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        Self {
            delay_seconds: env("AWS_POLL_DELAY_SECONDS")
                .or(delay_seconds.and_then(|v| u64::try_from(v).ok())),
            max_attempts: env("AWS_MAX_ATTEMPTS")
                .or(max_attempts.and_then(|v| u64::try_from(v).ok())),
        }
    }

    /// A wait for `what` with kiln's default `interval` and `deadline` unless overridden.
    pub fn wait(
        &self,
        what: impl Into<String>,
        interval: Duration,
        deadline: Duration,
        successes: u32,
    ) -> Wait {
        let interval = self
            .delay_seconds
            .map(Duration::from_secs)
            .unwrap_or(interval);
        let deadline = match self.max_attempts {
            Some(n) => interval * u32::try_from(n).unwrap_or(u32::MAX),
            None => deadline,
        };
        Wait {
            what: what.into(),
            interval,
            deadline,
            successes: successes.max(1),
        }
    }
}

/// Polls `probe` as `spec` says. Returns the last ready value.
///
/// Side effects: only the probe's. Cancellable at every pause.
pub async fn until<T, F, Fut>(
    spec: &Wait,
    cancel: &CancellationToken,
    mut probe: F,
) -> Result<T, Ec2Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Probe<T>, Ec2Error>>,
{
    let start = Instant::now();
    let mut streak = 0;
    let mut last_state = "unknown".to_owned();
    let mut pause = FIRST_PAUSE.min(spec.interval);
    loop {
        if cancel.is_cancelled() {
            return Err(Ec2Error::Cancelled(spec.what.clone()));
        }
        match probe().await? {
            Probe::Ready(v) => {
                streak += 1;
                if streak >= spec.successes {
                    return Ok(v);
                }
            }
            Probe::Pending(state) => {
                streak = 0;
                if state != last_state {
                    tracing::info!(what = %spec.what, state = %state, "waiting");
                }
                last_state = state;
            }
            Probe::Terminal(state, detail) => {
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                };
                return Err(Ec2Error::Terminal {
                    what: spec.what.clone(),
                    state,
                    detail,
                });
            }
        }
        if start.elapsed() >= spec.deadline {
            return Err(Ec2Error::Timeout {
                what: spec.what.clone(),
                waited_s: start.elapsed().as_secs(),
                last_state,
            });
        }
        let sleep = pause;
        pause = (pause * 2).min(spec.interval);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = cancel.cancelled() => return Err(Ec2Error::Cancelled(spec.what.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(successes: u32) -> Wait {
        Wait {
            what: "thing".into(),
            interval: Duration::from_millis(5),
            deadline: Duration::from_millis(300),
            successes,
        }
    }

    #[tokio::test]
    async fn consecutive_successes_terminal_timeout_cancel() {
        let cancel = CancellationToken::new();
        // Ready, pending, ready, ready: two in a row needed.
        let seq = std::sync::Mutex::new(
            vec![
                Probe::Ready(1),
                Probe::Pending("x".into()),
                Probe::Ready(2),
                Probe::Ready(3),
            ]
            .into_iter(),
        );
        let v = until(&spec(2), &cancel, || {
            let next = seq
                .lock()
                .unwrap()
                .next()
                .unwrap_or(Probe::Pending("done".into()));
            async move { Ok(next) }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
        let e = until(&spec(1), &cancel, || async {
            Ok::<Probe<()>, _>(Probe::Terminal("error".into(), "boom".into()))
        })
        .await
        .unwrap_err();
        assert!(matches!(e, Ec2Error::Terminal { .. }), "{e}");
        let e = until(&spec(1), &cancel, || async {
            Ok::<Probe<()>, _>(Probe::Pending("pending".into()))
        })
        .await
        .unwrap_err();
        assert!(matches!(e, Ec2Error::Timeout { .. }), "{e}");
        cancel.cancel();
        let e = until(&spec(1), &cancel, || async {
            Ok::<Probe<()>, _>(Probe::Pending("pending".into()))
        })
        .await
        .unwrap_err();
        assert!(matches!(e, Ec2Error::Cancelled(_)));
    }

    #[test]
    fn polling_overrides() {
        let p = Polling {
            delay_seconds: Some(2),
            max_attempts: Some(10),
        };
        let w = p.wait("x", Duration::from_secs(15), Duration::from_secs(3600), 1);
        assert_eq!(w.interval, Duration::from_secs(2));
        assert_eq!(w.deadline, Duration::from_secs(20));
    }
}
