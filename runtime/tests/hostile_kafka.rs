//! Hostile-world tests of the Kafka source (issue 24): what a record that cannot be processed
//! normally does to its partition's commits.
//!
//! - A panic outside the steps (a sink's key evaluation) or inside one is dead-lettered, and
//!   every later offset of the partition is committed (a record whose acknowledgement ended
//!   `Failed` used to stay at the head of the partition's offset tracker for good).
//! - The dead-letter topic refusing writes commits nothing past the failed record until it
//!   accepts them again (librdkafka's mock cluster: see the test).
//! - A sink down for longer than the retry budget makes the source wait (backpressure) and
//!   loses nothing, in order; only past `on_error.max_sink_wait_ms` is a record dead-lettered,
//!   with the reason.
//!
//! Black-box: the real binary against the real broker at `KAFKA_BROKERS` (except the dead-letter
//! test, which needs a broker that refuses one topic's writes). The panic in a sink's
//! key evaluation is the debug builds' test fault `GRIDFLOW_TEST_PANIC_ON_SINK_KEY` (see
//! `runtime/src/sinks/kafka.rs`); the step panic is the test fault
//! `GRIDFLOW_TEST_PANIC_ON_SLICE_STEP` (see `runtime/src/jmes/eval.rs`) on `[1::2147483647]` of
//! an array of two or more, where jmespath 0.5 overflowed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mock_kafka::{mock_cluster, mock_committed, mock_engine, mock_read, mock_settings};
use common::*;
use rdkafka::Offset;

/// The committed offset of `group` on partition 0 of `topic` (`None`: nothing committed).
async fn committed(group: &str, topic: &str) -> Option<i64> {
    let (group, topic) = (group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let probe = consumer(&group);
        let offsets = committed_offsets(&probe, &topic, 1);
        drop(probe);
        match offsets.get(&0) {
            Some(Offset::Offset(o)) => Some(*o),
            _ => None,
        }
    })
    .await
    .unwrap()
}

/// Waits until `group` has committed `want` on partition 0 of `topic`; the last seen offset.
async fn wait_committed(group: &str, topic: &str, want: i64, timeout: Duration) -> Option<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = committed(group, topic).await;
        if seen == Some(want) || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A metric's value in a scrape: the first series of `name` whose labels contain `with`.
