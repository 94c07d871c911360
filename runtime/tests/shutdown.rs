//! Black-box: graceful shutdown. SIGTERM stops the intake, lets in-flight messages settle
//! (bounded by the drain timeout), and exits 0; a second signal exits at once.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use common::targets::{slow_target, wait_for_count};
use common::*;

fn pipeline(url: &str) -> String {
    format!("[source]\nkind='http'\npath='/in'\n[sink]\nkind='http'\nurl='{url}'\n[on_error]\nmax_attempts=1\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_messages_then_exits_0() {
    let (seen, url) = slow_target(Duration::from_millis(1500)).await;
    let dir = test_dir();
    write_pipeline(dir.path(), "slow.toml", &pipeline(&url));
    let mut gf = Gridflow::start(dir.path(), &[]);
    let endpoint = gf.http_url("/in");
    let request = tokio::spawn(async move {
        post(&endpoint, "application/json", &[], r#"{"id":1}"#)
            .await
            .status()
    });
    wait_for_count(&seen, 1).await;
    gf.terminate();
    // The message in flight is delivered and its caller answered before the exit.
    assert_eq!(request.await.unwrap(), StatusCode::ACCEPTED);
    let status = gf
        .wait_exit_async(Duration::from_secs(30))
        .await
        .expect("exited");
    assert_eq!(status.code(), Some(0), "{}", gf.log_text());
    assert!(gf.log_text().contains("Gridflow stopped cleanly."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_forces_the_exit() {
    let (seen, url) = slow_target(Duration::from_secs(120)).await;
    let dir = test_dir();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[engine]\ndrain_timeout_ms = 120000\n",
    )
    .unwrap();
    write_pipeline(dir.path(), "stuck.toml", &pipeline(&url));
    let mut gf = Gridflow::start(dir.path(), &[]);
    let endpoint = gf.http_url("/in");
    tokio::spawn(async move {
        let _ = http().post(&endpoint).body(r#"{"id":1}"#).send().await;
    });
    wait_for_count(&seen, 1).await;
    gf.terminate();
    // Draining: the message's sink has not answered, so the process waits.
    assert!(gf.wait_exit_async(Duration::from_secs(2)).await.is_none());
    gf.terminate();
    let status = gf
        .wait_exit_async(Duration::from_secs(20))
        .await
        .expect("the second signal ends the process");
    assert_eq!(status.code(), Some(130));
    assert!(
        gf.log_text().contains("Second signal: exiting now"),
        "{}",
        gf.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_http_pipeline_answers_503_and_loses_nothing() {
    let (seen, url) = slow_target(Duration::from_millis(400)).await;
    let dir = test_dir();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[engine]\nmax_in_flight = 2\nmax_queue_wait_ms = 150\n",
    )
    .unwrap();
    write_pipeline(dir.path(), "slow.toml", &pipeline(&url));
    let gf = Gridflow::start(dir.path(), &[]);
    let endpoint = gf.http_url("/in");
    let requests = (0..12).map(|i| {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let r = post(
                &endpoint,
                "application/json",
                &[],
                format!("{{\"id\":{i}}}"),
            )
            .await;
            (r.status(), r.headers().get("retry-after").cloned())
        })
    });
    let answers: Vec<_> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let accepted = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .count();
    let refused: Vec<_> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(accepted + refused.len(), 12, "{answers:?}");
    assert!(
        !refused.is_empty(),
        "12 requests at once into room for 2: some must wait too long"
    );
    assert!(accepted >= 2, "{answers:?}");
    assert!(
        refused.iter().all(|(_, retry)| retry.is_some()),
        "503 with Retry-After"
    );
    // Exactly the accepted ones reached the sink: nothing refused was delivered, nothing
    // accepted was lost.
    assert_eq!(seen.load(Ordering::SeqCst), accepted);
    assert!(gf
        .log_text()
        .contains("Input refused: the pipeline is saturated."));
}
