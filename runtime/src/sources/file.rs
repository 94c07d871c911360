//! `file` source: polls a directory; one message per file, or per line for `.ndjson` files.
//!
//! After its messages were settled a file moves to `done/` (everything delivered) or
//! `failed/` (something was dead-lettered); a file whose messages could not be written at all
//! stays in place and is tried again on a later poll, at most `max_attempts` times. A file is
//! moved only after its messages were acknowledged, so a file is never processed twice across
//! a clean restart (a crash between the acknowledgement and the move makes it processed again:
//! at-least-once).
//!
//! Limits (hostile or broken input never takes the process down): a file read whole is at most
//! `max_file_bytes`, an NDJSON line at most `max_line_bytes` (lines are read with a bounded
//! reader: a longer line is never held in memory). A file over a limit is not sent at all: it
//! goes to `failed/` with a reason file beside it (`<name>.error.json`), is counted in
//! `gridflow_file_source_rejected_total` and logged.
//!
//! Checkpoints: while an NDJSON file is sent, a hidden sidecar `.<name>.checkpoint` (written
//! atomically: a temporary file, then a rename) records the byte offset and line number up to
//! which every line is settled (delivered, filtered or dead-lettered, in order), the failed
//! attempts, and the file's identity (size, modification time, inode). A crash, a shutdown or
//! a failed attempt resumes from the checkpoint, not from the first line.
//!
//! Hidden files (`.name`) and `*.tmp`/`*.part` files are ignored: write to such a name, then
//! rename, so a half-written file is never read.

use std::collections::{BTreeMap, HashMap};
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Downstream, Source, SourceContext};
use crate::ack::{Ack, Outcome};
use crate::error::BuildError;
use crate::message::{new_correlation_id, ContentType, Message, Meta, Origin, Payload};
use crate::metrics::{FileLimit, FileSourceMetrics};

/// `kind = "file"`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The directory to poll (created when missing); `done/` and `failed/` are made inside it.
    pub dir: PathBuf,
    /// Milliseconds between two scans (default 1000).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Largest file read whole, in bytes (default 64 MiB): every file but `.ndjson` files,
    /// which are read line by line. A larger file goes to `failed/`, unread.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Longest `.ndjson` line, in bytes, without its line end (default 1 MiB). A file with a
    /// longer line goes to `failed/`, none of its lines sent.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: u64,
    /// Attempts at a file whose inputs could be written neither to the sink nor to the
    /// dead-letter destination (default 10); then it goes to `failed/`.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

/// Bytes read from an NDJSON file at a time (a size the allocator reuses: 1 MiB buffers were
/// fresh pages from the kernel every time).
const NDJSON_CHUNK: usize = 256 << 10;

/// Largest accepted `max_line_bytes`: a line is held in memory whole.
const MAX_LINE_LIMIT: u64 = 1 << 30;

/// How often, at most, a file's checkpoint is written while it is sent.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// Lines pushed beyond the first unsettled one before the source waits (the settled lines
/// after an unsettled one are remembered until it settles).
const MAX_AHEAD: u64 = 65_536;

fn default_poll_interval_ms() -> u64 {
    1000
}

fn default_max_file_bytes() -> u64 {
    64 << 20
}

fn default_max_line_bytes() -> u64 {
    1 << 20
}

fn default_max_attempts() -> u32 {
    10
}

impl FileSourceConfig {
    /// Checks the limits.
    pub fn check(&self) -> Result<(), BuildError> {
        if self.max_file_bytes == 0 {
            return Err(
                BuildError::at("max_file_bytes", "max_file_bytes must be at least 1")
                    .with_hint("the default is 67108864 (64 MiB); leave the key out to use it"),
            );
        }
        if self.max_line_bytes == 0 || self.max_line_bytes > MAX_LINE_LIMIT {
            return Err(BuildError::at(
                "max_line_bytes",
                format!(
                    "max_line_bytes must be between 1 and {MAX_LINE_LIMIT} (1 GiB), not {}",
                    self.max_line_bytes
                ),
            )
            .with_hint("a line is held in memory whole; the default is 1048576 (1 MiB)"));
        }
        if self.max_attempts == 0 {
            return Err(
                BuildError::at("max_attempts", "max_attempts must be at least 1")
                    .with_hint("1: a file whose input failed goes to failed/ after one attempt"),
            );
        }
        Ok(())
    }

    /// Builds the source.
    pub fn build(&self, ctx: &SourceContext) -> FileSource {
        FileSource {
            config: self.clone(),
            pipeline: Arc::clone(&ctx.pipeline),
            metrics: FileSourceMetrics::new(&ctx.pipeline),
            pause: ctx.paused.clone(),
        }
    }
}

/// The running `file` source.
pub struct FileSource {
    config: FileSourceConfig,
    pipeline: Arc<str>,
    metrics: FileSourceMetrics,
    /// The operator's pause switch: while on, no new file is picked.
    pause: super::Pause,
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

fn is_ndjson(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "ndjson")
}

/// The name of `path`'s file, for messages and the names beside it.
fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// The checkpoint sidecar of `path`: hidden, so never read as an input.
fn checkpoint_path(path: &Path) -> PathBuf {
    path.with_file_name(format!(".{}.checkpoint", file_name(path)))
}

/// The file a checkpoint sidecar belongs to, from the sidecar's name.
fn checkpointed_file(sidecar: &Path) -> Option<PathBuf> {
    let name = sidecar.file_name()?.to_str()?;
    let name = name.strip_suffix(".tmp").unwrap_or(name);
    let inner = name.strip_prefix('.')?.strip_suffix(".checkpoint")?;
    (!inner.is_empty()).then(|| sidecar.with_file_name(inner))
}

