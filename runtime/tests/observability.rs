//! Black-box tests of what operations see: traces exported over OTLP to a real receiver
//! started here, the metrics of a pipeline's traffic, and the shape of the log lines.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: BTreeMap<String, String>,
    error: Option<String>,
    service: String,
}

/// An OTLP/HTTP receiver on 127.0.0.1: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, decoded with the opentelemetry-proto types.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let store = Arc::clone(&spans);
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let store = Arc::clone(&store);
                async move {
                    let request = ExportTraceServiceRequest::decode(body.as_ref())
                        .expect("an OTLP protobuf ExportTraceServiceRequest");
                    let mut spans = store.lock().unwrap();
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| r.attributes.iter())
                            .find(|a| a.key == "service.name")
                            .map(|a| text(&a.value))
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            for s in scope.spans {
                                spans.push(Span {
                                    name: s.name,
                                    trace_id: hex::encode(&s.trace_id),
                                    span_id: hex::encode(&s.span_id),
                                    parent_span_id: hex::encode(&s.parent_span_id),
                                    attributes: s
                                        .attributes
                                        .iter()
                                        .map(|a| (a.key.clone(), text(&a.value)))
                                        .collect(),
                                    // StatusCode 2 is ERROR.
                                    error: s.status.filter(|st| st.code == 2).map(|st| st.message),
                                    service: service.clone(),
                                });
                            }
                        }
                    }
                    // An empty ExportTraceServiceResponse.
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, spans }
    }

    /// Waits until a span matches `want`, at most 30 s.
    async fn wait_for(&self, what: &str, want: impl Fn(&Span) -> bool) -> Span {
        for _ in 0..300 {
            if let Some(s) = self.spans.lock().unwrap().iter().find(|s| want(s)) {
                return s.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no span {what} received; got: {:#?}",
            self.spans.lock().unwrap()
        );
    }

    fn children_of(&self, parent: &Span) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
            .cloned()
            .collect()
    }
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_per_message_and_step_follow_the_callers_traceparent() {
    let receiver = Receiver::start().await;
    let out = unique("t.traced.out.v1");
    let k_in = unique("t.traced.in.v1");
    create_topic(&out, 1).await;
    create_topic(&format!("{out}.dlq"), 1).await;
    create_topic(&k_in, 1).await;
    let dir = test_dir();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        format!(
            "[traces]\notlp_endpoint = \"{}\"\nservice_name = \"gridflow-test\"\n",
            receiver.url
        ),
    )
    .unwrap();
    write_pipeline(
        dir.path(),
        "http.toml",
        &format!(
            r#"
name = "traced-http"
[source]
kind = "http"
path = "/traced"
[[steps]]
kind = "map"
expression = "{{id: id, ok: `true`}}"
[sink]
kind = "kafka"
topic = "{out}"
"#
        ),
    );
    write_pipeline(
        dir.path(),
        "kafka.toml",
        &format!(
            r#"
name = "traced-kafka"
[source]
kind = "kafka"
topics = ["{k_in}"]
group = "{group}"
[[steps]]
kind = "map"
expression = "{{id: id, from_kafka: `true`}}"
[sink]
kind = "kafka"
topic = "{out}"
"#,
            group = unique("g")
        ),
    );
    // The batch span processor exports every 100 ms here (OTEL_BSP_SCHEDULE_DELAY).
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    let gf = Gridflow::start(dir.path(), &[]);

    // HTTP: the caller's traceparent is the parent of the process span.
    let response = post(
        &gf.http_url("/traced"),
        "application/json",
        &[
            ("traceparent", &format!("00-{TRACE_ID}-{PARENT_ID}-01")),
            ("x-correlation-id", "trace-corr-1"),
        ],
        r#"{"id": 1}"#,
    )
    .await;
    assert_eq!(response.status(), 202);
    let process = receiver
        .wait_for("process traced-http", |s| s.name == "process traced-http")
        .await;
    assert_eq!(process.trace_id, TRACE_ID, "{process:?}");
    assert_eq!(process.parent_span_id, PARENT_ID, "{process:?}");
    assert_eq!(process.service, "gridflow-test");
    assert_eq!(
        process.attributes["gridflow.correlation_id"],
        "trace-corr-1"
    );
    assert_eq!(process.attributes["gridflow.pipeline"], "traced-http");
    assert!(process.error.is_none(), "{process:?}");
    let deliver = receiver
        .wait_for("deliver", |s| {
            s.name == "deliver sink.kafka" && s.parent_span_id == process.span_id
        })
        .await;
    let children = receiver.children_of(&process);
    let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"steps[0].map"), "{names:?}");
    assert!(children
        .iter()
        .all(|c| c.attributes["gridflow.correlation_id"] == "trace-corr-1"));

    // The record written carries the traceparent of its delivery span (a producer span, the
    // parent of whatever consumes it downstream).
    let records = consume(&out, 1, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].headers.get("traceparent").map(String::as_str),
        Some(format!("00-{TRACE_ID}-{}-01", deliver.span_id).as_str()),
        "{:?}",
        records[0].headers
    );

    // Kafka: the record's traceparent header is the parent; a bad record's span is failed
    // and has a dead-letter child.
    let kafka_trace = "0af7651916cd43dd8448eb211c80319c";
    let kafka_parent = "b7ad6b7169203331";
    let traceparent = format!("00-{kafka_trace}-{kafka_parent}-01");
    produce(
        &k_in,
        None,
        br#"{"id": 2}"#,
        &[("traceparent", &traceparent)],
    )
    .await;
    produce(&k_in, None, b"not json", &[("traceparent", &traceparent)]).await;
    let ok = receiver
        .wait_for("process traced-kafka (ok)", |s| {
            s.name == "process traced-kafka" && s.error.is_none()
        })
        .await;
    assert_eq!(ok.trace_id, kafka_trace);
    assert_eq!(ok.parent_span_id, kafka_parent);
    let failed = receiver
        .wait_for("process traced-kafka (failed)", |s| {
            s.name == "process traced-kafka" && s.error.is_some()
        })
        .await;
    assert_eq!(failed.trace_id, kafka_trace);
    assert!(
        failed.attributes.contains_key("gridflow.error.code"),
        "{failed:?}"
    );
    let step = receiver
        .wait_for("failed step", |s| {
            s.parent_span_id == failed.span_id && s.name == "steps[0].map"
        })
        .await;
    assert!(step.error.is_some(), "{step:?}");
    receiver
        .wait_for("dead_letter", |s| {
            s.parent_span_id == failed.span_id && s.name == "dead_letter"
        })
        .await;
    drop(gf);
}

