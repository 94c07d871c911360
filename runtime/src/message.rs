//! The envelope that travels through a pipeline.
//!
//! A [`Message`] is a [`Payload`] (raw bytes, or JSON once a step parsed it), the input's
//! [`Meta`] (shared by every message split from one input, so the original bytes are never
//! copied) and its share of the input's acknowledgement.
//!
//! **Faithful passthrough.** A message that no step changed is delivered as the bytes
//! received: a step that only reads (`filter`, `validate`, a source's contract, a `remove`
//! or `rename` that found nothing to do) hands on what it got, and a step that parsed raw
//! bytes to read them hands on [`Payload::Parsed`], the document *and* its bytes, so that the
//! next step does not parse again and the sink still writes the bytes. Only a step that
//! builds or changes the document gives [`Payload::Json`]. Objects keep the order of their
//! fields (serde_json's `preserve_order`): as received, and in the order steps write them.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use crate::ack::Ack;
use crate::error::{ErrorCode, StepError};

/// The body of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Bytes as received; a sink writes them untouched.
    Bytes(Bytes),
    /// A structured document, built or changed by a step; a sink writes it compactly, its
    /// objects' fields in their order.
    Json(Value),
    /// Bytes as received and the JSON document they hold, parsed by a step or source that
    /// only read it: the next step reads `value`, a sink writes `bytes` untouched. A step
    /// that changes the document takes `value` ([`Payload::into_json`]) and gives
    /// [`Payload::Json`].
    Parsed {
        /// The bytes received, what a sink writes.
        bytes: Bytes,
        /// The document `bytes` hold.
        value: Value,
    },
}

/// The JSON document in `bytes`, as `seed` builds it. Text that is valid UTF-8 (all JSON is)
/// is checked as a whole, once, and read as a `str`: serde_json's reader of bytes checks each
/// string on its own, which cost a sixth of reading a 1 KB message of many short strings.
/// Other bytes go to the reader of bytes, for its error (with line and column) at the first
/// bad one.
pub fn json_from_bytes<'de, S: serde::de::DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
) -> Result<S::Value, serde_json::Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let mut de = serde_json::Deserializer::from_str(text);
            let value = seed.deserialize(&mut de)?;
            de.end()?;
            Ok(value)
        }
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let value = seed.deserialize(&mut de)?;
            de.end()?;
            Ok(value)
        }
    }
}

/// A JSON document (a `Value`) in which no object repeats a name (I-JSON, RFC 7493).
///
/// serde_json keeps the last of repeated names; a consumer may keep the first. A document
/// that gridflow reads (checks against a contract, filters) and then delivers as the bytes
/// received ([`Payload::Parsed`]) must not leave that choice open: `{"severity": "BOGUS",
/// "severity": "HIGH"}` would pass a contract as `HIGH` and reach a consumer as `BOGUS`. Such
/// a document is refused as `invalid_json`.
pub struct UniqueNames;

impl<'de> serde::de::DeserializeSeed<'de> for UniqueNames {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueNames {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(UniqueNames)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value_seed(UniqueNames)?;
            match object.entry(name) {
                serde_json::map::Entry::Vacant(entry) => {
                    entry.insert(value);
                }
                serde_json::map::Entry::Occupied(entry) => {
                    return Err(serde::de::Error::custom(format_args!(
                        "the name `{}` is repeated in an object (a reader could take either value)",
                        entry.key()
                    )));
                }
            }
        }
        Ok(Value::Object(object))
    }
}

impl Payload {
    /// The payload as a JSON document, parsing raw bytes when needed.
    pub fn into_json(self) -> Result<Value, StepError> {
        match self {
            Payload::Json(value) | Payload::Parsed { value, .. } => Ok(value),
            Payload::Bytes(bytes) => json_from_bytes(&bytes, std::marker::PhantomData::<Value>)
                .map_err(|e| {
                    StepError::new(ErrorCode::InvalidJson, format!("payload is not JSON: {e}"))
                }),
        }
    }

    /// The payload parsed, to be read and handed on unchanged: raw bytes become
    /// [`Payload::Parsed`] (so that a sink still writes them as received), a document stays
    /// as it is.
    pub fn into_parsed(self) -> Result<Payload, StepError> {
        match self {
            Payload::Bytes(bytes) => {
                let value = json_from_bytes(&bytes, UniqueNames).map_err(|e| {
                    StepError::new(ErrorCode::InvalidJson, format!("payload is not JSON: {e}"))
                })?;
                Ok(Payload::Parsed { bytes, value })
            }
            parsed => Ok(parsed),
        }
    }

