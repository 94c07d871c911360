//! Black-box: freezing a flow (`POST /admin/pipelines/<name>/pause`, `/resume`, `gridflow
//! pipelines pause|resume|list`) against a real broker and real HTTP.
//!
//! - A paused Kafka pipeline consumes nothing (its committed offsets stay, nothing reaches its
//!   sink) for longer than the consumer's session timeout, keeps its group (no rebalance),
//!   stays paused across a hot reload of its file and across a rebalance, and
//!   delivers everything produced meanwhile once resumed, once each.
//! - A paused HTTP or SOAP pipeline answers `503` with `Retry-After` and a problem+json body
//!   on its own route only, across a reload; the endpoints need the admin token, are
//!   idempotent, and answer `404` for a pipeline that is not running.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::Consumer;
use serde_json::Value;

/// The admin token of the gridflow under test.
const TOKEN: &str = "pause-test-admin-token-0123456789";

/// A gridflow whose mutating admin requests need [`TOKEN`].
fn start_with_token(dir: &Path, config: &str) -> Gridflow {
    std::fs::write(dir.join("admin-token"), TOKEN).unwrap();
    std::fs::write(
        dir.join("gridflow.toml"),
        format!("{config}\n[admin]\ntoken_file = 'admin-token'\n"),
    )
    .unwrap();
    Gridflow::start(dir, &[])
}

