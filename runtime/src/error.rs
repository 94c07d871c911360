//! Errors as data.
//!
//! Three kinds of failure, three types; callers branch on the type, never on a message string:
//! - [`StepError`]: this message cannot be processed (parse error, mapping error). Never
//!   retried; the input goes to its dead-letter destination with the reason.
//! - [`SinkError::Transient`]: the destination is unavailable right now (broker down, timeout,
//!   HTTP 5xx or 429). Retried with backoff as the pipeline's `on_error` says.
//! - [`SinkError::Permanent`]: the destination refused this message (HTTP 4xx, record too
//!   large). Not retried; dead-lettered.
//!
//! Fatal faults (a component that cannot start) are the `BuildError`s of the engine and stop
//! only the pipeline concerned.

use std::fmt;

/// Machine-readable reason of a per-message failure, written to `gridflow.error.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The body is not valid JSON.
    InvalidJson,
    /// The body is not well-formed XML.
    InvalidXml,
    /// A JMESPath expression failed at run time.
    MappingError,
    /// A step needed another shape of message (split on a non-array, for instance).
    UnexpectedShape,
    /// A time series does not add up (`timeseries`): an interval that is not a whole number
    /// of resolutions, a position out of range, given twice or missing, an unknown
    /// resolution or curve type.
    InvalidTimeSeries,
    /// One input became more messages at a step than
    /// [`MAX_MESSAGES_PER_INPUT`](crate::steps::run::MAX_MESSAGES_PER_INPUT) (a `split` of a
    /// huge array, a `timeseries` of years of 5-minute points): a bound on the memory one
    /// input may take.
    TooManyMessages,
    /// `json_to_xml` could not express the message as XML.
    XmlEncoding,
    /// The sink's key expression did not give a usable key.
    InvalidKey,
    /// The destination refused the message (HTTP 4xx, record too large).
    SinkRejected,
    /// The message breaks its contract (JSON Schema); the violations are in the details.
    ContractViolation,
    /// A step panicked on this message (a bug in gridflow or a library it uses); the
    /// message is dead-lettered and the pipeline goes on.
    StepPanicked,
    /// gridflow panicked on this message outside a step (a sink's key evaluation, a send,
    /// serialisation: a bug in gridflow or a library it uses); the input is dead-lettered and
    /// the pipeline goes on.
    Panicked,
    /// Transient faults went on past `on_error.max_attempts` (a sink), or past an `enrich`
    /// step's `max_attempts` (with `retry_after` set: an HTTP input is answered `503`, a
    /// Kafka input runs again up to `on_error.max_attempts` times, then is dead-lettered).
    RetriesExhausted,
    /// An `enrich` call was answered with an error, or with a body that is not JSON or XML.
    EnrichmentFailed,
    /// An `enrich` call was answered `404` and the step says `on_missing = "fail"`.
    NotFound,
    /// An `enrich` upstream is unavailable (its circuit breaker is open): not a fault of the
    /// message. A Kafka input waits and is processed again; an HTTP input is answered `503`
    /// with `Retry-After`.
    Unavailable,
    /// A message was dropped inside gridflow before it was acknowledged (a bug, or a forced
    /// shutdown): reported so that nothing vanishes silently.
    Dropped,
}

