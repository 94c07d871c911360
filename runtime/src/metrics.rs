//! Metrics as named events: one function or handle per thing worth counting, with the
//! standard names and labels in this one place.
//!
//! Names follow Prometheus conventions: `gridflow_` prefix, `_total` counters, `_seconds`
//! histograms in base units. Handles are registered once per pipeline, so the hot path only
//! increments.

use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};

/// Histogram buckets for latencies, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Histogram buckets for one step's time on one message, in seconds: in-process steps take
/// microseconds, `enrich` calls milliseconds.
pub const STEP_BUCKETS: &[f64] = &[
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Installs the Prometheus recorder and describes every metric; returns the handle
/// `/metrics` renders.
pub fn install() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("gridflow_step_duration_seconds".into()),
            STEP_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    // Alerts look for failures: they exist, at zero, from the start.
    for list in [
        "api_keys",
        "tls_client_ca",
        "tls_allowed_subjects",
        "admin_token",
    ] {
        counter!("gridflow_access_list_reloads_total", "list" => list, "outcome" => "failed")
            .absolute(0);
    }
    for reason in ["no_token", "wrong_token", "not_loopback"] {
        counter!("gridflow_admin_requests_refused_total", "reason" => reason).absolute(0);
    }
    // The producer queue gauges exist from each producer's creation (`KafkaSettings::producers`).
    Ok(handle)
}