fn metric(scrape: &str, name: &str, with: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(with))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Records `{"id": "r<i>", "seq": i}` keyed by their id, with `poison` at index `at`.
fn records(n: usize, at: Option<(usize, &str)>) -> Vec<(Option<String>, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let body = match at {
                Some((j, poison)) if i == j => poison.to_string(),
                _ => format!(r#"{{"id":"r{i}","seq":{i}}}"#),
            };
            (Some(format!("r{i}")), body.into_bytes())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_sinks_key_evaluation_is_dead_lettered_and_the_partition_commits_on() {
    let input = unique("t.hostile.key.in");
    let output = unique("t.hostile.key.out");
    let dlq = format!("{output}.dlq");
    let group = unique("g");
    for t in [&input, &output, &dlq] {
        create_topic(t, 1).await;
    }
    let marker = unique("boom");
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "p.toml",
        &format!("name='hostile-key'\n[source]\nkind='kafka'\ntopics=['{input}']\ngroup='{group}'\n[sink]\nkind='kafka'\ntopic='{output}'\nkey='id'\n"),
    );
    let gf = Gridflow::start_with_env(
        dir.path(),
        &[],
        &[("GRIDFLOW_TEST_PANIC_ON_SINK_KEY", &marker)],
    );
    // The fourth record's key evaluation panics.
    let poison = format!(r#"{{"id":"{marker}","seq":3}}"#);
    produce_many(&input, records(10, Some((3, &poison)))).await;

    let out = consume(&output, 9, Duration::from_secs(60)).await;
    assert_eq!(
        out.len(),
        9,
        "every other record is delivered; log:\n{}",
        gf.log_text()
    );
    let dead = consume(&dlq, 1, Duration::from_secs(30)).await;
    assert_eq!(
        dead.len(),
        1,
        "the panicking record is dead-lettered; log:\n{}",
        gf.log_text()
    );
    assert_eq!(dead[0].payload, poison.as_bytes());
    assert_eq!(dead[0].headers["gridflow.error.code"], "panicked");
    assert_eq!(dead[0].headers["gridflow.source.offset"], "3");
    // Every later offset of the partition is committed.
    let seen = wait_committed(&group, &input, 10, Duration::from_secs(30)).await;
    assert_eq!(
        seen,
        Some(10),
        "the group's committed offset reaches the end of the partition; log:\n{}",
        gf.log_text()
    );
    let scrape = gf.metrics().await;
    let age = metric(
        &scrape,
        "gridflow_kafka_oldest_unsettled_seconds",
        &format!("topic=\"{input}\""),
    );
    assert!(
        age.is_some_and(|a| a < 5.0),
        "the partition's oldest unsettled record is reported and young: {age:?}"
    );
    assert_eq!(
        metric(
            &scrape,
            "gridflow_messages_dead_lettered_total",
            "code=\"panicked\""
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_step_is_dead_lettered_and_the_partition_commits_on() {
    let input = unique("t.hostile.step.in");
    let output = unique("t.hostile.step.out");
    let dlq = format!("{output}.dlq");
    let group = unique("g");
    for t in [&input, &output, &dlq] {
        create_topic(t, 1).await;
    }
    let dir = test_dir();
    // The debug build's test fault: this slice of an array of two or more panics.
    write_pipeline(
        dir.path(),
        "p.toml",
        &format!("name='hostile-step'\n[source]\nkind='kafka'\ntopics=['{input}']\ngroup='{group}'\n[[steps]]\nkind='map'\nexpression='{{id: id, seq: seq, s: items[1::2147483647]}}'\n[sink]\nkind='kafka'\ntopic='{output}'\n"),
    );
    let gf = Gridflow::start_with_env(
        dir.path(),
        &[],
        &[("GRIDFLOW_TEST_PANIC_ON_SLICE_STEP", "2147483647")],
    );
    let poison = r#"{"id":"r5","seq":5,"items":[1,2,3]}"#;
    produce_many(&input, records(10, Some((5, poison)))).await;

    let out = consume(&output, 9, Duration::from_secs(60)).await;
    assert_eq!(out.len(), 9, "log:\n{}", gf.log_text());
    let dead = consume(&dlq, 1, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 1, "log:\n{}", gf.log_text());
    assert_eq!(dead[0].headers["gridflow.error.code"], "step_panicked");
    assert_eq!(dead[0].headers["gridflow.source.offset"], "5");
    let seen = wait_committed(&group, &input, 10, Duration::from_secs(30)).await;
    assert_eq!(seen, Some(10), "log:\n{}", gf.log_text());
}

/// The dead-letter topic refusing writes: librdkafka's mock cluster (in this process, with the
/// engine as a library), because tansu 0.6.0 cannot do it: a topic deleted under a running
/// idempotent producer made its storage panic (`idempotent_message_check`: "more or less than
/// one row") and the broker stopped answering. The mock cluster answers the dead-letter topic's
/// metadata with `TOPIC_AUTHORIZATION_FAILED` (an ACL that refuses the writes), then with no
/// error again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_refusing_writes_commits_nothing_until_it_accepts_them() {
    use gridflow::config::pipeline::load_file;
    use gridflow::sources::HttpRoutes;
    use rdkafka::types::RDKafkaRespErr;

    let cluster = mock_cluster(&["in.v1", "out.v1", "dlq.v1"]);
    let settings = mock_settings(&cluster);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        "[source]\nkind='kafka'\ntopics=['in.v1']\ngroup='relay'\n[[steps]]\nkind='map'\nexpression='{id: id, seq: seq}'\n[sink]\nkind='kafka'\ntopic='out.v1'\n[on_error]\ndead_letter_topic='dlq.v1'\nmax_attempts=2\ninitial_backoff_ms=50\nmax_backoff_ms=200\n",
    )
    .unwrap();
    let mut engine = mock_engine(&settings, Arc::new(HttpRoutes::default()), dir.path());
    engine
        .start(load_file(&path, &|_| None).unwrap())
        .await
        .unwrap();
    let producer: gridflow::kafka::Producer = settings.producer().unwrap();
    let produce = |body: String| {
        let producer = producer.clone();
        async move {
            producer
                .current()
                .send(
                    rdkafka::producer::FutureRecord::<str, str>::to("in.v1").payload(&body),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
        }
    };
    let good = |i: usize| format!(r#"{{"id":"r{i}","seq":{i}}}"#);
    let committed = |want: i64, wait: Duration| {
        let settings = settings.clone();
        async move {
            let deadline = Instant::now() + wait;
            loop {
                let s = settings.clone();
                let seen =
                    tokio::task::spawn_blocking(move || mock_committed(&s, "relay", "in.v1"))
                        .await
                        .unwrap();
                if seen == Some(want) || Instant::now() > deadline {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    // Two records go through and are committed.
    for i in 0..2 {
        produce(good(i)).await;
    }
    assert_eq!(
        mock_read(&settings, "out.v1", 2, Duration::from_secs(30))
            .await
            .len(),
        2
    );
    assert_eq!(committed(2, Duration::from_secs(30)).await, Some(2));

    // The dead-letter topic refuses writes; offset 2 is not JSON (the map step fails it),
    // 3 to 9 are good.
    cluster
        .topic_error(
            "dlq.v1",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    produce("this is not JSON".to_string()).await;
    for i in 3..10 {
        produce(good(i)).await;
    }
    // The records behind the failed one are delivered, but nothing past it is committed.
    assert_eq!(
        mock_read(&settings, "out.v1", 9, Duration::from_secs(30))
            .await
            .len(),
        9
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        committed(2, Duration::ZERO).await,
        Some(2),
        "nothing is committed past a record the dead-letter topic refuses"
    );
    assert!(mock_read(&settings, "dlq.v1", 1, Duration::from_secs(1))
        .await
        .is_empty());

    // It accepts writes again: the dead letter is written and everything is committed.
    cluster
        .topic_error("dlq.v1", RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    let dead = mock_read(&settings, "dlq.v1", 1, Duration::from_secs(60)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"this is not JSON");
    assert_eq!(dead[0].headers["gridflow.error.code"], "invalid_json");
    assert_eq!(dead[0].headers["gridflow.source.offset"], "2");
    assert_eq!(committed(10, Duration::from_secs(60)).await, Some(10));
    engine.shutdown().await;
}

/// An HTTP target on 127.0.0.1 that answers `503` while `down` is set, else `200`, and keeps
/// the bodies it accepted, in arrival order; counts the refused requests.
struct Target {
    url: String,
    down: Arc<std::sync::atomic::AtomicBool>,
    accepted: Arc<Mutex<Vec<serde_json::Value>>>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

async fn target() -> Target {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let down = Arc::new(AtomicBool::new(true));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let (d, a, r) = (down.clone(), accepted.clone(), refused.clone());
    let app = axum::Router::new().route(
        "/in",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (d, a, r) = (d.clone(), a.clone(), r.clone());
            async move {
                if d.load(Ordering::SeqCst) {
                    r.fetch_add(1, Ordering::SeqCst);
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                a.lock().unwrap().push(value);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Target {
        url: format!("http://{addr}/in"),
        down,
        accepted,
        refused,
    }
}

/// A Kafka → HTTP pipeline with a retry budget of well under a second.
fn http_sink_pipeline(
    input: &str,
    group: &str,
    url: &str,
    dlq: &str,
    max_sink_wait_ms: Option<u64>,
) -> String {
    let wait = max_sink_wait_ms
        .map(|ms| format!("max_sink_wait_ms={ms}\n"))
        .unwrap_or_default();
    format!("name='hostile-sink'\n[source]\nkind='kafka'\ntopics=['{input}']\ngroup='{group}'\norder_by='key'\n[sink]\nkind='http'\nurl='{url}'\n[on_error]\ndead_letter_topic='{dlq}'\nmax_attempts=2\ninitial_backoff_ms=50\nmax_backoff_ms=200\n{wait}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_down_past_the_retry_budget_makes_the_source_wait_and_loses_nothing_in_order() {
    use std::sync::atomic::Ordering;
    let input = unique("t.hostile.sink.in");
    let dlq = unique("t.hostile.sink.dlq");
    let group = unique("g");
    create_topic(&input, 1).await;
    create_topic(&dlq, 1).await;
    let target = target().await;
    let dir = test_dir();
    // One message in flight at a time: the HTTP sink keeps no order of its own between
    // messages sent at once (see the sink's documentation), the engine's wait must keep it.
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[engine]\nmax_in_flight = 1\n",
    )
    .unwrap();
    write_pipeline(
        dir.path(),
        "p.toml",
        &http_sink_pipeline(&input, &group, &target.url, &dlq, None),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    // 30 records of 3 keys, produced while the target is down.
    let records: Vec<_> = (0..30)
        .map(|i| {
            let key = format!("k{}", i % 3);
            let body = format!(r#"{{"key":"{key}","seq":{i}}}"#);
            (Some(key), body.into_bytes())
        })
        .collect();
    produce_many(&input, records).await;
    // Down for several times the retry budget (2 attempts, backoff under 200 ms).
    let deadline = Instant::now() + Duration::from_secs(60);
    while target.refused.load(Ordering::SeqCst) < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        target.refused.load(Ordering::SeqCst) >= 10,
        "the sink was tried while down"
    );
    assert!(
        target.accepted.lock().unwrap().is_empty(),
        "nothing accepted while down"
    );
    assert_eq!(
        committed(&group, &input).await,
        None,
        "nothing is committed while the sink is down; log:\n{}",
        gf.log_text()
    );
    let scrape = gf.metrics().await;
    assert!(
        metric(&scrape, "gridflow_sink_waits_total", "hostile-sink").is_some_and(|n| n > 0.0),
        "the waits are counted"
    );
    assert!(
        metric(
            &scrape,
            "gridflow_kafka_oldest_unsettled_seconds",
            &format!("topic=\"{input}\"")
        )
        .is_some_and(|age| age >= 3.0),
        "the age of the oldest unsettled record grows while it waits:\n{scrape}"
    );
    // Back up: every record arrives, in order per key, and none is dead-lettered.
    target.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while target.accepted.lock().unwrap().len() < 30 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accepted = target.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 30, "log:\n{}", gf.log_text());
    for key in ["k0", "k1", "k2"] {
        let seqs: Vec<i64> = accepted
            .iter()
            .filter(|v| v["key"] == key)
            .map(|v| v["seq"].as_i64().unwrap())
            .collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "key {key} arrives in order");
        assert_eq!(seqs.len(), 10, "key {key}: every record, once");
    }
    assert_eq!(
        wait_committed(&group, &input, 30, Duration::from_secs(30)).await,
        Some(30)
    );
    let dead = consume(&dlq, 1, Duration::from_secs(3)).await;
    assert!(dead.is_empty(), "nothing is dead-lettered: {dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_down_past_max_sink_wait_is_dead_lettered_with_the_reason() {
    let input = unique("t.hostile.sinkwait.in");
    let dlq = unique("t.hostile.sinkwait.dlq");
    let group = unique("g");
    create_topic(&input, 1).await;
    create_topic(&dlq, 1).await;
    let target = target().await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "p.toml",
        &http_sink_pipeline(&input, &group, &target.url, &dlq, Some(1500)),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    produce_many(&input, records(2, None)).await;
    let dead = consume(&dlq, 2, Duration::from_secs(60)).await;
    assert_eq!(dead.len(), 2, "log:\n{}", gf.log_text());
    for d in &dead {
        assert_eq!(d.headers["gridflow.error.code"], "retries_exhausted");
        let message = &d.headers["gridflow.error.message"];
        assert!(
            message.contains("503") && message.contains("max_sink_wait_ms"),
            "the reason says the sink stayed down past the wait: {message}"
        );
        let attempts: u32 = d.headers["gridflow.error.attempts"].parse().unwrap();
        assert!(
            attempts > 2,
            "retried past max_attempts while waiting: {attempts}"
        );
    }
    assert_eq!(
        wait_committed(&group, &input, 2, Duration::from_secs(30)).await,
        Some(2)
    );
}
