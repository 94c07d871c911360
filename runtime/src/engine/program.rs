//! A pipeline's steps as the tree the runner executes for each input.
//!
//! Plain steps run synchronously, one message at a time, under `catch_unwind`; `enrich` calls
//! run concurrently across the messages of one input (bounded by each step's own limit);
//! `parallel` runs its calls at once for one message; `try` runs its catch steps on a message
//! whose guarded steps failed; `branch` sends each message down its matching route(s), each
//! ending in its own sink or continuing after the branch.
//!
//! Nothing is delivered while the program runs: [`Program::run`] returns every message with
//! the sink it goes to, so an input that fails is dead-lettered whole with nothing of it
//! delivered (except what a `try` block with `rethrow` produced on purpose).

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::error::{BuildError, ErrorCode, Failure, StepError};
use crate::jmes::{needs, with_scope, Doc, Expr, Need, Scope};
use crate::message::{Item, Meta, Payload};
use crate::metrics::StepMetrics;
use crate::sinks::{Sink, SinkConfig, SinkContext};
use crate::steps::enrich::{Answer, Enrich};
use crate::steps::{Step, StepConfig, StepContext};
use crate::telemetry::{Outgoing, Trace};

/// One node of the tree.
enum Node {
    Step {
        id: String,
        step: Box<dyn Step>,
        metrics: StepMetrics,
    },
    Enrich(Box<Enrich>, StepMetrics),
    Parallel(Vec<Enrich>, StepMetrics),
    Try {
        body: Vec<Node>,
        catch: Vec<Node>,
        rethrow: bool,
    },
    Branch {
        id: String,
        all: bool,
        routes: Vec<Route>,
        default: Option<Route>,
        /// What the routes' conditions read.
        need: Need,
    },
}

struct Route {
    when: Option<Expr>,
    nodes: Vec<Node>,
    /// Index into [`Program::sinks`]; `None`: the messages continue after the branch.
    sink: Option<usize>,
}

/// A sink of the program: `sink.kafka` (index 0, the pipeline's) or a route's.
pub struct ProgramSink {
    /// Where it is declared (`sink.kafka`, `steps[2].branch.routes[0].sink.kafka`).
    pub id: String,
    /// The running sink.
    pub sink: Arc<dyn Sink>,
    /// Its span: `deliver <id>`, of the kind its protocol gives.
    pub span: Outgoing,
}

/// The built steps of a pipeline and every sink they send to.
pub struct Program {
    nodes: Vec<Node>,
    /// Index 0 is the pipeline's `[sink]`.
    pub sinks: Vec<ProgramSink>,
    /// True when a run may wait on the network (an `enrich` step): the runner then keeps a
    /// copy of the input to run it again after an unavailable upstream.
    pub may_wait: bool,
}

/// What a run produced.
#[derive(Default)]
pub struct Outcome {
    /// Each message with the index of its sink.
    pub deliveries: Vec<(usize, Item)>,
    /// A `try` block with `rethrow` caught this failure: the input also goes to the
    /// dead-letter route.
    pub rethrown: Option<Failure>,
}

struct Builder<'a> {
    pipeline: &'a str,
    steps: &'a StepContext,
    sinks: &'a SinkContext,
    built: Vec<ProgramSink>,
    may_wait: bool,
}

