//! Black-box: the operator material of `ops/` against a live gridflow and a real broker.
//!
//! - Every ```` ```sh runbook-test ```` block of `ops/runbooks/*.md` runs (`bash -euo pipefail`)
//!   in the directory of a running gridflow, with the variables the runbooks expect
//!   (`GRIDFLOW_ADMIN`, `GRIDFLOW_HTTP`, `KAFKA_BROKERS`, `PIPELINE`, `DLQ`, `GRIDFLOW_KIT`: this
//!   checkout, for the evidence script) and the `gridflow`
//!   binary on `PATH`, and exits 0: the read-only commands of the runbooks keep working on a
//!   healthy instance. Every runbook has at least one such block.
//! - `GET /metrics` passes `promtool check metrics` without a remark, and names every metric of
//!   the contract `ops/metrics.txt` (the names the alerts and the dashboard use).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// How long one runbook block may run (a dry-run replay reads the dead-letter topic).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(120);

fn ops_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops")
}

/// One ```` ```sh runbook-test ```` block of a runbook.
struct Block {
    file: String,
    /// 1-based, among the file's runbook-test blocks.
    number: usize,
    /// 1-based line of the opening fence.
    line: usize,
    code: String,
}

/// The runbook-test blocks of `text`. Fences may be indented (inside a list item); the block's
/// lines lose that indentation.
fn runbook_blocks(file: &str, text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    // The open block: its fence's line, the fence's indentation, its lines so far.
    let mut open: Option<(usize, usize, Vec<String>)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some((start, indent, mut lines)) = open.take() {
            if trimmed == "```" {
                blocks.push(Block {
                    file: file.to_string(),
                    number: blocks.len() + 1,
                    line: start,
                    code: lines.join("\n") + "\n",
                });
            } else {
                let cut = line
                    .bytes()
                    .take(indent)
                    .take_while(|b| *b == b' ' || *b == b'\t')
                    .count();
                lines.push(line[cut..].to_string());
                open = Some((start, indent, lines));
            }
        } else if trimmed == "```sh runbook-test" {
            let indent = line.len() - line.trim_start().len();
            open = Some((i + 1, indent, Vec::new()));
        }
    }
    assert!(
        open.is_none(),
        "{file}: a ```sh runbook-test block is not closed"
    );
    blocks
}

