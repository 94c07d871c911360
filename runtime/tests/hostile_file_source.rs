//! Hostile world, file source: what a directory of files can do to a running gridflow.
//!
//! Black-box, against the real binary: a file over the size cap, a line over the line cap
//! (memory stays bounded: the process's peak RSS is read from /proc), a poison line, a
//! dead-letter destination that refuses every write (the attempt limit), and SIGKILL in the
//! middle of a large NDJSON file (nothing lost, duplicates only after the checkpoint), and a
//! graceful stop in the middle of one (nothing lost, nothing twice).

mod common;

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use common::*;

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `text` to `<dir>/<name>` under a temporary name first (the temp-name rule).
fn drop_file(dir: &Path, name: &str, text: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!("{name}.part"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// The JSON lines of `path` (none when it does not exist).
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The reason file beside a rejected file.
fn reason(failed: &Path, name: &str) -> serde_json::Value {
    let path = failed.join(format!("{name}.error.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no reason file {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A field of /proc/<pid>/status, in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn file_pipeline(dir: &Path, name: &str, source_extra: &str, rest: &str) {
    write_pipeline(
        dir,
        &format!("{name}.toml"),
        &format!(
            "name='{name}'\n[source]\nkind='file'\ndir='inbox'\npoll_interval_ms=100\n{source_extra}\n{rest}"
        ),
    );
}

/// A file over `max_file_bytes` goes to failed/ unread, with a reason file saying which cap
/// and the size; it is counted and logged, and the next file is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_size_cap_goes_to_failed_unsent() {
    let dir = test_dir();
    file_pipeline(
        dir.path(),
        "cap",
        "max_file_bytes=1000",
        "[sink]\nkind='file'\npath='out/out.ndjson'\n",
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let inbox = dir.path().join("inbox");
    let big = format!("{{\"id\":\"big\",\"pad\":\"{}\"}}", "x".repeat(5000));
    drop_file(&inbox, "a-big.json", big.as_bytes());
    drop_file(&inbox, "b-small.json", b"{\"id\":\"small\"}");

    wait_for("b-small.json in done/", Duration::from_secs(30), || {
        inbox.join("done/b-small.json").exists()
    })
    .await;
    assert!(
        inbox.join("failed/a-big.json").exists(),
        "{}",
        gf.log_text()
    );
    assert!(!inbox.join("a-big.json").exists());
    let why = reason(&inbox.join("failed"), "a-big.json");
    assert_eq!(why["reason"], "max_file_bytes", "{why}");
    assert_eq!(why["limit"], 1000, "{why}");
    assert_eq!(why["size"], big.len() as u64, "{why}");
    assert_eq!(why["file"], "a-big.json", "{why}");
    assert_eq!(why["pipeline"], "cap", "{why}");

    let out = json_lines(&dir.path().join("out/out.ndjson"));
    assert_eq!(
        out,
        [serde_json::json!({"id": "small"})],
        "nothing of the big file"
    );
    let metrics = gf.metrics().await;
    let on = ["pipeline=\"cap\""];
    assert_eq!(
        sample(
            &metrics,
            "gridflow_file_source_rejected_total",
            &[on[0], "reason=\"max_file_bytes\""]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "gridflow_messages_received_total", &on),
        Some(1.0),
        "the big file never entered the pipeline"
    );
    assert!(gf.log_text().contains("File rejected"), "{}", gf.log_text());
}

/// A 200 MiB line with the default 1 MiB line cap: the file goes to failed/ with its reason
/// (which cap, the line's length, its number), none of its lines is sent (not even the one
/// before it), the next file is processed, and the process's peak RSS stays far below the
/// line's size. The line is a hole of a sparse file: the test itself is cheap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_over_the_line_cap_goes_to_failed_with_bounded_memory() {
    let dir = test_dir();
    file_pipeline(
        dir.path(),
        "lines",
        "",
        "[sink]\nkind='file'\npath='out/out.ndjson'\n",
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();

    const LINE: u64 = 200 << 20;
    let first = b"{\"id\":1}\n";
    let tmp = inbox.join("a-huge.ndjson.part");
    {
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(first).unwrap();
        f.set_len(first.len() as u64 + LINE).unwrap();
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(b"\n{\"id\":3}\n").unwrap();
    }
    std::fs::rename(&tmp, inbox.join("a-huge.ndjson")).unwrap();
    drop_file(&inbox, "b-next.ndjson", b"{\"id\":\"next\"}\n");

    wait_for("b-next.ndjson in done/", Duration::from_secs(60), || {
        inbox.join("done/b-next.ndjson").exists()
    })
    .await;
    assert!(
        inbox.join("failed/a-huge.ndjson").exists(),
        "{}",
        gf.log_text()
    );
    let why = reason(&inbox.join("failed"), "a-huge.ndjson");
    assert_eq!(why["reason"], "max_line_bytes", "{why}");
    assert_eq!(why["limit"], 1 << 20, "{why}");
    assert_eq!(why["line"], 2, "{why}");
    assert_eq!(why["size"], LINE, "{why}");
    assert_eq!(why["offset"], first.len(), "{why}");
    let out = json_lines(&dir.path().join("out/out.ndjson"));
    assert_eq!(
        out,
        [serde_json::json!({"id": "next"})],
        "no line of the rejected file was sent"
    );

    let peak_kib = proc_kib(gf.pid(), "VmHWM");
    assert!(
        peak_kib < 100 * 1024,
        "peak RSS {peak_kib} KiB for a {LINE}-byte line (cap 1 MiB)"
    );
    let metrics = gf.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "gridflow_file_source_rejected_total",
            &["pipeline=\"lines\"", "reason=\"max_line_bytes\""]
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// A line that is not JSON is dead-lettered with its reason, the other lines are delivered
/// once, and the file is finished once (failed/): not sent again on later polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_line_is_dead_lettered_and_the_file_finished_once() {
    let dir = test_dir();
    file_pipeline(
        dir.path(),
        "poison",
        "",
        "[[steps]]\nkind='map'\nexpression='{id: id}'\n[sink]\nkind='file'\npath='out/out.ndjson'\n",
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let inbox = dir.path().join("inbox");
    drop_file(
        &inbox,
        "a.ndjson",
        b"{\"id\":1}\n{\"id\":2}\nnot json\n{\"id\":4}\n{\"id\":5}\n",
    );
    wait_for("a.ndjson in failed/", Duration::from_secs(30), || {
        inbox.join("failed/a.ndjson").exists()
    })
    .await;
    // Ten polls later, and one more file through: nothing of a.ndjson came again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    drop_file(&inbox, "b.ndjson", b"{\"id\":6}\n");
    wait_for("b.ndjson in done/", Duration::from_secs(30), || {
        inbox.join("done/b.ndjson").exists()
    })
    .await;

    let mut ids: Vec<i64> = json_lines(&dir.path().join("out/out.ndjson"))
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 4, 5, 6], "each good line once");
    let dead = json_lines(&dir.path().join("out/out.ndjson.dlq"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["payload"], "not json");
    assert_eq!(dead[0]["headers"]["gridflow.error.code"], "invalid_json");
    assert_eq!(dead[0]["headers"]["gridflow.source.line"], "3");
    assert!(!inbox.join("failed/a.ndjson.error.json").exists());
    assert!(!inbox.join(".a.ndjson.checkpoint").exists());
    let metrics = gf.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "gridflow_messages_received_total",
            &["pipeline=\"poison\""]
        ),
        Some(6.0),
        "{metrics}"
    );
}

/// The dead-letter destination refuses every write (`/dev/full`): a file with a poison line
/// is tried `max_attempts` times, each from its checkpoint (the lines before the poison line
/// are delivered once), then goes to failed/ with its reason; the next file is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_limit_gives_a_file_up_while_the_dead_letter_destination_is_down() {
    let dir = test_dir();
    file_pipeline(
        dir.path(),
        "stuck",
        "max_attempts=3",
        "[[steps]]\nkind='map'\nexpression='{id: id}'\n[sink]\nkind='file'\npath='out/out.ndjson'\n\
         [on_error]\nmax_attempts=2\ninitial_backoff_ms=10\nmax_backoff_ms=20\ndead_letter_file='/dev/full'\n",
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let inbox = dir.path().join("inbox");
    drop_file(
        &inbox,
        "a.ndjson",
        b"{\"id\":1}\n{\"id\":2}\nnot json\n{\"id\":4}\n",
    );
    drop_file(&inbox, "b.ndjson", b"{\"id\":\"b\"}\n");
    wait_for("a.ndjson in failed/", Duration::from_secs(60), || {
        inbox.join("failed/a.ndjson").exists()
    })
    .await;
    wait_for("b.ndjson in done/", Duration::from_secs(30), || {
        inbox.join("done/b.ndjson").exists()
    })
    .await;

    let why = reason(&inbox.join("failed"), "a.ndjson");
    assert_eq!(why["reason"], "max_attempts", "{why}");
    assert_eq!(why["limit"], 3, "{why}");
    assert_eq!(why["attempts"], 3, "{why}");
    assert_eq!(why["settled_lines"], 2, "{why}");
    assert_eq!(why["settled_offset"], 18, "{why}");
    assert!(
        why["error"].as_str().unwrap().contains("dead-letter"),
        "{why}"
    );
    let mut count: HashMap<String, usize> = HashMap::new();
    for v in json_lines(&dir.path().join("out/out.ndjson")) {
        *count.entry(v["id"].to_string()).or_default() += 1;
    }
    assert_eq!(
        count.get("1"),
        Some(&1),
        "before the checkpoint: once {count:?}"
    );
    assert_eq!(
        count.get("2"),
        Some(&1),
        "before the checkpoint: once {count:?}"
    );
    assert_eq!(count.get("\"b\""), Some(&1), "{count:?}");
    assert!(count.get("4").copied().unwrap_or(0) <= 3, "{count:?}");
    assert!(!inbox.join(".a.ndjson.checkpoint").exists());
    let metrics = gf.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "gridflow_file_source_rejected_total",
            &["pipeline=\"stuck\"", "reason=\"max_attempts\""]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        gf.log_text().contains("tried again from its checkpoint"),
        "{}",
        gf.log_text()
    );
}

/// An HTTP target that answers one request at a time, slowly, and records the ids.
async fn slow_target(ids: Arc<Mutex<Vec<i64>>>) -> String {
    let gate = Arc::new(tokio::sync::Mutex::new(()));
    let app = Router::new().route(
        "/hook",
        post(move |body: String| {
            let (ids, gate) = (Arc::clone(&ids), Arc::clone(&gate));
            async move {
                let _one = gate.lock().await;
                tokio::time::sleep(Duration::from_millis(2)).await;
                let value: serde_json::Value = serde_json::from_str(&body).unwrap();
                ids.lock().unwrap().push(value["id"].as_i64().unwrap());
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook")
}

/// A gridflow with `max_in_flight = 8` and the file pipeline `name` whose sink is a
/// `slow_target`: the ids it got, the directory, the process.
async fn start_to_slow_target(name: &str) -> (Arc<Mutex<Vec<i64>>>, tempfile::TempDir, Gridflow) {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let url = slow_target(Arc::clone(&ids)).await;
    let dir = test_dir();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[engine]\nmax_in_flight = 8\n",
    )
    .unwrap();
    file_pipeline(
        dir.path(),
        name,
        "",
        &format!("[sink]\nkind='http'\nurl='{url}'\n"),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    (ids, dir, gf)
}

/// SIGKILL in the middle of a large NDJSON file, then a restart: every line arrives at least
/// once, the lines before the checkpoint the killed process left arrive exactly once (the
/// restart resends from the checkpoint, not from the first line), and the file ends in done/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_file_resends_from_the_checkpoint_only() {
    const LINES: i64 = 3000;
    let (ids, dir, mut gf) = start_to_slow_target("big").await;
    let inbox = dir.path().join("inbox");
    let mut text = String::new();
    for id in 1..=LINES {
        text.push_str(&format!("{{\"id\":{id},\"pad\":\"{}\"}}\n", "p".repeat(64)));
    }
    drop_file(&inbox, "big.ndjson", text.as_bytes());

    let checkpoint = inbox.join(".big.ndjson.checkpoint");
    wait_for(
        "a third of the lines and a checkpoint",
        Duration::from_secs(60),
        || ids.lock().unwrap().len() >= (LINES / 3) as usize && checkpoint.exists(),
    )
    .await;
    gf.kill();
    let at_kill: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&checkpoint).unwrap()).unwrap();
    let settled = at_kill["line"].as_i64().unwrap();
    let received_before = ids.lock().unwrap().len();
    assert!(
        settled > 0 && settled < LINES,
        "the checkpoint is in the middle of the file: {at_kill}"
    );
    assert!(inbox.join("big.ndjson").exists(), "killed before the end");

    let _gf = Gridflow::start(dir.path(), &[]);
    wait_for("big.ndjson in done/", Duration::from_secs(120), || {
        inbox.join("done/big.ndjson").exists()
    })
    .await;
    assert!(!checkpoint.exists(), "the checkpoint goes with the file");

    let got = ids.lock().unwrap().clone();
    let mut count: HashMap<i64, usize> = HashMap::new();
    for id in &got {
        *count.entry(*id).or_default() += 1;
    }
    let missing: Vec<i64> = (1..=LINES).filter(|id| !count.contains_key(id)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let twice: Vec<i64> = (1..=settled)
        .filter(|id| count.get(id).copied().unwrap_or(0) != 1)
        .collect();
    assert!(
        twice.is_empty(),
        "lines before the checkpoint (line {settled}) sent more than once: {twice:?}"
    );
    assert!(
        got.len() - received_before <= (LINES - settled) as usize + 8,
        "after the restart only the lines after the checkpoint (and those in flight) came: {} of {LINES}, checkpoint {settled}",
        got.len() - received_before
    );
}

/// SIGTERM in the middle of a large NDJSON file: the source stops taking lines, the lines in
/// flight are delivered, the checkpoint is written; after a restart the file goes on from it.
/// Every line arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_mid_file_goes_on_from_the_checkpoint_without_duplicates() {
    const LINES: i64 = 2000;
    let (ids, dir, mut gf) = start_to_slow_target("stop").await;
    let inbox = dir.path().join("inbox");
    let text: String = (1..=LINES).map(|id| format!("{{\"id\":{id}}}\n")).collect();
    drop_file(&inbox, "big.ndjson", text.as_bytes());
    wait_for("a quarter of the lines", Duration::from_secs(60), || {
        ids.lock().unwrap().len() >= (LINES / 4) as usize
    })
    .await;
    gf.terminate();
    assert!(
        gf.wait_exit_async(Duration::from_secs(60)).await.is_some(),
        "gridflow did not stop"
    );
    let checkpoint = inbox.join(".big.ndjson.checkpoint");
    let at_stop: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&checkpoint).unwrap()).unwrap();
    let settled = at_stop["line"].as_i64().unwrap();
    assert!(settled > 0 && settled < LINES, "{at_stop}");
    assert_eq!(
        ids.lock().unwrap().len() as i64,
        settled,
        "what was sent before the stop is what the checkpoint says"
    );

    let _gf = Gridflow::start(dir.path(), &[]);
    wait_for("big.ndjson in done/", Duration::from_secs(120), || {
        inbox.join("done/big.ndjson").exists()
    })
    .await;
    let mut got = ids.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(
        got,
        (1..=LINES).collect::<Vec<_>>(),
        "every line exactly once"
    );
}
