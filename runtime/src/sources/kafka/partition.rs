//! The intake of one assigned partition: its own queue of fetched records, read by a task of
//! its own, so that a partition whose lane is full waits alone. (Read from the consumer's one
//! queue, the records of a fetch come partition after partition: a full lane stopped every
//! partition behind it, and the lanes ran one at a time.)
//!
//! The task hands its records to their lanes in offset order, keeps the partition's offsets in
//! flight and stores, batch by batch, the highest one whose records are all settled. A record
//! whose acknowledgement ended `Failed` while the partition runs (dropped unsettled by a bug)
//! is dead-lettered (code `dropped`), retried with backoff until the dead letter is written,
//! so that no record stays a hole in front of the partition's commits; the age of the oldest
//! unsettled record is the gauge `gridflow_kafka_oldest_unsettled_seconds`. When its
//! lane stays full, the task stops reading; librdkafka then stops fetching the partition once
//! its queue holds `queued.min.messages`, and the consumer, still polled by the source loop,
//! stays in its group. Nothing is paused, so nothing is fetched twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{Consumer, MessageStream, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{record_ack, to_message, OrderBy, Rebalances};
use crate::error::Failure;
use crate::message::{Message, Meta, Payload};
use crate::sources::Downstream;

/// How long a full lane is waited for before its partition counts as paused.
const PAUSE_AFTER: Duration = Duration::from_millis(250);

/// How often the oldest unsettled record's age is reported.
const AGE_EVERY: Duration = Duration::from_secs(1);

/// Longest wait before a failed record's dead-letter is tried again.
const MAX_REOFFER_WAIT: Duration = Duration::from_secs(30);

/// Finished records settled at once before their offset is stored (one `store_offset` per
/// batch instead of one per record).
const STORE_BATCH: usize = 1024;

/// Closed when the partition is revoked. The revocation callback closes it before librdkafka
/// unassigns the partition, under the lock the task holds while it takes a record from the
/// queue: so a record fetched for a later assignment of the partition (to this member) is
/// never taken by this task, which would not commit it, but by the next one.
#[derive(Default)]
pub(super) struct Gate {
    closed: Mutex<bool>,
    /// Wakes the task when it waits for room.
    revoked: CancellationToken,
}

impl Gate {
    pub(super) fn close(&self) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.revoked.cancel();
    }
}

/// Where a partition's records come from.
pub(super) enum Intake {
    /// Its own queue, split from the consumer's when the partition was assigned.
    Queue(StreamPartitionQueue<Rebalances>),
    /// Records the source loop read from the consumer's queue, for a partition whose queue
    /// could not be split.
    Forwarded(mpsc::Receiver<OwnedMessage>),
}

/// An assigned partition, ready to be read.
pub(super) struct Assigned {
    pub topic: Arc<str>,
    pub partition: i32,
    pub intake: Intake,
    pub gate: Arc<Gate>,
}

/// What every partition task of one source shares.
pub(super) struct Shared {
    pub consumer: Arc<StreamConsumer<Rebalances>>,
    /// Where a record whose acknowledgement failed is dead-lettered.
    pub downstream: Arc<dyn Downstream>,
    pub pipeline: Arc<str>,
    pub lanes: Vec<mpsc::Sender<Message>>,
    pub order_by: OrderBy,
    pub shutdown: CancellationToken,
    pub drain_timeout: Duration,
    /// `gridflow_kafka_paused_partitions` of the pipeline.
    pub paused: metrics::Gauge,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Progress {
    Pending,
    Done,
    Failed,
}

/// Offsets in flight of one partition, in order, with when each was handed over.
#[derive(Debug, Default)]
pub(super) struct PartitionTracker {
    offsets: BTreeMap<i64, (Progress, Instant)>,
    /// Offsets whose acknowledgement failed while the partition ran, with how many times:
    /// they stay pending while they are dead-lettered.
    reoffered: HashMap<i64, u32>,
}

/// What to do with an offset whose record's acknowledgement ended.
#[derive(Debug, PartialEq)]
pub(super) enum Settled {
    /// Settled; every offset up to this one (if any) may be committed.
    Committable(Option<i64>),
    /// Failed while the partition runs: dead-letter the record after `wait` (its `times`-th
    /// failure); the offset stays pending.
    Reoffer { times: u32, wait: Duration },
}

impl PartitionTracker {
    pub(super) fn start(&mut self, offset: i64) {
        self.offsets
            .insert(offset, (Progress::Pending, Instant::now()));
    }

