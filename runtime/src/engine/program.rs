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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::pipeline::parse_pipeline;
    use crate::message::{ContentType, Origin, Payload};
    use crate::steps::enrich::{Response, Upstream};

    /// Answers every `enrich` call `200` with a small JSON object.
    #[derive(Debug)]
    struct Answers;

    impl Upstream for Answers {
        fn answer(&self, _: &str, _: &str, _: Option<&[u8]>) -> Result<Response, String> {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert("content-type", "application/json".parse().unwrap());
            Ok(Response {
                status: reqwest::StatusCode::OK,
                headers,
                body: bytes::Bytes::from_static(br#"{"region": "north"}"#),
            })
        }
    }

    fn pipeline(source: &str, steps: &str, sink: &str) -> crate::config::PipelineConfig {
        let text = format!("{source}\n{steps}\n{sink}\n");
        parse_pipeline(std::path::Path::new("registry.toml"), &text, &|_| None)
            .unwrap_or_else(|e| panic!("{text}\n{e:?}"))
    }

    fn meta() -> Arc<Meta> {
        Arc::new(Meta {
            original: bytes::Bytes::new(),
            correlation_id: "c-1".into(),
            content_type: ContentType::Json,
            origin: Origin::Http {
                path: "/registry".into(),
            },
            key: None,
            headers: Vec::new(),
            request_headers: Vec::new(),
            received_at: std::time::Instant::now(),
            reply: None,
        })
    }

    const SOURCE: &str = "[source]\nkind = \"http\"\npath = \"/registry\"";
    const SINK: &str = "[sink]\nkind = \"blackhole\"";

    /// Every registered step kind: its documented example parses in a pipeline file through
    /// the production path, builds, and runs on its sample message without a failure.
    #[tokio::test]
    async fn every_step_kind_parses_builds_and_runs_its_example() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let (contracts, errors) = crate::contracts::Contracts::load(&root.join("contracts"));
        assert!(errors.is_empty(), "{errors:?}");
        let steps_cx = StepContext {
            contracts: Some(Arc::new(contracts)),
            upstream: Some(Arc::new(Answers)),
        };
        let sinks_cx = SinkContext {
            pipeline: "registry".into(),
            version: "v".into(),
            producer: None,
            dry: true,
        };
        assert_eq!(crate::steps::EXAMPLES.len(), crate::steps::KINDS.len());
        for (kind, example, sample) in crate::steps::EXAMPLES {
            let config = pipeline(SOURCE, example, SINK);
            assert_eq!(config.steps.len(), 1, "{kind}");
            assert_eq!(config.steps[0].kind(), *kind);
            let program = Program::build(
                "registry",
                &config.steps,
                &config.sink,
                &steps_cx,
                &sinks_cx,
            )
            .unwrap_or_else(|(at, e)| panic!("{kind}: {at}: {e}"));
            let item = Item::new(Payload::Bytes(bytes::Bytes::from_static(sample.as_bytes())));
            let outcome = program
                .run(item, &meta(), &Trace::default())
                .await
                .unwrap_or_else(|f| panic!("{kind}: {f:?}"));
            assert!(!outcome.deliveries.is_empty(), "{kind}: nothing came out");
            assert!(outcome.rethrown.is_none(), "{kind}");
        }
    }

    /// Every registered sink kind: its example parses in a pipeline file and builds (dry).
    #[test]
    fn every_sink_kind_parses_and_builds_its_example() {
        assert_eq!(crate::sinks::EXAMPLES.len(), crate::sinks::KINDS.len());
        for (kind, example) in crate::sinks::EXAMPLES {
            let config = pipeline(SOURCE, "", example);
            assert_eq!(config.sink.kind(), *kind);
            let sinks_cx = SinkContext {
                pipeline: "registry".into(),
                version: "v".into(),
                producer: None,
                dry: true,
            };
            Program::build(
                "registry",
                &[],
                &config.sink,
                &StepContext::default(),
                &sinks_cx,
            )
            .unwrap_or_else(|(at, e)| panic!("{kind}: {at}: {e}"));
        }
    }

    /// Every registered source kind: its example parses in a pipeline file and builds.
    #[test]
    fn every_source_kind_parses_and_builds_its_example() {
        assert_eq!(crate::sources::EXAMPLES.len(), crate::sources::KINDS.len());
        for (kind, example) in crate::sources::EXAMPLES {
            let config = pipeline(example, "", SINK);
            assert_eq!(config.source.kind(), *kind);
            let cx = crate::sources::SourceContext {
                pipeline: "registry".into(),
                kafka: Default::default(),
                http_routes: Default::default(),
                drain_timeout: std::time::Duration::from_secs(1),
                contracts: Default::default(),
                paused: Default::default(),
            };
            if let Err(e) = config.source.build(&cx) {
                panic!("{kind}: {e}");
            }
        }
    }
}
