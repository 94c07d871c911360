//! How steps run: the one [`Step`] trait the engine calls, the [`Transform`] most kinds
//! implement (a synchronous step, one message at a time), and [`run_all`], which runs a list
//! of steps on the messages of one input (a pipeline's `steps`, a block's nested steps).
//!
//! Nothing is delivered while steps run: a run gives back the messages that continue, and
//! the messages a block sent to a sink of its own in [`Outcome::deliveries`], so an input
//! that fails is dead-lettered whole with nothing of it delivered (except what a `try` block
//! with `rethrow` produced on purpose).

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::error::{ErrorCode, Failure, StepError};
use crate::jmes::{with_scope, Scope};
use crate::message::{Item, Meta, Payload};
use crate::metrics::StepMetrics;
use crate::telemetry::Trace;

/// A synchronous step: one message in, zero, one or several messages out.
///
/// Lifecycle: built once when the pipeline loads (expressions compiled then), then called for
/// every message, possibly from several tasks at once. A transform is pure: an `Err` means
/// *this message* cannot be processed, is never retried, and sends the input to the
/// dead-letter destination. Transforms never block and never fail transiently.
pub trait Transform: Send + Sync {
    /// Processes `payload`, pushing what it produces to `out` (nothing: the message is
    /// filtered out).
    fn process(&self, payload: Payload, out: &mut Vec<Payload>) -> Result<(), StepError>;

    /// Processes a whole message, body and metadata. By default the body goes through
    /// [`process`](Self::process) and every result keeps the message's metadata; transforms
    /// that change metadata (`set`, `remove`, `rename`) override it.
    fn process_item(&self, item: Item, out: &mut Vec<Item>) -> Result<(), StepError> {
        let mut bodies = Vec::with_capacity(1);
        let Item {
            payload,
            headers,
            key,
            error,
        } = item;
        self.process(payload, &mut bodies)?;
        out.extend(bodies.into_iter().map(|payload| Item {
            payload,
            headers: headers.clone(),
            key: key.clone(),
            error: error.clone(),
        }));
        Ok(())
    }
}

/// What a step sees of the input besides its messages.
#[derive(Clone, Copy)]
pub struct RunContext<'a> {
    /// Facts about the input (correlation id, source), read by `meta()` in expressions.
    pub meta: &'a Arc<Meta>,
    /// The input's trace: a span per step.
    pub trace: &'a Trace,
}

/// What a run produced besides the messages that continue.
#[derive(Default)]
pub struct Outcome {
    /// Messages sent to a sink of their own (a branch route's), with the sink's index in
    /// the program.
    pub deliveries: Vec<(usize, Item)>,
    /// A `try` block with `rethrow` caught this failure: the input also goes to the
    /// dead-letter route.
    pub rethrown: Option<Failure>,
}

impl Outcome {
    /// Adds what one message's run through a block gave to this outcome, in message order;
    /// returns the messages that continue after the block.
    pub fn merge(&mut self, partials: Vec<(Outcome, Vec<Item>)>) -> Vec<Item> {
        let mut next = Vec::new();
        for (mut outcome, items) in partials {
            self.deliveries.append(&mut outcome.deliveries);
            if self.rethrown.is_none() {
                self.rethrown = outcome.rethrown;
            }
            next.extend(items);
        }
        next
    }
}

/// The messages that continue after a step, or the failure of the input.
pub type StepResult = Result<Vec<Item>, Failure>;

/// A step's run: done at once (a synchronous step: no future allocated), or a future to
/// await (a step that calls the network or holds steps).
pub enum Run<'a> {
    /// Finished.
    Ready(StepResult),
    /// To await.
    Pending(BoxFuture<'a, StepResult>),
}

