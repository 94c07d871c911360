//! `envelope`: wraps each message in the kit's event envelope (the kit's "producer
//! standard"): `{eventId, eventType, eventVersion, occurredAt, sourceSystem, correlationId,
//! partitionKey, payload}`, the message being the payload.
//!
//! The event id is a name-based UUID (version 5) of the pipeline, the step, the event type,
//! the input's identity and the message's index among the input's messages at this step: an
//! input processed twice (a Kafka record redelivered after a crash, an HTTP request retried
//! with the same `X-Correlation-ID` and body) gives the same ids, so consumers can drop the
//! duplicates. See `docs/reference/steps/envelope.md`.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use toml::de::DeValue;
use toml::Spanned;
use uuid::Uuid;

use super::{
    guarded, parse_plain, scope, type_name, BuildContext, Outcome, Run, RunContext, Step, StepKind,
};
use crate::config::document::Document;
use crate::error::{BuildError, ErrorCode, StepError};
use crate::jmes::{with_scope, Expr};
use crate::message::{Item, Meta, Origin, Payload};
use crate::metrics::StepMetrics;

/// The namespace of every envelope's event id (a fixed random UUID: ids of gridflow
/// envelopes never collide with name-based ids of other producers).
pub const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1b_2c0e_9a4d_4e57_b3c8_1d2e_5f7a_9b04);

/// `kind = "envelope"`: the message becomes the `payload` of the kit's event envelope.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeConfig {
    /// `eventType`: `<domain>.<subdomain>.<type>` in lower case, e.g. `grid.meter.reading`.
    pub event_type: String,
    /// `eventVersion`: the major version of the event's contract (1 or more).
    pub event_version: u32,
    /// `sourceSystem`: the system the events come from, as written (e.g. `gridflow`,
    /// `csms-lyon`).
    pub source_system: String,
    /// JMESPath expression on the message giving `partitionKey` (a non-empty string); the
    /// message's record key becomes that string, so a Kafka sink without `key` writes it.
    pub partition_key: String,
    /// JMESPath expression on the message giving `occurredAt` (an RFC 3339 date-time with
    /// its offset, kept as written). Left out: when gridflow received the input, in UTC.
    pub occurred_at: Option<String>,
    /// What a message whose `occurred_at` gives null (the field is absent) becomes: `fail`
    /// (the default) or `received`, the reception time (OCPP's rule for an optional timestamp).
    #[serde(default)]
    pub occurred_at_missing: OccurredAtMissing,
}

/// `occurred_at_missing`: what an absent occurrence time means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OccurredAtMissing {
    /// The message fails (`unexpected_shape`).
    #[default]
    Fail,
    /// The reception time is used.
    Received,
}

