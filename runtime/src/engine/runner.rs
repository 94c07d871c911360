//! One running pipeline: steps, sink, retries and the dead-letter route, behind the
//! [`Downstream`] its source pushes into.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::dead_letter::{DeadLetterWriter, Written};
use super::program::{Outcome, Program};
use super::retry::RetryPolicy;
use crate::ack::Ack;
use crate::error::{ErrorCode, Failure, SinkError};
use crate::message::{Item, Message, Meta};
use crate::metrics::PipelineMetrics;
use crate::sinks::{Delivery, Record};
use crate::sources::Downstream;
use crate::telemetry::Trace;

/// `headers` with the trace context headers of `set` (replacing earlier values of them).
fn with_headers(
    headers: &crate::message::Headers,
    set: &[(&'static str, String)],
) -> crate::message::Headers {
    let mut out: Vec<_> = headers
        .iter()
        .filter(|(k, _)| !set.iter().any(|(name, _)| k.eq_ignore_ascii_case(name)))
        .cloned()
        .collect();
    out.extend(set.iter().map(|(name, value)| {
        (
            name.to_string(),
            bytes::Bytes::copy_from_slice(value.as_bytes()),
        )
    }));
    Arc::new(out)
}

/// The acknowledgement of one send attempt: the delivery's result, or the send's error.
pub(crate) async fn settle(sent: Result<Delivery, SinkError>) -> Result<(), SinkError> {
    match sent {
        Ok(delivery) => delivery.await,
        Err(e) => Err(e),
    }
}

/// What a caught panic says (its `&str` or `String` payload).
fn panic_reason(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// A send attempt that failed, as its acknowledgement.
fn failed(e: SinkError) -> Delivery {
    Box::pin(std::future::ready(Err(e)))
}

/// The part of a pipeline after its source.
pub struct Runner {
    /// The pipeline's name.
    pub name: Arc<str>,
    pub(super) program: Program,
    pub(super) dead_letter: DeadLetterWriter,
    pub(super) retry: RetryPolicy,
    /// False for sources that cannot offer an input again (Kafka): the dead-letter write is
    /// then retried until it succeeds instead of failing the input, and an input whose
    /// upstream is unavailable waits instead of being refused.
    pub(super) source_redelivers: bool,
    /// For sources that can wait (Kafka, file): how long a sink that keeps failing
    /// transiently is retried past `on_error.max_attempts` (`on_error.max_sink_wait_ms`)
    /// before the message is dead-lettered. `None`: dead-lettered once the attempts are used
    /// up (HTTP and SOAP sources, whose caller is answered `503` and comes back).
    pub(super) sink_wait: Option<Duration>,
    /// Inputs between their arrival and the hand-over of their messages to the sinks.
    pub(super) processing: Arc<Semaphore>,
    /// Messages between the hand-over and their sink's acknowledgement.
    pub(super) in_flight: Arc<Semaphore>,
    pub(super) max_in_flight: usize,
    /// For sources whose caller can come back (HTTP, SOAP): how long an input waits for room
    /// before it is refused.
    pub(super) queue_wait: Option<Duration>,
    /// Cancelled when the pipeline is stopped for good: inputs waiting for an upstream give
    /// up (their acknowledgement fails, so the source offers them again).
    pub(super) stopped: CancellationToken,
    pub(super) metrics: PipelineMetrics,
    /// Rate limit of the "dead-letter write failed" warning.
    pub(super) dead_letter_warnings: crate::logging::Throttle,
    /// Rate limit of the "sink unavailable; the input waits" warning.
    pub(super) sink_wait_warnings: crate::logging::Throttle,
    /// Starts each input's trace when tracing is on.
    pub(super) tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
}

/// Room for one message between its hand-over to a sink and its acknowledgement, counted
/// in `gridflow_messages_in_flight`.
struct Permit {
    _room: OwnedSemaphorePermit,
    _counted: crate::metrics::InFlight,
}

/// How long [`Runner::retried`] goes on.
struct Budget {
    /// Attempts in all, the first included, before the write gives up; `None`: until it
    /// succeeds or the pipeline stops.
    attempts: Option<u32>,
    /// Past `attempts`, how long after the first attempt the write still waits for its
    /// destination (`on_error.max_sink_wait_ms`), its backoffs ending when the pipeline stops.
    wait: Option<Duration>,
    /// Whether the backoffs within `attempts` end when the pipeline stops, too.
    stoppable: bool,
}

/// How a write retried by [`Runner::retried`] ended.
enum Retried<T> {
    /// An attempt succeeded.
    Done(T),
    /// The destination refused the write for good.
    Refused {
        /// What kind of refusal.
        code: ErrorCode,
        /// The destination's answer.
        message: String,
    },
    /// Transient faults until the budget was spent.
    Exhausted {
        /// The last fault.
        message: String,
        /// Since the first attempt.
        waited: Duration,
    },
    /// The pipeline stopped during a backoff.
    Stopped,
}

/// Longest wait before an input whose upstream is unavailable is tried again.
const MAX_UNAVAILABLE_WAIT: Duration = Duration::from_secs(30);

impl Runner {
    /// Runs the program. A transient failure (an `enrich` upstream that is unavailable) is
    /// not a fault of the message: for sources that can offer the input again the input is
    /// refused (HTTP `503`, file left in place); a Kafka input waits and runs again: without
    /// end while the upstream's breaker is open (`unavailable`: the upstream is down, the
    /// flow pauses), at most `on_error.max_attempts` runs when its own calls keep failing
    /// (`retries_exhausted`: then it is dead-lettered, so that one message the upstream
    /// always fails on cannot block its partition). `Err` carries the failure and whether the
    /// input is refused rather than dead-lettered; `None` when the pipeline stopped.
    async fn run_program(
        &self,
        item: Item,
        meta: &Arc<Meta>,
        trace: &Trace,
    ) -> Option<Result<Outcome, (Failure, bool)>> {
        if !self.program.may_wait {
            return Some(
                self.program
                    .run(item, meta, trace)
                    .await
                    .map_err(|f| (f, false)),
            );
        }
        let (mut waits, mut runs) = (0u32, 0u32);
        loop {
            runs += 1;
            let failure = match self.program.run(item.clone(), meta, trace).await {
                Ok(outcome) => return Some(Ok(outcome)),
                Err(f) => f,
            };
            let Some(retry_after) = failure.retry_after else {
                return Some(Err((failure, false)));
            };
            if self.source_redelivers {
                return Some(Err((failure, true)));
            }
            if failure.code != ErrorCode::Unavailable && runs >= self.retry.max_attempts {
                return Some(Err((failure, false)));
            }
            waits += 1;
            let wait = retry_after.clamp(Duration::from_millis(10), MAX_UNAVAILABLE_WAIT);
            if waits == 1 {
                tracing::warn!(pipeline = %self.name, step = %failure.step, code = %failure.code, correlation_id = %meta.correlation_id, wait_ms = wait.as_millis() as u64, error = %failure.message, "Upstream unavailable; the input waits.");
            }
            self.metrics.waited();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stopped.cancelled() => return None,
            }
        }
    }

    /// Runs `work`, the processing of one input or one delivery of it, and settles `guard` (a
    /// fork of the input's acknowledgement) when it ends. A panic anywhere in it (a sink's key
    /// evaluation, a send, serialisation: steps catch their own) dead-letters the input with
    /// [`ErrorCode::Panicked`]; the forks the panic dropped are covered by that dead letter,
    /// so the input ends settled and its Kafka offset is committed.
    async fn guarded(
        self: Arc<Self>,
        meta: Arc<Meta>,
        guard: Ack,
        work: impl std::future::Future<Output = ()>,
    ) {
        let Err(panic) = std::panic::AssertUnwindSafe(work).catch_unwind().await else {
            guard.filtered();
            return;
        };
        let reason = panic_reason(&*panic);
        tracing::error!(pipeline = %self.name, step = "engine", code = "panicked", correlation_id = %meta.correlation_id, error = %reason, "A message's processing panicked; the input is dead-lettered.");
        let failure = Failure::new(
            "engine",
            ErrorCode::Panicked,
            format!("gridflow panicked while processing the message (a bug): {reason}"),
        );
        let permit = self.permit().await;
        let trace = Trace::start(self.tracer.as_ref(), &self.name, &meta);
        trace.end(Some(&failure));
        self.dead_letter(meta, guard, failure, permit, trace).await;
    }

    async fn handle(self: Arc<Self>, message: Message) {
        self.metrics.received();
        let Message { payload, meta, ack } = message;
        let acquire = Arc::clone(&self.processing).acquire_owned();
        let busy = match self.queue_wait {
            None => acquire.await,
            Some(wait) => match tokio::time::timeout(wait, acquire).await {
                Ok(permit) => permit,
                Err(_) => {
                    // A saturated pipeline (a slow sink) refuses rather than queue without
                    // bound: the HTTP caller is told to come back.
                    tracing::warn!(pipeline = %self.name, step = "source", correlation_id = %meta.correlation_id, wait_ms = wait.as_millis() as u64, "Input refused: the pipeline is saturated.");
                    self.metrics.failed();
                    ack.failed(Failure::unavailable(
                        "source",
                        format!(
                            "the pipeline is saturated (no room within {} ms)",
                            wait.as_millis()
                        ),
                        Duration::from_secs(1),
                    ));
                    return;
                }
            },
        }
        .expect("the processing semaphore is never closed");
        let item = Item::from_input(payload, &meta);
        let trace = Trace::start(self.tracer.as_ref(), &self.name, &meta);
        let outcome = match self.run_program(item, &meta, &trace).await {
            // Stopped while waiting: the dropped ack fails the input; it is offered again.
            None => {
                trace.end_stopped();
                return;
            }
            Some(Ok(outcome)) => {
                trace.end(outcome.rethrown.as_ref());
                outcome
            }
            Some(Err((failure, true))) => {
                trace.end(Some(&failure));
                tracing::warn!(pipeline = %self.name, step = %failure.step, correlation_id = %meta.correlation_id, error = %failure.message, "Input refused: upstream unavailable.");
                self.metrics.failed();
                ack.failed(failure);
                return;
            }
            Some(Err((failure, false))) => {
                trace.end(Some(&failure));
                let permit = self.permit().await;
                drop(busy);
                tokio::spawn(self.clone().dead_letter(meta, ack, failure, permit, trace));
                return;
            }
        };
        let Outcome {
            deliveries,
            rethrown,
        } = outcome;
        if deliveries.is_empty() && rethrown.is_none() {
            // Every message was dropped by a step (counted there).
            ack.filtered();
            return;
        }
        if let Some(reply) = &meta.reply {
            // A synchronous request/reply source answers with the result itself.
            reply
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(deliveries.iter().map(|(_, item)| item.payload.clone()));
        }
        for (sink, item) in deliveries {
            let permit = self.permit().await;
            let delivery = trace.deliver(&self.program.sinks[sink].span);
            let headers = if delivery.headers.is_empty() {
                item.headers
            } else {
                with_headers(&item.headers, &delivery.headers)
            };
            let record = Record {
                payload: item.payload,
                meta: Arc::clone(&meta),
                headers,
                key: item.key,
            };
            let first = match self.program.sinks[sink].sink.send(&record).await {
                Ok(mut acknowledged) => match (&mut acknowledged).now_or_never() {
                    // Already confirmed (a sink that confirms on write): settled here, with
                    // no task of its own.
                    Some(Ok(())) => {
                        self.metrics.sent(meta.received_at.elapsed());
                        delivery.end(None);
                        ack.fork().delivered();
                        drop(permit);
                        continue;
                    }
                    Some(Err(e)) => failed(e),
                    None => acknowledged,
                },
                Err(e) => failed(e),
            };
            // A panic in the retries (a send) dead-letters the input too.
            let (task_meta, guard) = (Arc::clone(&meta), ack.fork());
            tokio::spawn(self.clone().guarded(
                task_meta,
                guard,
                self.clone().deliver(
                    sink,
                    record,
                    ack.fork(),
                    first,
                    permit,
                    (trace.clone(), delivery),
                ),
            ));
        }
        if let Some(failure) = rethrown {
            let permit = self.permit().await;
            tokio::spawn(self.clone().dead_letter(
                Arc::clone(&meta),
                ack.fork(),
                failure,
                permit,
                trace,
            ));
        }
        drop(busy);
        ack.filtered();
    }

    async fn permit(&self) -> Permit {
        let room = Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .expect("the in-flight semaphore is never closed");
        Permit {
            _room: room,
            _counted: self.metrics.in_flight(),
        }
    }

    /// Retries a write that failed transiently, as the retry policy says: the one retry loop
    /// of the pipeline, for its sinks and its dead letters. `first` is the first attempt (in
    /// flight already, or started when awaited), `again` starts each next one after the
    /// policy's backoff; `fault` hears of every transient fault that is retried (the attempts
    /// so far, the error, and whether the attempt budget is spent: the write then waits).
    ///
    /// The loop ends when an attempt succeeds, when the sink refuses the write for good, when
    /// the budget is spent ([`Budget`]), or when the pipeline stops during a backoff that may
    /// end so.
    async fn retried<T, F, Fut>(
        &self,
        budget: Budget,
        first: impl std::future::Future<Output = Result<T, SinkError>>,
        mut again: F,
        mut fault: impl FnMut(u32, &str, bool),
    ) -> (Retried<T>, u32)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SinkError>>,
    {
        let started = std::time::Instant::now();
        let mut attempts = 1;
        let mut result = first.await;
        loop {
            let message = match result {
                Ok(done) => return (Retried::Done(done), attempts),
                Err(SinkError::Permanent { code, message }) => {
                    return (Retried::Refused { code, message }, attempts)
                }
                Err(SinkError::Transient(message)) => message,
            };
            let spent = budget.attempts.is_some_and(|max| attempts >= max);
            if spent && budget.wait.is_none_or(|max| started.elapsed() >= max) {
                let waited = started.elapsed();
                return (Retried::Exhausted { message, waited }, attempts);
            }
            fault(attempts, &message, spent);
            let backoff = self.retry.backoff(attempts);
            let stoppable = spent || budget.stoppable;
            // Boxed: the rare path's state would otherwise sit in every delivery task, and a
            // task's future is moved in whole when it is spawned.
            let next = Box::pin(async {
                if stoppable {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stopped.cancelled() => return None,
                    }
                } else {
                    tokio::time::sleep(backoff).await;
                }
                Some(again().await)
            });
            match next.await {
                Some(next) => result = next,
                None => return (Retried::Stopped, attempts),
            }
            attempts += 1;
        }
    }

    /// Awaits the sink's acknowledgement, retrying transient faults ([`Runner::retried`]): up
    /// to `on_error.max_attempts` attempts, then, for a source that can wait (Kafka, file),
    /// on until `sink_wait` has passed since the first attempt (the message holds its
    /// in-flight room meanwhile, so the source stops reading: backpressure); then the
    /// message is dead-lettered (`retries_exhausted`, with how long it waited).
    async fn deliver(
        self: Arc<Self>,
        sink: usize,
        record: Record,
        ack: Ack,
        first: Delivery,
        permit: Permit,
        (trace, delivery): (Trace, crate::telemetry::Delivery),
    ) {
        let target = &self.program.sinks[sink];
        let budget = Budget {
            attempts: Some(self.retry.max_attempts),
            wait: self.sink_wait,
            stoppable: false,
        };
        let mut waiting = false;
        let fault = |attempts: u32, message: &str, spent: bool| {
            tracing::debug!(pipeline = %self.name, step = %target.id, correlation_id = %record.meta.correlation_id, attempts, error = %message, "Sink fault; retrying.");
            self.metrics.retried();
            if spent {
                // Past the retry budget: the input waits for the sink (its room held: the
                // source stops reading), rather than flood the dead letters.
                self.metrics.sink_waited();
                if !waiting {
                    waiting = true;
                    if let Some(suppressed) = self.sink_wait_warnings.allow() {
                        tracing::warn!(pipeline = %self.name, step = %target.id, correlation_id = %record.meta.correlation_id, attempts, suppressed, max_sink_wait_ms = self.sink_wait.unwrap_or_default().as_millis() as u64, error = %message, "Sink unavailable past its retry budget; the input waits.");
                    }
                }
            }
        };
        let again = || async { settle(target.sink.send(&record).await).await };
        let (code, message, attempts) = match self.retried(budget, first, again, fault).await {
            (Retried::Done(()), _) => {
                self.metrics.sent(record.meta.received_at.elapsed());
                delivery.end(None);
                ack.delivered();
                return;
            }
            // Stopped: the unsettled ack fails the input; it is read again.
            (Retried::Stopped, _) => return,
            (Retried::Refused { code, message }, attempts) => (code, message, attempts),
            (Retried::Exhausted { message, waited }, attempts) => {
                let message = match self.sink_wait {
                    Some(max) => format!(
                        "{message} (the sink stayed unavailable for {} ms, past on_error.max_sink_wait_ms = {})",
                        waited.as_millis(),
                        max.as_millis()
                    ),
                    None => message,
                };
                (ErrorCode::RetriesExhausted, message, attempts)
            }
        };
        let failure = Failure {
            step: target.id.clone(),
            code,
            message,
            attempts,
            details: None,
            retry_after: None,
        };
        delivery.end(Some(&failure));
        // Boxed: the rare path's state would otherwise sit in every delivery task.
        Box::pin(
            self.clone()
                .dead_letter(record.meta, ack, failure, permit, trace),
        )
        .await;
    }

    /// Sends the input's envelope to the dead-letter destination (once per input, through
    /// [`Runner::retried`]: a source that cannot offer the input again (Kafka) retries until
    /// it is written or the pipeline stops) and settles `ack`.
    async fn dead_letter(
        self: Arc<Self>,
        meta: Arc<Meta>,
        ack: Ack,
        failure: Failure,
        _permit: Permit,
        trace: Trace,
    ) {
        let started = trace.now();
        tracing::warn!(
            pipeline = %self.name,
            step = %failure.step,
            code = %failure.code,
            correlation_id = %meta.correlation_id,
            error = %failure.message,
            "Message dead-lettered."
        );
        let budget = Budget {
            attempts: self.source_redelivers.then_some(self.retry.max_attempts),
            wait: None,
            // A stopped or replaced pipeline stops retrying: the dropped ack leaves the input
            // unsettled (a Kafka record stays uncommitted and is consumed again), nothing is
            // lost.
            stoppable: true,
        };
        let attempt = || self.dead_letter_once(&ack, &meta, &failure);
        let fault = |attempt: u32, error: &str, _| {
            // During a broker outage every waiting input retries: one warning per pipeline
            // per interval, with the count of the others.
            if let Some(suppressed) = self.dead_letter_warnings.allow() {
                tracing::warn!(pipeline = %self.name, step = %failure.step, correlation_id = %meta.correlation_id, attempt, suppressed, error = %error, "Dead-letter write failed; retrying.");
            }
        };
        let (error, attempt) = match self.retried(budget, attempt(), attempt, fault).await {
            (Retried::Done(written), _) => {
                if written == Written::Fallback {
                    // Kept on local disk, not where dead letters are looked for: failed.
                    self.metrics.failed();
                    self.metrics.dead_letter_fallback();
                } else {
                    self.metrics
                        .dead_lettered(&failure.step, failure.code.as_str());
                }
                trace.child("dead_letter", started, None);
                ack.dead_lettered(failure);
                return;
            }
            (Retried::Stopped, attempt) => {
                tracing::warn!(pipeline = %self.name, step = %failure.step, correlation_id = %meta.correlation_id, attempt, "Dead-letter write abandoned: the pipeline stopped; the input is left unsettled.");
                return;
            }
            (Retried::Exhausted { message, .. }, attempt)
            | (Retried::Refused { message, .. }, attempt) => (message, attempt),
        };
        tracing::error!(pipeline = %self.name, step = %failure.step, correlation_id = %meta.correlation_id, error = %error, "Dead-letter write failed; the input is refused.");
        self.metrics.failed();
        ack.failed(Failure {
            step: "dead_letter".into(),
            code: ErrorCode::RetriesExhausted,
            message: format!("{failure}; the dead-letter write failed too: {error}"),
            attempts: attempt,
            details: None,
            retry_after: None,
        });
    }

    /// One attempt to write the envelope of the input, unless a fork of the same input wrote
    /// it already. The envelope is made anew each time: `gridflow.failed_at` says when the
    /// dead letter was written.
    async fn dead_letter_once(
        &self,
        ack: &Ack,
        meta: &Arc<Meta>,
        failure: &Failure,
    ) -> Result<Written, SinkError> {
        let mut written = Written::Destination;
        ack.dead_letter_once(|| async {
            let envelope = self.dead_letter.envelope(meta, failure);
            written = self.dead_letter.send(&envelope).await?;
            Ok::<(), SinkError>(())
        })
        .await?;
        Ok(written)
    }

    /// Waits until nothing is in flight, at most `timeout`; true when drained. Then inputs
    /// still waiting for an upstream give up.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let all = self.max_in_flight as u32;
        let drained = tokio::time::timeout(timeout, async {
            let processing = self.processing.acquire_many(all).await;
            let in_flight = self.in_flight.acquire_many(all).await;
            drop((processing, in_flight));
        })
        .await
        .is_ok();
        self.stopped.cancel();
        drained
    }
}

impl Downstream for Arc<Runner> {
    fn push(&self, message: Message) -> BoxFuture<'_, ()> {
        let (meta, guard) = (Arc::clone(&message.meta), message.ack.fork());
        let work = Arc::clone(self).handle(message);
        Arc::clone(self).guarded(meta, guard, work).boxed()
    }

    fn reject(&self, message: Message, failure: Failure) -> BoxFuture<'_, ()> {
        let runner = Arc::clone(self);
        async move {
            runner.metrics.received();
            let permit = runner.permit().await;
            let trace = Trace::start(runner.tracer.as_ref(), &runner.name, &message.meta);
            trace.end(Some(&failure));
            runner
                .dead_letter(message.meta, message.ack, failure, permit, trace)
                .await
        }
        .boxed()
    }
}
