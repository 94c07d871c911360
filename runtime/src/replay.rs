//! `gridflow replay`: re-injects dead letters, with their original bytes.
//!
//! The replay reads a dead-letter topic with its own consumer group, from where the previous
//! replay of that group stopped up to the end the topic had when it started. Each record that
//! matches the filters (`--where`, `--since`, `--until`) goes to its target without its error
//! headers, with `gridflow.replayed_from` (`<topic>/<partition>/<offset>`) and
//! `gridflow.replay.count` (one more than it had) added.
//!
//! To a Kafka topic nothing is sent twice, even when a replay is interrupted: records go in
//! batches; before a batch is produced, a journal record (key: the replay's group; value: the
//! end offset of every partition of the batch's target topics) goes to the topic
//! [`JOURNAL_TOPIC`], and once the batch is produced and its offsets committed, a `done`
//! record follows. A replay whose group's last journal record is not `done` reads the target
//! partitions from those marks and skips the records that already arrived there (their
//! `gridflow.replayed_from`). This needs neither transactions nor offset-commit metadata,
//! which tansu 0.6 lacks. To an HTTP pipeline each record is POSTed, then its offset
//! committed: at-least-once. Redirects are not followed (a `3xx` stops the replay at that
//! record, like a `5xx`: a followed `302` would turn the POST into a bodiless GET), and a
//! request that times out stops it too: its record is not committed, the next run sends it.
//!
//! Every wait is bounded by [`Options::timeout`] (`--timeout`, default
//! [`DEFAULT_TIMEOUT`]): broker metadata, committed offsets, topic listing and creation,
//! journal reads, produce acknowledgements, records of the dead-letter topic, HTTP calls.
//! Past it the replay stops with an error that says what it waited for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::{json, Map, Value};

use crate::jmes::Expr;
use crate::kafka::KafkaSettings;
use crate::message::ContentType;

/// Where replayed records go.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A topic.
    Topic(String),
    /// The topic each record was consumed from (`gridflow.source.topic`); records without one
    /// are skipped.
    SourceTopic,
    /// An HTTP pipeline's endpoint (POST).
    Http(String),
}

/// What to replay.
#[derive(Debug)]
pub struct Options {
    /// The dead-letter topic.
    pub from: String,
    /// Where to.
    pub target: Target,
    /// JMESPath condition on the record view (see [`view`]).
    pub filter: Option<Expr>,
    /// Only records written at or after this time.
    pub since: Option<SystemTime>,
    /// Only records written before this time.
    pub until: Option<SystemTime>,
    /// At most this many records sent per second.
    pub rate: Option<f64>,
    /// Print what would be sent; send and commit nothing.
    pub dry_run: bool,
    /// The replay's consumer group.
    pub group: String,
    /// The longest the replay waits for anything (see the module documentation).
    pub timeout: Duration,
}

/// `--timeout` when not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The bounds of `--rate`, records per second.
pub const RATE_BOUNDS: (f64, f64) = (0.01, 1_000_000.0);

/// Parses `--rate`: a finite number of records per second within [`RATE_BOUNDS`].
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let (low, high) = RATE_BOUNDS;
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && (low..=high).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a rate: give records per second, a number between {low} and {high}"
        )),
    }
}

/// The error of a wait that ended without an answer.
fn waited(what: &str, timeout: Duration) -> String {
    format!(
        "no answer within {} s while waiting for {what}; is the broker reachable and does it accept the request? (--timeout sets the bound)",
        timeout.as_secs_f64()
    )
}

/// A record on its way to its target.
struct Outgoing {
    at: String,
    target: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    correlation: String,
    code: String,
    partition: i32,
    offset: i64,
}

/// The topic of replay journals (one partition; created when missing).
pub const JOURNAL_TOPIC: &str = "gridflow.replay.journal.v1";

