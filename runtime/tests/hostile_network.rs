//! Hostile network (issue 24, item 14): gridflow and the broker (tansu) in two network
//! namespaces joined by a veth pair, the link throttled (`tc ... tbf`, this kernel has no
//! netem), then cut for 20 s (`ip link set ... down`), then back.
//!
//! - During the cut, HTTP callers get `503` (nothing is acknowledged that was not written).
//! - Once the link is back, an HTTP → Kafka pipeline and a Kafka → Kafka pipeline deliver
//!   again within a bounded wait, and `/health/ready` is `200` again.
//! - Nothing acknowledged is lost: every `202` and every input record is on its output topic.
//!
//! The issue saw, once the link was back, every HTTP request keep getting `503` and the Kafka
//! pipeline deliver nothing: the broker had fenced the idempotent producer (`ProducerFenced`,
//! a fatal error) and gridflow kept using the dead producer. That recovery is tested with
//! librdkafka's fault injection in `kafka_fatal_error.rs`. Here, with tansu 0.6.0 and
//! gridflow's idempotent producer, the cut does not end in `ProducerFenced`: the producer's
//! retries of the records timed out during the cut make tansu's sqlite storage panic
//! (`tansu-storage-0.6.0/src/lite.rs:503` "more or less than one row" in
//! `idempotent_message_check`), after which its storage task is gone and the broker answers
//! nothing (heartbeats hit `unreachable!` in `service.rs:337`, connections are closed at once):
//! no client can deliver until tansu restarts. That is a tansu defect (the same one
//! `broker_restart.rs` works around), so gridflow's producer runs without idempotence here, and
//! this test is the regression test for "delivers again after the link is back". It prints
//! the fatal errors it saw (`fatal errors seen: ...`) and dumps tansu's log when it fails.
//!
//! A second tansu 0.6.0 defect: a consumer whose group session timed out during the cut
//! (gridflow's default `session.timeout.ms` is 10 s) rejoins (librdkafka: "revoking assignment
//! and rejoining group"), but tansu never assigns it the partitions again (watched for 120 s;
//! nothing is lost, nothing is consumed). Apache Kafka completes that rebalance. The consumer's
//! session here (45 s) outlives the cut, so the Kafka → Kafka pipeline keeps its partitions.
//!
//! Needs root and iproute2 (`ip`, `tc`; `ci/test.sh` installs them). Not root: skipped with a
//! loud message. The addresses (10.231.x.0/30) exist only inside the two namespaces, which
//! are deleted when the test ends, passed or failed.
//!
//! How it runs: the test body runs on a thread that entered gridflow's namespace
//! (`setns(CLONE_NEWNET)`), so the gridflow process it spawns, its own HTTP and Kafka clients
//! (and their threads) are all inside it. tansu runs in the other namespace (`ip netns exec`).

mod common;

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CUT: Duration = Duration::from_secs(20);

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn has(tool: &str) -> bool {
    Command::new(tool)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs `program args`, panicking with its output when it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The names of the two namespaces, their ends of the veth pair and their addresses. Its
/// methods use `ip -n` / `ip netns exec`, so they work from any namespace.
#[derive(Clone)]
struct Net {
    gridflow_ns: String,
    broker_ns: String,
    gridflow_if: String,
    broker_if: String,
    gridflow_ip: String,
    broker_ip: String,
}

/// Two namespaces joined by a veth pair; deleted (with the pair) when dropped.
struct Link(Net);

impl std::ops::Deref for Link {
    type Target = Net;

    fn deref(&self) -> &Net {
        &self.0
    }
}

impl Link {
    fn create() -> Link {
        let id = std::process::id();
        let net = id % 250 + 1;
        let link = Link(Net {
            gridflow_ns: format!("gf-hn-{id}-gw"),
            broker_ns: format!("gf-hn-{id}-kb"),
            gridflow_if: format!("gfhn{}a", id % 100_000),
            broker_if: format!("gfhn{}b", id % 100_000),
            gridflow_ip: format!("10.231.{net}.1"),
            broker_ip: format!("10.231.{net}.2"),
        });
        // The guard exists before the first namespace: a failure below still cleans up.
        run("ip", &["netns", "add", &link.gridflow_ns]);
        run("ip", &["netns", "add", &link.broker_ns]);
        run(
            "ip",
            &[
                "link",
                "add",
                &link.gridflow_if,
                "type",
                "veth",
                "peer",
                "name",
                &link.broker_if,
            ],
        );
        run(
            "ip",
            &["link", "set", &link.gridflow_if, "netns", &link.gridflow_ns],
        );
        run(
            "ip",
            &["link", "set", &link.broker_if, "netns", &link.broker_ns],
        );
        for (ns, dev, ip) in [
            (&link.gridflow_ns, &link.gridflow_if, &link.gridflow_ip),
            (&link.broker_ns, &link.broker_if, &link.broker_ip),
        ] {
            run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{ip}/30"), "dev", dev],
            );
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
            run("ip", &["-n", ns, "link", "set", dev, "up"]);
        }
        link
    }
}

