//! Configuration: the runtime file `gridflow.toml`, the pipeline files, `${VAR}`
//! interpolation and diagnostics with file, line and column.

pub mod diagnostic;
pub mod document;
pub mod interpolate;
pub mod pipeline;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use diagnostic::Diagnostic;
pub use pipeline::{OnErrorConfig, PipelineConfig, PipelineFile};

use crate::kafka::KafkaSettings;
use document::Document;

/// Parses an age or a period: a whole number and a unit, `90s`, `30m`, `2h`, `7d`.
pub fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let unit = text.chars().last().unwrap_or(' ');
    let number = &text[..text.len() - unit.len_utf8().min(text.len())];
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 90s, 30m, 2h or 7d"))?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("`{text}`: the unit of a duration is s, m, h or d")),
    };
    n.checked_mul(scale)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// `gridflow.toml`: what the process needs, shared by every pipeline.
#[derive(Debug, Clone, PartialEq, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// `[kafka]`: brokers and client properties.
    pub kafka: KafkaConfig,
    /// `[http]`: the ingress listener.
    pub http: ListenerConfig,
    /// `[admin]`: health and metrics listener.
    pub admin: AdminConfig,
    /// `[paths]`: where pipelines, contracts and dead-letter files live.
    pub paths: PathsConfig,
    /// `[engine]`: limits of the pipeline runner.
    pub engine: EngineConfig,
    /// `[traces]`: OpenTelemetry traces (off unless an OTLP endpoint is set).
    pub traces: crate::telemetry::TracesConfig,
}

/// `[kafka]`. Its `Debug` never shows a secret property.
#[derive(Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers (`host:port,...`); empty: the embedded development broker.
    pub brokers: String,
    /// Any librdkafka property (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`, ...).
    pub properties: BTreeMap<String, PropertyValue>,
    /// Partitions of each topic the embedded broker creates (only without `brokers`).
    pub embedded_partitions: u16,
    /// `linger.ms` of the producer of HTTP and SOAP pipelines, whose callers wait for the
    /// broker's acknowledgement (default 0: sent at once). Other pipelines (Kafka and file
    /// sources) keep `linger.ms` (default 5) and its larger batches.
    pub request_linger_ms: u32,
    /// Lets `[kafka.properties]` turn `enable.idempotence` off (default false: refused).
    /// Retries may then write a record twice or out of order; nothing is lost. For brokers
    /// that cannot keep an idempotent producer's state.
    pub allow_non_idempotent: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            properties: BTreeMap::new(),
            embedded_partitions: 3,
            request_linger_ms: 0,
            allow_non_idempotent: false,
        }
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: BTreeMap<&str, String> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    PropertyValue::File { file } => format!("{{ file = {} }}", file.display()),
                    _ if crate::secrets::is_secret(k) => crate::secrets::REDACTED.to_string(),
                    other => other.to_string(),
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("properties", &shown)
            .field("embedded_partitions", &self.embedded_partitions)
            .field("request_linger_ms", &self.request_linger_ms)
            .field("allow_non_idempotent", &self.allow_non_idempotent)
            .finish()
    }
}

/// A librdkafka property value as written in TOML.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum PropertyValue {
    /// `"value"`
    String(String),
    /// `5000`
    Integer(i64),
    /// `true`
    Bool(bool),
    /// `0.5`
    Float(f64),
    /// `{ file = "/run/secrets/kafka-password" }`: the file's content (without its trailing
    /// line break), re-read when the file changes.
    File {
        /// The file.
        file: PathBuf,
    },
}