/// Every metric gridflow exports, with its type, unit and help text: the reference
/// (`ops/metrics.txt` lists the same names; the suite checks a live scrape against both).
pub const METRICS: &[(&str, Kind, &str)] = &[
    ("gridflow_messages_received_total", Kind::Counter, "Inputs that entered the pipeline."),
    ("gridflow_messages_sent_total", Kind::Counter, "Messages the sink acknowledged."),
    ("gridflow_messages_filtered_total", Kind::Counter, "Messages a step dropped on purpose (filter, an empty split)."),
    ("gridflow_messages_dead_lettered_total", Kind::Counter, "Inputs written to the dead-letter destination, by the step that failed and the error code."),
    ("gridflow_messages_failed_total", Kind::Counter, "Inputs neither delivered nor dead-lettered: refused to the caller (HTTP 503) or written to the fallback file."),
    ("gridflow_dead_letters_fallback_total", Kind::Counter, "Dead letters the dead-letter topic refused for good, written to the local fallback file instead (counted as failed, not as dead-lettered)."),
    ("gridflow_sink_retries_total", Kind::Counter, "Sends retried after a transient sink fault."),
    ("gridflow_end_to_end_latency_seconds", Kind::Histogram, "Time from an input's arrival to its message's acknowledgement by the sink."),
    ("gridflow_step_duration_seconds", Kind::Histogram, "Time a step took for one message."),
    ("gridflow_step_errors_total", Kind::Counter, "Messages a step failed, by error code."),
    ("gridflow_messages_in_flight", Kind::Gauge, "Messages handed to a sink or the dead-letter destination and not acknowledged yet."),
    ("gridflow_upstream_waits_total", Kind::Counter, "Waits of Kafka inputs for an unavailable enrich upstream, one per wait."),
    ("gridflow_sink_waits_total", Kind::Counter, "Sends retried past on_error.max_attempts because the source waits for its sink (Kafka, file sources; up to on_error.max_sink_wait_ms), one per retry."),
    ("gridflow_http_requests_total", Kind::Counter, "HTTP and SOAP requests answered, by status code."),
    ("gridflow_http_request_duration_seconds", Kind::Histogram, "Time from an HTTP or SOAP request's arrival to its answer."),
    ("gridflow_quota_rejections_total", Kind::Counter, "Requests refused for being over their client's quota (HTTP 429)."),
    ("gridflow_http_connections_open", Kind::Gauge, "Connections open on the ingress listener (plain or TLS), handshakes included."),
    ("gridflow_http_connections_rejected_total", Kind::Counter, "Ingress connections closed at once, by reason: `max_connections` ([http] max_connections reached)."),
    ("gridflow_http_timeouts_total", Kind::Counter, "Ingress connections or requests cut by a timeout, by kind: `header`, `body`, `tls_handshake`, `idle`."),
    ("gridflow_http_requests_rejected_total", Kind::Counter, "Ingress requests refused before a pipeline saw them, by reason: `body_budget` (HTTP 503, [http] max_buffered_body_bytes used up), `draining` (HTTP 503, the listener is shutting down)."),
    ("gridflow_access_list_reloads_total", Kind::Counter, "Checks of an access-list file (`list`: api_keys, tls_client_ca, tls_allowed_subjects, admin_token) that applied a change (outcome applied) or found it unreadable or invalid (failed: counted at every check while it stays so; the last good list stays in force)."),
    ("gridflow_admin_requests_refused_total", Kind::Counter, "Mutating admin requests refused, by reason: no_token (401), wrong_token (401), not_loopback (403, no token configured)."),
    ("gridflow_enrich_cache_hits_total", Kind::Counter, "enrich answers taken from the step's cache."),
    ("gridflow_enrich_cache_misses_total", Kind::Counter, "enrich lookups that found no answer in the cache."),
    ("gridflow_enrich_call_duration_seconds", Kind::Histogram, "Duration of each attempt of an enrich call."),
    ("gridflow_enrich_breaker_state", Kind::Gauge, "State of an enrich step's circuit breaker: 0 closed, 1 open, 2 half-open."),
    ("gridflow_kafka_consumer_lag", Kind::Gauge, "Records between a partition's high watermark and the pipeline's committed offset."),
    ("gridflow_kafka_oldest_unsettled_seconds", Kind::Gauge, "Age of the oldest record of a partition handed to the pipeline and not settled yet (delivered, filtered or dead-lettered): its offset and every later one wait to be committed."),
    ("gridflow_kafka_paused_partitions", Kind::Gauge, "Partitions of the pipeline's kafka source paused because their lane stayed full."),
    ("gridflow_kafka_producer_queue_messages", Kind::Gauge, "Messages waiting in a Kafka producer's queues (not acknowledged by the broker yet), by producer: `stream` (Kafka and file sources), `request` (HTTP and SOAP pipelines, when it is a producer of its own)."),
    ("gridflow_kafka_producer_queue_bytes", Kind::Gauge, "Bytes of the messages waiting in a Kafka producer's queues, by producer."),
    ("gridflow_kafka_fatal_errors_total", Kind::Counter, "Fatal errors of a Kafka client (`rd_kafka_fatal_error`: a fenced idempotent producer, ...), by client (`stream`, `request` producer; `consumer`). Each one is answered by a new client."),
    ("gridflow_kafka_broker_reachable", Kind::Gauge, "1 when the Kafka brokers answered the last metadata probe, else 0."),
    ("gridflow_file_source_rejected_total", Kind::Counter, "Files a file source moved to failed/ unsent or given up, by the limit they broke (max_file_bytes, max_line_bytes, max_attempts)."),
    ("gridflow_reloads_total", Kind::Counter, "Pipeline reloads, by result (success, failure, stopped, restart_required)."),
    ("gridflow_pipeline_info", Kind::Gauge, "1 for the running version of a pipeline, 0 for a replaced or stopped one."),
    ("gridflow_pipeline_paused", Kind::Gauge, "1 while a pipeline is paused by an operator (POST /admin/pipelines/<name>/pause): its source takes no input; 0 when it runs or stopped."),
];

/// The type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution, in seconds.
    Histogram,
}

fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => describe_counter!(name, Unit::Count, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Histogram => describe_histogram!(name, Unit::Seconds, help),
        }
    }
}