/// The files to process now, oldest name first. Checkpoints whose file is gone (moved by an
/// earlier run that stopped before removing them) are removed.
async fn scan(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut files = Vec::new();
    let mut sidecars = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        if !entry.file_type().await?.is_file() {
            continue;
        }
        let path = entry.path();
        if is_candidate(&path) {
            files.push(path);
        } else if let Some(file) = checkpointed_file(&path) {
            sidecars.push((path, file));
        }
    }
    for (sidecar, file) in sidecars {
        if !tokio::fs::try_exists(&file).await.unwrap_or(true) {
            let _ = tokio::fs::remove_file(&sidecar).await;
        }
    }
    files.sort();
    Ok(files)
}

/// What identifies one file across polls and restarts: a new file under the same name does
/// not inherit the checkpoint of the one before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    size: u64,
    modified_ns: u64,
    inode: u64,
}

impl Identity {
    fn of(metadata: &std::fs::Metadata) -> Identity {
        let modified_ns = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(metadata);
        #[cfg(not(unix))]
        let inode = 0;
        Identity {
            size: metadata.len(),
            modified_ns,
            inode,
        }
    }
}

/// The sidecar `.<name>.checkpoint`: how far a file is settled, and its failed attempts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    /// The file this checkpoint is of.
    file: Identity,
    /// Byte offset up to which every line is settled (delivered, filtered or dead-lettered).
    offset: u64,
    /// Number of the last settled line (0: none).
    line: usize,
    /// Attempts that ended with an input neither delivered nor dead-lettered.
    attempts: u32,
    /// An input of the file was dead-lettered (the file ends in `failed/`).
    dead_lettered: bool,
}

impl Checkpoint {
    /// The checkpoint of `path` when it is of this very file; a fresh one otherwise.
    async fn load(path: &Path, file: Identity) -> Checkpoint {
        let fresh = Checkpoint {
            file,
            ..Checkpoint::default()
        };
        let Ok(bytes) = tokio::fs::read(checkpoint_path(path)).await else {
            return fresh;
        };
        match serde_json::from_slice::<Checkpoint>(&bytes) {
            Ok(found) if found.file == file && found.offset <= file.size => found,
            Ok(_) => {
                tracing::info!(file = %path.display(), "Checkpoint of another file under the same name ignored.");
                fresh
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "Checkpoint unreadable; the file is read from its start.");
                fresh
            }
        }
    }

    /// Writes the sidecar atomically: a temporary file, synced, renamed over the old one.
    async fn store(&self, path: &Path) -> std::io::Result<()> {
        let target = checkpoint_path(path);
        let mut tmp = target.clone().into_os_string();
        tmp.push(".tmp");
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(&bytes).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, &target).await
    }

    async fn remove(path: &Path) {
        match tokio::fs::remove_file(checkpoint_path(path)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "Checkpoint not removed; it is removed on a later scan.")
            }
        }
    }
}

/// One step of an NDJSON file.
#[derive(Debug)]
enum Next {
    /// A complete line (without its line end), its number and the offset just after it.
    Line {
        number: usize,
        end: u64,
        body: Bytes,
    },
    /// A line over the cap: its number, where it starts and its whole length. Nothing after
    /// it is read.
    TooLong {
        number: usize,
        start: u64,
        length: u64,
    },
    /// The end of the file.
    End,
}

/// Reads an NDJSON file line by line, in chunks, from a checkpoint. Memory follows the lines
/// in flight, not the file's size: a line's bytes are a slice of its chunk (freed with the
/// last message that holds one), and a line is never buffered beyond `max_line` bytes (one
/// more tells it is too long; the rest of it is only counted).
struct LineReader {
    file: tokio::fs::File,
    buf: BytesMut,
    /// Bytes at the start of `buf` known to hold no line break.
    scanned: usize,
    /// File offset of `buf[0]`.
    offset: u64,
    /// Number of the last line returned.
    number: usize,
    max_line: usize,
    eof: bool,
}

impl LineReader {
    async fn open(
        path: &Path,
        offset: u64,
        line: usize,
        max_line: u64,
    ) -> std::io::Result<LineReader> {
        let mut file = tokio::fs::File::open(path).await?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset)).await?;
        }
        Ok(LineReader {
            file,
            buf: BytesMut::with_capacity(NDJSON_CHUNK),
            scanned: 0,
            offset,
            number: line,
            max_line: usize::try_from(max_line).unwrap_or(usize::MAX),
            eof: false,
        })
    }

    async fn next(&mut self) -> std::io::Result<Next> {
        loop {
            if let Some(at) = memchr::memchr(b'\n', &self.buf[self.scanned..]) {
                let len = self.scanned + at + 1;
                let line = self.buf.split_to(len).freeze();
                self.scanned = 0;
                self.number += 1;
                let start = self.offset;
                self.offset += len as u64;
                if len - 1 > self.max_line {
                    return Ok(Next::TooLong {
                        number: self.number,
                        start,
                        length: (len - 1) as u64,
                    });
                }
                return Ok(Next::Line {
                    number: self.number,
                    end: self.offset,
                    body: line.slice(..len - 1),
                });
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max_line {
                return self.too_long().await;
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(Next::End);
                }
                let body = self.buf.split().freeze();
                self.scanned = 0;
                self.number += 1;
                self.offset += body.len() as u64;
                return Ok(Next::Line {
                    number: self.number,
                    end: self.offset,
                    body,
                });
            }
            if self.buf.capacity() - self.buf.len() < NDJSON_CHUNK / 4 {
                self.buf.reserve(NDJSON_CHUNK);
            }
            // `buf` holds part of one line: read no more than the cap allows it, plus one byte
            // to tell a line of exactly the cap from a longer one.
            let room = (self.max_line + 1 - self.buf.len()) as u64;
            if (&mut self.file).take(room).read_buf(&mut self.buf).await? == 0 {
                self.eof = true;
            }
        }
    }

    /// The line in `buf` is over the cap: counts the rest of it without keeping it.
    async fn too_long(&mut self) -> std::io::Result<Next> {
        let number = self.number + 1;
        let start = self.offset;
        let mut length = self.buf.len() as u64;
        self.buf.clear();
        self.scanned = 0;
        let mut chunk = vec![0u8; NDJSON_CHUNK];
        loop {
            let n = self.file.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            if let Some(at) = memchr::memchr(b'\n', &chunk[..n]) {
                length += at as u64;
                break;
            }
            length += n as u64;
        }
        self.eof = true;
        Ok(Next::TooLong {
            number,
            start,
            length,
        })
    }
}

