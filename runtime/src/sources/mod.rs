//! Sources: where a pipeline's inputs come from.
//!
//! A source kind is one module whose config struct implements [`SourceKind`]; the registry
//! (`source_kinds!` below) lists every kind once, and from that line come the
//! [`SourceConfig`] variant, [`KINDS`], the parse and the build dispatch. Adding a source
//! kind: write `sources/<kind>.rs` (its config, `impl SourceKind`, its [`Source`]) and add
//! one registry line.

pub mod edge;
pub mod ingress;
pub mod openapi;
pub mod pause;
pub mod route;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use toml::de::DeValue;
use toml::Spanned;

pub use file::{file_meta, FileSourceConfig};
pub use kafka::{record_meta, KafkaSourceConfig};
pub use pause::{Pause, Pauses};
pub use route::{HttpRoutes, HttpSourceConfig};
pub use soap::SoapSourceConfig;

use crate::config::document::Document;
use crate::error::{BuildError, Failure};
use crate::kafka::KafkaSettings;
use crate::message::Message;

/// What a source hands its inputs to (the pipeline's steps and sink). Implemented by the
/// engine; a source knows nothing else of it.
pub trait Downstream: Send + Sync {
    /// Processes one input. Returns once the input was taken in (its steps ran and its
    /// messages were handed to the sink); the outcome arrives later through the input's
    /// [`Ack`](crate::ack::Ack). Waits while too many messages are in flight: that is the
    /// backpressure a source feels.
    fn push(&self, message: Message) -> BoxFuture<'_, ()>;

    /// An input the source itself could not read (a body that is not JSON): it goes to the
    /// dead-letter destination with `failure`, and its ack is settled accordingly.
    fn reject(&self, message: Message, failure: Failure) -> BoxFuture<'_, ()>;
}

/// A running source.
///
/// Lifecycle: built when the pipeline loads; `run` is spawned once and returns when
/// `shutdown` is cancelled and the inputs it had taken in are settled (bounded by the drain
/// timeout), or with an error when it cannot go on (a fatal fault: the pipeline stops and the
/// error is logged). Transient faults (broker unreachable) are retried inside `run`.
pub trait Source: Send {
    /// Runs until `shutdown`. Called when the pipeline is launched; work that must happen
    /// before the engine goes on (taking an HTTP route) is done in the call itself.
    fn run(
        self: Box<Self>,
        downstream: Arc<dyn Downstream>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), String>>;
}

/// What sources may need from the process when they are built.
#[derive(Clone)]
pub struct SourceContext {
    /// The pipeline's name.
    pub pipeline: Arc<str>,
    /// Kafka settings, for a Kafka source.
    pub kafka: KafkaSettings,
    /// The HTTP listener's route table, for an HTTP source.
    pub http_routes: Arc<HttpRoutes>,
    /// How long a stopping source waits for its inputs to settle.
    pub drain_timeout: Duration,
    /// Contracts, for an HTTP source's `contract`.
    pub contracts: Arc<crate::contracts::Contracts>,
    /// The pipeline's pause switch: while it is on, the source takes no input.
    pub paused: Pause,
}