/// A journal record: before a batch, the end offset of every partition of its target topics;
/// after it, `done`.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Journal {
    #[serde(default)]
    marks: BTreeMap<String, i64>,
    #[serde(default)]
    done: bool,
}

/// Produces `record` and waits until the broker has it, at most `timeout`.
fn send(
    runtime: &tokio::runtime::Runtime,
    producer: &crate::kafka::Producer,
    record: FutureRecord<'_, [u8], [u8]>,
    timeout: Duration,
) -> Result<(), String> {
    runtime.block_on(async {
        let produced = tokio::time::timeout(timeout, async {
            match crate::kafka::enqueue(producer, record).await {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer was closed".to_string()),
                },
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        produced
            .unwrap_or_else(|_| Err(waited("the broker's acknowledgement of a record", timeout)))
    })
}

/// Writes the group's journal record and waits until the broker has it.
fn write_journal(
    runtime: &tokio::runtime::Runtime,
    producer: &crate::kafka::Producer,
    group: &str,
    journal: &Journal,
    timeout: Duration,
) -> Result<(), String> {
    let value = serde_json::to_vec(journal).map_err(|e| e.to_string())?;
    let record = FutureRecord::<[u8], [u8]>::to(JOURNAL_TOPIC)
        .key(group.as_bytes())
        .payload(&value);
    send(runtime, producer, record, timeout)
        .map_err(|e| format!("cannot write the replay journal to `{JOURNAL_TOPIC}`: {e}"))
}

/// The journal topic, created (one partition) when missing.
fn ensure_journal_topic(
    runtime: &tokio::runtime::Runtime,
    settings: &KafkaSettings,
    timeout: Duration,
) -> Result<(), String> {
    let missing = runtime
        // The timer is made inside the runtime: it needs its time driver.
        .block_on(async {
            tokio::time::timeout(
                timeout,
                settings.missing_topics(&[JOURNAL_TOPIC.to_string()]),
            )
            .await
        })
        .map_err(|_| waited("the list of topics", timeout))?
        .map_err(|e| format!("cannot list topics: {e}"))?;
    if missing.is_empty() {
        return Ok(());
    }
    let hint = "create it (1 partition) and run the replay again";
    runtime
        .block_on(async {
            tokio::time::timeout(
                timeout,
                settings.create_topics(&[JOURNAL_TOPIC.to_string()], 1),
            )
            .await
        })
        .map_err(|_| {
            format!(
                "{} ({hint})",
                waited(
                    &format!("the creation of the replay journal topic `{JOURNAL_TOPIC}`"),
                    timeout
                )
            )
        })?
        .map_err(|e| {
            format!("cannot create the replay journal topic `{JOURNAL_TOPIC}` ({e}); {hint}")
        })
}

/// The group's last journal record (`done` when it has none).
fn last_journal(
    settings: &KafkaSettings,
    group: &str,
    timeout: Duration,
) -> Result<Journal, String> {
    let reader: BaseConsumer = settings
        .consumer_config(&format!("{group}.journal"))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("cannot create the consumer: {e}"))?;
    let (low, high) = reader
        .fetch_watermarks(JOURNAL_TOPIC, 0, timeout)
        .map_err(|e| {
            format!(
                "cannot read the offsets of `{JOURNAL_TOPIC}` (waited up to {} s): {e}",
                timeout.as_secs_f64()
            )
        })?;
    let mut last = Journal {
        done: true,
        ..Journal::default()
    };
    if high <= low {
        return Ok(last);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(JOURNAL_TOPIC, 0, Offset::Offset(low))
        .map_err(|e| e.to_string())?;
    reader.assign(&tpl).map_err(|e| e.to_string())?;
    drop(tpl);
    let deadline = Instant::now() + timeout;
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "{}; run the replay again",
                waited(
                    &format!("the records of `{JOURNAL_TOPIC}` up to its end"),
                    timeout
                )
            ));
        }
        let Some(result) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = result.map_err(|e| format!("reading `{JOURNAL_TOPIC}` failed: {e}"))?;
        if m.key() == Some(group.as_bytes()) {
            if let Ok(j) = serde_json::from_slice::<Journal>(m.payload().unwrap_or_default()) {
                last = j;
            }
        }
        if m.offset() + 1 >= high {
            return Ok(last);
        }
    }
}