/// `POST /admin/pipelines/<name>/<action>` with `token` (if any): status and JSON body.
async fn admin_post(gf: &Gridflow, name: &str, action: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = http().post(gf.admin_url(&format!("/admin/pipelines/{name}/{action}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status >= 400 {
        assert_eq!(content_type, "application/problem+json", "{status} {body}");
    }
    (status, body)
}

/// `gridflow pipelines <args>` against `gf` (the token in the environment): exit code and
/// stdout.
fn cli(gf: &Gridflow, args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(gridflow_bin());
    cmd.arg("pipelines")
        .args(args)
        .current_dir(gf.dir())
        .env("GRIDFLOW_ADMIN", gf.admin_url(""))
        .env_remove("GRIDFLOW_ADMIN_TOKEN")
        // The token file of gridflow.toml is not read when --config names another file.
        .args(["--config", "no-such-gridflow.toml"]);
    if let Some(token) = token {
        cmd.env("GRIDFLOW_ADMIN_TOKEN", token);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn view(gf: &Gridflow, name: &str) -> Value {
    gf.admin_pipelines().await["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} is not on /admin/pipelines"))
}

/// The value of `gridflow_pipeline_paused{pipeline="<name>"}`.
async fn paused_metric(gf: &Gridflow, name: &str) -> Option<String> {
    let wanted = format!("gridflow_pipeline_paused{{pipeline=\"{name}\"}} ");
    gf.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&wanted).map(str::to_string))
}

/// Waits until the running version of `name` is not `version` any more (a reload applied).
async fn wait_reloaded(gf: &Gridflow, name: &str, version: &Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = view(gf, name).await;
        if v["version"] != *version && v["state"] == "running" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} was not reloaded: {v}\n{}",
            gf.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Log lines of `gf` with the message `message`.
fn count_logs(gf: &Gridflow, message: &str) -> usize {
    gf.logs()
        .iter()
        .filter(|l| log_field(l, "message").as_deref() == Some(message))
        .count()
}

/// Committed offsets of `group` on `topic` (partitions `0..partitions`), as numbers (`-1`:
/// none).
fn committed(group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c = consumer(group);
    let offsets = committed_offsets(&c, topic, partitions)
        .into_iter()
        .map(|(p, o)| (p, o.to_raw().unwrap_or(-1)))
        .collect();
    std::thread::spawn(move || drop(c));
    offsets
}

/// Every `id` of the records of `topic` read so far (from the start), with its count.
async fn ids_on(topic: &str, within: Duration) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for record in consume_for(topic, within).await {
        *counts
            .entry(record.json()["id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    counts
}

fn records(prefix: &str, n: usize) -> Vec<(Option<String>, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            (
                Some(id.clone()),
                format!(r#"{{"id": "{id}", "value": {i}}}"#).into_bytes(),
            )
        })
        .collect()
}

fn kafka_flow(input: &str, output: &str, group: &str, mark: &str) -> String {
    format!(
        "name = 'relay'\n[source]\nkind = 'kafka'\ntopics = ['{input}']\ngroup = '{group}'\n\
         [[steps]]\nkind = 'map'\nexpression = \"{{id: id, mark: '{mark}'}}\"\n\
         [sink]\nkind = 'kafka'\ntopic = '{output}'\nkey = 'id'\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_kafka_pipeline_takes_nothing_keeps_its_group_and_loses_nothing() {
    const PARTITIONS: i32 = 3;
    let input = unique("t.pause.in.v1");
    let output = unique("t.pause.out.v1");
    let group = unique("gridflow-pause");
    create_topic(&input, PARTITIONS).await;
    create_topic(&output, 1).await;
    create_topic(&format!("{output}.dlq"), 1).await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "relay.toml",
        &kafka_flow(&input, &output, &group, "A"),
    );
    // The shortest poll interval librdkafka allows next to gridflow's 10 s session timeout: a
    // paused consumer that stopped polling would leave the group within the pause below.
    let gf = start_with_token(
        dir.path(),
        "[engine]\ndrain_timeout_ms = 5000\n[kafka.properties]\n\"max.poll.interval.ms\" = \"10000\"\n",
    );
    assert_eq!(paused_metric(&gf, "relay").await.as_deref(), Some("0"));

    // Running: the first batch goes through and is committed.
    produce_many(&input, records("before", 30)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        let committed = committed(&group, &input, PARTITIONS);
        if committed.values().map(|o| o.max(&0)).sum::<i64>() == 30 {
            break committed;
        }
        assert!(
            Instant::now() < deadline,
            "the first batch was not committed: {committed:?}\n{}",
            gf.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (assigned, revoked) = (
        count_logs(&gf, "Kafka partitions assigned."),
        count_logs(&gf, "Kafka partitions revoked."),
    );
    assert!(assigned >= 1, "{}", gf.log_text());

    // Paused through the command line.
    let (code, out, err) = cli(&gf, &["pause", "relay"], Some(TOKEN));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("pipeline relay paused (since "), "{out}");
    assert!(
        gf.wait_for_log_async("Kafka source paused", Duration::from_secs(10))
            .await,
        "{}",
        gf.log_text()
    );

    // Produced while paused: not consumed, for longer than the session timeout and the poll
    // interval (10 s each).
    produce_many(&input, records("paused", 40)).await;
    tokio::time::sleep(Duration::from_secs(13)).await;
    assert_eq!(
        committed(&group, &input, PARTITIONS),
        before,
        "a committed offset moved while paused"
    );
    let seen = ids_on(&output, Duration::from_secs(3)).await;
    assert_eq!(
        seen.len(),
        30,
        "records reached the sink while paused: {seen:?}"
    );
    assert!(seen.keys().all(|id| id.starts_with("before-")));
    // The group was kept: no rebalance (a member dropped for a missed session, or one that
    // left, would have had its partitions revoked and assigned again).
    assert_eq!(
        count_logs(&gf, "Kafka partitions assigned."),
        assigned,
        "{}",
        gf.log_text()
    );
    assert_eq!(count_logs(&gf, "Kafka partitions revoked."), revoked);
    // Shown on the admin API and in the metric.
    let relay = view(&gf, "relay").await;
    assert_eq!(relay["paused"], true, "{relay}");
    assert!(relay["paused_since"].as_str().unwrap().contains('T'));
    assert_eq!(relay["state"], "running");
    assert_eq!(paused_metric(&gf, "relay").await.as_deref(), Some("1"));
    let (code, list, _) = cli(&gf, &["list"], None);
    assert_eq!(code, 0);
    assert!(list.contains("relay\trunning\tpaused since "), "{list}");

    // A hot reload of the file (a new version joins the group: a rebalance): still paused.
    let version = relay["version"].clone();
    let paused_assignments = count_logs(&gf, "Kafka partitions paused (pipeline paused).");
    std::fs::write(
        dir.path().join("pipelines/relay.toml"),
        kafka_flow(&input, &output, &group, "B"),
    )
    .unwrap();
    wait_reloaded(&gf, "relay", &version).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_logs(&gf, "Kafka partitions paused (pipeline paused).") == paused_assignments {
        assert!(
            Instant::now() < deadline,
            "the new version's assignment was not paused:\n{}",
            gf.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another rebalance: a second member joins the group and leaves.
    let intruder = consumer(&group);
    intruder.subscribe(&[&input]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while intruder.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        let _ = tokio::time::timeout(Duration::from_millis(200), intruder.recv()).await;
        assert!(Instant::now() < deadline, "the second member got nothing");
    }
    close_consumer(intruder).await;
    produce_many(&input, records("reloaded", 20)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        committed(&group, &input, PARTITIONS),
        before,
        "a committed offset moved while paused, after the reload and the rebalance"
    );
    assert_eq!(ids_on(&output, Duration::from_secs(3)).await.len(), 30);
    let relay = view(&gf, "relay").await;
    assert_eq!(
        relay["paused"], true,
        "the reload resumed the pipeline: {relay}"
    );

    // Pausing again is idempotent; resuming delivers everything, once each.
    let (status, body) = admin_post(&gf, "relay", "pause", Some(TOKEN)).await;
    assert_eq!(
        (status, body["changed"].clone()),
        (200, false.into()),
        "{body}"
    );
    let (code, out, err) = cli(&gf, &["resume", "relay"], Some(TOKEN));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "pipeline relay resumed");
    let expected: BTreeSet<String> = ["before", "paused", "reloaded"]
        .iter()
        .zip([30, 40, 20])
        .flat_map(|(p, n)| (0..n).map(move |i| format!("{p}-{i}")))
        .collect();
    let got = read_ids(&output, &expected, Duration::from_secs(60)).await;
    assert_eq!(
        expected.difference(&got).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "records lost:\n{}",
        gf.log_text()
    );
    let counts = ids_on(&output, Duration::from_secs(3)).await;
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "records delivered twice: {twice:?}");
    assert_eq!(paused_metric(&gf, "relay").await.as_deref(), Some("0"));
    assert_eq!(view(&gf, "relay").await["paused"], false);
}

fn http_flow(name: &str, path: &str, topic: &str, mark: &str) -> String {
    format!(
        "name = '{name}'\n[source]\nkind = 'http'\npath = '{path}'\nretry_after_secs = 7\n\
         [[steps]]\nkind = 'map'\nexpression = \"{{id: id, mark: '{mark}'}}\"\n\
         [sink]\nkind = 'kafka'\ntopic = '{topic}'\nkey = 'id'\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_http_pipeline_answers_503_on_its_own_route_only() {
    let topic = unique("t.pause.http.v1");
    let soap_topic = unique("t.pause.soap.v1");
    for t in [&topic, &soap_topic] {
        create_topic(t, 1).await;
        create_topic(&format!("{t}.dlq"), 1).await;
    }
    let dir = test_dir();
    write_pipeline(dir.path(), "a.toml", &http_flow("a", "/a", &topic, "1"));
    write_pipeline(dir.path(), "b.toml", &http_flow("b", "/b", &topic, "1"));
    write_pipeline(
        dir.path(),
        "s.toml",
        &format!(
            "name = 's'\n[source]\nkind = 'soap'\npath = '/s'\nretry_after_secs = 7\n\
             [sink]\nkind = 'kafka'\ntopic = '{soap_topic}'\n"
        ),
    );
    let gf = start_with_token(dir.path(), "");
    let send = |path: &str, id: &str| {
        let (url, body) = (gf.http_url(path), format!(r#"{{"id": "{id}"}}"#));
        async move { post(&url, "application/json", &[], body).await }
    };
    assert_eq!(send("/a", "a-0").await.status(), 202);

    // Without the token, or with another one: refused, nothing paused.
    for token in [None, Some("not-the-admin-token-0123456789")] {
        let (status, body) = admin_post(&gf, "a", "pause", token).await;
        assert_eq!(status, 401, "{body}");
    }
    let (code, _, err) = cli(&gf, &["pause", "a"], None);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    assert_eq!(send("/a", "a-1").await.status(), 202);
    assert_eq!(view(&gf, "a").await["paused"], false);

    // A pipeline that does not run: 404, for pause and resume, by API and command line.
    for action in ["pause", "resume"] {
        let (status, body) = admin_post(&gf, "no-such-flow", action, Some(TOKEN)).await;
        assert_eq!(status, 404, "{body}");
        assert!(body["detail"].as_str().unwrap().contains("no-such-flow"));
    }
    let (code, _, err) = cli(&gf, &["pause", "no-such-flow"], Some(TOKEN));
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    // A path that is not an action.
    let (status, _) = admin_post(&gf, "a", "freeze", Some(TOKEN)).await;
    assert_eq!(status, 404);

    // Paused: 503 with Retry-After and problem+json on /a; /b still takes requests.
    let (status, body) = admin_post(&gf, "a", "pause", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["paused"].clone(), body["changed"].clone()),
        (true.into(), true.into())
    );
    let since = body["paused_since"].clone();
    let check_paused = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "7");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], 503);
        assert!(
            body["detail"].as_str().unwrap().contains("paused"),
            "{body}"
        );
    };
    check_paused(send("/a", "a-2").await).await;
    // Whatever the request: a GET, a body that is not JSON.
    check_paused(http().get(gf.http_url("/a")).send().await.unwrap()).await;
    check_paused(post(&gf.http_url("/a"), "text/plain", &[], "not json").await).await;
    assert_eq!(send("/b", "b-0").await.status(), 202);
    // A SOAP pipeline paused: the same answer, to an envelope as to anything else.
    let (status, _) = admin_post(&gf, "s", "pause", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let envelope = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><x/></soap:Body></soap:Envelope>"#;
    check_paused(
        post(
            &gf.http_url("/s"),
            "text/xml; charset=utf-8",
            &[("soapaction", "\"x\"")],
            envelope,
        )
        .await,
    )
    .await;
    let (status, _) = admin_post(&gf, "s", "resume", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let resumed = post(
        &gf.http_url("/s"),
        "text/xml; charset=utf-8",
        &[("soapaction", "\"x\"")],
        envelope,
    )
    .await;
    assert_ne!(resumed.status(), 503, "{:?}", resumed.text().await);
    // Idempotent: the first pause's time stays.
    let (status, body) = admin_post(&gf, "a", "pause", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body["changed"], false);
    assert_eq!(body["paused_since"], since);
    assert_eq!(view(&gf, "a").await["paused_since"], since);
    assert_eq!(view(&gf, "b").await["paused"], false);

    // A hot reload of the file, then POST /admin/reload: still paused.
    let version = view(&gf, "a").await["version"].clone();
    std::fs::write(
        dir.path().join("pipelines/a.toml"),
        http_flow("a", "/a", &topic, "2"),
    )
    .unwrap();
    wait_reloaded(&gf, "a", &version).await;
    check_paused(send("/a", "a-3").await).await;
    let reload = http()
        .post(gf.admin_url("/admin/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    check_paused(send("/a", "a-4").await).await;
    assert_eq!(view(&gf, "a").await["paused_since"], since);
    assert_eq!(paused_metric(&gf, "a").await.as_deref(), Some("1"));
    assert_eq!(paused_metric(&gf, "b").await.as_deref(), Some("0"));

    // Resumed: 202 again; resuming twice changes nothing.
    let (status, body) = admin_post(&gf, "a", "resume", Some(TOKEN)).await;
    assert_eq!(
        (status, body["changed"].clone()),
        (200, true.into()),
        "{body}"
    );
    assert_eq!(send("/a", "a-5").await.status(), 202);
    let (status, body) = admin_post(&gf, "a", "resume", Some(TOKEN)).await;
    assert_eq!(
        (status, body["changed"].clone()),
        (200, false.into()),
        "{body}"
    );
    assert!(body["paused_since"].is_null());
    assert_eq!(paused_metric(&gf, "a").await.as_deref(), Some("0"));

    // Only the accepted requests reached the topic.
    let expected: BTreeSet<String> = ["a-0", "a-1", "a-5", "b-0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let got = read_ids(&topic, &expected, Duration::from_secs(30)).await;
    assert_eq!(got, expected);

    // A pipeline whose file is deleted stops, and its pause is forgotten: 404.
    let (status, _) = admin_post(&gf, "b", "pause", Some(TOKEN)).await;
    assert_eq!(status, 200);
    std::fs::remove_file(dir.path().join("pipelines/b.toml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while gf.admin_pipelines().await["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "b")
    {
        assert!(Instant::now() < deadline, "b did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = admin_post(&gf, "b", "resume", Some(TOKEN)).await;
    assert_eq!(status, 404);
    assert_eq!(paused_metric(&gf, "b").await.as_deref(), Some("0"));
}