/// A kind of source: implemented by its config struct.
pub trait SourceKind:
    Sized + std::fmt::Debug + Clone + PartialEq + serde::de::DeserializeOwned + Send + Sync + 'static
{
    /// The `kind` as written in pipeline files.
    const KIND: &'static str;

    /// A `[source]` table of this kind as an integrator writes it (the reference shows it;
    /// the registry test parses it).
    const EXAMPLE: &'static str;

    /// True when the source can wait for a sink that is down (Kafka: its partitions stop;
    /// file: the file stays), so a send that keeps failing transiently is retried past
    /// `on_error.max_attempts`, up to `on_error.max_sink_wait_ms`. An HTTP or SOAP caller is
    /// answered `503` instead and comes back.
    const WAITS_FOR_SINK: bool;

    /// True when an input whose outcome is `Failed` is offered again by the source itself
    /// (the HTTP client retries after a 503; the file stays in place). A Kafka source cannot
    /// skip a record, so the engine retries its dead-letter write until it succeeds.
    const REDELIVERS: bool;

    /// Semantic checks that need no connection.
    fn check(&self) -> Result<(), BuildError> {
        Ok(())
    }

    /// Builds the running source (checked first by [`SourceConfig::build`]).
    fn build(&self, ctx: &SourceContext) -> Result<Box<dyn Source>, BuildError>;

    /// The HTTP-level config of a source served on the shared listener.
    fn http(&self) -> Option<&HttpSourceConfig> {
        None
    }

    /// Topics this source reads.
    fn topics(&self) -> &[String] {
        &[]
    }

    /// The input this source would have made of `input`, given by hand (`gridflow test`):
    /// its facts, and its first message or the failure the source itself found (an
    /// invalid body); `Err` when the kind cannot be tested offline.
    fn offline_input(&self, input: &OfflineInput<'_>) -> Result<Received, String> {
        let _ = input;
        Err(format!("a `{}` source is not supported", Self::KIND))
    }
}

/// An input given by hand (`gridflow test`): what a source would have received.
pub struct OfflineInput<'a> {
    /// The body (or record value, or file content).
    pub body: bytes::Bytes,
    /// HTTP headers or Kafka record headers.
    pub headers: &'a std::collections::BTreeMap<String, String>,
    /// The HTTP `Content-Type`, when given.
    pub content_type: Option<&'a str>,
    /// The Kafka record key, when given.
    pub key: Option<&'a str>,
    /// The file's name, when given.
    pub file: Option<&'a std::path::Path>,
    /// The contracts, for a source that checks its input against one.
    pub contracts: &'a crate::contracts::Contracts,
    /// The correlation id when the input gives none.
    pub correlation_id: &'a str,
}

impl OfflineInput<'_> {
    /// The HTTP request headers a client would have sent: the input's headers (a name or
    /// value HTTP cannot carry is left out) and its `Content-Type`.
    pub fn http_headers(&self) -> Result<axum::http::HeaderMap, String> {
        use axum::http::{header, HeaderName, HeaderValue};
        let mut headers = axum::http::HeaderMap::new();
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        if let Some(ct) = self.content_type {
            let value = HeaderValue::from_str(ct)
                .map_err(|_| format!("`{ct}` is not a valid Content-Type"))?;
            headers.insert(header::CONTENT_TYPE, value);
        }
        Ok(headers)
    }

    /// The contract `reference` names, when there is one; an unknown one is an error.
    pub fn contract(
        &self,
        reference: Option<&str>,
    ) -> Result<Option<Arc<crate::contracts::Contract>>, String> {
        reference
            .map(|reference| {
                self.contracts
                    .get(reference)
                    .ok_or_else(|| format!("source: unknown contract `{reference}`"))
            })
            .transpose()
    }
}

/// What a source makes of an input: its facts, and its first message or the failure the
/// source found.
pub type Received = (
    Arc<crate::message::Meta>,
    Result<crate::message::Payload, Failure>,
);