fn commit(
    consumer: &BaseConsumer,
    topic: &str,
    offsets: &HashMap<i32, i64>,
    metadata: &str,
) -> Result<(), String> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in offsets {
        let mut e = tpl.add_partition(topic, *partition);
        e.set_offset(Offset::Offset(*offset))
            .map_err(|e| e.to_string())?;
        e.set_metadata(metadata);
    }
    let result = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync);
    drop(tpl);
    result.map_err(|e| format!("cannot commit the replay's progress: {e}"))
}

fn topic_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("cannot read the metadata of `{topic}`: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic `{topic}` does not exist"));
    }
    Ok(partitions)
}

/// The records of an interrupted batch that reached their target: the `gridflow.replayed_from`
/// of what the target partitions received after the journal's marks.
fn arrived(
    settings: &KafkaSettings,
    options: &Options,
    timeout: Duration,
) -> Result<HashSet<String>, String> {
    let journal = last_journal(settings, &options.group, timeout)?;
    let marks = if journal.done {
        BTreeMap::new()
    } else {
        journal.marks
    };
    let mut found = HashSet::new();
    if marks.is_empty() {
        return Ok(found);
    }
    let reader: BaseConsumer = settings
        .consumer_config(&format!("{}.journal", options.group))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("cannot create the consumer: {e}"))?;
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for (at, mark) in &marks {
        let Some((topic, partition)) = at.rsplit_once('/') else {
            continue;
        };
        let Ok(partition) = partition.parse::<i32>() else {
            continue;
        };
        let (_, high) = reader
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| format!("cannot read the offsets of `{topic}`: {e}"))?;
        if high > *mark {
            ends.insert((topic.to_string(), partition), high);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(*mark))
                .map_err(|e| e.to_string())?;
        }
    }
    if ends.is_empty() {
        return Ok(found);
    }
    reader.assign(&assignment).map_err(|e| e.to_string())?;
    drop(assignment);
    let deadline = Instant::now() + timeout;
    while !ends.is_empty() && Instant::now() < deadline {
        let Some(result) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = result.map_err(|e| format!("reading the target failed: {e}"))?;
        if let Some(h) = m.headers() {
            for header in h.iter() {
                if header.key == "gridflow.replayed_from" {
                    found.insert(
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
        }
        let at = (m.topic().to_string(), m.partition());
        if ends.get(&at).is_some_and(|high| m.offset() + 1 >= *high) {
            ends.remove(&at);
        }
    }
    if !ends.is_empty() {
        return Err(format!(
            "{}; run the replay again",
            waited(
                "the records of the interrupted batch's targets up to their end",
                timeout
            )
        ));
    }
    Ok(found)
}

/// POSTs one record to an HTTP pipeline.
fn post(
    runtime: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    o: &Outgoing,
    summary: &mut Summary,
    out: &mut dyn Write,
) -> Result<(), String> {
    let content_type = match ContentType::sniff(&o.payload) {
        ContentType::Xml => "application/xml",
        ContentType::Json => "application/json",
        ContentType::Other => "application/octet-stream",
    };
    let mut request = client
        .post(&o.target)
        .header("content-type", content_type)
        .body(o.payload.clone());
    if o.correlation != "-" {
        request = request.header("x-correlation-id", &o.correlation);
    }
    // `send` is called inside the runtime: with a timeout it starts a timer there.
    let response = runtime
        .block_on(async { request.send().await })
        .map_err(|e| {
            let what = if e.is_timeout() {
                "timed out (--timeout)".to_string()
            } else {
                format!("failed: {e}")
            };
            format!(
                "POST {} {what}; the replay stops here and resumes from this record",
                o.target
            )
        })?;
    let status = response.status();
    if status.is_redirection() {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
            .unwrap_or_else(|| "none".into());
        return Err(format!(
            "POST {} answered {status} (Location: {location}); a redirect is not a delivery, the replay stops here and resumes from this record",
            o.target
        ));
    }
    if status.is_success() {
        summary.sent += 1;
        let _ = writeln!(
            out,
            "sent {} to {}: correlation_id={} status={status}",
            o.at, o.target, o.correlation
        );
        Ok(())
    } else if status.is_client_error() && status.as_u16() != 429 {
        summary.refused += 1;
        let _ = writeln!(
            out,
            "refused {} by {}: correlation_id={} status={status} (dead-lettered again)",
            o.at, o.target, o.correlation
        );
        Ok(())
    } else {
        Err(format!(
            "POST {} answered {status}; the replay stops here and resumes from this record",
            o.target
        ))
    }
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Records read from the dead-letter topic.
    pub read: u64,
    /// Records that passed the filters.
    pub matched: u64,
    /// Records sent (or, with `--dry-run`, that would be).
    pub sent: u64,
    /// Records left out by `--where`.
    pub skipped_filter: u64,
    /// Records left out by `--since` / `--until`.
    pub skipped_time: u64,
    /// Records with no target (no `gridflow.source.topic` and no `--to`).
    pub skipped_no_target: u64,
    /// Records an HTTP pipeline refused again (`4xx`): it dead-lettered them again.
    pub refused: u64,
    /// Records an interrupted replay had sent already (found in their target): not sent again.
    pub already_sent: u64,
}

/// Parses `--since` / `--until`: RFC 3339 (`2026-11-25T03:00:00Z`) or an age (`90s`, `30m`,
/// `2h`, `7d`) before now.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    let text = text.trim();
    if let Ok(at) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(SystemTime::from(at));
    }
    let age = crate::config::parse_age(text).map_err(|_| {
        format!("`{text}` is neither an RFC 3339 time nor an age such as 30m, 2h or 7d")
    })?;
    Ok(SystemTime::now() - age)
}

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

