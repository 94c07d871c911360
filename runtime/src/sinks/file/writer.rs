//! The writer of one file: group commit.
//!
//! Every file gridflow appends to on a message's path (the `file` sink, dead-letter files, the
//! dead-letter fallback file) has one [`FileWriter`] in the process, shared by every sink that
//! names the same path. Sinks hand it whole lines ([`FileWriter::append`]) in message order;
//! its thread takes every line waiting (up to [`Limits`]), writes them in one go, syncs the
//! file once (`fdatasync`), then acknowledges all of them. So a message is acknowledged only
//! when its line is on disk, and one sync covers every message that arrived during the
//! previous one: the busier the file, the bigger the batches.
//!
//! A failed write or sync fails every line of the batch (each is retried by the engine) and
//! cuts the file back to where the batch started, so that neither a retry nor a crash leaves a
//! torn line among acknowledged ones; the file is opened again for the next batch. When the
//! file is opened, a last line without its `\n` (the part of a batch written when the process
//! was killed mid-write: never acknowledged) is cut off too, so that the next line starts on a
//! line of its own.
//!
//! The thread starts with the first line and ends when the last sink holding the writer is
//! dropped (its pipeline stopped or replaced) and the lines queued before are written.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::oneshot;

/// How much one batch (one write and one sync) holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Lines a batch; a batch is never empty.
    pub lines: usize,
    /// Bytes a batch, unless its one line is longer.
    pub bytes: usize,
}

impl Limits {
    /// 4,096 lines or 4 MiB, whichever comes first: at tens of thousands of messages a
    /// second a sync of a few milliseconds takes a few hundred lines, far below; the bound
    /// keeps one write, and what a failed one cuts off and retries, modest.
    pub const DEFAULT: Limits = Limits {
        lines: 4096,
        bytes: 4 << 20,
    };
}

/// The outcome of one line: `Err` carries what failed (the write, the sync, the open).
pub type Written = Result<(), Arc<str>>;

/// A line waiting for the writer, and who is told when it is on disk.
struct Pending {
    line: Vec<u8>,
    done: oneshot::Sender<Written>,
}

/// The writer of one file (see the module's documentation).
pub struct FileWriter {
    path: PathBuf,
    /// The queue of the writer's thread; `None` until the first line.
    queue: Mutex<Option<Sender<Pending>>>,
    /// Held by the thread while it writes: a writer replaced while its thread still drains
    /// its queue never interleaves with its successor (a cut after a failed batch would cut
    /// the other's lines).
    exclusive: Arc<Mutex<()>>,
    limits: Limits,
    /// Batches written (each one write and one sync), for tests.
    batches: Arc<AtomicU64>,
}

/// Every writer of the process by path, and the lock of each path (alive while a thread
/// writes to it).
struct Entry {
    writer: Weak<FileWriter>,
    exclusive: Weak<Mutex<()>>,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Entry>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Entry>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The key of `path` in the registry: the path with the symbolic links of what exists
/// resolved (the file, else its directory), else made absolute.
fn key(path: &Path) -> PathBuf {
    if let Ok(path) = path.canonicalize() {
        return path;
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let (Some(parent), Some(name)) = (parent, path.file_name()) {
        if let Ok(parent) = parent.canonicalize() {
            return parent.join(name);
        }
    }
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

impl FileWriter {
    /// The writer of `path`: the one of the process when a sink already writes there, else a
    /// new one (whose thread starts with its first line).
    pub fn for_path(path: &Path) -> Arc<FileWriter> {
        let key = key(path);
        let mut all = registry().lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, e| e.writer.strong_count() > 0 || e.exclusive.strong_count() > 0);
        if let Some(writer) = all.get(&key).and_then(|e| e.writer.upgrade()) {
            return writer;
        }
        let exclusive = all
            .get(&key)
            .and_then(|e| e.exclusive.upgrade())
            .unwrap_or_default();
        let writer = Arc::new(FileWriter {
            path: path.to_path_buf(),
            queue: Mutex::new(None),
            exclusive: Arc::clone(&exclusive),
            limits: Limits::DEFAULT,
            batches: Arc::default(),
        });
        all.insert(
            key,
            Entry {
                writer: Arc::downgrade(&writer),
                exclusive: Arc::downgrade(&exclusive),
            },
        );
        writer
    }

    /// Queues `line` (whole, `\n` included) behind the lines queued before it; the returned
    /// receiver hears when it is on disk, or why not. A receiver that is dropped does not take
    /// the line back.
    pub fn append(&self, line: Vec<u8>) -> oneshot::Receiver<Written> {
        let (done, heard) = oneshot::channel();
        let mut pending = Pending { line, done };
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = queue.as_ref() {
            match sender.send(pending) {
                Ok(()) => return heard,
                // The thread ended (it panicked): a new one takes over.
                Err(mpsc::SendError(back)) => pending = back,
            }
        }
        let (sender, receiver) = mpsc::channel();
        let _ = sender.send(pending);
        let thread = Thread {
            path: self.path.clone(),
            exclusive: Arc::clone(&self.exclusive),
            limits: self.limits,
            batches: Arc::clone(&self.batches),
            file: None,
            buffer: Vec::new(),
        };
        let spawned = std::thread::Builder::new()
            .name("gridflow-file-writer".into())
            .spawn(move || thread.run(receiver));
        match spawned {
            Ok(_) => *queue = Some(sender),
            // The line's sender was dropped with the closure: its receiver hears an error.
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "The file writer's thread could not start.")
            }
        }
        heard
    }
}

