//! Traces: OpenTelemetry spans exported over OTLP/HTTP (protobuf), off unless
//! `[traces] otlp_endpoint` is set.
//!
//! Each input gets a span `process <pipeline>` (its parent is the caller's W3C `traceparent`:
//! the HTTP request header, or the Kafka record header), with one child span per step it went
//! through (named by the step, `steps[2].map`), one per sink delivery (`deliver
//! sink.kafka`, kind producer for Kafka, client for HTTP, from the hand-over to the sink's
//! acknowledgement) and one per dead-letter write. Every span carries `gridflow.pipeline` and
//! `gridflow.correlation_id`; a failed step's span has an error status and
//! `gridflow.error.code`. A record a sink writes carries the `traceparent` (and `tracestate`)
//! of its delivery span, so a downstream consumer continues the trace.
//!
//! Sampling: `[traces] sample_ratio` of the traces that start here; an input whose caller
//! sent a `traceparent` follows the caller's decision. An input not sampled makes no span
//! but still passes its context on.
//!
//! With tracing off, a [`Trace`] is `None` inside and every call on it returns at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use serde::Deserialize;

use crate::error::Failure;
use crate::message::{Meta, Origin};

/// `[traces]` of `gridflow.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// Base URL of an OTLP/HTTP collector (`http://otel-collector:4318`); spans go to
    /// `<otlp_endpoint>/v1/traces`. Empty: no traces.
    pub otlp_endpoint: String,
    /// The `service.name` of the spans.
    pub service_name: String,
    /// The share of traces started here that are recorded, `0.0` to `1.0`.
    pub sample_ratio: f64,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            otlp_endpoint: String::new(),
            service_name: "gridflow".into(),
            sample_ratio: 1.0,
        }
    }
}

impl TracesConfig {
    /// Starts the exporter; `None` when tracing is off.
    pub fn start(&self) -> Result<Option<Tracing>, String> {
        let endpoint = self.otlp_endpoint.trim().trim_end_matches('/');
        if endpoint.is_empty() {
            return Ok(None);
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!(
                "[traces] sample_ratio is {}; it must be between 0.0 and 1.0",
                self.sample_ratio
            ));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot start the OTLP exporter for {endpoint}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                self.sample_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(self.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("gridflow");
        Ok(Some(Tracing { provider, tracer }))
    }
}

/// The running exporter.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Tracing {
    /// The tracer pipelines start their spans with.
    pub fn tracer(&self) -> SdkTracer {
        self.tracer.clone()
    }

    /// Exports what is left (bounded), then stops.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "Trace exporter did not shut down cleanly.");
        }
    }
}

/// The trace of one input: its `process` span, the parent of its step, sink and dead-letter
/// spans. Cheap to clone; `Trace::default()` is tracing off.
#[derive(Clone, Default)]
pub struct Trace(Option<Arc<Inner>>);

struct Inner {
    tracer: SdkTracer,
    /// Holds the `process` span.
    cx: Context,
    attributes: [KeyValue; 2],
    /// False when the trace is not sampled: no child spans, the context is still passed on.
    recording: bool,
}

/// The caller's `traceparent`/`tracestate`: HTTP request headers or Kafka record headers.
struct Carrier<'a>(&'a Meta);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.origin {
            Origin::Kafka { .. } => self
                .0
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .and_then(|(_, v)| std::str::from_utf8(v).ok()),
            _ => self
                .0
                .request_headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str()),
        }
    }

    fn keys(&self) -> Vec<&str> {
        match self.0.origin {
            Origin::Kafka { .. } => self.0.headers.iter().map(|(k, _)| k.as_str()).collect(),
            _ => self
                .0
                .request_headers
                .iter()
                .map(|(k, _)| k.as_str())
                .collect(),
        }
    }
}

impl Trace {
    /// Starts the `process` span of an input of `pipeline`, at the time it was received.
    pub fn start(tracer: Option<&SdkTracer>, pipeline: &str, meta: &Meta) -> Trace {
        let Some(tracer) = tracer else {
            return Trace(None);
        };
        let parent = TraceContextPropagator::new().extract(&Carrier(meta));
        let attributes = [
            KeyValue::new("gridflow.pipeline", pipeline.to_string()),
            KeyValue::new("gridflow.correlation_id", meta.correlation_id.clone()),
        ];
        let kind = match meta.origin {
            Origin::Kafka { .. } => SpanKind::Consumer,
            Origin::Http { .. } => SpanKind::Server,
            _ => SpanKind::Internal,
        };
        let started = SystemTime::now()
            .checked_sub(meta.received_at.elapsed())
            .unwrap_or_else(SystemTime::now);
        let span = tracer.build_with_context(
            SpanBuilder::from_name(format!("process {pipeline}"))
                .with_kind(kind)
                .with_start_time(started)
                .with_attributes(attributes.to_vec()),
            &parent,
        );
        let recording = span.is_recording();
        Trace(Some(Arc::new(Inner {
            tracer: tracer.clone(),
            cx: parent.with_span(span),
            attributes,
            recording,
        })))
    }

