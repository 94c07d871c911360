//! Black-box, hostile sinks: an `http` sink whose target redirects (`301/302/303/307/308`,
//! with and without `follow_redirects`), refuses (`4xx`), fails (`5xx`), hangs, or closes
//! the connection mid-answer; a `file` sink writing to a full disk. The HTTP caller gets `202`
//! only when the target's `2xx` came (or the line is on disk); everything else is in the
//! dead-letter file with its reason, and counted.
//!
//! Every target is a real HTTP server on 127.0.0.1 started here (axum, or a raw TCP listener
//! for the hang and the cut answer). No Kafka is needed: the pipelines are HTTP → HTTP/file
//! and dead-letter to files.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::any;
use axum::Router;
use common::targets::raw_target;
use common::*;
use serde_json::Value;

/// What the target saw: `(method, path, body)` per request.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(String, String, String)>>,
}

impl Seen {
    fn to(&self, path: &str) -> Vec<(String, String)> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p, _)| p == path)
            .map(|(m, _, b)| (m.clone(), b.clone()))
            .collect()
    }
}

/// `/redirect/{code}/{name}` answers `code` with `Location: /landing/{name}`;
/// `/loop/{name}` answers `307` to itself; `/status/{code}/{name}` answers `code`;
/// `/landing/{name}` answers `200`. Every request is recorded.
async fn start_target(seen: Arc<Seen>) -> String {
    async fn record(seen: &Seen, method: &Method, uri: &Uri, body: String) {
        seen.requests
            .lock()
            .unwrap()
            .push((method.to_string(), uri.path().to_string(), body));
    }
    let app = Router::new()
        .route(
            "/redirect/{code}/{name}",
            any(
                |State(seen): State<Arc<Seen>>,
                 UrlPath((code, name)): UrlPath<(u16, String)>,
                 method: Method,
                 uri: Uri,
                 body: String| async move {
                    record(&seen, &method, &uri, body).await;
                    let mut headers = HeaderMap::new();
                    headers.insert("location", format!("/landing/{name}").parse().unwrap());
                    (StatusCode::from_u16(code).unwrap(), headers, "moved")
                },
            ),
        )
        .route(
            "/loop/{name}",
            any(
                |State(seen): State<Arc<Seen>>,
                 UrlPath(name): UrlPath<String>,
                 method: Method,
                 uri: Uri,
                 body: String| async move {
                    record(&seen, &method, &uri, body).await;
                    let mut headers = HeaderMap::new();
                    headers.insert("location", format!("/loop/{name}").parse().unwrap());
                    (StatusCode::TEMPORARY_REDIRECT, headers, "again")
                },
            ),
        )
        .route(
            "/status/{code}/{name}",
            any(
                |State(seen): State<Arc<Seen>>,
                 UrlPath((code, _name)): UrlPath<(u16, String)>,
                 method: Method,
                 uri: Uri,
                 body: String| async move {
                    record(&seen, &method, &uri, body).await;
                    StatusCode::from_u16(code).unwrap().into_response()
                },
            ),
        )
        .route(
            "/landing/{name}",
            any(
                |State(seen): State<Arc<Seen>>, method: Method, uri: Uri, body: String| async move {
                    record(&seen, &method, &uri, body).await;
                    StatusCode::OK
                },
            ),
        )
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn pipeline(name: &str, url: &str, sink_extra: &str, max_attempts: u32) -> String {
    format!(
        "name = '{name}'\n[source]\nkind = 'http'\npath = '/in/{name}'\n\
         [sink]\nkind = 'http'\nurl = '{url}'\n{sink_extra}\n\
         [on_error]\nmax_attempts = {max_attempts}\ninitial_backoff_ms = 10\nmax_backoff_ms = 50\n"
    )
}

/// The dead letters of pipeline `name` (its `dead-letters/<name>.dlq.ndjson`).
fn dead_letters(dir: &Path, name: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(format!("dead-letters/{name}.dlq.ndjson")))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}")))
        .collect()
}

