//! Black-box: flow control (issue 5). `enrich` against real HTTP servers started here on
//! 127.0.0.1 (cache hits and expiry, timeouts, retries honouring `Retry-After`, `on_missing`,
//! the circuit breaker pausing a Kafka source with nothing lost, `503` on an HTTP source),
//! `branch` fan-out acknowledgement, `try`/`catch`, message metadata, and order per partition
//! under concurrency.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use common::*;
use serde_json::{json, Value};

/// An upstream the pipelines call: every call is recorded with its time.
#[derive(Default)]
struct Upstream {
    calls: Mutex<Vec<(String, Instant)>>,
    healthy: AtomicBool,
    posts: Mutex<Vec<Value>>,
    post_failures_left: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Upstream {
    fn calls_to(&self, prefix: &str) -> Vec<Instant> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, t)| *t)
            .collect()
    }

    fn total(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

async fn asset(
    State(up): State<Arc<Upstream>>,
    UrlPath(id): UrlPath<String>,
) -> axum::response::Response {
    let seen = {
        let mut calls = up.calls.lock().unwrap();
        calls.push((format!("/assets/{id}"), Instant::now()));
        calls
            .iter()
            .filter(|(p, _)| *p == format!("/assets/{id}"))
            .count()
    };
    match id.as_str() {
        "missing" => StatusCode::NOT_FOUND.into_response(),
        "poison" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "refused" => StatusCode::BAD_REQUEST.into_response(),
        // Slower than the step's timeout the first time, fast after.
        "slow" if seen == 1 => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            axum::Json(json!({"region": "late"})).into_response()
        }
        // Busy the first time, with Retry-After: 1.
        "busy" if seen == 1 => {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response()
        }
        "xml" => (
            [("content-type", "application/xml")],
            "<Asset><region>west</region><Feeder>F1</Feeder></Asset>",
        )
            .into_response(),
        _ if !up.healthy.load(Ordering::SeqCst) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        _ => {
            // A little jitter, so that lanes overtake each other when order is not kept.
            let jitter = id.bytes().map(u64::from).sum::<u64>() % 5;
            tokio::time::sleep(Duration::from_millis(jitter)).await;
            axum::Json(json!({"region": format!("region-of-{id}"), "calls": seen})).into_response()
        }
    }
}

/// Answers after 300 ms, counting the calls in flight at once.
async fn lookup(
    State(up): State<Arc<Upstream>>,
    UrlPath(id): UrlPath<String>,
) -> axum::Json<Value> {
    let now = up.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    up.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    up.in_flight.fetch_sub(1, Ordering::SeqCst);
    axum::Json(json!({"looked_up": id}))
}

async fn hook(State(up): State<Arc<Upstream>>, body: String) -> StatusCode {
    up.calls
        .lock()
        .unwrap()
        .push(("/hook".into(), Instant::now()));
    if up
        .post_failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if value["reject"] == true {
        return StatusCode::BAD_REQUEST;
    }
    up.posts.lock().unwrap().push(value);
    StatusCode::NO_CONTENT
}

async fn start_upstream() -> (Arc<Upstream>, String) {
    let up = Arc::new(Upstream::default());
    up.healthy.store(true, Ordering::SeqCst);
    let app = Router::new()
        .route("/assets/{id}", get(asset))
        .route("/lookup/{id}", get(lookup))
        .route("/hook", axum::routing::post(hook))
        .with_state(Arc::clone(&up));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (up, format!("http://{addr}"))
}

