//! Black-box, the `file` sink's group commit: acknowledged means on disk, whatever happens.
//!
//! - SIGKILL: many concurrent HTTP requests into an `http` → `file` pipeline (each `202` is an
//!   acknowledgement), the process killed right after a burst of acknowledgements, several
//!   times over the same file: every acknowledged line is in the file, whole, once; every
//!   line but the last is whole; the last may be part of a line that was never acknowledged
//!   (a batch whose write the kill cut short), and it is cut off when the file is opened
//!   again, before the next line is appended (the test leaves one too, as a kill in the middle
//!   of a write would: the kills here rarely hit one).
//! - A full disk (a 64 KiB tmpfs filled by a ballast file): concurrent requests fill it, their
//!   batches fail whole and are retried; once the ballast is removed the retries succeed.
//!   The file then holds exactly the acknowledged lines, each whole and once, and every
//!   refused input is in the dead-letter file.
//! - Two pipelines on one file (one writer for the path), one of them reloaded twice during
//!   the traffic: every acknowledged line once, whole.
//!
//! No Kafka is needed (the harness wants `KAFKA_BROKERS` set all the same).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A pipeline `name` from `POST /in/<name>` to the file `path`.
fn pipeline(name: &str, path: &str, on_error: &str) -> String {
    format!(
        "name = '{name}'\n[source]\nkind = 'http'\npath = '/in/{name}'\n\
         [sink]\nkind = 'file'\npath = '{path}'\n\
         [on_error]\n{on_error}\n"
    )
}

/// The body of request `id`: one JSON line of about 300 bytes.
fn body(id: usize) -> String {
    format!("{{\"id\":{id},\"pad\":\"{}\"}}", "p".repeat(280))
}

/// The file's whole lines (their ids, in file order) and what follows the last `\n`; panics
/// on a whole line that is not one request's body.
fn read_lines(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_default();
    let end = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    let ids = bytes[..end]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_slice(l)
                .unwrap_or_else(|e| panic!("torn line {:?}: {e}", String::from_utf8_lossy(l)));
            let id = v["id"].as_u64().expect("an id") as usize;
            assert_eq!(v, serde_json::from_str::<Value>(&body(id)).unwrap());
            id
        })
        .collect();
    (ids, bytes[end..].to_vec())
}

/// POSTs request `id`'s body with `client` (one client for many requests: building one per
/// request is slow); its status.
async fn send(client: &reqwest::Client, url: &str, id: usize) -> u16 {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body(id))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url} got no answer: {e}"))
        .status()
        .as_u16()
}

/// Every id at most once.
fn assert_unique(ids: &[usize]) {
    let mut seen = BTreeMap::new();
    for id in ids {
        *seen.entry(id).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "lines written twice: {twice:?}");
}

