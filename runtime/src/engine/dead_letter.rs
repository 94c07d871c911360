//! The dead-letter route, the same for every pipeline: the input's original bytes, unchanged,
//! with headers saying what failed where.
//!
//! A dead letter is an envelope, a [`Record`] whose payload is the input's original bytes,
//! whose key is the input's key and whose `headers` are the `gridflow.*` envelope headers
//! ([`envelope_headers`]); the input's own headers travel in its `meta`. It goes to an
//! ordinary sink built from a sink config ([`DeadLetterTarget::sink`]), delivered by the
//! runner's one retry loop ([`Runner`](super::runner::Runner)):
//!
//! - Kafka: a record on the dead-letter topic (default `<sink topic>.dlq`) with the input's
//!   own headers and the `gridflow.*` envelope headers
//!   ([`KafkaSinkConfig::build_dead_letters`]).
//! - File: pipelines without a Kafka sink write NDJSON envelopes (`{"headers": {...},
//!   "payload": "..."}`, or `payload_base64` for bytes that are not UTF-8) to a dead-letter
//!   file ([`FileSinkConfig::build_dead_letters`]).
//!
//! When the destination refuses an envelope for good (too large for the topic, topic gone),
//! it goes to a local fallback file, a file sink of the same kind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::runner::settle;
use crate::config::PipelineConfig;
use crate::error::{BuildError, Failure, SinkError};
use crate::message::{Meta, Origin, Payload};
use crate::sinks::{
    DeadLetterPlace, FileSinkConfig, KafkaSinkConfig, Record, Sink, SinkConfig, SinkContext,
};

/// Where a pipeline's dead letters go.
#[derive(Debug, Clone, PartialEq)]
pub enum DeadLetterTarget {
    /// A Kafka topic.
    Topic(String),
    /// An NDJSON file.
    File(PathBuf),
}

impl DeadLetterTarget {
    /// The target of `config`: `on_error` when it names one, else `<sink topic>.dlq` for a
    /// Kafka sink, `<path>.dlq` beside a file sink, `<dead_letters>/<pipeline>.dlq.ndjson`
    /// otherwise.
    pub fn resolve(config: &PipelineConfig, dead_letters_dir: &Path) -> Self {
        if let Some(topic) = &config.on_error.dead_letter_topic {
            return DeadLetterTarget::Topic(topic.clone());
        }
        if let Some(file) = &config.on_error.dead_letter_file {
            return DeadLetterTarget::File(file.clone());
        }
        match config.sink.dead_letters_beside() {
            Some(DeadLetterPlace::Topic(topic)) => DeadLetterTarget::Topic(topic),
            Some(DeadLetterPlace::File(path)) => DeadLetterTarget::File(path),
            None => {
                DeadLetterTarget::File(dead_letters_dir.join(format!("{}.dlq.ndjson", config.name)))
            }
        }
    }

    /// The config of the sink that writes to this target: a Kafka sink without a key
    /// expression (an envelope keeps the input's key, so that a replay to the source topic
    /// keeps its partition), or a file sink.
    pub fn sink(&self) -> SinkConfig {
        match self {
            DeadLetterTarget::Topic(topic) => SinkConfig::Kafka(KafkaSinkConfig {
                topic: topic.clone(),
                key: None,
            }),
            DeadLetterTarget::File(path) => SinkConfig::File(FileSinkConfig { path: path.clone() }),
        }
    }

    /// Builds the sink of this target, writing envelopes.
    fn build(&self, ctx: &SinkContext) -> Result<Arc<dyn Sink>, BuildError> {
        Ok(match self {
            DeadLetterTarget::Topic(topic) => Arc::new(
                KafkaSinkConfig {
                    topic: topic.clone(),
                    key: None,
                }
                .build_dead_letters(ctx)?,
            ),
            DeadLetterTarget::File(path) => {
                Arc::new(FileSinkConfig { path: path.clone() }.build_dead_letters())
            }
        })
    }
}

