//! Black-box: hot reload by diff, against a real broker. Reloads under load lose nothing,
//! an invalid edit keeps the old version serving, and every trigger works (file write,
//! temporary file plus rename, deletion, new file, SIGHUP, `POST /admin/reload`).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gridflow::config::pipeline::version_of;
use serde_json::{json, Value};

/// The load tests run one at a time, each on gridflow's embedded broker (librdkafka's mock
/// cluster, reached over TCP): tansu 0.6.0 with sqlite does not sustain 2,000 msg/s for the
/// length of 20 reloads (its CPU saturates and consumers stall; see the issue note). The
/// functional reload test below runs on the real broker.
static ONE_LOAD_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The embedded broker's address, from gridflow's start-up warning.
fn embedded_broker(gf: &Gridflow) -> String {
    gf.logs()
        .iter()
        .find(|l| l.contains("embedded mock broker"))
        .and_then(|l| log_field(l, "brokers"))
        .expect("gridflow logs the embedded broker's address")
}

/// Reads `topic` on `brokers` with a fresh group until `expected` records or `timeout`.
async fn consume_at(brokers: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
    let c: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    rdkafka::consumer::Consumer::subscribe(&c, &[topic]).unwrap();
    let out = read_records(&c, Some(expected), timeout).await;
    close_consumer(c).await;
    out
}

/// Produces `records` to `topic` on `producer`, awaiting every delivery.
async fn produce_at(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    records: Vec<(String, Vec<u8>)>,
) {
    let sends = records.iter().map(|(key, payload)| {
        producer.send(
            rdkafka::producer::FutureRecord::to(topic)
                .key(key.as_str())
                .payload(payload.as_slice()),
            rdkafka::util::Timeout::Never,
        )
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e).unwrap();
    }
}

/// Writes `text` as `pipelines/<file>` the way editors do: a temporary file, then a rename.
fn save_atomically(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join("pipelines").join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("pipelines").join(file)).unwrap();
}

