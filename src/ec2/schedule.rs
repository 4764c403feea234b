//! When a wait polls next. Predictive by default: a resource that reports its progress (a
//! snapshot's `Progress`) is polled rarely until its extrapolated end and densely near it. One that
//! does not (volumes, attachments, images) is polled with bounded lateness: every poll is at most
//! max(0.25 s, 4 %) of the time waited so far after the one before, so whenever the resource
//! becomes ready the wait notices within max(0.3 s, 5 %) of the wait (issue 23), in about
//! T_dense / 0.25 + ln(T / 6.25) / ln(1.04) calls. History (`history.rs`: the shortest of the last
//! waits of the same kind and class, from this process or earlier runs on the builder) lets a wait
//! skip ahead: geometric jumps to just before the remembered end, then the same bounded-lateness
//! polls, so a wait that takes as long as before costs a handful of calls. A fixed interval
//! (Packer's way) is kept for `aws_polling` / `AWS_POLL_DELAY_SECONDS`, and as the baseline of
//! `scripts/bench waits`.

use std::time::Duration;

/// The first pause of a wait that reports progress, and the pause that confirms a ready answer:
/// most resources are ready within a second (attachments, volumes from small snapshots), so a
/// multi-second first pause would dominate short builds.
pub const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The smallest pause: below 100 ms a poll costs more than it saves (a Describe call takes
/// milliseconds, and EC2 counts every one against the account's rate limit).
const MIN_STEP_S: f64 = 0.1;
/// Near the predicted end, polls are this fraction of the wait apart: the lateness goal is 3 % of
/// the wait (issue 12), 2 % leaves room for the call's own latency.
const DENSE_FRACTION: f64 = 0.02;
/// Growth of the pause of a wait that reports progress but has none yet.
const GROWTH: f64 = 2.5;
/// Bounded lateness, absolute part: the goal is 0.3 s (issue 23); 50 ms are left for the Describe
/// call's round trip (milliseconds on the emulator, tens of them on AWS).
const LATE_STEP_S: f64 = 0.25;
/// Bounded lateness, relative part: the goal is 5 % of the wait (issue 23); 1 % is left for the
/// call's round trip and the scheduler.
const LATE_FRACTION: f64 = 0.04;
/// Growth of the jumps towards a remembered end: few calls before it (four jumps from 0.1 s
/// reach 25 s), and a wait that ends before the history says is at most 3x late.
const HISTORY_GROWTH: f64 = 4.0;
/// Bounded-lateness polls start at this fraction of the shortest remembered duration: waits of
/// the same kind and class vary by a few percent, and the goal allows 5 % of lateness.
const HISTORY_LEAD: f64 = 0.95;
/// The longest pause with a prediction: AWS's snapshot progress is not linear (it can sit at a
/// value, then jump), so no prediction is trusted for longer than this. Packer polls every 15 s.
pub const MAX_PAUSE: Duration = Duration::from_secs(30);
/// Longest pause after throttling (`RequestLimitExceeded` after the SDK's own retries).
pub const MAX_THROTTLED_PAUSE: Duration = Duration::from_secs(60);

/// How a wait polls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// Progress, then history, then bounded lateness (waits without progress) or a geometric
    /// back-off (waits whose progress is still 0 %), pauses capped at `cap`.
    Predictive {
        /// The longest pause when nothing predicts the end.
        cap: Duration,
    },
    /// Every `interval`, as Packer does.
    Fixed(Duration),
}

