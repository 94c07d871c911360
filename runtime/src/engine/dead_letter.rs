//! The dead-letter route, the same for every pipeline: the input's original bytes, unchanged,
//! with headers saying what failed where.
//!
//! Kafka: a record on the dead-letter topic (default `<sink topic>.dlq`) with the input's own
//! headers and the `gridflow.*` envelope headers. Pipelines without a Kafka sink write NDJSON
//! envelopes (`{"headers": {...}, "payload": "..."}`, or `payload_base64` for bytes that are
//! not UTF-8) to a dead-letter file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::PipelineConfig;
use crate::error::{Failure, SinkError};
use crate::message::{Meta, Origin};
use crate::sinks::SinkConfig;

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
        match &config.sink {
            SinkConfig::Kafka(k) => DeadLetterTarget::Topic(format!("{}.dlq", k.topic)),
            SinkConfig::File(f) => {
                let mut path = f.path.clone().into_os_string();
                path.push(".dlq");
                DeadLetterTarget::File(path.into())
            }
            _ => {
                DeadLetterTarget::File(dead_letters_dir.join(format!("{}.dlq.ndjson", config.name)))
            }
        }
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

/// Writes dead letters of one pipeline.
///
/// When the dead-letter topic refuses a record for good (too large, topic gone), the envelope
/// goes to a local fallback file instead, so that a Kafka source is never stuck on a record
/// that can be neither delivered nor dead-lettered.
pub struct DeadLetterWriter {
    target: DeadLetterTarget,
    producer: Option<crate::kafka::Producer>,
    pipeline: Arc<str>,
    version: String,
    file: tokio::sync::Mutex<Option<tokio::fs::File>>,
    fallback: PathBuf,
    fallback_file: tokio::sync::Mutex<Option<tokio::fs::File>>,
}

impl DeadLetterWriter {
    /// A writer to `target`; a topic target needs `producer`. `fallback` is the file used
    /// when the topic refuses a record for good.
    pub fn new(
        target: DeadLetterTarget,
        producer: Option<crate::kafka::Producer>,
        pipeline: Arc<str>,
        version: String,
        fallback: PathBuf,
    ) -> Self {
        DeadLetterWriter {
            target,
            producer,
            pipeline,
            version,
            file: tokio::sync::Mutex::new(None),
            fallback,
            fallback_file: tokio::sync::Mutex::new(None),
        }
    }

    /// Where this writer writes.
    pub fn target(&self) -> &DeadLetterTarget {
        &self.target
    }

    /// Writes the input described by `meta`, which failed with `failure`.
    pub async fn write(&self, meta: &Meta, failure: &Failure) -> Result<Written, SinkError> {
        let headers = envelope_headers(&self.pipeline, &self.version, meta, failure);
        match self.write_target(meta, &headers).await {
            Err(SinkError::Permanent { message, .. }) => {
                tracing::error!(pipeline = %self.pipeline, step = %failure.step, correlation_id = %meta.correlation_id, error = %message, fallback = %self.fallback.display(), "Dead-letter destination refused the record; writing it to the fallback file.");
                write_file(&self.fallback_file, &self.fallback, &headers, meta)
                    .await
                    .map(|()| Written::Fallback)
            }
            other => other.map(|()| Written::Destination),
        }
    }