/// The value of the sample `name{labels...}` whose labels contain `with`, from `/metrics`.
async fn metric(gf: &Gridflow, name: &str, with: &str) -> Option<f64> {
    let text = http()
        .get(gf.admin_url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(with))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn post_json(gf: &Gridflow, path: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
    let response = post(
        &gf.http_url(path),
        "application/json",
        &[],
        body.to_string(),
    )
    .await;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_caches_answers_until_they_expire_and_handles_404_and_xml() {
    let (up, base) = start_upstream().await;
    let dir = test_dir();
    let enrich = |path: &str, extra: &str| {
        format!(
            "[source]\nkind='http'\npath='{path}'\nreply='mapped'\n[[steps]]\nkind='enrich'\nurl='{base}/assets/{{meter.id}}'\ntarget='asset'\n{extra}\n[sink]\nkind='file'\npath='out{}.ndjson'\n",
            path.replace('/', "-")
        )
    };
    write_pipeline(
        dir.path(),
        "cached.toml",
        &enrich("/cached", "[steps.cache]\nttl_ms=1500\nmax_bytes=100000"),
    );
    write_pipeline(
        dir.path(),
        "nulls.toml",
        &enrich("/nulls", "on_missing='null'\narrays=['Feeder']"),
    );
    write_pipeline(dir.path(), "strict.toml", &enrich("/strict", ""));
    let gf = Gridflow::start(dir.path(), &[]);

    // Two requests for one meter: one upstream call, the second answered from the cache.
    for _ in 0..2 {
        let (status, _, body) = post_json(&gf, "/cached", json!({"meter": {"id": "m1"}})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["asset"]["region"], "region-of-m1", "{body}");
        assert_eq!(body["meter"]["id"], "m1");
    }
    assert_eq!(
        up.calls_to("/assets/m1").len(),
        1,
        "the second answer came from the cache"
    );
    let hits = metric(
        &gf,
        "gridflow_enrich_cache_hits_total",
        "pipeline=\"cached\"",
    )
    .await;
    assert_eq!(hits, Some(1.0));
    // Another meter is another request.
    post_json(&gf, "/cached", json!({"meter": {"id": "m2"}})).await;
    assert_eq!(up.calls_to("/assets/m2").len(), 1);
    // Past the TTL the answer is fetched again.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let (_, _, body) = post_json(&gf, "/cached", json!({"meter": {"id": "m1"}})).await;
    assert_eq!(
        up.calls_to("/assets/m1").len(),
        2,
        "expired entry fetched again"
    );
    assert_eq!(body["asset"]["calls"], 2, "{body}");

    // 404 with on_missing = null; XML answers converted like xml_to_json.
    let (status, _, body) = post_json(&gf, "/nulls", json!({"meter": {"id": "missing"}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"meter": {"id": "missing"}, "asset": null}));
    let (_, _, body) = post_json(&gf, "/nulls", json!({"meter": {"id": "xml"}})).await;
    assert_eq!(
        body["asset"],
        json!({"Asset": {"region": "west", "Feeder": ["F1"]}}),
        "{body}"
    );
    // 404 with on_missing = fail (the default) and a refused call: dead-lettered, 422.
    for (id, code) in [("missing", "not_found"), ("refused", "enrichment_failed")] {
        let (status, _, body) = post_json(&gf, "/strict", json!({"meter": {"id": id}})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["step"], "steps[0].enrich", "{body}");
    }
    // A template value missing from the message is an error of the message.
    let (status, _, body) = post_json(&gf, "/strict", json!({"meter": {}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "mapping_error", "{body}");
    let dlq = std::fs::read_to_string(dir.path().join("out-strict.ndjson.dlq")).unwrap();
    assert_eq!(dlq.lines().count(), 3, "{dlq}");
    assert!(
        dlq.contains("not_found") && dlq.contains("enrichment_failed"),
        "{dlq}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_block_runs_its_calls_at_once() {
    let (up, base) = start_upstream().await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "both.toml",
        &format!(
            "[source]\nkind='http'\npath='/both'\nreply='mapped'\n[[steps]]\nkind='parallel'\n[[steps.steps]]\nkind='enrich'\nurl='{base}/lookup/{{id}}-asset'\ntarget='asset'\n[[steps.steps]]\nkind='enrich'\nurl='{base}/lookup/{{id}}-tariff'\ntarget='tariff.current'\n[sink]\nkind='file'\npath='out.ndjson'\n"
        ),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let (status, _, body) = post_json(&gf, "/both", json!({"id": "m7"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"id": "m7", "asset": {"looked_up": "m7-asset"}, "tariff": {"current": {"looked_up": "m7-tariff"}}})
    );
    assert_eq!(
        up.max_in_flight.load(Ordering::SeqCst),
        2,
        "both calls were in flight at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_retries_timeouts_and_honours_retry_after() {
    let (up, base) = start_upstream().await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "retries.toml",
        &format!(
            "[source]\nkind='http'\npath='/r'\nreply='mapped'\n[[steps]]\nkind='enrich'\nurl='{base}/assets/{{id}}'\ntarget='asset'\ntimeout_ms=300\nmax_attempts=3\ninitial_backoff_ms=10\nmax_backoff_ms=20\n[sink]\nkind='file'\npath='out.ndjson'\n"
        ),
    );
    let gf = Gridflow::start(dir.path(), &[]);

    // The first call times out (300 ms); the retry is answered.
    let (status, _, body) = post_json(&gf, "/r", json!({"id": "slow"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["asset"]["region"], "region-of-slow",
        "the retry's answer: {body}"
    );
    assert_eq!(up.calls_to("/assets/slow").len(), 2);

    // 429 with Retry-After: 1: the retry waits a second, not the 10 ms backoff.
    let (status, _, body) = post_json(&gf, "/r", json!({"id": "busy"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let calls = up.calls_to("/assets/busy");
    assert_eq!(calls.len(), 2);
    let waited = calls[1] - calls[0];
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After not honoured: retried after {waited:?}"
    );

    // Down for good: retries used up, the HTTP client is told to come back (503), and the
    // input is not dead-lettered.
    up.healthy.store(false, Ordering::SeqCst);
    let (status, headers, body) = post_json(&gf, "/r", json!({"id": "down"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "retries_exhausted", "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(up.calls_to("/assets/down").len(), 3, "max_attempts calls");
    assert!(!dir.path().join("out.ndjson.dlq").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_answers_503_on_http_then_closes_when_the_upstream_recovers() {
    let (up, base) = start_upstream().await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "guarded.toml",
        &format!(
            "[source]\nkind='http'\npath='/g'\n[[steps]]\nkind='enrich'\nurl='{base}/assets/{{id}}'\ntarget='asset'\nmax_attempts=1\n[steps.breaker]\nfailures=3\ncooldown_ms=2000\n[sink]\nkind='file'\npath='out.ndjson'\n"
        ),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    up.healthy.store(false, Ordering::SeqCst);
    for i in 0..3 {
        let (status, _, _) = post_json(&gf, "/g", json!({"id": format!("a{i}")})).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let before = up.total();
    // Open: fails fast without calling the upstream, Retry-After is the cool-down left.
    let (status, headers, body) = post_json(&gf, "/g", json!({"id": "b"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("breaker is open"),
        "{body}"
    );
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(up.total(), before, "no call while the breaker is open");
    assert_eq!(
        metric(&gf, "gridflow_enrich_breaker_state", "pipeline=\"guarded\"").await,
        Some(1.0)
    );
    // After the cool-down a trial call goes out; it succeeds and the breaker closes.
    up.healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _, body) = post_json(&gf, "/g", json!({"id": "c"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        metric(&gf, "gridflow_enrich_breaker_state", "pipeline=\"guarded\"").await,
        Some(0.0)
    );
    let out = std::fs::read_to_string(dir.path().join("out.ndjson")).unwrap();
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_pauses_a_kafka_source_nothing_is_lost_and_order_is_kept_per_partition() {
    let (up, base) = start_upstream().await;
    let input = unique("grid.meter.reading.v1");
    let output = unique("grid.meter.enriched.v1");
    create_topic(&input, 2).await;
    create_topic(&output, 2).await;
    create_topic(&format!("{output}.dlq"), 1).await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "enriched.toml",
        &format!(
            "[source]\nkind='kafka'\ntopics=['{input}']\ngroup='{}'\nconcurrency=4\n[[steps]]\nkind='enrich'\nurl='{base}/assets/{{meter}}'\ntarget='asset'\nmax_attempts=2\ninitial_backoff_ms=10\n[steps.breaker]\nfailures=3\ncooldown_ms=1000\n[sink]\nkind='kafka'\ntopic='{output}'\n",
            unique("g")
        ),
    );
    let gf = Gridflow::start(dir.path(), &[]);

    // The upstream is down while 400 records (4 keys, 100 each, in order) arrive.
    up.healthy.store(false, Ordering::SeqCst);
    let records: Vec<(Option<String>, Vec<u8>)> = (0..400)
        .map(|i| {
            let key = format!("k{}", i % 4);
            let body = json!({"meter": format!("{key}-{}", i / 4), "key": key, "seq": i / 4});
            (Some(key), body.to_string().into_bytes())
        })
        .collect();
    produce_many(&input, records).await;
    // The breaker opens, the lanes fill up and the partitions are paused.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let paused = metric(
            &gf,
            "gridflow_kafka_paused_partitions",
            "pipeline=\"enriched\"",
        )
        .await;
        let open = metric(
            &gf,
            "gridflow_enrich_breaker_state",
            "pipeline=\"enriched\"",
        )
        .await;
        if paused.unwrap_or(0.0) >= 1.0 && open == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no pause seen (paused {paused:?}, breaker {open:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No busy retrying: over three seconds of outage only trial calls go out.
    let before = up.total();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = up.total() - before;
    assert!(
        during <= 12,
        "{during} calls in 3 s while the breaker was open"
    );
    assert!(consume_for(&output, Duration::from_secs(1))
        .await
        .is_empty());

    // The upstream recovers: every record is delivered once, in order per key.
    up.healthy.store(true, Ordering::SeqCst);
    let out = consume(&output, 400, Duration::from_secs(90)).await;
    assert_eq!(out.len(), 400, "every record delivered");
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &out {
        let v = r.json();
        assert_eq!(
            v["asset"]["region"],
            format!("region-of-{}", v["meter"].as_str().unwrap())
        );
        assert_eq!(r.key.as_deref(), v["key"].as_str(), "input key kept");
        per_key
            .entry(v["key"].as_str().unwrap().to_string())
            .or_default()
            .push(v["seq"].as_u64().unwrap());
    }
    for (key, seqs) in &per_key {
        assert_eq!(*seqs, (0..100).collect::<Vec<u64>>(), "order of {key}");
    }
    assert!(
        consume_for(&format!("{output}.dlq"), Duration::from_secs(1))
            .await
            .is_empty()
    );
    assert!(gf
        .log_text()
        .contains("Upstream unavailable; the input waits."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_acknowledges_only_when_every_sink_did() {
    let (up, base) = start_upstream().await;
    let events = unique("grid.outage.event.v1");
    create_topic(&events, 1).await;
    create_topic(&format!("{events}.dlq"), 1).await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "fanout.toml",
        &format!(
            "[source]\nkind='http'\npath='/outage'\n[[steps]]\nkind='branch'\nmode='all'\n[[steps.routes]]\nname='everything'\nwhen='`true`'\n[[steps.routes]]\nname='to-dispatch'\nwhen=\"severity == 'high'\"\n[[steps.routes.steps]]\nkind='map'\nexpression='{{id: id, reject: reject}}'\n[steps.routes.sink]\nkind='http'\nurl='{base}/hook'\n[sink]\nkind='kafka'\ntopic='{events}'\n[on_error]\ninitial_backoff_ms=200\nmax_backoff_ms=400\n"
        ),
    );
    let gf = Gridflow::start(dir.path(), &[]);

    // The HTTP sink answers 503 twice: the request is answered only after it accepted.
    up.post_failures_left.store(2, Ordering::SeqCst);
    let started = Instant::now();
    let (status, _, body) =
        post_json(&gf, "/outage", json!({"id": "o1", "severity": "high"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "answered before the retries"
    );
    assert_eq!(
        up.posts.lock().unwrap().len(),
        1,
        "202 came after the HTTP sink accepted"
    );
    assert_eq!(body["messages"], 2, "{body}");
    // A low-severity outage goes to Kafka only.
    let (status, _, _) = post_json(&gf, "/outage", json!({"id": "o2", "severity": "low"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(up.posts.lock().unwrap().len(), 1);
    // One sink refuses: the input is dead-lettered (422) though Kafka took its copy.
    let (status, _, body) = post_json(
        &gf,
        "/outage",
        json!({"id": "o3", "severity": "high", "reject": true}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["step"], "steps[0].branch.routes[1].sink.http",
        "{body}"
    );

    let out = consume(&events, 3, Duration::from_secs(30)).await;
    let ids: Vec<String> = out
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["o1", "o2", "o3"]);
    let dlq = consume(&format!("{events}.dlq"), 1, Duration::from_secs(30)).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].json()["id"], "o3");
    assert_eq!(dlq[0].headers["gridflow.error.code"], "sink_rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_catch_handles_failures_and_rethrow_still_dead_letters() {
    let compensations = unique("grid.reading.rejected.v1");
    let accepted = unique("grid.reading.accepted.v1");
    create_topic(&compensations, 1).await;
    create_topic(&accepted, 1).await;
    create_topic(&format!("{accepted}.dlq"), 1).await;
    let dir = test_dir();
    // Caught: a custom reply built from the error.
    write_pipeline(
        dir.path(),
        "caught.toml",
        "[source]\nkind='http'\npath='/caught'\nreply='mapped'\n[[steps]]\nkind='try'\n[[steps.steps]]\nkind='split'\nexpression='items'\n[[steps.catch]]\nkind='map'\nexpression='{status: `\"rejected\"`, id: id, code: meta().error.code, step: meta().error.step, reason: meta().error.message}'\n[[steps]]\nkind='set'\n[steps.fields]\nchecked='`true`'\n[sink]\nkind='file'\npath='caught.ndjson'\n",
    );
    // Rethrown: a compensating event is published, the input is dead-lettered.
    write_pipeline(
        dir.path(),
        "rethrown.toml",
        &format!(
            "[source]\nkind='http'\npath='/rethrown'\n[[steps]]\nkind='try'\nrethrow=true\n[[steps.steps]]\nkind='map'\nexpression='{{id: id, value: abs(value)}}'\n[[steps.catch]]\nkind='branch'\n[[steps.catch.routes]]\nwhen='`true`'\n[[steps.catch.routes.steps]]\nkind='map'\nexpression='{{rejected: id, code: meta().error.code}}'\n[steps.catch.routes.sink]\nkind='kafka'\ntopic='{compensations}'\n[sink]\nkind='kafka'\ntopic='{accepted}'\n"
        ),
    );
    let gf = Gridflow::start(dir.path(), &[]);

    let (status, _, body) = post_json(&gf, "/caught", json!({"items": [{"n": 1}, {"n": 2}]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!([{"n": 1, "checked": true}, {"n": 2, "checked": true}])
    );
    let (status, _, body) = post_json(&gf, "/caught", json!({"id": "x", "items": "nope"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "rejected", "{body}");
    assert_eq!(body["code"], "unexpected_shape", "{body}");
    assert_eq!(body["step"], "steps[0].try.steps[0].split", "{body}");
    assert_eq!(body["checked"], true, "steps after the block ran: {body}");
    assert!(!dir.path().join("caught.ndjson.dlq").exists());

    let (status, _, _) = post_json(&gf, "/rethrown", json!({"id": "ok", "value": -5})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, body) = post_json(&gf, "/rethrown", json!({"id": "bad", "value": "x"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "mapping_error", "{body}");
    let comp = consume(&compensations, 1, Duration::from_secs(30)).await;
    assert_eq!(
        comp[0].json(),
        json!({"rejected": "bad", "code": "mapping_error"})
    );
    let ok = consume(&accepted, 1, Duration::from_secs(30)).await;
    assert_eq!(ok[0].json(), json!({"id": "ok", "value": 5.0}));
    let dlq = consume(&format!("{accepted}.dlq"), 1, Duration::from_secs(30)).await;
    assert_eq!(dlq[0].json()["id"], "bad", "the original input");
    assert_eq!(
        dlq[0].headers["gridflow.error.step"],
        "steps[0].try.steps[0].map"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_readable_and_writable_from_steps() {
    let input = unique("grid.meter.raw.v1");
    let output = unique("grid.meter.tagged.v1");
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    create_topic(&format!("{output}.dlq"), 1).await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "tagged.toml",
        &format!(
            "[source]\nkind='kafka'\ntopics=['{input}']\ngroup='{}'\n[[steps]]\nkind='set'\nkey='meter'\n[steps.fields]\n'origin.topic'='meta().source.topic'\n'origin.offset'='meta().source.offset'\n'origin.region'='meta().headers.region'\n'origin.correlation_id'='meta().correlation_id'\n[steps.headers]\nx-meter='meter'\n[[steps]]\nkind='rename'\n[steps.fields]\nvalue='reading.value'\n[steps.headers]\nregion='x-region'\n[[steps]]\nkind='remove'\nfields=['secret']\nheaders=['drop-me']\n[sink]\nkind='kafka'\ntopic='{output}'\n",
            unique("g")
        ),
    );
    let _gf = Gridflow::start(dir.path(), &[]);
    produce(
        &input,
        Some("in-key"),
        br#"{"meter":"m-9","value":3.5,"secret":"s"}"#,
        &[
            ("region", "north"),
            ("drop-me", "x"),
            ("gridflow.correlation_id", "corr-1"),
        ],
    )
    .await;
    let out = consume(&output, 1, Duration::from_secs(30)).await;
    let r = &out[0];
    assert_eq!(
        r.json(),
        json!({"meter": "m-9", "reading": {"value": 3.5}, "origin": {"topic": input, "offset": 0, "region": "north", "correlation_id": "corr-1"}})
    );
    assert_eq!(r.key.as_deref(), Some("m-9"), "key set from the body");
    assert_eq!(r.headers["x-meter"], "m-9");
    assert_eq!(r.headers["x-region"], "north");
    assert!(!r.headers.contains_key("region") && !r.headers.contains_key("drop-me"));
    assert_eq!(r.headers["gridflow.correlation_id"], "corr-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_one_partition_are_processed_at_once_in_order_per_key() {
    let (up, base) = start_upstream().await;
    let input = unique("grid.meter.keyed.v1");
    let output = unique("grid.meter.keyed-out.v1");
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    create_topic(&format!("{output}.dlq"), 1).await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "keyed.toml",
        &format!(
            "[source]\nkind='kafka'\ntopics=['{input}']\ngroup='{}'\nconcurrency=8\norder_by='key'\n[[steps]]\nkind='enrich'\nurl='{base}/lookup/{{meter}}'\ntarget='asset'\n[sink]\nkind='kafka'\ntopic='{output}'\n",
            unique("g")
        ),
    );
    let _gf = Gridflow::start(dir.path(), &[]);
    // One partition, 8 keys, 5 records each; every lookup takes 300 ms.
    let records: Vec<(Option<String>, Vec<u8>)> = (0..40)
        .map(|i| {
            let key = format!("k{}", i % 8);
            let body = json!({"meter": format!("{key}-{}", i / 8), "key": key, "seq": i / 8});
            (Some(key), body.to_string().into_bytes())
        })
        .collect();
    produce_many(&input, records).await;
    let out = consume(&output, 40, Duration::from_secs(60)).await;
    assert_eq!(out.len(), 40);
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &out {
        let v = r.json();
        per_key
            .entry(v["key"].as_str().unwrap().to_string())
            .or_default()
            .push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(per_key.len(), 8);
    for (key, seqs) in &per_key {
        assert_eq!(*seqs, [0, 1, 2, 3, 4], "order of {key}");
    }
    // Records of one partition were processed at once (one lane per key here), so the
    // lookups overlapped.
    assert!(
        up.max_in_flight.load(Ordering::SeqCst) >= 2,
        "records of one partition were processed one at a time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_matching_route_wins_and_the_default_takes_the_rest() {
    let (up, base) = start_upstream().await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "routed.toml",
        &format!(
            "[source]\nkind='http'\npath='/route'\nreply='mapped'\n[[steps]]\nkind='split'\nexpression='items'\n[[steps]]\nkind='branch'\n[[steps.routes]]\nname='urgent'\nwhen=\"priority == 'high'\"\n[[steps.routes.steps]]\nkind='set'\n[steps.routes.steps.fields]\nroute=\"'urgent'\"\n[steps.routes.sink]\nkind='file'\npath='urgent.ndjson'\n[[steps.routes]]\nname='regional'\nwhen=\"meta().source.headers.\\\"x-region\\\" == 'north'\"\n[[steps.routes.steps]]\nkind='set'\n[steps.routes.steps.fields]\nroute=\"'north'\"\nauth='meta().source.headers.authorization'\n[steps.default]\n[[steps.default.steps]]\nkind='enrich'\nurl='{base}/lookup/{{id}}'\ntarget='looked'\nmax_concurrency=2\n[[steps.default.steps]]\nkind='set'\n[steps.default.steps.fields]\nroute=\"'default'\"\n[sink]\nkind='file'\npath='main.ndjson'\n"
        ),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let items: Vec<Value> = (0..6)
        .map(|i| json!({"id": format!("i{i}"), "priority": if i == 0 { "high" } else { "low" }}))
        .collect();
    let response = post(
        &gf.http_url("/route"),
        "application/json",
        &[("x-region", "north"), ("authorization", "Bearer secret")],
        json!({"items": items}).to_string(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let routes: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["route"].as_str().unwrap())
        .collect();
    // i0 is urgent (first route; the second would match too but the first wins); the rest
    // match the regional route, which has no sink: they continue to the pipeline's sink.
    assert_eq!(
        routes,
        ["urgent", "north", "north", "north", "north", "north"]
    );
    assert!(
        body[1].get("auth").is_some_and(Value::is_null),
        "credentials are not shown: {body}"
    );
    let urgent = std::fs::read_to_string(dir.path().join("urgent.ndjson")).unwrap();
    assert_eq!(urgent.lines().count(), 1);
    let main = std::fs::read_to_string(dir.path().join("main.ndjson")).unwrap();
    assert_eq!(main.lines().count(), 5);

    // Without the header, the low-priority items take the default route: one lookup each,
    // at most two at once (max_concurrency).
    let response = post(
        &gf.http_url("/route"),
        "application/json",
        &[],
        json!({"items": items}).to_string(),
    )
    .await;
    let body: Value = response.json().await.unwrap();
    let routes: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["route"].as_str().unwrap())
        .collect();
    assert_eq!(
        routes,
        ["urgent", "default", "default", "default", "default", "default"]
    );
    assert_eq!(body[1]["looked"]["looked_up"], "i1");
    assert_eq!(
        up.max_in_flight.load(Ordering::SeqCst),
        2,
        "max_concurrency bounds the calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_upstream_always_fails_is_dead_lettered_not_waited_for_ever() {
    let (up, base) = start_upstream().await;
    let input = unique("grid.meter.mixed.v1");
    let output = unique("grid.meter.mixed-out.v1");
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    create_topic(&format!("{output}.dlq"), 1).await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "mixed.toml",
        &format!(
            "[source]\nkind='kafka'\ntopics=['{input}']\ngroup='{}'\n[[steps]]\nkind='enrich'\nurl='{base}/assets/{{meter}}'\ntarget='asset'\nmax_attempts=2\ninitial_backoff_ms=10\n[steps.breaker]\nfailures=100\n[sink]\nkind='kafka'\ntopic='{output}'\n[on_error]\nmax_attempts=3\ninitial_backoff_ms=10\nmax_backoff_ms=50\n",
            unique("g")
        ),
    );
    let _gf = Gridflow::start(dir.path(), &[]);
    for meter in ["ok1", "poison", "ok2"] {
        produce(
            &input,
            Some(meter),
            json!({"meter": meter}).to_string().as_bytes(),
            &[],
        )
        .await;
    }
    let out = consume(&output, 2, Duration::from_secs(60)).await;
    let meters: Vec<Value> = out.iter().map(|r| r.json()["meter"].clone()).collect();
    assert_eq!(
        meters,
        [json!("ok1"), json!("ok2")],
        "the partition went on after the poison record"
    );
    let dlq = consume(&format!("{output}.dlq"), 1, Duration::from_secs(30)).await;
    assert_eq!(dlq[0].json()["meter"], "poison");
    assert_eq!(dlq[0].headers["gridflow.error.code"], "retries_exhausted");
    // Three runs of the program, two calls each.
    assert_eq!(up.calls_to("/assets/poison").len(), 6);
}