impl Builder<'_> {
    fn sink(&mut self, id: String, config: &SinkConfig) -> Result<usize, (String, BuildError)> {
        let sink = config.build(self.sinks).map_err(|e| (id.clone(), e))?;
        let span = Outgoing::new(format!("deliver {id}"), config.kind());
        self.built.push(ProgramSink { id, sink, span });
        Ok(self.built.len() - 1)
    }

    fn enrich(
        &self,
        id: &str,
        config: &crate::steps::enrich::EnrichConfig,
    ) -> Result<Enrich, (String, BuildError)> {
        Ok(config
            .build(id, self.pipeline)
            .map_err(|e| (id.to_string(), e))?
            .with_upstream(self.steps.upstream.clone()))
    }

    fn nodes(
        &mut self,
        prefix: &str,
        steps: &[StepConfig],
    ) -> Result<Vec<Node>, (String, BuildError)> {
        steps
            .iter()
            .enumerate()
            .map(|(i, step)| self.node(format!("{prefix}[{i}].{}", step.kind()), step))
            .collect()
    }

    fn node(&mut self, id: String, step: &StepConfig) -> Result<Node, (String, BuildError)> {
        Ok(match step {
            StepConfig::Enrich(c) => {
                self.may_wait = true;
                Node::Enrich(
                    Box::new(self.enrich(&id, c)?),
                    StepMetrics::new(self.pipeline, &id),
                )
            }
            StepConfig::Parallel(c) => {
                c.check().map_err(|e| (id.clone(), e))?;
                self.may_wait = true;
                let mut calls = Vec::new();
                for (i, s) in c.steps.iter().enumerate() {
                    let StepConfig::Enrich(e) = s else {
                        unreachable!("checked: parallel holds enrich steps only")
                    };
                    let sub = format!("{id}.steps[{i}].enrich");
                    calls.push(self.enrich(&sub, e)?);
                }
                Node::Parallel(calls, StepMetrics::new(self.pipeline, &id))
            }
            StepConfig::Try(c) => Node::Try {
                body: self.nodes(&format!("{id}.steps"), &c.steps)?,
                catch: self.nodes(&format!("{id}.catch"), &c.catch)?,
                rethrow: c.rethrow,
            },
            StepConfig::Branch(c) => {
                let mut routes = Vec::new();
                for (i, r) in c.routes.iter().enumerate() {
                    let at = format!("{id}.routes[{i}]");
                    let when =
                        Expr::compile(&r.when).map_err(|e| (format!("{at}.when"), e.at("when")))?;
                    let nodes = self.nodes(&format!("{at}.steps"), &r.steps)?;
                    let sink = match &r.sink {
                        Some(s) => Some(self.sink(format!("{at}.sink.{}", s.kind()), s)?),
                        None => None,
                    };
                    routes.push(Route {
                        when: Some(when),
                        nodes,
                        sink,
                    });
                }
                let default = match &c.default {
                    Some(d) => {
                        let at = format!("{id}.default");
                        let nodes = self.nodes(&format!("{at}.steps"), &d.steps)?;
                        let sink = match &d.sink {
                            Some(s) => Some(self.sink(format!("{at}.sink.{}", s.kind()), s)?),
                            None => None,
                        };
                        Some(Route {
                            when: None,
                            nodes,
                            sink,
                        })
                    }
                    None => None,
                };
                Node::Branch {
                    id,
                    all: c.mode == crate::steps::blocks::BranchMode::All,
                    need: needs(routes.iter().filter_map(|r| r.when.as_ref())),
                    routes,
                    default,
                }
            }
            plain => Node::Step {
                step: plain.build_in(self.steps).map_err(|e| (id.clone(), e))?,
                metrics: StepMetrics::new(self.pipeline, &id),
                id,
            },
        })
    }
}

impl Program {
    /// Builds `steps` and every sink: the pipeline's `sink` first, then the routes' in file
    /// order. An error names the component (`steps[1].map`, `sink`).
    pub fn build(
        pipeline: &str,
        steps: &[StepConfig],
        sink: &SinkConfig,
        step_ctx: &StepContext,
        sink_ctx: &SinkContext,
    ) -> Result<Program, (String, BuildError)> {
        let mut builder = Builder {
            pipeline,
            steps: step_ctx,
            sinks: sink_ctx,
            built: Vec::new(),
            may_wait: false,
        };
        builder.sink(format!("sink.{}", sink.kind()), sink)?;
        let nodes = builder.nodes("steps", steps)?;
        Ok(Program {
            nodes,
            sinks: builder.built,
            may_wait: builder.may_wait,
        })
    }

