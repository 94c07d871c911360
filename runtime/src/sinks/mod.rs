//! Sinks: where a pipeline's messages go.
//!
//! Every sink kind is registered in [`SinkConfig`], the one registry.

mod blackhole;
mod file;
mod http;
mod kafka;
mod stdout;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Deserialize;

pub use blackhole::BlackholeSinkConfig;
pub use file::FileSinkConfig;
pub use http::HttpSinkConfig;
pub use kafka::KafkaSinkConfig;
pub use stdout::StdoutSinkConfig;

/// How long a pipeline's sink must have failed every delivery before the pipeline counts as
/// not delivering (`/admin/pipelines` state `not_delivering`, `/health/ready` `503`): longer
/// than one delivery attempt of the producer (`message.timeout.ms`, 10 s by default), so
/// that one transient fault does not flip readiness.
pub const NOT_DELIVERING_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

use crate::error::{BuildError, SinkError};
use crate::message::{Headers, Meta, Payload};

/// A message ready for a sink.
#[derive(Debug, Clone)]
pub struct Record {
    /// The body.
    pub payload: Payload,
    /// Facts about the input it came from (correlation id).
    pub meta: Arc<Meta>,
    /// The message's headers, written with it.
    pub headers: Headers,
    /// The message's key (a Kafka sink without `key` writes it).
    pub key: Option<bytes::Bytes>,
}

/// The acknowledgement of one record: resolves when the destination confirmed it.
pub type Delivery = BoxFuture<'static, Result<(), SinkError>>;

/// A destination.
///
/// Lifecycle: built when the pipeline loads, then `send` is called once per record, in
/// message order, possibly again for the same record when the engine retries a transient
/// fault. `send` hands the record to the destination's ordered queue before it returns (so
/// order is kept without waiting for acknowledgements one by one) and gives back the
/// [`Delivery`] to await. [`SinkError::Transient`] means "try again later",
/// [`SinkError::Permanent`] means "this record will never be accepted": it is dead-lettered.
pub trait Sink: Send + Sync {
    /// Starts delivering `record`.
    fn send<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, Result<Delivery, SinkError>>;
}

/// Whether a pipeline's sink delivers: a sink that hands records to a shared client (Kafka)
/// records each acknowledgement and each failure here, and the admin API shows the pipelines
/// whose sink failed every delivery since some moment (`/admin/pipelines`, `/health/ready`).
#[derive(Default)]
pub struct DeliveryHealth {
    /// Since when, and with what error, every delivery failed; `None` while the last one
    /// succeeded.
    failing: std::sync::Mutex<Option<Failing>>,
    /// `failing` is `Some`: the check of each acknowledgement takes no lock.
    is_failing: std::sync::atomic::AtomicBool,
}

impl DeliveryHealth {
    /// A health record for `pipeline`, registered for the admin API until it is dropped (with
    /// the sink that holds it); it replaces the one of a previous version of the pipeline.
    pub fn register(pipeline: &str) -> Arc<DeliveryHealth> {
        let health = Arc::new(DeliveryHealth::default());
        let mut all = registry().lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, h| h.strong_count() > 0);
        all.insert(pipeline.to_string(), Arc::downgrade(&health));
        health
    }

    /// A delivery was acknowledged.
    pub fn delivered(&self) {
        use std::sync::atomic::Ordering;
        if self.is_failing.load(Ordering::Relaxed) {
            let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
            *failing = None;
            self.is_failing.store(false, Ordering::Relaxed);
        }
    }

    /// A delivery failed with `error` (transiently: it will be retried).
    pub fn failed(&self, error: &str) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *failing {
            Some(f) => {
                f.last = std::time::SystemTime::now();
                if f.error != error {
                    f.error = error.to_string();
                }
            }
            None => {
                let now = std::time::SystemTime::now();
                *failing = Some(Failing {
                    since: now,
                    last: now,
                    error: error.to_string(),
                })
            }
        }
        self.is_failing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Since when, and with what error, every delivery failed.
    pub fn failing(&self) -> Option<Failing> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Pipelines whose sink has failed every delivery for `window` or longer, and failed one
    /// within the last `window` (a pipeline without traffic since its last failure is not
    /// called stuck: readiness never waits for traffic that only readiness lets in): name,
    /// since when, last error.
    pub fn not_delivering(
        window: std::time::Duration,
    ) -> Vec<(String, std::time::SystemTime, String)> {
        let all = registry().lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::SystemTime::now();
        let ago = |t: std::time::SystemTime| now.duration_since(t).unwrap_or_default();
        all.iter()
            .filter_map(|(name, h)| {
                let f = h.upgrade()?.failing()?;
                (ago(f.since) >= window && ago(f.last) < window)
                    .then(|| (name.clone(), f.since, f.error))
            })
            .collect()
    }
}