/// The first line of `path` after `offset` (line `line`) longer than `max_line` bytes: its
/// number, where it starts and its length. Reads through a buffer of its own, keeps nothing.
async fn first_long_line(
    path: &Path,
    offset: u64,
    line: usize,
    max_line: u64,
) -> std::io::Result<Option<(usize, u64, u64)>> {
    let mut file = tokio::fs::File::open(path).await?;
    if offset > 0 {
        file.seek(SeekFrom::Start(offset)).await?;
    }
    let mut chunk = vec![0u8; NDJSON_CHUNK];
    // `start`: where the current line starts; `at`: the file offset of `chunk[0]`.
    let (mut number, mut start, mut at) = (line, offset, offset);
    loop {
        let n = file.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        for i in memchr::memchr_iter(b'\n', &chunk[..n]) {
            let end = at + i as u64;
            number += 1;
            if end - start > max_line {
                return Ok(Some((number, start, end - start)));
            }
            start = end + 1;
        }
        at += n as u64;
    }
    Ok((at - start > max_line).then_some((number + 1, start, at - start)))
}

/// A limit a file broke: why it went to `failed/`, written beside it as `<name>.error.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Rejection {
    /// The limit's key: `max_file_bytes`, `max_line_bytes` or `max_attempts`.
    reason: &'static str,
    /// What happened, for people.
    message: String,
    /// The limit's value.
    limit: u64,
    /// The file's size (`max_file_bytes`) or the line's length (`max_line_bytes`), in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    /// The number of the line over the cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    /// Where that line starts, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    /// The last attempt's failure (`max_attempts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Attempts made.
    attempts: u32,
    /// Lines settled (delivered, filtered or dead-lettered) before the file was given up, and
    /// the byte offset they end at: what an operator cuts before handing the rest in again.
    settled_lines: usize,
    settled_offset: u64,
    #[serde(skip)]
    limit_kind: Option<FileLimit>,
}

impl Rejection {
    fn file_too_large(size: u64, limit: u64) -> Rejection {
        Rejection {
            reason: FileLimit::FileBytes.key(),
            message: format!(
                "the file is {size} bytes, over max_file_bytes ({limit}); nothing was sent"
            ),
            limit,
            size: Some(size),
            line: None,
            offset: None,
            error: None,
            attempts: 0,
            settled_lines: 0,
            settled_offset: 0,
            limit_kind: Some(FileLimit::FileBytes),
        }
    }

    fn line_too_long(
        number: usize,
        start: u64,
        length: u64,
        limit: u64,
        at: &Checkpoint,
    ) -> Rejection {
        Rejection {
            reason: FileLimit::LineBytes.key(),
            message: format!("line {number} is {length} bytes, over max_line_bytes ({limit})"),
            limit,
            size: Some(length),
            line: Some(number),
            offset: Some(start),
            error: None,
            attempts: at.attempts,
            settled_lines: at.line,
            settled_offset: at.offset,
            limit_kind: Some(FileLimit::LineBytes),
        }
    }

    fn attempts_exhausted(error: String, limit: u32, at: &Checkpoint) -> Rejection {
        Rejection {
            reason: FileLimit::Attempts.key(),
            message: format!(
                "{} attempts failed (max_attempts {limit}); lines up to {} were settled, the rest were not",
                at.attempts, at.line
            ),
            limit: limit.into(),
            size: None,
            line: None,
            offset: None,
            error: Some(error),
            attempts: at.attempts,
            settled_lines: at.line,
            settled_offset: at.offset,
            limit_kind: Some(FileLimit::Attempts),
        }
    }
}

/// How one attempt at a file ended.
#[derive(Debug)]
enum Disposition {
    /// Every input settled, none dead-lettered: to `done/`.
    Done,
    /// Every input settled, some dead-lettered: to `failed/`.
    DeadLettered,
    /// Over a limit: to `failed/` with a reason file.
    Rejected(Rejection),
    /// An input could not be written: the file stays and is tried again from its checkpoint.
    Retry { attempts: u32, error: String },
    /// The source is stopping: the file stays, its checkpoint says where to go on.
    Stopped,
}

/// The settlement of one file's inputs, in order: how far the prefix of settled lines goes
/// (the checkpoint), and what ended how.
#[derive(Default)]
struct Progress {
    state: Mutex<ProgressState>,
    changed: Notify,
}

#[derive(Default)]
struct ProgressState {
    /// Inputs handed over (blank lines included: they settle at once).
    pushed: u64,
    /// Inputs settled, in any order.
    settled: u64,
    /// The first input not settled in order.
    next: u64,
    /// Inputs settled after `next`: where they end (offset, line).
    ahead: BTreeMap<u64, (u64, usize)>,
    /// The first input that failed: the prefix never goes past it in this attempt.
    blocked_at: Option<u64>,
    /// End of the settled prefix.
    offset: u64,
    line: usize,
    failure: Option<String>,
    dead_lettered: bool,
}

