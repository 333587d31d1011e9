//! When a failed delivery is tried again.

use std::time::Duration;

use settings::FromSetting;

/// The delays between attempts; a delivery gets `delays.len() + 1` attempts in all.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    pub delays: Vec<Duration>,
    /// Each delay is spread by up to this fraction either way, so retries of many messages
    /// failing at once do not arrive together.
    pub jitter: f64,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        let h = 3600;
        Self {
            delays: [5, 5 * 60, 30 * 60, 2 * h, 5 * h, 10 * h, 10 * h]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            jitter: 0.2,
        }
    }
}

/// A comma-separated list of durations, such as `5s,5m,30m,2h,5h,10h,10h`.
#[derive(Debug, Clone, PartialEq)]
pub struct Delays(pub Vec<Duration>);

impl FromSetting for Delays {
    fn from_setting(raw: &str) -> Result<Self, String> {
        let delays: Vec<Duration> = Vec::<Duration>::from_setting(raw)?;
        if delays.is_empty() || delays.len() > 50 {
            return Err("must list between 1 and 50 durations".to_owned());
        }
        Ok(Self(delays))
    }
}

impl RetrySchedule {
    /// How many attempts a delivery gets.
    pub fn max_attempts(&self) -> i32 {
        i32::try_from(self.delays.len() + 1).unwrap_or(i32::MAX)
    }

    /// The delay after failed attempt number `attempt` (1-based), with jitter from `unit`, a
    /// random number in [0, 1); `None` when no attempt is left.
    pub fn delay_after(&self, attempt: i32, unit: f64) -> Option<Duration> {
        let index = usize::try_from(attempt).ok()?.checked_sub(1)?;
        let base = *self.delays.get(index)?;
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        Some(base.mul_f64(factor.max(0.0)))
    }
}

impl RetrySchedule {
    /// The delay after failed attempt number `attempt` of the delivery's current run of the
    /// schedule (1-based: the run's first attempt is 1), with jitter from `unit`. Past the end of
    /// the schedule it is the last delay, never none: a run may be longer than the schedule
    /// lists when the schedule was shortened since the run started, and spending those attempts
    /// back to back would only dead-letter the delivery again within seconds.
    pub fn delay_in_run(&self, attempt: i32, unit: f64) -> Duration {
        let last = i32::try_from(self.delays.len()).unwrap_or(i32::MAX);
        self.delay_after(attempt.clamp(1, last.max(1)), unit)
            .unwrap_or(Duration::ZERO)
    }
}

/// Bounds on a `Retry-After` the receiver asks for: at least a second, at most a day.
pub fn bounded_retry_after(seconds: u64) -> Duration {
    Duration::from_secs(seconds.clamp(1, 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_with_jitter_bounds() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.max_attempts(), 8);
        assert_eq!(schedule.delay_after(1, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(schedule.delay_after(1, 0.0), Some(Duration::from_secs(4)));
        let high = schedule.delay_after(2, 0.999_999).unwrap();
        assert!(high <= Duration::from_secs(360) && high > Duration::from_secs(359));
        assert_eq!(
            schedule.delay_after(7, 0.5),
            Some(Duration::from_secs(36000))
        );
        assert_eq!(schedule.delay_after(8, 0.5), None);
        assert_eq!(schedule.delay_after(0, 0.5), None);
    }

    #[test]
    fn a_run_past_the_schedule_keeps_its_last_delay() {
        let schedule = RetrySchedule {
            delays: vec![Duration::from_secs(10), Duration::from_secs(60)],
            jitter: 0.0,
        };
        assert_eq!(schedule.delay_in_run(1, 0.5), Duration::from_secs(10));
        assert_eq!(schedule.delay_in_run(2, 0.5), Duration::from_secs(60));
        assert_eq!(schedule.delay_in_run(3, 0.5), Duration::from_secs(60));
        assert_eq!(schedule.delay_in_run(40, 0.5), Duration::from_secs(60));
        // A run never starts before its first attempt; be safe if asked anyway.
        assert_eq!(schedule.delay_in_run(0, 0.5), Duration::from_secs(10));
    }

    #[test]
    fn parses_a_schedule() {
        let delays = Delays::from_setting("1s, 2m,3h").unwrap();
        assert_eq!(delays.0.len(), 3);
        assert!(Delays::from_setting("").is_err());
        assert!(Delays::from_setting("1s,often").is_err());
    }
}