    /// The wall-clock time now when this trace is recorded (for a step's span).
    pub fn now(&self) -> Option<SystemTime> {
        self.0
            .as_ref()
            .filter(|inner| inner.recording)
            .map(|_| SystemTime::now())
    }

    /// Records a finished child span `name` from `started` to now, failed with `failure`.
    pub fn child(&self, name: &str, started: Option<SystemTime>, failure: Option<&Failure>) {
        let (Some(inner), Some(started)) = (&self.0, started) else {
            return;
        };
        if !inner.recording {
            return;
        }
        let mut span = inner.tracer.build_with_context(
            SpanBuilder::from_name(name.to_string())
                .with_start_time(started)
                .with_attributes(inner.attributes.to_vec()),
            &inner.cx,
        );
        if let Some(f) = failure {
            span.set_attribute(KeyValue::new("gridflow.error.code", f.code.as_str()));
            span.set_status(Status::error(f.message.clone()));
        }
        span.end();
    }

    /// Ends the `process` span (failed with `failure`).
    pub fn end(&self, failure: Option<&Failure>) {
        let Some(inner) = &self.0 else {
            return;
        };
        let span = inner.cx.span();
        if let Some(f) = failure {
            span.set_attribute(KeyValue::new("gridflow.error.code", f.code.as_str()));
            span.set_attribute(KeyValue::new("gridflow.error.step", f.step.clone()));
            span.set_status(Status::error(f.message.clone()));
        }
        span.end();
    }

    /// Ends the `process` span of an input given up because its pipeline stopped (it is
    /// offered again).
    pub fn end_stopped(&self) {
        if let Some(inner) = &self.0 {
            let span = inner.cx.span();
            span.set_status(Status::error(
                "the pipeline stopped; the input is offered again",
            ));
            span.end();
        }
    }

    /// Starts the delivery span of one message to a sink, and the trace context headers the
    /// record carries downstream (`traceparent`, `tracestate`): the delivery span's, or the
    /// `process` span's when the trace is not recorded. Nothing when tracing is off.
    pub fn deliver(&self, sink: &Outgoing) -> Delivery {
        let Some(inner) = &self.0 else {
            return Delivery::default();
        };
        let cx = inner.recording.then(|| {
            let span = inner.tracer.build_with_context(
                SpanBuilder::from_name(sink.name.clone())
                    .with_kind(sink.kind.clone())
                    .with_attributes(inner.attributes.to_vec()),
                &inner.cx,
            );
            inner.cx.with_span(span)
        });
        let mut headers = Vec::new();
        TraceContextPropagator::new()
            .inject_context(cx.as_ref().unwrap_or(&inner.cx), &mut Headers(&mut headers));
        Delivery { cx, headers }
    }
}

/// A sink as traces see it: its span's name and kind, made once when the pipeline is built.
#[derive(Debug, Clone)]
pub struct Outgoing {
    name: String,
    kind: SpanKind,
}

impl Outgoing {
    /// The span `name` of a sink of `kind` (`kafka`, `http`, ...).
    pub fn new(name: String, kind: &str) -> Outgoing {
        let kind = match kind {
            "kafka" => SpanKind::Producer,
            "http" => SpanKind::Client,
            _ => SpanKind::Internal,
        };
        Outgoing { name, kind }
    }
}

/// One message's delivery span (none when not traced) and the trace context headers its
/// record carries.
#[derive(Default)]
pub struct Delivery {
    cx: Option<Context>,
    /// `traceparent` and, when set, `tracestate`.
    pub headers: Vec<(&'static str, String)>,
}

impl Delivery {
    /// Ends the span when the sink acknowledged (or finally refused) the message.
    pub fn end(&self, failure: Option<&Failure>) {
        let Some(cx) = &self.cx else {
            return;
        };
        let span = cx.span();
        if let Some(f) = failure {
            span.set_attribute(KeyValue::new("gridflow.error.code", f.code.as_str()));
            span.set_status(Status::error(f.message.clone()));
        }
        span.end();
    }
}

/// Collects what the propagator injects.
struct Headers<'a>(&'a mut Vec<(&'static str, String)>);

impl opentelemetry::propagation::Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = match key {
            "traceparent" => "traceparent",
            "tracestate" => "tracestate",
            _ => return,
        };
        if !value.is_empty() {
            self.0.push((key, value));
        }
    }
}
