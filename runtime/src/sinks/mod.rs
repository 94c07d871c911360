//! Sinks: where a pipeline's messages go.
//!
//! A sink kind is one module whose config struct implements [`SinkKind`]; the registry
//! (`sink_kinds!` below) lists every kind once, and from that line come the [`SinkConfig`]
//! variant, [`KINDS`], the parse and the build dispatch. Adding a sink kind: write
//! `sinks/<kind>.rs` (its config, `impl SinkKind`, its [`Sink`]) and add one registry line.

use std::sync::Arc;

use futures::future::BoxFuture;
use toml::de::DeValue;
use toml::Spanned;

/// How long a pipeline's sink must have failed every delivery before the pipeline counts as
/// not delivering (`/admin/pipelines` state `not_delivering`, `/health/ready` `503`): longer
/// than one delivery attempt of the producer (`message.timeout.ms`, 10 s by default), so
/// that one transient fault does not flip readiness.
pub const NOT_DELIVERING_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

use crate::config::document::Document;
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

/// A kind of sink: implemented by its config struct.
pub trait SinkKind:
    Sized + std::fmt::Debug + Clone + PartialEq + serde::de::DeserializeOwned + Send + Sync + 'static
{
    /// The `kind` as written in pipeline files.
    const KIND: &'static str;

    /// A `[sink]` table of this kind as an integrator writes it (the reference shows it; the
    /// registry test parses and builds it).
    const EXAMPLE: &'static str;

    /// Semantic checks that need no connection (expressions compile, values make sense).
    fn check(&self) -> Result<(), BuildError> {
        Ok(())
    }

    /// Builds the running sink.
    fn build(&self, ctx: &SinkContext) -> Result<Arc<dyn Sink>, BuildError>;

    /// The Kafka topic this sink writes to, if any.
    fn topic(&self) -> Option<&str> {
        None
    }

    /// Where the pipeline's dead letters go when `[on_error]` names no place: beside what
    /// this sink writes (`<topic>.dlq`, `<path>.dlq`); `None`: in the dead-letters directory.
    fn dead_letters_beside(&self) -> Option<DeadLetterPlace> {
        None
    }
}

/// A place for dead letters.
#[derive(Debug, Clone, PartialEq)]
pub enum DeadLetterPlace {
    /// A Kafka topic.
    Topic(String),
    /// An NDJSON file.
    File(std::path::PathBuf),
}

/// The registry: one line a kind, `Variant(module::Config)`; the module is declared here.
macro_rules! sink_kinds {
    ($( $(#[doc = $doc:literal])* $variant:ident($module:ident :: $config:ident), )+) => {
        $( mod $module; pub use $module::$config; )+

        /// The `[sink]` table of a pipeline file (or a branch route's): the config of one
        /// registered kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum SinkConfig {
            $( $(#[doc = $doc])* $variant($config), )+
        }

        /// Every sink kind, in registry order.
        pub const KINDS: &[&str] = &[$( <$config as SinkKind>::KIND ),+];

        /// Every sink kind with its documented example.
        pub const EXAMPLES: &[(&str, &str)] = &[$(
            (<$config as SinkKind>::KIND, <$config as SinkKind>::EXAMPLE)
        ),+];

        /// Every sink kind with its one-line description and the JSON Schema of its config
        /// (for `gridflow schema`, which adds `kind`).
        pub const SCHEMAS: &[(&str, &str, fn(&mut schemars::SchemaGenerator) -> schemars::Schema)] = &[$(
            (<$config as SinkKind>::KIND, concat!($($doc),*), <$config as schemars::JsonSchema>::json_schema)
        ),+];

        impl SinkConfig {
            /// The kind as written in pipeline files.
            pub fn kind(&self) -> &'static str {
                match self { $( SinkConfig::$variant(_) => <$config as SinkKind>::KIND, )+ }
            }

            /// Semantic checks that need no connection (expressions compile, values make sense).
            pub fn check(&self) -> Result<(), BuildError> {
                match self { $( SinkConfig::$variant(c) => SinkKind::check(c), )+ }
            }

            /// See [`SinkKind::dead_letters_beside`].
            pub fn dead_letters_beside(&self) -> Option<DeadLetterPlace> {
                match self { $( SinkConfig::$variant(c) => SinkKind::dead_letters_beside(c), )+ }
            }

            /// The Kafka topic this sink writes to, if any.
            pub fn topic(&self) -> Option<&str> {
                match self { $( SinkConfig::$variant(c) => SinkKind::topic(c), )+ }
            }

            /// Builds the running sink (a [`DrySink`] when `ctx.dry`).
            pub fn build(&self, ctx: &SinkContext) -> Result<Arc<dyn Sink>, BuildError> {
                if ctx.dry {
                    self.check()?;
                    return Ok(Arc::new(DrySink));
                }
                match self { $( SinkConfig::$variant(c) => SinkKind::build(c, ctx), )+ }
            }

            fn parse_kind<'i>(
                kind: &str,
                doc: &mut Document<'i>,
                value: &Spanned<DeValue<'i>>,
                context: &str,
            ) -> Option<SinkConfig> {
                $( if kind == <$config as SinkKind>::KIND {
                    return doc.section::<$config>(value, context, &[]).map(SinkConfig::$variant);
                } )+
                None
            }
        }
    };
}

sink_kinds! {
    /// A Kafka topic.
    Kafka(kafka::KafkaSinkConfig),
    /// An HTTP endpoint (POST).
    Http(http::HttpSinkConfig),
    /// A file, one NDJSON line per message.
    File(file::FileSinkConfig),
    /// Standard output, one line per message.
    Stdout(stdout::StdoutSinkConfig),
    /// Nowhere: every message is accepted and discarded (measurements, side-effect flows).
    Blackhole(blackhole::BlackholeSinkConfig),
}

/// Reads a sink table (`[sink]`, a route's `sink`) at `context`: its `kind`, the kind's
/// config, then its checks; every fault is reported in `doc`.
pub fn parse_sink<'i>(
    doc: &mut Document<'i>,
    value: &Spanned<DeValue<'i>>,
    context: &str,
) -> Option<SinkConfig> {
    let (kind, rest) = doc.tagged(value, context, KINDS)?;
    let sink = SinkConfig::parse_kind(&kind, doc, &rest, context)?;
    if let Err(e) = sink.check() {
        doc.report(value, context, e);
    }
    Some(sink)
}