    /// Runs the program on an input's first message.
    pub async fn run(
        &self,
        item: Item,
        meta: &Arc<Meta>,
        trace: &Trace,
    ) -> Result<Outcome, Failure> {
        let mut outcome = Outcome::default();
        let rest = run_nodes(&self.nodes, vec![item], meta, trace, &mut outcome).await?;
        outcome
            .deliveries
            .extend(rest.into_iter().map(|item| (0, item)));
        Ok(outcome)
    }
}

fn scope(meta: &Arc<Meta>, item: &Item) -> Scope {
    Scope {
        meta: Arc::clone(meta),
        headers: Arc::clone(&item.headers),
        key: item.key.clone(),
        error: item.error.clone(),
    }
}

/// Runs `f` for a step; a panic (a bug in a step or a library under it: jmespath panics on
/// some slices) fails this message, not the pipeline.
fn guarded<T>(id: &str, f: impl FnOnce() -> Result<T, StepError>) -> Result<T, Failure> {
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

fn run_nodes<'a>(
    nodes: &'a [Node],
    items: Vec<Item>,
    meta: &'a Arc<Meta>,
    trace: &'a Trace,
    out: &'a mut Outcome,
) -> BoxFuture<'a, Result<Vec<Item>, Failure>> {
    async move {
        let mut current = items;
        for node in nodes {
            if current.is_empty() {
                break;
            }
            current = match node {
                Node::Step { id, step, metrics } => {
                    let mut next = Vec::with_capacity(current.len());
                    for item in current {
                        let scope = scope(meta, &item);
                        let (started, wall, before) = (Instant::now(), trace.now(), next.len());
                        match guarded(id, || {
                            with_scope(&scope, || step.process_item(item, &mut next))
                        }) {
                            Ok(()) => {
                                metrics.processed(started.elapsed(), next.len() - before);
                                trace.child(id, wall, None);
                            }
                            Err(f) => {
                                metrics.failed(started.elapsed(), &f);
                                trace.child(id, wall, Some(&f));
                                return Err(f);
                            }
                        }
                    }
                    next
                }
                Node::Enrich(enrich, metrics) => {
                    futures::future::try_join_all(current.into_iter().map(|item| {
                        measured(
                            metrics,
                            trace,
                            enrich_item(std::slice::from_ref(&**enrich), item, meta),
                        )
                    }))
                    .await?
                }
                Node::Parallel(calls, metrics) => {
                    futures::future::try_join_all(
                        current
                            .into_iter()
                            .map(|item| measured(metrics, trace, enrich_item(calls, item, meta))),
                    )
                    .await?
                }
                Node::Try {
                    body,
                    catch,
                    rethrow,
                } => {
                    let runs = current
                        .into_iter()
                        .map(|item| try_item(body, catch, *rethrow, item, meta, trace));
                    merge(out, futures::future::try_join_all(runs).await?)
                }
                Node::Branch {
                    id,
                    all,
                    routes,
                    default,
                    need,
                } => {
                    let runs = current.into_iter().map(|item| {
                        let node = (id.as_str(), *all, need);
                        branch_item(node, routes, default.as_ref(), item, meta, trace)
                    });
                    merge(out, futures::future::try_join_all(runs).await?)
                }
            };
        }
        Ok(current)
    }
    .boxed()
}

/// What one message's run through a block gave: its deliveries and the messages that
/// continue after the block.
type Partial = (Outcome, Vec<Item>);

/// Adds the messages' partial outcomes to `out`, in message order; the messages that continue.
fn merge(out: &mut Outcome, partials: Vec<Partial>) -> Vec<Item> {
    let mut next = Vec::new();
    for (mut outcome, items) in partials {
        out.deliveries.append(&mut outcome.deliveries);
        if out.rethrown.is_none() {
            out.rethrown = outcome.rethrown;
        }
        next.extend(items);
    }
    next
}

