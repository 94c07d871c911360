//! Black-box integration test harness shared by the test files in `runtime/tests/`.
//!
//! It talks to a real Kafka-protocol broker (`KAFKA_BROKERS`, started by `./ci/test.sh`)
//! and runs the real `gridflow` binary as a child process. It knows nothing about what
//! pipelines do.
#![allow(dead_code)]

pub mod mock_kafka;
pub mod pki;
pub mod targets;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

/// How long `Gridflow::start` waits for the "Gridflow started." log line.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Broker bootstrap list from `KAFKA_BROKERS`; panics with a hint when it is unset.
pub fn brokers() -> String {
    match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "KAFKA_BROKERS is not set: run the suite with ./ci/test.sh, which starts a broker"
        ),
    }
}

/// A unique topic/group name: `prefix` + `-` + a short random uuid.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// Base librdkafka client configuration pointing at `brokers()`.
pub fn client_config() -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers())
        .set("socket.timeout.ms", "30000")
        .set("log_level", "4");
    cfg
}

/// A process-wide admin client (created once, shared by all tests in the binary).
fn admin() -> &'static Arc<AdminClient<DefaultClientContext>> {
    static ADMIN: OnceLock<Arc<AdminClient<DefaultClientContext>>> = OnceLock::new();
    ADMIN.get_or_init(|| {
        Arc::new(
            client_config()
                .create()
                .expect("failed to create Kafka admin client"),
        )
    })
}

/// Number of partitions of `topic` currently visible in broker metadata (blocking).
pub fn topic_partitions(topic: &str) -> Option<usize> {
    let md = admin()
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    Some(t.partitions().len())
}

/// The low and high watermarks of partitions `0..partitions` of `topic` (blocking).
pub fn watermarks(topic: &str, partitions: i32) -> (Vec<i64>, Vec<i64>) {
    let c = consumer(&unique("test-watermarks"));
    let (mut low, mut high) = (Vec::new(), Vec::new());
    for p in 0..partitions {
        let (l, h) = c
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
        low.push(l);
        high.push(h);
    }
    (low, high)
}

/// Committed offsets of `consumer`'s group for `topic` partitions `0..partitions`.
///
/// The `TopicPartitionList` is dropped before returning: a live list keeps librdkafka from
/// destroying the consumer later.
pub fn committed_offsets(
    consumer: &StreamConsumer,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, rdkafka::Offset> {
    let mut query = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        query.add_partition(topic, p);
    }
    let tpl = consumer
        .committed_offsets(query, Duration::from_secs(10))
        .expect("fetching committed offsets failed");
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect()
}

/// Creates `name` with `partitions` partitions (replication 1) and waits until metadata shows it.
pub async fn create_topic(name: &str, partitions: i32) {
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin()
        .create_topics([&topic], &opts)
        .await
        .unwrap_or_else(|e| panic!("create_topics({name}) failed: {e}"));
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => panic!("creating topic {t} failed: {code:?}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = name.to_string();
        let seen = tokio::task::spawn_blocking(move || topic_partitions(&n))
            .await
            .expect("metadata task panicked");
        if seen == Some(partitions as usize) {
            return;
        }
        if Instant::now() > deadline {
            panic!("topic {name} not visible in metadata with {partitions} partitions after 30s (last seen: {seen:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A process-wide producer (acks=all, no idempotence) shared by `produce`/`produce_many`.
pub fn producer() -> &'static FutureProducer {
    static PRODUCER: OnceLock<FutureProducer> = OnceLock::new();
    PRODUCER.get_or_init(|| {
        client_config()
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create()
            .expect("failed to create Kafka producer")
    })
}

/// Produces one record with optional key and headers, awaiting its delivery.
pub async fn produce(topic: &str, key: Option<&str>, payload: &[u8], headers: &[(&str, &str)]) {
    let mut hs = OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers {
        hs = hs.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut rec: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(payload);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    if !headers.is_empty() {
        rec = rec.headers(hs);
    }
    if let Err((e, _)) = producer().send(rec, Timeout::Never).await {
        panic!("producing to {topic} failed: {e}");
    }
}

/// Enqueues all `(key, payload)` records to `topic` at once and awaits every delivery.
pub async fn produce_many(topic: &str, records: Vec<(Option<String>, Vec<u8>)>) {
    let p = producer();
    let futs = records.iter().map(|(key, payload)| {
        let mut rec: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(payload);
        if let Some(k) = key {
            rec = rec.key(k.as_str());
        }
        p.send(rec, Timeout::Never)
    });
    for (i, res) in futures::future::join_all(futs)
        .await
        .into_iter()
        .enumerate()
    {
        if let Err((e, _)) = res {
            panic!("producing record #{i} to {topic} failed: {e}");
        }
    }
}

/// A consumed record, detached from the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

impl Record {
    /// Converts a borrowed rdkafka message into a `Record` (key/headers decoded lossily as UTF-8).
    pub fn from_message(m: &BorrowedMessage<'_>) -> Record {
        let mut headers = BTreeMap::new();
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                let v = h
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                headers.insert(h.key.to_string(), v);
            }
        }
        Record {
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
            partition: m.partition(),
            offset: m.offset(),
        }
    }

    /// Parses the payload as JSON; panics with the payload text when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.payload)
            )
        })
    }

    /// The payload as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A consumer in `group` (earliest offset, auto-commit off) subscribed to nothing yet.