/// Is `text` an event type: two or more dot-separated words of `[a-z0-9-]`?
fn valid_event_type(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

impl EnvelopeConfig {
    /// Checks the literals and compiles the expressions.
    pub fn compile(&self) -> Result<Envelope, BuildError> {
        if !valid_event_type(&self.event_type) {
            return Err(BuildError::at(
                "event_type",
                format!("`{}` is not an event type", self.event_type),
            )
            .with_hint("write `<domain>.<subdomain>.<type>` in lower case, e.g. `grid.meter.reading`"));
        }
        if self.event_version == 0 {
            return Err(BuildError::at("event_version", "`event_version` starts at 1")
                .with_hint("the major version of the event's contract, e.g. 1"));
        }
        if self.occurred_at.is_none() && self.occurred_at_missing != OccurredAtMissing::Fail {
            return Err(BuildError::at(
                "occurred_at_missing",
                "`occurred_at_missing` without `occurred_at`",
            )
            .with_hint("without `occurred_at` every event gets the reception time already"));
        }
        if self.source_system.trim().is_empty() {
            return Err(BuildError::at("source_system", "`source_system` is empty")
                .with_hint("name the system the events come from, e.g. \"gridflow\""));
        }
        let compile = |key: &str, source: &str| {
            Expr::compile(source).map_err(|e| e.at(key))
        };
        Ok(Envelope {
            event_type: self.event_type.clone(),
            event_version: self.event_version,
            source_system: self.source_system.clone(),
            occurred_at_missing: self.occurred_at_missing,
            partition_key: compile("partition_key", &self.partition_key)?,
            occurred_at: self
                .occurred_at
                .as_deref()
                .map(|e| compile("occurred_at", e))
                .transpose()?,
        })
    }
}

impl StepKind for EnvelopeConfig {
    const KIND: &'static str = "envelope";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "envelope"
event_type = "grid.meter.reading"
event_version = 1
source_system = "gridflow"
partition_key = "meterId"
occurred_at = "readingAt""#;
    const SAMPLE: &'static str = r#"{"meterId": "FR-PRM-09182736450011", "siteId": "SITE-LYON-07", "readingType": "ACTIVE_ENERGY_IMPORT", "value": 0.412, "unit": "kWh", "readingAt": "2026-01-14T00:15:00Z"}"#;

    fn parse<'i>(
        doc: &mut Document<'i>,
        value: &Spanned<DeValue<'i>>,
        context: &str,
    ) -> Option<Self> {
        let config = parse_plain(doc, value, context)?;
        if in_block(context) {
            doc.report(value, context, nested_error());
        }
        Some(config)
    }

    fn check(&self) -> Result<(), BuildError> {
        self.compile().map(drop)
    }

    /// Only at the top level of `steps`: a block (`try`, `branch`) runs its steps on one
    /// message at a time, so the step could not number the input's messages and two events of
    /// one input would get one id.
    fn build(&self, cx: &mut BuildContext<'_>) -> Result<Box<dyn Step>, BuildError> {
        if in_block(cx.id()) {
            return Err(nested_error());
        }
        Ok(Box::new(EnvelopeStep {
            pipeline: cx.pipeline().to_string(),
            id: cx.id().to_string(),
            envelope: self.compile()?,
            metrics: StepMetrics::new(cx.pipeline(), cx.id()),
        }))
    }
}

/// What the step writes into every envelope, and the expressions it evaluates.
pub struct Envelope {
    event_type: String,
    event_version: u32,
    source_system: String,
    partition_key: Expr,
    occurred_at: Option<Expr>,
    occurred_at_missing: OccurredAtMissing,
}

/// Where the events of one input come from, for their ids: the pipeline, the step, the event
/// type and the input's identity, computed once per input (the input's bytes are hashed once,
/// however many events it gives).
pub struct EventOrigin {
    /// The name every event id of the input starts from.
    name: Vec<u8>,
}

impl EventOrigin {
    /// The origin of the events that `step` of `pipeline` builds from the input `meta`.
    ///
    /// The input's identity is the record's topic, partition and offset for a Kafka input;
    /// for an HTTP request or a file, where it came from (path, line), its correlation id
    /// (HTTP only: a file's is new at every read) and the SHA-256 of its bytes.
    pub fn new(pipeline: &str, step: &str, event_type: &str, meta: &Meta) -> EventOrigin {
        let mut name = Vec::with_capacity(160);
        for part in [pipeline, step, event_type] {
            name.extend_from_slice(part.as_bytes());
            name.push(0);
        }
        match &meta.origin {
            Origin::Kafka {
                topic,
                partition,
                offset,
            } => name.extend_from_slice(format!("kafka\0{topic}\0{partition}\0{offset}").as_bytes()),
            Origin::Http { path } => {
                name.extend_from_slice(format!("http\0{path}\0{}\0", meta.correlation_id).as_bytes());
                name.extend_from_slice(&Sha256::digest(&meta.original));
            }
            Origin::File { path, line } => {
                name.extend_from_slice(format!("file\0{path}\0{line:?}\0").as_bytes());
                name.extend_from_slice(&Sha256::digest(&meta.original));
            }
        }
        name.push(0);
        EventOrigin { name }
    }

    /// The event id of the input's message `index` (its place among the input's messages at
    /// this step): a UUID v5, in [`EVENT_ID_NAMESPACE`], of the origin's name and the index.
    pub fn event_id(&self, index: usize) -> String {
        let mut name = Vec::with_capacity(self.name.len() + 8);
        name.extend_from_slice(&self.name);
        name.extend_from_slice(index.to_string().as_bytes());
        let mut buffer = Uuid::encode_buffer();
        Uuid::new_v5(&EVENT_ID_NAMESPACE, &name)
            .hyphenated()
            .encode_lower(&mut buffer)
            .to_owned()
    }
}