impl ErrorCode {
    /// Every code, for lookups by name and hints.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidJson,
        ErrorCode::InvalidXml,
        ErrorCode::MappingError,
        ErrorCode::UnexpectedShape,
        ErrorCode::InvalidTimeSeries,
        ErrorCode::TooManyMessages,
        ErrorCode::XmlEncoding,
        ErrorCode::InvalidKey,
        ErrorCode::SinkRejected,
        ErrorCode::ContractViolation,
        ErrorCode::StepPanicked,
        ErrorCode::Panicked,
        ErrorCode::RetriesExhausted,
        ErrorCode::EnrichmentFailed,
        ErrorCode::NotFound,
        ErrorCode::Unavailable,
        ErrorCode::Dropped,
    ];

    /// The code whose wire name is `name`.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        Self::ALL.iter().copied().find(|c| c.as_str() == name)
    }

    /// The stable wire name (snake case).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidXml => "invalid_xml",
            ErrorCode::MappingError => "mapping_error",
            ErrorCode::UnexpectedShape => "unexpected_shape",
            ErrorCode::InvalidTimeSeries => "invalid_time_series",
            ErrorCode::TooManyMessages => "too_many_messages",
            ErrorCode::XmlEncoding => "xml_encoding",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::SinkRejected => "sink_rejected",
            ErrorCode::StepPanicked => "step_panicked",
            ErrorCode::Panicked => "panicked",
            ErrorCode::ContractViolation => "contract_violation",
            ErrorCode::RetriesExhausted => "retries_exhausted",
            ErrorCode::EnrichmentFailed => "enrichment_failed",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Dropped => "dropped",
        }
    }

    /// True when the input itself could not be parsed: an HTTP source answers 400 rather
    /// than 422.
    pub fn is_parse(self) -> bool {
        matches!(self, ErrorCode::InvalidJson | ErrorCode::InvalidXml)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step could not process a message. Permanent: the message is dead-lettered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A readable explanation (never the payload itself).
    pub message: String,
    /// Structured details (contract violations with their JSON pointers).
    pub details: Option<serde_json::Value>,
}

impl StepError {
    /// A failure with `code` and a readable `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        StepError {
            code,
            message: message.into(),
            details: None,
        }
    }
}

/// A sink could not deliver a message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: the destination may accept the same message later.
    #[error("{0}")]
    Transient(String),
    /// Not worth retrying: the destination refused this message.
    #[error("{message}")]
    Permanent {
        /// Usually [`ErrorCode::SinkRejected`].
        code: ErrorCode,
        /// A readable explanation.
        message: String,
    },
}

/// Why an input did not reach its sink: carried by the acknowledgement, written to the
/// dead-letter envelope and to HTTP problem responses.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Where it failed: `source.http`, `steps[1].map`, `sink.kafka`, `dead_letter`.
    pub step: String,
    /// What kind of failure.
    pub code: ErrorCode,
    /// A readable explanation.
    pub message: String,
    /// Delivery attempts made (1 for failures that are never retried).
    pub attempts: u32,
    /// Structured details for the caller (contract violations).
    pub details: Option<serde_json::Value>,
    /// For a transient failure (code `unavailable`): when to try again.
    pub retry_after: Option<std::time::Duration>,
}

impl Failure {
    /// A failure at `step` after one attempt.
    pub fn new(step: impl Into<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            step: step.into(),
            code,
            message: message.into(),
            attempts: 1,
            details: None,
            retry_after: None,
        }
    }

    /// This transient failure, as the end of the message's own retries
    /// ([`ErrorCode::RetriesExhausted`]) rather than of an open breaker.
    pub fn exhausted(self) -> Self {
        Failure {
            code: ErrorCode::RetriesExhausted,
            ..self
        }
    }

    /// A transient failure at `step`: try again after `retry_after`.
    pub fn unavailable(
        step: impl Into<String>,
        message: impl Into<String>,
        retry_after: std::time::Duration,
    ) -> Self {
        Failure {
            retry_after: Some(retry_after),
            ..Failure::new(step, ErrorCode::Unavailable, message)
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed ({}): {}", self.step, self.code, self.message)
    }
}

/// A component config that parsed but cannot be built (a JMESPath that does not compile, a
/// topic that does not exist). Reported with the position of `key` in the pipeline file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct BuildError {
    /// The key of the component's table the fault is in (`expression`), if any.
    pub key: Option<String>,
    /// Character offset of the fault inside that key's string value, if known.
    pub offset: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl BuildError {
    /// A fault in the value of `key`.
    pub fn at(key: &str, message: impl Into<String>) -> Self {
        BuildError {
            key: Some(key.to_string()),
            offset: None,
            message: message.into(),
            hint: None,
        }
    }

    /// A fault of the component as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        BuildError {
            key: None,
            offset: None,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}
/// The JSON type of `value`, for error messages ("a string", "an object", "null"...).
pub fn type_name(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