/// Every runbook of `ops/runbooks/` (not its README) with its text, sorted by name.
fn runbooks() -> Vec<(String, String)> {
    let dir = ops_dir().join("runbooks");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .filter(|p| p.file_name().is_some_and(|n| n != "README.md"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (
                format!("ops/runbooks/{}", p.file_name().unwrap().to_string_lossy()),
                text,
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no runbooks in {}", dir.display());
    files
}

/// Runs `code` with `bash -euo pipefail -c` in `dir` with `env`; kills it after `timeout`.
/// Returns the exit status (`None`: timed out), stdout and stderr.
fn run_bash(
    code: &str,
    dir: &Path,
    env: &[(&str, String)],
    timeout: Duration,
) -> (Option<ExitStatus>, String, String) {
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", code])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        cmd.env(name, value);
    }
    let mut child = cmd.spawn().expect("bash is installed");
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// The HTTP → Kafka pipeline the runbooks are run against: a map step, a Kafka sink, its own
/// dead-letter topic.
fn runbook_pipeline(name: &str, path: &str, topic: &str, dlq: &str) -> String {
    format!(
        "name = '{name}'\n\
         [source]\nkind = 'http'\npath = '{path}'\n\
         [[steps]]\nkind = 'map'\nexpression = '{{id: id, value: value}}'\n\
         [sink]\nkind = 'kafka'\ntopic = '{topic}'\nkey = 'id'\n\
         [on_error]\nmax_attempts = 3\ndead_letter_topic = '{dlq}'\n"
    )
}

/// Waits until `/health/ready` answers 2xx (the first broker probe is done).
async fn wait_ready(gf: &Gridflow) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gf.is_ready().await {
        assert!(
            Instant::now() < deadline,
            "gridflow not ready within 30 s; log:\n{}",
            gf.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that every pipeline of `names` is running.
async fn assert_running(gf: &Gridflow, names: &[&str]) {
    let view = gf.admin_pipelines().await;
    for name in names {
        let running = view["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == *name && p["state"] == "running");
        assert!(
            running,
            "pipeline {name} is not running: {view}\nlog:\n{}",
            gf.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_runbook_test_block_passes_against_a_healthy_gridflow() {
    // Every runbook has blocks to run, before anything is started.
    let runbooks = runbooks();
    let mut blocks = Vec::new();
    for (file, text) in &runbooks {
        let found = runbook_blocks(file, text);
        assert!(
            !found.is_empty(),
            "{file} has no ```sh runbook-test block: every runbook needs at least one command \
             block that is safe on a healthy instance"
        );
        blocks.extend(found);
    }

    let topic = unique("ops.runbook.event.v1");
    let dlq = format!("{topic}.dlq");
    create_topic(&topic, 3).await;
    create_topic(&dlq, 1).await;
    let pipeline = unique("runbook-flow");
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "runbook-flow.toml",
        &runbook_pipeline(&pipeline, "/ingest/runbook", &topic, &dlq),
    );
    // As deployed: POST /admin/reload needs the admin token, which the runbooks pass.
    let admin_token = format!("runbook-{}", unique("admin-token"));
    std::fs::write(dir.path().join("admin-token"), &admin_token).unwrap();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[admin]\ntoken_file = 'admin-token'\n",
    )
    .unwrap();
    let gf = Gridflow::start(dir.path(), &[]);
    wait_ready(&gf).await;
    assert_running(&gf, &[pipeline.as_str()]).await;
    let response = post(
        &gf.http_url("/ingest/runbook"),
        "application/json",
        &[("x-correlation-id", "runbook-1")],
        r#"{"id": "m-1", "value": 42}"#,
    )
    .await;
    assert_eq!(response.status(), 202, "{:?}", response.text().await);

    let bin_dir = Path::new(gridflow_bin())
        .parent()
        .expect("the binary has a directory")
        .to_path_buf();
    let path = match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{}:{p}", bin_dir.display()),
        _ => bin_dir.display().to_string(),
    };
    let env: Vec<(&str, String)> = vec![
        ("PATH", path),
        ("GRIDFLOW_ADMIN", format!("http://{}", gf.admin_addr())),
        ("GRIDFLOW_ADMIN_TOKEN", admin_token.clone()),
        ("GRIDFLOW_HTTP", format!("http://{}", gf.http_addr())),
        ("KAFKA_BROKERS", brokers()),
        ("PIPELINE", pipeline.clone()),
        ("DLQ", dlq.clone()),
        // The checkout whose local-dev/scripts/30-generate-evidence.sh the runbooks run.
        (
            "GRIDFLOW_KIT",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .display()
                .to_string(),
        ),
    ];

    let mut failures = Vec::new();
    for block in &blocks {
        let started = Instant::now();
        let (status, stdout, stderr) = run_bash(&block.code, gf.dir(), &env, BLOCK_TIMEOUT);
        eprintln!(
            "[runbooks] {} block {} (line {}): {:?} in {:?}",
            block.file,
            block.number,
            block.line,
            status,
            started.elapsed()
        );
        let outcome = match status {
            Some(s) if s.success() => continue,
            Some(s) => format!("exited with {s}"),
            None => format!("did not finish within {BLOCK_TIMEOUT:?}"),
        };
        failures.push(format!(
            "{} block {} (line {}) {outcome}:\n{}--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
            block.file, block.number, block.line, block.code
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {} runbook-test blocks failed (GRIDFLOW_ADMIN={}, PIPELINE={pipeline}, DLQ={dlq}):\n\n{}\n\ngridflow log:\n{}",
        failures.len(),
        blocks.len(),
        gf.admin_url(""),
        failures.join("\n\n"),
        gf.log_text()
    );
}

/// A tiny HTTP upstream for `enrich` steps: `GET /down/...` answers `503`, `GET /bad/...`
/// `400`, anything else `200` with a JSON object. One connection per request.
fn upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let (status, body) = if head.starts_with(b"GET /down") {
                    ("503 Service Unavailable", r#"{"error":"down"}"#)
                } else if head.starts_with(b"GET /bad") {
                    ("400 Bad Request", r#"{"error":"bad request"}"#)
                } else {
                    ("200 OK", r#"{"site":"substation-7"}"#)
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    format!("http://{addr}")
}

/// The metric names of the contract, `ops/metrics.txt`.
fn contract_names() -> Vec<String> {
    let path = ops_dir().join("metrics.txt");
    let names: Vec<String> = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    assert!(!names.is_empty(), "{} lists no metric", path.display());
    names
}

/// The names of `names` that `scrape` has no `# TYPE` or `# HELP` line for.
fn missing_names(scrape: &str, names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|name| {
            !scrape.lines().any(|l| {
                l.strip_prefix("# TYPE ")
                    .or_else(|| l.strip_prefix("# HELP "))
                    .is_some_and(|rest| rest.split_whitespace().next() == Some(name.as_str()))
            })
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_name_every_metric_of_the_contract() {
    let names = contract_names();
    let upstream = upstream();
    let raw = unique("ops.metrics.raw.v1");
    let out = unique("ops.metrics.out.v1");
    for topic in [&raw, &format!("{raw}.dlq"), &out, &format!("{out}.dlq")] {
        create_topic(topic, 1).await;
    }
    let http_name = unique("metrics-http");
    let kafka_name = unique("metrics-kafka");
    let dir = test_dir();
    // HTTP -> enrich (cached) -> Kafka, with a quota: every HTTP metric, the cache's, and a
    // failed input (the upstream's 503 for mode "down").
    write_pipeline(
        dir.path(),
        "metrics-http.toml",
        &format!(
            "name = '{http_name}'\n\
             [source]\nkind = 'http'\npath = '/ingest/metrics'\n\
             [source.quota]\nper_second = 1\nburst = 6\n\
             [[steps]]\nkind = 'enrich'\nurl = '{upstream}/{{mode}}/{{id}}'\ntarget = 'asset'\nmax_attempts = 1\n\
             [steps.cache]\nttl_ms = 60000\n\
             [[steps]]\nkind = 'filter'\ncondition = \"mode != 'skip'\"\n\
             [sink]\nkind = 'kafka'\ntopic = '{raw}'\nkey = 'id'\n\
             [on_error]\nmax_attempts = 2\ndead_letter_topic = '{raw}.dlq'\n"
        ),
    );
    // Kafka -> enrich (upstream down, breaker opens at once) -> Kafka: consumer lag, paused
    // partitions, the breaker's state, upstream waits.
    write_pipeline(
        dir.path(),
        "metrics-kafka.toml",
        &format!(
            "name = '{kafka_name}'\n\
             [source]\nkind = 'kafka'\ntopics = ['{raw}']\ngroup = '{}'\nconcurrency = 1\n\
             [[steps]]\nkind = 'enrich'\nurl = '{upstream}/down/{{id}}'\ntarget = 'asset'\nmax_attempts = 1\n\
             [steps.breaker]\nfailures = 1\ncooldown_ms = 1000\n\
             [sink]\nkind = 'kafka'\ntopic = '{out}'\n\
             [on_error]\nmax_attempts = 2\ndead_letter_topic = '{out}.dlq'\n",
            unique("gridflow-metrics")
        ),
    );
    // A file source: its rejection counters exist from its start, at 0 for each limit.
    let file_name = unique("metrics-file");
    write_pipeline(
        dir.path(),
        "metrics-file.toml",
        &format!("name = '{file_name}'\n[source]\nkind = 'file'\ndir = 'inbox'\n[sink]\nkind = 'blackhole'\n"),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    wait_ready(&gf).await;
    assert_running(
        &gf,
        &[http_name.as_str(), kafka_name.as_str(), file_name.as_str()],
    )
    .await;

    let url = gf.http_url("/ingest/metrics");
    let send = |body: &'static str| {
        let url = url.clone();
        async move {
            post(&url, "application/json", &[], body)
                .await
                .status()
                .as_u16()
        }
    };
    // Delivered (twice: the second from the cache), filtered, dead-lettered (invalid JSON),
    // failed (the upstream answers 503).
    assert_eq!(send(r#"{"id": "m-1", "mode": "asset"}"#).await, 202);
    assert_eq!(send(r#"{"id": "m-1", "mode": "asset"}"#).await, 202);
    let filtered = send(r#"{"id": "m-2", "mode": "skip"}"#).await;
    let invalid = send(r#"{"id": "#).await;
    let down = send(r#"{"id": "m-3", "mode": "down"}"#).await;
    // A step error (the upstream refuses the request: enrich_failed, dead-lettered).
    assert_eq!(send(r#"{"id": "m-5", "mode": "bad"}"#).await, 422);
    // Then over the quota (1 a second after a burst of 6).
    let mut refused = false;
    for _ in 0..20 {
        if send(r#"{"id": "m-4", "mode": "asset"}"#).await == 429 {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "no 429 from a pipeline with a quota of 1/s (filtered: {filtered}, invalid: {invalid}, down: {down})"
    );

    // Everything of the contract appears (gauges such as the lag are updated periodically).
    let deadline = Instant::now() + Duration::from_secs(30);
    let scrape = loop {
        let scrape = http()
            .get(gf.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if missing_names(&scrape, &names).is_empty() || Instant::now() > deadline {
            break scrape;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // promtool's linter: no remark at all (help text, names, units, types).
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &scrape).unwrap();
    let checked = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(file.path()).unwrap())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install it (apt-get install -y prometheus)")
        });
    let remarks = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && remarks.trim().is_empty(),
        "promtool check metrics ({}):\n{remarks}\n--- scrape:\n{scrape}",
        checked.status
    );

    let missing = missing_names(&scrape, &names);
    assert!(
        missing.is_empty(),
        "metrics of ops/metrics.txt without a # TYPE or # HELP line in GET /metrics: {missing:?}\n--- scrape:\n{scrape}"
    );
}