/// Reads a sink table given as TOML text (tests, tools): the same path as a pipeline file's.
pub fn parse_sink_text(text: &str) -> Result<SinkConfig, Vec<crate::config::Diagnostic>> {
    let path = std::path::Path::new("sink.toml");
    let mut doc = Document::parse_literal(path, text)?;
    let root = doc.root_value();
    match parse_sink(&mut doc, &root, "[sink]") {
        Some(sink) if doc.diagnostics.is_empty() => Ok(sink),
        _ => Err(doc.diagnostics),
    }
}

/// The bytes of one NDJSON line for `payload`: JSON compact; the bytes received as they are
/// when they hold no line break (but for the `\r` that ends a line of a CRLF file, which then
/// ends the line written as it ended the line read), else re-serialised compactly when they
/// are JSON, else as a JSON string (so one message is always one line).
pub(crate) fn ndjson_line(payload: &Payload) -> Vec<u8> {
    let one_line = |bytes: &[u8]| {
        let body = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        !body.contains(&b'\n') && !body.contains(&b'\r')
    };
    let mut line = match payload {
        Payload::Json(value) => serde_json::to_vec(value).unwrap_or_default(),
        Payload::Bytes(bytes) | Payload::Parsed { bytes, .. } if one_line(bytes) => bytes.to_vec(),
        Payload::Parsed { value, .. } => serde_json::to_vec(value).unwrap_or_default(),
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

    /// A line keeps its bytes, also the `\r` of a CRLF file; a document that spans lines is
    /// written on one.
    #[test]
    fn ndjson_lines_keep_the_bytes_received() {
        let line = |payload: Payload| String::from_utf8(ndjson_line(&payload)).unwrap();
        let one = "{ \"b\": 1.0, \"a\": \"\\u00e9\" }";
        assert_eq!(
            line(Payload::Bytes(Bytes::from_static(one.as_bytes()))),
            format!("{one}\n")
        );
        let crlf = "{\"a\": 1}\r";
        assert_eq!(
            line(Payload::Bytes(Bytes::from_static(crlf.as_bytes()))),
            "{\"a\": 1}\r\n"
        );
        let parsed = Payload::Bytes(Bytes::from_static(b"{\"b\":\n 1.0, \"a\": 2}\r\n"))
            .into_parsed()
            .unwrap();
        assert_eq!(line(parsed), "{\"b\":1.0,\"a\":2}\n");
    }

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