impl Progress {
    fn starting_at(checkpoint: &Checkpoint) -> Progress {
        Progress {
            state: Mutex::new(ProgressState {
                offset: checkpoint.offset,
                line: checkpoint.line,
                dead_lettered: checkpoint.dead_lettered,
                ..ProgressState::default()
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sequence number of the next input handed over.
    fn push(&self) -> u64 {
        let mut s = self.lock();
        s.pushed += 1;
        s.pushed - 1
    }

    /// Input `seq`, ending at `end` (line `line`), settled with `outcome` (`None`: filtered
    /// before it was handed over, a blank line).
    fn settle(&self, seq: u64, end: u64, line: usize, outcome: Option<&Outcome>) {
        {
            let mut s = self.lock();
            s.settled += 1;
            match outcome {
                Some(Outcome::Failed(failure)) => {
                    s.failure.get_or_insert_with(|| failure.to_string());
                    if s.blocked_at.is_none_or(|b| seq < b) {
                        s.blocked_at = Some(seq);
                        // Nothing from here on can join the prefix in this attempt.
                        let _ = s.ahead.split_off(&seq);
                    }
                }
                Some(Outcome::DeadLettered(_)) => {
                    s.dead_lettered = true;
                    s.ahead_insert(seq, end, line);
                }
                Some(Outcome::Delivered { .. }) | None => s.ahead_insert(seq, end, line),
            }
            let s = &mut *s;
            while let Some(entry) = s.ahead.first_entry() {
                if *entry.key() != s.next {
                    break;
                }
                let (offset, line) = entry.remove();
                s.offset = offset;
                s.line = line;
                s.next += 1;
            }
        }
        self.changed.notify_waiters();
    }

    /// Waits until `ready` holds for the state.
    async fn wait_until(&self, ready: impl Fn(&ProgressState) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if ready(&self.lock()) {
                return;
            }
            notified.await;
        }
    }

    /// The checkpoint `base` brought up to the settled prefix.
    fn checkpoint(&self, base: &Checkpoint) -> Checkpoint {
        let s = self.lock();
        Checkpoint {
            offset: s.offset,
            line: s.line,
            dead_lettered: s.dead_lettered,
            ..base.clone()
        }
    }
}

impl ProgressState {
    fn ahead_insert(&mut self, seq: u64, end: u64, line: usize) {
        if self.blocked_at.is_none_or(|b| seq < b) {
            self.ahead.insert(seq, (end, line));
        }
    }

    fn failed(&self) -> bool {
        self.failure.is_some()
    }
}

/// Writes `progress`'s checkpoint of `path` every [`CHECKPOINT_INTERVAL`] while it moves,
/// until `stop`; returns the last checkpoint written (`None`: none was).
async fn keep_checkpoint(
    path: PathBuf,
    progress: Arc<Progress>,
    base: Checkpoint,
    stop: CancellationToken,
) -> Option<Checkpoint> {
    let mut written = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return written,
            _ = tokio::time::sleep(CHECKPOINT_INTERVAL) => {}
        }
        let now = progress.checkpoint(&base);
        if now != *written.as_ref().unwrap_or(&base) {
            match now.store(&path).await {
                Ok(()) => written = Some(now),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "Checkpoint not written; a crash would resend from the one before.")
                }
            }
        }
    }
}

impl FileSource {
    /// The rejection of a file for its line `(number, start, length)` over `max_line_bytes`,
    /// with `at` the checkpoint it got to.
    fn line_too_long(
        &self,
        (number, start, length): (usize, u64, u64),
        at: &Checkpoint,
    ) -> Disposition {
        Disposition::Rejected(Rejection::line_too_long(
            number,
            start,
            length,
            self.config.max_line_bytes,
            at,
        ))
    }