/// The lines of one batch.
struct Batch {
    /// Their bytes, one after the other.
    bytes: Vec<u8>,
    /// Who is told, one a line.
    waiting: Vec<oneshot::Sender<Written>>,
}

/// Fills `batch` with `first`, then with the lines waiting in `queue` while `limits` allow:
/// the line that would pass the byte limit stays in `carry` for the next batch. Returns false
/// when the queue is closed (every sink dropped) and empty.
fn fill(
    batch: &mut Batch,
    first: Pending,
    queue: &Receiver<Pending>,
    carry: &mut Option<Pending>,
    limits: Limits,
) -> bool {
    batch.bytes.extend_from_slice(&first.line);
    batch.waiting.push(first.done);
    while batch.waiting.len() < limits.lines {
        let next = match queue.try_recv() {
            Ok(next) => next,
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Disconnected) => return false,
        };
        if batch.bytes.len() + next.line.len() > limits.bytes {
            *carry = Some(next);
            return true;
        }
        batch.bytes.extend_from_slice(&next.line);
        batch.waiting.push(next.done);
    }
    true
}

/// The thread of one [`FileWriter`].
struct Thread {
    path: PathBuf,
    exclusive: Arc<Mutex<()>>,
    limits: Limits,
    batches: Arc<AtomicU64>,
    /// Open between batches; closed after a failure, opened again for the next batch.
    file: Option<File>,
    /// The bytes of the current batch (kept between batches, to reuse the allocation).
    buffer: Vec<u8>,
}

impl Thread {
    fn run(mut self, queue: Receiver<Pending>) {
        let mut carry = None;
        // False once every sink is dropped and the queue is empty: the thread ends.
        let mut open = true;
        while open {
            let first = match carry.take() {
                Some(first) => first,
                None => match queue.recv() {
                    Ok(first) => first,
                    Err(_) => break,
                },
            };
            let mut batch = Batch {
                bytes: std::mem::take(&mut self.buffer),
                waiting: Vec::new(),
            };
            open = fill(&mut batch, first, &queue, &mut carry, self.limits);
            let exclusive = Arc::clone(&self.exclusive);
            let result = {
                let _exclusive = exclusive.lock().unwrap_or_else(|e| e.into_inner());
                self.write(&batch.bytes)
            };
            self.batches.fetch_add(1, Ordering::Relaxed);
            let result: Written = result.map_err(|e| Arc::from(e.to_string()));
            for done in batch.waiting {
                let _ = done.send(result.clone());
            }
            batch.bytes.clear();
            // A batch far larger than usual does not stay allocated.
            if batch.bytes.capacity() <= self.limits.bytes.min(1 << 20) {
                self.buffer = batch.bytes;
            }
        }
    }

