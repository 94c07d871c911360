//! `kafka` source: a consumer group reading `topics`.
//!
//! At-least-once: an offset is stored for commit only when its record's acknowledgement
//! resolved (delivered, filtered or dead-lettered) *and* every earlier offset of the same
//! partition did.
//!
//! Concurrency: records go to `concurrency` lanes, each handing its records downstream one at
//! a time; a partition (or, with `order_by = "key"`, a key within a partition) always goes to
//! the same lane, so order is kept per partition (per key) while partitions (keys) are
//! processed at once. Backpressure: when a lane is full (a slow sink, an upstream whose
//! breaker is open) the record's partition is paused and its records are held in order; the
//! consumer keeps polling (so it stays in its group) and resumes the partition once the lane
//! has room.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use metrics::gauge;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message as _;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Downstream, Source, SourceContext};
use crate::ack::{Ack, Outcome};
use crate::error::BuildError;
use crate::kafka::KafkaSettings;
use crate::message::{new_correlation_id, ContentType, Message, Meta, Origin, Payload};

/// `kind = "kafka"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Consumer group id; replicas of gridflow with the same group share the partitions.
    pub group: String,
    /// Records processed at once, at most (lanes; default 16).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// What keeps its order: `partition` (default) or `key` (records of one key, within a
    /// partition; records without a key keep partition order).
    #[serde(default)]
    pub order_by: OrderBy,
}

fn default_concurrency() -> usize {
    16
}

/// The unit whose records are processed in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderBy {
    /// Records of one partition, in offset order.
    #[default]
    Partition,
    /// Records of one key within a partition, in offset order.
    Key,
}

/// Records of a paused partition, in offset order: lane, offset, message.
type Held = std::collections::VecDeque<(usize, i64, Message)>;

/// Records a lane holds.
const LANE_CAPACITY: usize = 64;

/// How long a full lane is waited for before its partition is paused.
const PAUSE_AFTER: Duration = Duration::from_millis(250);

/// Finished records settled at once before their offsets are stored (one `store_offset` per
/// partition per batch instead of one per record).
const STORE_BATCH: usize = 1024;

impl KafkaSourceConfig {
    /// Checks topics and group.
    pub fn check(&self) -> Result<(), BuildError> {
        if self.topics.is_empty() {
            return Err(BuildError::at("topics", "at least one topic is needed"));
        }
        if self.concurrency == 0 {
            return Err(BuildError::at(
                "concurrency",
                "concurrency must be at least 1",
            ));
        }
        if self.group.trim().is_empty() {
            return Err(BuildError::at(
                "group",
                "the consumer group must not be empty",
            ));
        }
        Ok(())
    }

    /// Builds the source.
    pub fn build(&self, ctx: &SourceContext) -> KafkaSource {
        KafkaSource {
            config: self.clone(),
            settings: ctx.kafka.clone(),
            drain_timeout: ctx.drain_timeout,
            paused: gauge!("gridflow_kafka_paused_partitions", "pipeline" => ctx.pipeline.to_string()),
            pipeline: Arc::clone(&ctx.pipeline),
        }
    }
}

/// The running `kafka` source.
pub struct KafkaSource {
    config: KafkaSourceConfig,
    settings: KafkaSettings,
    drain_timeout: Duration,
    paused: metrics::Gauge,
    pipeline: Arc<str>,
}

/// What the consumer's rebalance callbacks tell the source loop.
enum Rebalanced {
    Revoked(Vec<(String, i32)>),
    Assigned(Vec<(String, i32)>),
}

/// The consumer's context: forwards rebalances to the source loop and turns librdkafka's
/// statistics into the consumer lag gauges.
struct Rebalances {
    rebalances: mpsc::UnboundedSender<Rebalanced>,
    pipeline: Arc<str>,
    /// Partitions whose lag was reported: one that is no longer assigned is set to 0, so a
    /// revoked partition's last lag does not stay on the dashboard; all of them when the
    /// consumer closes (the pipeline stopped or was replaced).
    reported: std::sync::Mutex<std::collections::HashSet<(String, i32)>>,
    /// The consumer starts from the earliest offset where it has none: before the first
    /// commit, the whole partition is its lag.
    from_earliest: bool,
}