    /// Processes one file from its checkpoint; returns where it goes.
    async fn process(
        &self,
        path: &Path,
        downstream: &Arc<dyn Downstream>,
        shutdown: &CancellationToken,
    ) -> std::io::Result<Disposition> {
        let metadata = tokio::fs::metadata(path).await?;
        let identity = Identity::of(&metadata);
        let mut checkpoint = Checkpoint::load(path, identity).await;
        let ndjson = is_ndjson(path);
        if ndjson {
            // Every line is checked before the first is sent: a file over the line cap is
            // not sent at all.
            if let Some(long) = first_long_line(
                path,
                checkpoint.offset,
                checkpoint.line,
                self.config.max_line_bytes,
            )
            .await?
            {
                return Ok(self.line_too_long(long, &checkpoint));
            }
        } else if identity.size > self.config.max_file_bytes {
            return Ok(Disposition::Rejected(Rejection::file_too_large(
                identity.size,
                self.config.max_file_bytes,
            )));
        }

        let progress = Arc::new(Progress::starting_at(&checkpoint));
        let push = |seq: u64, end: u64, line: Option<usize>, body: Bytes| {
            let progress = Arc::clone(&progress);
            let number = line.unwrap_or(0);
            let ack = Ack::new(move |outcome| progress.settle(seq, end, number, Some(&outcome)));
            let meta = Arc::new(file_meta(path, line, body.clone(), new_correlation_id()));
            downstream.push(Message {
                payload: Payload::Bytes(body),
                meta,
                ack,
            })
        };
        let mut rejected = None;
        let mut stopped = false;
        if ndjson {
            let stop_writer = CancellationToken::new();
            // Aborted (a source that did not stop in time), the writer stops too.
            let _stop_writer_on_drop = stop_writer.clone().drop_guard();
            let writer = tokio::spawn(keep_checkpoint(
                path.to_path_buf(),
                Arc::clone(&progress),
                checkpoint.clone(),
                stop_writer.clone(),
            ));
            let mut reader = LineReader::open(
                path,
                checkpoint.offset,
                checkpoint.line,
                self.config.max_line_bytes,
            )
            .await?;
            loop {
                // Room ahead of the first unsettled line, and nothing failed yet (the rest of
                // the file is sent again from the checkpoint on the next attempt anyway).
                progress
                    .wait_until(|s| s.failed() || s.pushed - s.next < MAX_AHEAD)
                    .await;
                if progress.lock().failed() {
                    break;
                }
                if shutdown.is_cancelled() {
                    stopped = true;
                    break;
                }
                match reader.next().await? {
                    Next::End => break,
                    Next::TooLong {
                        number,
                        start,
                        length,
                    } => {
                        // The file changed since it was checked.
                        rejected = Some((number, start, length));
                        break;
                    }
                    Next::Line { number, end, body } => {
                        let seq = progress.push();
                        if body.iter().all(u8::is_ascii_whitespace) {
                            progress.settle(seq, end, number, None);
                        } else {
                            push(seq, end, Some(number), body).await;
                        }
                    }
                }
            }
            progress.wait_until(|s| s.settled == s.pushed).await;
            // A failure that came with a stop (a pipeline stopped past its drain fails what
            // it held) is the stop: the file goes on from its checkpoint, no attempt counted.
            stopped |= shutdown.is_cancelled() && progress.lock().failed();
            stop_writer.cancel();
            let written = writer.await.unwrap_or_default();
            let now = progress.checkpoint(&checkpoint);
            // Written when it moved since the last write; a file finished before the first
            // write needs none (a crash before its move sends it again, in full), unless the
            // source stops in the middle of it.
            let store = match &written {
                Some(written) => *written != now,
                None => stopped && now != checkpoint,
            };
            if store {
                if let Err(e) = now.store(path).await {
                    tracing::warn!(file = %path.display(), error = %e, "Checkpoint not written; a crash would resend from the one before.");
                }
            }
            checkpoint = now;
        } else {
            let mut body =
                Vec::with_capacity(identity.size.min(self.config.max_file_bytes) as usize);
            tokio::fs::File::open(path)
                .await?
                .take(self.config.max_file_bytes.saturating_add(1))
                .read_to_end(&mut body)
                .await?;
            if body.len() as u64 > self.config.max_file_bytes {
                // It grew since its size was read.
                return Ok(Disposition::Rejected(Rejection::file_too_large(
                    body.len() as u64,
                    self.config.max_file_bytes,
                )));
            }
            let seq = progress.push();
            let end = body.len() as u64;
            push(seq, end, None, Bytes::from(body)).await;
            progress.wait_until(|s| s.settled == s.pushed).await;
            checkpoint = progress.checkpoint(&checkpoint);
        }

        if let Some(long) = rejected {
            return Ok(self.line_too_long(long, &checkpoint));
        }
        let failure = progress.lock().failure.clone();
        if failure.is_some() && (stopped || shutdown.is_cancelled()) {
            // Failed by the stop, not by the file: not an attempt (see above).
            return Ok(Disposition::Stopped);
        }
        if let Some(error) = failure {
            checkpoint.attempts += 1;
            if checkpoint.attempts >= self.config.max_attempts {
                return Ok(Disposition::Rejected(Rejection::attempts_exhausted(
                    error,
                    self.config.max_attempts,
                    &checkpoint,
                )));
            }
            if let Err(e) = checkpoint.store(path).await {
                tracing::warn!(file = %path.display(), error = %e, "Checkpoint not written; the failed attempt is not counted.");
            }
            return Ok(Disposition::Retry {
                attempts: checkpoint.attempts,
                error,
            });
        }
        if stopped {
            return Ok(Disposition::Stopped);
        }
        Ok(if checkpoint.dead_lettered {
            Disposition::DeadLettered
        } else {
            Disposition::Done
        })
    }

