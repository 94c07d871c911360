//! Fault injection with librdkafka's mock cluster: the broker goes down under a running
//! pipeline. Transient faults are retried with backoff and the message is delivered once the
//! broker is back; when it stays down past the retry budget the caller gets 503 and nothing
//! is acknowledged. Injected request errors (produce, fetch, offset commit) are retried and
//! every record is delivered once, in order.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::mock_kafka::{mock_cluster, mock_engine, mock_read, mock_settings};
use gridflow::config::pipeline::load_file;
use gridflow::kafka::KafkaSettings;
use gridflow::sources::HttpRoutes;

async fn serve(routes: Arc<HttpRoutes>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, gridflow::sources::route::router(routes))
            .await
            .unwrap()
    });
    format!("http://{addr}/in")
}

/// The payloads of `topic` from the start, until `expected` records or `wait` passed.
async fn read_all(
    settings: &KafkaSettings,
    topic: &str,
    expected: usize,
    wait: Duration,
) -> Vec<Vec<u8>> {
    mock_read(settings, topic, expected, wait)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_then_up_is_retried_and_delivered_down_for_good_is_503() {
    let cluster = mock_cluster(&["out.v1", "out.v1.dlq"]);
    let mut properties = BTreeMap::new();
    properties.insert("message.timeout.ms".to_string(), "300".to_string());
    let settings = KafkaSettings {
        brokers: cluster.bootstrap_servers(),
        properties,
        ..KafkaSettings::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faulty.toml");
    std::fs::write(
        &path,
        "[source]\nkind='http'\npath='/in'\n[sink]\nkind='kafka'\ntopic='out.v1'\n[on_error]\nmax_attempts=20\ninitial_backoff_ms=50\nmax_backoff_ms=200\n",
    )
    .unwrap();
    let routes = Arc::new(HttpRoutes::default());
    let mut engine = mock_engine(&settings, Arc::clone(&routes), dir.path());
    engine
        .start(load_file(&path, &|_| None).unwrap())
        .await
        .unwrap();
    let url = serve(Arc::clone(&routes)).await;
    let client = reqwest::Client::new();

    // Healthy: 202.
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"n":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // Down, then up again while the message is being retried: still 202, delivered once.
    cluster.broker_down(1).unwrap();
    let pending = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(r#"{"n":2}"#)
                .send()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!pending.is_finished(), "no answer while the broker is down");
    cluster.broker_up(1).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 202);

    let delivered = read_all(&settings, "out.v1", 3, Duration::from_secs(10)).await;
    assert_eq!(
        delivered,
        vec![br#"{"n":1}"#.to_vec(), br#"{"n":2}"#.to_vec()]
    );
    assert!(read_all(&settings, "out.v1.dlq", 1, Duration::from_secs(5))
        .await
        .is_empty());
    engine.shutdown().await;

    // Down for good, with a small budget: 503, and nothing written anywhere.
    std::fs::write(
        &path,
        "[source]\nkind='http'\npath='/in'\n[sink]\nkind='kafka'\ntopic='out.v1'\n[on_error]\nmax_attempts=2\ninitial_backoff_ms=20\nmax_backoff_ms=50\n",
    )
    .unwrap();
    engine
        .start(load_file(&path, &|_| None).unwrap())
        .await
        .unwrap();
    cluster.broker_down(1).unwrap();
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"n":3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    cluster.broker_up(1).unwrap();
    let delivered = read_all(&settings, "out.v1", 3, Duration::from_secs(10)).await;
    assert_eq!(delivered.len(), 2, "the two earlier messages only");
    assert!(
        !delivered.contains(&br#"{"n":3}"#.to_vec()),
        "the refused message was not written"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_request_errors_are_retried_and_delivered_once() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let cluster = mock_cluster(&["in.v1", "out.v1", "out.v1.dlq"]);
    let settings = mock_settings(&cluster);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        "[source]\nkind='kafka'\ntopics=['in.v1']\ngroup='relay'\n[sink]\nkind='kafka'\ntopic='out.v1'\n",
    )
    .unwrap();
    let mut engine = mock_engine(&settings, Arc::new(HttpRoutes::default()), dir.path());

    let producer: gridflow::kafka::Producer = settings.producer().unwrap();
    for n in 0..20 {
        producer
            .current()
            .send(
                rdkafka::producer::FutureRecord::to("in.v1")
                    .key("k")
                    .payload(&format!("{{\"n\":{n}}}")),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    // The input is there before the pipeline starts; then every kind of request the flow
    // makes (fetch, produce, offset commit) fails a few times first.
    use RDKafkaRespErr::*;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE],
    );

    engine
        .start(load_file(&path, &|_| None).unwrap())
        .await
        .unwrap();
    let delivered = read_all(&settings, "out.v1", 21, Duration::from_secs(20)).await;
    let expected: Vec<Vec<u8>> = (0..20)
        .map(|n| format!("{{\"n\":{n}}}").into_bytes())
        .collect();
    assert_eq!(delivered, expected, "every record once, in order");
    assert!(read_all(&settings, "out.v1.dlq", 1, Duration::from_secs(3))
        .await
        .is_empty());
    engine.shutdown().await;
}
