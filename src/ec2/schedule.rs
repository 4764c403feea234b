//! When a wait polls next. Predictive by default: a resource that reports its progress (a
//! snapshot's `Progress`) is polled rarely until its extrapolated end and densely near it; one that
//! does not is polled by what the same kind of wait took before in this process, else by a
//! geometric back-off. A fixed interval (Packer's way) is kept for `aws_polling` /
//! `AWS_POLL_DELAY_SECONDS`, and as the baseline of `scripts/bench waits`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The first pause: most resources are ready within a second (attachments, volumes from small
/// snapshots), so a multi-second first pause would dominate short builds.
pub const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The smallest pause: below 100 ms a poll costs more than it saves (a Describe call takes
/// milliseconds, and EC2 counts every one against the account's rate limit).
const MIN_STEP_S: f64 = 0.1;
/// Near the predicted end, polls are this fraction of the wait apart: the lateness goal is 3 % of
/// the wait (issue 12), 2 % leaves room for the call's own latency.
const DENSE_FRACTION: f64 = 0.02;
/// Growth of the pause when nothing predicts the end (no progress, no history).
const GROWTH: f64 = 2.5;
/// Growth of the jumps towards a remembered duration: few calls before the expected end.
const HISTORY_GROWTH: f64 = 4.0;
/// The dense zone starts this close to a remembered duration (waits vary by a few percent).
const HISTORY_LEAD: f64 = 0.97;
/// Past 110 % of a remembered duration the memory was wrong: back off geometrically.
const HISTORY_OVERDUE: f64 = 1.1;
/// Growth once overdue.
const OVERDUE_GROWTH: f64 = 1.25;
/// The longest pause with a prediction: AWS's snapshot progress is not linear (it can sit at a
/// value, then jump), so no prediction is trusted for longer than this. Packer polls every 15 s.
pub const MAX_PAUSE: Duration = Duration::from_secs(30);
/// Longest pause after throttling (`RequestLimitExceeded` after the SDK's own retries).
pub const MAX_THROTTLED_PAUSE: Duration = Duration::from_secs(60);

/// How a wait polls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// Progress, then history, then geometric back-off capped at `cap`.
    Predictive {
        /// The longest pause when nothing predicts the end.
        cap: Duration,
    },
    /// Every `interval`, as Packer does.
    Fixed(Duration),
}

/// How long waits of each kind took in this process (the last one), keyed by [`kind_of`].
static HISTORY: Mutex<Option<HashMap<String, f64>>> = Mutex::new(None);