impl Envelope {
    /// The envelope around `item`'s body, the input's message `index` at this step; the
    /// item's key becomes the partition key.
    pub fn wrap(
        &self,
        item: Item,
        meta: &Meta,
        origin: &EventOrigin,
        index: usize,
    ) -> Result<Item, StepError> {
        let Item {
            payload,
            headers,
            error,
            ..
        } = item;
        let body = payload.into_json()?;
        let partition_key = match self.partition_key.search(&body)? {
            Value::String(s) if !s.is_empty() => s,
            Value::Null => {
                return Err(shape(format!(
                    "partition_key `{}` gives nothing: the message has no partition key",
                    self.partition_key.source()
                )))
            }
            other => {
                return Err(shape(format!(
                    "partition_key `{}` gives {}, not a non-empty string",
                    self.partition_key.source(),
                    type_name(&other)
                )))
            }
        };
        let occurred_at = match &self.occurred_at {
            None => received_at(meta.received_at),
            Some(expr) => match expr.search(&body)? {
                Value::String(s) if OffsetDateTime::parse(&s, &Rfc3339).is_ok() => s,
                Value::Null if self.occurred_at_missing == OccurredAtMissing::Received => {
                    received_at(meta.received_at)
                }
                Value::String(s) => {
                    return Err(shape(format!(
                        "occurred_at `{}` gives \"{}\", not an RFC 3339 date-time with an offset (e.g. 2026-01-14T10:15:00Z)",
                        expr.source(),
                        truncated(&s)
                    )))
                }
                other => {
                    return Err(shape(format!(
                        "occurred_at `{}` gives {}, not an RFC 3339 date-time",
                        expr.source(),
                        type_name(&other)
                    )))
                }
            },
        };
        let mut envelope = Map::with_capacity(8);
        envelope.insert("eventId".into(), Value::String(origin.event_id(index)));
        envelope.insert("eventType".into(), Value::String(self.event_type.clone()));
        envelope.insert("eventVersion".into(), Value::from(self.event_version));
        envelope.insert("occurredAt".into(), Value::String(occurred_at));
        envelope.insert(
            "sourceSystem".into(),
            Value::String(self.source_system.clone()),
        );
        envelope.insert(
            "correlationId".into(),
            Value::String(meta.correlation_id.clone()),
        );
        let key = Bytes::copy_from_slice(partition_key.as_bytes());
        envelope.insert("partitionKey".into(), Value::String(partition_key));
        envelope.insert("payload".into(), body);
        Ok(Item {
            payload: Payload::Json(Value::Object(envelope)),
            headers,
            key: Some(key),
            error,
        })
    }
}

fn shape(message: String) -> StepError {
    StepError::new(ErrorCode::UnexpectedShape, message)
}

