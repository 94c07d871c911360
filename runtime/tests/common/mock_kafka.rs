//! librdkafka's mock cluster (in this process, with the engine as a library), for the faults
//! tansu cannot make: a broker going down, injected request errors, a topic refusing writes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gridflow::config::EngineConfig;
use gridflow::engine::{Engine, EngineContext};
use gridflow::kafka::KafkaSettings;
use gridflow::sources::HttpRoutes;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::Offset;

use super::{close_consumer, read_records, unique, Record};

/// A mock cluster of one broker with `topics` (one partition each).
pub fn mock_cluster(topics: &[&str]) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    for topic in topics {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    cluster
}

/// Settings for `cluster` (gridflow's defaults otherwise).
pub fn mock_settings(cluster: &MockCluster<'static, DefaultProducerContext>) -> KafkaSettings {
    KafkaSettings {
        brokers: cluster.bootstrap_servers(),
        ..KafkaSettings::default()
    }
}

/// An engine on the cluster of `settings`, serving HTTP sources through `routes`, with its
/// dead letters under `dir/dl` and default limits.
pub fn mock_engine(settings: &KafkaSettings, routes: Arc<HttpRoutes>, dir: &Path) -> Engine {
    Engine::new(EngineContext {
        kafka: settings.clone(),
        producers: settings.producers().unwrap(),
        routes,
        dead_letters_dir: dir.join("dl"),
        limits: EngineConfig::default(),
        contracts: Default::default(),
        tracer: None,
    })
}

/// The committed offset of `group` on partition 0 of `topic` of the mock cluster (`None`:
/// nothing committed, or the cluster did not answer).
pub fn mock_committed(settings: &KafkaSettings, group: &str, topic: &str) -> Option<i64> {
    let probe: StreamConsumer = settings.consumer_config(group).create().unwrap();
    let mut query = rdkafka::TopicPartitionList::new();
    query.add_partition(topic, 0);
    let offsets = probe
        .committed_offsets(query, Duration::from_secs(10))
        .ok()?;
    let offset = offsets
        .elements_for_topic(topic)
        .first()
        .map(|e| e.offset());
    drop(offsets);
    match offset {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

/// Reads `topic` of the mock cluster from the start with a fresh group until `expected`
/// records or `wait`.
pub async fn mock_read(
    settings: &KafkaSettings,
    topic: &str,
    expected: usize,
    wait: Duration,
) -> Vec<Record> {
    let reader: StreamConsumer = settings
        .consumer_config(&unique("reader"))
        .create()
        .unwrap();
    reader.subscribe(&[topic]).unwrap();
    let out = read_records(&reader, Some(expected), wait).await;
    close_consumer(reader).await;
    out
}
