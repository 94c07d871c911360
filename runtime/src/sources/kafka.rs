//! `kafka` source: a consumer group reading `topics`.
//!
//! At-least-once: an offset is stored for commit only when its record's acknowledgement
//! resolved (delivered, filtered or dead-lettered) *and* every earlier offset of the same
//! partition did.
//!
//! Concurrency: each assigned partition is read from a queue of its own by a task of its own
//! ([`partition`]), which hands its records to `concurrency` lanes; a lane hands its records
//! downstream one at a time. A partition (or, with `order_by = "key"`, a key within a
//! partition) always goes to the same lane, so order is kept per partition (per key) while
//! partitions (keys) are processed at once. Backpressure: when a lane is full (a slow sink, an
//! upstream whose breaker is open) only the partitions waiting for it stop reading (they count
//! as paused after 250 ms); librdkafka stops fetching them once their queue is full, and the
//! source loop keeps polling the consumer, so it stays in its group.
//!
//! Paused by an operator ([`super::pause`]): every assigned partition is paused in the
//! consumer (`rd_kafka_pause_partitions`: nothing more is fetched, what was fetched and not
//! taken is dropped and fetched again on resume), and so is each partition assigned while the
//! pause lasts. The source loop keeps polling: the consumer keeps its membership and its
//! assignment. Records already taken in finish and are committed as usual.

mod partition;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use metrics::gauge;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
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
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
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
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OrderBy {
    /// Records of one partition, in offset order.
    #[default]
    Partition,
    /// Records of one key within a partition, in offset order.
    Key,
}

/// Records a lane holds.
const LANE_CAPACITY: usize = 64;

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
            pause: ctx.paused.clone(),
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
    /// The operator's pause switch of the pipeline.
    pause: super::Pause,
}

/// What the consumer's rebalance callbacks tell the source loop.
enum Rebalanced {
    /// Partitions no longer assigned (their gates already closed).
    Revoked(Vec<(String, i32)>),
    /// Partitions newly assigned.
    Assigned(Vec<Split>),
}

/// A newly assigned partition, with its own queue where it could be split.
struct Split {
    topic: Arc<str>,
    partition: i32,
    queue: Option<rdkafka::consumer::stream_consumer::StreamPartitionQueue<Rebalances>>,
    gate: Arc<partition::Gate>,
}

/// The consumer's context: splits the queue of each assigned partition and closes the gate
/// of each revoked one (in the rebalance callback, before librdkafka applies the change),
/// forwards the rebalances to the source loop, and turns librdkafka's statistics into the
/// consumer lag gauges.
pub(super) struct Rebalances {
    rebalances: mpsc::UnboundedSender<Rebalanced>,
    /// The consumer itself, set once it exists, for splitting partition queues.
    consumer: OnceLock<Weak<StreamConsumer<Rebalances>>>,
    /// The gate of each assigned partition.
    gates: Mutex<HashMap<(String, i32), Arc<partition::Gate>>>,
    pipeline: Arc<str>,
    /// Partitions whose lag was reported: one that is no longer assigned is set to 0, so a
    /// revoked partition's last lag does not stay on the dashboard; all of them when the
    /// consumer closes (the pipeline stopped or was replaced).
    reported: std::sync::Mutex<std::collections::HashSet<(String, i32)>>,
    /// The consumer starts from the earliest offset where it has none: before the first
    /// commit, the whole partition is its lag.
    from_earliest: bool,
    /// Set when the consumer hit a fatal error (`rd_kafka_fatal_error`): it never consumes
    /// again, so the source stops this consumer (cancelling `session`) and makes a new one.
    fatal: std::sync::atomic::AtomicBool,
    /// This consumer's session: cancelled on shutdown, or on a fatal error.
    session: CancellationToken,
    /// The operator's pause switch: partitions assigned while it is on are paused at once.
    pause: super::Pause,
    /// Set once this consumer paused partitions for the switch: from then on, partitions
    /// assigned while the switch is off are resumed explicitly (one paused before it was
    /// revoked may come back with its pause). A consumer never paused leaves them alone.
    was_paused: std::sync::atomic::AtomicBool,
}

