//! `file` sink: append one NDJSON line per message.

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
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
        })
    }
}

/// The running `file` sink.
pub struct FileSink {
    path: PathBuf,
    file: Arc<Mutex<Option<tokio::fs::File>>>,
}

/// Appends `line` to `path`, opening (and creating) the file when `slot` is empty.
pub(crate) async fn append_to_file(
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
            append_to_file(&self.file, &self.path, &ndjson_line(&record.payload))
                .await
                .map_err(|e| {
                    SinkError::Transient(format!("writing {} failed: {e}", self.path.display()))
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
}