pub fn consumer(group: &str) -> StreamConsumer {
    client_config()
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .create()
        .expect("failed to create Kafka consumer")
}

/// Reads from `consumer` until `expected` records arrived (if given) or `timeout` passed.
pub async fn read_records(
    consumer: &StreamConsumer,
    expected: Option<usize>,
    timeout: Duration,
) -> Vec<Record> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while expected.is_none_or(|n| out.len() < n) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(Ok(m)) => out.push(Record::from_message(&m)),
            Ok(Err(KafkaError::PartitionEOF(_))) => {}
            Ok(Err(e)) => {
                eprintln!("[harness] consumer error (ignored): {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    out
}

/// Reads `topic` from the earliest offset with a fresh group until `expected` records or `timeout`.
pub async fn consume(topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
    let c = consumer(&unique("test-consume"));
    c.subscribe(&[topic])
        .unwrap_or_else(|e| panic!("subscribe({topic}) failed: {e}"));
    let out = read_records(&c, Some(expected), timeout).await;
    close_consumer(c).await;
    out
}

/// Reads `topic` from the start of each of its `partitions`, without a consumer group (so no
/// group coordination is involved), until `expected` records or `timeout`.
pub async fn consume_assigned(
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<Record> {
    let c = consumer(&unique("test-assigned"));
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .expect("valid offset");
    }
    c.assign(&tpl)
        .unwrap_or_else(|e| panic!("assign({topic}) failed: {e}"));
    drop(tpl);
    let out = read_records(&c, Some(expected), timeout).await;
    close_consumer(c).await;
    out
}

/// Reads everything arriving on `topic` (from the earliest offset, fresh group) within `duration`.
pub async fn consume_for(topic: &str, duration: Duration) -> Vec<Record> {
    let c = consumer(&unique("test-consume-for"));
    c.subscribe(&[topic])
        .unwrap_or_else(|e| panic!("subscribe({topic}) failed: {e}"));
    let out = read_records(&c, None, duration).await;
    close_consumer(c).await;
    out
}

/// Drops a consumer (leaving its group) on a helper thread, waiting at most 30 s for it.
///
/// Drop every `TopicPartitionList` obtained from the consumer (`committed`, `position`,
/// `assignment`, ...) first: librdkafka's destroy waits until those release their partition
/// references. A plain thread (not `spawn_blocking`) is used so a destroy that never returns
/// cannot keep the test's tokio runtime from shutting down.
pub async fn close_consumer(c: StreamConsumer) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        drop(c);
        let _ = tx.send(());
    });
    if tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .is_err()
    {
        eprintln!(
            "[harness] warning: closing a Kafka consumer did not finish within 30s \
             (is a TopicPartitionList from it still alive?)"
        );
    }
}

/// The `"id"`s of the JSON payloads on `topic`, read from the start until every one of
/// `expected` is there or `within` passed (duplicates, which at-least-once allows, do not
/// count towards it).
pub async fn read_ids(
    topic: &str,
    expected: &std::collections::BTreeSet<String>,
    within: Duration,
) -> std::collections::BTreeSet<String> {
    let consumer = consumer(&unique("ids-reader"));
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + within;
    let mut seen = std::collections::BTreeSet::new();
    while !expected.is_subset(&seen) && Instant::now() < deadline {
        seen.extend(
            read_records(&consumer, None, Duration::from_secs(1))
                .await
                .iter()
                .filter_map(|r| r.json()["id"].as_str().map(str::to_owned)),
        );
    }
    close_consumer(consumer).await;
    seen
}

