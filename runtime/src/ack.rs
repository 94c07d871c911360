//! End-to-end acknowledgement: when is an input finished?
//!
//! Every input (an HTTP request, a Kafka record, a file) gets one [`Ack`]. Each message derived
//! from it (after `split`) holds a [`fork`](Ack::fork) of it. When the last fork is settled
//! (delivered, filtered, dead-lettered or failed) or dropped, the input's callback runs exactly
//! once with the worst [`Outcome`]. The Kafka source stores an offset only then, the HTTP source
//! answers only then, and a drain waits until no acknowledgement is pending.
//!
//! A fork dropped without being settled counts as [`Outcome::Failed`] with
//! [`ErrorCode::Dropped`]: a bug or a forced shutdown can make a message fail, never vanish.
//! Unless the input itself was dead-lettered: its original bytes are then in the dead-letter
//! destination, which covers every message derived from it (the engine dead-letters an input
//! whose processing panicked, after the panic dropped the forks it held).

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::{ErrorCode, Failure};

/// How an input ended, the worst of its messages' ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every derived message was acknowledged by the sink (or filtered out).
    Delivered {
        /// Messages written to the sink.
        messages: usize,
    },
    /// The input (its original bytes) was written to the dead-letter destination.
    DeadLettered(Failure),
    /// Neither the sink nor the dead-letter destination took it: the input must be offered
    /// again (HTTP 503, Kafka offset not committed, file left in place).
    Failed(Failure),
}

type Callback = Box<dyn FnOnce(Outcome) + Send>;

#[derive(Default)]
struct State {
    delivered: usize,
    dead_lettered: Option<Failure>,
    failed: Option<Failure>,
    /// A fork dropped unsettled: a failure unless the input was dead-lettered.
    dropped: Option<Failure>,
}

struct Shared {
    state: Mutex<State>,
    callback: Mutex<Option<Callback>>,
    /// Set once the original bytes were written to the dead-letter destination, so that two
    /// failing messages of one input write it once.
    dead_letter_written: tokio::sync::Mutex<bool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let state = std::mem::take(self.state.get_mut().unwrap_or_else(|e| e.into_inner()));
        let outcome = if let Some(failure) = state.failed {
            Outcome::Failed(failure)
        } else if let (Some(failure), None) = (state.dropped, &state.dead_lettered) {
            Outcome::Failed(failure)
        } else if let Some(failure) = state.dead_lettered {
            Outcome::DeadLettered(failure)
        } else {
            Outcome::Delivered {
                messages: state.delivered,
            }
        };
        let callback = self
            .callback
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(callback) = callback {
            callback(outcome);
        }
    }
}

/// One message's share of its input's acknowledgement. Settle it exactly once.
pub struct Ack {
    shared: Arc<Shared>,
    settled: bool,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ack")
            .field("settled", &self.settled)
            .finish()
    }
}