    /// A borrowed JSON view, when the payload is already structured.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Payload::Json(value) | Payload::Parsed { value, .. } => Some(value),
            Payload::Bytes(_) => None,
        }
    }

    /// The bytes received, when no step changed them (raw or parsed).
    pub fn as_received(&self) -> Option<&Bytes> {
        match self {
            Payload::Bytes(bytes) | Payload::Parsed { bytes, .. } => Some(bytes),
            Payload::Json(_) => None,
        }
    }

    /// The bytes a sink writes: the bytes received untouched, JSON serialised compactly.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Payload::Bytes(bytes) | Payload::Parsed { bytes, .. } => bytes.clone(),
            Payload::Json(value) => {
                // serde_json starts at 128 bytes: most mapped messages are longer.
                let mut out = Vec::with_capacity(512);
                match serde_json::to_writer(&mut out, value) {
                    Ok(()) => Bytes::from(out),
                    Err(_) => Bytes::new(),
                }
            }
        }
    }
}

/// The media type of an input, as the source saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `application/json` (and `+json`), or a Kafka record.
    Json,
    /// `application/xml`, `text/xml` (and `+xml`).
    Xml,
    /// Anything else: bytes the steps must interpret.
    Other,
}

impl ContentType {
    /// Guesses from the first non-blank byte: `<` is XML, `{` or `[` is JSON.
    pub fn sniff(bytes: &[u8]) -> ContentType {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'<') => ContentType::Xml,
            Some(b'{') | Some(b'[') => ContentType::Json,
            _ => ContentType::Other,
        }
    }
}

/// Where an input came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// An HTTP request on `path`.
    Http {
        /// The route.
        path: String,
    },
    /// A Kafka record.
    Kafka {
        /// Topic of the record.
        topic: String,
        /// Partition of the record.
        partition: i32,
        /// Offset of the record.
        offset: i64,
    },
    /// A file (and line, for `.ndjson`).
    File {
        /// The file's path.
        path: String,
        /// 1-based line number for `.ndjson` files.
        line: Option<usize>,
    },
}

/// Facts about an input, shared by every message derived from it.
#[derive(Debug)]
pub struct Meta {
    /// The input's bytes exactly as received: what the dead-letter destination gets.
    pub original: Bytes,
    /// Correlation id (from `X-Correlation-ID`, the `gridflow.correlation_id` header, or new).
    pub correlation_id: String,
    /// Media type as received.
    pub content_type: ContentType,
    /// Where it came from.
    pub origin: Origin,
    /// The record key of a Kafka input: the Kafka sink's key when it has no `key` expression,
    /// so a Kafka-to-Kafka flow keeps records of one key in one partition, in order.
    pub key: Option<Bytes>,
    /// Headers received with the input (Kafka headers), passed on as they are.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The HTTP request's headers (names in lower case, credentials left out), for `meta()`
    /// in expressions; empty for other sources.
    pub request_headers: Vec<(String, String)>,
    /// When gridflow received it.
    pub received_at: Instant,
    /// For a synchronous request/reply source: where the pipeline's result messages are kept
    /// for the response.
    pub reply: Option<std::sync::Mutex<Vec<Payload>>>,
}

/// A message's headers: name and value, in order, names may repeat (Kafka headers). Shared
/// until a step changes them.
pub type Headers = Arc<Vec<(String, Bytes)>>;

/// A message as it passes through steps: its body and the metadata steps may read and change
/// (`meta()` in JMESPath; the `set`, `remove` and `rename` steps).
#[derive(Debug, Clone)]
pub struct Item {
    /// The body.
    pub payload: Payload,
    /// Headers the sink writes (Kafka record headers, HTTP request headers). A Kafka input's
    /// headers to start with; none for other inputs.
    pub headers: Headers,
    /// The record key a Kafka sink without `key` writes: the Kafka input's key to start with.
    pub key: Option<Bytes>,
    /// Inside and after a `try` block's `catch` steps: the failure that was caught.
    pub error: Option<Arc<crate::error::Failure>>,
}

impl Item {
    /// The first item of an input.
    pub fn from_input(payload: Payload, meta: &Meta) -> Item {
        Item {
            payload,
            headers: Arc::new(
                meta.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Bytes::copy_from_slice(v)))
                    .collect(),
            ),
            key: meta.key.clone(),
            error: None,
        }
    }

    /// Another item with the same metadata and `payload` as its body.
    pub fn with_payload(&self, payload: Payload) -> Item {
        Item {
            payload,
            headers: Arc::clone(&self.headers),
            key: self.key.clone(),
            error: self.error.clone(),
        }
    }

    /// A message with only a body (tests, benchmarks).
    pub fn new(payload: Payload) -> Item {
        Item {
            payload,
            headers: Arc::default(),
            key: None,
            error: None,
        }
    }
}

/// A message in flight.
#[derive(Debug)]
pub struct Message {
    /// The body.
    pub payload: Payload,
    /// Facts about the input it came from.
    pub meta: Arc<Meta>,
    /// Its share of the input's acknowledgement.
    pub ack: Ack,
}

/// Headers never shown to expressions: credentials.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
];

/// The headers of an HTTP request as [`Meta::request_headers`] keeps them.
pub fn request_headers(headers: &axum::http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !SECRET_HEADERS.contains(&name.as_str()))
        .filter_map(|(name, value)| {
            Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
        })
        .collect()
}

