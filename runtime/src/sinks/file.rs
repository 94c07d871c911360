//! `file` sink: append one NDJSON line per message; for dead letters, one NDJSON envelope
//! per input (`{"headers": {...}, "payload": "..."}`, or `payload_base64` for bytes that are
//! not UTF-8).
//!
//! Acknowledged means on disk: a record's [`Delivery`] resolves once its line is written and
//! synced. The lines of every sink writing to one path go through the path's one writer
//! ([`writer`]), which writes and syncs the lines waiting together (group commit).

mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{ndjson_line, Delivery, Record, Sink};
use writer::FileWriter;
use crate::error::{BuildError, SinkError};

/// `kind = "file"`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file to append to (created with its directory when missing).
    pub path: PathBuf,
}

impl FileSinkConfig {
    /// Builds the sink; the file is opened on first write, by its writer.
    pub fn build(&self) -> Result<FileSink, BuildError> {
        Ok(FileSink::new(&self.path, false))
    }

    /// Builds the sink of a pipeline's dead letters: it writes envelopes ([`Record`]s whose
    /// `headers` are the `gridflow.*` envelope headers and whose payload is the input's
    /// original bytes, see [`dead_letter`](crate::engine::dead_letter)), one NDJSON line each:
    /// `{"headers": {...}, "payload": "..."}` (or `payload_base64`), the input's own headers
    /// then the envelope's (which replace those of the same name).
    pub fn build_dead_letters(&self) -> FileSink {
        FileSink::new(&self.path, true)
    }
}

/// The running `file` sink: it formats each record's line and hands it to the file's
/// [`FileWriter`] (one a path in the process, shared by every sink writing there), which
/// writes and syncs the lines waiting in batches (group commit).
pub struct FileSink {
    writer: Arc<FileWriter>,
    /// Writes dead-letter envelopes (see [`FileSinkConfig::build_dead_letters`]).
    envelopes: bool,
    /// What the sink writes, for its errors: `<path>` or `dead-letter file <path>`.
    what: Arc<str>,
}

impl FileSink {
    fn new(path: &Path, envelopes: bool) -> FileSink {
        let what = if envelopes {
            format!("dead-letter file {}", path.display())
        } else {
            path.display().to_string()
        };
        FileSink {
            writer: FileWriter::for_path(path),
            envelopes,
            what: what.into(),
        }
    }
}

/// The NDJSON line of a dead-letter envelope.
fn envelope_line(record: &Record) -> Vec<u8> {
    let text = |v: &[u8]| Value::String(String::from_utf8_lossy(v).into_owned());
    let mut headers = Map::new();
    for (k, v) in &record.meta.headers {
        headers.insert(k.clone(), text(v));
    }
    for (k, v) in record.headers.iter() {
        headers.insert(k.clone(), text(v));
    }
    let payload = record.payload.to_bytes();
    let envelope = match std::str::from_utf8(&payload) {
        Ok(payload) => json!({ "headers": headers, "payload": payload }),
        Err(_) => json!({
            "headers": headers,
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&payload),
        }),
    };
    let mut line = serde_json::to_vec(&envelope).unwrap_or_default();
    line.push(b'\n');
    line
}

impl Sink for FileSink {
    /// Queues the record's line to the file's writer: the [`Delivery`] resolves when the
    /// batch it was written in is synced to disk.
    fn send<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, Result<Delivery, SinkError>> {
        let line = if self.envelopes {
            envelope_line(record)
        } else {
            ndjson_line(&record.payload)
        };
        // Queued now, in the order of the calls: the engine calls `send` in message order.
        let written = self.writer.append(line);
        let what = Arc::clone(&self.what);
        let delivery: Delivery = Box::pin(async move {
            let error = match written.await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                // The writer's thread ended without an answer (it panicked).
                Err(_) => "the file's writer stopped".into(),
            };
            Err(SinkError::Transient(format!("writing {what} failed: {error}")))
        });
        std::future::ready(Ok(delivery)).boxed()
    }
}

impl super::SinkKind for FileSinkConfig {
    const KIND: &'static str = "file";
    const EXAMPLE: &'static str = r#"[sink]
kind = "file"
path = "out/readings.ndjson""#;

    fn build(
        &self,
        ctx: &super::SinkContext,
    ) -> Result<std::sync::Arc<dyn Sink>, crate::error::BuildError> {
        let _ = ctx;
        Ok(std::sync::Arc::new(FileSinkConfig::build(self)?))
    }

    fn dead_letters_beside(&self) -> Option<super::DeadLetterPlace> {
        let mut path = self.path.clone().into_os_string();
        path.push(".dlq");
        Some(super::DeadLetterPlace::File(path.into()))
    }
}
