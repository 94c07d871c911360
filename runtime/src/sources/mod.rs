//! Sources: where a pipeline's inputs come from.
//!
//! Every source kind is registered in [`SourceConfig`], the one registry.

pub mod edge;
mod file;
pub mod http;
pub mod ingress;
mod kafka;
pub mod openapi;
pub mod route;
pub mod soap;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use file::{file_meta, FileSourceConfig};
pub use kafka::{record_meta, KafkaSourceConfig};
pub use route::{HttpRoutes, HttpSourceConfig};

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
}

/// The `[source]` table of a pipeline file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    /// HTTP POST on a path of the shared listener.
    Http(HttpSourceConfig),
    /// SOAP 1.1/1.2 on a path of the shared listener (same keys as `http`, plus
    /// `operations` and `wsdl`).
    Soap(HttpSourceConfig),
    /// A Kafka consumer group.
    Kafka(KafkaSourceConfig),
    /// Files dropped in a directory.
    File(FileSourceConfig),
}

impl SourceConfig {
    /// Deserializes the variant `kind` from a table without its `kind` key (for diagnostics
    /// with exact positions; the derive above is the normal path).
    pub fn variant<'de, D: serde::Deserializer<'de>>(kind: &str, de: D) -> Result<Self, D::Error> {
        Ok(match kind {
            "http" => SourceConfig::Http(Deserialize::deserialize(de)?),
            "soap" => SourceConfig::Soap(Deserialize::deserialize(de)?),
            "kafka" => SourceConfig::Kafka(Deserialize::deserialize(de)?),
            "file" => SourceConfig::File(Deserialize::deserialize(de)?),
            other => return Err(serde::de::Error::unknown_variant(other, KINDS)),
        })
    }
}

/// Every source kind, for hints.
pub const KINDS: &[&str] = &["http", "soap", "kafka", "file"];

impl SourceConfig {
    /// The kind as written in pipeline files.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Http(_) => "http",
            SourceConfig::Soap(_) => "soap",
            SourceConfig::Kafka(_) => "kafka",
            SourceConfig::File(_) => "file",
        }
    }

    /// Semantic checks that need no connection.
    pub fn check(&self) -> Result<(), BuildError> {
        match self {
            SourceConfig::Http(c) | SourceConfig::Soap(c) => c.check(),
            SourceConfig::Kafka(c) => c.check(),
            SourceConfig::File(c) => c.check(),
        }
    }

    /// The HTTP-level config of an `http` or `soap` source.
    pub fn http(&self) -> Option<&HttpSourceConfig> {
        match self {
            SourceConfig::Http(c) | SourceConfig::Soap(c) => Some(c),
            _ => None,
        }
    }

    /// Topics this source reads.
    pub fn topics(&self) -> &[String] {
        match self {
            SourceConfig::Kafka(c) => &c.topics,
            _ => &[],
        }
    }

    /// True when the source can wait for a sink that is down (Kafka: its partitions stop;
    /// file: the file stays), so a send that keeps failing transiently is retried past
    /// `on_error.max_attempts`, up to `on_error.max_sink_wait_ms`. An HTTP or SOAP caller is
    /// answered `503` instead and comes back.
    pub fn waits_for_sink(&self) -> bool {
        matches!(self, SourceConfig::Kafka(_) | SourceConfig::File(_))
    }

    /// True when an input whose outcome is `Failed` is offered again by the source itself
    /// (the HTTP client retries after a 503; the file stays in place). A Kafka source cannot
    /// skip a record, so the engine retries its dead-letter write until it succeeds.
    pub fn redelivers(&self) -> bool {
        !matches!(self, SourceConfig::Kafka(_))
    }

    /// Builds the running source.
    pub fn build(&self, ctx: &SourceContext) -> Result<Box<dyn Source>, BuildError> {
        self.check()?;
        Ok(match self {
            SourceConfig::Http(c) => Box::new(c.build(ctx)?),
            SourceConfig::Soap(c) => Box::new(c.build_soap(ctx)?),
            SourceConfig::Kafka(c) => Box::new(c.build(ctx)),
            SourceConfig::File(c) => Box::new(c.build(ctx)),
        })
    }
}