/// A fresh correlation id: a UUID v7, so ids sort by creation time.
pub fn new_correlation_id() -> String {
    // Encoded into a buffer: cheaper than `to_string`, which goes through `fmt`.
    let mut buffer = uuid::Uuid::encode_buffer();
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buffer)
        .to_owned()
}

/// The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), if valid.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2);
    valid.then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes parsed to be read are still written as received; once a step takes the
    /// document, it is written compactly, its fields in their order.
    #[test]
    fn parsed_bytes_are_written_as_received() {
        let raw = Bytes::from_static(b"{ \"b\": 1.0, \"a\": \"caf\\u00e9\", \"c\": 1e2 }");
        let parsed = Payload::Bytes(raw.clone()).into_parsed().unwrap();
        assert_eq!(
            parsed.as_json(),
            Some(&serde_json::json!({"b": 1.0, "a": "caf\u{e9}", "c": 100.0}))
        );
        assert_eq!(parsed.to_bytes().as_ptr(), raw.as_ptr(), "the same bytes");
        assert_eq!(parsed.as_received(), Some(&raw));
        let again = parsed.clone().into_parsed().unwrap();
        assert_eq!(again, parsed, "parsed once");
        let changed = Payload::Json(parsed.into_json().unwrap());
        assert_eq!(changed.as_received(), None);
        assert_eq!(
            &changed.to_bytes()[..],
            "{\"b\":1.0,\"a\":\"caf\u{e9}\",\"c\":100.0}".as_bytes()
        );
        let err = Payload::Bytes(Bytes::from_static(b"\xef\xbb\xbf{}"))
            .into_parsed()
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson, "a BOM is not JSON");
    }

    /// A document read and then delivered as received must name each member once: the value
    /// gridflow checked would otherwise not be the one a consumer reads.
    #[test]
    fn a_repeated_name_is_refused_where_the_bytes_are_delivered() {
        for raw in [
            &br#"{"severity": "BOGUS", "severity": "HIGH"}"#[..],
            br#"{"a": [{"x": 1, "y": {"k": 1, "k": 2}}]}"#,
        ] {
            let err = Payload::Bytes(Bytes::from_static(raw))
                .into_parsed()
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidJson);
            assert!(
                err.message.contains("is repeated in an object"),
                "{}",
                err.message
            );
        }
        // The same name in different objects is not a repetition; numbers read as before.
        let raw =
            br#"{"k": {"k": 1}, "n": [18446744073709551615, -9223372036854775808, 1.5, 1e400]}"#;
        let fine = Payload::Bytes(Bytes::from_static(raw)).into_parsed();
        assert!(fine.is_err(), "1e400 is out of range for serde_json too");
        let raw = br#"{"k": {"k": 1}, "n": [18446744073709551615, -9223372036854775808, 1.5, 123456789012345678901234567890]}"#;
        let parsed = Payload::Bytes(Bytes::from_static(raw))
            .into_parsed()
            .unwrap();
        let lenient: Value = serde_json::from_slice(raw).unwrap();
        assert_eq!(parsed.as_json(), Some(&lenient));
    }

    #[test]
    fn correlation_ids_are_lower_case_uuid_v7_in_creation_order() {
        let (a, b) = (new_correlation_id(), new_correlation_id());
        for id in [&a, &b] {
            let parsed = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(parsed.get_version_num(), 7, "{id}");
            assert_eq!(id, &parsed.hyphenated().to_string(), "canonical form");
            assert_eq!(id, &id.to_lowercase());
        }
        assert!(a < b, "{a} then {b}");
    }

    #[test]
    fn json_is_read_as_serde_json_reads_bytes() {
        let inputs: [&[u8]; 12] = [
            br#"{"a": "h\u00e9", "b": [1, 2.5, -3e2, true, null], "c": {"d": "\ud83d\ude00"}}"#,
            "{\"k\u{e9}\": \"\u{1f600} caf\u{e9}\"}".as_bytes(),
            b"  [1, 2]  ",
            b"{\"a\": \"\xff\"}",
            b"{\"a\": 1,\n \"\xc3\": 2}",
            b"\xef\xbb\xbf{}",
            br#"{"a": "\ud800"}"#,
            br#"{"a": 1} x"#,
            br#"{"a": [1,}"#,
            br#"{"a": 1e400}"#,
            b"",
            b"\"\t\"",
        ];
        for bytes in inputs {
            let ours = json_from_bytes(bytes, std::marker::PhantomData::<Value>);
            let theirs = serde_json::from_slice::<Value>(bytes);
            match (ours, theirs) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("{:?}: {a:?} vs {b:?}", String::from_utf8_lossy(bytes)),
            }
        }
    }

    #[test]
    fn trace_ids_from_valid_traceparents_only() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id("00-xyz-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id("garbage"), None);
    }

    #[test]
    fn generated_ids_are_uuid_v7() {
        let id = new_correlation_id();
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    }
}