/// A check of an access-list file (`api_keys`, `tls_client_ca`, `tls_allowed_subjects`,
/// `admin_token`): `applied` a change, or `failed` (the last good list stays in force).
pub fn access_list_reload(list: &'static str, outcome: &'static str) {
    counter!("gridflow_access_list_reloads_total", "list" => list, "outcome" => outcome)
        .increment(1);
}

/// A mutating admin request was refused (`no_token`, `wrong_token`, `not_loopback`).
pub fn admin_refused(reason: &'static str) {
    counter!("gridflow_admin_requests_refused_total", "reason" => reason).increment(1);
}

/// The Kafka brokers answered the last probe (or did not).
pub fn broker_reachable(up: bool) {
    gauge!("gridflow_kafka_broker_reachable").set(if up { 1.0 } else { 0.0 });
}

/// The queues of the `role` producer (`stream`, `request`) hold `messages` messages of
/// `bytes` bytes in all.
pub fn producer_queue(role: &'static str, messages: u64, bytes: u64) {
    gauge!("gridflow_kafka_producer_queue_messages", "producer" => role).set(messages as f64);
    gauge!("gridflow_kafka_producer_queue_bytes", "producer" => role).set(bytes as f64);
}

/// The `client` Kafka client (`stream`, `request`, `consumer`) exists: its fatal error
/// counter is exported (at 0) from now on.
pub fn kafka_fatal_errors_init(client: &'static str) {
    counter!("gridflow_kafka_fatal_errors_total", "client" => client).increment(0);
}

/// The `client` Kafka client hit a fatal error (it is replaced).
pub fn kafka_fatal_error(client: &'static str) {
    counter!("gridflow_kafka_fatal_errors_total", "client" => client).increment(1);
}

/// The oldest unsettled record of `pipeline`'s `topic`/`partition` was read `age` ago (zero
/// when none is unsettled).
pub fn oldest_unsettled(pipeline: &str, topic: &str, partition: i32, age: Duration) {
    gauge!("gridflow_kafka_oldest_unsettled_seconds", "pipeline" => pipeline.to_string(), "topic" => topic.to_string(), "partition" => partition.to_string())
        .set(age.as_secs_f64());
}

/// The consumer of `pipeline` is `lag` records behind on `topic`/`partition`.
pub fn consumer_lag(pipeline: &str, topic: &str, partition: i32, lag: i64) {
    gauge!("gridflow_kafka_consumer_lag", "pipeline" => pipeline.to_string(), "topic" => topic.to_string(), "partition" => partition.to_string())
        .set(lag.max(0) as f64);
}

/// A limit of the `file` source that sends a file to `failed/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileLimit {
    /// A file read whole is larger than `max_file_bytes`.
    FileBytes,
    /// An NDJSON line is longer than `max_line_bytes`.
    LineBytes,
    /// `max_attempts` attempts at the file failed.
    Attempts,
}

impl FileLimit {
    const ALL: [FileLimit; 3] = [
        FileLimit::FileBytes,
        FileLimit::LineBytes,
        FileLimit::Attempts,
    ];

    /// The limit's key in the source's table, also the metric's `reason` label.
    pub fn key(self) -> &'static str {
        match self {
            FileLimit::FileBytes => "max_file_bytes",
            FileLimit::LineBytes => "max_line_bytes",
            FileLimit::Attempts => "max_attempts",
        }
    }
}

/// The metrics of a `file` source.
pub struct FileSourceMetrics {
    rejected: [Counter; 3],
}

impl FileSourceMetrics {
    /// Registers the handles of `pipeline`'s file source (each reason at 0, so that an alert
    /// sees the first rejection as an increase).
    pub fn new(pipeline: &str) -> Self {
        FileSourceMetrics {
            rejected: FileLimit::ALL.map(|limit| {
                counter!("gridflow_file_source_rejected_total", "pipeline" => pipeline.to_string(), "reason" => limit.key())
            }),
        }
    }

    /// A file broke `limit` and went to `failed/`.
    pub fn rejected(&self, limit: FileLimit) {
        self.rejected[limit as usize].increment(1);
    }
}