/// The kind of a wait from its description: the words without digits ("snapshot to complete",
/// "image in to become available"), so ids and regions do not split kinds.
pub fn kind_of(what: &str) -> String {
    what.split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The pause after a poll at `elapsed` seconds that found the resource not ready. `progress` is
/// the fraction done (0..1) when the resource reports one (`Some(0.0)` when it reports 0 %), and
/// `history` the shortest recent duration of the same kind of wait (see `history.rs`).
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
    let bounded = (LATE_FRACTION * elapsed).max(LATE_STEP_S);
    let lead = history.map(|took| HISTORY_LEAD * took);
    let next = match (progress, lead) {
        // Progress reported in whole percent: at `p`, the end is no earlier than when `p + 1%`
        // would be reached at the rate so far (linear), and about `elapsed / p`.
        (Some(p), _) if p > 0.0 && p < 1.0 => {
            let total = elapsed / p;
            let earliest = elapsed / (p + 0.01).min(1.0);
            (elapsed + dense(total)).max(earliest - dense(total))
        }
        // Well before the remembered end: jump towards it.
        (_, Some(lead)) if elapsed + bounded < lead => (elapsed * HISTORY_GROWTH)
            .max(elapsed + MIN_STEP_S)
            .min(lead),
        // Progress reported, still 0 %: back off until it moves (then it predicts the end).
        (Some(_), _) => {
            let pause = (elapsed * (GROWTH - 1.0)).max(FIRST_PAUSE.as_secs_f64());
            return Duration::from_secs_f64(pause).min(cap);
        }
        // Nothing reported: bounded lateness.
        (None, _) => {
            let cap = cap.max(Duration::from_secs_f64(LATE_STEP_S));
            return Duration::from_secs_f64(bounded).min(cap);
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

    /// Half a Describe call's round trip: 50 ms in all (AWS in-region; the emulator answers in a
    /// few ms), the state observed as the call leaves (the pessimistic end).
    const LATENCY: f64 = 0.025;

    /// The lateness goal of waits without progress (issue 23).
    fn late_goal(total: f64) -> f64 {
        (0.05 * total).max(0.3)
    }

    /// The call budget of `scripts/bench waits`.
    fn call_goal(total: f64) -> f64 {
        8.0 + total / 15.0
    }

    /// Simulates a wait of `total` seconds on a synthetic clock, whose progress rises linearly in
    /// whole percent or that reports none, each poll answered `latency` seconds after it is sent;
    /// returns (lateness, polls).
    fn simulate_with(
        total: f64,
        with_progress: bool,
        history: Option<f64>,
        cap: f64,
        latency: f64,
    ) -> (f64, u32) {
        let schedule = Schedule::Predictive {
            cap: Duration::from_secs_f64(cap),
        };
        let (mut t, mut polls) = (0.0, 0);
        loop {
            polls += 1;
            if t >= total {
                return (t + latency - total, polls);
            }
            t += latency;
            let progress = with_progress.then(|| (t / total * 100.0).floor() / 100.0);
            t += next_pause(schedule, t, progress, history).as_secs_f64();
        }
    }

    fn simulate(total: f64, with_progress: bool, history: Option<f64>) -> (f64, u32) {
        simulate_with(total, with_progress, history, 5.0, 0.0)
    }

    /// Wait lengths from 0.05 s to 30 min, denser where the pauses change regime.
    fn lengths() -> impl Iterator<Item = f64> {
        (0..400)
            .map(|i| 0.05 * 1.025_f64.powi(i))
            .filter(|t| *t <= 1800.0)
    }

    #[test]
    fn progress_meets_the_lateness_and_call_goals() {
        for total in [1.0, 5.0, 30.0, 120.0, 600.0] {
            let (late, polls) = simulate(total, true, None);
            assert!(late <= (0.03 * total).max(0.2), "{total} s: {late} s late");
            assert!(
                f64::from(polls) <= call_goal(total),
                "{total} s: {polls} polls"
            );
        }
    }

    #[test]
    fn without_progress_or_history_lateness_is_bounded_at_every_length() {
        for total in lengths() {
            let (late, polls) = simulate_with(total, false, None, 5.0, LATENCY);
            assert!(late <= late_goal(total), "{total} s: {late} s late");
            // The price of no information: dense polls, then 4 % steps (then the cap's).
            let bound = 2.0
                + total.min(6.25) / LATE_STEP_S
                + (total.min(125.0) / 6.25).max(1.0).ln() / 1.04_f64.ln()
                + (total - 125.0).max(0.0) / 5.0;
            assert!(
                f64::from(polls) <= bound,
                "{total} s: {polls} polls > {bound}"
            );
        }
    }

    #[test]
    fn with_history_of_the_same_length_both_goals_are_met() {
        for total in lengths() {
            // History is the last pending poll's time: at most a step before the end.
            for took in [total, total * 0.97] {
                let (late, polls) = simulate_with(total, false, Some(took), 5.0, LATENCY);
                assert!(
                    late <= late_goal(total),
                    "{total} s ({took}): {late} s late"
                );
                assert!(
                    f64::from(polls) <= call_goal(total),
                    "{total} s ({took}): {polls} polls"
                );
            }
        }
    }

    #[test]
    fn wrong_history_costs_calls_or_bounded_lateness() {
        for total in [1.0, 3.0, 10.0, 30.0, 120.0] {
            // Remembered much shorter: bounded lateness from the remembered end on.
            let (late, _) = simulate(total, false, Some(total / 10.0));
            assert!(late <= late_goal(total), "{total} s: {late} s late");
            // Remembered longer: found at the next jump, at most one jump (4x) late.
            let (late, polls) = simulate(total, false, Some(total * 2.0));
            assert!(late <= 3.0 * total + 0.3, "{total} s: {late} s late");
            assert!(
                f64::from(polls) <= call_goal(total),
                "{total} s: {polls} polls"
            );
        }
    }

    #[test]
    fn pauses_by_what_is_known() {
        let s = Schedule::Predictive {
            cap: Duration::from_secs(5),
        };
        // Progress at 0 %: geometric back-off to the cap (snapshots, as before).
        assert_eq!(next_pause(s, 0.0, Some(0.0), None), FIRST_PAUSE);
        assert_eq!(
            next_pause(s, 100.0, Some(0.0), None),
            Duration::from_secs(5)
        );
        // Nothing reported: bounded lateness, then the cap.
        assert_eq!(next_pause(s, 0.0, None, None), Duration::from_millis(250));
        assert_eq!(next_pause(s, 50.0, None, None), Duration::from_secs(2));
        assert_eq!(next_pause(s, 1000.0, None, None), Duration::from_secs(5));
        // History: jumps towards 95 % of it.
        assert_eq!(
            next_pause(s, 1.0, None, Some(100.0)),
            Duration::from_secs(3)
        );
        assert_eq!(
            next_pause(s, 90.0, None, Some(100.0)),
            Duration::from_secs(5)
        );
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