/// A run of failed deliveries.
#[derive(Debug, Clone)]
pub struct Failing {
    /// The first failure after the last success.
    pub since: std::time::SystemTime,
    /// The latest failure.
    pub last: std::time::SystemTime,
    /// The latest failure's error.
    pub error: String,
}

fn registry(
) -> &'static std::sync::Mutex<std::collections::BTreeMap<String, std::sync::Weak<DeliveryHealth>>>
{
    static REGISTRY: std::sync::OnceLock<
        std::sync::Mutex<std::collections::BTreeMap<String, std::sync::Weak<DeliveryHealth>>>,
    > = std::sync::OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// What sinks may need from the process when they are built.
#[derive(Clone)]
pub struct SinkContext {
    /// The pipeline's name, written to the `gridflow.pipeline` header.
    pub pipeline: Arc<str>,
    /// The pipeline's version (sha256 of its file), written to `gridflow.pipeline.version`.
    pub version: Arc<str>,
    /// The process's shared Kafka producer, when a Kafka sink needs it.
    pub producer: Option<crate::kafka::Producer>,
    /// Build every sink checked but unconnected, a [`DrySink`] that contacts nothing
    /// (`gridflow test`, which takes the messages from [`Program::run`](crate::engine::program::Program::run)).
    pub dry: bool,
}

/// A sink built without its destination: every `send` is refused, nothing is contacted.
pub struct DrySink;

impl Sink for DrySink {
    fn send<'a>(&'a self, _record: &'a Record) -> BoxFuture<'a, Result<Delivery, SinkError>> {
        Box::pin(async {
            Err(SinkError::Permanent {
                code: crate::error::ErrorCode::SinkRejected,
                message: "a dry sink delivers nothing".into(),
            })
        })
    }
}

/// The `[sink]` table of a pipeline file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkConfig {
    /// A Kafka topic.
    Kafka(KafkaSinkConfig),
    /// An HTTP endpoint (POST).
    Http(HttpSinkConfig),
    /// A file, one NDJSON line per message.
    File(FileSinkConfig),
    /// Standard output, one line per message.
    Stdout(StdoutSinkConfig),
    /// Nowhere: every message is accepted and discarded (measurements, side-effect flows).
    Blackhole(BlackholeSinkConfig),
}

impl SinkConfig {
    /// Deserializes the variant `kind` from a table without its `kind` key (for diagnostics
    /// with exact positions; the derive above is the normal path).
    pub fn variant<'de, D: serde::Deserializer<'de>>(kind: &str, de: D) -> Result<Self, D::Error> {
        Ok(match kind {
            "kafka" => SinkConfig::Kafka(Deserialize::deserialize(de)?),
            "http" => SinkConfig::Http(Deserialize::deserialize(de)?),
            "file" => SinkConfig::File(Deserialize::deserialize(de)?),
            "stdout" => SinkConfig::Stdout(Deserialize::deserialize(de)?),
            "blackhole" => SinkConfig::Blackhole(Deserialize::deserialize(de)?),
            other => return Err(serde::de::Error::unknown_variant(other, KINDS)),
        })
    }
}

/// Every sink kind, for hints.
pub const KINDS: &[&str] = &["kafka", "http", "file", "stdout", "blackhole"];