/// The metrics of one step (`steps[0].map`) of a pipeline.
pub struct StepMetrics {
    pipeline: String,
    step: String,
    duration: Histogram,
    filtered: Counter,
}

impl StepMetrics {
    /// Registers the handles of `step` in `pipeline`.
    pub fn new(pipeline: &str, step: &str) -> Self {
        let (p, s) = (pipeline.to_string(), step.to_string());
        StepMetrics {
            duration: histogram!("gridflow_step_duration_seconds", "pipeline" => p.clone(), "step" => s.clone()),
            filtered: counter!("gridflow_messages_filtered_total", "pipeline" => p.clone(), "step" => s.clone()),
            pipeline: p,
            step: s,
        }
    }

    /// The step took `elapsed` for one message and produced `produced` messages (none: the
    /// message was filtered out).
    pub fn processed(&self, elapsed: Duration, produced: usize) {
        self.duration.record(elapsed.as_secs_f64());
        if produced == 0 {
            self.filtered.increment(1);
        }
    }

    /// The step's name (`steps[0].map`).
    pub fn step(&self) -> &str {
        &self.step
    }

    /// The step failed a message with `failure`. A transient failure (an unavailable
    /// upstream: the input waits and runs again) is not a step error and is not timed: it is
    /// counted in `gridflow_upstream_waits_total`.
    pub fn failed(&self, elapsed: Duration, failure: &crate::error::Failure) {
        if failure.retry_after.is_some() {
            return;
        }
        self.duration.record(elapsed.as_secs_f64());
        counter!("gridflow_step_errors_total", "pipeline" => self.pipeline.clone(), "step" => self.step.clone(), "code" => failure.code.as_str()).increment(1);
    }
}

/// The HTTP or SOAP answers of one pipeline. The statuses gridflow answers are registered
/// at once (so their series exist, at 0, before the first request); others when they occur.
pub struct HttpMetrics {
    pipeline: String,
    duration: Histogram,
    statuses: Vec<(u16, Counter)>,
}

impl HttpMetrics {
    /// The statuses gridflow's ingress answers.
    const STATUSES: [u16; 14] = [
        200, 202, 204, 400, 401, 403, 404, 405, 413, 415, 422, 429, 500, 503,
    ];

    /// Registers the handles of `pipeline`.
    pub fn new(pipeline: &str) -> Self {
        let p = pipeline.to_string();
        HttpMetrics {
            duration: histogram!("gridflow_http_request_duration_seconds", "pipeline" => p.clone()),
            statuses: Self::STATUSES
                .iter()
                .map(|&code| {
                    (
                        code,
                        counter!("gridflow_http_requests_total", "pipeline" => p.clone(), "code" => code.to_string()),
                    )
                })
                .collect(),
            pipeline: p,
        }
    }

    /// A request was answered with `status`, `elapsed` after it arrived.
    pub fn answered(&self, status: u16, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
        match self.statuses.iter().find(|(code, _)| *code == status) {
            Some((_, counter)) => counter.increment(1),
            None => counter!("gridflow_http_requests_total", "pipeline" => self.pipeline.clone(), "code" => status.to_string()).increment(1),
        }
    }
}