/// The value of one sample of `/metrics`, `name{labels}` with labels in any order.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_traffic_of_each_pipeline_and_step() {
    let out = unique("t.metrics.out.v1");
    let input = unique("t.metrics.in.v1");
    create_topic(&out, 1).await;
    create_topic(&format!("{out}.dlq"), 1).await;
    create_topic(&input, 2).await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "http.toml",
        &format!(
            r#"
name = "measured-http"
[source]
kind = "http"
path = "/measured"
[[steps]]
kind = "filter"
condition = "keep"
[[steps]]
kind = "map"
expression = "{{id: id}}"
[sink]
kind = "kafka"
topic = "{out}"
"#
        ),
    );
    write_pipeline(
        dir.path(),
        "kafka.toml",
        &format!(
            r#"
name = "measured-kafka"
[source]
kind = "kafka"
topics = ["{input}"]
group = "{group}"
[sink]
kind = "kafka"
topic = "{out}"
"#,
            group = unique("g")
        ),
    );
    // Records waiting before the pipeline starts: lag to work off.
    for i in 0..30 {
        produce(&input, Some(&format!("k{}", i % 3)), br#"{"n": 1}"#, &[]).await;
    }
    let gf = Gridflow::start(dir.path(), &[]);
    let url = gf.http_url("/measured");
    for (body, status) in [
        (r#"{"id": 1, "keep": true}"#, 202),
        (r#"{"id": 2, "keep": true}"#, 202),
        (r#"{"id": 3, "keep": false}"#, 202),
        ("{not json", 400),
    ] {
        let r = post(&url, "application/json", &[], body).await;
        assert_eq!(r.status(), status, "{body}");
    }

    // librdkafka's statistics come every 5 s: wait for the lag of both partitions to be 0.
    let mut text = String::new();
    for _ in 0..200 {
        text = gf.metrics().await;
        let lags: Vec<f64> = (0..2)
            .filter_map(|p| {
                sample(
                    &text,
                    "gridflow_kafka_consumer_lag",
                    &[
                        ("pipeline", "measured-kafka"),
                        ("topic", &input),
                        ("partition", &p.to_string()),
                    ],
                )
            })
            .collect();
        if lags.len() == 2 && lags.iter().all(|&l| l == 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
    };
    let http = [("pipeline", "measured-http")];
    for p in 0..2 {
        let partition = p.to_string();
        assert_eq!(
            get(
                "gridflow_kafka_consumer_lag",
                &[
                    ("pipeline", "measured-kafka"),
                    ("topic", &input),
                    ("partition", &partition)
                ]
            ),
            0.0
        );
    }
    assert_eq!(
        get(
            "gridflow_messages_received_total",
            &[("pipeline", "measured-kafka")]
        ),
        30.0
    );
    assert_eq!(
        get(
            "gridflow_messages_sent_total",
            &[("pipeline", "measured-kafka")]
        ),
        30.0
    );
    // Four inputs: two delivered, one filtered, one (not JSON) dead-lettered by the source.
    assert_eq!(get("gridflow_messages_received_total", &http), 4.0);
    let dead: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("gridflow_messages_dead_lettered_total{")
                && l.contains("pipeline=\"measured-http\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(dead, 1.0, "{text}");
    assert_eq!(get("gridflow_messages_sent_total", &http), 2.0);
    assert_eq!(
        get(
            "gridflow_messages_filtered_total",
            &[("pipeline", "measured-http"), ("step", "steps[0].filter")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "gridflow_messages_filtered_total",
            &[("pipeline", "measured-http"), ("step", "steps[1].map")]
        ),
        0.0
    );
    assert_eq!(
        get(
            "gridflow_step_duration_seconds_count",
            &[("pipeline", "measured-http"), ("step", "steps[0].filter")]
        ),
        3.0
    );
    assert_eq!(
        get(
            "gridflow_step_duration_seconds_count",
            &[("pipeline", "measured-http"), ("step", "steps[1].map")]
        ),
        2.0
    );
    assert_eq!(
        get(
            "gridflow_http_requests_total",
            &[("pipeline", "measured-http"), ("code", "202")]
        ),
        3.0
    );
    assert_eq!(
        get(
            "gridflow_http_requests_total",
            &[("pipeline", "measured-http"), ("code", "400")]
        ),
        1.0
    );
    assert_eq!(
        get("gridflow_http_request_duration_seconds_count", &http),
        4.0
    );
    assert_eq!(get("gridflow_end_to_end_latency_seconds_count", &http), 2.0);
    assert_eq!(get("gridflow_messages_in_flight", &http), 0.0);
    assert_eq!(get("gridflow_kafka_broker_reachable", &[]), 1.0);
    // Two producers: the HTTP pipeline's (no linger) and the one of the Kafka-sourced one.
    for producer in ["stream", "request"] {
        assert!(
            get(
                "gridflow_kafka_producer_queue_messages",
                &[("producer", producer)]
            ) >= 0.0
        );
    }
    let version = gf_version(&gf, "measured-http").await;
    assert_eq!(
        get(
            "gridflow_pipeline_info",
            &[("pipeline", "measured-http"), ("version", &version)]
        ),
        1.0
    );
    assert_eq!(
        get(
            "gridflow_reloads_total",
            &[("pipeline", "measured-http"), ("result", "success")]
        ),
        1.0
    );
    drop(gf);
}

async fn gf_version(gf: &Gridflow, pipeline: &str) -> String {
    let view = gf.admin_pipelines().await;
    view["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pipeline)
        .and_then(|p| p["version"].as_str())
        .unwrap_or_else(|| panic!("{pipeline} not in {view}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_are_json_with_fields_first_and_name_the_message() {
    let out = unique("t.logs.out.v1");
    create_topic(&out, 1).await;
    create_topic(&format!("{out}.dlq"), 1).await;
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "logs.toml",
        &format!(
            r#"
name = "logged"
[source]
kind = "http"
path = "/logged"
[[steps]]
kind = "filter"
condition = "keep"
[[steps]]
kind = "map"
expression = "{{id: id, v: abs(to_number(v))}}"
[sink]
kind = "kafka"
topic = "{out}"
"#
        ),
    );
    // Not a terminal: JSON without --log-format.
    let mut gf = Gridflow::start(dir.path(), &[]);
    let secret = "payload-that-must-not-be-logged";
    let url = gf.http_url("/logged");
    for (body, status) in [
        (
            format!(r#"{{"id": "{secret}", "v": "12", "keep": true}}"#),
            202,
        ),
        (format!(r#"{{"id": "{secret}", "keep": false}}"#), 202),
        // abs(null): a mapping failure, dead-lettered and logged.
        (
            format!(r#"{{"id": "{secret}", "v": "twelve", "keep": true}}"#),
            422,
        ),
    ] {
        let r = post(
            &url,
            "application/json",
            &[("x-correlation-id", "log-corr-1")],
            body,
        )
        .await;
        assert_eq!(r.status(), status);
    }
    gf.terminate();
    assert_eq!(
        gf.wait_exit_async(Duration::from_secs(30))
            .await
            .and_then(|s| s.code()),
        Some(0)
    );
    let logs = gf.logs();
    let mut about_the_message = 0;
    for line in &logs {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let message = v["fields"]["message"].as_str().unwrap_or_default();
        let first = message.chars().next().unwrap_or(' ');
        assert!(
            first.is_uppercase() && message.ends_with('.'),
            "a log message starts with a capital and ends with a period: {line}"
        );
        if v["fields"].get("correlation_id").is_some() {
            about_the_message += 1;
            for field in ["pipeline", "step"] {
                assert!(
                    v["fields"].get(field).is_some(),
                    "a line about a message names its {field}: {line}"
                );
            }
        }
        if ["INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap_or_default()) {
            assert!(!line.contains(secret), "a payload at info level: {line}");
        }
    }
    let dead_lettered = logs
        .iter()
        .find(|l| l.contains("Message dead-lettered."))
        .unwrap_or_else(|| panic!("no dead-letter line in:\n{}", logs.join("\n")));
    assert_eq!(
        log_field(dead_lettered, "pipeline").as_deref(),
        Some("logged")
    );
    assert_eq!(
        log_field(dead_lettered, "step").as_deref(),
        Some("steps[1].map")
    );
    assert_eq!(
        log_field(dead_lettered, "correlation_id").as_deref(),
        Some("log-corr-1")
    );
    assert!(about_the_message >= 1);
}
