//! Black-box: the steps and the sink of the shipped `pipelines/overload-work-orders.toml`
//! against the legacy work-order stub of the local stack (`local-dev/stub/legacy_workorders.py`):
//! an accepted order, a refusal dead-lettered with its reason, a `503`, a slow and an
//! unreachable endpoint. The Kafka source is replaced by an `http` one, so that each outcome is
//! the caller's answer, and the dead letters go to a file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The legacy stub, killed when dropped.
struct Stub {
    child: Child,
    url: String,
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the stub on a free port, its slow answers after `slow_seconds`.
fn start_stub(slow_seconds: u64) -> Stub {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .arg(repo().join("local-dev/stub/legacy_workorders.py"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("LEGACY_SLOW_SECONDS", slow_seconds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs the stub");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the stub did not listen on {url}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Stub { child, url }
}

/// The shipped pipeline with an `http` source on `path`, `timeout_ms` 500, two delivery
/// attempts and its dead letters in `dead_letters`; `url` replaces its endpoint when given.
fn shipped_as_http(path: &str, dead_letters: &Path, url: Option<&str>) -> String {
    let shipped =
        std::fs::read_to_string(repo().join("pipelines/overload-work-orders.toml")).unwrap();
    let source_start = shipped.find("[source]").unwrap();
    let source_end = shipped.find("\n# 1.").unwrap();
    let mut text = format!(
        "{}[source]\nkind = \"http\"\npath = \"{path}\"\n{}",
        &shipped[..source_start],
        &shipped[source_end..]
    );
    text = text.replace(
        "name = \"overload-work-orders\"",
        &format!("name = \"legacy{}\"", path.replace('/', "-")),
    );
    text = text.replace("timeout_ms = 5000", "timeout_ms = 500");
    let on_error = text.find("\n[on_error]").unwrap() + 1;
    text.truncate(on_error);
    text.push_str(&format!(
        "[on_error]\nmax_attempts = 2\ninitial_backoff_ms = 10\nmax_backoff_ms = 20\ndead_letter_file = \"{}\"\n",
        dead_letters.display()
    ));
    if let Some(url) = url {
        let at = text.find("url = \"${LEGACY_WORKORDERS_URL").unwrap();
        let end = at + text[at..].find('\n').unwrap();
        text.replace_range(at..end, &format!("url = \"{url}/soap/work-orders\""));
    }
    text
}

/// An overload event of `meter`.
fn overload(meter: &str) -> String {
    serde_json::json!({
        "meter_id": meter,
        "measured_at": "2026-01-14T18:15:00Z",
        "value_kwh": 2.61,
        "max_interval_kwh": 2.25,
        "substation": "SS-118",
        "feeder": "F-0412",
        "correlation_id": "c"
    })
    .to_string()
}

#[tokio::test]
async fn the_legacy_acknowledgement_decides_and_faults_are_retried() {
    let stub = start_stub(3);
    let dir = test_dir();
    let dead_letters = dir.path().join("dead-letters.ndjson");
    write_pipeline(
        dir.path(),
        "legacy.toml",
        &shipped_as_http("/test/legacy", &dead_letters, None),
    );
    // Nothing listens on this port: the endpoint is unreachable.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    write_pipeline(
        dir.path(),
        "unreachable.toml",
        &shipped_as_http("/test/unreachable", &dead_letters, Some(&closed)),
    );
    let gf = Gridflow::start_with_env(dir.path(), &[], &[("LEGACY_WORKORDERS_URL", &stub.url)]);
    let send = |path: &str, meter: &str, cid: &str| {
        let url = gf.http_url(path);
        let body = overload(meter);
        let cid = cid.to_string();
        async move {
            let r = post(
                &url,
                "application/json",
                &[("X-Correlation-ID", &cid)],
                body,
            )
            .await;
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (status, body)
        }
    };

    // Accepted: 202, and the stub holds the order under the correlation id.
    let (status, body) = send("/test/legacy", "FR-PRM-09182736450011", "accepted-1").await;
    assert_eq!(status, 202, "{body}");
    let orders: serde_json::Value = http()
        .get(format!("{}/orders?correlation_id=accepted-1", stub.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(orders.as_array().unwrap().len(), 1, "{orders}");
    assert_eq!(orders[0]["meter_id"], "FR-PRM-09182736450011");
    assert_eq!(orders[0]["value_kwh"], 2.61);

    // Refused (HTTP 200, Code REFUSED): 422 and dead-lettered with the stub's reason, never
    // retried.
    let (status, body) = send("/test/legacy", "FR-PRM-77777777777777", "refused-1").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "sink_rejected", "{body}");
    assert_eq!(body["attempts"], 1, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("unknown meter FR-PRM-77777777777777"),
        "{body}"
    );
    let letters = std::fs::read_to_string(&dead_letters).unwrap();
    let refused: Vec<&str> = letters
        .lines()
        .filter(|l| l.contains("refused-1"))
        .collect();
    assert_eq!(refused.len(), 1, "{letters}");
    assert!(
        refused[0].contains("unknown meter FR-PRM-77777777777777"),
        "{letters}"
    );

    // A 503, a slow endpoint (3 s against timeout_ms 500), an unreachable one: transient,
    // retried (max_attempts 2), then 503 to the caller; no order taken.
    for (path, meter, cid) in [
        ("/test/legacy", "FR-PRM-09182736450011-503", "unavailable-1"),
        ("/test/legacy", "FR-PRM-09182736450011-SLOW", "slow-1"),
        (
            "/test/unreachable",
            "FR-PRM-09182736450011",
            "unreachable-1",
        ),
    ] {
        let started = Instant::now();
        let (status, body) = send(path, meter, cid).await;
        assert_eq!(status, 503, "{cid}: {body}");
        assert_eq!(body["code"], "retries_exhausted", "{cid}: {body}");
        assert_eq!(body["attempts"], 2, "{cid}: {body}");
        assert!(started.elapsed() < Duration::from_secs(10), "{cid}");
    }
    let orders: serde_json::Value = http()
        .get(format!("{}/orders", stub.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(orders.as_array().unwrap().len(), 1, "{orders}");
}