fn replay_count(headers: &BTreeMap<String, String>) -> u64 {
    headers
        .get("gridflow.replay.count")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Headers describing the failure, which a replayed record does not carry.
fn dropped(name: &str) -> bool {
    name.starts_with("gridflow.error.")
        || name.starts_with("gridflow.source.")
        || matches!(
            name,
            "gridflow.failed_at"
                | "gridflow.pipeline"
                | "gridflow.pipeline.version"
                | "gridflow.replay.count"
                | "gridflow.replayed_from"
        )
}

/// The headers of the replayed record.
fn replay_headers(
    m: &BorrowedMessage<'_>,
    headers: &BTreeMap<String, String>,
) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            if !dropped(header.key) {
                out.push((
                    header.key.to_string(),
                    header.value.unwrap_or_default().to_vec(),
                ));
            }
        }
    }
    out.push((
        "gridflow.replayed_from".into(),
        format!("{}/{}/{}", m.topic(), m.partition(), m.offset()).into_bytes(),
    ));
    out.push((
        "gridflow.replay.count".into(),
        (replay_count(headers) + 1).to_string().into_bytes(),
    ));
    out
}

enum Decision {
    Send(String),
    Skip(fn(&mut Summary)),
}

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

/// Runs the replay, printing one line per record sent (`--dry-run`: per record matched) to
/// `out`. On failure, the error and what was done before it.
pub fn replay(
    settings: &KafkaSettings,
    options: &Options,
    out: &mut dyn Write,
) -> Result<Summary, (String, Summary)> {
    let mut summary = Summary::default();
    match run(settings, options, out, &mut summary) {
        Ok(()) => Ok(summary),
        Err(e) => Err((e, summary)),
    }
}