impl Rebalances {
    /// The consumer hit a fatal error (`reason`): logged and counted once, and its session
    /// ends (the source drains as on a stop, commits what it can and starts a new consumer).
    fn fatal(&self, reason: &str) {
        if !self.fatal.swap(true, std::sync::atomic::Ordering::AcqRel) {
            crate::metrics::kafka_fatal_error("consumer");
            tracing::error!(pipeline = %self.pipeline, client = "consumer", reason = %reason, "Kafka consumer hit a fatal error; it consumes nothing more and is replaced.");
            self.session.cancel();
        }
    }
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
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::Fatal) {
            self.fatal(reason);
        } else {
            tracing::warn!(pipeline = %self.pipeline, error = %error, reason = %reason, "Kafka consumer error.");
        }
    }

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
        use rdkafka::consumer::Rebalance;
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        match rebalance {
            Rebalance::Revoke(list) => {
                let revoked = partitions(list);
                for at in &revoked {
                    if let Some(gate) = gates.remove(at) {
                        gate.close();
                    }
                }
                let _ = self.rebalances.send(Rebalanced::Revoked(revoked));
            }
            // Split before the assignment takes effect, so that no record of the partition
            // reaches the consumer's own queue (a split queue stays split: librdkafka does not
            // forward it again when fetching starts).
            Rebalance::Assign(list) => {
                let consumer = self.consumer.get().and_then(Weak::upgrade);
                let assigned = partitions(list)
                    .into_iter()
                    .map(|(topic, partition)| {
                        let gate = Arc::new(partition::Gate::default());
                        if let Some(old) =
                            gates.insert((topic.clone(), partition), Arc::clone(&gate))
                        {
                            old.close();
                        }
                        let queue = consumer
                            .as_ref()
                            .and_then(|c| c.split_partition_queue(&topic, partition));
                        Split {
                            topic: Arc::from(topic.as_str()),
                            partition,
                            queue,
                            gate,
                        }
                    })
                    .collect();
                let _ = self.rebalances.send(Rebalanced::Assigned(assigned));
            }
            Rebalance::Error(_) => {}
        }
    }

    /// Newly assigned partitions follow the operator's switch: paused while the pipeline is
    /// paused, resumed otherwise (a partition paused before it was revoked may come back).
    /// Runs right after the assignment, before anything of it is fetched.
    fn post_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        use std::sync::atomic::Ordering;
        if let rdkafka::consumer::Rebalance::Assign(list) = rebalance {
            let paused = self.pause.is_paused();
            if paused {
                self.was_paused.store(true, Ordering::Release);
            }
            if list.count() > 0 && (paused || self.was_paused.load(Ordering::Acquire)) {
                follow_pause(consumer, list, paused, &self.pipeline);
            }
        }
    }
}

/// Pauses (`paused`) or resumes the partitions `list` of `consumer`.
fn follow_pause<C: Consumer<Rebalances>>(
    consumer: &C,
    list: &rdkafka::TopicPartitionList,
    paused: bool,
    pipeline: &str,
) {
    let done = if paused {
        consumer.pause(list)
    } else {
        consumer.resume(list)
    };
    let listed = listed(partitions(list).iter().map(|(t, p)| (t.as_str(), *p)));
    match done {
        Ok(()) if paused => {
            tracing::info!(pipeline = %pipeline, partitions = %listed, "Kafka partitions paused (pipeline paused).")
        }
        Ok(()) => tracing::debug!(pipeline = %pipeline, partitions = %listed, "Kafka partitions resumed."),
        Err(e) => {
            tracing::error!(pipeline = %pipeline, partitions = %listed, paused, error = %e, "Kafka partitions could not follow the pipeline's pause switch.")
        }
    }
}

fn partitions(list: &rdkafka::TopicPartitionList) -> Vec<(String, i32)> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// `topic/partition` pairs as one log field: `t.in.v1/0,t.in.v1/2`.
fn listed<'a>(partitions: impl Iterator<Item = (&'a str, i32)>) -> String {
    partitions
        .map(|(topic, partition)| format!("{topic}/{partition}"))
        .collect::<Vec<_>>()
        .join(",")
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
        // One stop future for the lane's life: a new `cancelled()` per record registered and
        // removed a waiter on the token each time (2.5 % of the workers' time in a profile).
        let stop = shutdown.cancelled();
        tokio::pin!(stop);
        loop {
            let message = tokio::select! {
                biased;
                _ = &mut stop => break,
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
                _ = &mut stop => break,
            }
        }
    });
    (tx, task)
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
    m: &impl rdkafka::Message,
    topic: &Arc<str>,
    finished: &mpsc::UnboundedSender<partition::Finished>,
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
    let meta = Arc::new(record_meta(
        topic,
        partition,
        offset,
        m.key(),
        headers,
        body.clone(),
        new_correlation_id,
    ));
    Message {
        payload: Payload::Bytes(body),
        ack: record_ack(offset, &meta, finished),
        meta,
    }
}

