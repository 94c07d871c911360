//! The engine: builds pipelines from their files, runs them, and stops them cleanly.
//!
//! A pipeline is a source task pushing into a [`Runner`] (steps → sink, with the retry
//! policy of [`retry`] and the dead-letter route of [`dead_letter`]). Every task gets a
//! cancellation token; a stopping pipeline stops taking input, lets its source settle what
//! it took in, then waits (bounded) until nothing is in flight.

pub mod dead_letter;
pub mod program;
pub mod reload;
pub use crate::retry;
pub mod runner;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{EngineConfig, OnErrorConfig, PipelineFile};
use crate::kafka::KafkaSettings;
use crate::metrics::PipelineMetrics;
use crate::sinks::SinkContext;
use crate::sources::{Downstream, HttpRoutes, Pause, Pauses, SourceContext};
use dead_letter::{DeadLetterTarget, DeadLetterWriter};
use retry::RetryPolicy;
use runner::Runner;

/// Why a pipeline could not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StartError {
    /// A component could not be built.
    #[error("pipeline `{pipeline}`: {component}: {message}")]
    Build {
        /// The pipeline.
        pipeline: String,
        /// `source`, `steps[1].map`, `sink`, `dead_letter`.
        component: String,
        /// What is wrong.
        message: String,
    },
    /// Topics it needs do not exist.
    #[error("pipeline `{pipeline}`: topic(s) {} do not exist on the broker; create them first (gridflow does not create topics)", .topics.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "))]
    MissingTopics {
        /// The pipeline.
        pipeline: String,
        /// The missing topics.
        topics: Vec<String>,
    },
    /// A pipeline of the same name is running.
    #[error("pipeline `{0}` is already running")]
    Duplicate(String),
}

/// What the engine shares with every pipeline.
pub struct EngineContext {
    /// Kafka settings of every client.
    pub kafka: KafkaSettings,
    /// The process's producers (sinks and dead letters).
    pub producers: crate::kafka::Producers,
    /// The HTTP listener's route table.
    pub routes: Arc<HttpRoutes>,
    /// Where dead-letter files of non-Kafka pipelines go.
    pub dead_letters_dir: PathBuf,
    /// Runner limits.
    pub limits: EngineConfig,
    /// Contracts for `validate` steps.
    pub contracts: Arc<crate::contracts::Contracts>,
    /// Starts the spans of every input when tracing is on.
    pub tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
}

/// A pipeline built and not started yet.
struct Prepared {
    file: PipelineFile,
    source: Box<dyn crate::sources::Source>,
    runner: Arc<Runner>,
    /// The pipeline's pause switch (the running version's, when it replaces one).
    pause: Pause,
}

struct Running {
    file: PipelineFile,
    started_at: SystemTime,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    runner: Arc<Runner>,
}

/// A pipeline's state, for the admin API and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineStatus {
    /// Its name.
    pub name: String,
    /// sha256 of its file.
    pub version: String,
    /// Its file.
    pub path: PathBuf,
    /// When it started.
    pub started_at: SystemTime,
    /// True while its source runs.
    pub running: bool,
}

/// The retry policy of a pipeline, built from its `[on_error]` table: at least one attempt.
pub fn retry_policy(on_error: &OnErrorConfig) -> RetryPolicy {
    RetryPolicy {
        max_attempts: on_error.max_attempts.max(1),
        initial_backoff: Duration::from_millis(on_error.initial_backoff_ms),
        max_backoff: Duration::from_millis(on_error.max_backoff_ms),
    }
}

/// The running pipelines.
pub struct Engine {
    ctx: EngineContext,
    pipelines: BTreeMap<String, Running>,
    /// The pause switch of every running pipeline.
    pauses: Arc<Pauses>,
}

impl Engine {
    /// An engine with no pipeline yet.
    pub fn new(ctx: EngineContext) -> Self {
        Engine {
            ctx,
            pipelines: BTreeMap::new(),
            pauses: Arc::default(),
        }
    }

    /// The pause switches of the running pipelines (for the admin API): a pipeline paused
    /// there stays paused across reloads of its file, until it is resumed or stops.
    pub fn pauses(&self) -> Arc<Pauses> {
        Arc::clone(&self.pauses)
    }

    /// Topics `file` reads or writes, its dead-letter topic included.
    pub fn topics_of(file: &PipelineFile, dead_letters_dir: &std::path::Path) -> Vec<String> {
        let config = &file.config;
        let mut topics: Vec<String> = config.source.topics().to_vec();
        topics.extend(config.sink.topic().map(str::to_string));
        topics.extend(
            config
                .steps
                .iter()
                .flat_map(crate::steps::StepConfig::sinks)
                .filter_map(|s| s.topic().map(str::to_string)),
        );
        if let DeadLetterTarget::Topic(t) = DeadLetterTarget::resolve(config, dead_letters_dir) {
            topics.push(t);
        }
        topics.sort();
        topics.dedup();
        topics
    }