/// An HTTP client with a 30 s timeout for talking to gridflow's listeners.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("failed to build reqwest client")
}

/// POSTs `body` to `url` with `content_type` and the extra `headers`; panics if no answer.
pub async fn post(
    url: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = http().post(url).header("content-type", content_type);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url} got no answer: {e}"))
}

/// Creates a temp dir with an empty `pipelines/` directory and an empty `gridflow.toml`.
pub fn test_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("gridflow-test-")
        .tempdir()
        .expect("failed to create temp dir");
    std::fs::create_dir_all(dir.path().join("pipelines")).expect("failed to create pipelines/");
    std::fs::write(dir.path().join("gridflow.toml"), "").expect("failed to write gridflow.toml");
    dir
}

/// Writes `toml` to `<dir>/pipelines/<file_name>`.
pub fn write_pipeline(dir: &Path, file_name: &str, toml: &str) {
    let pipelines = dir.join("pipelines");
    std::fs::create_dir_all(&pipelines).expect("failed to create pipelines/");
    std::fs::write(pipelines.join(file_name), toml)
        .unwrap_or_else(|e| panic!("failed to write pipeline {file_name}: {e}"));
}

/// Path of the `gridflow` binary built by cargo for these tests.
pub fn gridflow_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gridflow")
}

/// A running `gridflow run` child process with its collected log lines.
pub struct Gridflow {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    http_addr: String,
    admin_addr: String,
    dir: PathBuf,
}

/// Extracts `fields.<name>` (or top-level `<name>`) as a string from a JSON log line.
pub fn log_field(line: &str, name: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    let f = v
        .get("fields")
        .and_then(|f| f.get(name))
        .or_else(|| v.get(name))?;
    Some(match f {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Spawns a thread that collects lines from `src` into `logs`, echoing them to stderr.
fn spawn_reader<R: Read + Send + 'static>(src: R, logs: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(src);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    eprintln!("[gridflow] {line}");
                    logs.lock().unwrap().push(line);
                }
            }
        }
    })
}

impl Gridflow {
    /// Starts `gridflow run` for `dir` (config, pipelines, ephemeral ports, JSON logs) and waits until started.
    pub fn start(dir: &Path, extra_args: &[&str]) -> Gridflow {
        Gridflow::start_with_env(dir, extra_args, &[])
    }

    /// [`Gridflow::start`] with environment variables `env` set for the process.
    pub fn start_with_env(dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Gridflow {
        let config = dir.join("gridflow.toml");
        let pipelines = dir.join("pipelines");
        let mut cmd = Command::new(gridflow_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--pipelines")
            .arg(&pipelines)
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(extra_args)
            .env("KAFKA_BROKERS", brokers())
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn {}: {e}", gridflow_bin()));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            spawn_reader(child.stdout.take().unwrap(), logs.clone()),
            spawn_reader(child.stderr.take().unwrap(), logs.clone()),
        ];
        let mut gf = Gridflow {
            child,
            logs,
            readers,
            http_addr: String::new(),
            admin_addr: String::new(),
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let (mut http, mut admin, mut started) = (None, None, false);
            for line in gf.logs() {
                match log_field(&line, "message").as_deref() {
                    Some("HTTP listener started.") => http = log_field(&line, "addr"),
                    Some("Admin listener started.") => admin = log_field(&line, "addr"),
                    Some("Gridflow started.") => started = true,
                    _ => {}
                }
            }
            if started {
                gf.http_addr = http.unwrap_or_else(|| {
                    panic!(
                        "gridflow started without logging its HTTP address; log:\n{}",
                        gf.log_text()
                    )
                });
                gf.admin_addr = admin.unwrap_or_else(|| {
                    panic!(
                        "gridflow started without logging its admin address; log:\n{}",
                        gf.log_text()
                    )
                });
                return gf;
            }
            if let Ok(Some(status)) = gf.child.try_wait() {
                gf.join_readers();
                panic!(
                    "gridflow exited during startup with {status}; log:\n{}",
                    gf.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "gridflow did not log \"Gridflow started.\" within {START_TIMEOUT:?}; log:\n{}",
                    gf.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the binary once with `args` in `dir` (KAFKA_BROKERS passed through if set) and captures its output.
    pub fn spawn_raw(args: &[&str], dir: &Path) -> Output {
        let mut cmd = Command::new(gridflow_bin());
        cmd.args(args).current_dir(dir).stdin(Stdio::null());
        if let Ok(b) = std::env::var("KAFKA_BROKERS") {
            cmd.env("KAFKA_BROKERS", b);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("failed to run {} {args:?}: {e}", gridflow_bin()))
    }

    /// `http://<http-addr><path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, slash(path))
    }

    /// `http://<admin-addr><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, slash(path))
    }

    /// The HTTP listener address as logged (`ip:port`).
    pub fn http_addr(&self) -> &str {
        &self.http_addr
    }

    /// The admin listener address as logged (`ip:port`).
    pub fn admin_addr(&self) -> &str {
        &self.admin_addr
    }

    /// The directory the process runs in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A snapshot of all stdout/stderr lines collected so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// All collected lines joined with newlines (for assertion messages).
    pub fn log_text(&self) -> String {
        self.logs().join("\n")
    }

    /// Collected lines parsed as JSON (non-JSON lines skipped).
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str(l.trim()).ok())
            .collect()
    }

    /// Waits (blocking) until some log line contains `substring`; false on timeout.
    pub fn wait_for_log(&self, substring: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .logs
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(substring))
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Async variant of `wait_for_log` that does not block the tokio runtime.
    pub async fn wait_for_log_async(&self, substring: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .logs
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(substring))
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        http()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET /metrics body: {e}"))
    }