/// One message through a `try` block. The messages of an input go through at once (their
/// order is kept by [`merge`]).
async fn try_item(
    body: &[Node],
    catch: &[Node],
    rethrow: bool,
    item: Item,
    meta: &Arc<Meta>,
    trace: &Trace,
) -> Result<Partial, Failure> {
    let mut inner = Outcome::default();
    match run_nodes(body, vec![item.clone()], meta, trace, &mut inner).await {
        Ok(items) => Ok((inner, items)),
        // An unavailable upstream is not a fault of the message: the runner waits (or
        // answers 503); catch steps are for failures. What the body produced is discarded.
        Err(f) if f.retry_after.is_some() => Err(f),
        Err(failure) => {
            tracing::debug!(step = %failure.step, code = %failure.code, correlation_id = %meta.correlation_id, "Failure caught.");
            let mut caught_outcome = Outcome {
                deliveries: Vec::new(),
                rethrown: rethrow.then(|| failure.clone()),
            };
            let mut caught = item;
            caught.error = Some(Arc::new(failure));
            let items = run_nodes(catch, vec![caught], meta, trace, &mut caught_outcome).await?;
            Ok((caught_outcome, items))
        }
    }
}

/// One message through a `branch`: down the first matching route (or every one, `all`), else
/// the default, else on unchanged.
async fn branch_item(
    (id, all, need): (&str, bool, &Need),
    routes: &[Route],
    default: Option<&Route>,
    item: Item,
    meta: &Arc<Meta>,
    trace: &Trace,
) -> Result<Partial, Failure> {
    // The conditions read what they name, converted once; the routes get the message as it
    // came (raw bytes stay bytes).
    let doc = guarded(id, || Doc::new(&item.payload, need))?;
    let scope = scope(meta, &item);
    let mut chosen = Vec::new();
    for route in routes {
        let when = route.when.as_ref().expect("routes have conditions");
        if guarded(id, || with_scope(&scope, || when.is_truthy_doc(&doc)))? {
            chosen.push(route);
            if !all {
                break;
            }
        }
    }
    if chosen.is_empty() {
        match default {
            Some(d) => chosen.push(d),
            None => return Ok((Outcome::default(), vec![item])),
        }
    }
    drop(doc);
    let mut outcome = Outcome::default();
    let mut next = Vec::new();
    for route in chosen {
        let items = run_nodes(&route.nodes, vec![item.clone()], meta, trace, &mut outcome).await?;
        match route.sink {
            Some(sink) => outcome
                .deliveries
                .extend(items.into_iter().map(|i| (sink, i))),
            None => next.extend(items),
        }
    }
    Ok((outcome, next))
}

/// Runs one message through an `enrich` node, counted in the node's metrics.
async fn measured(
    metrics: &StepMetrics,
    trace: &Trace,
    run: impl std::future::Future<Output = Result<Item, Failure>>,
) -> Result<Item, Failure> {
    let (started, wall) = (Instant::now(), trace.now());
    let result = run.await;
    match &result {
        Ok(_) => metrics.processed(started.elapsed(), 1),
        Err(f) => metrics.failed(started.elapsed(), f),
    }
    trace.child(metrics.step(), wall, result.as_ref().err());
    result
}

/// Runs `calls` (one `enrich` step, or a parallel block's) for one message.
async fn enrich_item(calls: &[Enrich], mut item: Item, meta: &Arc<Meta>) -> Result<Item, Failure> {
    let first = calls.first().map(Enrich::id).unwrap_or("enrich");
    let mut value = guarded(first, || {
        std::mem::replace(&mut item.payload, Payload::Json(serde_json::Value::Null)).into_json()
    })?;
    let scope = scope(meta, &item);
    let mut requests = Vec::with_capacity(calls.len());
    for call in calls {
        requests.push(guarded(call.id(), || {
            with_scope(&scope, || call.render(&value))
        })?);
    }
    let answers: Vec<Answer> = futures::future::try_join_all(
        calls
            .iter()
            .zip(requests)
            .map(|(call, request)| call.fetch(request)),
    )
    .await?;
    for (call, answer) in calls.iter().zip(answers) {
        call.apply(&mut value, answer)?;
    }
    item.payload = Payload::Json(value);
    Ok(item)
}