/// A built step of any kind, as the engine runs it.
///
/// Lifecycle: built once when the pipeline loads (by its config's
/// [`StepKind::build`](super::StepKind::build)), then run for the messages of every input,
/// possibly from several tasks at once.
pub trait Step: Send + Sync {
    /// Runs the step on `items` (the messages of one input that reached it, in order);
    /// messages sent to a sink of the step's own go to `out`.
    fn run<'a>(&'a self, items: Vec<Item>, cx: RunContext<'a>, out: &'a mut Outcome) -> Run<'a>;
}

/// Runs `steps` in order on `items`; stops early when no message is left.
pub fn run_all<'a>(
    steps: &'a [Box<dyn Step>],
    items: Vec<Item>,
    cx: RunContext<'a>,
    out: &'a mut Outcome,
) -> BoxFuture<'a, StepResult> {
    async move {
        let mut current = items;
        for step in steps {
            if current.is_empty() {
                break;
            }
            current = match step.run(current, cx, out) {
                Run::Ready(result) => result?,
                Run::Pending(run) => run.await?,
            };
        }
        Ok(current)
    }
    .boxed()
}

/// The most messages one input may become at a step (a year of quarter-hour points is
/// 35,040): past it the input fails with [`ErrorCode::TooManyMessages`] instead of taking
/// the memory of millions of messages.
pub const MAX_MESSAGES_PER_INPUT: usize = 200_000;

/// A [`Transform`] run as a [`Step`]: each message under `catch_unwind`, with the step's
/// metrics and span.
pub struct Each<T> {
    id: String,
    transform: T,
    metrics: StepMetrics,
}

impl<T: Transform> Each<T> {
    /// `transform` as the step `id` of `pipeline`.
    pub fn new(pipeline: &str, id: &str, transform: T) -> Self {
        Each {
            id: id.to_string(),
            transform,
            metrics: StepMetrics::new(pipeline, id),
        }
    }
}

impl<T: Transform> Step for Each<T> {
    fn run<'a>(&'a self, items: Vec<Item>, cx: RunContext<'a>, _: &'a mut Outcome) -> Run<'a> {
        let mut next = Vec::with_capacity(items.len());
        for item in items {
            let scope = scope(cx.meta, &item);
            let (started, wall, before) = (Instant::now(), cx.trace.now(), next.len());
            match guarded(&self.id, || {
                with_scope(&scope, || self.transform.process_item(item, &mut next))
            }) {
                Ok(()) if next.len() > MAX_MESSAGES_PER_INPUT => {
                    let f = Failure::new(
                        &self.id,
                        ErrorCode::TooManyMessages,
                        format!(
                            "the input became more than {MAX_MESSAGES_PER_INPUT} messages at this step"
                        ),
                    );
                    self.metrics.failed(started.elapsed(), &f);
                    cx.trace.child(&self.id, wall, Some(&f));
                    return Run::Ready(Err(f));
                }
                Ok(()) => {
                    self.metrics
                        .processed(started.elapsed(), next.len() - before);
                    cx.trace.child(&self.id, wall, None);
                }
                Err(f) => {
                    self.metrics.failed(started.elapsed(), &f);
                    cx.trace.child(&self.id, wall, Some(&f));
                    return Run::Ready(Err(f));
                }
            }
        }
        Run::Ready(Ok(next))
    }
}

/// The scope expressions of `item` read (`meta()`, headers, key, a caught error).
pub fn scope(meta: &Arc<Meta>, item: &Item) -> Scope {
    Scope {
        meta: Arc::clone(meta),
        headers: Arc::clone(&item.headers),
        key: item.key.clone(),
        error: item.error.clone(),
    }
}

/// Runs `f` for the step `id`; a panic (a bug in a step or a library under it: jmespath
/// panics on some slices) fails this message, not the pipeline.
pub fn guarded<T>(id: &str, f: impl FnOnce() -> Result<T, StepError>) -> Result<T, Failure> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let mut failure = Failure::new(id, e.code, e.message);
            failure.details = e.details;
            Err(failure)
        }
        Err(panic) => {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Failure::new(
                id,
                ErrorCode::StepPanicked,
                format!("the step panicked: {reason}"),
            ))
        }
    }
}
