//! The one wait for eventual consistency: poll until a probe reports ready a number of times in
//! a row, fail fast on terminal states, give up at a deadline, stop on cancel, slow down (not fail)
//! when EC2 throttles. When to poll is `schedule.rs`'s: predicted from progress and history
//! (`history.rs`), which every finished wait adds to.

use super::Ec2Error;
use super::history;
use super::schedule::{self, Schedule};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Error codes that mean "calling too fast" (after the SDK's own retries): the wait slows down.
const THROTTLING: &[&str] = &["RequestLimitExceeded", "Throttling", "ThrottlingException"];

/// What a probe saw.
#[derive(Debug, Clone)]
pub enum Probe<T> {
    /// Done, with the value to return.
    Ready(T),
    /// Not yet; the current state (and progress, e.g. `pending 45%`).
    Pending(String),
    /// Not yet, with the fraction done (0..1) the resource reports (a snapshot's `Progress`).
    Progress(String, f64),
    /// A state the resource never leaves (e.g. snapshot `error`), with AWS's reason.
    Terminal(String, String),
}

/// How to wait.
#[derive(Debug, Clone)]
pub struct Wait {
    /// What is awaited, for logs and errors (e.g. `volume vol-1 to become available`).
    pub what: String,
    /// The longest pause when nothing predicts the end (the fixed interval with
    /// [`Schedule::Fixed`]).
    pub interval: Duration,
    /// When to poll.
    pub schedule: Schedule,
    /// When to give up.
    pub deadline: Duration,
    /// Ready results needed in a row (more than one rides out eventual consistency).
    pub successes: u32,
    /// Which waits this one is like (its kind and class, e.g. `volume to become available
    /// [blank, 8 GiB]`): the key of its history. [`Polling::wait`] sets the kind from `what`;
    /// [`Wait::class`] adds what makes waits of a kind differ.
    pub history_key: String,
}

impl Wait {
    /// Waits of this kind that share `class` share a history (e.g. a volume's source and size
    /// class, an image's region), apart from the kind's other waits.
    pub fn class(mut self, class: impl std::fmt::Display) -> Self {
        self.history_key = format!("{} [{class}]", schedule::kind_of(&self.what));
        self
    }
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
        // A delay set by the template or the environment is Packer's fixed interval.
        let (interval, schedule) = match self.delay_seconds {
            Some(s) => (
                Duration::from_secs(s),
                Schedule::Fixed(Duration::from_secs(s)),
            ),
            None => (interval, Schedule::Predictive { cap: interval }),
        };
        let deadline = match self.max_attempts {
            Some(n) => interval * u32::try_from(n).unwrap_or(u32::MAX),
            None => deadline,
        };
        let what = what.into();
        Wait {
            history_key: schedule::kind_of(&what),
            what,
            interval,
            schedule,
            deadline,
            successes: successes.max(1),
        }
    }
}

