//! Black-box: the HTTP source → steps → Kafka sink path of the real binary, against a real
//! broker. The ENTSO-E actual total load flow is the shipped pipeline file itself.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

const A65: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/samples/entsoe/A65-actual-total-load-BE.xml"
);
const SHIPPED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../pipelines/entsoe-actual-load.toml"
);

/// The shipped ENTSO-E pipeline with its topics renamed, so tests do not share topics.
fn entsoe_pipeline(topic: &str, dlq: &str) -> String {
    std::fs::read_to_string(SHIPPED)
        .unwrap()
        .replace("energy.load.actual.v1.${GRIDFLOW_ENV:-dev}.dlq", dlq)
        .replace(
            "\"energy.load.actual.v1.${GRIDFLOW_ENV:-dev}\"",
            &format!("\"{topic}\""),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entsoe_actual_load_lands_one_event_per_point() {
    let topic = unique("energy.load.actual.v1");
    let dlq = format!("{topic}.dlq");
    create_topic(&topic, 3).await;
    create_topic(&dlq, 1).await;
    let dir = test_dir();
    // The shipped contracts, for the pipeline's validate step.
    std::fs::write(
        dir.path().join("gridflow.toml"),
        format!(
            "[paths]\ncontracts = '{}/../contracts'\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    write_pipeline(
        dir.path(),
        "entsoe-actual-load.toml",
        &entsoe_pipeline(&topic, &dlq),
    );
    let gf = Gridflow::start(dir.path(), &[]);

    let body = std::fs::read(A65).unwrap();
    let response = http()
        .post(gf.http_url("/ingest/entsoe/actual-load"))
        .header("content-type", "application/xml")
        .header("x-correlation-id", "test-a65-1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    assert_eq!(response.headers()["x-correlation-id"], "test-a65-1");
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["correlation_id"], "test-a65-1");
    assert_eq!(reply["messages"], 96);

    let records = consume(&topic, 96, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 96, "every point is on the topic, once");
    let envelopes: Vec<Value> = records.iter().map(Record::json).collect();
    // The kit's envelope around each point (contracts/load-actual-event/1).
    let mut ids = BTreeSet::new();
    for e in &envelopes {
        assert_eq!(e["eventType"], "energy.load.actual", "{e}");
        assert_eq!(e["eventVersion"], 1);
        assert_eq!(e["sourceSystem"], "gridflow");
        assert_eq!(e["correlationId"], "test-a65-1");
        assert_eq!(e["partitionKey"], "10YBE----------2");
        assert_eq!(e["occurredAt"], e["payload"]["start"]);
        ids.insert(e["eventId"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 96, "one event id per point");
    let events: Vec<Value> = envelopes.iter().map(|e| e["payload"].clone()).collect();
    let positions: BTreeSet<i64> = events
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(positions, (1..=96).collect::<BTreeSet<_>>());
    let first = events.iter().find(|e| e["position"] == 1).unwrap();
    assert_eq!(first["quantity"], 9175);
    assert_eq!(first["area"], "10YBE----------2");
    assert_eq!(first["unit"], "MAW");
    assert_eq!(first["resolution"], "PT15M");
    assert_eq!(first["period_start"], "2026-01-13T23:00Z");
    assert_eq!(first["period_end"], "2026-01-14T23:00Z");
    assert_eq!(first["document_id"], "5c1d0e4f2a7b4c1e9d3f6a8b0c2e4d6f");
    // Each point carries its own UTC interval (the timeseries step).
    assert_eq!(first["start"], "2026-01-13T23:00:00Z");
    assert_eq!(first["end"], "2026-01-13T23:15:00Z");
    let second = events.iter().find(|e| e["position"] == 2).unwrap();
    assert_eq!(second["quantity"], 10817);
    assert_eq!(second["start"], "2026-01-13T23:15:00Z");
    let last = events.iter().find(|e| e["position"] == 96).unwrap();
    assert_eq!(last["end"], "2026-01-14T23:00:00Z");
    for r in &records {
        assert_eq!(
            r.key.as_deref(),
            Some("10YBE----------2"),
            "keyed by partitionKey, the area"
        );
        assert_eq!(
            r.headers.get("gridflow.correlation_id").map(String::as_str),
            Some("test-a65-1")
        );
        assert_eq!(
            r.headers.get("gridflow.pipeline").map(String::as_str),
            Some("entsoe-actual-load")
        );
    }
    // One key: one partition, so the points keep their order.
    let in_order: Vec<i64> = events
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(in_order, (1..=96).collect::<Vec<_>>());
    assert!(
        consume_for(&dlq, Duration::from_secs(1)).await.is_empty(),
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_correlation_id_and_json_bodies() {
    let topic = unique("t.json.v1");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "json.toml",
        &format!(
            "[source]\nkind='http'\npath='/in'\n[[steps]]\nkind='split'\nexpression='samples'\nmerge='{{source: source}}'\n[sink]\nkind='kafka'\ntopic='{topic}'\nkey='source'\n"
        ),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let sample = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/samples/frequency/grid-frequency-10Hz.json"
    ))
    .unwrap();
    let expected = serde_json::from_slice::<Value>(&sample).unwrap()["samples"]
        .as_array()
        .unwrap()
        .len();
    let response = http()
        .post(gf.http_url("/in"))
        .header("content-type", "application/json")
        .body(sample)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let generated = response.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        uuid::Uuid::parse_str(&generated).unwrap().get_version_num(),
        7,
        "a UUID v7: {generated}"
    );
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["messages"], expected);
    let records = consume(&topic, expected, Duration::from_secs(30)).await;
    assert_eq!(records.len(), expected);
    assert_eq!(records[0].json()["source"], "pmu-lyon-ouest-01");
    assert!(records[0].json()["f"].is_number());
    assert!(records
        .iter()
        .all(|r| r.headers["gridflow.correlation_id"] == generated));

    // Unknown path and wrong method: problem+json.
    let r = http()
        .post(gf.http_url("/nope"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = http().get(gf.http_url("/in")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // Without X-Correlation-ID, a W3C traceparent's trace id is the correlation id.
    let r = http()
        .post(gf.http_url("/in"))
        .header("content-type", "application/json")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(r#"{"samples": [{"f": 50.0}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.headers()["x-correlation-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_named_and_other_pipelines_run() {
    let good = unique("t.good.v1");
    create_topic(&good, 1).await;
    create_topic(&format!("{good}.dlq"), 1).await;
    let missing = unique("t.missing.v1");
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "good.toml",
        &format!("[source]\nkind='http'\npath='/good'\n[sink]\nkind='kafka'\ntopic='{good}'\n"),
    );
    write_pipeline(
        dir.path(),
        "bad.toml",
        &format!("[source]\nkind='http'\npath='/bad'\n[sink]\nkind='kafka'\ntopic='{missing}'\n"),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let log = gf.log_text();
    assert!(
        log.contains(&format!("`{missing}`")) && log.contains("do not exist"),
        "the error names the topic:\n{log}"
    );
    let r = http()
        .post(gf.http_url("/bad"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the broken pipeline is not serving");
    let r = http()
        .post(gf.http_url("/good"))
        .header("content-type", "application/json")
        .body(r#"{"a":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(consume(&good, 1, Duration::from_secs(20)).await.len(), 1);
}
