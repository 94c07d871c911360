//! `blackhole` sink: accepts every message and writes it nowhere (Vector's `blackhole`,
//! Redpanda Connect's `drop`). For measuring a pipeline without its destination, and for
//! flows whose only purpose is a side effect (`enrich` calls); the messages are still
//! counted as sent in the pipeline's metrics.

use futures::future::BoxFuture;
use serde::Deserialize;

use super::{Delivery, Record, Sink};
use crate::error::SinkError;

/// `kind = "blackhole"` (no options).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSinkConfig {}

impl BlackholeSinkConfig {
    /// Builds the sink.
    pub fn build(&self) -> BlackholeSink {
        BlackholeSink
    }
}

/// The running `blackhole` sink.
pub struct BlackholeSink;

impl Sink for BlackholeSink {
    fn send<'a>(&'a self, _record: &'a Record) -> BoxFuture<'a, Result<Delivery, SinkError>> {
        Box::pin(std::future::ready(Ok(
            Box::pin(std::future::ready(Ok(()))) as Delivery
        )))
    }
}

impl super::SinkKind for BlackholeSinkConfig {
    const KIND: &'static str = "blackhole";
    const EXAMPLE: &'static str = r#"[sink]
kind = "blackhole""#;

    fn build(
        &self,
        ctx: &super::SinkContext,
    ) -> Result<std::sync::Arc<dyn Sink>, crate::error::BuildError> {
        let _ = ctx;
        Ok(std::sync::Arc::new(BlackholeSinkConfig::build(self)))
    }
}