/// The `gridflow.*` headers of a dead letter.
pub fn envelope_headers(
    pipeline: &str,
    version: &str,
    meta: &Meta,
    failure: &Failure,
) -> Vec<(&'static str, String)> {
    let failed_at = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let mut headers = vec![
        ("gridflow.pipeline", pipeline.to_string()),
        ("gridflow.pipeline.version", version.to_string()),
        ("gridflow.error.step", failure.step.clone()),
        ("gridflow.error.code", failure.code.as_str().to_string()),
        ("gridflow.error.message", failure.message.clone()),
        ("gridflow.error.attempts", failure.attempts.to_string()),
        ("gridflow.correlation_id", meta.correlation_id.clone()),
        ("gridflow.failed_at", failed_at),
    ];
    match &meta.origin {
        Origin::Kafka {
            topic,
            partition,
            offset,
        } => {
            headers.push(("gridflow.source.topic", topic.clone()));
            headers.push(("gridflow.source.partition", partition.to_string()));
            headers.push(("gridflow.source.offset", offset.to_string()));
        }
        Origin::Http { path } => headers.push(("gridflow.source.http_path", path.clone())),
        Origin::File { path, line } => {
            headers.push(("gridflow.source.file", path.clone()));
            if let Some(line) = line {
                headers.push(("gridflow.source.line", line.to_string()));
            }
        }
    }
    headers
}

/// Where a dead letter was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// To the pipeline's dead-letter destination.
    Destination,
    /// To the local fallback file: the destination refused it for good. Not a dead letter
    /// anyone will find on the topic: counted as failed.
    Fallback,
}

/// The dead-letter route of one pipeline: its destination sink and its fallback file.
///
/// When the destination refuses an envelope for good (too large, topic gone), the envelope
/// goes to the local fallback file instead, so that a Kafka source is never stuck on a record
/// that can be neither delivered nor dead-lettered. Retries are the runner's: [`send`] is one
/// attempt.
///
/// [`send`]: DeadLetterWriter::send
pub struct DeadLetterWriter {
    target: DeadLetterTarget,
    destination: Arc<dyn Sink>,
    pipeline: Arc<str>,
    version: Arc<str>,
    fallback_path: PathBuf,
    fallback: Arc<dyn Sink>,
}

impl DeadLetterWriter {
    /// The route to `target` for the pipeline of `ctx` (a topic target writes with its
    /// producer). `fallback` is the file used when the destination refuses an envelope for
    /// good.
    pub fn build(
        target: DeadLetterTarget,
        ctx: &SinkContext,
        fallback: PathBuf,
    ) -> Result<Self, BuildError> {
        let destination = target.build(ctx)?;
        let fallback_sink = Arc::new(
            FileSinkConfig {
                path: fallback.clone(),
            }
            .build_dead_letters(),
        );
        Ok(Self::new(target, destination, ctx, fallback, fallback_sink))
    }

    /// The route to `target` through `destination`, with the `fallback` sink writing to the
    /// file `fallback_path` (tests give sinks of their own).
    pub fn new(
        target: DeadLetterTarget,
        destination: Arc<dyn Sink>,
        ctx: &SinkContext,
        fallback_path: PathBuf,
        fallback: Arc<dyn Sink>,
    ) -> Self {
        DeadLetterWriter {
            target,
            destination,
            pipeline: Arc::clone(&ctx.pipeline),
            version: Arc::clone(&ctx.version),
            fallback_path,
            fallback,
        }
    }

    /// Where this writer writes.
    pub fn target(&self) -> &DeadLetterTarget {
        &self.target
    }

    /// The envelope of the input described by `meta`, which failed with `failure`.
    pub fn envelope(&self, meta: &Arc<Meta>, failure: &Failure) -> Record {
        let headers = envelope_headers(&self.pipeline, &self.version, meta, failure)
            .into_iter()
            .map(|(k, v)| (k.to_string(), Bytes::from(v)))
            .collect();
        Record {
            payload: Payload::Bytes(meta.original.clone()),
            meta: Arc::clone(meta),
            headers: Arc::new(headers),
            key: meta.key.clone(),
        }
    }