    /// Appends `bytes` (whole lines) and syncs them; on failure cuts the file back to where
    /// they started and closes it.
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            self.file = Some(open(&self.path)?);
        }
        let file = self.file.as_mut().expect("opened above");
        let metadata = match file.metadata() {
            Ok(metadata) => metadata,
            Err(e) => {
                self.file = None;
                return Err(e);
            }
        };
        let regular = metadata.is_file();
        // Where the batch starts: on a full disk `write_all` may write part of it before
        // `ENOSPC`; the file is cut back there so that no retry leaves a torn line.
        let start = metadata.len();
        let result = file
            .write_all(bytes)
            .and_then(|()| file.flush())
            // Acknowledged means on disk: the source commits or answers after this.
            .and_then(|()| file.sync_data());
        if let Err(e) = &result {
            if regular {
                if let Err(cut) = file.set_len(start) {
                    tracing::error!(path = %self.path.display(), error = %e, truncate_error = %cut, "Write failed and the partial lines could not be cut off.");
                }
            }
            self.file = None;
        }
        result
    }
}

/// Opens `path` to append (creating it and its directory), a torn last line cut off.
fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    let file = match options.clone().read(true).open(path) {
        Ok(file) => file,
        // Writable but not readable: appended to without the check of its last line.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return options.open(path),
        Err(e) => return Err(e),
    };
    if file.metadata()?.is_file() {
        cut_torn_tail(&file, path)?;
    }
    Ok(file)
}