/// At most 64 characters of `text`, for messages.
fn truncated(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// When the input was received, as an RFC 3339 UTC date-time with milliseconds.
fn received_at(received: Instant) -> String {
    let now = SystemTime::now();
    let at = now.checked_sub(received.elapsed()).unwrap_or(now);
    let at = OffsetDateTime::from(at);
    let at = at.replace_nanosecond(at.millisecond() as u32 * 1_000_000).unwrap_or(at);
    at.format(&Rfc3339).unwrap_or_default()
}

/// The running `envelope` step: each message, with its index among the input's messages.
pub struct EnvelopeStep {
    pipeline: String,
    id: String,
    envelope: Envelope,
    metrics: StepMetrics,
}

/// Is the step at `id` (`steps[2]`, `steps[1].steps[0]`, `steps[1].try.steps[0].envelope`)
/// inside a block?
fn in_block(id: &str) -> bool {
    id.matches('[').count() > 1
}

/// Why the step is refused inside a block.
fn nested_error() -> BuildError {
    BuildError::new(
        "the `envelope` step cannot be inside a block: a block runs its steps on one message at a time, and the events of one input would share an event id",
    )
    .with_hint("put the `envelope` step in the pipeline's top-level `steps`, after the block")
}

impl Step for EnvelopeStep {
    fn run<'a>(&'a self, items: Vec<Item>, cx: RunContext<'a>, _: &'a mut Outcome) -> Run<'a> {
        let mut next = Vec::with_capacity(items.len());
        let origin = EventOrigin::new(
            &self.pipeline,
            &self.id,
            &self.envelope.event_type,
            cx.meta,
        );
        for (index, item) in items.into_iter().enumerate() {
            let scope = scope(cx.meta, &item);
            let (started, wall) = (Instant::now(), cx.trace.now());
            match guarded(&self.id, || {
                with_scope(&scope, || {
                    self.envelope.wrap(item, cx.meta, &origin, index)
                })
            }) {
                Ok(wrapped) => {
                    next.push(wrapped);
                    self.metrics.processed(started.elapsed(), 1);
                    cx.trace.child(&self.id, wall, None);
                }
                Err(f) => {
                    self.metrics.failed(started.elapsed(), &f);
                    cx.trace.child(&self.id, wall, Some(&f));
                    return Run::Ready(Err(f));
                }
            }
        }
        Run::Ready(Ok(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::{parse, run_items};
    use std::sync::Arc;
    use serde_json::json;

    const STEP: &str = r#"kind = "envelope"
event_type = "grid.meter.reading"
event_version = 1
source_system = "gridflow"
partition_key = "meterId"
occurred_at = "readingAt""#;

    fn reading() -> Value {
        json!({"meterId": "FR-PRM-1", "siteId": "S-1", "readingType": "ACTIVE_ENERGY_IMPORT",
               "value": 0.412, "unit": "kWh", "readingAt": "2026-01-14T00:15:00+01:00"})
    }

    fn run_one(step_toml: &str, body: Value) -> Result<Item, StepError> {
        let step = parse(step_toml).build().expect("builds");
        let mut out = run_items(&*step, Item::new(Payload::Json(body)))?;
        assert_eq!(out.len(), 1);
        Ok(out.remove(0))
    }

    fn meta(origin: Origin, correlation: &str, original: &str) -> Meta {
        Meta {
            original: Bytes::copy_from_slice(original.as_bytes()),
            correlation_id: correlation.into(),
            content_type: crate::message::ContentType::Json,
            origin,
            key: None,
            headers: Vec::new(),
            request_headers: Vec::new(),
            received_at: Instant::now(),
            reply: None,
        }
    }

    fn id_of(meta: &Meta, step: &str, index: usize) -> String {
        EventOrigin::new("p", step, "grid.meter.reading", meta).event_id(index)
    }

    #[test]
    fn wraps_the_message_with_every_field() {
        let item = run_one(STEP, reading()).unwrap();
        let Payload::Json(v) = &item.payload else {
            panic!("JSON")
        };
        assert_eq!(v["eventType"], "grid.meter.reading");
        assert_eq!(v["eventVersion"], 1);
        assert_eq!(v["occurredAt"], "2026-01-14T00:15:00+01:00");
        assert_eq!(v["sourceSystem"], "gridflow");
        assert_eq!(v["correlationId"], "c-1");
        assert_eq!(v["partitionKey"], "FR-PRM-1");
        assert_eq!(v["payload"], reading());
        let id = Uuid::parse_str(v["eventId"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 5);
        assert_eq!(item.key.as_deref(), Some(&b"FR-PRM-1"[..]));
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 8, "{keys:?}");
    }

    #[test]
    fn without_occurred_at_the_reception_time_is_used() {
        let step = STEP.replace("occurred_at = \"readingAt\"", "");
        let before = OffsetDateTime::now_utc() - time::Duration::seconds(1);
        let item = run_one(&step, reading()).unwrap();
        let Payload::Json(v) = &item.payload else {
            panic!("JSON")
        };
        let at = v["occurredAt"].as_str().unwrap();
        assert!(at.ends_with('Z'), "{at}");
        let parsed = OffsetDateTime::parse(at, &Rfc3339).unwrap();
        assert!(parsed >= before && parsed <= OffsetDateTime::now_utc(), "{at}");
    }

    #[test]
    fn a_missing_or_non_string_partition_key_fails_the_message() {
        for (body, says) in [
            (json!({"readingAt": "2026-01-14T00:15:00Z"}), "gives nothing"),
            (json!({"meterId": 42, "readingAt": "2026-01-14T00:15:00Z"}), "gives a number"),
            (json!({"meterId": "", "readingAt": "2026-01-14T00:15:00Z"}), "gives a string"),
            (json!({"meterId": ["a"], "readingAt": "2026-01-14T00:15:00Z"}), "gives an array"),
            (json!({"meterId": {"id": "a"}, "readingAt": "2026-01-14T00:15:00Z"}), "gives an object"),
        ] {
            let e = run_one(STEP, body.clone()).unwrap_err();
            assert_eq!(e.code, ErrorCode::UnexpectedShape, "{body}");
            assert!(e.message.contains("partition_key `meterId`"), "{}", e.message);
            assert!(e.message.contains(says), "{body}: {}", e.message);
        }
    }

    #[test]
    fn an_occurred_at_that_is_not_a_date_time_fails_the_message() {
        for (at, says) in [
            (json!("2026-01-14T00:15:00"), "not an RFC 3339"),
            (json!("2026-01-14"), "not an RFC 3339"),
            (json!("2026-02-30T00:15:00Z"), "not an RFC 3339"),
            (json!("yesterday"), "not an RFC 3339"),
            (json!(1768349700), "gives a number"),
            (Value::Null, "gives null"),
        ] {
            let mut body = reading();
            body["readingAt"] = at.clone();
            let e = run_one(STEP, body).unwrap_err();
            assert_eq!(e.code, ErrorCode::UnexpectedShape, "{at}");
            assert!(e.message.contains(says), "{at}: {}", e.message);
        }
        let long = "x".repeat(10_000);
        let mut body = reading();
        body["readingAt"] = json!(long);
        let e = run_one(STEP, body).unwrap_err();
        assert!(e.message.len() < 300, "the value is cut: {}", e.message.len());
    }

    #[test]
    fn occurred_at_missing_received_takes_the_reception_time_for_null_only() {
        let step = format!("{STEP}\noccurred_at_missing = \"received\"");
        let mut body = reading();
        body.as_object_mut().unwrap().remove("readingAt");
        let item = run_one(&step, body).unwrap();
        let at = item.payload.as_json().unwrap()["occurredAt"].as_str().unwrap().to_string();
        assert!(at.ends_with('Z') && OffsetDateTime::parse(&at, &Rfc3339).is_ok(), "{at}");
        // A value that is there but wrong still fails.
        let mut body = reading();
        body["readingAt"] = json!("not a time");
        assert_eq!(
            run_one(&step, body).unwrap_err().code,
            ErrorCode::UnexpectedShape
        );
        // Without `occurred_at` the key has nothing to do: refused.
        let lone = STEP.replace("occurred_at = \"readingAt\"", "occurred_at_missing = \"received\"");
        let e = parse(&lone).build().err().expect("refused");
        assert_eq!(e.key.as_deref(), Some("occurred_at_missing"));
    }

    #[test]
    fn a_body_that_is_not_json_fails_the_message() {
        let step = parse(STEP).build().unwrap();
        let e = run_items(&*step, Item::new(Payload::Bytes(Bytes::from_static(b"<x/>"))))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidJson);
    }

    #[test]
    fn bad_literals_and_expressions_are_refused_when_built() {
        for (from, to, key) in [
            ("\"grid.meter.reading\"", "\"Grid.Meter\"", "event_type"),
            ("\"grid.meter.reading\"", "\"reading\"", "event_type"),
            ("\"grid.meter.reading\"", "\"grid..reading\"", "event_type"),
            ("event_version = 1", "event_version = 0", "event_version"),
            ("\"gridflow\"", "\" \"", "source_system"),
            ("\"meterId\"", "\"meterId[\"", "partition_key"),
            ("\"readingAt\"", "\"&&\"", "occurred_at"),
        ] {
            let e = parse(&STEP.replace(from, to)).build().err().expect(to);
            assert_eq!(e.key.as_deref(), Some(key), "{to}: {e:?}");
        }
    }

    #[test]
    fn event_ids_are_stable_for_one_input_and_distinct_otherwise() {
        let kafka = |offset| {
            meta(
                Origin::Kafka {
                    topic: "t".into(),
                    partition: 0,
                    offset,
                },
                // A redelivered record gets a new correlation id when it has no header.
                &crate::message::new_correlation_id(),
                "{}",
            )
        };
        // A Kafka record delivered twice: the same ids.
        assert_eq!(id_of(&kafka(7), "steps[1].envelope", 0), id_of(&kafka(7), "steps[1].envelope", 0));
        // Another offset, another index, another step: other ids.
        assert_ne!(id_of(&kafka(7), "steps[1].envelope", 0), id_of(&kafka(8), "steps[1].envelope", 0));
        assert_ne!(id_of(&kafka(7), "steps[1].envelope", 0), id_of(&kafka(7), "steps[1].envelope", 1));
        assert_ne!(id_of(&kafka(7), "steps[1].envelope", 0), id_of(&kafka(7), "steps[2].envelope", 0));
        // An HTTP request retried with its correlation id and body: the same ids.
        let http = |cid: &str, body: &str| meta(Origin::Http { path: "/v1/x".into() }, cid, body);
        let a = id_of(&http("c-1", "{\"a\":1}"), "s", 0);
        assert_eq!(a, id_of(&http("c-1", "{\"a\":1}"), "s", 0));
        // Another correlation id (a client that sends none gets a new one), or another body
        // under the same correlation id: other events.
        assert_ne!(a, id_of(&http("c-2", "{\"a\":1}"), "s", 0));
        assert_ne!(a, id_of(&http("c-1", "{\"a\":2}"), "s", 0));
        // The parts of the name are separated: ("ab", "c") is not ("a", "bc").
        assert_ne!(id_of(&http("c-1", "x"), "s", 0), id_of(&http("c-1x", ""), "s", 0));
        // A file read again: the same ids, though its correlation id is new.
        let file = |cid: &str| {
            meta(
                Origin::File {
                    path: "in/a.ndjson".into(),
                    line: Some(3),
                },
                cid,
                "{}",
            )
        };
        assert_eq!(id_of(&file("c-1"), "s", 0), id_of(&file("c-2"), "s", 0));
    }

    #[test]
    fn inside_a_block_the_step_is_refused() {
        let block = format!(
            "kind = \"try\"\n[[steps]]\n{}\n[[catch]]\nkind = \"filter\"\ncondition = \"`false`\"",
            STEP
        );
        let e = parse(&block).build().err().expect("refused");
        assert!(e.message.contains("cannot be inside a block"), "{e:?}");
        assert!(in_block("steps[1].try.steps[0].envelope"));
        assert!(in_block("steps[0].branch.routes[1].steps[0].envelope"));
        assert!(!in_block("steps[7].envelope"));
    }

    #[test]
    fn a_large_input_is_hashed_once_not_once_per_event() {
        // 2 000 events of a 4 MB input: hashing the input per event would read 8 GB.
        let step = parse(STEP).build().unwrap();
        let big = "x".repeat(4 << 20);
        let meta = Arc::new(meta(Origin::Http { path: "/x".into() }, "c-1", &big));
        let trace = crate::telemetry::Trace::default();
        let cx = RunContext {
            meta: &meta,
            trace: &trace,
        };
        let items = (0..2000)
            .map(|_| Item::new(Payload::Json(reading())))
            .collect();
        let started = Instant::now();
        let Run::Ready(Ok(items)) = step.run(items, cx, &mut Outcome::default()) else {
            panic!("runs")
        };
        assert_eq!(items.len(), 2000);
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
        let mut ids: Vec<&Value> = items.iter().map(|i| &i.payload.as_json().unwrap()["eventId"]).collect();
        ids.sort_by_key(|v| v.as_str().unwrap().to_string());
        ids.dedup();
        assert_eq!(ids.len(), 2000, "one id per event");
    }

    #[test]
    fn each_message_of_one_input_gets_its_own_id() {
        let step = parse(STEP).build().unwrap();
        let meta = Arc::new(meta(Origin::Http { path: "/x".into() }, "c-9", "[..]"));
        let trace = crate::telemetry::Trace::default();
        let cx = RunContext {
            meta: &meta,
            trace: &trace,
        };
        let items = vec![Item::new(Payload::Json(reading())), Item::new(Payload::Json(reading()))];
        let mut out = Outcome::default();
        let Run::Ready(Ok(items)) = step.run(items, cx, &mut out) else {
            panic!("runs")
        };
        let ids: Vec<&Value> = items
            .iter()
            .map(|i| &i.payload.as_json().unwrap()["eventId"])
            .collect();
        assert_ne!(ids[0], ids[1]);
        assert_eq!(items[0].payload.as_json().unwrap()["correlationId"], "c-9");
    }
}
