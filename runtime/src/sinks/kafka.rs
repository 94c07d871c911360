//! `kafka` sink: an idempotent producer writing to one topic, the key from a JMESPath
//! expression, headers carrying the correlation id and the pipeline name.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use serde::Deserialize;
use serde_json::Value;

use super::{Delivery, Record, Sink, SinkContext};
use crate::error::{BuildError, ErrorCode, SinkError};
use crate::jmes::Expr;
use crate::kafka::Carry;

/// `kind = "kafka"`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// The topic to write to. It must exist: gridflow does not create topics.
    pub topic: String,
    /// JMESPath evaluated on the message giving the record key: a string as it is, a number
    /// or bool as text, an object or array as compact JSON; no key when null. Without it, a
    /// record from a Kafka source keeps its input key (and so its partition order).
    #[serde(default)]
    pub key: Option<String>,
}

impl KafkaSinkConfig {
    /// Checks the topic name and compiles the key expression.
    pub fn check(&self) -> Result<(), BuildError> {
        self.key_expr().map(|_| ())?;
        if self.topic.is_empty()
            || !self
                .topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(BuildError::at(
                "topic",
                format!("`{}` is not a valid Kafka topic name", self.topic),
            )
            .with_hint("use ASCII letters, digits, `.`, `_` and `-`"));
        }
        Ok(())
    }

    fn key_expr(&self) -> Result<Option<Expr>, BuildError> {
        self.key
            .as_deref()
            .map(Expr::compile)
            .transpose()
            .map_err(|e| e.at("key"))
    }

    /// Builds the sink on the process's shared producer.
    pub fn build(&self, ctx: &SinkContext) -> Result<KafkaSink, BuildError> {
        self.check()?;
        Ok(KafkaSink {
            topic: Arc::from(self.topic.as_str()),
            key: self.key_expr()?,
            producer: producer(ctx)?,
            health: Some(super::DeliveryHealth::register(&ctx.pipeline)),
            pipeline: ctx.pipeline.clone(),
            version: ctx.version.clone(),
            envelopes: false,
        })
    }

    /// Builds the sink of a pipeline's dead letters on the process's shared producer: it
    /// writes envelopes ([`Record`]s whose `headers` are the `gridflow.*` envelope headers and
    /// whose payload is the input's original bytes, see
    /// [`dead_letter`](crate::engine::dead_letter)): the input's own headers (those
    /// [`Carry::DeadLetter`] keeps) then the envelope's, under the input's key. It is not the
    /// pipeline's sink: its failures are not the pipeline's delivery health, and its errors
    /// name the dead-letter topic. The topic name is not checked (`on_error.dead_letter_topic`
    /// never was).
    pub fn build_dead_letters(&self, ctx: &SinkContext) -> Result<KafkaSink, BuildError> {
        Ok(KafkaSink {
            topic: Arc::from(self.topic.as_str()),
            key: self.key_expr()?,
            producer: producer(ctx)?,
            health: None,
            pipeline: ctx.pipeline.clone(),
            version: ctx.version.clone(),
            envelopes: true,
        })
    }
}

/// The process's shared producer, which every Kafka sink writes with.
fn producer(ctx: &SinkContext) -> Result<crate::kafka::Producer, BuildError> {
    ctx.producer
        .clone()
        .ok_or_else(|| BuildError::new("no Kafka producer is configured"))
}

/// The running `kafka` sink.
pub struct KafkaSink {
    topic: Arc<str>,
    key: Option<Expr>,
    producer: crate::kafka::Producer,
    /// Whether deliveries succeed, for the admin API (`None` for dead letters).
    health: Option<Arc<super::DeliveryHealth>>,
    pipeline: Arc<str>,
    version: Arc<str>,
    /// Writes dead-letter envelopes (see [`KafkaSinkConfig::build_dead_letters`]).
    envelopes: bool,
}

impl KafkaSink {
    fn key(&self, record: &Record) -> Result<Option<Bytes>, SinkError> {
        let Some(expr) = &self.key else {
            return Ok(record.key.clone());
        };
        let invalid = |message: String| SinkError::Permanent {
            code: ErrorCode::InvalidKey,
            message,
        };
        // Raw bytes are parsed for what the key expression reads only.
        let key = expr.search_payload(&record.payload).map_err(|e| {
            if e.code == ErrorCode::InvalidJson {
                invalid(format!("the key needs a JSON message: {}", e.message))
            } else {
                invalid(e.message)
            }
        })?;
        let key = match key {
            Value::Null => None,
            Value::String(s) => Some(Bytes::from(s)),
            Value::Number(n) => Some(Bytes::from(n.to_string())),
            Value::Bool(b) => Some(Bytes::from(b.to_string())),
            other => Some(Bytes::from(serde_json::to_vec(&other).unwrap_or_default())),
        };
        #[cfg(debug_assertions)]
        test_fault::panic_on_key(key.as_deref());
        Ok(key)
    }