/// One round: `clients` concurrent clients post requests (ids from `next`) until `kill_at`
/// acknowledgements in this round, then the client that got that one kills the process
/// (SIGKILL) at once. Returns the ids acknowledged (`202`).
async fn round_until_killed(
    gf: &Gridflow,
    next: Arc<AtomicUsize>,
    clients: usize,
    kill_at: usize,
) -> BTreeSet<usize> {
    let url = gf.http_url("/in/kill");
    let pid = gf.pid() as i32;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let killed = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, next, acked, killed, client) = (
            url.clone(),
            Arc::clone(&next),
            Arc::clone(&acked),
            Arc::clone(&killed),
            client.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !killed.load(Ordering::SeqCst) {
                let id = next.fetch_add(1, Ordering::SeqCst);
                let answer = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body(id))
                    .send()
                    .await;
                let status = match answer {
                    Ok(r) => r.status().as_u16(),
                    // The process is gone: this request was not acknowledged.
                    Err(_) => break,
                };
                assert!(
                    status == 202 || killed.load(Ordering::SeqCst),
                    "id {id}: {status}"
                );
                if status != 202 {
                    continue;
                }
                let count = {
                    let mut acked = acked.lock().unwrap();
                    acked.insert(id);
                    acked.len()
                };
                if count == kill_at && !killed.swap(true, Ordering::SeqCst) {
                    // SAFETY: a plain syscall on the child's pid.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(killed.load(Ordering::SeqCst), "the process was killed");
    let acked = acked.lock().unwrap().clone();
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_line_is_in_the_file_whole_after_a_sigkill() {
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "kill.toml",
        &pipeline("kill", "out/lines.ndjson", "max_attempts = 1"),
    );
    let file = dir.path().join("out/lines.ndjson");
    let next = Arc::new(AtomicUsize::new(0));
    let mut acked_all = BTreeSet::new();
    let mut torn_tails = 0;
    for round in 0..4 {
        let mut gf = Gridflow::start(dir.path(), &[]);
        // Opening the file cut a torn last line off: everything in it is whole now (the file
        // is opened with the first line of the round).
        let first = next.fetch_add(1, Ordering::SeqCst);
        let r = post(
            &gf.http_url("/in/kill"),
            "application/json",
            &[],
            body(first),
        )
        .await;
        assert_eq!(r.status(), 202);
        acked_all.insert(first);
        let (_, tail) = read_lines(&file);
        assert!(tail.is_empty(), "round {round}: a torn line was left");

        let acked = round_until_killed(&gf, Arc::clone(&next), 48, 1500).await;
        assert!(gf.wait_exit_async(Duration::from_secs(10)).await.is_some());
        acked_all.extend(&acked);

        let (ids, tail) = read_lines(&file);
        assert_unique(&ids);
        let written: BTreeSet<usize> = ids.iter().copied().collect();
        let missing: Vec<_> = acked_all.difference(&written).collect();
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged but not in the file (whole): {missing:?}"
        );
        if !tail.is_empty() {
            torn_tails += 1;
            // Part of a line never acknowledged: not a whole body.
            assert!(serde_json::from_slice::<Value>(&tail).is_err() || tail.len() < 10);
        }
        eprintln!(
            "round {round}: {} acknowledged, {} lines in the file ({} not acknowledged), torn tail: {} bytes",
            acked.len(),
            ids.len(),
            written.difference(&acked_all).count(),
            tail.len()
        );
    }
    eprintln!("{torn_tails} of 4 kills left a torn last line");

    // A kill in the middle of a batch's write leaves part of a line (rare: the kills above
    // may not have hit one): as it would be left.
    let mut torn = body(next.fetch_add(1, Ordering::SeqCst)).into_bytes();
    torn.truncate(torn.len() / 2);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);

    // Opened again: the torn line is cut off before the next line.
    let gf = Gridflow::start(dir.path(), &[]);
    let last = next.fetch_add(1, Ordering::SeqCst);
    let r = post(
        &gf.http_url("/in/kill"),
        "application/json",
        &[],
        body(last),
    )
    .await;
    assert_eq!(r.status(), 202);
    acked_all.insert(last);
    let (ids, tail) = read_lines(&file);
    assert!(tail.is_empty(), "the file ends with a whole line");
    assert_unique(&ids);
    let written: BTreeSet<usize> = ids.iter().copied().collect();
    assert!(acked_all.is_subset(&written));
    assert_eq!(
        ids.last(),
        Some(&last),
        "the torn line is gone, the new one whole"
    );
    assert!(
        gf.log_text().contains("cut off before appending"),
        "the cut is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_fails_whole_and_its_retries_tear_and_repeat_no_line() {
    let dir = test_dir();
    let small = dir.path().join("small");
    let _unmount = small_disk(&small);
    // 40 KiB of the 64: about 70 lines fit beside it, 200 will be sent.
    let ballast = small.join("ballast");
    std::fs::write(&ballast, vec![b'b'; 40 << 10]).unwrap();
    write_pipeline(
        dir.path(),
        "full.toml",
        &pipeline(
            "full",
            "small/out.ndjson",
            "max_attempts = 400\ninitial_backoff_ms = 10\nmax_backoff_ms = 20\n\
             dead_letter_file = 'dead-letters/full.dlq.ndjson'",
        ),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let url = gf.http_url("/in/full");
    let answers = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    let http = http();
    for client in 0..20 {
        let (url, answers, http) = (url.clone(), Arc::clone(&answers), http.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..10 {
                let id = client * 10 + n;
                let status = send(&http, &url, id).await;
                answers.lock().unwrap().insert(id, status);
            }
        }));
    }
    // Retries under way: the disk is full.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = gf.metrics().await;
        let retries = sample(
            &metrics,
            "gridflow_sink_retries_total",
            &["pipeline=\"full\""],
        );
        if retries.unwrap_or(0.0) >= 20.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no retries: {metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_file(&ballast).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    assert_eq!(answers.len(), 200);
    let accepted: BTreeSet<usize> = answers
        .iter()
        .filter(|(_, s)| **s == 202)
        .map(|(id, _)| *id)
        .collect();
    let refused: BTreeSet<usize> = answers
        .iter()
        .filter(|(_, s)| **s != 202)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        answers.values().all(|s| *s == 202 || *s == 503),
        "{answers:?}"
    );
    let (ids, tail) = read_lines(&small.join("out.ndjson"));
    assert!(tail.is_empty(), "the file ends with a whole line");
    assert_unique(&ids);
    let written: BTreeSet<usize> = ids.iter().copied().collect();
    assert_eq!(
        written, accepted,
        "exactly the acknowledged lines, once each"
    );
    let dead: BTreeSet<usize> =
        std::fs::read_to_string(dir.path().join("dead-letters/full.dlq.ndjson"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let d: Value = serde_json::from_str(l).unwrap();
                let payload: Value = serde_json::from_str(d["payload"].as_str().unwrap()).unwrap();
                payload["id"].as_u64().unwrap() as usize
            })
            .collect();
    assert_eq!(dead, refused, "every refused input is a dead letter");
    let metrics = gf.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "gridflow_messages_sent_total",
            &["pipeline=\"full\""]
        ),
        Some(accepted.len() as f64)
    );
    assert!(accepted.len() > 100, "the retries succeeded: {accepted:?}");
}