/// The acknowledgement of the record at `offset`: reports its end to the partition's task,
/// with the record itself when it failed (the task then dead-letters it rather than leave a
/// hole that stops the partition's commits).
fn record_ack(
    offset: i64,
    meta: &Arc<Meta>,
    finished: &mpsc::UnboundedSender<partition::Finished>,
) -> Ack {
    let tx = finished.clone();
    let meta = Arc::clone(meta);
    Ack::new(move |outcome| {
        let failed = match outcome {
            Outcome::Failed(failure) => Some((failure, meta)),
            _ => None,
        };
        let _ = tx.send(partition::Finished { offset, failed });
    })
}

impl KafkaSource {
    /// Consumes with one consumer until `shutdown` (the session: the source's stop, or a
    /// fatal error of the consumer); `Ok(true)` when the consumer ended with a fatal error.
    async fn consume(
        &self,
        downstream: Arc<dyn Downstream>,
        shutdown: CancellationToken,
    ) -> Result<bool, String> {
        let group = &self.config.group;
        let (rebalance_tx, mut rebalances) = mpsc::unbounded_channel();
        crate::metrics::kafka_fatal_errors_init("consumer");
        let consumer: Arc<StreamConsumer<Rebalances>> = Arc::new(
            self.settings
                .with_statistics(self.settings.consumer_config(group))
                .create_with_context(Rebalances {
                    rebalances: rebalance_tx,
                    consumer: OnceLock::new(),
                    gates: Mutex::default(),
                    pipeline: Arc::clone(&self.pipeline),
                    reported: Default::default(),
                    from_earliest: self.settings.starts_from_earliest(),
                    fatal: Default::default(),
                    session: shutdown.clone(),
                    pause: self.pause.clone(),
                    was_paused: Default::default(),
                })
                .map_err(|e| format!("cannot create the Kafka consumer: {e}"))?,
        );
        // Before the subscription: the first assignment already splits its partitions.
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        #[cfg(debug_assertions)]
        let _injection = inject_faults(Arc::downgrade(&consumer), shutdown.clone());
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| format!("cannot subscribe to {topics:?}: {e}"))?;
        tracing::info!(group = %group, topics = ?topics, "Kafka source subscribed.");