async fn view(gf: &Gridflow, name: &str) -> Option<Value> {
    gf.admin_pipelines().await["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
}

/// Waits until the admin API shows `name` at `version`; returns how long it took.
async fn wait_version(gf: &Gridflow, name: &str, version: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Some(v) = view(gf, name).await {
            if v["version"] == version && v["state"] == "running" {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < timeout,
            "{name} did not reach version {version}: {:?}",
            view(gf, name).await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn http_flow(topic: &str, mark: &str) -> String {
    format!(
        "name = 'reloaded'\n[source]\nkind = 'http'\npath = '/in'\n[[steps]]\nkind = 'split'\n[[steps]]\nkind = 'map'\nexpression = \"{{id: id, mark: '{mark}'}}\"\n[sink]\nkind = 'kafka'\ntopic = '{topic}'\nkey = 'id'\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_flow_reloaded_20_times_under_load_delivers_everything_exactly_once() {
    let _one = ONE_LOAD_AT_A_TIME.lock().await;
    let topic = unique("t.reload.http.v1");
    let dir = test_dir();
    write_pipeline(dir.path(), "reloaded.toml", &http_flow(&topic, "A"));
    let gf = Arc::new(Gridflow::start(dir.path(), &["--brokers", ""]));
    let brokers = embedded_broker(&gf);

    // Load: 4 clients, each posting a batch of 200 messages every 200 ms (4,000 msg/s in
    // all) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    let started = Instant::now();
    for c in 0..4 {
        let (gf, stop, sent, bad) = (gf.clone(), stop.clone(), sent.clone(), bad.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let batch: Vec<Value> = (0..200)
                    .map(|i| json!({"id": format!("c{c}-{n}-{i}")}))
                    .collect();
                let r = http()
                    .post(gf.http_url("/in"))
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&batch).unwrap())
                    .send()
                    .await
                    .unwrap();
                if r.status() == 202 {
                    sent.fetch_add(200, Ordering::Relaxed);
                } else {
                    let line = format!("{}: {}", r.status(), r.text().await.unwrap_or_default());
                    bad.lock().unwrap().push(line);
                }
                n += 1;
            }
        }));
    }

    // 20 reloads alternating two mappings, each checked with a probe once it is live.
    let mut probes = Vec::new();
    for i in 0..20 {
        let mark = if i % 2 == 0 { "B" } else { "A" };
        let text = http_flow(&topic, mark);
        if i % 2 == 0 {
            save_atomically(dir.path(), "reloaded.toml", &text);
        } else {
            write_pipeline(dir.path(), "reloaded.toml", &text);
        }
        wait_version(
            &gf,
            "reloaded",
            &version_of(text.as_bytes()),
            Duration::from_secs(30),
        )
        .await;
        let probe = format!("probe-{i}");
        let r = http()
            .post(gf.http_url("/in"))
            .header("content-type", "application/json")
            .body(json!([{"id": probe}]).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        probes.push((probe, mark));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let elapsed = started.elapsed();
    let bad = bad.lock().unwrap().clone();
    assert!(
        bad.is_empty(),
        "no request failed because of a reload: {bad:?}"
    );
    let total = sent.load(Ordering::Relaxed) + probes.len();
    eprintln!(
        "HTTP reload load: {total} messages in {elapsed:?} = {:.0} msg/s over 20 reloads",
        total as f64 / elapsed.as_secs_f64()
    );

    let records = consume_at(&brokers, &topic, total, Duration::from_secs(120)).await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        *counts
            .entry(r.json()["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(counts.len(), total, "every message arrived");
    assert!(counts.values().all(|c| *c == 1), "exactly once");
    assert_eq!(
        consume_at(&brokers, &topic, total + 1, Duration::from_secs(10))
            .await
            .len(),
        total,
        "nothing more"
    );
    for (probe, mark) in probes {
        let r = records
            .iter()
            .find(|r| r.json()["id"] == probe.as_str())
            .unwrap();
        assert_eq!(
            r.json()["mark"],
            mark,
            "{probe} was mapped by the new version"
        );
        assert_eq!(r.headers["gridflow.pipeline.version"].len(), 64);
    }
}

fn kafka_flow(input: &str, output: &str, group: &str, mark: &str) -> String {
    format!(
        "name = 'relay'\n[source]\nkind = 'kafka'\ntopics = ['{input}']\ngroup = '{group}'\n[[steps]]\nkind = 'map'\nexpression = \"{{id: id, mark: '{mark}'}}\"\n[sink]\nkind = 'kafka'\ntopic = '{output}'\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_flow_reloaded_20_times_under_load_loses_nothing() {
    let _one = ONE_LOAD_AT_A_TIME.lock().await;
    let input = unique("t.reload.in.v1");
    let output = unique("t.reload.out.v1");
    let group = unique("g");
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "relay.toml",
        &kafka_flow(&input, &output, &group, "A"),
    );
    let gf = Gridflow::start(dir.path(), &["--brokers", ""]);
    let brokers = embedded_broker(&gf);
    let producer: Arc<rdkafka::producer::FutureProducer> = Arc::new(
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap(),
    );

    // Load: 300 records every 100 ms (3,000 msg/s) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let producing = {
        let (stop, produced, input, producer) = (
            stop.clone(),
            produced.clone(),
            input.clone(),
            producer.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let batch = (0..300)
                    .map(|i| {
                        let id = format!("r{n}-{i}");
                        (id.clone(), json!({"id": id}).to_string().into_bytes())
                    })
                    .collect();
                produce_at(&producer, &input, batch).await;
                produced.fetch_add(300, Ordering::Relaxed);
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Each version's file is unique (its reload number in a comment), so the version header
    // of an output record says which reload processed it.
    let mut versions = vec![version_of(
        kafka_flow(&input, &output, &group, "A").as_bytes(),
    )];
    for i in 1..=20 {
        let mark = if i % 2 == 1 { "B" } else { "A" };
        let text = format!(
            "# reload {i}\n{}",
            kafka_flow(&input, &output, &group, mark)
        );
        save_atomically(dir.path(), "relay.toml", &text);
        let version = version_of(text.as_bytes());
        wait_version(&gf, "relay", &version, Duration::from_secs(60)).await;
        versions.push(version);
        // Produced now, after the old version left the group: only this version or a later
        // one may process it.
        let probe = format!("probe-{i}");
        produce_at(
            &producer,
            &input,
            vec![(probe.clone(), json!({"id": probe}).to_string().into_bytes())],
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    producing.await.unwrap();
    let elapsed = started.elapsed();
    let total = produced.load(Ordering::Relaxed) + 20;

    // Read until every id is there; duplicates mean more than `total` records.
    let mut expected = total;
    let (records, counts) = loop {
        let records = consume_at(&brokers, &output, expected, Duration::from_secs(120)).await;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in &records {
            *counts
                .entry(r.json()["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        if counts.len() == total || records.len() < expected {
            break (records, counts);
        }
        expected = records.len() + (total - counts.len());
    };
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "Kafka reload load: {total} records in {elapsed:?} = {:.0} msg/s over 20 reloads; {} distinct delivered, {duplicates} duplicates",
        total as f64 / elapsed.as_secs_f64(),
        counts.len()
    );
    for i in 1..=20 {
        let probe = format!("probe-{i}");
        for r in records.iter().filter(|r| r.json()["id"] == probe.as_str()) {
            let by = versions
                .iter()
                .position(|v| *v == r.headers["gridflow.pipeline.version"])
                .expect("a known version");
            assert!(
                by >= i,
                "{probe} was processed by reload {by}, older than reload {i}"
            );
            let mark = if by % 2 == 1 { "B" } else { "A" };
            assert_eq!(
                r.json()["mark"],
                mark,
                "{probe} carries its version's mapping"
            );
        }
    }
    assert_eq!(counts.len(), total, "every record arrived at least once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_edits_deletions_new_files_sighup_and_the_admin_api() {
    let topic = unique("t.reload.func.v1");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = test_dir();
    let flow = |mark: &str| {
        format!("name = 'a'\n[source]\nkind = 'http'\npath = '/a'\n[[steps]]\nkind = 'map'\nexpression = \"{{mark: '{mark}'}}\"\n[sink]\nkind = 'kafka'\ntopic = '{topic}'\n")
    };
    write_pipeline(dir.path(), "a.toml", &flow("1"));
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[engine]\ndrain_timeout_ms = 5000\n",
    )
    .unwrap();
    let gf = Gridflow::start(dir.path(), &[]);
    let post = |path: &str| {
        http()
            .post(gf.http_url(path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
    };
    let v1 = version_of(flow("1").as_bytes());
    wait_version(&gf, "a", &v1, Duration::from_secs(10)).await;
    let a = view(&gf, "a").await.unwrap();
    assert!(a["loaded_at"].as_str().unwrap().contains('T'));
    assert!(a["last_error"].is_null());

    // An invalid edit: the old version keeps serving, the error is on the admin API.
    write_pipeline(
        dir.path(),
        "a.toml",
        "name = 'a'\n[source]\nkind = 'http'\npath = '/a'\n[sink]\nkind = 'kafak'\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let a = loop {
        let a = view(&gf, "a").await.unwrap();
        if a["state"] == "stale" {
            break a;
        }
        assert!(Instant::now() < deadline, "the error never showed: {a}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(a["version"], v1.as_str(), "the old version runs");
    let error = a["last_error"][0].as_str().unwrap();
    assert!(
        error.contains("pipelines/a.toml:6:8: error: unknown kind `kafak`"),
        "{error}"
    );
    assert_eq!(post("/a").await.unwrap().status(), 202);

    // The next valid edit (temporary file and rename) applies.
    save_atomically(dir.path(), "a.toml", &flow("2"));
    wait_version(
        &gf,
        "a",
        &version_of(flow("2").as_bytes()),
        Duration::from_secs(10),
    )
    .await;
    assert!(view(&gf, "a").await.unwrap()["last_error"].is_null());
    assert_eq!(post("/a").await.unwrap().status(), 202);
    let records = consume(&topic, 2, Duration::from_secs(20)).await;
    let marks: Vec<Value> = records.iter().map(|r| r.json()["mark"].clone()).collect();
    assert_eq!(marks, vec![json!("1"), json!("2")]);

    // A new file starts; deleting it stops it.
    let b = format!("name = 'b'\n[source]\nkind = 'http'\npath = '/b'\n[sink]\nkind = 'kafka'\ntopic = '{topic}'\n");
    write_pipeline(dir.path(), "b.toml", &b);
    wait_version(&gf, "b", &version_of(b.as_bytes()), Duration::from_secs(10)).await;
    assert_eq!(post("/b").await.unwrap().status(), 202);
    std::fs::remove_file(dir.path().join("pipelines/b.toml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while view(&gf, "b").await.is_some() {
        assert!(Instant::now() < deadline, "b was not stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(post("/b").await.unwrap().status(), 404);

    // Renaming the pipeline inside its file hands over without a gap; a newcomer that claims
    // a running pipeline's name is the one refused.
    let renamed = flow("3").replace("name = 'a'", "name = 'a2'");
    write_pipeline(dir.path(), "a.toml", &renamed);
    wait_version(
        &gf,
        "a2",
        &version_of(renamed.as_bytes()),
        Duration::from_secs(10),
    )
    .await;
    assert!(view(&gf, "a").await.is_none(), "the old name is gone");
    assert_eq!(post("/a").await.unwrap().status(), 202);
    write_pipeline(
        dir.path(),
        "0-clash.toml",
        &renamed.replace("path = '/a'", "path = '/clash'"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = gf.admin_pipelines().await;
        let clash = all["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["path"].as_str().unwrap_or("").ends_with("0-clash.toml"))
            .cloned();
        if let Some(clash) = clash {
            assert_eq!(clash["state"], "failed");
            assert!(
                clash["last_error"][0]
                    .as_str()
                    .unwrap()
                    .contains("already used"),
                "{clash}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the clash was not reported: {all}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a2 = view(&gf, "a2").await.unwrap();
    assert_eq!(
        a2["version"],
        version_of(renamed.as_bytes()).as_str(),
        "the running one keeps its name"
    );
    assert!(a2["path"].as_str().unwrap().ends_with("a.toml"));
    assert_eq!(post("/a").await.unwrap().status(), 202);
    std::fs::remove_file(dir.path().join("pipelines/0-clash.toml")).unwrap();

    // SIGHUP reloads.
    std::process::Command::new("kill")
        .arg("-HUP")
        .arg(gf.pid().to_string())
        .status()
        .unwrap();
    assert!(
        gf.wait_for_log_async("SIGHUP", Duration::from_secs(10))
            .await,
        "SIGHUP triggered a reload"
    );

    // The admin endpoint reloads and reports per pipeline.
    let report: Value = http()
        .post(gf.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a = report["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "a2")
        .unwrap();
    assert_eq!(a["action"], "unchanged");
    assert_eq!(report["restart_required"], false);

    // A change of gridflow.toml is reported, not applied.
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[engine]\ndrain_timeout_ms = 6000\n",
    )
    .unwrap();
    let report: Value = http()
        .post(gf.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["restart_required"], true);
    assert_eq!(gf.admin_pipelines().await["restart_required"], true);
    assert_eq!(post("/a").await.unwrap().status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_latency_over_50_reloads() {
    let dir = test_dir();
    let flow = |n: usize| {
        format!("name = 'timed'\n[source]\nkind = 'http'\npath = '/t'\n[[steps]]\nkind = 'map'\nexpression = \"{{n: `{n}`}}\"\n[sink]\nkind = 'file'\npath = 'out/t.ndjson'\n")
    };
    write_pipeline(dir.path(), "timed.toml", &flow(0));
    let gf = Gridflow::start(dir.path(), &[]);
    let mut latencies = Vec::new();
    for n in 1..=50 {
        let text = flow(n);
        let start = Instant::now();
        write_pipeline(dir.path(), "timed.toml", &text);
        wait_version(
            &gf,
            "timed",
            &version_of(text.as_bytes()),
            Duration::from_secs(10),
        )
        .await;
        latencies.push(start.elapsed());
    }
    // The last version serves.
    let r = http()
        .post(gf.http_url("/t"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let last = std::fs::read_to_string(dir.path().join("out/t.ndjson")).unwrap();
    assert_eq!(last.trim(), "{\"n\":50}");
    latencies.sort();
    eprintln!(
        "reload latency (file write -> new version serving) over 50 reloads: p50 {:?}, p99 {:?}, max {:?}",
        latencies[24], latencies[48], latencies[49]
    );
}