    /// How long the oldest offset not committable yet has been in flight (zero when none).
    pub(super) fn oldest(&self) -> Duration {
        self.offsets
            .first_key_value()
            .map(|(_, (_, since))| since.elapsed())
            .unwrap_or_default()
    }

    /// Offsets in the tracker (settled ones behind an unsettled one included).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Records the end of `offset` (`failed`: its acknowledgement ended `Failed`). While the
    /// partition runs, a failed offset stays pending and is to be dead-lettered (with a
    /// backoff that grows with each failure of the same offset, up to 30 s); when it stops,
    /// a failed offset blocks the commit (the record is read again).
    pub(super) fn settle(&mut self, offset: i64, failed: bool, running: bool) -> Settled {
        if failed && running {
            let times = self.reoffered.entry(offset).or_default();
            *times += 1;
            let wait = Duration::from_millis(100u64 << (*times - 1).min(9)).min(MAX_REOFFER_WAIT);
            return Settled::Reoffer {
                times: *times,
                wait,
            };
        }
        if !self.reoffered.is_empty() {
            self.reoffered.remove(&offset);
        }
        Settled::Committable(self.finish(offset, !failed))
    }

    /// Records the end of `offset`; returns the highest offset that may now be committed
    /// (every offset up to it is done).
    pub(super) fn finish(&mut self, offset: i64, ok: bool) -> Option<i64> {
        if let Some((p, _)) = self.offsets.get_mut(&offset) {
            *p = if ok { Progress::Done } else { Progress::Failed };
        }
        let mut committable = None;
        while let Some(entry) = self.offsets.first_entry() {
            if entry.get().0 != Progress::Done {
                break;
            }
            committable = Some(*entry.key());
            entry.remove();
        }
        committable
    }

    /// Offsets whose record is still being processed (failed ones are not waited for).
    pub(super) fn pending(&self) -> usize {
        self.offsets
            .values()
            .filter(|(p, _)| *p == Progress::Pending)
            .count()
    }
}

/// The end of one record's processing, as its acknowledgement reports it.
pub(super) struct Finished {
    pub offset: i64,
    /// Set when the acknowledgement ended `Failed`: why, and the record.
    pub failed: Option<(Failure, Arc<Meta>)>,
}

/// Dead-letters a record whose acknowledgement failed while its partition runs, after
/// `wait`; its new acknowledgement reports to the partition's task again (a failed write
/// offers it once more). Gives up when the source stops (the record is read again).
fn reoffer(
    shared: &Shared,
    offset: i64,
    (failure, meta): (Failure, Arc<Meta>),
    wait: Duration,
    finished: &mpsc::UnboundedSender<Finished>,
) {
    let message = Message {
        payload: Payload::Bytes(meta.original.clone()),
        ack: record_ack(offset, &meta, finished),
        meta,
    };
    let downstream = Arc::clone(&shared.downstream);
    let stop = shared.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = async {
                tokio::time::sleep(wait).await;
                downstream.reject(message, failure).await;
            } => {}
            _ = stop.cancelled() => {}
        }
    });
}

/// Sets the partition's `gridflow_kafka_oldest_unsettled_seconds` to zero when dropped.
struct AgeReset<'a> {
    pipeline: &'a str,
    topic: &'a str,
    partition: i32,
}

impl Drop for AgeReset<'_> {
    fn drop(&mut self) {
        crate::metrics::oldest_unsettled(self.pipeline, self.topic, self.partition, Duration::ZERO);
    }
}

/// Counts the partition in the paused gauge while it is marked.
struct PausedMark<'a> {
    gauge: &'a metrics::Gauge,
    on: bool,
}

impl PausedMark<'_> {
    fn set(&mut self, on: bool) {
        if on != self.on {
            if on {
                self.gauge.increment(1.0);
            } else {
                self.gauge.decrement(1.0);
            }
            self.on = on;
        }
    }
}

impl Drop for PausedMark<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Reads an [`Intake`].
enum Reader<'a> {
    Queue(MessageStream<'a, Rebalances>),
    Forwarded(&'a mut mpsc::Receiver<OwnedMessage>),
}

impl Reader<'_> {
    /// The next record (its offset and the message made of it); `None` once the gate is
    /// closed (or the intake ended).
    async fn next(
        &mut self,
        gate: &Gate,
        topic: &Arc<str>,
        finished: &mpsc::UnboundedSender<Finished>,
    ) -> Option<Result<(i64, Message), KafkaError>> {
        match self {
            Reader::Queue(stream) => {
                let taken = std::future::poll_fn(|cx| {
                    let closed = gate.closed.lock().unwrap_or_else(|e| e.into_inner());
                    if *closed {
                        return Poll::Ready(None);
                    }
                    stream.poll_next_unpin(cx)
                })
                .await?;
                Some(taken.map(|m| (m.offset(), to_message(&m, topic, finished))))
            }
            Reader::Forwarded(rx) => {
                let m = rx.recv().await?;
                if *gate.closed.lock().unwrap_or_else(|e| e.into_inner()) {
                    return None;
                }
                Some(Ok((m.offset(), to_message(&m, topic, finished))))
            }
        }
    }
}

