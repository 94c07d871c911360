//! Kafka helpers for `benches/e2e.sh`, with gridflow's own client settings
//! ([`gridflow::kafka::KafkaSettings`]: idempotent producer, `acks=all`, `linger.ms=5`; consumer
//! with explicit offset store and auto-commit), so that the bare loop is the limit the
//! Kafka → Kafka pipeline is compared with. One difference, on purpose: the loop's consumer
//! prefetches librdkafka's 64 MiB on its one queue, where gridflow prefetches 4 MiB on each
//! partition's queue (see `bare_loop`).
//!
//! ```text
//! bare_loop create <partitions> <topic>...         creates the topics (admin API)
//! bare_loop produce <topic> <count> <file>         writes <count> records, each the file's
//!                                                  first line, keyed by 1,000 meter ids
//!                                                  (not idempotent: see `produce`)
//! bare_loop loop <in> <out> <count> <timeout_s>    consume <in> → produce <out>, no transform:
//!                                                  each record's offset is stored once its
//!                                                  copy is acknowledged; stops after <count>
//!                                                  acknowledged copies or <timeout_s>
//! bare_loop wait <topic> <count> <timeout_s>       polls the topic's high watermarks (sum over
//!                                                  its partitions) every 10 ms until they reach
//!                                                  <count>; prints `records=<n> at_unix_ms=<t>`
//!                                                  (the first poll that saw them), exit 1 on
//!                                                  timeout
//! ```
//!
//! The broker is `KAFKA_BROKERS`. `loop` prints one line:
//! `records=<n> seconds=<s> per_second=<r>`, timed from the first record received to the
//! last acknowledgement.

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use gridflow::kafka::KafkaSettings;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

/// Copies in flight at most (gridflow's `[engine] max_in_flight` default is 10,000).
const MAX_IN_FLIGHT: usize = 10_000;

fn settings() -> KafkaSettings {
    KafkaSettings {
        brokers: std::env::var("KAFKA_BROKERS").expect("KAFKA_BROKERS"),
        ..KafkaSettings::default()
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("create") => create(args[1].parse().unwrap(), &args[2..]).await,
        Some("produce") => produce(&args[1], args[2].parse().unwrap(), &args[3]).await,
        Some("loop") => {
            bare_loop(
                &args[1],
                &args[2],
                args[3].parse().unwrap(),
                Duration::from_secs(args[4].parse().unwrap()),
            )
            .await
        }
        Some("wait") => wait(
            &args[1],
            args[2].parse().unwrap(),
            Duration::from_secs(args[3].parse().unwrap()),
        ),
        _ => {
            eprintln!("usage: bare_loop create|produce|loop|wait ... (see the source)");
            std::process::exit(2);
        }
    }
}

async fn create(partitions: i32, topics: &[String]) {
    let admin: AdminClient<DefaultClientContext> = settings().admin_config().create().unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        match result {
            Ok(t) => eprintln!("created {t}"),
            Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                eprintln!("{t} exists")
            }
            Err((t, e)) => panic!("creating {t}: {e}"),
        }
    }
}

async fn produce(topic: &str, count: usize, file: &str) {
    let body = std::fs::read_to_string(file).unwrap();
    let body = body.lines().next().unwrap().to_string();
    // The feed is not idempotent: tansu 0.6.0's storage is known to fail under fast
    // idempotent feeds; the loop below keeps gridflow's (idempotent) producer settings.
    let producer: FutureProducer = settings()
        .producer_config()
        .set("enable.idempotence", "false")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    for i in 0..count {
        let key = format!("meter-{}", i % 1000);
        loop {
            match producer.send_result(FutureRecord::to(topic).key(&key).payload(&body)) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    if let Some(done) = pending.next().await {
                        done.unwrap().unwrap();
                    }
                }
                Err((e, _)) => panic!("producing: {e}"),
            }
        }
        while pending.len() >= MAX_IN_FLIGHT {
            pending.next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(done) = pending.next().await {
        done.unwrap().map_err(|(e, _)| e).unwrap();
    }
    producer
        .flush(Timeout::After(Duration::from_secs(30)))
        .unwrap();
    eprintln!(
        "produced {count} records to {topic} in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

async fn bare_loop(input: &str, output: &str, count: usize, timeout: Duration) {
    let settings = settings();
    let group = format!("bare-loop-{}", std::process::id());
    // gridflow's 4 MiB prefetch default is per partition: its source reads each partition
    // from a queue of its own. Here one queue holds every partition's records, and a full
    // queue stops fetching for `fetch.queue.backoff.ms` (1 s): librdkafka's own 64 MiB.
    let consumer: StreamConsumer = settings
        .consumer_config(&group)
        .set("queued.max.messages.kbytes", "65536")
        .create()
        .unwrap();
    consumer.subscribe(&[input]).unwrap();
    let producer: FutureProducer = settings.producer_config().create().unwrap();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pending = FuturesUnordered::new();
    let (mut done, mut first) = (0usize, None::<Instant>);
    let mut last = Instant::now();
    while done < count {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            Some(result) = pending.next(), if !pending.is_empty() => {
                let (topic, partition, offset): (String, i32, i64) = result;
                consumer.store_offset(&topic, partition, offset).unwrap();
                done += 1;
                last = Instant::now();
            }
            message = consumer.recv(), if pending.len() < MAX_IN_FLIGHT => {
                let message = message.unwrap();
                first.get_or_insert_with(Instant::now);
                let (topic, partition, offset) =
                    (message.topic().to_string(), message.partition(), message.offset());
                let mut record = FutureRecord::<[u8], [u8]>::to(output)
                    .payload(message.payload().unwrap_or_default());
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                let delivery = producer.send_result(record).map_err(|(e, _)| e).unwrap();
                pending.push(async move {
                    delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
                    (topic, partition, offset)
                });
            }
        }
    }
    let seconds = first.map_or(0.0, |f| (last - f).as_secs_f64());
    println!(
        "records={done} seconds={seconds:.3} per_second={:.0}",
        if seconds > 0.0 {
            done as f64 / seconds
        } else {
            0.0
        }
    );
}

/// Waits until `topic` holds `count` records (the sum of its partitions' high watermarks, on a
/// topic written from offset 0), and prints when it saw them: `peers.sh` times another
/// process's run with it, from that process's start.
fn wait(topic: &str, count: i64, timeout: Duration) {
    use rdkafka::consumer::BaseConsumer;
    let consumer: BaseConsumer = settings()
        .consumer_config("bare-loop-wait")
        .create()
        .unwrap();
    let partitions = loop {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(m)
                if m.topics()
                    .first()
                    .is_some_and(|t| !t.partitions().is_empty()) =>
            {
                break m.topics()[0].partitions().len() as i32;
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let deadline = Instant::now() + timeout;
    let mut seen = 0;
    while Instant::now() < deadline {
        seen = (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(5))
                    .map_or(0, |(_, high)| high)
            })
            .sum::<i64>();
        if seen >= count {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            println!("records={seen} at_unix_ms={}", now.as_millis());
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("{topic}: {seen} records after {timeout:?}, not {count}");
    std::process::exit(1);
}