/// The registry: one line a kind, `Variant(module::Config)`.
macro_rules! source_kinds {
    ($( $(#[doc = $doc:literal])* $variant:ident($module:ident :: $config:ident), )+) => {
        $( pub mod $module; )+

        /// The `[source]` table of a pipeline file: the config of one registered kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum SourceConfig {
            $( $(#[doc = $doc])* $variant($module::$config), )+
        }

        /// Every source kind, in registry order.
        pub const KINDS: &[&str] = &[$( <$module::$config as SourceKind>::KIND ),+];

        /// Every source kind with its documented example.
        pub const EXAMPLES: &[(&str, &str)] = &[$(
            (<$module::$config as SourceKind>::KIND, <$module::$config as SourceKind>::EXAMPLE)
        ),+];

        /// Every source kind with its one-line description and the JSON Schema of its config
        /// (for `gridflow schema`, which adds `kind`).
        pub const SCHEMAS: &[(&str, &str, fn(&mut schemars::SchemaGenerator) -> schemars::Schema)] = &[$(
            (<$module::$config as SourceKind>::KIND, concat!($($doc),*), <$module::$config as schemars::JsonSchema>::json_schema)
        ),+];

        impl SourceConfig {
            /// The kind as written in pipeline files.
            pub fn kind(&self) -> &'static str {
                match self { $( SourceConfig::$variant(_) => <$module::$config as SourceKind>::KIND, )+ }
            }

            /// Semantic checks that need no connection.
            pub fn check(&self) -> Result<(), BuildError> {
                match self { $( SourceConfig::$variant(c) => SourceKind::check(c), )+ }
            }

            /// The HTTP-level config of an `http` or `soap` source.
            pub fn http(&self) -> Option<&HttpSourceConfig> {
                match self { $( SourceConfig::$variant(c) => SourceKind::http(c), )+ }
            }

            /// Topics this source reads.
            pub fn topics(&self) -> &[String] {
                match self { $( SourceConfig::$variant(c) => SourceKind::topics(c), )+ }
            }

            /// See [`SourceKind::offline_input`].
            pub fn offline_input(&self, input: &OfflineInput<'_>) -> Result<Received, String> {
                match self { $( SourceConfig::$variant(c) => SourceKind::offline_input(c, input), )+ }
            }

            /// See [`SourceKind::WAITS_FOR_SINK`].
            pub fn waits_for_sink(&self) -> bool {
                match self { $( SourceConfig::$variant(_) => <$module::$config as SourceKind>::WAITS_FOR_SINK, )+ }
            }

            /// See [`SourceKind::REDELIVERS`].
            pub fn redelivers(&self) -> bool {
                match self { $( SourceConfig::$variant(_) => <$module::$config as SourceKind>::REDELIVERS, )+ }
            }

            /// Builds the running source.
            pub fn build(&self, ctx: &SourceContext) -> Result<Box<dyn Source>, BuildError> {
                self.check()?;
                match self { $( SourceConfig::$variant(c) => SourceKind::build(c, ctx), )+ }
            }

            fn parse_kind<'i>(
                kind: &str,
                doc: &mut Document<'i>,
                value: &Spanned<DeValue<'i>>,
                context: &str,
            ) -> Option<SourceConfig> {
                $( if kind == <$module::$config as SourceKind>::KIND {
                    return doc.section::<$module::$config>(value, context, &[]).map(SourceConfig::$variant);
                } )+
                None
            }
        }
    };
}

source_kinds! {
    /// HTTP POST on a path of the shared listener.
    Http(http::HttpSourceConfig),
    /// SOAP 1.1/1.2 on a path of the shared listener (same keys as `http`, plus
    /// `operations` and `wsdl`).
    Soap(soap::SoapSourceConfig),
    /// A Kafka consumer group.
    Kafka(kafka::KafkaSourceConfig),
    /// Files dropped in a directory.
    File(file::FileSourceConfig),
}

/// Reads the `[source]` table at `context`: its `kind`, the kind's config, then its checks;
/// every fault is reported in `doc`.
pub fn parse_source<'i>(
    doc: &mut Document<'i>,
    value: &Spanned<DeValue<'i>>,
    context: &str,
) -> Option<SourceConfig> {
    let (kind, rest) = doc.tagged(value, context, KINDS)?;
    let source = SourceConfig::parse_kind(&kind, doc, &rest, context)?;
    if let Err(e) = source.check() {
        doc.report(value, context, e);
    }
    Some(source)
}

/// Reads a `[source]` table given as TOML text (tests, tools, fuzz targets): the same path as
/// a pipeline file's.
pub fn parse_source_text(text: &str) -> Result<SourceConfig, Vec<crate::config::Diagnostic>> {
    let path = std::path::Path::new("source.toml");
    let mut doc = Document::parse_literal(path, text)?;
    let root = doc.root_value();
    match parse_source(&mut doc, &root, "[source]") {
        Some(source) if doc.diagnostics.is_empty() => Ok(source),
        _ => Err(doc.diagnostics),
    }
}
