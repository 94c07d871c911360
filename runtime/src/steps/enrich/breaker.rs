//! The circuit breaker of an `enrich` step: after `failures` consecutive failed calls the
//! step fails fast for `cooldown_ms`, then lets one trial call through.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// `[steps.breaker]`: after `failures` consecutive failed calls the step fails fast for
/// `cooldown_ms`, then lets one trial call through.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failed calls that open the breaker (default 5).
    pub failures: u32,
    /// How long it stays open, in milliseconds (default 30000).
    pub cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            cooldown_ms: 30_000,
        }
    }
}

/// State of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial call is out, since then.
    HalfOpen {
        since: Instant,
    },
}

/// A circuit breaker over consecutive failed calls.
pub(super) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    /// A trial call that has not ended after this long was abandoned (its caller went away):
    /// another may go.
    trial_timeout: Duration,
    state: Mutex<BreakerState>,
    gauge: crate::metrics::BreakerGauge,
}

impl Breaker {
    pub(super) fn new(
        threshold: u32,
        cooldown: Duration,
        trial_timeout: Duration,
        gauge: crate::metrics::BreakerGauge,
    ) -> Breaker {
        gauge.set(0);
        Breaker {
            threshold,
            cooldown,
            trial_timeout,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
            gauge,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May a call go out? `Err(wait)` while open (or while the trial call is out).
    pub(super) fn admit(&self) -> Result<(), Duration> {
        let mut state = self.lock();
        match *state {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now < until {
                    Err(until - now)
                } else {
                    *state = BreakerState::HalfOpen { since: now };
                    self.gauge.set(2);
                    Ok(())
                }
            }
            BreakerState::HalfOpen { since } if since.elapsed() > self.trial_timeout => {
                *state = BreakerState::HalfOpen {
                    since: Instant::now(),
                };
                Ok(())
            }
            BreakerState::HalfOpen { .. } => Err(self.cooldown.min(Duration::from_secs(1))),
        }
    }

    pub(super) fn succeeded(&self) {
        let mut state = self.lock();
        if *state != (BreakerState::Closed { failures: 0 }) {
            if !matches!(*state, BreakerState::Closed { .. }) {
                tracing::info!(step = %self.gauge.step(), "Enrichment breaker closed.");
            }
            *state = BreakerState::Closed { failures: 0 };
            self.gauge.set(0);
        }
    }

    /// Records a failed call; the time until the next call may go, when it opened.
    pub(super) fn failed(&self) -> Option<Duration> {
        let mut state = self.lock();
        let open = match *state {
            BreakerState::Closed { failures } if failures + 1 >= self.threshold => true,
            BreakerState::Closed { failures } => {
                *state = BreakerState::Closed {
                    failures: failures + 1,
                };
                false
            }
            BreakerState::HalfOpen { .. } => true,
            BreakerState::Open { until } => {
                return Some(until.saturating_duration_since(Instant::now()))
            }
        };
        if open {
            *state = BreakerState::Open {
                until: Instant::now() + self.cooldown,
            };
            self.gauge.set(1);
            tracing::warn!(step = %self.gauge.step(), cooldown_ms = self.cooldown.as_millis() as u64, "Enrichment breaker opened.");
            return Some(self.cooldown);
        }
        None
    }
}

