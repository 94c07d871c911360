//! A pipeline's program: its built steps and every sink they send to, run for each input.
//!
//! The steps are built through their kinds ([`crate::steps`]); the program runs them in
//! order ([`run_all`]) and knows no kind by name. Nothing is delivered while the program
//! runs: [`Program::run`] returns every message with the sink it goes to, so an input that
//! fails is dead-lettered whole with nothing of it delivered (except what a `try` block with
//! `rethrow` produced on purpose).

use std::sync::Arc;

use crate::error::{BuildError, Failure};
use crate::message::{Item, Meta};
use crate::sinks::{SinkConfig, SinkContext};
use crate::steps::{
    build_sink, build_steps, run_all, BuildContext, Built, RunContext, Step, StepConfig,
    StepContext,
};
pub use crate::steps::{Outcome, ProgramSink};
use crate::telemetry::Trace;

/// The built steps of a pipeline and every sink they send to.
pub struct Program {
    steps: Vec<Box<dyn Step>>,
    /// Index 0 is the pipeline's `[sink]`.
    pub sinks: Vec<ProgramSink>,
    /// True when a run may wait on the network (an `enrich` step): the runner then keeps a
    /// copy of the input to run it again after an unavailable upstream.
    pub may_wait: bool,
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
        let mut built = Built::default();
        let mut cx = BuildContext::new(pipeline, step_ctx, sink_ctx, &mut built);
        build_sink(&mut cx, sink)?;
        let steps = build_steps(&mut cx, steps)?;
        Ok(Program {
            steps,
            sinks: built.sinks,
            may_wait: built.may_wait,
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
        let cx = RunContext { meta, trace };
        let rest = run_all(&self.steps, vec![item], cx, &mut outcome).await?;
        outcome
            .deliveries
            .extend(rest.into_iter().map(|item| (0, item)));
        Ok(outcome)
    }
}
