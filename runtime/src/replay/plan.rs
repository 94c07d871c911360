//! What a replay sends: the dead letters of the dead-letter topic from where the replay's
//! group stopped up to the end the topic had when the replay started, read in batches; for
//! each, whether it passes the filters (`--where`, `--since`, `--until`), its target, and the
//! record to send ([`Outgoing`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::{json, Map, Value};

use super::{waited, Options, Summary, Target};
use crate::kafka::KafkaSettings;

/// Records read before a batch is sent, at most.
const BATCH_RECORDS: usize = 200;

/// How long a batch is read, at most.
const BATCH_TIME: Duration = Duration::from_secs(1);

/// A dead letter on its way to its target.
pub(super) struct Outgoing {
    /// Where it was read: `<topic>/<partition>/<offset>` (its `gridflow.replayed_from`).
    pub at: String,
    /// The topic or URL it goes to.
    pub target: String,
    /// The dead letter's key.
    pub key: Option<Vec<u8>>,
    /// The input's original bytes.
    pub payload: Vec<u8>,
    /// The dead letter's headers, as read (the record keeps those [`Carry::Replay`] keeps).
    ///
    /// [`Carry::Replay`]: crate::kafka::Carry::Replay
    pub headers: Vec<(String, Vec<u8>)>,
    /// Its `gridflow.replay.count`: one more than the dead letter had.
    pub count: u64,
    /// Its correlation id (`-` when it has none).
    pub correlation: String,
    /// Its error code (`-` when it has none).
    pub code: String,
    /// The dead-letter topic's partition it was read from.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

/// One batch read from the dead-letter topic.
pub(super) struct Batch {
    /// The records to send.
    pub records: Vec<Outgoing>,
    /// The next offset to read of each partition the batch read: committed once it is sent.
    pub next: HashMap<i32, i64>,
}

/// The replay's reader of the dead-letter topic.
pub(super) struct Reader<'o> {
    /// Its consumer (the replay's group).
    pub consumer: BaseConsumer,
    options: &'o Options,
    /// The end offset of every partition not read to its end yet.
    end: HashMap<i32, i64>,
}

impl<'o> Reader<'o> {
    /// A reader of `options.from` from the group's committed offsets (the start when it has
    /// none) to the end the topic has now.
    pub(super) fn open(settings: &KafkaSettings, options: &'o Options) -> Result<Self, String> {
        let mut consumer_config = settings.consumer_config(&options.group);
        consumer_config
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let consumer: BaseConsumer = consumer_config
            .create()
            .map_err(|e| format!("cannot create the consumer: {e}"))?;
        let timeout = options.timeout;
        let metadata = consumer
            .fetch_metadata(Some(&options.from), timeout)
            .map_err(|e| {
                format!(
                    "cannot read the metadata of `{}` (waited up to {} s for the broker): {e}",
                    options.from,
                    timeout.as_secs_f64()
                )
            })?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == options.from && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        drop(metadata);
        if partitions.is_empty() {
            return Err(format!("topic `{}` does not exist", options.from));
        }
        let mut reader = Reader {
            consumer,
            options,
            end: HashMap::new(),
        };
        reader.assign(&partitions)?;
        Ok(reader)
    }

    /// Assigns the consumer `partitions` from where the group stopped; notes their ends.
    fn assign(&mut self, partitions: &[i32]) -> Result<(), String> {
        let (from, timeout) = (&self.options.from, self.options.timeout);
        let mut wanted = TopicPartitionList::new();
        for p in partitions {
            wanted.add_partition(from, *p);
        }
        let committed = self.consumer.committed_offsets(wanted, timeout).map_err(|e| {
            format!(
                "cannot read the committed offsets of group `{}` (waited up to {} s for its coordinator): {e}",
                self.options.group,
                timeout.as_secs_f64()
            )
        })?;
        let mut start = TopicPartitionList::new();
        for p in partitions {
            let (low, high) = self
                .consumer
                .fetch_watermarks(from, *p, timeout)
                .map_err(|e| format!("cannot read the offsets of `{from}`: {e}"))?;
            let first = match committed.find_partition(from, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.max(low),
                _ => low,
            };
            if first < high {
                self.end.insert(*p, high);
                start
                    .add_partition_offset(from, *p, Offset::Offset(first))
                    .map_err(|e| e.to_string())?;
            }
        }
        drop(committed);
        if self.end.is_empty() {
            return Ok(());
        }
        self.consumer
            .assign(&start)
            .map_err(|e| format!("cannot assign: {e}"))
    }

    /// True when every partition was read to its end.
    pub(super) fn done(&self) -> bool {
        self.end.is_empty()
    }

    /// Reads the next batch: up to [`BATCH_RECORDS`] records within [`BATCH_TIME`]. Records
    /// the filters leave out are counted in `summary`; with `--dry-run` each match is printed
    /// to `out` instead of planned, and so is each record of `already` (sent by an interrupted
    /// replay).
    pub(super) fn batch(
        &mut self,
        already: &HashSet<String>,
        out: &mut dyn Write,
        summary: &mut Summary,
    ) -> Result<Batch, String> {
        let mut batch = Batch {
            records: Vec::new(),
            next: HashMap::new(),
        };
        let batch_end = Instant::now() + BATCH_TIME;
        // The wait for records starts now, not before the previous batch was sent.
        let mut last_record = Instant::now();
        while batch.records.len() < BATCH_RECORDS && Instant::now() < batch_end && !self.done() {
            let Some(result) = self.consumer.poll(Duration::from_millis(200)) else {
                if last_record.elapsed() > self.options.timeout {
                    return Err(self.stalled());
                }
                continue;
            };
            last_record = Instant::now();
            let m = result.map_err(|e| format!("consuming `{}` failed: {e}", self.options.from))?;
            let (partition, offset) = (m.partition(), m.offset());
            batch.next.insert(partition, offset + 1);
            if self
                .end
                .get(&partition)
                .is_some_and(|high| offset + 1 >= *high)
            {
                self.end.remove(&partition);
            }
            summary.read += 1;
            if let Some(o) = plan(self.options, &m, already, out, summary)? {
                batch.records.push(o);
            }
        }
        Ok(batch)
    }

