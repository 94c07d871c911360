//! Black-box: with the broker unreachable, an HTTP caller gets `503` with `Retry-After` once
//! the retry budget is spent (nothing is acknowledged that was not written), and
//! `/health/ready` says not ready. SIGTERM then stops the process cleanly.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_gives_503_and_not_ready() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);

    let dir = test_dir();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[kafka.properties]\n'message.timeout.ms' = 300\n'socket.connection.setup.timeout.ms' = 1000\n",
    )
    .unwrap();
    write_pipeline(
        dir.path(),
        "p.toml",
        "[source]\nkind='http'\npath='/in'\nretry_after_secs=7\n[sink]\nkind='kafka'\ntopic='t.v1'\n[on_error]\nmax_attempts=2\ninitial_backoff_ms=20\nmax_backoff_ms=50\n",
    );
    let mut gf = Gridflow::start(dir.path(), &["--brokers", &format!("127.0.0.1:{port}")]);

    let r = http()
        .post(gf.http_url("/in"))
        .header("content-type", "application/json")
        .header("x-correlation-id", "down-1")
        .body(r#"{"a":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["dead_lettered"], false);
    assert_eq!(problem["correlation_id"], "down-1");

    let ready = http()
        .get(gf.admin_url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["broker_reachable"], false);
    let live = http()
        .get(gf.admin_url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    gf.terminate();
    let status = gf
        .wait_exit_async(Duration::from_secs(30))
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(gf.log_text().contains("Gridflow stopped cleanly."));
}

/// A pipeline whose sink fails every delivery for 15 s says so: `not_delivering` with the
/// error on `/admin/pipelines`, and listed by `/health/ready` (503). Without traffic for 15 s
/// it is no longer called stuck (readiness never waits for traffic only readiness lets in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_cannot_deliver_says_so() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = test_dir();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[kafka.properties]\n'message.timeout.ms' = 300\n'socket.connection.setup.timeout.ms' = 1000\n",
    )
    .unwrap();
    write_pipeline(
        dir.path(),
        "stuck.toml",
        "[source]\nkind='http'\npath='/in'\n[sink]\nkind='kafka'\ntopic='t.v1'\n[on_error]\nmax_attempts=2\ninitial_backoff_ms=20\nmax_backoff_ms=50\n",
    );
    let gf = Gridflow::start(dir.path(), &["--brokers", &format!("127.0.0.1:{port}")]);
    let state = |pipelines: &serde_json::Value| {
        pipelines["pipelines"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == "stuck"))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(state(&gf.admin_pipelines().await)["state"], "running");

    // Every request fails (503) for more than 15 s.
    let started = std::time::Instant::now();
    let mut stuck = None;
    while started.elapsed() < Duration::from_secs(40) {
        let r = post(&gf.http_url("/in"), "application/json", &[], r#"{"a":1}"#).await;
        assert_eq!(r.status(), 503);
        let view = state(&gf.admin_pipelines().await);
        if view["state"] == "not_delivering" {
            stuck = Some(view);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let view = stuck.expect("the pipeline is shown as not delivering within 40 s");
    assert!(
        started.elapsed() >= Duration::from_secs(15),
        "not before 15 s of failures: {view}"
    );
    assert!(
        view["delivery"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("t.v1")),
        "{view}"
    );
    assert!(view["delivery"]["failing_since"].is_string(), "{view}");
    let ready = http()
        .get(gf.admin_url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        body["pipelines_not_delivering"],
        serde_json::json!(["stuck"])
    );

    // No traffic for 15 s: no longer listed.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let view = state(&gf.admin_pipelines().await);
    assert_eq!(view["state"], "running", "{view}");
    let body: serde_json::Value = http()
        .get(gf.admin_url("/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["pipelines_not_delivering"], serde_json::json!([]));
}
