//! The replay's bookkeeping: the journal that makes a replay to a Kafka topic exactly-once,
//! and the commit of the replay's progress on the dead-letter topic.
//!
//! Before a batch is produced, a journal record (key: the replay's group; value: the end
//! offset of every partition of the batch's target topics) goes to [`JOURNAL_TOPIC`]; once
//! the batch is produced and its offsets committed, a `done` record follows. A replay whose
//! group's last journal record is not `done` reads the target partitions from those marks and
//! skips the records that already arrived there ([`arrived`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::send::produce;
use super::{waited, Options};
use crate::kafka::KafkaSettings;

/// The topic of replay journals (one partition; created when missing).
pub const JOURNAL_TOPIC: &str = "gridflow.replay.journal.v1";

/// A journal record: before a batch, the end offset of every partition of its target topics;
/// after it, `done`.
#[derive(serde::Serialize, serde::Deserialize, Default)]
pub(super) struct Journal {
    #[serde(default)]
    marks: BTreeMap<String, i64>,
    #[serde(default)]
    done: bool,
}

impl Journal {
    /// The record that closes a batch.
    pub(super) fn done() -> Journal {
        Journal {
            done: true,
            ..Journal::default()
        }
    }
}

/// The journal of one replay group: writes its records, and remembers the partitions of the
/// target topics it has marked.
pub(super) struct Bookkeeper<'r> {
    runtime: &'r tokio::runtime::Runtime,
    producer: &'r crate::kafka::Producer,
    group: &'r str,
    timeout: Duration,
    target_partitions: HashMap<String, Vec<i32>>,
}

impl<'r> Bookkeeper<'r> {
    /// The journal of `options.group`, written with `producer`.
    pub(super) fn new(
        runtime: &'r tokio::runtime::Runtime,
        producer: &'r crate::kafka::Producer,
        options: &'r Options,
    ) -> Self {
        Bookkeeper {
            runtime,
            producer,
            group: &options.group,
            timeout: options.timeout,
            target_partitions: HashMap::new(),
        }
    }

    /// Writes the journal record that opens a batch to `topics`: the end offset of each of
    /// their partitions, read with `consumer`.
    pub(super) fn open_batch(
        &mut self,
        consumer: &BaseConsumer,
        topics: HashSet<String>,
    ) -> Result<(), String> {
        let timeout = self.timeout;
        let mut marks = BTreeMap::new();
        for topic in topics {
            let parts = match self.target_partitions.get(&topic) {
                Some(p) => p.clone(),
                None => {
                    let p = topic_partitions(consumer, &topic, timeout)?;
                    self.target_partitions.insert(topic.clone(), p.clone());
                    p
                }
            };
            for p in parts {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, p, timeout)
                    .map_err(|e| format!("cannot read the offsets of `{topic}`: {e}"))?;
                marks.insert(format!("{topic}/{p}"), high);
            }
        }
        self.write(&Journal { marks, done: false })
    }

    /// Writes the group's journal record `journal` and waits until the broker has it.
    pub(super) fn write(&self, journal: &Journal) -> Result<(), String> {
        let value = serde_json::to_vec(journal).map_err(|e| e.to_string())?;
        let record = crate::kafka::record(
            JOURNAL_TOPIC,
            Some(self.group.as_bytes()),
            &value,
            [],
            crate::kafka::Carry::Replay,
            &[],
        );
        produce(self.runtime, self.producer, record, self.timeout)
            .map_err(|e| format!("cannot write the replay journal to `{JOURNAL_TOPIC}`: {e}"))
    }
}

/// The journal topic, created (one partition) when missing.
pub(super) fn ensure_journal_topic(
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
    let mut last = Journal::done();
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

/// Commits the replay's progress on `topic`: the next offset to read of each partition.
pub(super) fn commit(
    consumer: &BaseConsumer,
    topic: &str,
    offsets: &HashMap<i32, i64>,
) -> Result<(), String> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in offsets {
        let mut e = tpl.add_partition(topic, *partition);
        e.set_offset(Offset::Offset(*offset))
            .map_err(|e| e.to_string())?;
        e.set_metadata("");
    }
    let result = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync);
    drop(tpl);
    result.map_err(|e| format!("cannot commit the replay's progress: {e}"))
}

/// The partitions of `topic`, which must exist.
pub(super) fn topic_partitions(
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
pub(super) fn arrived(
    settings: &KafkaSettings,
    options: &Options,
    timeout: Duration,
) -> Result<HashSet<String>, String> {
    let journal = last_journal(settings, &options.group, timeout)?;
    if journal.done || journal.marks.is_empty() {
        return Ok(HashSet::new());
    }
    let reader: BaseConsumer = settings
        .consumer_config(&format!("{}.journal", options.group))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("cannot create the consumer: {e}"))?;
    let ends = assign_marks(&reader, &journal.marks, timeout)?;
    if ends.is_empty() {
        return Ok(HashSet::new());
    }
    read_replayed_from(&reader, ends, timeout)
}

/// Assigns `reader` the target partitions that received records after their `marks`; their
/// end offsets.
fn assign_marks(
    reader: &BaseConsumer,
    marks: &BTreeMap<String, i64>,
    timeout: Duration,
) -> Result<HashMap<(String, i32), i64>, String> {
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for (at, mark) in marks {
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
    if !ends.is_empty() {
        reader.assign(&assignment).map_err(|e| e.to_string())?;
    }
    Ok(ends)
}

/// The `gridflow.replayed_from` of the records `reader` reads up to `ends`.
fn read_replayed_from(
    reader: &BaseConsumer,
    mut ends: HashMap<(String, i32), i64>,
    timeout: Duration,
) -> Result<HashSet<String>, String> {
    let mut found = HashSet::new();
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