impl Net {
    /// Both directions limited to 64 kbit/s with a 200 ms queue.
    fn throttle(&self) {
        for (ns, dev) in [
            (&self.gridflow_ns, &self.gridflow_if),
            (&self.broker_ns, &self.broker_if),
        ] {
            run(
                "ip",
                &[
                    "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                    "64kbit", "burst", "8kb", "latency", "200ms",
                ],
            );
        }
    }

    fn set(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        run(
            "ip",
            &[
                "-n",
                &self.gridflow_ns,
                "link",
                "set",
                &self.gridflow_if,
                state,
            ],
        );
        run(
            "ip",
            &["-n", &self.broker_ns, "link", "set", &self.broker_if, state],
        );
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the pair, and so the pair.
        for ns in [&self.0.gridflow_ns, &self.0.broker_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The calling thread enters the namespace `ns` (network namespaces are per thread; the
/// threads and processes it starts from now on are inside it too).
fn enter(ns: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
    // SAFETY: a valid namespace file descriptor; only this thread changes namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// tansu in the broker's namespace (killed when dropped; its log's tail is printed when the
/// test failed).
struct Broker(Child, std::path::PathBuf);

impl Broker {
    fn start(link: &Net, dir: &Path) -> Broker {
        let url = format!("tcp://{}:9092", link.broker_ip);
        let child = Command::new("ip")
            .args(["netns", "exec", &link.broker_ns, "tansu", "broker"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("tansu.log")).unwrap())
            .spawn()
            .expect("tansu is installed by ci/test.sh");
        let broker = Broker(child, dir.join("tansu.log"));
        let deadline = Instant::now() + Duration::from_secs(30);
        // Listening? (asked from inside its namespace)
        while !Command::new("ip")
            .args(["netns", "exec", &link.broker_ns, "bash", "-c"])
            .arg(format!("</dev/tcp/{}/9092", link.broker_ip))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(Instant::now() < deadline, "tansu did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        broker
    }

    fn create_topic(link: &Net, topic: &str) {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &link.broker_ns,
                "tansu",
                "topic",
                "create",
                "--partitions",
                "1",
                topic,
                "--broker",
                &format!("tcp://{}:9092", link.broker_ip),
            ],
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() || std::env::var_os("HOSTILE_NETWORK_BROKER_LOG").is_some() {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- tansu log (last 60 lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A client whose requests may wait through retries of a whole outage.
fn patient() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

async fn post_reading(client: &reqwest::Client, gf_url: &str, id: &str) -> Option<u16> {
    client
        .post(gf_url)
        .header("content-type", "application/json")
        .header("x-correlation-id", id)
        .body(format!("{{\"id\":\"{id}\"}}"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[test]
fn broker_behind_a_slow_then_cut_link_delivers_again_and_loses_nothing() {
    if !is_root() {
        eprintln!(
            "\n!!!!!!!! SKIPPED hostile_network: needs root (network namespaces, veth, tc). \
             CI runs as root; run `sudo -E cargo test -p gridflow --test hostile_network`. !!!!!!!!\n"
        );
        return;
    }
    assert!(
        has("ip") && has("tc"),
        "ip and tc are missing: apt-get install iproute2 (ci/test.sh does)"
    );
    let link = Link::create();
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&link, broker_dir.path());
    let http_out = unique("hostile.http.out.v1");
    let stream_in = unique("hostile.stream.in.v1");
    let stream_out = unique("hostile.stream.out.v1");
    for topic in [&http_out, &stream_out] {
        Broker::create_topic(&link, topic);
        Broker::create_topic(&link, &format!("{topic}.dlq"));
    }
    Broker::create_topic(&link, &stream_in);
    // The harness's clients read KAFKA_BROKERS (one test in this file: nothing else reads it).
    std::env::set_var("KAFKA_BROKERS", format!("{}:9092", link.broker_ip));

    let net: Net = (*link).clone();
    let body = std::thread::spawn(move || {
        enter(&net.gridflow_ns);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario(net, http_out, stream_in, stream_out))
    });
    let result = body.join();
    if result.is_err() {
        // The broker's log is printed by its guard when the test fails.
        std::env::set_var("HOSTILE_NETWORK_BROKER_LOG", "1");
    }
    drop(broker);
    drop(link);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// The phases, from inside gridflow's namespace.
async fn scenario(link: Net, http_out: String, stream_in: String, stream_out: String) {
    let dir = test_dir();
    // One delivery attempt of 3 s, so that callers hear about the cut within seconds. Without
    // idempotence, and with a consumer session that outlives the cut: see the module doc
    // (tansu 0.6.0's storage dies on the idempotent producer's retries after the cut, and its
    // group never gives a member whose session timed out its partitions back).
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[kafka]\nallow_non_idempotent = true\n[kafka.properties]\n'message.timeout.ms' = 3000\n'enable.idempotence' = false\n'session.timeout.ms' = 45000\n",
    )
    .unwrap();
    write_pipeline(
        dir.path(),
        "readings.toml",
        &format!("[source]\nkind='http'\npath='/readings'\nretry_after_secs=1\n[sink]\nkind='kafka'\ntopic='{http_out}'\n[on_error]\nmax_attempts=2\ninitial_backoff_ms=100\nmax_backoff_ms=500\n"),
    );
    // Its retry budget outlasts the cut: the source waits, nothing is dead-lettered.
    write_pipeline(
        dir.path(),
        "relay.toml",
        &format!("[source]\nkind='kafka'\ntopics=['{stream_in}']\ngroup='{}'\n[sink]\nkind='kafka'\ntopic='{stream_out}'\n[on_error]\nmax_attempts=200\ninitial_backoff_ms=200\nmax_backoff_ms=1000\n", unique("hostile-relay")),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let url = gf.http_url("/readings");
    let client = patient();
    let mut accepted = BTreeSet::new();
    let mut produced = BTreeSet::new();
    let mut next = 0usize;
    let mut produce_inputs = |n: usize| {
        let batch: Vec<String> = (next..next + n).map(|i| format!("s{i}")).collect();
        next += n;
        batch
    };

    // Healthy link.
    for i in 0..5 {
        let id = format!("a{i}");
        assert_eq!(post_reading(&client, &url, &id).await, Some(202), "{id}");
        accepted.insert(id);
    }
    for id in produce_inputs(5) {
        produce(
            &stream_in,
            None,
            format!("{{\"id\":\"{id}\"}}").as_bytes(),
            &[],
        )
        .await;
        produced.insert(id);
    }

    // Slow link: requests and inputs keep flowing, slowly.
    eprintln!("[hostile_network] throttling the link (tbf 64kbit)");
    link.throttle();
    let slow: Vec<_> = (0..10)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let id = format!("b{i}");
                let status = post_reading(&client, &url, &id).await;
                (id, status)
            })
        })
        .collect();
    for id in produce_inputs(10) {
        produce(
            &stream_in,
            None,
            format!("{{\"id\":\"{id}\"}}").as_bytes(),
            &[],
        )
        .await;
        produced.insert(id);
    }
    // Requests still waiting when the link is cut get their answer during or after the cut.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Cut for 20 s: callers get 503.
    eprintln!("[hostile_network] cutting the link for {CUT:?}");
    link.set(false);
    let cut_at = Instant::now();
    // Watches the admin API during the cut: readiness, and the HTTP pipeline's state once it
    // has failed every delivery for 15 s (its first failure comes a few seconds into the cut).
    let watcher = {
        let (ready_url, pipelines_url, client) = (
            gf.admin_url("/health/ready"),
            gf.admin_url("/admin/pipelines"),
            client.clone(),
        );
        tokio::spawn(async move {
            // Readiness answers from 10 s into the cut (the probe runs every 5 s).
            let (mut late_ready, mut stuck) = (Vec::new(), None);
            while cut_at.elapsed() + Duration::from_millis(300) < CUT {
                if let Ok(r) = client.get(&ready_url).send().await {
                    if cut_at.elapsed() > Duration::from_secs(10) {
                        late_ready.push(r.status().as_u16());
                    }
                }
                if let Ok(r) = client.get(&pipelines_url).send().await {
                    let pipelines: serde_json::Value = r.json().await.unwrap_or_default();
                    if let Some(p) = pipelines["pipelines"]
                        .as_array()
                        .and_then(|a| a.iter().find(|p| p["name"] == "readings"))
                        .filter(|p| p["state"] == "not_delivering")
                    {
                        stuck = Some(p.clone());
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (late_ready, stuck)
        })
    };
    let mut during = Vec::new();
    let mut n = 0;
    while cut_at.elapsed() < CUT - Duration::from_secs(2) {
        let (client, url) = (client.clone(), url.clone());
        let id = format!("c{n}");
        n += 1;
        during.push(tokio::spawn(async move {
            let status = post_reading(&client, &url, &id).await;
            (id, status, Instant::now())
        }));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (ready_late_in_cut, stuck) = watcher.await.unwrap();
    tokio::time::sleep(CUT.saturating_sub(cut_at.elapsed())).await;
    eprintln!("[hostile_network] link back up (still throttled)");
    link.set(true);
    let back_at = Instant::now();
    let mut during_cut = Vec::new();
    for task in during {
        let (id, status, answered) = task.await.unwrap();
        assert!(matches!(status, Some(202 | 503)), "{id}: {status:?}");
        if answered < back_at {
            during_cut.push(status);
        }
        if status == Some(202) {
            accepted.insert(id);
        }
    }
    for task in slow {
        let (id, status) = task.await.unwrap();
        assert!(matches!(status, Some(202 | 503)), "{id}: {status:?}");
        if status == Some(202) {
            accepted.insert(id);
        }
    }
    assert!(
        during_cut.contains(&Some(503)),
        "HTTP callers got 503 during the cut: {during_cut:?}"
    );
    assert!(
        !during_cut.contains(&Some(202)),
        "nothing accepted while the broker was unreachable: {during_cut:?}"
    );
    assert!(
        !ready_late_in_cut.is_empty() && ready_late_in_cut.iter().all(|s| *s == 503),
        "/health/ready is 503 during the cut: {ready_late_in_cut:?}"
    );
    let stuck = stuck.expect("/admin/pipelines showed `readings` as not_delivering during the cut");
    assert!(stuck["delivery"]["last_error"].is_string(), "{stuck}");

    // After: the HTTP pipeline accepts again within a bounded wait, then every request.
    let deadline = back_at + Duration::from_secs(90);
    let mut k = 0;
    loop {
        let id = format!("d{k}");
        k += 1;
        if post_reading(&client, &url, &id).await == Some(202) {
            accepted.insert(id);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 202 within 90 s after the link came back; log:\n{}",
            gf.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "[hostile_network] HTTP pipeline accepts again {:?} after the link came back",
        back_at.elapsed()
    );
    for i in 0..10 {
        let id = format!("e{i}");
        assert_eq!(
            post_reading(&client, &url, &id).await,
            Some(202),
            "{id} after the link came back; log:\n{}",
            gf.log_text()
        );
        accepted.insert(id);
    }
    // The Kafka → Kafka pipeline relays what is produced after the cut.
    for id in produce_inputs(10) {
        produce(
            &stream_in,
            None,
            format!("{{\"id\":\"{id}\"}}").as_bytes(),
            &[],
        )
        .await;
        produced.insert(id);
    }
    let ready_deadline = Instant::now() + Duration::from_secs(60);
    while !gf.is_ready().await {
        assert!(
            Instant::now() < ready_deadline,
            "not ready 60 s after the link came back: {:?}",
            gf.admin_pipelines().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Nothing acknowledged is lost.
    let relayed = read_ids(&stream_out, &produced, Duration::from_secs(120)).await;
    let missing: Vec<&String> = produced.difference(&relayed).collect();
    assert!(
        missing.is_empty(),
        "inputs of the Kafka → Kafka pipeline not relayed: {missing:?}; log:\n{}",
        gf.log_text()
    );
    let written = read_ids(&http_out, &accepted, Duration::from_secs(60)).await;
    let lost: Vec<&String> = accepted.difference(&written).collect();
    assert!(
        lost.is_empty(),
        "answered 202 but not on the topic: {lost:?}"
    );
    let pipelines = gf.admin_pipelines().await;
    for p in pipelines["pipelines"].as_array().unwrap() {
        assert_eq!(p["state"], "running", "{pipelines}");
    }

    // What the broker did to the producers (see the module doc).
    let scrape = gf.metrics().await;
    let fatal: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("gridflow_kafka_fatal_errors_total{"))
        .collect();
    let reasons: Vec<String> = gf
        .logs()
        .into_iter()
        .filter(|l| log_field(l, "message").is_some_and(|m| m.contains("fatal error")))
        .collect();
    eprintln!("[hostile_network] fatal errors seen: {fatal:?} {reasons:#?}");
}