impl std::fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PropertyValue::String(s) => f.write_str(s),
            PropertyValue::Integer(i) => write!(f, "{i}"),
            PropertyValue::Bool(b) => write!(f, "{b}"),
            PropertyValue::Float(x) => write!(f, "{x}"),
            PropertyValue::File { file } => write!(f, "{}", file.display()),
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Address of the ingress listener (default `0.0.0.0:8080`).
    pub listen: SocketAddr,
    /// `[http.tls]`: serve HTTPS, optionally with client certificates.
    pub tls: Option<crate::tls::TlsConfig>,
    /// How long a client may take to send a request's headers, in ms (default 10000): from
    /// the connection's opening (after the TLS handshake) or the first byte of a following
    /// request. Past it the connection is closed (`gridflow_http_timeouts_total{kind="header"}`).
    pub header_read_timeout_ms: u64,
    /// How long reading one whole request body may take, in ms (default 30000); past it the
    /// request is answered `408` and the connection closed (`kind="body"`).
    pub body_read_timeout_ms: u64,
    /// How long a TLS handshake may take, in ms (default 10000); past it the connection is
    /// closed (`kind="tls_handshake"`).
    pub tls_handshake_timeout_ms: u64,
    /// How long a keep-alive connection may stay without a request and without traffic, in
    /// ms (default 75000, above the 60 s idle timeout of common load balancers); past it the
    /// connection is closed (`kind="idle"`).
    pub idle_timeout_ms: u64,
    /// Connections open at once, at most (default 1024); a connection beyond it is closed at
    /// once (`gridflow_http_connections_rejected_total{reason="max_connections"}`).
    pub max_connections: usize,
    /// Request-body bytes buffered at once across all requests, at most (default 268435456,
    /// 256 MiB); a request that does not fit is answered `503` with `Retry-After`
    /// (`gridflow_http_requests_rejected_total{reason="body_budget"}`).
    pub max_buffered_body_bytes: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls: None,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            tls_handshake_timeout_ms: 10_000,
            idle_timeout_ms: 75_000,
            max_connections: 1024,
            max_buffered_body_bytes: 256 * 1024 * 1024,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener (default `0.0.0.0:9090`).
    pub listen: SocketAddr,
    /// File holding the token every mutating admin request (`POST /admin/reload`, any
    /// non-GET) must present as `Authorization: Bearer <token>` (at least 16 characters;
    /// re-read on each such request, so it rotates without a restart). Empty or unset: the
    /// environment variable `GRIDFLOW_ADMIN_TOKEN`; neither: mutating requests are answered
    /// only to loopback clients. Health, metrics and other GETs stay open.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            token_file: None,
        }
    }
}

/// `[paths]`, relative to the working directory.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Pipeline files (default `pipelines`).
    pub pipelines: PathBuf,
    /// Event contracts (default `contracts`).
    pub contracts: PathBuf,
    /// Dead-letter files of pipelines without a Kafka sink (default `dead-letters`).
    pub dead_letters: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            pipelines: "pipelines".into(),
            contracts: "contracts".into(),
            dead_letters: "dead-letters".into(),
        }
    }
}

/// `[engine]`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Messages of one pipeline handed to its sink and not yet acknowledged, at most
    /// (default 10000): past it, sources wait (backpressure).
    pub max_in_flight: usize,
    /// How long a stopping pipeline waits for its in-flight messages, in ms (default 30000).
    pub drain_timeout_ms: u64,
    /// How long an HTTP or SOAP request waits for room in a saturated pipeline before it is
    /// answered `503` with `Retry-After`, in ms (default 5000). Kafka and file sources wait
    /// as long as it takes (their consumer pauses).
    pub max_queue_wait_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_in_flight: 10_000,
            drain_timeout_ms: 30_000,
            max_queue_wait_ms: 5_000,
        }
    }
}

impl RuntimeConfig {
    /// Parses `gridflow.toml`.
    pub fn parse(
        path: &Path,
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RuntimeConfig, Vec<Diagnostic>> {
        let mut doc = Document::parse(path, text, lookup)?;
        let root = doc.root.clone();
        let value = toml::Spanned::new(root.span(), toml::de::DeValue::Table(root.into_inner()));
        let config = doc.section::<RuntimeConfig>(&value, "gridflow.toml", &[]);
        if let Some(c) = &config {
            if !(1..=1_000_000).contains(&c.engine.max_in_flight) {
                doc.error(
                    key_span(&value, "engine", "max_in_flight"),
                    "[engine] max_in_flight must be between 1 and 1000000",
                    None,
                );
            }
            for (key, v) in &c.kafka.properties {
                let text = match v {
                    PropertyValue::File { .. } => continue,
                    other => other.to_string(),
                };
                if let Some(why) =
                    crate::kafka::guarded_property(key, &text, c.kafka.allow_non_idempotent)
                {
                    doc.error(
                        property_span(&value, key),
                        format!("[kafka.properties] {why}"),
                        Some("at-least-once depends on it; gridflow sets it itself".into()),
                    );
                }
            }
            for (key, ms) in [
                ("header_read_timeout_ms", c.http.header_read_timeout_ms),
                ("body_read_timeout_ms", c.http.body_read_timeout_ms),
                ("tls_handshake_timeout_ms", c.http.tls_handshake_timeout_ms),
                ("idle_timeout_ms", c.http.idle_timeout_ms),
            ] {
                if !(1..=3_600_000).contains(&ms) {
                    doc.error(
                        key_span(&value, "http", key),
                        format!("[http] {key} must be between 1 and 3600000 (one hour)"),
                        None,
                    );
                }
            }
            if !(1..=1_000_000).contains(&c.http.max_connections) {
                doc.error(
                    key_span(&value, "http", "max_connections"),
                    "[http] max_connections must be between 1 and 1000000",
                    None,
                );
            }
            if c.http.max_buffered_body_bytes == 0 {
                doc.error(
                    key_span(&value, "http", "max_buffered_body_bytes"),
                    "[http] max_buffered_body_bytes must be at least 1",
                    None,
                );
            }
            if c.engine.drain_timeout_ms > 3_600_000 {
                doc.error(
                    key_span(&value, "engine", "drain_timeout_ms"),
                    "[engine] drain_timeout_ms must be at most 3600000 (one hour)",
                    None,
                );
            }
        }
        match config {
            Some(config) if doc.diagnostics.is_empty() => Ok(config),
            _ => Err(doc.diagnostics),
        }
    }

    /// Reads `path`; a missing file gives the defaults unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<RuntimeConfig, Vec<Diagnostic>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text, &interpolate::from_env),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(RuntimeConfig::default())
            }
            Err(e) => Err(vec![Diagnostic {
                path: path.to_path_buf(),
                line: 1,
                column: 1,
                message: format!("cannot read the runtime configuration: {e}"),
                hint: Some("pass --config with the path of gridflow.toml".into()),
            }]),
        }
    }

    /// The Kafka settings of every client (secret files read now).
    pub fn kafka_settings(&self) -> Result<KafkaSettings, String> {
        let mut properties = BTreeMap::new();
        let mut files = BTreeMap::new();
        for (k, v) in &self.kafka.properties {
            match v {
                PropertyValue::File { file } => {
                    files.insert(k.clone(), file.clone());
                }
                other => {
                    properties.insert(k.clone(), other.to_string());
                }
            }
        }
        Ok(KafkaSettings {
            brokers: self.kafka.brokers.clone(),
            properties,
            secrets: crate::secrets::Secrets::load(files)?,
            request_linger_ms: self.kafka.request_linger_ms,
        })
    }
}

