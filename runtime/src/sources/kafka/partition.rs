//! The intake of one assigned partition: its own queue of fetched records, read by a task of
//! its own, so that a partition whose lane is full waits alone. (Read from the consumer's one
//! queue, the records of a fetch come partition after partition: a full lane stopped every
//! partition behind it, and the lanes ran one at a time.)
//!
//! The task hands its records to their lanes in offset order, keeps the partition's offsets in
//! flight and stores, batch by batch, the highest one whose records are all settled. When its
//! lane stays full, the task stops reading; librdkafka then stops fetching the partition once
//! its queue holds `queued.min.messages`, and the consumer, still polled by the source loop,
//! stays in its group. Nothing is paused, so nothing is fetched twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{Consumer, MessageStream, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{to_message, OrderBy, Rebalances};
use crate::message::Message;

/// How long a full lane is waited for before its partition counts as paused.
const PAUSE_AFTER: Duration = Duration::from_millis(250);

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

/// Offsets in flight of one partition, in order.
#[derive(Debug, Default)]
pub(super) struct PartitionTracker {
    offsets: BTreeMap<i64, Progress>,
}

impl PartitionTracker {
    pub(super) fn start(&mut self, offset: i64) {
        self.offsets.insert(offset, Progress::Pending);
    }

    /// Records the end of `offset`; returns the highest offset that may now be committed
    /// (every offset up to it is done).
    pub(super) fn finish(&mut self, offset: i64, ok: bool) -> Option<i64> {
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
    pub(super) fn pending(&self) -> usize {
        self.offsets
            .values()
            .filter(|p| **p == Progress::Pending)
            .count()
    }
}

/// The end of one record's processing, as its acknowledgement reports it.
pub(super) struct Finished {
    pub offset: i64,
    pub ok: bool,
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
    // the highest committable offset once.
    let store = |first: Finished,
                 more: &mut mpsc::UnboundedReceiver<Finished>,
                 tracker: &mut PartitionTracker| {
        let mut to_store = None;
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(done) = next.take() {
            if let Some(offset) = tracker.finish(done.offset, done.ok) {
                to_store = Some(offset);
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
    loop {
        let waiting_for = waiting.as_ref().map(|(lane, _, _, since)| (*lane, *since));
        tokio::select! {
            biased;
            _ = &mut revoked => return 0,
            _ = &mut stopping => break,
            Some(done) = finished_rx.recv() => store(done, &mut finished_rx, &mut tracker),
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
            Ok(Some(done)) => store(done, &mut finished_rx, &mut tracker),
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
