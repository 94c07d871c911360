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
//! The command is split in three: `plan` reads the dead letters and says what to send where,
//! `journal` keeps the bookkeeping of what was sent (exactly-once to a topic), `send` sends
//! to the topic or the HTTP endpoint. Each Kafka record is built by the one builder,
//! [`crate::kafka::record`].
//!
//! Every wait is bounded by [`Options::timeout`] (`--timeout`, default
//! [`DEFAULT_TIMEOUT`]): broker metadata, committed offsets, topic listing and creation,
//! journal reads, produce acknowledgements, records of the dead-letter topic, HTTP calls.
//! Past it the replay stops with an error that says what it waited for.

mod journal;
mod plan;
mod send;

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, SystemTime};

use crate::jmes::Expr;
use crate::kafka::KafkaSettings;

pub use journal::JOURNAL_TOPIC;
pub use plan::view;

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

/// The replay: reads the dead letters batch by batch, sends each batch (to a topic: between
/// two journal records), and commits the progress after each.
fn run(
    settings: &KafkaSettings,
    options: &Options,
    out: &mut dyn Write,
    summary: &mut Summary,
) -> Result<(), String> {
    let timeout = options.timeout;
    let mut reader = plan::Reader::open(settings, options)?;
    if reader.done() {
        return Ok(());
    }
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
            journal::ensure_journal_topic(&runtime, settings, timeout)?;
            journal::arrived(settings, options, timeout)?
        }
        None => HashSet::new(),
    };
    let client = send::http_client(timeout)?;
    let mut journal = producer
        .as_ref()
        .map(|p| journal::Bookkeeper::new(&runtime, p, options));
    let mut pace = send::Pace::new(options);
    while !reader.done() {
        let batch = reader.batch(&already, out, summary)?;
        if options.dry_run {
            continue;
        }
        match (&producer, &mut journal) {
            (Some(producer), Some(journal)) => {
                if !batch.records.is_empty() {
                    // The journal first: if the replay stops while the batch is out, the next
                    // run knows where to look for what arrived.
                    let topics = batch.records.iter().map(|o| o.target.clone()).collect();
                    journal.open_batch(&reader.consumer, topics)?;
                }
                for o in &batch.records {
                    pace.wait();
                    send::to_topic(&runtime, producer, o, timeout, summary, out)?;
                }
            }
            _ => {
                for o in &batch.records {
                    pace.wait();
                    send::post(&runtime, &client, o, summary, out)?;
                    let next = [(o.partition, o.offset + 1)].into();
                    journal::commit(&reader.consumer, &options.from, &next)?;
                }
            }
        }
        journal::commit(&reader.consumer, &options.from, &batch.next)?;
        if let (Some(journal), false) = (&journal, batch.records.is_empty()) {
            journal.write(&journal::Journal::done())?;
        }
    }
    Ok(())
}
