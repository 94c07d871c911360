//! Black-box: with no broker configured, `gridflow run` starts the embedded development
//! broker, creates the pipelines' topics on it, and flows run end to end.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_end_to_end_on_the_embedded_broker() {
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "ingest.toml",
        "[source]\nkind='http'\npath='/readings'\n[[steps]]\nkind='map'\nexpression='{meter: meter_id, value: to_number(reading.value)}'\n[sink]\nkind='kafka'\ntopic='dev.readings.v1'\nkey='meter'\n",
    );
    write_pipeline(
        dir.path(),
        "forward.toml",
        "[source]\nkind='kafka'\ntopics=['dev.readings.v1']\ngroup='forward'\n[sink]\nkind='file'\npath='out/readings.ndjson'\n",
    );
    let gf = Gridflow::start(dir.path(), &["--brokers", ""]);
    assert!(
        gf.log_text().contains("embedded mock broker"),
        "a clear warning says it is for development"
    );

    let sample = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/samples/meter/reading.json"
    ))
    .unwrap();
    let r = http()
        .post(gf.http_url("/readings"))
        .header("content-type", "application/json")
        .body(sample)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let out = dir.path().join("out/readings.ndjson");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&out).unwrap_or_default();
        if !text.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a line in the file sink")).unwrap();
    assert_eq!(
        line,
        serde_json::json!({"meter": "FR-PRM-09182736450011", "value": 0.412})
    );
}