        let lane_stop = shutdown.child_token();
        let (lanes, lane_tasks): (Vec<_>, Vec<_>) = (0..self.config.concurrency.max(1))
            .map(|_| spawn_lane(Arc::clone(&downstream), lane_stop.clone()))
            .unzip();
        let shared = Arc::new(partition::Shared {
            consumer: Arc::clone(&consumer),
            downstream: Arc::clone(&downstream),
            pipeline: Arc::clone(&self.pipeline),
            lanes,
            order_by: self.config.order_by,
            shutdown: shutdown.clone(),
            drain_timeout: self.drain_timeout,
            paused: self.paused.clone(),
        });
        let mut readers = Readers {
            tasks: tokio::task::JoinSet::new(),
            forwarded: HashMap::new(),
            shared: Arc::clone(&shared),
        };
        // Rotated SASL credentials (secret files re-read) for this consumer's next connection.
        let mut credentials = self.settings.secrets.subscribe();
        // The operator's pause switch; its state at start is applied by each assignment.
        let mut pause = self.pause.subscribe();
        pause.mark_unchanged();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Ok(()) = pause.changed() => {
                    let paused = pause.borrow_and_update().is_some();
                    if paused {
                        consumer.context().was_paused.store(true, std::sync::atomic::Ordering::Release);
                    }
                    match consumer.assignment() {
                        Ok(assignment) => follow_pause(&*consumer, &assignment, paused, &self.pipeline),
                        Err(e) => tracing::error!(group = %group, paused, error = %e, "The consumer's assignment is unknown; the pause switch is not applied."),
                    }
                    if paused {
                        tracing::info!(group = %group, "Kafka source paused: it keeps its group membership and its partitions, and fetches nothing.");
                    } else {
                        tracing::info!(group = %group, "Kafka source resumed.");
                    }
                }
                Some(ended) = readers.tasks.join_next(), if !readers.tasks.is_empty() => {
                    if let Err(e) = ended {
                        tracing::error!(group = %group, error = %e, "A partition reader panicked; its records in flight are not committed.");
                    }
                }
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
                Some(event) = rebalances.recv() => readers.rebalanced(event),
                // Serves the consumer's events and rebalances; returns records only of
                // partitions whose queue could not be split.
                received = consumer.recv() => match received {
                    Ok(m) => {
                        // The rebalances this poll served come first: the record may be of a
                        // partition it assigned.
                        while let Ok(event) = rebalances.try_recv() {
                            readers.rebalanced(event);
                        }
                        let at = (Arc::<str>::from(m.topic()), m.partition());
                        if !readers.forwarded.contains_key(&at) {
                            readers.start(Split { topic: Arc::clone(&at.0), partition: at.1, queue: None, gate: Arc::default() });
                        }
                        let record = m.detach();
                        drop(m);
                        if let Some((tx, _)) = readers.forwarded.get(&at) {
                            tokio::select! {
                                sent = tx.send(record) => if sent.is_err() {
                                    tracing::debug!(topic = %at.0, partition = at.1, "A record of a stopped partition reader is not processed.");
                                },
                                _ = shutdown.cancelled() => break,
                            }
                        }
                    }
                    Err(e) => {
                        match consumer.client().fatal_error() {
                            Some((code, reason)) => consumer.context().fatal(&format!("{code}: {reason}")),
                            None => tracing::warn!(group = %group, error = %e, "Kafka consumer error."),
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        // The readers stop taking records and wait (bounded) for what they handed over; the
        // lanes drop what they hold (not started: not committed).
        readers.forwarded.clear();
        for task in lane_tasks {
            let _ = task.await;
        }
        let mut pending = 0;
        while let Some(ended) = readers.tasks.join_next().await {
            pending += ended.unwrap_or(0);
        }
        drop(readers);
        if pending > 0 {
            tracing::warn!(group = %group, pending, "Kafka source stopped with records in flight; they will be consumed again.");
        }
        // Nothing else holds the consumer now (the readers and their queues are gone), so it
        // closes here: the final commit and the group leave block, off the async workers.
        drop(shared);
        drop(rebalances);
        let fatal = consumer
            .context()
            .fatal
            .load(std::sync::atomic::Ordering::Acquire);
        let group = group.clone();
        if fatal {
            // A consumer with a fatal error commits nothing, and librdkafka's close of it
            // blocks for good while its group thread goes on heartbeating (so the group waits
            // for it before assigning its partitions to the next consumer). It is destroyed
            // without the consumer close (RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE, what librdkafka
            // prescribes after a fatal error), on a thread of its own; the broker drops its
            // membership after `session.timeout.ms`. Its uncommitted records are consumed
            // again by the next consumer.
            let closing = std::thread::Builder::new()
                .name("gridflow-fatal-consumer-close".into())
                .spawn(move || match Arc::try_unwrap(consumer) {
                    Ok(consumer) => {
                        let client = consumer.client().native_ptr();
                        // SAFETY: nothing else holds the consumer (its partition queues and
                        // readers are gone); once destroyed it is never used again: the Rust
                        // handle is forgotten, not dropped (its drop would close it again).
                        unsafe {
                            rdkafka::bindings::rd_kafka_destroy_flags(
                                client,
                                rdkafka::bindings::RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE,
                            );
                        }
                        std::mem::forget(consumer);
                    }
                    Err(consumer) => drop(consumer),
                });
            if let Err(e) = closing {
                tracing::error!(group = %group, error = %e, "The consumer with a fatal error is not closed.");
            }
            return Ok(true);
        }
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(group = %group, error = %e, "Final commit skipped.");
            }
            consumer.unsubscribe();
            drop(consumer);
        })
        .await;
        Ok(false)
    }
}

/// Where the source loop sends the records of a partition read from the consumer's queue.
type Forwarding = (mpsc::Sender<OwnedMessage>, Arc<partition::Gate>);

/// The partition readers of a source.
struct Readers {
    /// Each returns the number of its records still in flight when it stopped waiting.
    tasks: tokio::task::JoinSet<usize>,
    /// Partitions whose queue could not be split: their records, read from the consumer's
    /// queue by the source loop, go to their reader through these.
    forwarded: HashMap<(Arc<str>, i32), Forwarding>,
    shared: Arc<partition::Shared>,
}