    /// Builds and starts `file`'s pipeline.
    pub async fn start(&mut self, file: PipelineFile) -> Result<(), StartError> {
        if self.pipelines.contains_key(&file.config.name) {
            return Err(StartError::Duplicate(file.config.name.clone()));
        }
        let name = file.config.name.clone();
        let prepared = self
            .prepare(file, self.pauses.for_version(&name, &name))
            .await?;
        self.launch(prepared, &name);
        Ok(())
    }

    /// Replaces the running pipeline of the same name with `file`'s version, or starts it.
    ///
    /// The new version is built completely first (topics checked, expressions compiled,
    /// sink ready); if that fails the old version keeps running. Then:
    /// - an HTTP pipeline's new version takes the route at once (the table swaps atomically;
    ///   requests already in the old version finish there), and the old version drains;
    /// - a Kafka or file pipeline's old version stops first (settles what it took in,
    ///   commits, leaves the consumer group), then the new version starts, so no record is
    ///   processed by both.
    pub async fn replace(&mut self, file: PipelineFile) -> Result<(), StartError> {
        let name = file.config.name.clone();
        self.replace_as(&name, file).await
    }

    /// Like [`replace`](Self::replace), the running pipeline `old` (which may have another
    /// name: a pipeline renamed in its file) handing over to `file`'s.
    pub async fn replace_as(&mut self, old: &str, file: PipelineFile) -> Result<(), StartError> {
        if let Some(http) = file.config.source.http() {
            if let Some(owner) = self.ctx.routes.owner(&http.path) {
                if *owner != *file.config.name && *owner != *old {
                    return Err(StartError::Build {
                        pipeline: file.config.name.clone(),
                        component: "source".into(),
                        message: format!(
                            "path `{}` is already served by pipeline `{owner}`",
                            http.path
                        ),
                    });
                }
            }
        }
        // A paused pipeline's new version starts paused.
        let pause = self.pauses.for_version(old, &file.config.name);
        let prepared = self.prepare(file, pause).await?;
        let timeout = self.drain_timeout();
        match self.pipelines.remove(old) {
            None => self.launch(prepared, old),
            Some(running) if running.file.config.source.http().is_some() => {
                self.launch(prepared, old);
                stop_running(running, timeout).await;
            }
            Some(running) => {
                stop_running(running, timeout).await;
                self.launch(prepared, old);
            }
        }
        Ok(())
    }

    /// The version (sha256 of the file) of the running pipeline `name`.
    pub fn version_of(&self, name: &str) -> Option<&str> {
        self.pipelines.get(name).map(|r| r.file.version.as_str())
    }

    /// Records that the running pipeline `name` now comes from `path` (a file moved as is).
    pub fn set_path(&mut self, name: &str, path: &std::path::Path) {
        if let Some(r) = self.pipelines.get_mut(name) {
            r.file.path = path.to_path_buf();
        }
    }

    /// The file the running pipeline `name` came from.
    pub fn path_of(&self, name: &str) -> Option<&std::path::Path> {
        self.pipelines.get(name).map(|r| r.file.path.as_path())
    }

    /// Names of the running pipelines.
    pub fn names(&self) -> Vec<String> {
        self.pipelines.keys().cloned().collect()
    }

    /// Builds every part of `file`'s pipeline, its source obeying `pause`, without starting
    /// it.
    async fn prepare(&self, file: PipelineFile, pause: Pause) -> Result<Prepared, StartError> {
        let config = &file.config;
        let name = config.name.clone();
        let build_error = |component: &str, message: String| StartError::Build {
            pipeline: name.clone(),
            component: component.to_string(),
            message,
        };

        let topics = Self::topics_of(&file, &self.ctx.dead_letters_dir);
        if !topics.is_empty() {
            match self.ctx.kafka.missing_topics(&topics).await {
                Ok(missing) if !missing.is_empty() => {
                    return Err(StartError::MissingTopics {
                        pipeline: name,
                        topics: missing,
                    })
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(pipeline = %name, error = %e, "Topics not checked: broker unreachable; starting anyway.")
                }
            }
        }

        let pipeline: Arc<str> = Arc::from(name.as_str());
        let version: Arc<str> = Arc::from(file.version.as_str());
        // An HTTP or SOAP caller waits for the broker's acknowledgement.
        let producer = self
            .ctx
            .producers
            .for_pipeline(config.source.http().is_some())
            .clone();
        let program = program::Program::build(
            &name,
            &config.steps,
            &config.sink,
            &crate::steps::StepContext {
                contracts: Some(Arc::clone(&self.ctx.contracts)),
                upstream: None,
            },
            &SinkContext {
                pipeline: Arc::clone(&pipeline),
                version: Arc::clone(&version),
                producer: Some(producer.clone()),
                dry: false,
            },
        )
        .map_err(|(component, e)| build_error(&component, e.to_string()))?;
        let target = DeadLetterTarget::resolve(config, &self.ctx.dead_letters_dir);
        let dead_letter = DeadLetterWriter::build(
            target,
            &SinkContext {
                pipeline: Arc::clone(&pipeline),
                version: Arc::clone(&version),
                producer: Some(producer),
                dry: false,
            },
            self.ctx
                .dead_letters_dir
                .join(format!("{name}.fallback.dlq.ndjson")),
        )
        .map_err(|e| build_error("dead_letter", e.to_string()))?;
        let source = config
            .source
            .build(&SourceContext {
                pipeline: Arc::clone(&pipeline),
                kafka: self.ctx.kafka.clone(),
                http_routes: Arc::clone(&self.ctx.routes),
                drain_timeout: self.drain_timeout(),
                contracts: Arc::clone(&self.ctx.contracts),
                paused: pause.clone(),
            })
            .map_err(|e| build_error("source", e.to_string()))?;

        let max_in_flight = self.ctx.limits.max_in_flight.max(1);
        let runner = Arc::new(Runner {
            name: Arc::clone(&pipeline),
            program,
            dead_letter,
            retry: retry_policy(&config.on_error),
            source_redelivers: config.source.redelivers(),
            sink_wait: config
                .source
                .waits_for_sink()
                .then(|| Duration::from_millis(config.on_error.max_sink_wait_ms))
                .filter(|wait| !wait.is_zero()),
            processing: Arc::new(Semaphore::new(max_in_flight)),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            queue_wait: config
                .source
                .http()
                .map(|_| Duration::from_millis(self.ctx.limits.max_queue_wait_ms)),
            stopped: CancellationToken::new(),
            metrics: PipelineMetrics::new(&name),
            dead_letter_warnings: crate::logging::Throttle::new(Duration::from_secs(10)),
            sink_wait_warnings: crate::logging::Throttle::new(Duration::from_secs(10)),
            tracer: self.ctx.tracer.clone(),
        });
        Ok(Prepared {
            file,
            source,
            runner,
            pause,
        })
    }

