//! Black-box: the dead-letter route. A bad input gets a problem+json answer naming the step,
//! and its original bytes land on the dead-letter topic with the error headers.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn pipeline(topic: &str, dlq: &str) -> String {
    format!(
        r#"
name = "dlq-test"
[source]
kind = "http"
path = "/ingest"
[[steps]]
kind = "xml_to_json"
[[steps]]
kind = "map"
expression = "{{v: abs(to_number(Reading.value))}}"
[sink]
kind = "kafka"
topic = "{topic}"
[on_error]
dead_letter_topic = "{dlq}"
"#
    )
}

fn assert_envelope(record: &Record, original: &[u8], step: &str, code: &str, correlation_id: &str) {
    assert_eq!(record.payload, original, "the original bytes, unchanged");
    let h = &record.headers;
    assert_eq!(h["gridflow.pipeline"], "dlq-test");
    assert_eq!(h["gridflow.error.step"], step);
    assert_eq!(h["gridflow.error.code"], code);
    assert!(!h["gridflow.error.message"].is_empty());
    assert_eq!(h["gridflow.error.attempts"], "1");
    assert_eq!(h["gridflow.correlation_id"], correlation_id);
    let failed_at = &h["gridflow.failed_at"];
    assert!(
        time::OffsetDateTime::parse(failed_at, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "RFC 3339: {failed_at}"
    );
    assert_eq!(
        h["gridflow.pipeline.version"].len(),
        64,
        "sha256 of the file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_xml_and_mapping_failures_are_dead_lettered() {
    let topic = unique("t.out.v1");
    let dlq = format!("{topic}.dlq");
    create_topic(&topic, 1).await;
    create_topic(&dlq, 1).await;
    let dir = test_dir();
    write_pipeline(dir.path(), "dlq-test.toml", &pipeline(&topic, &dlq));
    let gf = Gridflow::start(dir.path(), &[]);

    // 1. Malformed XML: 400, step xml_to_json.
    let malformed: &[u8] = b"<Reading><value>12</Reading>";
    let r = http()
        .post(gf.http_url("/ingest"))
        .header("content-type", "application/xml")
        .header("x-correlation-id", "bad-xml-1")
        .body(malformed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["status"], 400);
    assert_eq!(problem["step"], "steps[0].xml_to_json");
    assert_eq!(problem["code"], "invalid_xml");
    assert_eq!(problem["correlation_id"], "bad-xml-1");
    assert!(problem["detail"].as_str().unwrap().len() > 5);

    // 2. Mapping failure (abs of null: "twelve" is not a number): 422, step map.
    let unmappable: &[u8] = b"<Reading><value>twelve</value></Reading>";
    let r = http()
        .post(gf.http_url("/ingest"))
        .header("content-type", "application/xml")
        .header("x-correlation-id", "bad-map-1")
        .body(unmappable)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["step"], "steps[1].map");
    assert_eq!(problem["code"], "mapping_error");

    // 3. Invalid JSON body: 400 at the source.
    let r = http()
        .post(gf.http_url("/ingest"))
        .header("content-type", "application/json")
        .header("x-correlation-id", "bad-json-1")
        .body("{\"x\":")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["step"], "source.http");
    assert_eq!(problem["code"], "invalid_json");

    // 4. A good one still goes through.
    let r = http()
        .post(gf.http_url("/ingest"))
        .header("content-type", "application/xml")
        .body("<Reading><value>-3</value></Reading>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let dead = consume(&dlq, 3, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 3, "three dead letters");
    let by_id = |id: &str| {
        dead.iter()
            .find(|r| r.headers["gridflow.correlation_id"] == id)
            .unwrap()
    };
    assert_envelope(
        by_id("bad-xml-1"),
        malformed,
        "steps[0].xml_to_json",
        "invalid_xml",
        "bad-xml-1",
    );
    assert_envelope(
        by_id("bad-map-1"),
        unmappable,
        "steps[1].map",
        "mapping_error",
        "bad-map-1",
    );
    assert_envelope(
        by_id("bad-json-1"),
        b"{\"x\":",
        "source.http",
        "invalid_json",
        "bad-json-1",
    );

    let out = consume(&topic, 1, Duration::from_secs(20)).await;
    assert_eq!(out.len(), 1, "only the good message reaches the sink");
    assert_eq!(out[0].json()["v"].as_f64(), Some(3.0));
    assert!(consume_for(&topic, Duration::from_secs(1)).await.len() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_kafka_record_is_dead_lettered_with_its_source_and_the_flow_goes_on() {
    let input = unique("t.raw.v1");
    let output = unique("t.clean.v1");
    let dlq = format!("{output}.dlq");
    for t in [&input, &output, &dlq] {
        create_topic(t, 1).await;
    }
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "k2k.toml",
        &format!(
            "name='dlq-test'\n[source]\nkind='kafka'\ntopics=['{input}']\ngroup='{}'\n[[steps]]\nkind='map'\nexpression='{{n: abs(n)}}'\n[sink]\nkind='kafka'\ntopic='{output}'\n",
            unique("g")
        ),
    );
    produce(&input, Some("k"), br#"{"n":-1}"#, &[("trace", "t-1")]).await;
    produce(
        &input,
        Some("k"),
        b"not json at all",
        &[("trace", "t-2"), ("gridflow.correlation_id", "corr-2")],
    )
    .await;
    produce(&input, Some("k"), br#"{"n":"x"}"#, &[]).await;
    produce(&input, Some("k"), br#"{"n":-4}"#, &[("trace", "t-4")]).await;
    let _gf = Gridflow::start(dir.path(), &[]);

    let out = consume(&output, 2, Duration::from_secs(30)).await;
    let values: Vec<f64> = out
        .iter()
        .map(|r| r.json()["n"].as_f64().unwrap())
        .collect();
    assert_eq!(
        values,
        vec![1.0, 4.0],
        "the good records, in order: the bad ones did not stop the flow"
    );
    assert_eq!(out[0].key.as_deref(), Some("k"), "the input key is kept");
    assert_eq!(
        out[0].headers["trace"], "t-1",
        "input headers are passed on"
    );

    let mut dead = consume(&dlq, 2, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 2);
    // Dead-letter writes of one partition may complete in any order: sort by source offset.
    dead.sort_by_key(|r| r.headers["gridflow.source.offset"].parse::<i64>().unwrap());
    assert_eq!(dead[0].payload, b"not json at all");
    assert_eq!(dead[0].headers["gridflow.error.code"], "invalid_json");
    assert_eq!(dead[0].headers["gridflow.error.step"], "steps[0].map");
    assert_eq!(
        dead[0].headers["gridflow.correlation_id"], "corr-2",
        "taken from the record"
    );
    assert_eq!(dead[0].headers["gridflow.source.topic"], input);
    assert_eq!(dead[0].headers["gridflow.source.partition"], "0");
    assert_eq!(dead[0].headers["gridflow.source.offset"], "1");
    assert_eq!(
        dead[0].headers["trace"], "t-2",
        "the record's own headers are kept"
    );
    assert_eq!(dead[1].payload, br#"{"n":"x"}"#);
    assert_eq!(dead[1].headers["gridflow.error.code"], "mapping_error");
    assert_eq!(dead[1].headers["gridflow.source.offset"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_step_fails_the_message_not_the_pipeline() {
    let topic = unique("t.panic.v1");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = test_dir();
    // The debug build's test fault: this slice of an array of two or more panics.
    write_pipeline(
        dir.path(),
        "p.toml",
        &format!("[source]\nkind='http'\npath='/in'\n[[steps]]\nkind='map'\nexpression='[1::2147483647]'\n[sink]\nkind='kafka'\ntopic='{topic}'\n"),
    );
    let gf = Gridflow::start_with_env(
        dir.path(),
        &[],
        &[("GRIDFLOW_TEST_PANIC_ON_SLICE_STEP", "2147483647")],
    );
    let post = |body: &'static str| {
        http()
            .post(gf.http_url("/in"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = post("[1,2,3]").await.unwrap();
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "step_panicked");
    assert_eq!(problem["step"], "steps[0].map");
    // The pipeline still serves.
    let r = post("{\"a\":1}").await.unwrap();
    assert_eq!(r.status(), 202);
    let dead = consume(&format!("{topic}.dlq"), 1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"[1,2,3]");
}

/// A dead letter the dead-letter topic refuses for good (larger than the producer's
/// `message.max.bytes`) goes to the local fallback file, and is counted as failed and in
/// `gridflow_dead_letters_fallback_total`, not as dead-lettered: it is not where dead letters
/// are looked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_written_to_the_fallback_file_is_counted_as_failed() {
    let topic = unique("t.fallback.v1");
    let dlq = format!("{topic}.dlq");
    create_topic(&topic, 1).await;
    create_topic(&dlq, 1).await;
    let dir = test_dir();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[kafka.properties]\n'message.max.bytes' = 2000\n",
    )
    .unwrap();
    let name = "fallback-test";
    write_pipeline(
        dir.path(),
        "fallback.toml",
        &format!(
            "name = '{name}'\n[source]\nkind = 'http'\npath = '/in'\n[[steps]]\nkind = 'xml_to_json'\n\
             [sink]\nkind = 'kafka'\ntopic = '{topic}'\n[on_error]\ndead_letter_topic = '{dlq}'\n"
        ),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    // Malformed XML of 3000 bytes: dead-lettered, but too large for the dead-letter topic.
    let big = format!("<Reading><v>{}</Reading>", "x".repeat(3000));
    let r = http()
        .post(gf.http_url("/in"))
        .header("content-type", "application/xml")
        .header("x-correlation-id", "too-big-1")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = std::fs::read_to_string(
        dir.path()
            .join(format!("dead-letters/{name}.fallback.dlq.ndjson")),
    )
    .expect("the fallback file");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["payload"], big.as_str());
    assert_eq!(lines[0]["headers"]["gridflow.correlation_id"], "too-big-1");
    assert_eq!(lines[0]["headers"]["gridflow.error.code"], "invalid_xml");

    let metrics = gf.metrics().await;
    let p = format!("pipeline=\"{name}\"");
    assert_eq!(
        sample(&metrics, "gridflow_dead_letters_fallback_total", &[&p]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "gridflow_messages_failed_total", &[&p]),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "gridflow_messages_dead_lettered_total", &[&p]),
        None,
        "not counted as dead-lettered"
    );
    assert!(consume_for(&dlq, Duration::from_secs(2)).await.is_empty());
}
