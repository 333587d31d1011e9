//! The creation rate limit: a sliding window of one minute, like Replicate's
//! "600 predictions a minute".

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

const WINDOW: Duration = Duration::from_secs(60);

pub struct CreationLimit {
    per_minute: usize,
    recent: Mutex<VecDeque<Instant>>,
}

impl CreationLimit {
    /// `per_minute` of 0 means no limit.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute as usize,
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// Counts one creation at `now`, or says in how many whole seconds one will be allowed.
    pub fn admit(&self, now: Instant) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            recent.pop_front();
        }
        if recent.len() < self.per_minute {
            recent.push_back(now);
            return Ok(());
        }
        let oldest = *recent.front().expect("the window is full");
        let wait = WINDOW.saturating_sub(now.duration_since(oldest));
        Err(wait.as_secs_f64().ceil().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_until_the_window_moves() {
        let limit = CreationLimit::new(2);
        let start = Instant::now();
        assert!(limit.admit(start).is_ok());
        assert!(limit.admit(start + Duration::from_secs(10)).is_ok());
        assert_eq!(limit.admit(start + Duration::from_secs(20)), Err(40));
        assert!(limit.admit(start + Duration::from_secs(61)).is_ok());
        assert!(CreationLimit::new(0).admit(start).is_ok());
    }
}
