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

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;
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

/// Bytes read from an NDJSON file at a time (a size the allocator reuses: 1 MiB buffers were
/// fresh pages from the kernel every time).
const NDJSON_CHUNK: usize = 256 << 10;

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

/// The outcomes of one file's messages, counted as they settle (a queue of them grew with the
/// file: a million lines were a million queued outcomes).
#[derive(Default)]
struct Tally {
    settled: AtomicUsize,
    /// How many will settle, once the file has been read (0 until then: never a count that
    /// one settled message reaches).
    expected: AtomicUsize,
    dead_lettered: AtomicBool,
    failed: AtomicBool,
    all_settled: Notify,
}

impl Tally {
    fn settle(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Delivered { .. } => {}
            Outcome::DeadLettered(_) => self.dead_lettered.store(true, Ordering::SeqCst),
            Outcome::Failed(_) => self.failed.store(true, Ordering::SeqCst),
        }
        if self.settled.fetch_add(1, Ordering::SeqCst) + 1 == self.expected.load(Ordering::SeqCst) {
            self.all_settled.notify_one();
        }
    }

    /// Waits until `count` outcomes have arrived.
    async fn wait(&self, count: usize) {
        self.expected.store(count, Ordering::SeqCst);
        // `notify_one` keeps its permit when nobody waits yet: no wake-up is lost between the
        // check and the wait.
        while self.settled.load(Ordering::SeqCst) < count {
            self.all_settled.notified().await;
        }
    }
}

impl FileSource {
    /// Processes one file; returns where it goes (`done`, `failed`), or `None` when it must
    /// stay in place (not written).
    async fn process(
        &self,
        path: &Path,
        downstream: &Arc<dyn Downstream>,
    ) -> std::io::Result<Option<&'static str>> {
        let tally = Arc::new(Tally::default());
        let mut count = 0;
        let push = |line: Option<usize>, body: Bytes| {
            let tally = Arc::clone(&tally);
            let ack = Ack::new(move |outcome| tally.settle(&outcome));
            let meta = Arc::new(file_meta(path, line, body.clone(), new_correlation_id()));
            downstream.push(Message {
                payload: Payload::Bytes(body),
                meta,
                ack,
            })
        };
        if path.extension().is_some_and(|e| e == "ndjson") {
            // Read in 256 KiB chunks, each line handed over as soon as it is complete: memory follows
            // the messages in flight, not the file's size (a line's bytes are a slice of its
            // chunk, freed with the last message that holds one).
            let mut file = tokio::fs::File::open(path).await?;
            let mut buf = BytesMut::with_capacity(NDJSON_CHUNK);
            let (mut number, mut scanned) = (0, 0);
            loop {
                while let Some(at) = memchr::memchr(b'\n', &buf[scanned..]) {
                    let line = buf.split_to(scanned + at + 1).freeze();
                    scanned = 0;
                    number += 1;
                    let body = line.slice(..line.len() - 1);
                    if !body.iter().all(u8::is_ascii_whitespace) {
                        count += 1;
                        push(Some(number), body).await;
                    }
                }
                scanned = buf.len();
                if buf.capacity() - buf.len() < NDJSON_CHUNK / 4 {
                    buf.reserve(NDJSON_CHUNK);
                }
                if file.read_buf(&mut buf).await? == 0 {
                    break;
                }
            }
            number += 1;
            if !buf.iter().all(u8::is_ascii_whitespace) {
                count += 1;
                push(Some(number), buf.freeze()).await;
            }
        } else {
            count += 1;
            push(None, Bytes::from(tokio::fs::read(path).await?)).await;
        }
        tally.wait(count).await;
        let failed = tally.failed.load(Ordering::SeqCst);
        let dead_lettered = tally.dead_lettered.load(Ordering::SeqCst);
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

    /// Takes every input in and delivers it at once, keeping (line, body).
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<(Option<usize>, Vec<u8>)>>);

    impl Downstream for Recorder {
        fn push(&self, message: Message) -> BoxFuture<'_, ()> {
            let line = match &message.meta.origin {
                Origin::File { line, .. } => *line,
                other => panic!("{other:?}"),
            };
            let Payload::Bytes(body) = &message.payload else {
                panic!("raw bytes expected")
            };
            self.0.lock().unwrap().push((line, body.to_vec()));
            message.ack.delivered();
            Box::pin(async {})
        }

        fn reject(&self, _message: Message, failure: crate::error::Failure) -> BoxFuture<'_, ()> {
            panic!("rejected: {failure}")
        }
    }

    /// An NDJSON file larger than a read chunk: every line once, whole (also across chunk
    /// boundaries), with its number; blank lines skipped but counted; a last line without a
    /// line break kept.
    #[tokio::test]
    async fn ndjson_files_are_read_in_chunks_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.ndjson");
        let mut text = String::new();
        let mut expected = Vec::new();
        let mut number = 0;
        for i in 0..60_000 {
            number += 1;
            if i % 1000 == 7 {
                text.push_str("  \r\n");
                continue;
            }
            let line = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 97));
            text.push_str(&line);
            text.push('\n');
            expected.push((Some(number), line.into_bytes()));
        }
        text.push_str("{\"last\":true}");
        expected.push((Some(number + 1), b"{\"last\":true}".to_vec()));
        assert!(text.len() > 2 * NDJSON_CHUNK, "{} bytes", text.len());
        std::fs::write(&path, &text).unwrap();

        let source = FileSource {
            config: FileSourceConfig {
                dir: dir.path().to_path_buf(),
                poll_interval_ms: 100,
            },
        };
        let recorder = Arc::new(Recorder::default());
        let downstream: Arc<dyn Downstream> = recorder.clone();
        let target = source.process(&path, &downstream).await.unwrap();
        assert_eq!(target, Some("done"));
        let got = std::mem::take(&mut *recorder.0.lock().unwrap());
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "lines differ");
    }
}