impl Readers {
    fn start(&mut self, split: Split) {
        let intake = match split.queue {
            Some(queue) => partition::Intake::Queue(queue),
            None => {
                tracing::warn!(topic = %split.topic, partition = split.partition, "The partition's queue could not be split; it is read from the consumer's queue.");
                let (tx, rx) = mpsc::channel(LANE_CAPACITY);
                self.forwarded.insert(
                    (Arc::clone(&split.topic), split.partition),
                    (tx, Arc::clone(&split.gate)),
                );
                partition::Intake::Forwarded(rx)
            }
        };
        self.tasks.spawn(partition::run(
            partition::Assigned {
                topic: split.topic,
                partition: split.partition,
                intake,
                gate: split.gate,
            },
            Arc::clone(&self.shared),
        ));
    }

    fn rebalanced(&mut self, event: Rebalanced) {
        match event {
            // A revoked partition's reader stops at once (its gate is closed): its records in
            // flight are not committed (the new owner consumes from the last commit):
            // duplicates at worst, never a rewound commit.
            Rebalanced::Revoked(revoked) => {
                if !revoked.is_empty() {
                    tracing::info!(partitions = %listed(revoked.iter().map(|(t, p)| (t.as_str(), *p))), "Kafka partitions revoked.");
                }
                for (topic, partition) in revoked {
                    let at = (Arc::from(topic.as_str()), partition);
                    if let Some((_, gate)) = self.forwarded.remove(&at) {
                        gate.close();
                    }
                }
            }
            Rebalanced::Assigned(assigned) => {
                if !assigned.is_empty() {
                    tracing::info!(partitions = %listed(assigned.iter().map(|s| (&*s.topic, s.partition))), "Kafka partitions assigned.");
                }
                for split in assigned {
                    self.start(split);
                }
            }
        }
    }
}

/// Debug builds: the consumer fails with a fatal error when a test asks for it (see
/// [`crate::kafka::consumer_faults`]), until `session` ends.
#[cfg(debug_assertions)]
fn inject_faults(
    consumer: Weak<StreamConsumer<Rebalances>>,
    session: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut faults = crate::kafka::consumer_faults().subscribe();
    faults.mark_unchanged();
    tokio::spawn(async move {
        tokio::select! {
            _ = session.cancelled() => {}
            Ok(()) = faults.changed() => {
                if let Some(consumer) = consumer.upgrade() {
                    let _ = crate::kafka::test_fatal_error(consumer.client(), "injected by POST /admin/test/kafka-fatal-error");
                }
            }
        }
    })
}

impl Source for KafkaSource {
    fn run(
        self: Box<Self>,
        downstream: Arc<dyn Downstream>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), String>> {
        async move {
            loop {
                // One session per consumer; a consumer with a fatal error ends its session
                // and the next one joins the group again.
                let session = shutdown.child_token();
                let fatal = self.consume(Arc::clone(&downstream), session).await?;
                if !fatal || shutdown.is_cancelled() {
                    return Ok(());
                }
                tracing::warn!(pipeline = %self.pipeline, group = %self.config.group, "Kafka source starting a new consumer after a fatal error.");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        .boxed()
    }
}

impl super::SourceKind for KafkaSourceConfig {
    const KIND: &'static str = "kafka";
    const EXAMPLE: &'static str = r#"[source]
kind = "kafka"
topics = ["energy.meter.reading.raw.v1"]
group = "gridflow-meter-readings""#;
    const WAITS_FOR_SINK: bool = true;
    const REDELIVERS: bool = false;

    fn check(&self) -> Result<(), BuildError> {
        KafkaSourceConfig::check(self)
    }

    fn build(&self, ctx: &super::SourceContext) -> Result<Box<dyn super::Source>, BuildError> {
        Ok(Box::new(KafkaSourceConfig::build(self, ctx)))
    }

    fn topics(&self) -> &[String] {
        &self.topics
    }

    /// A record of the first topic (partition 0, offset 0) with the input's key and headers.
    fn offline_input(
        &self,
        input: &super::OfflineInput<'_>,
    ) -> Result<super::Received, String> {
        let headers = input
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        let meta = record_meta(
            self.topics.first().map(String::as_str).unwrap_or(""),
            0,
            0,
            input.key.map(str::as_bytes),
            headers,
            input.body.clone(),
            || input.correlation_id.to_string(),
        );
        Ok((
            std::sync::Arc::new(meta),
            Ok(crate::message::Payload::Bytes(input.body.clone())),
        ))
    }
}
