//! The retry policy of every pipeline: exponential backoff with jitter.
//!
//! Ground floor: the policy knows no configuration file; the engine builds it from a
//! pipeline's `[on_error]` table ([`crate::engine::retry_policy`]), `enrich` from its own keys.

use std::time::Duration;

use rand::RngExt;

/// When and how often a transient fault is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based): `initial × 2^(attempt-1)`,
    /// capped at `max_backoff`, of which a random half is jitter ("equal jitter"), so that
    /// retries of many messages do not fall in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max_backoff);
        let half = capped / 2;
        let jitter = rand::rng().random_range(0..=half.as_micros() as u64);
        half + Duration::from_micros(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        for _ in 0..50 {
            let b1 = p.backoff(1);
            assert!(
                b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100),
                "{b1:?}"
            );
            let b3 = p.backoff(3);
            assert!(
                b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400),
                "{b3:?}"
            );
            let b10 = p.backoff(10);
            assert!(
                b10 >= Duration::from_millis(500) && b10 <= Duration::from_millis(1000),
                "{b10:?}"
            );
        }
    }
}