/// Polls `probe` as `spec` says. Returns the last ready value. Remembers how long the wait took
/// for the next wait of its kind: the time of its last not-ready poll (the resource became ready
/// after it), so the history never runs ahead of the resource.
///
/// Side effects: the probe's, and a sample in the wait history (`history.rs`). Cancellable at
/// every pause.
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
    let history = history::recent(&spec.history_key)
        .into_iter()
        .reduce(f64::min);
    let (mut polls, mut last_pending) = (0u32, 0.0);
    let mut streak = 0;
    let mut throttled = 0;
    let mut last_state = "unknown".to_owned();
    loop {
        if cancel.is_cancelled() {
            return Err(Ec2Error::Cancelled(spec.what.clone()));
        }
        let sent = start.elapsed().as_secs_f64();
        polls += 1;
        let seen = probe().await;
        let elapsed = start.elapsed().as_secs_f64();
        let mut progress = None;
        let pause = match seen {
            Ok(Probe::Ready(v)) => {
                streak += 1;
                if streak >= spec.successes {
                    done(spec, polls, elapsed, last_pending, history);
                    return Ok(v);
                }
                None
            }
            Ok(Probe::Pending(state)) => {
                streak = 0;
                last_pending = sent;
                note(spec, &mut last_state, state);
                None
            }
            Ok(Probe::Progress(state, fraction)) => {
                streak = 0;
                last_pending = sent;
                progress = Some(fraction);
                note(spec, &mut last_state, state);
                None
            }
            Ok(Probe::Terminal(state, detail)) => return Err(terminal(spec, state, detail)),
            Err(e) if e.code().is_some_and(|c| THROTTLING.contains(&c)) => {
                throttled += 1;
                let pause = schedule::throttled_pause(throttled);
                tracing::warn!(what = %spec.what, error = %e, pause_s = pause.as_secs(), "throttled: polling more slowly");
                Some(pause)
            }
            Err(e) => return Err(e),
        };
        if start.elapsed() >= spec.deadline {
            return Err(Ec2Error::Timeout {
                what: spec.what.clone(),
                waited_s: start.elapsed().as_secs(),
                last_state,
            });
        }
        let pause = pause.unwrap_or_else(|| {
            throttled = 0;
            if streak > 0 {
                // Ready once, confirming: soon.
                schedule::FIRST_PAUSE.min(spec.interval)
            } else {
                schedule::next_pause(spec.schedule, elapsed, progress, history)
            }
        });
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = cancel.cancelled() => return Err(Ec2Error::Cancelled(spec.what.clone())),
        }
    }
}

/// Records the finished wait in the history (the last not-ready poll's time) and the log.
fn done(spec: &Wait, polls: u32, elapsed: f64, last_pending: f64, history: Option<f64>) {
    history::record(&spec.history_key, last_pending);
    tracing::info!(
        what = %spec.what,
        polls,
        waited_s = elapsed,
        history_s = history,
        key = %spec.history_key,
        "wait done"
    );
}

fn terminal(spec: &Wait, state: String, detail: String) -> Ec2Error {
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    Ec2Error::Terminal {
        what: spec.what.clone(),
        state,
        detail,
    }
}

fn note(spec: &Wait, last_state: &mut String, state: String) {
    if state != *last_state {
        tracing::info!(what = %spec.what, state = %state, "waiting");
    }
    *last_state = state;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(successes: u32) -> Wait {
        Wait {
            what: "thing".into(),
            interval: Duration::from_millis(5),
            schedule: Schedule::Fixed(Duration::from_millis(5)),
            deadline: Duration::from_millis(300),
            successes,
            history_key: "thing".into(),
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

    #[tokio::test]
    async fn throttling_slows_the_wait_down_instead_of_failing_it() {
        let cancel = CancellationToken::new();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let mut w = spec(1);
        w.deadline = Duration::from_secs(10);
        let v = until(&w, &cancel, || {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(Ec2Error::Api {
                        op: "DescribeSnapshots",
                        resource: "snap-1".into(),
                        region: "r".into(),
                        code: "RequestLimitExceeded".into(),
                        message: "Request limit exceeded.".into(),
                        retryable: true,
                    })
                } else {
                    Ok(Probe::Ready(7))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 7);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_finished_wait_leaves_its_last_pending_poll_in_the_history() {
        let cancel = CancellationToken::new();
        let mut w = spec(1);
        w.history_key = "wait-test [last pending]".into();
        let calls = std::sync::atomic::AtomicU32::new(0);
        until(&w, &cancel, || {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                Ok(if n < 2 {
                    Probe::Pending("creating".into())
                } else {
                    Probe::Ready(())
                })
            }
        })
        .await
        .unwrap();
        let seen = history::recent("wait-test [last pending]");
        // The second poll's time (a pause of 5 ms after the first), not the ready poll's.
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0] >= 0.005, "{seen:?}");
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
        assert_eq!(w.schedule, Schedule::Fixed(Duration::from_secs(2)));
        let w = Polling::default().wait("x", Duration::from_secs(15), Duration::from_secs(3600), 1);
        assert!(matches!(w.schedule, Schedule::Predictive { .. }));
    }
}