    async fn write_target(
        &self,
        meta: &Meta,
        headers: &[(&'static str, String)],
    ) -> Result<(), SinkError> {
        match &self.target {
            DeadLetterTarget::Topic(topic) => {
                let producer = self.producer.as_ref().ok_or_else(|| {
                    SinkError::Transient("no Kafka producer for the dead-letter topic".into())
                })?;
                let mut kafka_headers =
                    OwnedHeaders::new_with_capacity(meta.headers.len() + headers.len());
                for (k, v) in &meta.headers {
                    // gridflow's own headers are written anew below; a replayed input keeps
                    // its replay count (`gridflow.replay.count`, `gridflow.replayed_from`).
                    if !k.starts_with("gridflow.") || k.starts_with("gridflow.replay") {
                        kafka_headers = kafka_headers.insert(Header {
                            key: k,
                            value: Some(v),
                        });
                    }
                }
                for (k, v) in headers {
                    kafka_headers = kafka_headers.insert(Header {
                        key: k,
                        value: Some(v),
                    });
                }
                let mut record = FutureRecord::<[u8], [u8]>::to(topic)
                    .payload(meta.original.as_ref())
                    .headers(kafka_headers);
                // The input's key, so that a replay to the source topic keeps its partition.
                if let Some(key) = &meta.key {
                    record = record.key(key.as_ref());
                }
                let fail = |e: rdkafka::error::KafkaError| {
                    let message = format!("writing to dead-letter topic `{topic}` failed: {e}");
                    if crate::kafka::is_transient(&e) {
                        SinkError::Transient(message)
                    } else {
                        SinkError::Permanent {
                            code: crate::error::ErrorCode::SinkRejected,
                            message,
                        }
                    }
                };
                let delivery = crate::kafka::enqueue(producer, record)
                    .await
                    .map_err(fail)?;
                match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(fail(e)),
                    Err(_) => Err(SinkError::Transient("the producer was closed".into())),
                }
            }
            DeadLetterTarget::File(path) => write_file(&self.file, path, headers, meta).await,
        }
    }
}

async fn write_file(
    slot: &tokio::sync::Mutex<Option<tokio::fs::File>>,
    path: &Path,
    headers: &[(&'static str, String)],
    meta: &Meta,
) -> Result<(), SinkError> {
    let mut line = serde_json::to_vec(&file_envelope(headers, meta)).unwrap_or_default();
    line.push(b'\n');
    crate::sinks::append_to_file(slot, path, &line)
        .await
        .map_err(|e| {
            SinkError::Transient(format!(
                "writing dead-letter file {} failed: {e}",
                path.display()
            ))
        })
}

fn file_envelope(headers: &[(&str, String)], meta: &Meta) -> Value {
    let mut h = Map::new();
    for (k, v) in &meta.headers {
        h.insert(
            k.clone(),
            Value::String(String::from_utf8_lossy(v).into_owned()),
        );
    }
    for (k, v) in headers {
        h.insert(k.to_string(), Value::String(v.clone()));
    }
    match std::str::from_utf8(&meta.original) {
        Ok(text) => json!({ "headers": h, "payload": text }),
        Err(_) => json!({
            "headers": h,
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&meta.original),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use bytes::Bytes;
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

    #[tokio::test]
    async fn file_target_writes_ndjson_envelopes_with_the_original_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/p.dlq.ndjson");
        let w = DeadLetterWriter::new(
            DeadLetterTarget::File(path.clone()),
            None,
            "p".into(),
            "v".into(),
            dir.path().join("fallback"),
        );
        let f = Failure::new("sink.http", ErrorCode::SinkRejected, "400");
        w.write(&meta(Origin::Http { path: "/x".into() }), &f)
            .await
            .unwrap();
        w.write(&meta(Origin::Http { path: "/x".into() }), &f)
            .await
            .unwrap();
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

    /// A Kafka pipeline whose dead-letter topic stays down retries the write without end,
    /// until the pipeline stops: then the retry ends, the input is left unsettled (`Failed`,
    /// so its offset is not committed and it is consumed again) and nothing is dead-lettered.
    #[tokio::test]
    async fn a_stopped_pipeline_stops_retrying_its_dead_letters() {
        use crate::ack::{Ack, Outcome};
        use crate::sources::Downstream;
        use std::sync::Arc;
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
            &crate::sinks::SinkContext {
                pipeline: "p".into(),
                version: "v".into(),
                producer: None,
                dry: false,
            },
        )
        .map_err(|(c, e)| format!("{c}: {e}"))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // A topic target without a producer: every write is a transient fault, as when the
        // dead-letter topic is down.
        let writer = DeadLetterWriter::new(
            DeadLetterTarget::Topic("t.dlq".into()),
            None,
            "p".into(),
            "v".into(),
            dir.path().join("fallback"),
        );
        let runner = Arc::new(crate::engine::runner::Runner {
            name: "p".into(),
            program,
            dead_letter: writer,
            retry: crate::retry::RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(20),
            },
            // A Kafka source: the record cannot be offered again, the write is retried.
            source_redelivers: false,
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
        });
        let (ack, outcome) = Ack::channel();
        let message = crate::message::Message {
            payload: crate::message::Payload::Bytes(Bytes::from_static(b"<bad")),
            meta: Arc::new(meta(Origin::Kafka {
                topic: "in".into(),
                partition: 0,
                offset: 7,
            })),
            ack,
        };
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