    /// The Kafka record of `record`, with `key` and `payload` (computed by the caller, which
    /// holds them), built by the one builder [`crate::kafka::record`]: a message carries its own
    /// headers but gridflow's, then the correlation id, pipeline and version; an envelope
    /// carries the input's own headers, then the envelope (which names them all).
    pub(crate) fn record<'a>(
        &'a self,
        record: &'a Record,
        key: Option<&'a [u8]>,
        payload: &'a [u8],
    ) -> FutureRecord<'a, [u8], [u8]> {
        let pairs = |headers: &'a crate::message::Headers| {
            headers.iter().map(|(k, v)| (k.as_str(), v.as_ref()))
        };
        if self.envelopes {
            let envelope: Vec<(&str, &[u8])> = pairs(&record.headers).collect();
            return crate::kafka::record(
                &self.topic,
                key,
                payload,
                record
                    .meta
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice())),
                Carry::DeadLetter,
                &envelope,
            );
        }
        crate::kafka::record(
            &self.topic,
            key,
            payload,
            pairs(&record.headers),
            Carry::Delivery,
            &[
                (
                    "gridflow.correlation_id",
                    record.meta.correlation_id.as_bytes(),
                ),
                ("gridflow.pipeline", self.pipeline.as_bytes()),
                ("gridflow.pipeline.version", self.version.as_bytes()),
            ],
        )
    }

    /// The error of a refused or failed write: a fault of the broker or the network is
    /// transient, a record the broker refuses as such is not.
    fn error(&self, error: KafkaError) -> SinkError {
        delivery_error(error, &self.topic, self.envelopes)
    }

    /// Records a transient fault in the delivery health.
    fn failed(&self, error: &SinkError) {
        if let (Some(health), SinkError::Transient(message)) = (&self.health, error) {
            health.failed(message);
        }
    }
}

fn delivery_error(error: KafkaError, topic: &str, dead_letters: bool) -> SinkError {
    let message = match &error {
        _ if dead_letters => format!("writing to dead-letter topic `{topic}` failed: {error}"),
        KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition) => {
            format!("topic `{topic}` does not exist on the broker (create it first)")
        }
        other => format!("writing to `{topic}` failed: {other}"),
    };
    if crate::kafka::is_transient(&error) {
        SinkError::Transient(message)
    } else {
        SinkError::Permanent {
            code: ErrorCode::SinkRejected,
            message,
        }
    }
}

impl Sink for KafkaSink {
    fn send<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, Result<Delivery, SinkError>> {
        async move {
            let key = self.key(record)?;
            let payload = record.payload.to_bytes();
            let future = self.record(record, key.as_deref(), &payload);
            let delivery = match crate::kafka::enqueue(&self.producer, future).await {
                Ok(delivery) => delivery,
                Err(e) => {
                    let error = self.error(e);
                    self.failed(&error);
                    return Err(error);
                }
            };
            let (topic, envelopes) = (Arc::clone(&self.topic), self.envelopes);
            let health = self.health.clone();
            let delivery: Delivery = Box::pin(async move {
                let result = match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _))) => Err(delivery_error(error, &topic, envelopes)),
                    // The client was closed (replaced after a fatal error): sent again.
                    Err(_) if envelopes => {
                        Err(SinkError::Transient("the producer was closed".into()))
                    }
                    Err(_) => Err(SinkError::Transient(
                        "the producer was closed before delivery".into(),
                    )),
                };
                if let Some(health) = &health {
                    match &result {
                        Ok(()) => health.delivered(),
                        Err(SinkError::Transient(message)) => health.failed(message),
                        Err(_) => {}
                    }
                }
                result
            });
            Ok(delivery)
        }
        .boxed()
    }
}

/// A fault for the black-box tests, compiled into debug builds only (the tests run the debug
/// binary; a release build has no trace of it): with `GRIDFLOW_TEST_PANIC_ON_SINK_KEY` set,
/// the key evaluation of a Kafka sink panics when the key it computed equals its value, so
/// that a test can check what a panic outside the steps does to the record
/// (`runtime/tests/hostile_kafka.rs`).
#[cfg(debug_assertions)]
mod test_fault {
    use std::sync::OnceLock;

    pub(super) fn panic_on_key(key: Option<&[u8]>) {
        static MARKER: OnceLock<Option<String>> = OnceLock::new();
        let marker = MARKER.get_or_init(|| std::env::var("GRIDFLOW_TEST_PANIC_ON_SINK_KEY").ok());
        if let (Some(marker), Some(key)) = (marker, key) {
            if !marker.is_empty() && key == marker.as_bytes() {
                panic!("test fault: the sink's key evaluation panics on key `{marker}` (GRIDFLOW_TEST_PANIC_ON_SINK_KEY)");
            }
        }
    }
}

impl super::SinkKind for KafkaSinkConfig {
    const KIND: &'static str = "kafka";
    const EXAMPLE: &'static str = r#"[sink]
kind = "kafka"
topic = "energy.meter.reading.v1"
key = "meter_id""#;

    fn check(&self) -> Result<(), crate::error::BuildError> {
        KafkaSinkConfig::check(self)
    }

    fn build(
        &self,
        ctx: &super::SinkContext,
    ) -> Result<std::sync::Arc<dyn Sink>, crate::error::BuildError> {
        Ok(std::sync::Arc::new(KafkaSinkConfig::build(self, ctx)?))
    }

    fn topic(&self) -> Option<&str> {
        Some(&self.topic)
    }

    fn dead_letters_beside(&self) -> Option<super::DeadLetterPlace> {
        Some(super::DeadLetterPlace::Topic(format!("{}.dlq", self.topic)))
    }
}