/// A message handed to a sink (or the dead-letter destination) and not acknowledged yet;
/// counted in `gridflow_messages_in_flight` until dropped.
pub struct InFlight {
    gauge: Gauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// A reload ended with `result` (`success`, `failure`, `stopped`, `restart_required`) for
/// `pipeline`.
pub fn reload(pipeline: &str, result: &'static str) {
    counter!("gridflow_reloads_total", "pipeline" => pipeline.to_string(), "result" => result)
        .increment(1);
}

/// The pipeline `pipeline` is paused by an operator (or runs again).
pub fn pipeline_paused(pipeline: &str, paused: bool) {
    gauge!("gridflow_pipeline_paused", "pipeline" => pipeline.to_string()).set(if paused {
        1.0
    } else {
        0.0
    });
}

/// A request to `pipeline` was refused for being over quota.
pub fn quota_rejected(pipeline: &str) {
    counter!("gridflow_quota_rejections_total", "pipeline" => pipeline.to_string()).increment(1);
}

/// Creates the series of the ingress listener at 0, so that they exist (and alerts can
/// compare them) before the first timeout or refusal.
pub fn ingress_started() {
    gauge!("gridflow_http_connections_open").set(0.0);
    counter!("gridflow_http_connections_rejected_total", "reason" => "max_connections").absolute(0);
    for kind in ["header", "body", "tls_handshake", "idle"] {
        counter!("gridflow_http_timeouts_total", "kind" => kind).absolute(0);
    }
    for reason in ["body_budget", "draining"] {
        counter!("gridflow_http_requests_rejected_total", "reason" => reason).absolute(0);
    }
}

/// The ingress listener closed a connection at once, for `reason` (`max_connections`).
pub fn http_connection_rejected(reason: &'static str) {
    counter!("gridflow_http_connections_rejected_total", "reason" => reason).increment(1);
}

/// A timeout of the ingress listener fired: `header`, `body`, `tls_handshake`, `idle`.
pub fn http_timeout(kind: &'static str) {
    counter!("gridflow_http_timeouts_total", "kind" => kind).increment(1);
}

/// The ingress listener refused a request before a pipeline saw it (`body_budget`,
/// `draining`).
pub fn http_request_rejected(reason: &'static str) {
    counter!("gridflow_http_requests_rejected_total", "reason" => reason).increment(1);
}

/// One open connection of the ingress listener: counted in `gridflow_http_connections_open`
/// while it lives.
pub struct OpenConnection(());

impl OpenConnection {
    /// Counts a connection as open.
    pub fn opened() -> OpenConnection {
        gauge!("gridflow_http_connections_open").increment(1.0);
        OpenConnection(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        gauge!("gridflow_http_connections_open").decrement(1.0);
    }
}

/// The state of one `enrich` step's circuit breaker: 0 closed, 1 open, 2 half-open.
pub struct BreakerGauge {
    step: String,
    gauge: metrics::Gauge,
}

impl BreakerGauge {
    /// Registers the gauge of `step` in `pipeline`.
    pub fn new(pipeline: &str, step: &str) -> Self {
        BreakerGauge {
            step: format!("{pipeline}/{step}"),
            gauge: gauge!("gridflow_enrich_breaker_state", "pipeline" => pipeline.to_string(), "step" => step.to_string()),
        }
    }

    /// Sets the state.
    pub fn set(&self, state: u8) {
        self.gauge.set(f64::from(state));
    }

    /// `pipeline/step`, for logs.
    pub fn step(&self) -> &str {
        &self.step
    }
}

/// The counters of one `enrich` step.
pub struct EnrichMetrics {
    hits: Counter,
    misses: Counter,
    calls: Histogram,
}

impl EnrichMetrics {
    /// Registers the handles of `step` in `pipeline`.
    pub fn new(pipeline: &str, step: &str) -> Self {
        let (p, s) = (pipeline.to_string(), step.to_string());
        EnrichMetrics {
            hits: counter!("gridflow_enrich_cache_hits_total", "pipeline" => p.clone(), "step" => s.clone()),
            misses: counter!("gridflow_enrich_cache_misses_total", "pipeline" => p.clone(), "step" => s.clone()),
            calls: histogram!("gridflow_enrich_call_duration_seconds", "pipeline" => p, "step" => s),
        }
    }

    /// A cache lookup.
    pub fn cache(&self, hit: bool) {
        if hit {
            self.hits.increment(1)
        } else {
            self.misses.increment(1)
        }
    }

