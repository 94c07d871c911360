//! `file` source: polls a directory; one message per file, or per line for `.ndjson` files.
//!
//! After its messages were settled a file moves to `done/` (everything delivered) or
//! `failed/` (something was dead-lettered); a file whose messages could not be written at all
//! stays in place and is tried again on a later poll. A file is moved only after its messages
//! were acknowledged, so a file is never processed twice across a clean restart (a crash
//! between the acknowledgement and the move makes it processed again: at-least-once).
//! Hidden files (`.name`) and `*.tmp`/`*.part` files are ignored: write to such a name, then
//! rename, so a half-written file is never read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Downstream, Source, SourceContext};
use crate::ack::{Ack, Outcome};
use crate::message::{new_correlation_id, ContentType, Message, Meta, Origin, Payload};

/// `kind = "file"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The directory to poll (created when missing); `done/` and `failed/` are made inside it.
    pub dir: PathBuf,
    /// Milliseconds between two scans (default 1000).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

fn default_poll_interval_ms() -> u64 {
    1000
}

impl FileSourceConfig {
    /// Builds the source.
    pub fn build(&self, _ctx: &SourceContext) -> FileSource {
        FileSource {
            config: self.clone(),
        }
    }
}

/// The running `file` source.
pub struct FileSource {
    config: FileSourceConfig,
}

fn is_candidate(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !(name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part"))
}

/// The [`Meta`] of one input read from `path` (of its `line` for `.ndjson` files): the media
/// type from the file's extension. The source and `gridflow test` both read files through it.
pub fn file_meta(path: &Path, line: Option<usize>, body: Bytes, correlation_id: String) -> Meta {
    Meta {
        original: body,
        correlation_id,
        content_type: content_type(path),
        origin: Origin::File {
            path: path.display().to_string(),
            line,
        },
        key: None,
        headers: Vec::new(),
        reply: None,
        request_headers: Vec::new(),
        received_at: Instant::now(),
    }
}

fn content_type(path: &Path) -> ContentType {
    match path.extension().and_then(|e| e.to_str()) {
        Some("xml") => ContentType::Xml,
        Some("json") | Some("ndjson") => ContentType::Json,
        _ => ContentType::Other,
    }
}

/// The files to process now, oldest name first.
async fn scan(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut files = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        if entry.file_type().await?.is_file() && is_candidate(&entry.path()) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

impl FileSource {
    /// Processes one file; returns where it goes (`done`, `failed`), or `None` when it must
    /// stay in place (not written).
    async fn process(
        &self,
        path: &Path,
        downstream: &Arc<dyn Downstream>,
    ) -> std::io::Result<Option<&'static str>> {
        let content = Bytes::from(tokio::fs::read(path).await?);
        let parts: Vec<(Option<usize>, Bytes)> = if path.extension().is_some_and(|e| e == "ndjson")
        {
            let mut parts = Vec::new();
            let mut start = 0;
            for (i, line) in content.split(|b| *b == b'\n').enumerate() {
                let end = start + line.len();
                if !line.iter().all(u8::is_ascii_whitespace) {
                    parts.push((Some(i + 1), content.slice(start..end)));
                }
                start = end + 1;
            }
            parts
        } else {
            vec![(None, content)]
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let count = parts.len();
        for (line, body) in parts {
            let tx = tx.clone();
            let ack = Ack::new(move |outcome| {
                let _ = tx.send(outcome);
            });
            let meta = Arc::new(file_meta(path, line, body.clone(), new_correlation_id()));
            downstream
                .push(Message {
                    payload: Payload::Bytes(body),
                    meta,
                    ack,
                })
                .await;
        }
        drop(tx);
        let (mut dead_lettered, mut failed) = (false, false);
        for _ in 0..count {
            match rx.recv().await {
                Some(Outcome::Delivered { .. }) => {}
                Some(Outcome::DeadLettered(_)) => dead_lettered = true,
                Some(Outcome::Failed(_)) | None => failed = true,
            }
        }
        Ok(match (failed, dead_lettered) {
            (true, _) => None,
            (false, true) => Some("failed"),
            (false, false) => Some("done"),
        })
    }

    /// Moves a settled file to `done/` or `failed/`, never over an existing file.
    async fn settle(&self, path: &Path, target: &str) -> std::io::Result<()> {
        let dir = self.config.dir.join(target);
        tokio::fs::create_dir_all(&dir).await?;
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut destination = dir.join(&name);
        let mut n = 1;
        while tokio::fs::try_exists(&destination).await? {
            destination = dir.join(format!("{name}.{n}"));
            n += 1;
        }
        tokio::fs::rename(path, destination).await
    }

    async fn poll(
        self,
        downstream: Arc<dyn Downstream>,
        shutdown: CancellationToken,
    ) -> Result<(), String> {
        let dir = &self.config.dir;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let interval = Duration::from_millis(self.config.poll_interval_ms.max(10));
        // Files whose messages were settled but that could not be moved yet: never read again.
        let mut unmoved: HashMap<PathBuf, &'static str> = HashMap::new();
        while !shutdown.is_cancelled() {
            let mut moved = Vec::new();
            for (file, target) in &unmoved {
                if self.settle(file, target).await.is_ok() {
                    moved.push(file.clone());
                }
            }
            for file in moved {
                unmoved.remove(&file);
            }
            match scan(dir).await {
                Ok(files) => {
                    for file in files {
                        if shutdown.is_cancelled() {
                            break;
                        }
                        if unmoved.contains_key(&file) {
                            continue;
                        }
                        match self.process(&file, &downstream).await {
                            Ok(Some(target)) => match self.settle(&file, target).await {
                                Ok(()) => {
                                    tracing::debug!(file = %file.display(), target, "File processed.")
                                }
                                Err(e) => {
                                    tracing::error!(file = %file.display(), error = %e, "File processed but not moved; it will not be read again.");
                                    unmoved.insert(file, target);
                                }
                            },
                            Ok(None) => {
                                tracing::warn!(file = %file.display(), "File not written; it will be tried again.");
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(file = %file.display(), error = %e, "File could not be processed.")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "Directory scan failed.")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
        Ok(())
    }
}

impl Source for FileSource {
    fn run(
        self: Box<Self>,
        downstream: Arc<dyn Downstream>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), String>> {
        self.poll(downstream, shutdown).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_written_and_hidden_files_are_skipped() {
        assert!(is_candidate(Path::new("/x/a.xml")));
        assert!(!is_candidate(Path::new("/x/.a.xml")));
        assert!(!is_candidate(Path::new("/x/a.xml.tmp")));
        assert!(!is_candidate(Path::new("/x/a.part")));
    }
}
