//! Hostile-world tests, ingress clients: slow headers, trickled bodies, connection floods, a
//! body budget exhausted by many large requests (and not held by lengths announced but not
//! sent), a TLS handshake that never comes, and the drain of the plain and the TLS listener
//! with a keep-alive client. Black-box against a real `gridflow run` with small `[http]`
//! limits; the pipelines end in `blackhole` sinks or a test HTTP target, so no Kafka broker is
//! needed.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::pki::Pki;
use common::targets::{slow_target, wait_for_count};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BLACKHOLE: &str =
    "[source]\nkind='http'\npath='/in'\nmax_body_bytes=33554432\n[sink]\nkind='blackhole'\n";

/// A gridflow with `http` as its `[http]` section and the blackhole pipeline on `/in`.
fn start(http: &str) -> (tempfile::TempDir, Gridflow) {
    let dir = test_dir();
    std::fs::write(dir.path().join("gridflow.toml"), format!("[http]\n{http}")).unwrap();
    write_pipeline(dir.path(), "in.toml", BLACKHOLE);
    let gf = Gridflow::start(dir.path(), &[]);
    (dir, gf)
}

/// The value of `name{label}` in a Prometheus scrape (0 when absent).
fn metric(scrape: &str, name: &str, label: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reads from `stream` until it is closed (EOF or reset) or `within` passes; returns what it
/// read and whether it was closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (seen, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (seen, true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.1 answer (headers and a `Content-Length` body) from `stream`.
async fn read_answer(stream: &mut TcpStream, within: Duration) -> Option<(u16, String, String)> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                let status = head.split(' ').nth(1)?.parse().ok()?;
                let body = String::from_utf8_lossy(&seen[end + 4..end + 4 + length]).to_string();
                return Some((status, head.to_ascii_lowercase(), body));
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

fn request_head(length: usize) -> String {
    format!("POST /in HTTP/1.1\r\nhost: gridflow\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n")
}

/// One complete request on `stream`; its answer.
async fn exchange(stream: &mut TcpStream, body: &str) -> Option<(u16, String, String)> {
    let request = format!("{}{body}", request_head(body.len()));
    stream.write_all(request.as_bytes()).await.ok()?;
    read_answer(stream, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_cut_after_the_header_timeout() {
    let (_dir, gf) = start("header_read_timeout_ms = 1000\nidle_timeout_ms = 30000\n");
    let mut slow = TcpStream::connect(gf.http_addr()).await.unwrap();
    slow.write_all(b"POST /in HTTP/1.1\r\nhost: gridflow\r\ncontent-ty")
        .await
        .unwrap();
    let started = Instant::now();
    // Closed within the timeout and a margin (without the limit: open for as long as the
    // client likes).
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(6)).await;
    assert!(
        closed,
        "a client that stopped mid-headers still holds its connection"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "closed before the header timeout: {:?}",
        started.elapsed()
    );
    // A connection that sends nothing at all is cut the same way.
    let mut silent = TcpStream::connect(gf.http_addr()).await.unwrap();
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(6))
            .await
            .1
    );
    let scrape = gf.metrics().await;
    assert!(
        metric(&scrape, "gridflow_http_timeouts_total", "kind=\"header\"") >= 2.0,
        "{scrape}"
    );
    assert!(
        gf.log_text()
            .contains("HTTP connection closed: the client was too slow."),
        "{}",
        gf.log_text()
    );
    // Headers past 64 KiB are refused, not buffered.
    let mut large = TcpStream::connect(gf.http_addr()).await.unwrap();
    let padding = "x".repeat(70 * 1024);
    let _ = large
        .write_all(
            format!("POST /in HTTP/1.1\r\nhost: gridflow\r\nx-padding: {padding}\r\n\r\n")
                .as_bytes(),
        )
        .await;
    let (answer, _) = read_until_closed(&mut large, Duration::from_secs(5)).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // An honest client is still served.
    let mut honest = TcpStream::connect(gf.http_addr()).await.unwrap();
    let (status, _, _) = exchange(&mut honest, r#"{"id":1}"#)
        .await
        .expect("an answer");
    assert_eq!(status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_with_408_and_the_connection_closed() {
    let (_dir, gf) = start("body_read_timeout_ms = 1000\nheader_read_timeout_ms = 30000\n");
    let stream = TcpStream::connect(gf.http_addr()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(request_head(100).as_bytes())
        .await
        .unwrap();
    // One byte every 2 s: 100 bytes would take more than 3 minutes.
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), reader.read_to_end(&mut answer)).await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(
        read.is_ok(),
        "the trickling client still holds its connection"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer}"
    );
    let scrape = gf.metrics().await;
    assert!(
        metric(&scrape, "gridflow_http_timeouts_total", "kind=\"body\"") >= 1.0,
        "{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_beyond_the_limit_is_refused_and_the_others_served() {
    let (_dir, gf) =
        start("max_connections = 8\nheader_read_timeout_ms = 60000\nidle_timeout_ms = 60000\n");
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(gf.http_addr()).await.unwrap());
    }
    // The first one is a keep-alive client that is served.
    let (status, _, _) = exchange(&mut held[0], r#"{"id":1}"#)
        .await
        .expect("an answer");
    assert_eq!(status, 202);
    let mut open = 0.0;
    for _ in 0..100 {
        open = metric(&gf.metrics().await, "gridflow_http_connections_open", "");
        if open >= 8.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 8.0);
    // Beyond the limit: closed at once, whatever they send.
    for i in 0..5 {
        let mut extra = TcpStream::connect(gf.http_addr()).await.unwrap();
        let _ = extra
            .write_all(format!("{}{{\"id\":{i}}}", request_head(8)).as_bytes())
            .await;
        let (answer, closed) = read_until_closed(&mut extra, Duration::from_secs(5)).await;
        assert!(closed, "connection {i} beyond the limit was kept open");
        assert!(
            !String::from_utf8_lossy(&answer).contains(" 202 "),
            "a connection beyond the limit was served"
        );
    }
    // The ones within the limit are still served.
    let (status, _, _) = exchange(&mut held[0], r#"{"id":2}"#)
        .await
        .expect("an answer");
    assert_eq!(status, 202);
    let (status, _, _) = exchange(&mut held[5], r#"{"id":3}"#)
        .await
        .expect("an answer");
    assert_eq!(status, 202);
    let scrape = gf.metrics().await;
    assert!(
        metric(
            &scrape,
            "gridflow_http_connections_rejected_total",
            "reason=\"max_connections\""
        ) >= 5.0,
        "{scrape}"
    );
    assert!(
        gf.log_text()
            .contains("Connection closed at once: [http] max_connections reached."),
        "{}",
        gf.log_text()
    );
    // A connection that ends makes room for a new one.
    drop(held.pop());
    let mut served = false;
    for _ in 0..50 {
        let mut next = TcpStream::connect(gf.http_addr()).await.unwrap();
        if let Some((202, _, _)) = exchange(&mut next, r#"{"id":4}"#).await {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "no room after a connection ended");
}

/// VmRSS of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_body_budget_answers_503_and_memory_stays_bounded() {
    const CLIENTS: usize = 40;
    const BODY: usize = 4 * 1024 * 1024;
    // Room for two bodies at once; 40 of them would be 160 MiB.
    let (_dir, gf) = start(&format!(
        "max_buffered_body_bytes = {}\nbody_read_timeout_ms = 60000\nheader_read_timeout_ms = 60000\n",
        2 * BODY + BODY / 2
    ));
    let baseline = rss(gf.pid());
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel::<()>(CLIENTS);
    let release = Arc::new(tokio::sync::Notify::new());
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let addr = gf.http_addr().to_string();
        let (sent, release) = (sent_tx.clone(), Arc::clone(&release));
        clients.push(tokio::spawn(async move {
            let stream = TcpStream::connect(&addr).await.unwrap();
            let (mut reader, mut writer) = stream.into_split();
            let answer = tokio::spawn(async move {
                let mut seen = Vec::new();
                let _ = tokio::time::timeout(
                    Duration::from_secs(60),
                    reader.read_to_end(&mut seen),
                )
                .await;
                String::from_utf8_lossy(&seen).to_string()
            });
            // A JSON string of BODY bytes, all but its last byte now.
            let mut body = vec![b'x'; BODY];
            body[0] = b'"';
            body[BODY - 1] = b'"';
            let head = format!("POST /in HTTP/1.1\r\nhost: gridflow\r\ncontent-type: application/json\r\ncontent-length: {BODY}\r\nconnection: close\r\nx-client: {i}\r\n\r\n");
            let first = async {
                writer.write_all(head.as_bytes()).await?;
                writer.write_all(&body[..BODY - 1]).await
            };
            let wrote = tokio::time::timeout(Duration::from_secs(30), first).await;
            let _ = sent.send(()).await;
            if matches!(wrote, Ok(Ok(()))) {
                release.notified().await;
                let _ = writer.write_all(&body[BODY - 1..]).await;
            }
            answer.await.unwrap()
        }));
    }
    drop(sent_tx);
    for _ in 0..CLIENTS {
        sent_rx.recv().await;
    }
    // Every client has sent (or been refused) all but the last byte of its body.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss(gf.pid());
    eprintln!(
        "RSS before {} MiB, with every body offered {} MiB",
        baseline >> 20,
        during >> 20
    );
    // Well below the bodies offered (the budget, buffers and the allocator's slack).
    let grown = during.saturating_sub(baseline);
    assert!(
        grown < 64 * 1024 * 1024,
        "RSS grew by {} MiB with {} MiB of bodies offered",
        grown / (1024 * 1024),
        CLIENTS * BODY / (1024 * 1024)
    );
    release.notify_waiters();
    // Later waiters too (a client that reached `notified` after the first wake-up).
    let releaser = {
        let release = Arc::clone(&release);
        tokio::spawn(async move {
            loop {
                release.notify_waiters();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut answers = Vec::new();
    for client in clients {
        answers.push(client.await.unwrap());
    }
    releaser.abort();
    let status = |a: &String| a.split(' ').nth(1).unwrap_or("").to_string();
    let accepted = answers.iter().filter(|a| status(a) == "202").count();
    let refused: Vec<&String> = answers.iter().filter(|a| status(a) == "503").collect();
    assert!(accepted >= 1, "no large request was accepted: {answers:?}");
    assert!(!refused.is_empty(), "no request was refused");
    assert_eq!(
        accepted + refused.len(),
        CLIENTS,
        "answers other than 202/503: {:?}",
        answers
            .iter()
            .map(|a| a.lines().next().unwrap_or("(none)"))
            .collect::<Vec<_>>()
    );
    for answer in &refused {
        let lower = answer.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: application/problem+json"),
            "{answer}"
        );
        assert!(lower.contains("retry-after: "), "{answer}");
    }
    let scrape = gf.metrics().await;
    assert!(
        metric(
            &scrape,
            "gridflow_http_requests_rejected_total",
            "reason=\"body_budget\""
        ) >= refused.len() as f64,
        "{scrape}"
    );
    // The budget comes back: a small request is served.
    let (status, _, _) = exchange(
        &mut TcpStream::connect(gf.http_addr()).await.unwrap(),
        r#"{"id":1}"#,
    )
    .await
    .expect("an answer");
    assert_eq!(status, 202);
}

/// Writes the server certificate into `dir` and returns the `[http.tls]` section.
fn tls_section(pki: &Pki, dir: &std::path::Path) -> String {
    let (cert, key) = pki.server();
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    "[http.tls]\ncert = 'server.pem'\nkey = 'server.key'\n".to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_comes_is_cut() {
    let pki = Pki::new();
    let dir = test_dir();
    let tls = tls_section(&pki, dir.path());
    std::fs::write(
        dir.path().join("gridflow.toml"),
        format!("[http]\ntls_handshake_timeout_ms = 1000\nheader_read_timeout_ms = 60000\nidle_timeout_ms = 60000\n{tls}"),
    )
    .unwrap();
    write_pipeline(dir.path(), "in.toml", BLACKHOLE);
    let gf = Gridflow::start(dir.path(), &[]);
    let mut silent = TcpStream::connect(gf.http_addr()).await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(6)).await;
    assert!(
        closed,
        "a client that never starts its handshake holds its connection"
    );
    assert!(started.elapsed() >= Duration::from_millis(800));
    let scrape = gf.metrics().await;
    assert!(
        metric(
            &scrape,
            "gridflow_http_timeouts_total",
            "kind=\"tls_handshake\""
        ) >= 1.0,
        "{scrape}"
    );
    // A real TLS client is served.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let port = gf.http_addr().rsplit(':').next().unwrap().to_string();
    let answer = client
        .post(format!("https://localhost:{port}/in"))
        .header("content-type", "application/json")
        .body(r#"{"id":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
}

/// On SIGTERM, a keep-alive client's new request gets `503` with `Retry-After` while a slow
/// request in progress is answered `202`; then the process exits 0.
async fn drains_with_a_keep_alive_client(tls: bool) {
    let (seen, url) = slow_target(Duration::from_secs(3)).await;
    let pki = Pki::new();
    let dir = test_dir();
    let section = if tls {
        tls_section(&pki, dir.path())
    } else {
        String::new()
    };
    std::fs::write(dir.path().join("gridflow.toml"), section).unwrap();
    write_pipeline(dir.path(), "fast.toml", &BLACKHOLE.replace("/in", "/fast"));
    write_pipeline(
        dir.path(),
        "slow.toml",
        &format!("[source]\nkind='http'\npath='/slow'\n[sink]\nkind='http'\nurl='{url}'\n[on_error]\nmax_attempts=1\n"),
    );
    let mut gf = Gridflow::start(dir.path(), &[]);
    let port = gf.http_addr().rsplit(':').next().unwrap().to_string();
    let base = if tls {
        format!("https://localhost:{port}")
    } else {
        format!("http://127.0.0.1:{port}")
    };
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let send = |client: &reqwest::Client, path: &str| {
        client
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(r#"{"id":1}"#)
            .send()
    };
    // The keep-alive client: one request served, its connection kept.
    let first = send(&client, "/fast").await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    first.bytes().await.unwrap();
    // A slow request in progress on another connection.
    let other = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let slow = tokio::spawn(send(&other, "/slow"));
    wait_for_count(&seen, 1).await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the slow request never reached its sink"
    );
    gf.terminate();
    assert!(
        gf.wait_for_log_async("Shutting down", Duration::from_secs(5))
            .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new request on the kept connection: refused with 503 + Retry-After, not 404.
    let refused = send(&client, "/fast")
        .await
        .expect("an answer on the kept connection");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().get("retry-after").is_some());
    assert_eq!(
        refused.headers().get("content-type").unwrap(),
        "application/problem+json"
    );
    // The request in progress is answered.
    let answered = slow
        .await
        .unwrap()
        .expect("the request in progress was cut");
    assert_eq!(answered.status(), StatusCode::ACCEPTED);
    let status = gf
        .wait_exit_async(Duration::from_secs(30))
        .await
        .expect("exited");
    assert_eq!(status.code(), Some(0), "{}", gf.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_drains_on_sigterm_like_the_plain_one() {
    drains_with_a_keep_alive_client(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_listener_drains_on_sigterm() {
    drains_with_a_keep_alive_client(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_but_a_long_request_is_not() {
    let (seen, url) = slow_target(Duration::from_millis(2500)).await;
    let dir = test_dir();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[http]\nidle_timeout_ms = 1000\nheader_read_timeout_ms = 30000\n",
    )
    .unwrap();
    write_pipeline(dir.path(), "in.toml", BLACKHOLE);
    write_pipeline(
        dir.path(),
        "slow.toml",
        &format!("[source]\nkind='http'\npath='/slow'\n[sink]\nkind='http'\nurl='{url}'\n[on_error]\nmax_attempts=1\n"),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    // A request in progress longer than the idle timeout is answered.
    let mut stream = TcpStream::connect(gf.http_addr()).await.unwrap();
    let body = r#"{"id":1}"#;
    let request = format!(
        "POST /slow HTTP/1.1\r\nhost: gridflow\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (status, _, _) = read_answer(&mut stream, Duration::from_secs(10))
        .await
        .expect("the slow request was cut");
    assert_eq!(status, 202);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    // Then the connection idles, and is closed.
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(6)).await;
    assert!(closed, "an idle keep-alive connection is kept for ever");
    assert!(started.elapsed() >= Duration::from_millis(800));
    let scrape = gf.metrics().await;
    assert!(
        metric(&scrape, "gridflow_http_timeouts_total", "kind=\"idle\"") >= 1.0,
        "{scrape}"
    );
    assert_eq!(
        metric(&scrape, "gridflow_http_timeouts_total", "kind=\"header\""),
        0.0,
        "{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_tls_keep_alive_clients_served() {
    let (seen, url) = slow_target(Duration::from_secs(3)).await;
    let pki = Pki::new();
    let dir = test_dir();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        tls_section(&pki, dir.path()),
    )
    .unwrap();
    let fast = BLACKHOLE.replace("/in", "/fast");
    let slow = format!("[source]\nkind='http'\npath='/slow'\n[sink]\nkind='http'\nurl='{url}'\n[on_error]\nmax_attempts=1\n");
    write_pipeline(dir.path(), "fast.toml", &fast);
    write_pipeline(dir.path(), "slow.toml", &slow);
    let gf = Gridflow::start(dir.path(), &[]);
    let port = gf.http_addr().rsplit(':').next().unwrap().to_string();
    let tls_client = || {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    let send = |client: &reqwest::Client, path: &str| {
        client
            .post(format!("https://localhost:{port}{path}"))
            .header("content-type", "application/json")
            .body(r#"{"id":1}"#)
            .send()
    };
    let kept = tls_client();
    assert_eq!(
        send(&kept, "/fast").await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    let other = tls_client();
    let in_progress = tokio::spawn(send(&other, "/slow"));
    wait_for_count(&seen, 1).await;
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    // Both pipelines change while a request is in progress.
    write_pipeline(
        dir.path(),
        "fast.toml",
        &fast.replace("33554432", "33554431"),
    );
    write_pipeline(
        dir.path(),
        "slow.toml",
        &slow.replace("max_attempts=1", "max_attempts=2"),
    );
    let reloaded = http()
        .post(gf.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert!(reloaded.status().is_success(), "{reloaded:?}");
    // The kept connection is served by the new version; the request in progress is answered
    // by the old one.
    let after = send(&kept, "/fast").await.unwrap();
    assert_eq!(after.status(), StatusCode::ACCEPTED);
    let answered = in_progress
        .await
        .unwrap()
        .expect("the request in progress was cut");
    assert_eq!(answered.status(), StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soap_bodies_share_the_same_budget() {
    let dir = test_dir();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[http]\nmax_buffered_body_bytes = 2000\n",
    )
    .unwrap();
    write_pipeline(
        dir.path(),
        "lookup.toml",
        "[source]\nkind='soap'\npath='/soap/lookup'\nreply='mapped'\n[[steps]]\nkind='xml_to_json'\n[[steps]]\nkind='map'\nexpression='{mrid: GL_MarketDocument.mRID}'\n[sink]\nkind='file'\npath='out/lookups.ndjson'\n",
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let envelope = |padding: usize| {
        format!(
            "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><GL_MarketDocument><mRID>m-1</mRID><!--{}--></GL_MarketDocument></soap:Body></soap:Envelope>",
            "x".repeat(padding)
        )
    };
    let send = |body: String| {
        http()
            .post(gf.http_url("/soap/lookup"))
            .header("content-type", "text/xml; charset=utf-8")
            .header("soapaction", "\"urn:Lookup\"")
            .body(body)
            .send()
    };
    // A body larger than the whole budget could never fit: too large, not "retry later".
    let too_large = send(envelope(5000)).await.unwrap();
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(too_large.headers().get("retry-after").is_none());
    assert!(too_large.text().await.unwrap().contains("Fault"));
    // A request whose body has brought 1499 of the 2000 bytes (all but its last byte)...
    let mut held = TcpStream::connect(gf.http_addr()).await.unwrap();
    held.write_all(
        b"POST /soap/lookup HTTP/1.1\r\nhost: gridflow\r\ncontent-type: text/xml\r\nsoapaction: \"urn:Lookup\"\r\ncontent-length: 1500\r\n\r\n",
    )
    .await
    .unwrap();
    held.write_all(&[b' '; 1499]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...leaves no room for a SOAP body of 1200: 503 fault with Retry-After.
    let refused = send(envelope(1000)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().get("retry-after").is_some());
    assert!(refused.text().await.unwrap().contains("Fault"));
    // Its client gone, its share is given back: served.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = send(envelope(1000)).await.unwrap();
        if answer.status() == StatusCode::OK {
            assert!(answer.text().await.unwrap().contains("m-1"));
            break;
        }
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "the budget was not given back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The admin listener (open to every network for probes and scrapes) holds its clients to
/// the same header and idle limits: a client that stops mid-headers is cut, and one holding
/// a half-sent request does not keep gridflow from stopping. (Served by `axum::serve`, it
/// had no timeout at all: such a connection stayed open for ever, and its graceful shutdown
/// waited for it for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_cuts_slow_clients_and_does_not_hold_the_stop() {
    let (_dir, mut gf) = start("header_read_timeout_ms = 1000\nidle_timeout_ms = 30000\n");
    let mut slow = TcpStream::connect(gf.admin_addr()).await.unwrap();
    slow.write_all(b"GET /health/live HTTP/1.1\r\nhost: gridflow\r\nx-sl")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(6)).await;
    assert!(
        closed,
        "a client that stopped mid-headers still holds its admin connection"
    );
    // Probes, scrapes and the guard (peer address: loopback) still work.
    assert!(gf.is_ready().await);
    let reload = http()
        .post(gf.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert!(reload.status().is_success(), "{}", reload.status());
    // A half-sent request while gridflow stops: it exits all the same.
    let mut held = TcpStream::connect(gf.admin_addr()).await.unwrap();
    held.write_all(b"POST /admin/reload HTTP/1.1\r\nhost: gridflow\r\nx-sl")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gf.terminate();
    let exited = gf.wait_exit_async(Duration::from_secs(20)).await;
    assert!(
        exited.is_some_and(|s| s.success()),
        "gridflow did not stop while an admin client held a half-sent request: {exited:?}\n{}",
        gf.log_text()
    );
    drop(held);
}

/// A body's share of the budget is held while its message is in its pipeline, also when its
/// client goes away before the answer: else a client that sends a body and leaves at once
/// frees its share while the body still sits in memory (its sink slow or down), and bodies
/// pile up past `max_buffered_body_bytes` without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_keeps_its_budget_share_in_its_pipeline_when_its_client_leaves() {
    let (seen, url) = slow_target(Duration::from_secs(4)).await;
    let dir = test_dir();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[http]\nmax_buffered_body_bytes = 2000\n",
    )
    .unwrap();
    write_pipeline(
        dir.path(),
        "slow.toml",
        &format!("[source]\nkind='http'\npath='/in'\n[sink]\nkind='http'\nurl='{url}'\n[on_error]\nmax_attempts=1\n"),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(1500));
    let mut first = TcpStream::connect(gf.http_addr()).await.unwrap();
    first
        .write_all(format!("{}{body}", request_head(body.len())).as_bytes())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the first body never reached its sink"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its client leaves while the body is at its (slow) sink.
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = TcpStream::connect(gf.http_addr()).await.unwrap();
    let (status, head, _) = exchange(&mut second, &body).await.expect("an answer");
    assert_eq!(
        status, 503,
        "a second body was let in while the first still holds its share in its pipeline"
    );
    assert!(head.contains("retry-after"), "{head}");
    // Once the first is delivered, its share comes back.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut next = TcpStream::connect(gf.http_addr()).await.unwrap();
        let (status, _, _) = exchange(&mut next, &body).await.expect("an answer");
        if status == 202 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "the budget was not given back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The budget counts the bytes received, not the bytes announced: clients that each declare
/// a large `Content-Length` and send nothing hold none of it. (Before, a declared length was
/// reserved whole before a byte came: a few dozen such connections, at no cost to their
/// client, held the whole budget for `body_read_timeout_ms` and every other upload got `503`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_lengths_that_never_come_do_not_hold_the_body_budget() {
    const HANGING: usize = 64;
    const DECLARED: usize = 1024 * 1024;
    // Room for four declared bodies; 64 are declared.
    let (_dir, gf) = start(&format!(
        "max_buffered_body_bytes = {}\nbody_read_timeout_ms = 60000\n",
        4 * DECLARED
    ));
    let baseline = rss(gf.pid());
    let mut hanging = Vec::new();
    for _ in 0..HANGING {
        let mut stream = TcpStream::connect(gf.http_addr()).await.unwrap();
        stream
            .write_all(request_head(DECLARED).as_bytes())
            .await
            .unwrap();
        hanging.push(stream);
    }
    // Every head is read and its handler waits for a body that does not come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let mut other = TcpStream::connect(gf.http_addr()).await.unwrap();
        let (status, head, body) = exchange(&mut other, r#"{"id":1}"#)
            .await
            .expect("an answer");
        assert_eq!(
            status, 202,
            "a small upload was refused while clients only announced bodies: {head}\n{body}"
        );
    }
    let during = rss(gf.pid());
    eprintln!(
        "RSS before {} MiB, with {HANGING} bodies of {} MiB announced {} MiB",
        baseline >> 20,
        DECLARED >> 20,
        during >> 20
    );
    // Well below the bodies announced (buffers, tasks and the allocator's slack).
    let grown = during.saturating_sub(baseline);
    assert!(
        grown < 32 * 1024 * 1024,
        "RSS grew by {} MiB with {} MiB of bodies announced and none sent",
        grown >> 20,
        (HANGING * DECLARED) >> 20
    );
    // A body that does come, as large as the announced ones, fits too.
    let large = format!("\"{}\"", "x".repeat(DECLARED - 2));
    let mut other = TcpStream::connect(gf.http_addr()).await.unwrap();
    let (status, _, body) = exchange(&mut other, &large).await.expect("an answer");
    assert_eq!(status, 202, "{body}");
    let scrape = gf.metrics().await;
    assert_eq!(
        metric(
            &scrape,
            "gridflow_http_requests_rejected_total",
            "reason=\"body_budget\""
        ),
        0.0,
        "{scrape}"
    );
    // The hanging clients are still connected (not refused): none has been answered.
    for stream in &mut hanging {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(10), stream.read(&mut buf)).await;
        assert!(read.is_err(), "a hanging client was answered: {read:?}");
    }
}