    /// An upstream call (one attempt) took `elapsed`.
    pub fn call(&self, elapsed: Duration) {
        self.calls.record(elapsed.as_secs_f64());
    }
}

/// The counters of one pipeline.
#[derive(Clone)]
pub struct PipelineMetrics {
    pipeline: String,
    received: Counter,
    sent: Counter,
    retries: Counter,
    sink_waits: Counter,
    fallback: Counter,
    end_to_end: Histogram,
    in_flight: Gauge,
}

impl PipelineMetrics {
    /// Registers the handles of `pipeline`.
    pub fn new(pipeline: &str) -> Self {
        let p = pipeline.to_string();
        PipelineMetrics {
            received: counter!("gridflow_messages_received_total", "pipeline" => p.clone()),
            sent: counter!("gridflow_messages_sent_total", "pipeline" => p.clone()),
            retries: counter!("gridflow_sink_retries_total", "pipeline" => p.clone()),
            sink_waits: counter!("gridflow_sink_waits_total", "pipeline" => p.clone()),
            // Registered at 0: the alert on fallback writes sees the first one.
            fallback: counter!("gridflow_dead_letters_fallback_total", "pipeline" => p.clone()),
            end_to_end: histogram!("gridflow_end_to_end_latency_seconds", "pipeline" => p.clone()),
            in_flight: gauge!("gridflow_messages_in_flight", "pipeline" => p.clone()),
            pipeline: p,
        }
    }

    /// An input entered the pipeline.
    pub fn received(&self) {
        self.received.increment(1);
    }

    /// The sink acknowledged a message, `latency` after its input was received.
    pub fn sent(&self, latency: Duration) {
        self.sent.increment(1);
        self.end_to_end.record(latency.as_secs_f64());
    }

    /// An input waited for an unavailable upstream.
    pub fn waited(&self) {
        counter!("gridflow_upstream_waits_total", "pipeline" => self.pipeline.clone()).increment(1);
    }

    /// A message was handed to a sink or the dead-letter destination.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.increment(1.0);
        InFlight {
            gauge: self.in_flight.clone(),
        }
    }

    /// A transient sink fault will be retried.
    pub fn retried(&self) {
        self.retries.increment(1);
    }

    /// A send was retried past `on_error.max_attempts`: the input waits for its sink.
    pub fn sink_waited(&self) {
        self.sink_waits.increment(1);
    }

    /// An input went to the dead-letter destination.
    pub fn dead_lettered(&self, step: &str, code: &str) {
        counter!("gridflow_messages_dead_lettered_total", "pipeline" => self.pipeline.clone(), "step" => step.to_string(), "code" => code.to_string()).increment(1);
    }

    /// A dead letter went to the local fallback file (its destination refused it for good).
    pub fn dead_letter_fallback(&self) {
        self.fallback.increment(1);
    }

    /// An input could be written neither to the sink nor to the dead-letter destination.
    pub fn failed(&self) {
        counter!("gridflow_messages_failed_total", "pipeline" => self.pipeline.clone())
            .increment(1);
    }

    /// The pipeline started (1) or stopped (0), at `version`.
    pub fn running(&self, version: &str, up: bool) {
        gauge!("gridflow_pipeline_info", "pipeline" => self.pipeline.clone(), "version" => version.to_string())
            .set(if up { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for &(name, kind, help) in METRICS {
            assert!(name.starts_with("gridflow_"), "{name}");
            assert!(!help.is_empty(), "{name} has no help");
            match kind {
                Kind::Counter => assert!(name.ends_with("_total"), "{name}"),
                Kind::Histogram => assert!(name.ends_with("_seconds"), "{name}"),
                Kind::Gauge => assert!(!name.ends_with("_total"), "{name}"),
            }
        }
    }

    #[test]
    fn the_ops_catalog_lists_exactly_these_metrics() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/metrics.txt");
        let text = std::fs::read_to_string(path).expect("ops/metrics.txt");
        let mut listed: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let mut here: Vec<&str> = METRICS.iter().map(|(name, _, _)| *name).collect();
        listed.sort_unstable();
        here.sort_unstable();
        assert_eq!(listed, here);
    }
}