fn run(
    settings: &KafkaSettings,
    options: &Options,
    out: &mut dyn Write,
    summary: &mut Summary,
) -> Result<(), String> {
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
    // Where to start (the group's committed offsets) and where to stop (the end now).
    let mut wanted = TopicPartitionList::new();
    for p in &partitions {
        wanted.add_partition(&options.from, *p);
    }
    let committed = consumer.committed_offsets(wanted, timeout).map_err(|e| {
        format!(
            "cannot read the committed offsets of group `{}` (waited up to {} s for its coordinator): {e}",
            options.group,
            timeout.as_secs_f64()
        )
    })?;
    let mut start = TopicPartitionList::new();
    let mut end: HashMap<i32, i64> = HashMap::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&options.from, *p, timeout)
            .map_err(|e| format!("cannot read the offsets of `{}`: {e}", options.from))?;
        let from = match committed
            .find_partition(&options.from, *p)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        if from < high {
            end.insert(*p, high);
            start
                .add_partition_offset(&options.from, *p, Offset::Offset(from))
                .map_err(|e| e.to_string())?;
        }
    }
    drop(committed);
    if end.is_empty() {
        return Ok(());
    }
    consumer
        .assign(&start)
        .map_err(|e| format!("cannot assign: {e}"))?;
    drop(start);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let to_kafka =
        matches!(options.target, Target::Topic(_) | Target::SourceTopic) && !options.dry_run;
    let producer: Option<crate::kafka::Producer> = if to_kafka {
        Some(
            settings
                .producer()
                .map_err(|e| format!("cannot create the producer: {e}"))?,
        )
    } else {
        None
    };
    // Records of an interrupted batch that already reached their topic.
    let already = match &producer {
        Some(_) => {
            ensure_journal_topic(&runtime, settings, timeout)?;
            arrived(settings, options, timeout)?
        }
        None => HashSet::new(),
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let mut last_record: Instant;
    // `--rate` is checked by `parse_rate`; a rate given another way is kept in its bounds
    // too (`Duration::from_secs_f64` panics on what is not finite or too large).
    let pace = options
        .rate
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r.clamp(RATE_BOUNDS.0, RATE_BOUNDS.1)));
    let mut next_send = Instant::now();
    let mut target_partitions: HashMap<String, Vec<i32>> = HashMap::new();

    while !end.is_empty() {
        // Read a batch: first offset and next offset per partition, records to send.
        let mut first: HashMap<i32, i64> = HashMap::new();
        let mut next: HashMap<i32, i64> = HashMap::new();
        let mut batch: Vec<Outgoing> = Vec::new();
        let batch_end = Instant::now() + Duration::from_secs(1);
        // The wait for records starts now, not before the previous batch was sent.
        last_record = Instant::now();
        while batch.len() < 200 && Instant::now() < batch_end && !end.is_empty() {
            let Some(result) = consumer.poll(Duration::from_millis(200)) else {
                if last_record.elapsed() > timeout {
                    return Err(waited(
                        &format!(
                            "records of `{}` (partitions {:?} not read to their end)",
                            options.from,
                            end.keys().collect::<Vec<_>>()
                        ),
                        timeout,
                    ));
                }
                continue;
            };
            last_record = Instant::now();
            let m = result.map_err(|e| format!("consuming `{}` failed: {e}", options.from))?;
            let (partition, offset) = (m.partition(), m.offset());
            first.entry(partition).or_insert(offset);
            next.insert(partition, offset + 1);
            if end.get(&partition).is_some_and(|high| offset + 1 >= *high) {
                end.remove(&partition);
            }
            summary.read += 1;
            let headers = header_map(&m);
            let target = match decide(options, &m, &headers)? {
                Decision::Skip(count) => {
                    count(summary);
                    continue;
                }
                Decision::Send(target) => target,
            };
            summary.matched += 1;
            let at = format!("{}/{partition}/{offset}", options.from);
            let code = headers
                .get("gridflow.error.code")
                .cloned()
                .unwrap_or_else(|| "-".into());
            let correlation = headers
                .get("gridflow.correlation_id")
                .cloned()
                .unwrap_or_else(|| "-".into());
            if options.dry_run {
                let reason = headers
                    .get("gridflow.error.message")
                    .map_or("", String::as_str);
                let _ = writeln!(out, "would send {at} to {target}: correlation_id={correlation} code={code} {reason}");
                summary.sent += 1;
                continue;
            }
            if already.contains(&at) {
                summary.already_sent += 1;
                let _ = writeln!(
                    out,
                    "already sent {at} to {target} (by the interrupted replay)"
                );
                continue;
            }
            batch.push(Outgoing {
                at,
                target,
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: replay_headers(&m, &headers),
                correlation,
                code,
                partition,
                offset,
            });
        }
        if options.dry_run {
            continue;
        }
        match &producer {
            Some(producer) => {
                if !batch.is_empty() {
                    // The journal first: if the replay stops while the batch is out, the next
                    // run knows where to look for what arrived.
                    let mut marks = BTreeMap::new();
                    for topic in batch
                        .iter()
                        .map(|o| o.target.clone())
                        .collect::<HashSet<_>>()
                    {
                        let parts = match target_partitions.get(&topic) {
                            Some(p) => p.clone(),
                            None => {
                                let p = topic_partitions(&consumer, &topic, timeout)?;
                                target_partitions.insert(topic.clone(), p.clone());
                                p
                            }
                        };
                        for p in parts {
                            let (_, high) =
                                consumer.fetch_watermarks(&topic, p, timeout).map_err(|e| {
                                    format!("cannot read the offsets of `{topic}`: {e}")
                                })?;
                            marks.insert(format!("{topic}/{p}"), high);
                        }
                    }
                    write_journal(
                        &runtime,
                        producer,
                        &options.group,
                        &Journal { marks, done: false },
                        timeout,
                    )?;
                }
                for o in &batch {
                    if let Some(pace) = pace {
                        let now = Instant::now();
                        if next_send > now {
                            std::thread::sleep(next_send - now);
                        }
                        next_send = next_send.max(now) + pace;
                    }
                    let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
                    for (k, v) in &o.headers {
                        headers = headers.insert(Header {
                            key: k,
                            value: Some(v),
                        });
                    }
                    let mut record = FutureRecord::<[u8], [u8]>::to(&o.target)
                        .payload(&o.payload)
                        .headers(headers);
                    if let Some(key) = &o.key {
                        record = record.key(key);
                    }
                    send(&runtime, producer, record, timeout).map_err(|e| {
                        format!(
                            "sending {} to `{}` failed: {e}; run the replay again to resume",
                            o.at, o.target
                        )
                    })?;
                    summary.sent += 1;
                    let _ = writeln!(
                        out,
                        "sent {} to {}: correlation_id={} code={}",
                        o.at, o.target, o.correlation, o.code
                    );
                }
            }
            None => {
                for o in &batch {
                    if let Some(pace) = pace {
                        let now = Instant::now();
                        if next_send > now {
                            std::thread::sleep(next_send - now);
                        }
                        next_send = next_send.max(now) + pace;
                    }
                    post(&runtime, &client, o, summary, out)?;
                    commit(
                        &consumer,
                        &options.from,
                        &HashMap::from([(o.partition, o.offset + 1)]),
                        "",
                    )?;
                }
            }
        }
        commit(&consumer, &options.from, &next, "")?;
        if let (Some(producer), false) = (&producer, batch.is_empty()) {
            write_journal(
                &runtime,
                producer,
                &options.group,
                &Journal {
                    done: true,
                    ..Journal::default()
                },
                timeout,
            )?;
        }
    }
    Ok(())
}