/// Cuts off what follows the last `\n` of `file`: a line whose write was cut short (the
/// process killed in the middle of a batch, which was then not acknowledged).
fn cut_torn_tail(file: &File, path: &Path) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 << 10];
    while end > 0 {
        let from = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - from) as usize];
        file.read_exact_at(part, from)?;
        if let Some(at) = part.iter().rposition(|&b| b == b'\n') {
            end = from + at as u64 + 1;
            break;
        }
        end = from;
    }
    if end < len {
        tracing::warn!(path = %path.display(), bytes = len - end, "The file ended in a line cut short (a write interrupted by a crash, never acknowledged); cut off before appending.");
        file.set_len(end)?;
        file.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(line: &str) -> (Pending, oneshot::Receiver<Written>) {
        let (done, heard) = oneshot::channel();
        let line = line.as_bytes().to_vec();
        (Pending { line, done }, heard)
    }

    /// Queues `lines`, then fills batches until the queue is empty: the lines of each batch.
    fn batches(lines: &[&str], limits: Limits, close: bool) -> Vec<Vec<String>> {
        let (tx, rx) = mpsc::channel();
        let mut heard = Vec::new();
        for line in lines {
            let (p, h) = pending(line);
            tx.send(p).unwrap();
            heard.push(h);
        }
        if close {
            drop(tx);
        }
        let mut out = Vec::new();
        let mut carry = None;
        loop {
            let first = match carry.take() {
                Some(first) => first,
                None => match rx.try_recv() {
                    Ok(first) => first,
                    Err(_) => break,
                },
            };
            let mut batch = Batch {
                bytes: Vec::new(),
                waiting: Vec::new(),
            };
            fill(&mut batch, first, &rx, &mut carry, limits);
            let text = String::from_utf8(batch.bytes).unwrap();
            let lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
            assert_eq!(lines.len(), batch.waiting.len(), "one waiting sender a line");
            out.push(lines);
        }
        out
    }

    #[test]
    fn a_batch_takes_every_line_waiting_up_to_its_line_limit() {
        let lines: Vec<String> = (0..10).map(|i| format!("{i}\n")).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let limits = Limits {
            lines: 4,
            bytes: 1 << 20,
        };
        let got = batches(&lines, limits, false);
        let sizes: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 4, 2]);
        assert_eq!(got.concat(), lines, "every line once, in order");
    }

    #[test]
    fn a_batch_stops_before_the_line_that_would_pass_its_byte_limit() {
        // 5-byte lines, 12 bytes a batch: two lines each (a third would make 15).
        let lines = ["aaaa\n", "bbbb\n", "cccc\n", "dddd\n", "eeee\n"];
        let limits = Limits {
            lines: 100,
            bytes: 12,
        };
        let got = batches(&lines, limits, true);
        let sizes: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert_eq!(got.concat(), lines, "the carried line comes first in the next batch");
        // Exactly at the limit: taken.
        let got = batches(
            &["aaaa\n", "bbbb\n", "cc\n"],
            Limits {
                lines: 100,
                bytes: 10,
            },
            true,
        );
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
    }

    #[test]
    fn a_line_longer_than_the_byte_limit_is_a_batch_of_its_own() {
        let long = format!("{}\n", "x".repeat(100));
        let lines = ["a\n", long.as_str(), "b\n", "c\n"];
        let limits = Limits {
            lines: 100,
            bytes: 10,
        };
        let got = batches(&lines, limits, true);
        let sizes: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1, 2]);
        assert_eq!(got.concat(), lines);
    }

    #[test]
    fn the_default_limits_are_the_documented_ones() {
        assert_eq!(Limits::DEFAULT.lines, 4096);
        assert_eq!(Limits::DEFAULT.bytes, 4 * 1024 * 1024);
    }

    #[tokio::test]
    async fn lines_are_on_disk_when_acknowledged_and_a_torn_tail_is_cut_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.ndjson");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // A crash left part of a line.
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":").unwrap();
        let writer = FileWriter::for_path(&path);
        let heard: Vec<_> = (0..100)
            .map(|i| writer.append(format!("{{\"i\":{i}}}\n").into_bytes()))
            .collect();
        for h in heard {
            h.await.unwrap().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut expected = String::from("{\"a\":1}\n");
        for i in 0..100 {
            expected.push_str(&format!("{{\"i\":{i}}}\n"));
        }
        assert_eq!(text, expected);
    }

    #[test]
    fn a_file_of_one_torn_line_is_cut_to_nothing_and_whole_lines_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, "x".repeat(200_000)).unwrap();
        drop(open(&path).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let mut whole = "y".repeat(100_000);
        whole.push('\n');
        std::fs::write(&path, format!("{whole}{}", "z".repeat(70_000))).unwrap();
        drop(open(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);
        std::fs::write(&path, &whole).unwrap();
        drop(open(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);
    }

    #[test]
    fn sinks_naming_the_same_file_share_its_writer() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileWriter::for_path(&dir.path().join("out.ndjson"));
        let b = FileWriter::for_path(&dir.path().join("./out.ndjson"));
        assert!(Arc::ptr_eq(&a, &b));
        let other = FileWriter::for_path(&dir.path().join("other.ndjson"));
        assert!(!Arc::ptr_eq(&a, &other));
        drop((a, b));
        let again = FileWriter::for_path(&dir.path().join("out.ndjson"));
        assert_eq!(Arc::strong_count(&again), 1, "a new writer once the last was dropped");
    }

    #[tokio::test]
    async fn the_lines_waiting_during_a_write_are_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let writer = FileWriter::for_path(&path);
        // A slow disk: the thread waits for the path while 500 lines come.
        let slow = writer.exclusive.lock().unwrap();
        let heard: Vec<_> = (0..500)
            .map(|i| writer.append(format!("{i}\n").into_bytes()))
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(slow);
        for h in heard {
            h.await.unwrap().unwrap();
        }
        let batches = writer.batches.load(Ordering::Relaxed);
        assert!(batches <= 2, "500 lines in {batches} batches");
        let text = std::fs::read_to_string(&path).unwrap();
        let expected: String = (0..500).map(|i| format!("{i}\n")).collect();
        assert_eq!(text, expected, "in order, once each");
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_line_of_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.ndjson");
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let writer = FileWriter::for_path(&path);
        let slow = writer.exclusive.lock().unwrap();
        let heard: Vec<_> = (0..50)
            .map(|i| writer.append(format!("{i}\n").into_bytes()))
            .collect();
        drop(slow);
        for h in heard {
            let error = h.await.unwrap().unwrap_err();
            assert!(error.contains("No space left"), "{error}");
        }
    }

    #[tokio::test]
    async fn the_thread_writes_what_was_queued_and_ends_when_the_writer_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let writer = FileWriter::for_path(&path);
        let heard: Vec<_> = (0..1000)
            .map(|i| writer.append(format!("{i}\n").into_bytes()))
            .collect();
        let exclusive = Arc::downgrade(&writer.exclusive);
        drop(writer);
        for h in heard {
            h.await.unwrap().unwrap();
        }
        // The thread holds the path's lock until it ends.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while exclusive.strong_count() > 0 {
            assert!(std::time::Instant::now() < deadline, "the thread did not end");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1000);
    }
}