/// Reads one assigned partition until it is revoked (its records in flight are then not
/// committed here: the new owner reads them again) or the source stops (then the records in
/// flight are waited for, at most the drain timeout, and their offsets stored). Returns the
/// number of records still in flight when it gave up waiting.
pub(super) async fn run(assigned: Assigned, shared: Arc<Shared>) -> usize {
    let Assigned {
        topic,
        partition,
        mut intake,
        gate,
    } = assigned;
    let mut reader = match &mut intake {
        Intake::Queue(queue) => Reader::Queue(queue.stream()),
        Intake::Forwarded(rx) => Reader::Forwarded(rx),
    };
    let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<Finished>();
    let mut tracker = PartitionTracker::default();
    // Settles `first` and whatever else has finished meanwhile (up to a batch), then stores
    // the highest committable offset once. While `running`, a failed record is dead-lettered
    // (it stays pending until that is settled); when stopping, it is left uncommitted.
    let store = |first: Finished,
                 more: &mut mpsc::UnboundedReceiver<Finished>,
                 tracker: &mut PartitionTracker,
                 running: bool| {
        let mut to_store = None;
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(done) = next.take() {
            match tracker.settle(done.offset, done.failed.is_some(), running) {
                Settled::Committable(Some(offset)) => to_store = Some(offset),
                Settled::Committable(None) => {}
                Settled::Reoffer { times, wait } => {
                    if let Some(failed) = done.failed {
                        tracing::error!(pipeline = %shared.pipeline, topic = %topic, partition, offset = done.offset, code = %failed.0.code, times, error = %failed.0.message, "A record's acknowledgement failed; it is dead-lettered so that its partition's commits go on.");
                        reoffer(&shared, done.offset, failed, wait, &finished_tx);
                    }
                }
            }
            taken += 1;
            if taken < STORE_BATCH {
                next = more.try_recv().ok();
            }
        }
        if let Some(offset) = to_store {
            if let Err(e) = shared.consumer.store_offset(&topic, partition, offset) {
                tracing::debug!(topic = %topic, partition, error = %e, "Offset not stored (partition revoked?).");
            }
        }
    };
    let lane_count = shared.lanes.len();
    let mut paused = PausedMark {
        gauge: &shared.paused,
        on: false,
    };
    // A record waiting for room in its full lane: lane, offset, record, since when.
    let mut waiting: Option<(usize, i64, Message, tokio::time::Instant)> = None;
    // One future of each token for the task's life: polled first on every turn, a new one a
    // turn registered (and removed) a waiter on the token each time, as the lanes did.
    let revoked = gate.revoked.cancelled();
    let stopping = shared.shutdown.cancelled();
    tokio::pin!(revoked, stopping);
    let mut age_tick = tokio::time::interval(AGE_EVERY);
    age_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The partition's age gauge is zero once its task ends (revoked, stopped).
    let _age_reset = AgeReset {
        pipeline: &shared.pipeline,
        topic: &topic,
        partition,
    };
    loop {
        let waiting_for = waiting.as_ref().map(|(lane, _, _, since)| (*lane, *since));
        tokio::select! {
            biased;
            _ = &mut revoked => return 0,
            _ = &mut stopping => break,
            Some(done) = finished_rx.recv() => store(done, &mut finished_rx, &mut tracker, true),
            _ = age_tick.tick() => {
                crate::metrics::oldest_unsettled(&shared.pipeline, &topic, partition, tracker.oldest());
            }
            room = async {
                match waiting_for {
                    Some((lane, _)) => shared.lanes[lane].reserve().await,
                    None => std::future::pending().await,
                }
            }, if waiting_for.is_some() => {
                let Ok(slot) = room else {
                    // The lanes are gone: the source is stopping.
                    break;
                };
                if let Some((_, offset, message, _)) = waiting.take() {
                    slot.send(message);
                    tracker.start(offset);
                }
                paused.set(false);
            }
            _ = async {
                match waiting_for {
                    Some((_, since)) => tokio::time::sleep_until(since + PAUSE_AFTER).await,
                    None => std::future::pending().await,
                }
            }, if waiting_for.is_some() && !paused.on => {
                tracing::debug!(topic = %topic, partition, "Kafka partition paused: downstream is full.");
                paused.set(true);
            }
            next = reader.next(&gate, &topic, &finished_tx), if waiting_for.is_none() => match next {
                None => return 0,
                Some(Ok((offset, message))) => {
                    let key = message.meta.key.as_deref();
                    let lane = super::lane_of(&topic, partition, key, shared.order_by, lane_count);
                    match shared.lanes[lane].try_send(message) {
                        Ok(()) => tracker.start(offset),
                        Err(mpsc::error::TrySendError::Full(message)) => {
                            waiting = Some((lane, offset, message, tokio::time::Instant::now()));
                        }
                        // The lanes are gone: the source is stopping.
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(topic = %topic, partition, error = %e, "Kafka consumer error.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
    // A record still waiting was never started: dropping it fails its ack (not committed).
    drop(waiting);
    drop(paused);
    // Drain: wait (bounded) for what was handed over, storing what is done.
    let deadline = tokio::time::Instant::now() + shared.drain_timeout;
    while tracker.pending() > 0 {
        match tokio::time::timeout_at(deadline, finished_rx.recv()).await {
            Ok(Some(done)) => store(done, &mut finished_rx, &mut tracker, false),
            _ => break,
        }
    }
    tracker.pending()
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

    #[test]
    fn a_failed_offset_is_reoffered_while_running_and_never_stays_a_hole() {
        let mut t = PartitionTracker::default();
        for o in 1..=3 {
            t.start(o);
        }
        assert_eq!(
            t.settle(1, true, true),
            Settled::Reoffer {
                times: 1,
                wait: Duration::from_millis(100)
            }
        );
        assert_eq!(t.settle(2, false, true), Settled::Committable(None));
        assert_eq!(
            t.pending(),
            2,
            "1 is pending again (being dead-lettered), 3 too"
        );
        // The dead-letter write of 1 failed again: a longer wait.
        assert_eq!(
            t.settle(1, true, true),
            Settled::Reoffer {
                times: 2,
                wait: Duration::from_millis(200)
            }
        );
        // Its dead letter is written: 1 and 2 may be committed.
        assert_eq!(t.settle(1, false, true), Settled::Committable(Some(2)));
        assert!(t.reoffered.is_empty());
        for _ in 0..20 {
            t.settle(3, true, true);
        }
        assert!(matches!(
            t.settle(3, true, true),
            Settled::Reoffer { wait, .. } if wait == MAX_REOFFER_WAIT
        ));
        // Stopping: a failure blocks the commit (read again by the next owner).
        assert_eq!(t.settle(3, true, false), Settled::Committable(None));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn reports_the_age_of_the_oldest_unsettled_offset() {
        let mut t = PartitionTracker::default();
        assert_eq!(t.oldest(), Duration::ZERO);
        t.start(1);
        std::thread::sleep(Duration::from_millis(20));
        t.start(2);
        assert!(t.oldest() >= Duration::from_millis(20));
        // 2 settles first: 1 is still the oldest, and both stay tracked.
        assert_eq!(t.finish(2, true), None);
        assert!(t.oldest() >= Duration::from_millis(20));
        assert_eq!(t.len(), 2);
        assert_eq!(t.finish(1, true), Some(2));
        assert_eq!((t.len(), t.oldest()), (0, Duration::ZERO));
    }

    #[test]
    fn a_closed_gate_stops_a_forwarded_intake() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, rx) = mpsc::channel(4);
            let mut rx = rx;
            let mut reader = Reader::Forwarded(&mut rx);
            let gate = Gate::default();
            let (finished, _finished_rx) = mpsc::unbounded_channel();
            let topic: Arc<str> = Arc::from("t");
            let record = OwnedMessage::new(
                Some(b"{}".to_vec()),
                None,
                "t".into(),
                rdkafka::Timestamp::NotAvailable,
                0,
                7,
                None,
            );
            tx.send(record.clone()).await.unwrap();
            let first = reader.next(&gate, &topic, &finished).await;
            assert!(matches!(first, Some(Ok((7, _)))));
            gate.close();
            tx.send(record).await.unwrap();
            assert!(reader.next(&gate, &topic, &finished).await.is_none());
            assert!(gate.revoked.is_cancelled());
        });
    }
}