/// Two pipelines append to one file (one writer for the path), and one of them is reloaded in
/// the middle of the traffic (its writer handed to the new version, or a new one started
/// while the old one finishes its queue): every acknowledged line is there once, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelines_and_a_reload_on_one_file_tear_and_lose_no_line() {
    let dir = test_dir();
    for name in ["a", "b"] {
        write_pipeline(
            dir.path(),
            &format!("{name}.toml"),
            &pipeline(name, "out/shared.ndjson", "max_attempts = 3"),
        );
    }
    let gf = Gridflow::start(dir.path(), &[]);
    let answers = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    let http = http();
    let stop = Arc::new(AtomicBool::new(false));
    for client in 0..16 {
        let url = gf.http_url(if client % 2 == 0 { "/in/a" } else { "/in/b" });
        let (answers, http, stop) = (Arc::clone(&answers), http.clone(), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut id = client * 1_000_000;
            while !stop.load(Ordering::SeqCst) {
                let status = send(&http, &url, id).await;
                answers.lock().unwrap().insert(id, status);
                id += 1;
            }
        }));
    }
    // Reloaded twice while the clients post.
    for version in 0..2 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        write_pipeline(
            dir.path(),
            "a.toml",
            &format!(
                "# version {version}\n{}",
                pipeline("a", "out/shared.ndjson", "max_attempts = 3")
            ),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while gf.log_text().matches("\"action\":\"Reloaded\"").count() <= version {
            assert!(Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    let accepted: BTreeSet<usize> = answers
        .iter()
        .filter(|(_, s)| **s == 202)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        answers.values().all(|s| *s == 202 || *s == 503),
        "{answers:?}"
    );
    let (ids, tail) = read_lines(&dir.path().join("out/shared.ndjson"));
    assert!(tail.is_empty(), "the file ends with a whole line");
    assert_unique(&ids);
    let written: BTreeSet<usize> = ids.iter().copied().collect();
    let missing: Vec<_> = accepted.difference(&written).collect();
    assert!(missing.is_empty(), "acknowledged, not written: {missing:?}");
    assert!(accepted.len() > 1000, "{} accepted", accepted.len());
    eprintln!(
        "{} requests, {} acknowledged, {} lines",
        answers.len(),
        accepted.len(),
        ids.len()
    );
}