impl SinkConfig {
    /// The kind as written in pipeline files.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Kafka(_) => "kafka",
            SinkConfig::Http(_) => "http",
            SinkConfig::File(_) => "file",
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::Blackhole(_) => "blackhole",
        }
    }

    /// Semantic checks that need no connection (expressions compile, values make sense).
    pub fn check(&self) -> Result<(), BuildError> {
        match self {
            SinkConfig::Kafka(c) => c.check(),
            SinkConfig::Http(c) => c.check(),
            SinkConfig::File(_) | SinkConfig::Stdout(_) | SinkConfig::Blackhole(_) => Ok(()),
        }
    }

    /// The Kafka topic this sink writes to, if any.
    pub fn topic(&self) -> Option<&str> {
        match self {
            SinkConfig::Kafka(c) => Some(&c.topic),
            _ => None,
        }
    }

    /// Builds the running sink.
    pub fn build(&self, ctx: &SinkContext) -> Result<Arc<dyn Sink>, BuildError> {
        if ctx.dry {
            self.check()?;
            return Ok(Arc::new(DrySink));
        }
        Ok(match self {
            SinkConfig::Kafka(c) => Arc::new(c.build(ctx)?),
            SinkConfig::Http(c) => Arc::new(c.build(ctx)?),
            SinkConfig::File(c) => Arc::new(c.build()?),
            SinkConfig::Stdout(c) => Arc::new(c.build()),
            SinkConfig::Blackhole(c) => Arc::new(c.build()),
        })
    }
}

/// The bytes of one NDJSON line for `payload`: JSON compact; raw bytes as they are when they
/// hold no line break, else re-serialised compactly when they are JSON, else as a JSON string
/// (so one message is always one line).
pub(crate) fn ndjson_line(payload: &Payload) -> Vec<u8> {
    let mut line = match payload {
        Payload::Json(value) => serde_json::to_vec(value).unwrap_or_default(),
        Payload::Bytes(bytes) if !bytes.contains(&b'\n') && !bytes.contains(&b'\r') => {
            bytes.to_vec()
        }
        Payload::Bytes(bytes) => match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(value) => serde_json::to_vec(&value).unwrap_or_default(),
            Err(_) => serde_json::to_vec(&String::from_utf8_lossy(bytes)).unwrap_or_default(),
        },
    };
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_sink_failing_every_delivery_is_not_delivering_until_it_delivers() {
        use std::time::Duration;
        let name = "delivery-health-test";
        let window = Duration::from_millis(200);
        let listed = || {
            DeliveryHealth::not_delivering(window)
                .into_iter()
                .filter(|(n, _, _)| n == name)
                .map(|(_, _, error)| error)
                .collect::<Vec<_>>()
        };
        let health = DeliveryHealth::register(name);
        assert!(listed().is_empty(), "a new sink delivers");
        health.failed("broker down");
        assert!(listed().is_empty(), "failing for less than the window");
        std::thread::sleep(window + Duration::from_millis(50));
        health.failed("still down");
        assert_eq!(listed(), ["still down"], "failing for the whole window");
        health.delivered();
        assert!(listed().is_empty(), "one delivery ends it");

        health.failed("down again");
        std::thread::sleep(window + Duration::from_millis(50));
        assert!(
            listed().is_empty(),
            "no failure within the window (no traffic): not called stuck"
        );
        health.failed("down again");
        assert_eq!(listed(), ["down again"]);
        // A dropped sink (its pipeline stopped) is not listed.
        drop(health);
        assert!(listed().is_empty());
    }

    #[test]
    fn one_message_is_always_one_line() {
        let line = |p: Payload| String::from_utf8(ndjson_line(&p)).unwrap();
        assert_eq!(
            line(Payload::Json(serde_json::json!({"a": 1}))),
            "{\"a\":1}\n"
        );
        assert_eq!(line(Payload::Bytes(Bytes::from_static(b"<a/>"))), "<a/>\n");
        assert_eq!(
            line(Payload::Bytes(Bytes::from_static(b"{\n \"a\": 1\n}"))),
            "{\"a\":1}\n"
        );
        assert_eq!(
            line(Payload::Bytes(Bytes::from_static(b"<a>\n</a>"))),
            "\"<a>\\n</a>\"\n"
        );
    }
}