    /// Moves a settled file to `done/` or `failed/`, never over an existing file, with its
    /// reason file (`<name>.error.json`, written first) when it broke a limit; then removes
    /// its checkpoint. Returns where it went.
    async fn settle(
        &self,
        path: &Path,
        target: &str,
        rejection: Option<&Rejection>,
    ) -> std::io::Result<PathBuf> {
        let dir = self.config.dir.join(target);
        tokio::fs::create_dir_all(&dir).await?;
        let name = file_name(path);
        let mut destination = dir.join(&name);
        let mut n = 1;
        while tokio::fs::try_exists(&destination).await? {
            destination = dir.join(format!("{name}.{n}"));
            n += 1;
        }
        if let Some(rejection) = rejection {
            let mut reason = serde_json::to_value(rejection).map_err(std::io::Error::other)?;
            reason["file"] = name.clone().into();
            reason["pipeline"] = self.pipeline.to_string().into();
            reason["failed_at"] = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
                .into();
            let mut text = serde_json::to_vec_pretty(&reason).map_err(std::io::Error::other)?;
            text.push(b'\n');
            let reason_path = dir.join(format!("{}.error.json", file_name(&destination)));
            let tmp = dir.join(format!(".{}.error.json.tmp", file_name(&destination)));
            tokio::fs::write(&tmp, &text).await?;
            tokio::fs::rename(&tmp, &reason_path).await?;
        }
        tokio::fs::rename(path, &destination).await?;
        Checkpoint::remove(path).await;
        Ok(destination)
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
        let mut unmoved: HashMap<PathBuf, (&'static str, Option<Rejection>)> = HashMap::new();
        while !shutdown.is_cancelled() {
            // Paused: no file is picked (the one being read was read to its end).
            if self.pause.is_paused() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.pause.resumed() => {}
                }
            }
            let mut moved = Vec::new();
            for (file, (target, rejection)) in &unmoved {
                if self.settle(file, target, rejection.as_ref()).await.is_ok() {
                    moved.push(file.clone());
                }
            }
            for file in moved {
                unmoved.remove(&file);
            }
            match scan(dir).await {
                Ok(files) => {
                    for file in files {
                        if shutdown.is_cancelled() || self.pause.is_paused() {
                            break;
                        }
                        if unmoved.contains_key(&file) {
                            continue;
                        }
                        let (target, rejection) = match self
                            .process(&file, &downstream, &shutdown)
                            .await
                        {
                            Ok(Disposition::Done) => ("done", None),
                            Ok(Disposition::DeadLettered) => ("failed", None),
                            Ok(Disposition::Rejected(rejection)) => {
                                if let Some(limit) = rejection.limit_kind {
                                    self.metrics.rejected(limit);
                                }
                                tracing::error!(pipeline = %self.pipeline, file = %file.display(), reason = rejection.reason, error = %rejection.message, "File rejected; it goes to failed/ with its reason.");
                                ("failed", Some(rejection))
                            }
                            Ok(Disposition::Retry { attempts, error }) => {
                                tracing::warn!(pipeline = %self.pipeline, file = %file.display(), attempts, max_attempts = self.config.max_attempts, error = %error, "File not written; it will be tried again from its checkpoint.");
                                break;
                            }
                            Ok(Disposition::Stopped) => {
                                tracing::info!(pipeline = %self.pipeline, file = %file.display(), "Stopping in the middle of a file; it goes on from its checkpoint.");
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(pipeline = %self.pipeline, file = %file.display(), error = %e, "File could not be processed.");
                                continue;
                            }
                        };
                        match self.settle(&file, target, rejection.as_ref()).await {
                            Ok(to) => {
                                tracing::debug!(file = %file.display(), to = %to.display(), "File processed.")
                            }
                            Err(e) => {
                                tracing::error!(file = %file.display(), error = %e, "File processed but not moved; it will not be read again.");
                                unmoved.insert(file, (target, rejection));
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

impl super::SourceKind for FileSourceConfig {
    const KIND: &'static str = "file";
    const EXAMPLE: &'static str = r#"[source]
kind = "file"
dir = "inbox/readings""#;
    const WAITS_FOR_SINK: bool = true;
    const REDELIVERS: bool = true;

    fn check(&self) -> Result<(), BuildError> {
        FileSourceConfig::check(self)
    }

    fn build(&self, ctx: &super::SourceContext) -> Result<Box<dyn super::Source>, BuildError> {
        Ok(Box::new(FileSourceConfig::build(self, ctx)))
    }

    /// A file of the input's name (default `input`) in the source's directory.
    fn offline_input(
        &self,
        input: &super::OfflineInput<'_>,
    ) -> Result<super::Received, String> {
        let name = input
            .file
            .and_then(|f| f.file_name())
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from("input"));
        let meta = file_meta(
            &self.dir.join(name),
            None,
            input.body.clone(),
            input.correlation_id.to_string(),
        );
        Ok((
            std::sync::Arc::new(meta),
            Ok(crate::message::Payload::Bytes(input.body.clone())),
        ))
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
        let sidecar = checkpoint_path(Path::new("/x/a.ndjson"));
        assert_eq!(sidecar, Path::new("/x/.a.ndjson.checkpoint"));
        assert!(!is_candidate(&sidecar));
        assert_eq!(
            checkpointed_file(&sidecar).as_deref(),
            Some(Path::new("/x/a.ndjson"))
        );
        assert_eq!(checkpointed_file(Path::new("/x/.checkpoint")), None);
        assert_eq!(
            checkpointed_file(Path::new("/x/.a.ndjson.checkpoint.tmp")).as_deref(),
            Some(Path::new("/x/a.ndjson"))
        );
    }

    fn config(dir: &Path) -> FileSourceConfig {
        FileSourceConfig {
            dir: dir.to_path_buf(),
            poll_interval_ms: 100,
            max_file_bytes: default_max_file_bytes(),
            max_line_bytes: default_max_line_bytes(),
            max_attempts: default_max_attempts(),
        }
    }

    fn source(config: FileSourceConfig) -> FileSource {
        FileSource {
            config,
            pipeline: Arc::from("test"),
            metrics: FileSourceMetrics::new("test"),
            pause: Default::default(),
        }
    }

    #[test]
    fn limits_are_checked() {
        let dir = Path::new("in");
        assert!(config(dir).check().is_ok());
        for (key, change) in [
            (
                "max_file_bytes",
                Box::new(|c: &mut FileSourceConfig| c.max_file_bytes = 0)
                    as Box<dyn Fn(&mut FileSourceConfig)>,
            ),
            (
                "max_line_bytes",
                Box::new(|c: &mut FileSourceConfig| c.max_line_bytes = 0),
            ),
            (
                "max_line_bytes",
                Box::new(|c: &mut FileSourceConfig| c.max_line_bytes = MAX_LINE_LIMIT + 1),
            ),
            (
                "max_attempts",
                Box::new(|c: &mut FileSourceConfig| c.max_attempts = 0),
            ),
        ] {
            let mut c = config(dir);
            change(&mut c);
            let e = c.check().unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{e:?}");
            assert!(e.hint.is_some(), "{e:?}");
        }
    }

    /// A sink's refusal, as the outcome of a record that failed or was dead-lettered.
    fn refused() -> crate::error::Failure {
        crate::error::Failure {
            step: "sink".into(),
            code: crate::error::ErrorCode::SinkRejected,
            message: "no".into(),
            attempts: 1,
            details: None,
            retry_after: None,
        }
    }

    /// Takes every input in and settles it at once, keeping (line, body): delivered, or
    /// dead-lettered / failed for the bodies given.
    #[derive(Default)]
    struct Recorder {
        got: std::sync::Mutex<Vec<(Option<usize>, Vec<u8>)>>,
        dead: Vec<&'static [u8]>,
        fail: Vec<&'static [u8]>,
        /// Cancelled just before a `fail` body fails: the failure comes from a stop (a runner
        /// stopped past its drain drops the acknowledgements it holds).
        stops: Option<CancellationToken>,
    }

    impl Downstream for Recorder {
        fn push(&self, message: Message) -> BoxFuture<'_, ()> {
            let line = match &message.meta.origin {
                Origin::File { line, .. } => *line,
                other => panic!("{other:?}"),
            };
            let Payload::Bytes(body) = &message.payload else {
                panic!("raw bytes expected")
            };
            self.got.lock().unwrap().push((line, body.to_vec()));
            if self.dead.contains(&&body[..]) {
                message.ack.dead_lettered(refused());
            } else if self.fail.contains(&&body[..]) {
                if let Some(stop) = &self.stops {
                    stop.cancel();
                }
                message.ack.failed(refused());
            } else {
                message.ack.delivered();
            }
            Box::pin(async {})
        }

        fn reject(&self, _message: Message, failure: crate::error::Failure) -> BoxFuture<'_, ()> {
            panic!("rejected: {failure}")
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<(Option<usize>, Vec<u8>)> {
            std::mem::take(&mut *self.got.lock().unwrap())
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

        let source = source(config(dir.path()));
        let recorder = Arc::new(Recorder::default());
        let downstream: Arc<dyn Downstream> = recorder.clone();
        let target = source
            .process(&path, &downstream, &CancellationToken::new())
            .await
            .unwrap();
        assert!(matches!(target, Disposition::Done), "{target:?}");
        let got = recorder.take();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "lines differ");
    }

    /// Paused: the files of the directory stay where they are, however long; resumed, they
    /// are read and moved to done/.
    #[tokio::test]
    async fn a_paused_file_source_picks_no_file_until_it_is_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = source(config(dir.path()));
        let pause = crate::sources::Pause::default();
        pause.set(true);
        source.pause = pause.clone();
        std::fs::write(dir.path().join("a.json"), b"{\"a\":1}").unwrap();
        let recorder = Arc::new(Recorder::default());
        let downstream: Arc<dyn Downstream> = recorder.clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(Box::new(source).run(downstream, stop.clone()));
        // Several polls (100 ms each) while paused, a file arriving meanwhile.
        tokio::time::sleep(Duration::from_millis(250)).await;
        std::fs::write(dir.path().join("b.json"), b"{\"b\":2}").unwrap();
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(recorder.take().is_empty(), "a file was read while paused");
        assert!(dir.path().join("a.json").exists() && dir.path().join("b.json").exists());
        pause.set(false);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(dir.path().join("done/a.json").exists() && dir.path().join("done/b.json").exists())
        {
            assert!(std::time::Instant::now() < deadline, "not read after resume");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut got: Vec<Vec<u8>> = recorder.take().into_iter().map(|(_, body)| body).collect();
        got.sort();
        assert_eq!(got, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    /// A line of exactly the cap passes; one byte more is too long, and the reader holds no
    /// more than the cap of it while it counts the rest.
    #[tokio::test]
    async fn the_line_reader_never_holds_more_than_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.ndjson");
        let cap = 1000usize;
        let mut text = "a".repeat(cap);
        text.push('\n');
        text.push_str(&"b".repeat(5 * NDJSON_CHUNK));
        text.push_str("\n{}\n");
        std::fs::write(&path, &text).unwrap();
        let mut reader = LineReader::open(&path, 0, 0, cap as u64).await.unwrap();
        match reader.next().await.unwrap() {
            Next::Line { number, end, body } => {
                assert_eq!((number, end, body.len()), (1, cap as u64 + 1, cap))
            }
            other => panic!("{other:?}"),
        }
        match reader.next().await.unwrap() {
            Next::TooLong {
                number,
                start,
                length,
            } => assert_eq!(
                (number, start, length),
                (2, cap as u64 + 1, 5 * NDJSON_CHUNK as u64)
            ),
            other => panic!("{other:?}"),
        }
        assert!(
            reader.buf.capacity() <= 2 * (cap + NDJSON_CHUNK),
            "{}",
            reader.buf.capacity()
        );
        assert!(matches!(reader.next().await.unwrap(), Next::End));
    }

    /// Over a cap, nothing of the file is sent and the rejection says which cap, the size
    /// and the line.
    #[tokio::test]
    async fn files_over_a_cap_are_rejected_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.max_file_bytes = 10;
        c.max_line_bytes = 8;
        let source = source(c);
        let recorder = Arc::new(Recorder::default());
        let downstream: Arc<dyn Downstream> = recorder.clone();
        let stop = CancellationToken::new();
        // Writes `text` as the file `name` and processes it.
        let process = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let (source, downstream, stop) = (&source, &downstream, &stop);
            async move { source.process(&path, downstream, stop).await.unwrap() }
        };
        let rejected = |d: Disposition| match d {
            Disposition::Rejected(r) => r,
            other => panic!("{other:?}"),
        };

        let r = rejected(process("big.json", "{\"a\":\"0123456789\"}").await);
        assert_eq!(
            (r.reason, r.limit, r.size),
            ("max_file_bytes", 10, Some(18))
        );

        let r = rejected(process("long.ndjson", "{\"a\":1}\n\n{\"a\":1234}\n{}\n").await);
        assert_eq!(
            (r.reason, r.limit, r.size, r.line, r.offset),
            ("max_line_bytes", 8, Some(10), Some(3), Some(9))
        );
        // The last line, without a line break, too.
        let r = rejected(process("tail.ndjson", "{}\n\n0123456789").await);
        assert_eq!((r.size, r.line, r.offset), (Some(10), Some(3), Some(4)));
        // A file of exactly the caps passes.
        let d = process("fits.ndjson", "{\"a\":12}\n{\"b\":34}").await;
        assert!(matches!(d, Disposition::Done), "{d:?}");
        assert_eq!(recorder.take().len(), 2, "only the file that fits was sent");
    }

    /// A failure that comes with a stop (the pipeline stopped past its drain and failed what
    /// it held) is the stop, not a failed attempt: the file is not counted towards
    /// `max_attempts`, let alone given up to `failed/` because gridflow was restarted.
    #[tokio::test]
    async fn a_failure_caused_by_a_stop_is_not_a_failed_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.max_attempts = 1;
        let source = source(c);
        let stop = CancellationToken::new();
        let recorder = Arc::new(Recorder {
            fail: vec![b"{\"n\":2}"],
            stops: Some(stop.clone()),
            ..Recorder::default()
        });
        let downstream: Arc<dyn Downstream> = recorder.clone();
        let path = dir.path().join("a.ndjson");
        std::fs::write(&path, "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n").unwrap();

        let d = source.process(&path, &downstream, &stop).await.unwrap();
        assert!(matches!(d, Disposition::Stopped), "{d:?}");
        let identity = Identity::of(&std::fs::metadata(&path).unwrap());
        let checkpoint = Checkpoint::load(&path, identity).await;
        assert_eq!(
            (checkpoint.line, checkpoint.offset, checkpoint.attempts),
            (1, 8, 0),
            "settled up to line 1, no attempt counted"
        );
    }

    /// The checkpoint follows the settled prefix: a failed line stops it there, the next
    /// attempt starts from it (not from the first line), the attempts are counted, and the
    /// limit gives the file up.
    #[tokio::test]
    async fn a_failed_line_is_retried_from_the_checkpoint_up_to_the_attempt_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.max_attempts = 2;
        let source = source(c);
        let recorder = Arc::new(Recorder {
            dead: vec![b"{\"n\":2}"],
            fail: vec![b"{\"n\":4}"],
            ..Recorder::default()
        });
        let downstream: Arc<dyn Downstream> = recorder.clone();
        let stop = CancellationToken::new();
        let path = dir.path().join("a.ndjson");
        std::fs::write(&path, "{\"n\":1}\n{\"n\":2}\n\n{\"n\":4}\n{\"n\":5}\n").unwrap();

        let d = source.process(&path, &downstream, &stop).await.unwrap();
        assert!(matches!(d, Disposition::Retry { attempts: 1, .. }), "{d:?}");
        let lines: Vec<_> = recorder
            .take()
            .into_iter()
            .map(|(l, _)| l.unwrap())
            .collect();
        assert_eq!(lines, [1, 2, 4], "nothing pushed after the failure");
        let identity = Identity::of(&std::fs::metadata(&path).unwrap());
        let checkpoint = Checkpoint::load(&path, identity).await;
        assert_eq!(
            (
                checkpoint.line,
                checkpoint.offset,
                checkpoint.attempts,
                checkpoint.dead_lettered
            ),
            (3, 17, 1, true),
            "settled up to the blank line 3"
        );

        let d = source.process(&path, &downstream, &stop).await.unwrap();
        let Disposition::Rejected(r) = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            (r.reason, r.attempts, r.settled_lines),
            ("max_attempts", 2, 3)
        );
        let lines: Vec<_> = recorder
            .take()
            .into_iter()
            .map(|(l, _)| l.unwrap())
            .collect();
        assert_eq!(lines, [4], "the second attempt starts at the checkpoint");

        // Another file under the same name does not inherit the checkpoint.
        std::fs::write(
            &path,
            "{\"n\":1}\n{\"n\":9}\n{\"n\":3}\n{\"n\":9}\n{\"n\":5}\n{\"n\":6}\n",
        )
        .unwrap();
        let d = source.process(&path, &downstream, &stop).await.unwrap();
        assert!(matches!(d, Disposition::Done), "{d:?}");
        assert_eq!(recorder.take().len(), 6);
    }

    /// Settled out of order, the prefix advances only over what is settled; a failure stops
    /// it for good in this attempt.
    #[test]
    fn the_settled_prefix_follows_the_order_of_the_lines() {
        let p = Progress::default();
        let delivered = Outcome::Delivered { messages: 1 };
        for _ in 0..5 {
            p.push();
        }
        let at = |p: &Progress| {
            let s = p.lock();
            (s.offset, s.line)
        };
        p.settle(1, 20, 2, Some(&delivered));
        assert_eq!(at(&p), (0, 0));
        p.settle(0, 10, 1, Some(&delivered));
        assert_eq!(at(&p), (20, 2));
        p.settle(4, 50, 5, Some(&delivered));
        p.settle(3, 40, 4, Some(&Outcome::Failed(refused())));
        p.settle(2, 30, 3, None);
        let s = p.lock();
        assert_eq!((s.offset, s.line, s.settled), (30, 3, 5));
        assert!(s.ahead.is_empty() && s.failed());
    }
}