async fn send(gf: &Gridflow, name: &str, body: &str) -> reqwest::Response {
    post(
        &gf.http_url(&format!("/in/{name}")),
        "application/json",
        &[("x-correlation-id", name)],
        body.to_string(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_sink_never_counts_a_redirect_a_refusal_a_hang_or_a_cut_answer_as_delivered() {
    let seen = Arc::new(Seen::default());
    let base = start_target(Arc::clone(&seen)).await;
    let (hang_url, hang_count) = raw_target(b"", true).await;
    // The status line cut in the middle, then the connection closed.
    let (cut_url, cut_count) = raw_target(b"HTTP/1.1 20", false).await;
    // A 200 whose body is cut: the target's 2xx came; the record was accepted.
    let (cut_body_url, _) = raw_target(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\npart",
        false,
    )
    .await;

    let dir = test_dir();
    let follow = "follow_redirects = true";
    let cases: Vec<(String, String, &str, u32)> = vec![
        ("r301".into(), format!("{base}/redirect/301/r301"), "", 3),
        ("r302".into(), format!("{base}/redirect/302/r302"), "", 3),
        ("r303".into(), format!("{base}/redirect/303/r303"), "", 3),
        ("r307".into(), format!("{base}/redirect/307/r307"), "", 3),
        ("r308".into(), format!("{base}/redirect/308/r308"), "", 3),
        (
            "f302".into(),
            format!("{base}/redirect/302/f302"),
            follow,
            3,
        ),
        (
            "f307".into(),
            format!("{base}/redirect/307/f307"),
            follow,
            3,
        ),
        (
            "f308".into(),
            format!("{base}/redirect/308/f308"),
            follow,
            3,
        ),
        (
            "floop".into(),
            format!("{base}/loop/floop"),
            "follow_redirects = true\nmax_redirects = 2",
            3,
        ),
        ("s400".into(), format!("{base}/status/400/s400"), "", 3),
        ("s503".into(), format!("{base}/status/503/s503"), "", 3),
        ("hang".into(), hang_url, "timeout_ms = 300", 2),
        ("cut".into(), cut_url, "", 2),
        ("cutbody".into(), cut_body_url, "", 2),
    ];
    for (name, url, extra, attempts) in &cases {
        write_pipeline(
            dir.path(),
            &format!("{name}.toml"),
            &pipeline(name, url, extra, *attempts),
        );
    }
    let gf = Gridflow::start(dir.path(), &[]);

    // Redirects not followed: a refusal, dead-lettered with the status and the Location; the
    // Location is never called (the old sink followed 301/302/303 with a bodiless GET and
    // acknowledged its 200).
    for (name, code) in [
        ("r301", 301),
        ("r302", 302),
        ("r303", 303),
        ("r307", 307),
        ("r308", 308),
        ("f302", 302),
    ] {
        let body = format!("{{\"case\":\"{name}\"}}");
        let r = send(&gf, name, &body).await;
        assert_eq!(r.status(), 422, "{name}: {:?}", r.text().await);
        assert_eq!(
            seen.to(&format!("/redirect/{code}/{name}")).len(),
            1,
            "{name}: sent once, not retried"
        );
        assert!(
            seen.to(&format!("/landing/{name}")).is_empty(),
            "{name}: the Location was not called"
        );
        let dead = dead_letters(dir.path(), name);
        assert_eq!(dead.len(), 1, "{name}: {dead:?}");
        assert_eq!(dead[0]["payload"], body.as_str());
        let h = &dead[0]["headers"];
        assert_eq!(h["gridflow.error.code"], "sink_rejected", "{name}");
        let reason = h["gridflow.error.message"].as_str().unwrap();
        assert!(reason.contains(&code.to_string()), "{name}: {reason}");
        assert!(
            reason.contains(&format!("Location: /landing/{name}")),
            "{name}: {reason}"
        );
    }

    // 307 and 308 followed when the sink says so: method and body kept, 202 after the 200.
    for name in ["f307", "f308"] {
        let body = format!("{{\"case\":\"{name}\"}}");
        let r = send(&gf, name, &body).await;
        assert_eq!(r.status(), 202, "{name}");
        assert_eq!(
            seen.to(&format!("/landing/{name}")),
            vec![("POST".to_string(), body.clone())],
            "{name}"
        );
        assert!(dead_letters(dir.path(), name).is_empty());
    }

    // A redirect loop: followed at most max_redirects hops, then a refusal.
    let r = send(&gf, "floop", "{\"case\":\"floop\"}").await;
    assert_eq!(r.status(), 422);
    assert_eq!(seen.to("/loop/floop").len(), 3, "the request and 2 hops");
    assert_eq!(dead_letters(dir.path(), "floop").len(), 1);

    // 4xx: refused at once, not retried.
    let r = send(&gf, "s400", "{\"case\":\"s400\"}").await;
    assert_eq!(r.status(), 422);
    assert_eq!(seen.to("/status/400/s400").len(), 1);
    assert_eq!(
        dead_letters(dir.path(), "s400")[0]["headers"]["gridflow.error.code"],
        "sink_rejected"
    );

    // 5xx: retried to the budget, then dead-lettered; the caller is told to come back.
    let r = send(&gf, "s503", "{\"case\":\"s503\"}").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(seen.to("/status/503/s503").len(), 3);
    let dead = dead_letters(dir.path(), "s503");
    assert_eq!(
        dead[0]["headers"]["gridflow.error.code"],
        "retries_exhausted"
    );
    assert_eq!(dead[0]["headers"]["gridflow.error.attempts"], "3");

    // A target that hangs: each attempt times out, retried, dead-lettered, never 202.
    let started = Instant::now();
    let r = send(&gf, "hang", "{\"case\":\"hang\"}").await;
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(hang_count.load(Ordering::SeqCst), 2);
    let dead = dead_letters(dir.path(), "hang");
    assert_eq!(
        dead[0]["headers"]["gridflow.error.code"],
        "retries_exhausted"
    );
    assert!(
        dead[0]["headers"]["gridflow.error.message"]
            .as_str()
            .unwrap()
            .contains("POST"),
        "{dead:?}"
    );

    // A target that closes in the middle of its status line: a transient fault.
    let r = send(&gf, "cut", "{\"case\":\"cut\"}").await;
    assert_eq!(r.status(), 503);
    assert_eq!(cut_count.load(Ordering::SeqCst), 2);
    assert_eq!(dead_letters(dir.path(), "cut").len(), 1);

    // A 200 whose body is cut: the target's 2xx came, the record is delivered.
    let r = send(&gf, "cutbody", "{\"case\":\"cutbody\"}").await;
    assert_eq!(r.status(), 202);
    assert!(dead_letters(dir.path(), "cutbody").is_empty());

    // The metrics say the same.
    let metrics = gf.metrics().await;
    let p = |name: &str| format!("pipeline=\"{name}\"");
    for name in [
        "r301", "r302", "r303", "r307", "r308", "f302", "floop", "s400",
    ] {
        assert_eq!(
            sample(
                &metrics,
                "gridflow_messages_dead_lettered_total",
                &[&p(name), "code=\"sink_rejected\""]
            ),
            Some(1.0),
            "{name}"
        );
        assert_eq!(
            sample(&metrics, "gridflow_messages_sent_total", &[&p(name)]).unwrap_or(0.0),
            0.0,
            "{name}"
        );
    }
    for name in ["f307", "f308", "cutbody"] {
        assert_eq!(
            sample(&metrics, "gridflow_messages_sent_total", &[&p(name)]),
            Some(1.0),
            "{name}"
        );
    }
    for (name, retries) in [("s503", 2.0), ("hang", 1.0), ("cut", 1.0)] {
        assert_eq!(
            sample(
                &metrics,
                "gridflow_messages_dead_lettered_total",
                &[&p(name), "code=\"retries_exhausted\""]
            ),
            Some(1.0),
            "{name}"
        );
        assert_eq!(
            sample(&metrics, "gridflow_sink_retries_total", &[&p(name)]),
            Some(retries),
            "{name}"
        );
    }
}

#[test]
fn redirect_options_are_checked() {
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "bad.toml",
        "name = 'bad'\n[source]\nkind = 'http'\npath = '/x'\n[sink]\nkind = 'http'\nurl = 'http://127.0.0.1:1/'\nfollow_redirects = true\nmax_redirects = 0\n",
    );
    let out = Gridflow::spawn_raw(&["validate", "pipelines"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("max_redirects must be at least 1"),
        "{stderr}"
    );
}

/// A `file` sink on a full disk: `/dev/full` (every write `ENOSPC`) and a 64 KiB tmpfs (writes
/// cut short once it fills). Nothing acknowledged is missing from the file, nothing refused
/// is lost (it is in the dead-letter file), and no line is torn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sink_on_a_full_disk_loses_nothing_and_tears_no_line() {
    let dir = test_dir();
    let full = dir.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::os::unix::fs::symlink("/dev/full", full.join("out.ndjson")).unwrap();
    let small = dir.path().join("small");
    let _unmount = small_disk(&small);
    for (name, path) in [
        ("devfull", "full/out.ndjson"),
        ("tmpfs", "small/out.ndjson"),
    ] {
        write_pipeline(
            dir.path(),
            &format!("{name}.toml"),
            &format!(
                "name = '{name}'\n[source]\nkind = 'http'\npath = '/in/{name}'\n\
                 [sink]\nkind = 'file'\npath = '{path}'\n\
                 [on_error]\nmax_attempts = 2\ninitial_backoff_ms = 10\nmax_backoff_ms = 20\n\
                 dead_letter_file = 'dead-letters/{name}.dlq.ndjson'\n"
            ),
        );
    }
    let gf = Gridflow::start(dir.path(), &[]);

    // /dev/full: never 202; the input is in the dead-letter file.
    let r = send(&gf, "devfull", "{\"id\":1}").await;
    assert_eq!(r.status(), 503);
    let dead = dead_letters(dir.path(), "devfull");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["payload"], "{\"id\":1}");
    assert!(
        dead[0]["headers"]["gridflow.error.message"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{dead:?}"
    );

    // A filling tmpfs: lines of ~3 KiB until the disk is full and a while after.
    let filler = "x".repeat(3000);
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for id in 0..40 {
        let body = format!("{{\"id\":{id},\"fill\":\"{filler}\"}}");
        let r = send(&gf, "tmpfs", &body).await;
        match r.status().as_u16() {
            202 => accepted.push(id),
            503 => refused.push(id),
            other => panic!("id {id}: unexpected {other}"),
        }
    }
    assert!(
        !accepted.is_empty() && !refused.is_empty(),
        "accepted {accepted:?}, refused {refused:?}"
    );
    let text = std::fs::read_to_string(small.join("out.ndjson")).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the file ends with a whole line"
    );
    let written: Vec<i64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("torn line ({} bytes): {e}", l.len()))["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let accepted: Vec<i64> = accepted.into_iter().collect();
    assert_eq!(
        written, accepted,
        "exactly the acknowledged inputs, once each, whole"
    );
    let dead: Vec<i64> = dead_letters(dir.path(), "tmpfs")
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(d["payload"].as_str().unwrap()).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let refused: Vec<i64> = refused.into_iter().collect();
    assert_eq!(
        dead, refused,
        "every refused input is in the dead-letter file"
    );
    let metrics = gf.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "gridflow_messages_sent_total",
            &["pipeline=\"tmpfs\""]
        ),
        Some(written.len() as f64)
    );
}