impl Drop for Rebalances {
    fn drop(&mut self) {
        let reported = self.reported.get_mut().unwrap_or_else(|e| e.into_inner());
        for (topic, partition) in reported.drain() {
            crate::metrics::consumer_lag(&self.pipeline, &topic, partition, 0);
        }
    }
}

impl rdkafka::ClientContext for Rebalances {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        let mut now = std::collections::HashSet::new();
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition.
                if partition < 0 || !p.desired || p.hi_offset < 0 {
                    continue;
                }
                // Behind the committed offset; before the first commit, the stored one (the
                // records delivered or dead-lettered); before any, the whole partition when
                // the source starts from the earliest offset, else unknown (not reported).
                let known = [p.consumer_lag, p.consumer_lag_stored]
                    .into_iter()
                    .find(|&lag| lag >= 0);
                let Some(lag) =
                    known.or_else(|| self.from_earliest.then(|| p.hi_offset - p.lo_offset.max(0)))
                else {
                    continue;
                };
                crate::metrics::consumer_lag(&self.pipeline, topic, partition, lag);
                now.insert((topic.clone(), partition));
            }
        }
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        for (topic, partition) in reported.difference(&now) {
            crate::metrics::consumer_lag(&self.pipeline, topic, *partition, 0);
        }
        *reported = now;
    }
}

impl rdkafka::consumer::ConsumerContext for Rebalances {
    fn pre_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(list) = rebalance {
            let _ = self.rebalances.send(Rebalanced::Revoked(partitions(list)));
        }
    }

    fn post_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Assign(list) = rebalance {
            let _ = self.rebalances.send(Rebalanced::Assigned(partitions(list)));
        }
    }
}

fn partitions(list: &rdkafka::TopicPartitionList) -> Vec<(String, i32)> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// The lane of a record: by partition, or by partition and key.
fn lane_of(
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    order_by: OrderBy,
    lanes: usize,
) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    partition.hash(&mut h);
    if order_by == OrderBy::Key {
        key.hash(&mut h);
    }
    (h.finish() % lanes as u64) as usize
}

/// A lane: hands its records downstream one at a time, until the source stops. Records still
/// queued then are dropped, so their acknowledgements fail and they are not committed.
fn spawn_lane(
    downstream: Arc<dyn Downstream>,
    shutdown: CancellationToken,
) -> (mpsc::Sender<Message>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Message>(LANE_CAPACITY);
    let task = tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => break,
                },
            };
            // Waiting for room (backpressure) must not hide a stop: a record abandoned here
            // is not committed and is read again by the successor. A panic (a defect) fails
            // this record (not committed), not the lane.
            let push = std::panic::AssertUnwindSafe(downstream.push(message)).catch_unwind();
            tokio::select! {
                pushed = push => if pushed.is_err() {
                    tracing::error!("A record's processing panicked; its offset is not committed.");
                },
                _ = shutdown.cancelled() => break,
            }
        }
    });
    (tx, task)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Progress {
    Pending,
    Done,
    Failed,
}

/// Offsets in flight of one partition, in order.
#[derive(Debug, Default)]
struct PartitionTracker {
    offsets: BTreeMap<i64, Progress>,
    /// The highest committable offset found since the last offset store.
    to_store: Option<i64>,
}

impl PartitionTracker {
    fn start(&mut self, offset: i64) {
        self.offsets.insert(offset, Progress::Pending);
    }

    /// Records the end of `offset`; returns the highest offset that may now be committed
    /// (every offset up to it is done).
    fn finish(&mut self, offset: i64, ok: bool) -> Option<i64> {
        if let Some(p) = self.offsets.get_mut(&offset) {
            *p = if ok { Progress::Done } else { Progress::Failed };
        }
        let mut committable = None;
        while let Some(entry) = self.offsets.first_entry() {
            if *entry.get() != Progress::Done {
                break;
            }
            committable = Some(*entry.key());
            entry.remove();
        }
        committable
    }