impl Ack {
    /// A new input whose `callback` runs once every fork is settled.
    pub fn new(callback: impl FnOnce(Outcome) + Send + 'static) -> Ack {
        Ack {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                callback: Mutex::new(Some(Box::new(callback))),
                dead_letter_written: tokio::sync::Mutex::new(false),
            }),
            settled: false,
        }
    }

    /// A new input and the receiver of its outcome.
    pub fn channel() -> (Ack, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let ack = Ack::new(move |outcome| {
            let _ = tx.send(outcome);
        });
        (ack, rx)
    }

    /// Another message derived from the same input.
    pub fn fork(&self) -> Ack {
        Ack {
            shared: Arc::clone(&self.shared),
            settled: false,
        }
    }

    fn settle(mut self, apply: impl FnOnce(&mut State)) {
        self.settled = true;
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        apply(&mut state);
    }

    /// The sink acknowledged this message.
    pub fn delivered(self) {
        self.settle(|s| s.delivered += 1);
    }

    /// A step dropped this message on purpose (`filter`, or a split of an empty array).
    pub fn filtered(self) {
        self.settle(|_| {});
    }

    /// The input was written to the dead-letter destination because of `failure`.
    pub fn dead_lettered(self, failure: Failure) {
        self.settle(|s| {
            s.dead_lettered.get_or_insert(failure);
        });
    }

    /// Neither the sink nor the dead-letter destination took this message.
    pub fn failed(self, failure: Failure) {
        self.settle(|s| {
            s.failed.get_or_insert(failure);
        });
    }

    /// Runs `write` unless an earlier message of the same input already wrote the original
    /// bytes to the dead-letter destination; concurrent callers wait for each other, and a
    /// failed write lets the next caller try again.
    pub async fn dead_letter_once<E, F, Fut>(&self, write: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let mut written = self.shared.dead_letter_written.lock().await;
        if *written {
            return Ok(());
        }
        write().await?;
        *written = true;
        Ok(())
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.settled {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state.dropped.get_or_insert_with(|| {
                Failure::new(
                    "engine",
                    ErrorCode::Dropped,
                    "message dropped before it was acknowledged",
                )
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_once_after_every_fork_with_the_count() {
        let (ack, mut rx) = Ack::channel();
        let a = ack.fork();
        let b = ack.fork();
        ack.filtered();
        a.delivered();
        assert!(rx.try_recv().is_err(), "still one fork pending");
        b.delivered();
        assert_eq!(rx.try_recv().unwrap(), Outcome::Delivered { messages: 2 });
    }

    #[test]
    fn worst_outcome_wins() {
        let (ack, mut rx) = Ack::channel();
        let a = ack.fork();
        let b = ack.fork();
        ack.delivered();
        a.dead_lettered(Failure::new("steps[0].map", ErrorCode::MappingError, "x"));
        b.failed(Failure::new(
            "sink.kafka",
            ErrorCode::RetriesExhausted,
            "down",
        ));
        match rx.try_recv().unwrap() {
            Outcome::Failed(f) => assert_eq!(f.step, "sink.kafka"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn dropping_an_unsettled_fork_is_a_failure_not_a_loss() {
        let (ack, mut rx) = Ack::channel();
        drop(ack);
        match rx.try_recv().unwrap() {
            Outcome::Failed(f) => assert_eq!(f.code, ErrorCode::Dropped),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_dead_lettered_input_covers_the_forks_a_panic_dropped() {
        let (ack, mut rx) = Ack::channel();
        let guard = ack.fork();
        let dropped = ack.fork();
        drop(ack);
        drop(dropped);
        guard.dead_lettered(Failure::new("engine", ErrorCode::Panicked, "boom"));
        match rx.try_recv().unwrap() {
            Outcome::DeadLettered(f) => assert_eq!(f.code, ErrorCode::Panicked),
            other => panic!("unexpected {other:?}"),
        }
        // A fork that failed (its dead-letter write failed) is not covered.
        let (ack, mut rx) = Ack::channel();
        let guard = ack.fork();
        ack.failed(Failure::new(
            "dead_letter",
            ErrorCode::RetriesExhausted,
            "down",
        ));
        guard.dead_lettered(Failure::new("engine", ErrorCode::Panicked, "boom"));
        assert!(matches!(rx.try_recv().unwrap(), Outcome::Failed(_)));
    }

    #[tokio::test]
    async fn dead_letter_is_written_once_per_input() {
        let (ack, _rx) = Ack::channel();
        let other = ack.fork();
        let count = std::sync::atomic::AtomicUsize::new(0);
        let write = || async {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<(), ()>(())
        };
        ack.dead_letter_once(write).await.unwrap();
        other.dead_letter_once(write).await.unwrap();
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A failed write lets the next one try.
        let (ack, _rx) = Ack::channel();
        assert!(ack
            .dead_letter_once(|| async { Err::<(), ()>(()) })
            .await
            .is_err());
        ack.dead_letter_once(write).await.unwrap();
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
