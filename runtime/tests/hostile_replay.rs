//! Black-box, hostile conditions for `gridflow replay`: a rate that would overflow, a broker
//! that accepts connections and never answers, an HTTP target that redirects or hangs. The
//! replay ends within its `--timeout` with an error that says what it waited for, and commits
//! nothing it did not deliver.

mod common;

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::targets::raw_target;
use common::*;

fn replay(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["replay"];
    all.extend_from_slice(args);
    let out = Gridflow::spawn_raw(&all, dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_rate_out_of_bounds_is_refused_plainly() {
    let dir = test_dir();
    for rate in ["0.0001", "0", "-1", "NaN", "inf", "1e300", "fast"] {
        let flag = format!("--rate={rate}");
        let (code, _, stderr) = replay(
            dir.path(),
            &["--from", "a.b.v1.dlq", "--brokers", "127.0.0.1:1", &flag],
        );
        assert_eq!(code, Some(2), "--rate {rate}: {stderr}");
        assert!(stderr.contains("is not a rate"), "--rate {rate}: {stderr}");
        assert!(!stderr.contains("panicked"), "--rate {rate}: {stderr}");
    }
    let (code, _, stderr) = replay(
        dir.path(),
        &[
            "--from",
            "a.b.v1.dlq",
            "--brokers",
            "127.0.0.1:1",
            "--timeout",
            "0",
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--timeout"), "{stderr}");
}

/// A "broker" that accepts connections and never answers: the replay gives up within its
/// `--timeout` (plus librdkafka's own slack), saying what it waited for.
#[test]
fn a_broker_that_never_answers_ends_the_replay_within_its_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    // Accept and hold every connection, never write a byte.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            match stream {
                Ok(s) => held.push(s),
                Err(_) => return,
            }
        }
    });
    let dir = test_dir();
    let started = Instant::now();
    let (code, _, stderr) = replay(
        dir.path(),
        &[
            "--from",
            "a.b.v1.dlq",
            "--brokers",
            &addr,
            "--timeout",
            "2",
            "--to",
            "a.b.v1",
        ],
    );
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(stderr.contains("a.b.v1.dlq"), "{stderr}");
    assert!(stderr.contains("2 s"), "the bound is named: {stderr}");
    assert!(stderr.contains("metadata"), "what it waited for: {stderr}");
}

/// To an HTTP pipeline: a `302` is not a delivery and a hung request times out; both stop
/// the replay at that record without committing it, and the next run sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_to_http_follows_no_redirect_and_times_out_without_committing() {
    let dlq = unique("grid.hostile.replay.v1.dlq");
    create_topic(&dlq, 1).await;
    produce(
        &dlq,
        Some("k"),
        b"{\"id\":1}",
        &[
            ("gridflow.correlation_id", "c-1"),
            ("gridflow.error.code", "retries_exhausted"),
        ],
    )
    .await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "web.toml",
        "name = 'web'\n[source]\nkind = 'http'\npath = '/in'\n[sink]\nkind = 'stdout'\n",
    );
    let group = unique("hostile-replay");
    let run = |base: String, timeout: &'static str| {
        let dir = dir.path().to_path_buf();
        let dlq = dlq.clone();
        let group = group.clone();
        tokio::task::spawn_blocking(move || {
            replay(
                &dir,
                &[
                    "--from",
                    &dlq,
                    "--to-pipeline",
                    "web",
                    "--http-url",
                    &base,
                    "--group",
                    &group,
                    "--timeout",
                    timeout,
                ],
            )
        })
    };

    let (redirecting, redirects) = raw_target(
        b"HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        false,
    )
    .await;
    let (code, stdout, stderr) = run(redirecting, "10").await.unwrap();
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("302") && stderr.contains("Location: /elsewhere"),
        "{stderr}"
    );
    assert_eq!(
        redirects.load(Ordering::SeqCst),
        1,
        "the Location is not called"
    );

    let (hanging, hangs) = raw_target(b"", true).await;
    let started = Instant::now();
    let (code, stdout, stderr) = run(hanging, "2").await.unwrap();
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(stderr.contains("timed out"), "{stderr}");
    assert_eq!(hangs.load(Ordering::SeqCst), 1);

    // Nothing was committed: the next run sends the record.
    let (ok, oks) = raw_target(
        b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        false,
    )
    .await;
    let (code, stdout, stderr) = run(ok, "10").await.unwrap();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("sent 1"), "{stdout}");
    assert_eq!(oks.load(Ordering::SeqCst), 1);
}

/// The situation of the issue: a replay pointed at the embedded broker of another gridflow
/// process (librdkafka's mock cluster), where it cannot create its journal topic. It used to
/// wait silently for ever; it ends within its `--timeout` with an error saying what it waited
/// for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_against_an_embedded_broker_ends_within_its_timeout() {
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "ingest.toml",
        "name = 'ingest'\n[source]\nkind = 'http'\npath = '/in'\n[[steps]]\nkind = 'xml_to_json'\n[sink]\nkind = 'kafka'\ntopic = 'dev.readings.v1'\n",
    );
    let gf = Gridflow::start(dir.path(), &["--brokers", ""]);
    let brokers = gf
        .logs()
        .iter()
        .find(|l| l.contains("embedded mock broker"))
        .and_then(|l| log_field(l, "brokers"))
        .expect("the embedded broker's address is logged");
    // One dead letter on the embedded broker's dead-letter topic.
    let r = http()
        .post(gf.http_url("/in"))
        .header("content-type", "application/xml")
        .body("<bad")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let started = Instant::now();
    let mut child = std::process::Command::new(gridflow_bin())
        .args([
            "replay",
            "--from",
            "dev.readings.v1.dlq",
            "--to",
            "dev.readings.v1",
            "--brokers",
            &brokers,
            "--timeout",
            "3",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let status =
        status.unwrap_or_else(|| panic!("the replay still waited after 90 s: {stdout}{stderr}"));
    eprintln!("replay: {status:?}\n{stdout}{stderr}");
    // Either it could do its work on this broker (then it says so), or it stops, saying what
    // it waited for: never a silent wait.
    if !status.success() {
        assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
        assert!(stderr.contains("error: "), "{stderr}");
        assert!(
            stderr.contains("waiting for") || stderr.contains("waited up to"),
            "what it waited for: {stderr}"
        );
    } else {
        assert!(stdout.contains("sent 1"), "{stdout}{stderr}");
    }
}
