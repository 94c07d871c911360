//! Metrics as named events: one function or handle per thing worth counting, with the
//! standard names and labels in this one place.
//!
//! Names follow Prometheus conventions: `gridflow_` prefix, `_total` counters, `_seconds`
//! histograms in base units. Handles are registered once per pipeline, so the hot path only
//! increments.

use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Histogram};

/// Histogram buckets for latencies, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the Prometheus recorder; returns the handle `/metrics` renders.
pub fn install() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}

/// A reload ended with `result` (`success`, `failure`, `stopped`, `restart_required`) for
/// `pipeline`.
pub fn reload(pipeline: &str, result: &'static str) {
    counter!("gridflow_reloads_total", "pipeline" => pipeline.to_string(), "result" => result)
        .increment(1);
}

/// A request to `pipeline` was refused for being over quota.
pub fn quota_rejected(pipeline: &str) {
    counter!("gridflow_quota_rejections_total", "pipeline" => pipeline.to_string()).increment(1);
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
    filtered: Counter,
    retries: Counter,
    end_to_end: Histogram,
}

impl PipelineMetrics {
    /// Registers the handles of `pipeline`.
    pub fn new(pipeline: &str) -> Self {
        let p = pipeline.to_string();
        PipelineMetrics {
            received: counter!("gridflow_messages_received_total", "pipeline" => p.clone()),
            sent: counter!("gridflow_messages_sent_total", "pipeline" => p.clone()),
            filtered: counter!("gridflow_messages_filtered_total", "pipeline" => p.clone()),
            retries: counter!("gridflow_sink_retries_total", "pipeline" => p.clone()),
            end_to_end: histogram!("gridflow_end_to_end_latency_seconds", "pipeline" => p.clone()),
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

    /// A step dropped a message on purpose.
    pub fn filtered(&self) {
        self.filtered.increment(1);
    }

    /// A transient sink fault will be retried.
    pub fn retried(&self) {
        self.retries.increment(1);
    }

    /// An input went to the dead-letter destination.
    pub fn dead_lettered(&self, step: &str, code: &str) {
        counter!("gridflow_messages_dead_lettered_total", "pipeline" => self.pipeline.clone(), "step" => step.to_string(), "code" => code.to_string()).increment(1);
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
