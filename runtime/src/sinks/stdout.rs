//! `stdout` sink: one line per message on standard output.

use std::io::Write;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;

use super::{ndjson_line, Delivery, Record, Sink};
use crate::error::SinkError;

/// `kind = "stdout"` (no options).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {}

impl StdoutSinkConfig {
    /// Builds the sink.
    pub fn build(&self) -> StdoutSink {
        StdoutSink
    }
}

/// The running `stdout` sink.
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn send<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, Result<Delivery, SinkError>> {
        let line = ndjson_line(&record.payload);
        let result = std::io::stdout()
            .lock()
            .write_all(&line)
            .map_err(|e| SinkError::Transient(format!("writing to stdout failed: {e}")));
        async move {
            result?;
            let done: Delivery = Box::pin(async { Ok(()) });
            Ok(done)
        }
        .boxed()
    }
}

impl super::SinkKind for StdoutSinkConfig {
    const KIND: &'static str = "stdout";
    const EXAMPLE: &'static str = r#"[sink]
kind = "stdout""#;

    fn build(
        &self,
        ctx: &super::SinkContext,
    ) -> Result<std::sync::Arc<dyn Sink>, crate::error::BuildError> {
        let _ = ctx;
        Ok(std::sync::Arc::new(StdoutSinkConfig::build(self)))
    }
}