/// Span of `key` inside `[kafka.properties]` (of the table when not found).
fn property_span(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    key: &str,
) -> Option<std::ops::Range<usize>> {
    let kafka = value.get_ref().as_table()?.get("kafka")?;
    let properties = kafka.get_ref().as_table()?.get("properties")?;
    let span = properties
        .get_ref()
        .as_table()
        .and_then(|t| t.get_key_value(key))
        .map(|(k, _)| k.span());
    span.or(Some(properties.span()))
}

/// Span of `key` inside the `section` table, or of the section when the key is absent.
fn key_span(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    section: &str,
    key: &str,
) -> Option<std::ops::Range<usize>> {
    let section = value.get_ref().as_table()?.get(section)?;
    let key = section
        .get_ref()
        .as_table()
        .and_then(|t| t.get_key_value(key))
        .map(|(k, _)| k.span());
    key.or(Some(section.span()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runtime configuration's own Debug hides them as the Kafka settings' does
    /// (`kafka`'s `every_property_librdkafka_marks_sensitive_is_redacted`).
    #[test]
    fn every_property_librdkafka_marks_sensitive_is_redacted_in_the_runtime_config() {
        let mut text = String::from("[kafka.properties]\n");
        for (i, p) in crate::secrets::LIBRDKAFKA_SENSITIVE.iter().enumerate() {
            text.push_str(&format!("'{p}' = 'value-{i}-x'\n"));
        }
        let config = RuntimeConfig::parse(Path::new("g.toml"), &text, &|_| None).unwrap();
        let shown = format!("{config:?}");
        for i in 0..crate::secrets::LIBRDKAFKA_SENSITIVE.len() {
            assert!(!shown.contains(&format!("value-{i}-x")), "{shown}");
        }
    }

    #[test]
    fn ages_parse_and_bad_ones_are_errors_not_panics() {
        assert_eq!(parse_age("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_age(" 7d ").unwrap().as_secs(), 7 * 86_400);
        for bad in [
            "",
            "d",
            "7д",
            "7 days",
            "-1h",
            "99999999999999999999d",
            "213503982334602d",
        ] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_with_defaults_properties_and_interpolation() {
        let text = "[kafka]\nbrokers = '${B:-localhost:9092}'\nproperties = { 'security.protocol' = 'SASL_SSL', 'linger.ms' = 5 }\n[http]\nlisten = '127.0.0.1:8081'\n";
        let c = RuntimeConfig::parse(Path::new("gridflow.toml"), text, &|_| None).unwrap();
        assert_eq!(c.kafka.brokers, "localhost:9092");
        let s = c.kafka_settings().unwrap();
        assert_eq!(s.properties["security.protocol"], "SASL_SSL");
        assert_eq!(s.properties["linger.ms"], "5");
        assert_eq!(c.http.listen.port(), 8081);
        assert_eq!(c.admin.listen.port(), 9090);
        assert_eq!(c.engine.max_in_flight, 10_000);
    }

    #[test]
    fn properties_at_least_once_depends_on_are_refused_with_their_position() {
        let text = "[kafka]\nbrokers = 'b:9092'\n[kafka.properties]\n'linger.ms' = 20\nacks = 1\n'enable.idempotence' = false\n";
        let d = RuntimeConfig::parse(Path::new("gridflow.toml"), text, &|_| None).unwrap_err();
        assert_eq!(d.len(), 2, "{d:?}");
        let shown: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert!(
            shown[0].starts_with(
                "gridflow.toml:5:1: error: [kafka.properties] `acks` = `1` is not allowed"
            ),
            "{shown:?}"
        );
        assert!(shown[1].contains("gridflow.toml:6:1:"), "{shown:?}");
        assert!(shown[1].contains("enable.idempotence"), "{shown:?}");
        let ok = "[kafka.properties]\nacks = 'all'\n'enable.idempotence' = true\n";
        assert!(RuntimeConfig::parse(Path::new("gridflow.toml"), ok, &|_| None).is_ok());
        // Idempotence off only when acknowledged; acks never.
        let acknowledged = "[kafka]\nallow_non_idempotent = true\n[kafka.properties]\n'enable.idempotence' = false\n";
        assert!(RuntimeConfig::parse(Path::new("gridflow.toml"), acknowledged, &|_| None).is_ok());
        let still = "[kafka]\nallow_non_idempotent = true\n[kafka.properties]\nacks = 0\n";
        assert!(RuntimeConfig::parse(Path::new("gridflow.toml"), still, &|_| None).is_err());
    }

    #[test]
    fn secret_properties_from_files_and_never_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-the-file\n").unwrap();
        let text = format!(
            "[kafka.properties]\n'sasl.username' = 'alice'\n'sasl.password' = {{ file = '{}' }}\n'ssl.key.password' = 'inline-secret'\n",
            file.display()
        );
        let c = RuntimeConfig::parse(Path::new("gridflow.toml"), &text, &|_| None).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("inline-secret"), "{shown}");
        let s = c.kafka_settings().unwrap();
        assert_eq!(
            s.sasl_credentials(),
            Some(("alice".into(), "from-the-file".into()))
        );
        assert!(!format!("{s:?}").contains("from-the-file"));
        assert!(!format!("{s:?}").contains("inline-secret"));
        assert_eq!(
            s.producer_config().get("sasl.password"),
            Some("from-the-file")
        );
        // A secret file that cannot be read is an error at start.
        std::fs::remove_file(&file).unwrap();
        assert!(c.kafka_settings().unwrap_err().contains("secret file"));
    }

    #[test]
    fn engine_limits_are_bounded() {
        let err = RuntimeConfig::parse(
            Path::new("g.toml"),
            "[engine]\nmax_in_flight = 0\n",
            &|_| None,
        )
        .unwrap_err();
        assert!(err[0].message.contains("max_in_flight"), "{err:?}");
        assert_eq!(err[0].line, 2);
    }

    #[test]
    fn ingress_limits_have_safe_defaults_and_are_bounded() {
        let c = RuntimeConfig::parse(Path::new("g.toml"), "", &|_| None).unwrap();
        assert_eq!(c.http.header_read_timeout_ms, 10_000);
        assert_eq!(c.http.body_read_timeout_ms, 30_000);
        assert_eq!(c.http.tls_handshake_timeout_ms, 10_000);
        assert_eq!(c.http.idle_timeout_ms, 75_000);
        assert_eq!(c.http.max_connections, 1024);
        assert_eq!(c.http.max_buffered_body_bytes, 256 * 1024 * 1024);
        let err = RuntimeConfig::parse(
            Path::new("g.toml"),
            "[http]
idle_timeout_ms = 5000
header_read_timeout_ms = 0
max_connections = 0
",
            &|_| None,
        )
        .unwrap_err();
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(err[0].message.contains("header_read_timeout_ms"), "{err:?}");
        assert_eq!(err[0].line, 3);
        assert!(err[1].message.contains("max_connections"), "{err:?}");
    }

    #[test]
    fn unknown_keys_have_positions() {
        let err = RuntimeConfig::parse(Path::new("g.toml"), "[kafka]\nbroker = 'x'\n", &|_| None)
            .unwrap_err();
        assert_eq!(err[0].line, 2, "{err:?}");
        assert!(err[0].message.contains("unknown key `broker`"), "{err:?}");
    }
}