    /// Offsets whose record is still being processed (failed ones are not waited for).
    fn pending(&self) -> usize {
        self.offsets
            .values()
            .filter(|p| **p == Progress::Pending)
            .count()
    }
}

struct Finished {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    ok: bool,
}

/// The [`Meta`] of a record: its bytes, key and headers, the correlation id from its
/// `gridflow.correlation_id` header (else `fallback_id()`), the media type sniffed from the
/// bytes. The consumer and `gridflow test` both read records through it.
pub fn record_meta(
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
    fallback_id: impl FnOnce() -> String,
) -> Meta {
    let correlation_id = headers
        .iter()
        .rev()
        .find(|(k, _)| k == "gridflow.correlation_id")
        .and_then(|(_, v)| String::from_utf8(v.clone()).ok());
    Meta {
        original: body.clone(),
        correlation_id: correlation_id.unwrap_or_else(fallback_id),
        content_type: ContentType::sniff(&body),
        origin: Origin::Kafka {
            topic: topic.to_string(),
            partition,
            offset,
        },
        key: key.map(Bytes::copy_from_slice),
        headers,
        reply: None,
        request_headers: Vec::new(),
        received_at: Instant::now(),
    }
}

fn to_message(
    m: &BorrowedMessage<'_>,
    topic: &Arc<str>,
    finished: &mpsc::UnboundedSender<Finished>,
) -> Message {
    let body = Bytes::copy_from_slice(m.payload().unwrap_or_default());
    let mut headers = Vec::new();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            let value = header.value.unwrap_or_default().to_vec();
            headers.push((header.key.to_string(), value));
        }
    }
    let (partition, offset) = (m.partition(), m.offset());
    let tx = finished.clone();
    let topic_for_ack = Arc::clone(topic);
    let ack = Ack::new(move |outcome| {
        let ok = !matches!(outcome, Outcome::Failed(_));
        let _ = tx.send(Finished {
            topic: topic_for_ack,
            partition,
            offset,
            ok,
        });
    });
    Message {
        payload: Payload::Bytes(body.clone()),
        meta: Arc::new(record_meta(
            topic,
            partition,
            offset,
            m.key(),
            headers,
            body,
            new_correlation_id,
        )),
        ack,
    }
}

impl KafkaSource {
    async fn consume(
        self,
        downstream: Arc<dyn Downstream>,
        shutdown: CancellationToken,
    ) -> Result<(), String> {
        let group = &self.config.group;
        let (rebalance_tx, mut rebalances) = mpsc::unbounded_channel();
        let consumer: StreamConsumer<Rebalances> = self
            .settings
            .with_statistics(self.settings.consumer_config(group))
            .create_with_context(Rebalances {
                rebalances: rebalance_tx,
                pipeline: Arc::clone(&self.pipeline),
                reported: Default::default(),
                from_earliest: self.settings.starts_from_earliest(),
            })
            .map_err(|e| format!("cannot create the Kafka consumer: {e}"))?;
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| format!("cannot subscribe to {topics:?}: {e}"))?;
        tracing::info!(group = %group, topics = ?topics, "Kafka source subscribed.");

        let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<Finished>();
        let mut trackers: HashMap<(Arc<str>, i32), PartitionTracker> = HashMap::new();
        let mut topic_names: HashMap<String, Arc<str>> = HashMap::new();
        // Settles `first` and whatever else has finished meanwhile (up to a batch), then
        // stores the highest committable offset of each partition once.
        let store =
            |consumer: &StreamConsumer<Rebalances>,
             first: Finished,
             more: &mut mpsc::UnboundedReceiver<Finished>,
             trackers: &mut HashMap<(Arc<str>, i32), PartitionTracker>| {
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(done) = next.take() {
                    if let Some(tracker) = trackers.get_mut(&(done.topic, done.partition)) {
                        if let Some(offset) = tracker.finish(done.offset, done.ok) {
                            tracker.to_store = Some(offset);
                        }
                    }
                    taken += 1;
                    if taken < STORE_BATCH {
                        next = more.try_recv().ok();
                    }
                }
                for ((topic, partition), tracker) in trackers.iter_mut() {
                    if let Some(offset) = tracker.to_store.take() {
                        if let Err(e) = consumer.store_offset(topic, *partition, offset) {
                            tracing::debug!(topic = %topic, partition, error = %e, "Offset not stored (partition revoked?).");
                        }
                    }
                }
            };

