//! `file` sink: append one NDJSON line per message; for dead letters, one NDJSON envelope
//! per input (`{"headers": {...}, "payload": "..."}`, or `payload_base64` for bytes that are
//! not UTF-8).

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::{ndjson_line, Delivery, Record, Sink};
use crate::error::{BuildError, SinkError};

/// `kind = "file"`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file to append to (created with its directory when missing).
    pub path: PathBuf,
}

impl FileSinkConfig {
    /// Builds the sink; the file is opened on first write.
    pub fn build(&self) -> Result<FileSink, BuildError> {
        Ok(FileSink {
            path: self.path.clone(),
            file: Arc::new(Mutex::new(None)),
            envelopes: false,
        })
    }

    /// Builds the sink of a pipeline's dead letters: it writes envelopes ([`Record`]s whose
    /// `headers` are the `gridflow.*` envelope headers and whose payload is the input's
    /// original bytes, see [`dead_letter`](crate::engine::dead_letter)), one NDJSON line each:
    /// `{"headers": {...}, "payload": "..."}` (or `payload_base64`), the input's own headers
    /// then the envelope's (which replace those of the same name).
    pub fn build_dead_letters(&self) -> FileSink {
        FileSink {
            path: self.path.clone(),
            file: Arc::new(Mutex::new(None)),
            envelopes: true,
        }
    }
}

/// The running `file` sink.
pub struct FileSink {
    path: PathBuf,
    file: Arc<Mutex<Option<tokio::fs::File>>>,
    /// Writes dead-letter envelopes (see [`FileSinkConfig::build_dead_letters`]).
    envelopes: bool,
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

/// Appends `line` to `path`, opening (and creating) the file when `slot` is empty.
async fn append_to_file(
    slot: &Mutex<Option<tokio::fs::File>>,
    path: &std::path::Path,
    line: &[u8],
) -> std::io::Result<()> {
    let mut guard = slot.lock().await;
    if guard.is_none() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        *guard = Some(file);
    }
    let file = guard.as_mut().expect("opened above");
    // Where this line starts: on a full disk `write_all` may have written part of it before
    // `ENOSPC`; the file is cut back here so that a retry never leaves a torn line.
    let start = file.metadata().await?.len();
    let result = async {
        file.write_all(line).await?;
        file.flush().await?;
        // Acknowledged means on disk: the source commits or answers 202 after this.
        file.sync_data().await
    }
    .await;
    if let Err(e) = &result {
        let regular = file.metadata().await.is_ok_and(|m| m.is_file());
        if regular {
            if let Err(cut) = file.set_len(start).await {
                tracing::error!(path = %path.display(), error = %e, truncate_error = %cut, "Write failed and the partial line could not be cut off.");
            }
        }
        // Reopen on the next attempt.
        *guard = None;
    }
    result
}

impl Sink for FileSink {
    fn send<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, Result<Delivery, SinkError>> {
        async move {
            let line = if self.envelopes {
                envelope_line(record)
            } else {
                ndjson_line(&record.payload)
            };
            append_to_file(&self.file, &self.path, &line)
                .await
                .map_err(|e| {
                    let what = if self.envelopes {
                        "dead-letter file "
                    } else {
                        ""
                    };
                    SinkError::Transient(format!(
                        "writing {what}{} failed: {e}",
                        self.path.display()
                    ))
                })?;
            let done: Delivery = Box::pin(async { Ok(()) });
            Ok(done)
        }
        .boxed()
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
