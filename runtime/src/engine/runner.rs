//! One running pipeline: steps, sink, retries and the dead-letter route, behind the
//! [`Downstream`] its source pushes into.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::dead_letter::DeadLetterWriter;
use super::retry::RetryPolicy;
use crate::ack::Ack;
use crate::error::{ErrorCode, Failure, SinkError};
use crate::message::{Message, Meta, Payload};
use crate::metrics::PipelineMetrics;
use crate::sinks::{Record, Sink};
use crate::sources::Downstream;
use crate::steps::Step;

/// The acknowledgement of one send attempt: the delivery's result, or the send's error.
async fn settle(sent: Result<crate::sinks::Delivery, SinkError>) -> Result<(), SinkError> {
    match sent {
        Ok(delivery) => delivery.await,
        Err(e) => Err(e),
    }
}

/// A step with the name used in errors (`steps[1].map`).
pub struct NamedStep {
    /// `steps[<index>].<kind>`.
    pub id: String,
    /// The running step.
    pub step: Box<dyn Step>,
}

/// The part of a pipeline after its source.
pub struct Runner {
    /// The pipeline's name.
    pub name: Arc<str>,
    pub(super) steps: Vec<NamedStep>,
    pub(super) sink: Arc<dyn Sink>,
    /// `sink.<kind>`.
    pub(super) sink_id: String,
    pub(super) dead_letter: DeadLetterWriter,
    pub(super) retry: RetryPolicy,
    /// False for sources that cannot offer an input again (Kafka): the dead-letter write is
    /// then retried until it succeeds instead of failing the input.
    pub(super) source_redelivers: bool,
    pub(super) in_flight: Arc<Semaphore>,
    pub(super) max_in_flight: usize,
    pub(super) metrics: PipelineMetrics,
}

impl Runner {
    /// Runs every step on `payload`. All of an input's messages pass every step before any
    /// is handed to the sink, so a step failure dead-letters the input with nothing of it
    /// delivered.
    fn apply_steps(&self, payload: Payload) -> Result<Vec<Payload>, Failure> {
        let mut current = vec![payload];
        for named in &self.steps {
            let mut next = Vec::with_capacity(current.len());
            for payload in current {
                // A bug in a step or a library under it (jmespath panics on some slices) must
                // fail this message, not the pipeline: the input is dead-lettered.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    named.step.process(payload, &mut next)
                }));
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        let mut failure = Failure::new(&named.id, e.code, e.message);
                        failure.details = e.details;
                        return Err(failure);
                    }
                    Err(panic) => {
                        let reason = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into());
                        return Err(Failure::new(
                            &named.id,
                            ErrorCode::StepPanicked,
                            format!("the step panicked: {reason}"),
                        ));
                    }
                }
            }
            current = next;
            if current.is_empty() {
                break;
            }
        }
        Ok(current)
    }

    async fn handle(self: Arc<Self>, message: Message) {
        self.metrics.received();
        let Message { payload, meta, ack } = message;
        let payloads = match self.apply_steps(payload) {
            Ok(payloads) => payloads,
            Err(failure) => {
                let permit = self.permit().await;
                tokio::spawn(self.clone().dead_letter(meta, ack, failure, permit));
                return;
            }
        };
        if payloads.is_empty() {
            self.metrics.filtered();
            ack.filtered();
            return;
        }
        if let Some(reply) = &meta.reply {
            // A synchronous request/reply source answers with the result itself.
            reply
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(payloads.iter().cloned());
        }
        for payload in payloads {
            let permit = self.permit().await;
            let record = Record {
                payload,
                meta: Arc::clone(&meta),
            };
            let first = self.sink.send(&record).await;
            tokio::spawn(self.clone().deliver(record, ack.fork(), first, permit));
        }
        ack.filtered();
    }

    async fn permit(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .expect("the in-flight semaphore is never closed")
    }

    /// Awaits the sink's acknowledgement, retrying transient faults as the policy says.
    async fn deliver(
        self: Arc<Self>,
        record: Record,
        ack: Ack,
        first: Result<crate::sinks::Delivery, SinkError>,
        permit: OwnedSemaphorePermit,
    ) {
        let mut attempts = 1;
        let mut result = settle(first).await;
        let failure = loop {
            match result {
                Ok(()) => {
                    self.metrics.sent(record.meta.received_at.elapsed());
                    ack.delivered();
                    return;
                }
                Err(SinkError::Permanent { code, message }) => {
                    break Failure {
                        step: self.sink_id.clone(),
                        code,
                        message,
                        attempts,
                        details: None,
                    };
                }
                Err(SinkError::Transient(message)) if attempts >= self.retry.max_attempts => {
                    break Failure {
                        step: self.sink_id.clone(),
                        code: ErrorCode::RetriesExhausted,
                        message,
                        attempts,
                        details: None,
                    };
                }
                Err(SinkError::Transient(message)) => {
                    tracing::debug!(pipeline = %self.name, correlation_id = %record.meta.correlation_id, attempts, error = %message, "Sink fault; retrying.");
                    self.metrics.retried();
                    tokio::time::sleep(self.retry.backoff(attempts)).await;
                    attempts += 1;
                    result = settle(self.sink.send(&record).await).await;
                }
            }
        };
        self.dead_letter(record.meta, ack, failure, permit).await;
    }

    /// Writes the input to the dead-letter destination (once per input) and settles `ack`.
    async fn dead_letter(
        self: Arc<Self>,
        meta: Arc<Meta>,
        ack: Ack,
        failure: Failure,
        _permit: OwnedSemaphorePermit,
    ) {
        tracing::warn!(
            pipeline = %self.name,
            step = %failure.step,
            code = %failure.code,
            correlation_id = %meta.correlation_id,
            error = %failure.message,
            "Message dead-lettered."
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            match ack
                .dead_letter_once(|| self.dead_letter.write(&meta, &failure))
                .await
            {
                Ok(()) => {
                    self.metrics
                        .dead_lettered(&failure.step, failure.code.as_str());
                    ack.dead_lettered(failure);
                    return;
                }
                Err(e) if self.source_redelivers && attempt >= self.retry.max_attempts => {
                    tracing::error!(pipeline = %self.name, correlation_id = %meta.correlation_id, error = %e, "Dead-letter write failed; the input is refused.");
                    self.metrics.failed();
                    ack.failed(Failure {
                        step: "dead_letter".into(),
                        code: ErrorCode::RetriesExhausted,
                        message: format!("{failure}; the dead-letter write failed too: {e}"),
                        attempts: attempt,
                        details: None,
                    });
                    return;
                }
                Err(e) => {
                    tracing::warn!(pipeline = %self.name, correlation_id = %meta.correlation_id, attempt, error = %e, "Dead-letter write failed; retrying.");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                }
            }
        }
    }

    /// Waits until nothing is in flight, at most `timeout`; true when drained.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let all = self.max_in_flight as u32;
        match tokio::time::timeout(timeout, self.in_flight.acquire_many(all)).await {
            Ok(Ok(permits)) => {
                drop(permits);
                true
            }
            _ => false,
        }
    }
}

impl Downstream for Arc<Runner> {
    fn push(&self, message: Message) -> BoxFuture<'_, ()> {
        Arc::clone(self).handle(message).boxed()
    }

    fn reject(&self, message: Message, failure: Failure) -> BoxFuture<'_, ()> {
        let runner = Arc::clone(self);
        async move {
            runner.metrics.received();
            let permit = runner.permit().await;
            runner
                .dead_letter(message.meta, message.ack, failure, permit)
                .await
        }
        .boxed()
    }
}