    /// One attempt to write `envelope`: to the destination, or, when the destination refuses
    /// it for good, to the fallback file.
    pub async fn send(&self, envelope: &Record) -> Result<Written, SinkError> {
        match settle(self.destination.send(envelope).await).await {
            Err(SinkError::Permanent { message, .. }) => {
                let step = header(envelope, "gridflow.error.step");
                tracing::error!(pipeline = %self.pipeline, step = %step, correlation_id = %envelope.meta.correlation_id, error = %message, fallback = %self.fallback_path.display(), "Dead-letter destination refused the record; writing it to the fallback file.");
                settle(self.fallback.send(envelope).await)
                    .await
                    .map(|()| Written::Fallback)
            }
            other => other.map(|()| Written::Destination),
        }
    }
}

/// The value of the envelope header `name` (empty when it has none).
fn header<'a>(envelope: &'a Record, name: &str) -> std::borrow::Cow<'a, str> {
    envelope
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::Value;
    use std::time::Instant;

    fn meta(origin: Origin) -> Meta {
        Meta {
            original: Bytes::from_static(b"<bad"),
            correlation_id: "c-1".into(),
            content_type: crate::message::ContentType::Xml,
            origin,
            key: None,
            headers: vec![("trace".into(), b"t".to_vec())],
            reply: None,
            request_headers: Vec::new(),
            received_at: Instant::now(),
        }
    }

    #[test]
    fn envelope_names_every_fact() {
        let f = Failure::new(
            "steps[0].xml_to_json",
            ErrorCode::InvalidXml,
            "unexpected end",
        );
        let h = envelope_headers(
            "p",
            "v1",
            &meta(Origin::Kafka {
                topic: "in".into(),
                partition: 2,
                offset: 42,
            }),
            &f,
        );
        let get = |k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("gridflow.pipeline"), Some("p"));
        assert_eq!(get("gridflow.error.step"), Some("steps[0].xml_to_json"));
        assert_eq!(get("gridflow.error.code"), Some("invalid_xml"));
        assert_eq!(get("gridflow.error.attempts"), Some("1"));
        assert_eq!(get("gridflow.correlation_id"), Some("c-1"));
        assert_eq!(get("gridflow.source.partition"), Some("2"));
        assert_eq!(get("gridflow.source.offset"), Some("42"));
        let at = get("gridflow.failed_at").unwrap();
        assert!(OffsetDateTime::parse(at, &Rfc3339).is_ok(), "{at}");
        let http = envelope_headers("p", "v1", &meta(Origin::Http { path: "/x".into() }), &f);
        assert!(!http
            .iter()
            .any(|(k, _)| k.starts_with("gridflow.source.topic")));
        assert!(http
            .iter()
            .any(|(k, v)| *k == "gridflow.source.http_path" && v == "/x"));
    }

    fn context() -> SinkContext {
        SinkContext {
            pipeline: "p".into(),
            version: "v".into(),
            producer: None,
            dry: false,
        }
    }

    #[tokio::test]
    async fn file_target_writes_ndjson_envelopes_with_the_original_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/p.dlq.ndjson");
        let w = DeadLetterWriter::build(
            DeadLetterTarget::File(path.clone()),
            &context(),
            dir.path().join("fallback"),
        )
        .unwrap();
        let f = Failure::new("sink.http", ErrorCode::SinkRejected, "400");
        let meta = Arc::new(meta(Origin::Http { path: "/x".into() }));
        w.send(&w.envelope(&meta, &f)).await.unwrap();
        w.send(&w.envelope(&meta, &f)).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["payload"], "<bad");
        assert_eq!(lines[0]["headers"]["gridflow.error.code"], "sink_rejected");
        assert_eq!(lines[0]["headers"]["trace"], "t");
    }

    /// A sink that fails transiently `failures` times, then hands the record to `then` (or
    /// accepts it), and keeps when each attempt came.
    struct Flaky {
        failures: u32,
        then: Option<Arc<dyn Sink>>,
        attempts: std::sync::Mutex<Vec<Instant>>,
    }

    impl Flaky {
        fn failing(failures: u32, then: Option<Arc<dyn Sink>>) -> Self {
            Flaky {
                failures,
                then,
                attempts: std::sync::Mutex::new(Vec::new()),
            }
        }

        fn attempts(&self) -> Vec<Instant> {
            self.attempts.lock().unwrap().clone()
        }
    }

    impl Sink for Flaky {
        fn send<'a>(
            &'a self,
            record: &'a Record,
        ) -> futures::future::BoxFuture<'a, Result<crate::sinks::Delivery, SinkError>> {
            Box::pin(async move {
                let attempt = {
                    let mut attempts = self.attempts.lock().unwrap();
                    attempts.push(Instant::now());
                    attempts.len() as u32
                };
                if attempt <= self.failures {
                    return Err(SinkError::Transient(format!("fault {attempt}")));
                }
                match &self.then {
                    Some(sink) => sink.send(record).await,
                    None => Ok(Box::pin(async { Ok(()) }) as crate::sinks::Delivery),
                }
            })
        }
    }

    /// A running pipeline `p` (no steps, a blackhole sink) whose dead letters go through
    /// `writer`, with `retry` as its policy. `source_redelivers`: an HTTP source (the dead
    /// letter is retried within the policy's attempts), else a Kafka one (retried until
    /// written or stopped).
    fn runner(
        writer: DeadLetterWriter,
        retry: crate::retry::RetryPolicy,
        source_redelivers: bool,
    ) -> Arc<crate::engine::runner::Runner> {
        use std::time::Duration;
        let sink: SinkConfig = crate::sinks::parse_sink_text("kind = 'blackhole'").unwrap();
        let program = crate::engine::program::Program::build(
            "p",
            &[],
            &sink,
            &crate::steps::StepContext {
                contracts: None,
                upstream: None,
            },
            &context(),
        )
        .map_err(|(c, e)| format!("{c}: {e}"))
        .unwrap();
        Arc::new(crate::engine::runner::Runner {
            name: "p".into(),
            program,
            dead_letter: writer,
            retry,
            source_redelivers,
            sink_wait: None,
            processing: Arc::new(tokio::sync::Semaphore::new(4)),
            in_flight: Arc::new(tokio::sync::Semaphore::new(4)),
            max_in_flight: 4,
            queue_wait: None,
            stopped: tokio_util::sync::CancellationToken::new(),
            metrics: crate::metrics::PipelineMetrics::new("p"),
            dead_letter_warnings: crate::logging::Throttle::new(Duration::from_secs(10)),
            sink_wait_warnings: crate::logging::Throttle::new(Duration::from_secs(10)),
            tracer: None,
        })
    }

    /// A message of input `meta`, and the outcome of its acknowledgement.
    fn message(
        meta: Meta,
    ) -> (
        crate::message::Message,
        tokio::sync::oneshot::Receiver<crate::ack::Outcome>,
    ) {
        let (ack, outcome) = crate::ack::Ack::channel();
        let message = crate::message::Message {
            payload: crate::message::Payload::Bytes(meta.original.clone()),
            meta: Arc::new(meta),
            ack,
        };
        (message, outcome)
    }

    /// A dead letter whose file destination fails transiently is written by the runner's
    /// retry loop (not by the dead-letter route itself), after the retry policy's backoffs,
    /// exactly once, and the input ends dead-lettered.
    #[tokio::test]
    async fn a_dead_letter_is_retried_by_the_runner_with_the_policy_backoff_and_written_once() {
        use crate::ack::Outcome;
        use crate::sources::Downstream;
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.dlq.ndjson");
        let target = DeadLetterTarget::File(path.clone());
        // The file sink of the target, failing its first two writes.
        let flaky = Arc::new(Flaky::failing(2, Some(target.build(&context()).unwrap())));
        let fallback = Arc::new(Flaky::failing(u32::MAX, None));
        let writer = DeadLetterWriter::new(
            target,
            flaky.clone(),
            &context(),
            dir.path().join("fallback"),
            fallback.clone(),
        );
        let retry = crate::retry::RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(60),
            max_backoff: Duration::from_secs(1),
        };
        let runner = runner(writer, retry, true);
        let (message, outcome) = message(meta(Origin::Http { path: "/x".into() }));
        let failure = Failure::new("steps[0].xml_to_json", ErrorCode::InvalidXml, "bad");
        tokio::time::timeout(Duration::from_secs(5), runner.reject(message, failure))
            .await
            .expect("the dead letter is written within its retries");

        match outcome.await.unwrap() {
            Outcome::DeadLettered(f) => assert_eq!(f.code, ErrorCode::InvalidXml, "{f:?}"),
            other => panic!("the input must be dead-lettered: {other:?}"),
        }
        // Three attempts, after backoffs of at least half of 60 ms and of 120 ms ("equal
        // jitter": half of the exponential backoff, plus up to as much again).
        let attempts = flaky.attempts();
        assert_eq!(attempts.len(), 3, "two faults, then the write");
        assert!(attempts[1] - attempts[0] >= Duration::from_millis(30));
        assert!(attempts[2] - attempts[1] >= Duration::from_millis(60));
        assert!(
            fallback.attempts().is_empty(),
            "a transient fault is retried"
        );
        // Written once, as the file envelope.
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["payload"], "<bad");
        assert_eq!(lines[0]["headers"]["gridflow.error.code"], "invalid_xml");
    }

    /// The real file sink of a dead-letter file that cannot be written yet (its directory's
    /// place is taken by a file) is retried until it can: a Kafka input's dead letter is
    /// written once, when the way is clear.
    #[tokio::test]
    async fn a_dead_letter_file_that_fails_then_works_is_written_once() {
        use crate::ack::Outcome;
        use crate::sources::Downstream;
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("dlq");
        std::fs::write(&blocker, b"not a directory").unwrap();
        let path = blocker.join("p.dlq.ndjson");
        let writer = DeadLetterWriter::build(
            DeadLetterTarget::File(path.clone()),
            &context(),
            dir.path().join("fallback.ndjson"),
        )
        .unwrap();
        let retry = crate::retry::RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(80),
        };
        let runner = runner(writer, retry, false);
        let (message, outcome) = message(meta(Origin::Kafka {
            topic: "in".into(),
            partition: 0,
            offset: 7,
        }));
        let failure = Failure::new("steps[0].xml_to_json", ErrorCode::InvalidXml, "bad");
        let started = Instant::now();
        let writing = tokio::spawn(async move { runner.reject(message, failure).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!writing.is_finished(), "retried past the policy's attempts");
        std::fs::remove_file(&blocker).unwrap();
        tokio::time::timeout(Duration::from_secs(5), writing)
            .await
            .expect("written once the directory can be made")
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(matches!(outcome.await.unwrap(), Outcome::DeadLettered(_)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            !dir.path().join("fallback.ndjson").exists(),
            "a transient fault does not go to the fallback file"
        );
    }

    /// A dead letter its destination refuses for good goes to the fallback file (once,
    /// counted as failed, not as dead-lettered: see `tests/dead_letters.rs`).
    #[tokio::test]
    async fn a_refused_dead_letter_goes_to_the_fallback_file() {
        struct Refusing;
        impl Sink for Refusing {
            fn send<'a>(
                &'a self,
                _record: &'a Record,
            ) -> futures::future::BoxFuture<'a, Result<crate::sinks::Delivery, SinkError>>
            {
                Box::pin(async {
                    Err(SinkError::Permanent {
                        code: ErrorCode::SinkRejected,
                        message: "too large".into(),
                    })
                })
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let fallback = dir.path().join("p.fallback.dlq.ndjson");
        let writer = DeadLetterWriter::new(
            DeadLetterTarget::Topic("t.dlq".into()),
            Arc::new(Refusing),
            &context(),
            fallback.clone(),
            Arc::new(
                FileSinkConfig {
                    path: fallback.clone(),
                }
                .build_dead_letters(),
            ),
        );
        let meta = Arc::new(meta(Origin::Http { path: "/x".into() }));
        let f = Failure::new("sink.http", ErrorCode::SinkRejected, "400");
        let written = writer.send(&writer.envelope(&meta, &f)).await.unwrap();
        assert_eq!(written, Written::Fallback);
        let line: Value =
            serde_json::from_str(std::fs::read_to_string(&fallback).unwrap().trim()).unwrap();
        assert_eq!(line["payload"], "<bad");
        assert_eq!(line["headers"]["gridflow.pipeline"], "p");
    }

    /// A Kafka pipeline whose dead-letter topic stays down retries the write without end,
    /// until the pipeline stops: then the retry ends, the input is left unsettled (`Failed`,
    /// so its offset is not committed and it is consumed again) and nothing is dead-lettered.
    #[tokio::test]
    async fn a_stopped_pipeline_stops_retrying_its_dead_letters() {
        use crate::ack::Outcome;
        use crate::sources::Downstream;
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        // A topic target whose every write is a transient fault, as when the dead-letter
        // topic is down.
        let writer = DeadLetterWriter::new(
            DeadLetterTarget::Topic("t.dlq".into()),
            Arc::new(Flaky::failing(u32::MAX, None)),
            &context(),
            dir.path().join("fallback"),
            Arc::new(Flaky::failing(u32::MAX, None)),
        );
        // A Kafka source: the record cannot be offered again, the write is retried.
        let runner = runner(
            writer,
            crate::retry::RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(20),
            },
            false,
        );
        let (message, outcome) = message(meta(Origin::Kafka {
            topic: "in".into(),
            partition: 0,
            offset: 7,
        }));
        let failure = Failure::new("steps[0].xml_to_json", ErrorCode::InvalidXml, "bad");
        let retrying = {
            let runner = Arc::clone(&runner);
            tokio::spawn(async move { runner.reject(message, failure).await })
        };
        // Well past the retry budget of an HTTP input: still retrying.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !retrying.is_finished(),
            "a Kafka input's dead letter is retried"
        );
        // The pipeline stops (reload or shutdown): the drain gives up on the write...
        assert!(!runner.drain(Duration::from_millis(50)).await);
        // ...and the retry ends, the input unsettled.
        tokio::time::timeout(Duration::from_secs(5), retrying)
            .await
            .expect("the retry ends when the pipeline stops")
            .unwrap();
        match outcome.await.unwrap() {
            Outcome::Failed(f) => assert_eq!(f.code, ErrorCode::Dropped, "{f:?}"),
            other => panic!("the input must stay unsettled: {other:?}"),
        }
    }

    #[test]
    fn default_targets() {
        let parse = |t: &str| {
            crate::config::pipeline::parse_pipeline(Path::new("x.toml"), t, &|_| None).unwrap()
        };
        let k = parse("[source]\nkind='http'\npath='/a'\n[sink]\nkind='kafka'\ntopic='a.b.v1'\n");
        assert_eq!(
            DeadLetterTarget::resolve(&k, Path::new("dl")),
            DeadLetterTarget::Topic("a.b.v1.dlq".into())
        );
        let f =
            parse("[source]\nkind='http'\npath='/a'\n[sink]\nkind='file'\npath='out/a.ndjson'\n");
        assert_eq!(
            DeadLetterTarget::resolve(&f, Path::new("dl")),
            DeadLetterTarget::File("out/a.ndjson.dlq".into())
        );
        let s = parse("[source]\nkind='http'\npath='/a'\n[sink]\nkind='stdout'\n");
        assert_eq!(
            DeadLetterTarget::resolve(&s, Path::new("dl")),
            DeadLetterTarget::File("dl/x.dlq.ndjson".into())
        );
    }
}
