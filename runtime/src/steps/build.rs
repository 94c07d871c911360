//! Building a pipeline's steps: the [`BuildContext`] a step kind's
//! [`build`](super::StepKind::build) gets, which names the step, builds nested steps (blocks)
//! and the sinks steps declare (a branch route's).

use std::sync::Arc;

use super::{Step, StepConfig, StepContext};
use crate::error::BuildError;
use crate::sinks::{Sink, SinkConfig, SinkContext};
use crate::telemetry::Outgoing;

/// A sink of a pipeline's program: `sink.kafka` (index 0, the pipeline's) or a route's.
pub struct ProgramSink {
    /// Where it is declared (`sink.kafka`, `steps[2].branch.routes[0].sink.kafka`).
    pub id: String,
    /// The running sink.
    pub sink: Arc<dyn Sink>,
    /// Its span: `deliver <id>`, of the kind its protocol gives.
    pub span: Outgoing,
}

/// What building a pipeline's steps gathers besides the steps.
#[derive(Default)]
pub struct Built {
    /// Every sink, in the order they were built.
    pub sinks: Vec<ProgramSink>,
    /// A step may wait on the network (an `enrich` call).
    pub may_wait: bool,
    /// The first failure of a nested component, with its place (`steps[0].routes[1].when`).
    failure: Option<(String, BuildError)>,
}

/// What a step kind's `build` gets: the step's place, what the process offers, and where
/// nested steps and sinks are built.
pub struct BuildContext<'a> {
    pipeline: &'a str,
    id: String,
    steps: &'a StepContext,
    sinks: &'a SinkContext,
    built: &'a mut Built,
}

impl<'a> BuildContext<'a> {
    /// A context for the steps of `pipeline` (the top level: `steps`).
    pub fn new(
        pipeline: &'a str,
        steps: &'a StepContext,
        sinks: &'a SinkContext,
        built: &'a mut Built,
    ) -> Self {
        BuildContext {
            pipeline,
            id: "steps".into(),
            steps,
            sinks,
            built,
        }
    }

    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        self.pipeline
    }

    /// The step's place in the pipeline (`steps[1].map`), its name in metrics and spans.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the process offers steps (contracts, recorded `enrich` answers).
    pub fn context(&self) -> &StepContext {
        self.steps
    }

    /// The step may wait on the network: the runner keeps a copy of each input to run it
    /// again after an unavailable upstream.
    pub fn may_wait(&mut self) {
        self.built.may_wait = true;
    }

    /// Builds the steps `configs` found at `at` inside this step (`steps`, `catch`,
    /// `routes[0].steps`). A failure is reported at the nested step's place.
    pub fn steps(
        &mut self,
        at: &str,
        configs: &[StepConfig],
    ) -> Result<Vec<Box<dyn Step>>, BuildError> {
        let prefix = format!("{}.{at}", self.id);
        build_all(self, &prefix, configs)
    }

    /// Builds the sink `config` declared at `at` inside this step (`routes[0].sink`); its
    /// index in the program.
    pub fn sink(&mut self, at: &str, config: &SinkConfig) -> Result<usize, BuildError> {
        let id = format!("{}.{at}.{}", self.id, config.kind());
        match config.build(self.sinks) {
            Ok(sink) => {
                let span = Outgoing::new(format!("deliver {id}"), config.kind());
                self.built.sinks.push(ProgramSink { id, sink, span });
                Ok(self.built.sinks.len() - 1)
            }
            Err(e) => Err(self.failed(id, e)),
        }
    }

    /// A fault of the part `at` of this step (`routes[0].when`): reported at that place.
    pub fn error_at(&mut self, at: &str, e: BuildError) -> BuildError {
        let id = format!("{}.{at}", self.id);
        self.failed(id, e)
    }

    fn failed(&mut self, id: String, e: BuildError) -> BuildError {
        if self.built.failure.is_none() {
            self.built.failure = Some((id, e.clone()));
        }
        e
    }
}

/// Builds the pipeline's `[sink]`: index 0 of the program's sinks.
pub fn build_sink(
    cx: &mut BuildContext<'_>,
    config: &SinkConfig,
) -> Result<(), (String, BuildError)> {
    let id = format!("sink.{}", config.kind());
    let sink = config.build(cx.sinks).map_err(|e| (id.clone(), e))?;
    let span = Outgoing::new(format!("deliver {id}"), config.kind());
    cx.built.sinks.push(ProgramSink { id, sink, span });
    Ok(())
}

/// Builds the top-level `steps`; an error names the component (`steps[1].map`).
pub fn build_steps(
    cx: &mut BuildContext<'_>,
    configs: &[StepConfig],
) -> Result<Vec<Box<dyn Step>>, (String, BuildError)> {
    build_all(cx, "steps", configs).map_err(|e| {
        cx.built
            .failure
            .take()
            .unwrap_or_else(|| ("steps".into(), e))
    })
}

fn build_all(
    parent: &mut BuildContext<'_>,
    prefix: &str,
    configs: &[StepConfig],
) -> Result<Vec<Box<dyn Step>>, BuildError> {
    let mut steps = Vec::with_capacity(configs.len());
    for (i, config) in configs.iter().enumerate() {
        let id = format!("{prefix}[{i}].{}", config.kind());
        let mut cx = BuildContext {
            pipeline: parent.pipeline,
            id,
            steps: parent.steps,
            sinks: parent.sinks,
            built: &mut *parent.built,
        };
        match config.build_in(&mut cx) {
            Ok(step) => steps.push(step),
            Err(e) => {
                let id = cx.id.clone();
                return Err(cx.failed(id, e));
            }
        }
    }
    Ok(steps)
}