    /// Starts a prepared pipeline's source; its pause switch takes the place of `old`'s (the
    /// pipeline it replaces, or its own name).
    fn launch(&mut self, prepared: Prepared, old: &str) {
        let Prepared {
            file,
            source,
            runner,
            pause,
        } = prepared;
        let config = &file.config;
        let name = config.name.clone();
        self.pauses.register(old, &name, pause);
        runner.metrics.running(&file.version, true);
        let cancel = CancellationToken::new();
        let downstream: Arc<dyn Downstream> = Arc::new(Arc::clone(&runner));
        let task_name = Arc::clone(&runner.name);
        // The source's own log lines (a file it could not move, a consumer error) name the
        // pipeline through this span.
        let future = tracing::Instrument::instrument(
            source.run(downstream, cancel.clone()),
            tracing::info_span!("source", pipeline = %name),
        );
        let task = tokio::spawn(async move {
            if let Err(e) = future.await {
                tracing::error!(pipeline = %task_name, error = %e, "Pipeline source stopped with an error.");
            }
        });
        tracing::info!(pipeline = %name, version = %file.version, source = config.source.kind(), sink = config.sink.kind(), "Pipeline started.");
        self.pipelines.insert(
            name,
            Running {
                file,
                started_at: SystemTime::now(),
                cancel,
                task,
                runner,
            },
        );
    }

    /// Stops `name`: no new input, in-flight messages settled (bounded by the drain timeout).
    pub async fn stop(&mut self, name: &str) -> bool {
        let Some(running) = self.pipelines.remove(name) else {
            return false;
        };
        self.pauses.forget(name);
        stop_running(running, self.drain_timeout()).await;
        true
    }

    fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.ctx.limits.drain_timeout_ms)
    }

    /// Stops every pipeline at once (one drain deadline for all), then flushes the producers.
    pub async fn shutdown(&mut self) {
        let timeout = self.drain_timeout();
        let all = std::mem::take(&mut self.pipelines);
        futures::future::join_all(all.into_values().map(|r| stop_running(r, timeout))).await;
        let producers = self.ctx.producers.clone();
        let _ = tokio::task::spawn_blocking(move || producers.flush(Duration::from_secs(10))).await;
    }

    /// The state of every pipeline.
    pub fn status(&self) -> Vec<PipelineStatus> {
        self.pipelines
            .values()
            .map(|r| PipelineStatus {
                name: r.file.config.name.clone(),
                version: r.file.version.clone(),
                path: r.file.path.clone(),
                started_at: r.started_at,
                running: !r.task.is_finished(),
            })
            .collect()
    }
}

/// Cancels a pipeline's source, lets it settle what it took in, then waits until nothing is in
/// flight; each wait is bounded by `timeout` (a source that does not stop is aborted).
async fn stop_running(running: Running, timeout: Duration) {
    let name = running.file.config.name.clone();
    running.cancel.cancel();
    let mut task = running.task;
    // The source's own drain is bounded by the same timeout; allow it a little more.
    if tokio::time::timeout(timeout + Duration::from_secs(5), &mut task)
        .await
        .is_err()
    {
        tracing::warn!(pipeline = %name, "Pipeline source did not stop in time; aborting it.");
        task.abort();
        // Wait for the abort, so that its consumer has left before a successor joins.
        let _ = task.await;
    }
    if !running.runner.drain(timeout).await {
        tracing::warn!(pipeline = %name, "Pipeline stopped before every message was settled.");
    }
    running.runner.metrics.running(&running.file.version, false);
    tracing::info!(pipeline = %name, "Pipeline stopped.");
}
