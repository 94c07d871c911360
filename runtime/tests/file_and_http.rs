//! Black-box: the file source (one message per file or per NDJSON line, then moved to done/
//! or failed/) and the HTTP sink (5xx retried with backoff, 4xx dead-lettered to a file).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use common::*;

#[derive(Default)]
struct Target {
    calls: usize,
    accepted: Vec<serde_json::Value>,
}

async fn start_target(state: Arc<Mutex<Target>>) -> String {
    let app = Router::new().route(
        "/hook",
        post(move |body: String| {
            let state = Arc::clone(&state);
            async move {
                let mut s = state.lock().unwrap();
                s.calls += 1;
                if s.calls <= 2 {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let value: serde_json::Value = serde_json::from_str(&body).unwrap();
                if value["reject"] == true {
                    return StatusCode::BAD_REQUEST;
                }
                s.accepted.push(value);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook")
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_flow_to_an_http_endpoint_with_retries_and_dead_letters() {
    let state = Arc::new(Mutex::new(Target::default()));
    let url = start_target(Arc::clone(&state)).await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "files.toml",
        &format!(
            "name='files'\n[source]\nkind='file'\ndir='inbox'\npoll_interval_ms=100\n[[steps]]\nkind='map'\nexpression='{{id: id, reject: reject}}'\n[sink]\nkind='http'\nurl='{url}'\n[on_error]\nmax_attempts=5\ninitial_backoff_ms=10\nmax_backoff_ms=50\n"
        ),
    );
    let _gf = Gridflow::start(dir.path(), &[]);
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    // Written under a temporary name, then renamed: never read half-written.
    std::fs::write(
        inbox.join("a.ndjson.tmp"),
        "{\"id\":1}\n{\"id\":2,\"reject\":true}\n\n{\"id\":3}\n",
    )
    .unwrap();
    std::fs::rename(inbox.join("a.ndjson.tmp"), inbox.join("a.ndjson")).unwrap();

    wait_for("a.ndjson to be moved", Duration::from_secs(30), || {
        inbox.join("failed/a.ndjson").exists()
    })
    .await;
    assert!(!inbox.join("a.ndjson").exists());
    {
        let s = state.lock().unwrap();
        let ids: Vec<i64> = s
            .accepted
            .iter()
            .map(|v| v["id"].as_i64().unwrap())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![1, 3],
            "the accepted lines, after the 503s were retried"
        );
        assert!(
            s.calls >= 5,
            "two 503s retried, one 400, two 2xx: {}",
            s.calls
        );
    }
    let dead = std::fs::read_to_string(dir.path().join("dead-letters/files.dlq.ndjson")).unwrap();
    let envelopes: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(envelopes.len(), 1, "{dead}");
    assert_eq!(
        envelopes[0]["payload"], "{\"id\":2,\"reject\":true}",
        "the original line"
    );
    assert_eq!(
        envelopes[0]["headers"]["gridflow.error.code"],
        "sink_rejected"
    );
    assert_eq!(envelopes[0]["headers"]["gridflow.error.step"], "sink.http");

    // A clean file goes to done/.
    std::fs::write(inbox.join("b.json"), "{\"id\":4}").unwrap();
    wait_for("b.json to be moved", Duration::from_secs(30), || {
        inbox.join("done/b.json").exists()
    })
    .await;
    assert!(state.lock().unwrap().accepted.iter().any(|v| v["id"] == 4));
}

/// The `blackhole` sink acknowledges what reaches it, and only that: a filtered message is
/// counted as filtered, a line that is not JSON is dead-lettered (its file goes to failed/).
/// The filter reads the raw bytes without parsing the rest of the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_sink_acknowledges_what_reaches_it() {
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "hole.toml",
        "name='hole'\n[source]\nkind='file'\ndir='inbox'\npoll_interval_ms=100\n[[steps]]\nkind='filter'\ncondition='keep'\n[sink]\nkind='blackhole'\n",
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(
        inbox.join("a.ndjson.tmp"),
        "{\"keep\":true,\"n\":1}\n{\"keep\":false}\n{\"keep\":1,\"big\":[1,2,{\"x\":\"y\"}]}\nnot json\n{\"keep\":\"yes\"}\n",
    )
    .unwrap();
    std::fs::rename(inbox.join("a.ndjson.tmp"), inbox.join("a.ndjson")).unwrap();
    wait_for("a.ndjson to be moved", Duration::from_secs(30), || {
        inbox.join("failed/a.ndjson").exists()
    })
    .await;
    let metrics = gf.metrics().await;
    let on = &["pipeline=\"hole\""];
    assert_eq!(
        sample(&metrics, "gridflow_messages_sent_total", on),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "gridflow_messages_filtered_total", on),
        Some(1.0)
    );
    let dead = std::fs::read_to_string(dir.path().join("dead-letters/hole.dlq.ndjson")).unwrap();
    let envelopes: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(envelopes.len(), 1, "{dead}");
    assert_eq!(envelopes[0]["payload"], "not json");
    assert_eq!(
        envelopes[0]["headers"]["gridflow.error.code"],
        "invalid_json"
    );
}