        let lane_stop = shutdown.child_token();
        let lane_count = self.config.concurrency.max(1);
        let (lanes, lane_tasks): (Vec<_>, Vec<_>) = (0..lane_count)
            .map(|_| spawn_lane(Arc::clone(&downstream), lane_stop.clone()))
            .unzip();
        // Records of paused partitions, in offset order, with their lane.
        let mut held: HashMap<(Arc<str>, i32), Held> = HashMap::new();
        let order_by = self.config.order_by;
        // Rotated SASL credentials (secret files re-read) for this consumer's next connection.
        let mut credentials = self.settings.secrets.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pause = |consumer: &StreamConsumer<Rebalances>,
                     topic: &str,
                     partition: i32,
                     on: bool| {
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition(topic, partition);
            let result = if on {
                consumer.pause(&tpl)
            } else {
                consumer.resume(&tpl)
            };
            if let Err(e) = result {
                tracing::debug!(topic, partition, error = %e, "Pause or resume failed (partition revoked?).");
            }
        };
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = finished_rx.recv() => store(&consumer, done, &mut finished_rx, &mut trackers),
                Some(Ok(())) = async {
                    match credentials.as_mut() {
                        Some(c) => Some(c.changed().await),
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some((user, password)) = self.settings.sasl_credentials() {
                        if let Err(e) = crate::secrets::set_sasl_credentials(consumer.client(), &user, &password) {
                            tracing::error!(group = %group, error = %e, "New SASL credentials not applied to the consumer.");
                        }
                    }
                }
                Some(event) = rebalances.recv() => match event {
                    // Records of a partition this member no longer owns are not processed
                    // (held ones) and their offsets not stored (the new owner consumes from
                    // the last commit): duplicates at worst, never a rewound commit.
                    Rebalanced::Revoked(partitions) => {
                        for (topic, partition) in partitions {
                            let at = (Arc::from(topic.as_str()), partition);
                            trackers.remove(&at);
                            if held.remove(&at).is_some() {
                                pause(&consumer, &topic, partition, false);
                            }
                        }
                        self.paused.set(held.len() as f64);
                    }
                    // A partition assigned again starts unpaused.
                    Rebalanced::Assigned(partitions) => {
                        for (topic, partition) in partitions {
                            if !held.contains_key(&(Arc::from(topic.as_str()), partition)) {
                                pause(&consumer, &topic, partition, false);
                            }
                        }
                    }
                },
                _ = tick.tick(), if !held.is_empty() => {
                    // Move held records into their lanes while there is room; resume the
                    // partitions whose records all went.
                    let mut lane_gone = false;
                    held.retain(|(topic, partition), queue| {
                        while let Some((lane, offset, message)) = queue.pop_front() {
                            match lanes[lane].try_send(message) {
                                Ok(()) => trackers.entry((Arc::clone(topic), *partition)).or_default().start(offset),
                                Err(mpsc::error::TrySendError::Full(message)) => {
                                    queue.push_front((lane, offset, message));
                                    return true;
                                }
                                Err(mpsc::error::TrySendError::Closed(_)) => {
                                    lane_gone = true;
                                    return true;
                                }
                            }
                        }
                        pause(&consumer, topic, *partition, false);
                        tracing::debug!(topic = %topic, partition, "Kafka partition resumed.");
                        false
                    });
                    if lane_gone {
                        return Err("a processing lane stopped unexpectedly".into());
                    }
                    self.paused.set(held.len() as f64);
                }
                received = consumer.recv() => match received {
                    Ok(m) => {
                        let topic = match topic_names.get(m.topic()) {
                            Some(topic) => Arc::clone(topic),
                            None => {
                                let topic: Arc<str> = Arc::from(m.topic());
                                topic_names.insert(m.topic().to_string(), Arc::clone(&topic));
                                topic
                            }
                        };
                        let (partition, offset) = (m.partition(), m.offset());
                        let lane = lane_of(&topic, partition, m.key(), order_by, lane_count);
                        let message = to_message(&m, &topic, &finished_tx);
                        drop(m);
                        let at = (Arc::clone(&topic), partition);
                        if let Some(queue) = held.get_mut(&at) {
                            // Its partition is paused: after the records before it.
                            queue.push_back((lane, offset, message));
                            continue;
                        }
                        let message = match lanes[lane].try_send(message) {
                            Ok(()) => {
                                trackers.entry(at).or_default().start(offset);
                                continue;
                            }
                            Err(mpsc::error::TrySendError::Full(message)) => message,
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                return Err("a processing lane stopped unexpectedly".into());
                            }
                        };
                        // A full lane is ordinary backpressure while catching up: wait a
                        // little for room. Only a lane that stays full (a stalled sink, an
                        // upstream whose breaker is open) pauses the partition, since a
                        // resumed partition is fetched again from the broker.
                        let room = tokio::select! {
                            room = tokio::time::timeout(PAUSE_AFTER, lanes[lane].reserve()) => room,
                            _ = shutdown.cancelled() => break,
                        };
                        match room {
                            Ok(Ok(slot)) => {
                                slot.send(message);
                                trackers.entry(at).or_default().start(offset);
                            }
                            Ok(Err(_)) => return Err("a processing lane stopped unexpectedly".into()),
                            Err(_) => {
                                pause(&consumer, &topic, partition, true);
                                tracing::debug!(topic = %topic, partition, "Kafka partition paused: downstream is full.");
                                held.entry(at).or_default().push_back((lane, offset, message));
                                self.paused.set(held.len() as f64);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(group = %group, error = %e, "Kafka consumer error.");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        // Held records were never started: dropping them fails their acks (not committed).
        held.clear();
        self.paused.set(0.0);
        drop(lanes);
        for task in lane_tasks {
            let _ = task.await;
        }

        // Drain: wait (bounded) for what was taken in, then commit what is done.
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        while trackers.values().any(|t| t.pending() > 0) {
            match tokio::time::timeout_at(deadline, finished_rx.recv()).await {
                Ok(Some(done)) => store(&consumer, done, &mut finished_rx, &mut trackers),
                _ => break,
            }
        }
        let pending: usize = trackers.values().map(PartitionTracker::pending).sum();
        if pending > 0 {
            tracing::warn!(group = %group, pending, "Kafka source stopped with records in flight; they will be consumed again.");
        }
        // The final commit and the group leave block: off the async workers.
        let group = group.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(group = %group, error = %e, "Final commit skipped.");
            }
            consumer.unsubscribe();
            drop(consumer);
        })
        .await;
        Ok(())
    }
}

impl Source for KafkaSource {
    fn run(
        self: Box<Self>,
        downstream: Arc<dyn Downstream>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), String>> {
        self.consume(downstream, shutdown).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_a_contiguous_prefix() {
        let mut t = PartitionTracker::default();
        for o in 10..14 {
            t.start(o);
        }
        assert_eq!(t.finish(11, true), None, "10 is still pending");
        assert_eq!(t.finish(10, true), Some(11));
        assert_eq!(t.finish(13, true), None);
        assert_eq!(t.finish(12, true), Some(13));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn a_failed_offset_blocks_the_commit() {
        let mut t = PartitionTracker::default();
        t.start(1);
        t.start(2);
        assert_eq!(t.finish(1, false), None);
        assert_eq!(t.pending(), 1);
        assert_eq!(t.finish(2, true), None, "2 waits behind the failed 1");
        assert_eq!(t.pending(), 0);
    }
}