    /// The error of a topic that stopped giving records before its end.
    fn stalled(&self) -> String {
        waited(
            &format!(
                "records of `{}` (partitions {:?} not read to their end)",
                self.options.from,
                self.end.keys().collect::<Vec<_>>()
            ),
            self.options.timeout,
        )
    }
}

/// What to do with dead letter `m`: `None` when it is left out (counted in `summary`), printed
/// (`--dry-run`) or already sent (printed); else the record to send.
fn plan(
    options: &Options,
    m: &BorrowedMessage<'_>,
    already: &HashSet<String>,
    out: &mut dyn Write,
    summary: &mut Summary,
) -> Result<Option<Outgoing>, String> {
    let headers = header_map(m);
    let target = match decide(options, m, &headers)? {
        Decision::Skip(count) => {
            count(summary);
            return Ok(None);
        }
        Decision::Send(target) => target,
    };
    summary.matched += 1;
    let at = format!("{}/{}/{}", options.from, m.partition(), m.offset());
    let get = |name: &str| headers.get(name).cloned().unwrap_or_else(|| "-".into());
    let (code, correlation) = (get("gridflow.error.code"), get("gridflow.correlation_id"));
    if options.dry_run {
        let reason = headers
            .get("gridflow.error.message")
            .map_or("", String::as_str);
        let _ = writeln!(
            out,
            "would send {at} to {target}: correlation_id={correlation} code={code} {reason}"
        );
        summary.sent += 1;
        return Ok(None);
    }
    if already.contains(&at) {
        summary.already_sent += 1;
        let _ = writeln!(
            out,
            "already sent {at} to {target} (by the interrupted replay)"
        );
        return Ok(None);
    }
    Ok(Some(Outgoing {
        at,
        target,
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().unwrap_or_default().to_vec(),
        headers: raw_headers(m),
        count: replay_count(&headers) + 1,
        correlation,
        code,
        partition: m.partition(),
        offset: m.offset(),
    }))
}

enum Decision {
    Send(String),
    Skip(fn(&mut Summary)),
}

/// Whether dead letter `m` passes the filters, and where it goes.
fn decide(
    options: &Options,
    m: &BorrowedMessage<'_>,
    headers: &BTreeMap<String, String>,
) -> Result<Decision, String> {
    let written = m
        .timestamp()
        .to_millis()
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
    if let Some(at) = written {
        if options.since.is_some_and(|s| at < s) || options.until.is_some_and(|u| at >= u) {
            return Ok(Decision::Skip(|s| s.skipped_time += 1));
        }
    }
    if let Some(filter) = &options.filter {
        let keep = filter.is_truthy(&view(m, headers)).map_err(|e| {
            format!(
                "--where failed on {}/{}/{}: {e}",
                m.topic(),
                m.partition(),
                m.offset()
            )
        })?;
        if !keep {
            return Ok(Decision::Skip(|s| s.skipped_filter += 1));
        }
    }
    let target = match &options.target {
        Target::Topic(t) | Target::Http(t) => t.clone(),
        Target::SourceTopic => match headers.get("gridflow.source.topic") {
            Some(t) => t.clone(),
            None => return Ok(Decision::Skip(|s| s.skipped_no_target += 1)),
        },
    };
    Ok(Decision::Send(target))
}

/// The headers of `m` as text (the last value of a name).
fn header_map(m: &BorrowedMessage<'_>) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
            headers.insert(header.key.to_string(), value);
        }
    }
    headers
}

/// The headers of `m` as they are, in their order.
fn raw_headers(m: &BorrowedMessage<'_>) -> Vec<(String, Vec<u8>)> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

/// What `--where` sees of a dead letter:
/// `{topic, partition, offset, timestamp, key, headers, body, pipeline, correlation_id,
///   error: {code, step, message, attempts}, replay_count}`; `body` is the JSON document when
/// the bytes are JSON, else the text.
pub fn view(m: &BorrowedMessage<'_>, headers: &BTreeMap<String, String>) -> Value {
    let payload = m.payload().unwrap_or_default();
    let body = serde_json::from_slice(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()));
    let get = |k: &str| headers.get(k).cloned().map_or(Value::Null, Value::String);
    let mut shown = Map::new();
    for (k, v) in headers {
        shown.insert(k.clone(), Value::String(v.clone()));
    }
    json!({
        "topic": m.topic(),
        "partition": m.partition(),
        "offset": m.offset(),
        "timestamp": m.timestamp().to_millis(),
        "key": m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        "headers": shown,
        "body": body,
        "pipeline": get("gridflow.pipeline"),
        "correlation_id": get("gridflow.correlation_id"),
        "error": {
            "code": get("gridflow.error.code"),
            "step": get("gridflow.error.step"),
            "message": get("gridflow.error.message"),
            "attempts": headers.get("gridflow.error.attempts").and_then(|a| a.parse::<u64>().ok()),
        },
        "replay_count": replay_count(headers),
    })
}

/// The dead letter's `gridflow.replay.count` (0 when it has none).
fn replay_count(headers: &BTreeMap<String, String>) -> u64 {
    headers
        .get("gridflow.replay.count")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
