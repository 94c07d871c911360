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