    /// The JSON of `GET /admin/pipelines`.
    pub async fn admin_pipelines(&self) -> serde_json::Value {
        http()
            .get(self.admin_url("/admin/pipelines"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /admin/pipelines: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET /admin/pipelines body: {e}"))
    }

    /// True when `/health/ready` answers 2xx.
    pub async fn is_ready(&self) -> bool {
        http()
            .get(self.admin_url("/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_readers();
    }

    /// Sends SIGTERM to the child (via the `kill` command).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("failed to run `kill -TERM`");
        assert!(
            status.success(),
            "kill -TERM {} failed: {status}",
            self.pid()
        );
    }

    /// Waits up to `timeout` for the child to exit; returns its status, or None if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_readers();
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Async variant of `wait_exit` that does not block the tokio runtime.
    pub async fn wait_exit_async(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_readers();
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Joins the reader threads (only after the child exited, so all output is collected).
    fn join_readers(&mut self) {
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Gridflow {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Prefixes `path` with `/` when missing.
fn slash(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// A tansu broker process of a test's own (stopped when dropped).
pub struct Tansu {
    child: Child,
}

impl Tansu {
    /// Stops the broker with SIGTERM and waits for it.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts tansu on `port` with sqlite storage in `dir` (kept across restarts), requiring
/// SASL authentication when `authentication`; waits until it listens.
pub fn start_tansu(dir: &Path, port: u16, authentication: bool) -> Tansu {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new("tansu");
    cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ])
    .args(["--storage-engine", "sqlite://tansu.db"])
    .current_dir(dir)
    .stdout(Stdio::null())
    .stderr(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("tansu.log"))
            .expect("tansu log file"),
    );
    if authentication {
        cmd.arg("--authentication");
    }
    let child = cmd.spawn().expect("tansu is installed by ci/test.sh");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Tansu { child }
}

/// Runs the tansu command line (`topic create`, `user create`) against the broker on `port`.
pub fn tansu_cli(port: u16, args: &[&str]) {
    let broker = format!("tcp://127.0.0.1:{port}");
    let out = Command::new("tansu")
        .args(args)
        .args(["--broker", &broker])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tansu {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the Prometheus sample `name{...}` whose labels contain every one of `with`
/// (`pipeline="x"`), from a `/metrics` scrape.
pub fn sample(metrics: &str, name: &str, with: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && with.iter().all(|w| l.contains(w)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Mounts a 64 KiB tmpfs at `dir`, created when missing (the suite runs as root): a disk that
/// fills up. Unmounted when the returned guard is dropped.
pub fn small_disk(dir: &Path) -> impl Drop {
    std::fs::create_dir_all(dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "mounting a 64 KiB tmpfs needs root");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    Unmount(dir.to_path_buf())
}