/// The kind of a wait from its description: the words without digits ("snapshot to complete",
/// "image in to become available"), so ids and regions do not split kinds.
pub fn kind_of(what: &str) -> String {
    what.split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Seconds the last wait of `kind` took, if one finished in this process.
pub fn remembered(kind: &str) -> Option<f64> {
    HISTORY
        .lock()
        .ok()
        .and_then(|h| h.as_ref().and_then(|m| m.get(kind).copied()))
}

/// Records that a wait of `kind` took `seconds`.
pub fn remember(kind: &str, seconds: f64) {
    if let Ok(mut h) = HISTORY.lock() {
        h.get_or_insert_with(HashMap::new)
            .insert(kind.to_owned(), seconds);
    }
}

/// The pause after a poll at `elapsed` seconds that found the resource not ready, with its
/// `progress` (0..1) when it reports one, and `history` (seconds the same kind took before).
pub fn next_pause(
    schedule: Schedule,
    elapsed: f64,
    progress: Option<f64>,
    history: Option<f64>,
) -> Duration {
    let cap = match schedule {
        Schedule::Fixed(interval) => return interval,
        Schedule::Predictive { cap } => cap,
    };
    let dense = |total: f64| (DENSE_FRACTION * total).max(MIN_STEP_S);
    let next = match (progress.filter(|p| *p > 0.0 && *p < 1.0), history) {
        // Progress reported in whole percent: at `p`, the end is no earlier than when `p + 1%`
        // would be reached at the rate so far (linear), and about `elapsed / p`.
        (Some(p), _) => {
            let total = elapsed / p;
            let earliest = elapsed / (p + 0.01).min(1.0);
            (elapsed + dense(total)).max(earliest - dense(total))
        }
        (None, Some(took)) if elapsed < HISTORY_LEAD * took - dense(took) => (elapsed
            * HISTORY_GROWTH)
            .max(elapsed + dense(took))
            .min(HISTORY_LEAD * took),
        (None, Some(took)) if elapsed < HISTORY_OVERDUE * took => elapsed + dense(took),
        (None, Some(_)) => elapsed * OVERDUE_GROWTH,
        (None, None) => {
            let pause = (elapsed * (GROWTH - 1.0)).max(FIRST_PAUSE.as_secs_f64());
            return Duration::from_secs_f64(pause).min(cap);
        }
    };
    Duration::from_secs_f64((next - elapsed).max(MIN_STEP_S)).min(MAX_PAUSE)
}

/// The pause after the `n`-th throttled poll in a row (1 s, 2 s, 4 s ... up to
/// [`MAX_THROTTLED_PAUSE`]): throttling slows the wait down instead of failing the build.
pub fn throttled_pause(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(6).saturating_sub(1)).min(MAX_THROTTLED_PAUSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a wait of `total` seconds whose progress rises linearly in whole percent, or
    /// that reports none; returns (lateness, polls).
    fn simulate(total: f64, with_progress: bool, history: Option<f64>) -> (f64, u32) {
        let schedule = Schedule::Predictive {
            cap: Duration::from_secs(5),
        };
        let (mut t, mut polls) = (0.0, 0);
        loop {
            polls += 1;
            if t >= total {
                return (t - total, polls);
            }
            let progress = with_progress.then(|| (t / total * 100.0).floor() / 100.0);
            t += next_pause(schedule, t, progress, history).as_secs_f64();
        }
    }

    #[test]
    fn progress_meets_the_lateness_and_call_goals() {
        for total in [1.0, 5.0, 30.0, 120.0, 600.0] {
            let (late, polls) = simulate(total, true, None);
            assert!(late <= (0.03 * total).max(0.2), "{total} s: {late} s late");
            assert!(
                f64::from(polls) <= 8.0 + total / 15.0,
                "{total} s: {polls} polls"
            );
        }
    }

    #[test]
    fn history_meets_the_goals_when_it_is_right_and_recovers_when_wrong() {
        for total in [1.0, 5.0, 30.0, 120.0] {
            let (late, polls) = simulate(total, false, Some(total));
            assert!(late <= (0.03 * total).max(0.2), "{total} s: {late} s late");
            assert!(f64::from(polls) <= 8.0 + total / 15.0, "{total} s: {polls}");
        }
        // Remembered 5 s, takes 60: still found, within a quarter of the wait.
        let (late, _) = simulate(60.0, false, Some(5.0));
        assert!(late <= 15.0, "{late}");
    }

    #[test]
    fn without_information_the_pause_grows_to_the_cap() {
        let s = Schedule::Predictive {
            cap: Duration::from_secs(5),
        };
        assert_eq!(next_pause(s, 0.0, None, None), FIRST_PAUSE);
        assert_eq!(next_pause(s, 100.0, None, None), Duration::from_secs(5));
        assert_eq!(
            next_pause(
                Schedule::Fixed(Duration::from_secs(15)),
                3.0,
                Some(0.5),
                None
            ),
            Duration::from_secs(15)
        );
        assert_eq!(throttled_pause(1), Duration::from_secs(1));
        assert_eq!(throttled_pause(3), Duration::from_secs(4));
        assert_eq!(throttled_pause(30), Duration::from_secs(32));
    }

    #[test]
    fn kinds_ignore_ids_and_regions() {
        assert_eq!(
            kind_of("image ami-0abc123 in us-east-1 to become available"),
            "image in to become available"
        );
        assert_eq!(
            kind_of("snapshot snap-12 to complete"),
            "snapshot to complete"
        );
    }
}
