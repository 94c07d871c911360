//! `enrich`: an HTTP call per message (webMethods' INVOKE), its answer placed into the message.
//!
//! The request is rendered from the message (URL template, optional JMESPath body); the call
//! has a timeout, is retried for transient faults only (connect errors, timeouts, `408`,
//! `429` and `5xx`, waiting `Retry-After` when the upstream gives one), goes through a TTL
//! cache keyed on the rendered request, a concurrency limit and a circuit breaker.
//!
//! Here: the config and the step; [`template`] renders URLs, [`call`] makes a call,
//! [`cache`] and [`breaker`] keep answers and failures.
//!
//! Outcomes: the answer (JSON, or XML converted like `xml_to_json`) is set at `target`; a
//! `404` follows `on_missing`; another `4xx` fails the message (`enrichment_failed`,
//! dead-lettered); an unavailable upstream (breaker open, retries used up) is *not* a fault of
//! the message: the engine makes a Kafka input wait and answers an HTTP input `503` with
//! `Retry-After`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Semaphore;

mod breaker;
mod cache;
mod call;
mod template;

pub use breaker::BreakerConfig;
pub use cache::CacheConfig;
pub use call::{Answer, Enrich, Request, Response, Upstream};

use breaker::Breaker;
use template::{parse_template, Part};

use super::fields::FieldPath;
use super::{guarded, parse_plain, scope, BuildContext, Outcome, Run, RunContext, Step, StepKind};
use crate::config::document::Document;
use crate::error::{BuildError, Failure};
use crate::message::{Item, Payload};
use crate::metrics::StepMetrics;
use crate::jmes::Expr;
use crate::retry::RetryPolicy;
use crate::xml::{Namespaces, XmlToJsonOptions};

/// What to do when the upstream answers `404`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// The message fails with `not_found` (dead-lettered).
    #[default]
    Fail,
    /// The message goes on unchanged.
    Skip,
    /// `target` is set to null.
    Null,
}

/// HTTP method of the call.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// GET (default).
    #[default]
    Get,
    /// POST, with `body` as JSON.
    Post,
}

/// `kind = "enrich"`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// URL template: `{expression}` is replaced by the JMESPath result on the message,
    /// percent-encoded (`{{` and `}}` are literal braces). `${VAR}` is read from the
    /// environment when the file loads.
    pub url: String,
    /// `GET` (default) or `POST`.
    #[serde(default)]
    pub method: Method,
    /// JMESPath giving the JSON body of a `POST`.
    pub body: Option<String>,
    /// Request headers (static values; `${VAR}` for secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Field path where the answer goes (`asset`, `meter.asset`).
    pub target: String,
    /// Timeout of one attempt, in milliseconds (default 5000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts for transient faults, the first included (default 3).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First backoff, in milliseconds (default 100), doubled per retry, with jitter.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest backoff, in milliseconds (default 5000).
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Longest `Retry-After` honoured, in milliseconds (default 30000).
    #[serde(default = "default_max_retry_after_ms")]
    pub max_retry_after_ms: u64,
    /// `404`: `fail` (default), `skip` or `null`.
    #[serde(default)]
    pub on_missing: OnMissing,
    /// Calls in flight at once from this step (default 32).
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Largest answer accepted, in bytes (default 10 MiB).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// XML answers: element names that always become arrays.
    #[serde(default)]
    pub arrays: Vec<String>,
    /// Answer cache; none by default.
    pub cache: Option<CacheConfig>,
    /// Circuit breaker.
    #[serde(default)]
    pub breaker: BreakerConfig,
}

fn default_timeout_ms() -> u64 {
    5_000
}
fn default_max_attempts() -> u32 {
    3
}
fn default_initial_backoff_ms() -> u64 {
    100
}
fn default_max_backoff_ms() -> u64 {
    5_000
}
fn default_max_retry_after_ms() -> u64 {
    30_000
}
fn default_max_concurrency() -> usize {
    32
}
fn default_max_response_bytes() -> usize {
    10 * 1024 * 1024
}

impl EnrichConfig {
    fn parts(&self) -> Result<(Vec<Part>, Option<Expr>, FieldPath), BuildError> {
        let parts = parse_template(&self.url)?;
        // Placeholder values are percent-encoded: the scheme and host must be written out.
        if !matches!(parts.first(), Some(Part::Text(t)) if t.contains("://")) {
            return Err(BuildError::at("url", "the URL must start with its scheme and host")
                .with_hint("write an absolute URL such as `http://registry:8080/meters/{id}` (placeholders go in the path or query; use ${VAR} for the base URL)"));
        }
        let body = match (&self.body, self.method) {
            (Some(_), Method::Get) => {
                return Err(BuildError::at("body", "a GET request has no body")
                    .with_hint("set `method = \"POST\"`, or remove `body`"))
            }
            (Some(b), Method::Post) => Some(Expr::compile(b).map_err(|e| e.at("body"))?),
            (None, _) => None,
        };
        let target = FieldPath::parse(&self.target).map_err(|m| BuildError::at("target", m))?;
        if self.max_attempts == 0 {
            return Err(BuildError::at(
                "max_attempts",
                "max_attempts must be at least 1",
            ));
        }
        if self.max_concurrency == 0 {
            return Err(BuildError::at(
                "max_concurrency",
                "max_concurrency must be at least 1",
            ));
        }
        if self.breaker.failures == 0 {
            return Err(BuildError::at(
                "breaker",
                "breaker.failures must be at least 1",
            ));
        }
        if self.timeout_ms == 0 {
            return Err(BuildError::at(
                "timeout_ms",
                "timeout_ms must be at least 1",
            ));
        }
        Ok((parts, body, target))
    }

    /// Builds the step; `id` names it in errors and metrics, `pipeline` in metrics.
    pub fn compile(&self, id: &str, pipeline: &str) -> Result<Enrich, BuildError> {
        let (parts, body, target) = self.parts()?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &self.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| BuildError::at("headers", format!("header `{name}`: {e}")))?;
            let value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|e| BuildError::at("headers", format!("header `{name}`: {e}")))?;
            headers.insert(name, value);
        }
        // No redirects: a followed `302` turns a POST into a bodiless GET, and the answer of
        // another URL would enrich the message. A `3xx` is a refusal naming its `Location`.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(self.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers)
            .build()
            .map_err(|e| BuildError::at("url", format!("cannot build the HTTP client: {e}")))?;
        let cache = self.cache.as_ref().map(CacheConfig::build);
        Ok(Enrich {
            id: id.to_string(),
            parts,
            body,
            target,
            method: self.method,
            client,
            on_missing: self.on_missing,
            retry: RetryPolicy {
                max_attempts: self.max_attempts,
                initial_backoff: Duration::from_millis(self.initial_backoff_ms),
                max_backoff: Duration::from_millis(self.max_backoff_ms),
            },
            max_retry_after: Duration::from_millis(self.max_retry_after_ms),
            max_response_bytes: self.max_response_bytes,
            xml: XmlToJsonOptions {
                arrays: self.arrays.iter().cloned().collect(),
                namespaces: Namespaces::Strip,
            },
            permits: Semaphore::new(self.max_concurrency),
            cache,
            breaker: Breaker::new(
                self.breaker.failures,
                Duration::from_millis(self.breaker.cooldown_ms),
                Duration::from_millis(self.timeout_ms) + Duration::from_secs(1),
                crate::metrics::BreakerGauge::new(pipeline, id),
            ),
            metrics: crate::metrics::EnrichMetrics::new(pipeline, id),
            upstream: None,
        })
    }
}

impl StepKind for EnrichConfig {
    const KIND: &'static str = "enrich";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "enrich"
url = "http://assets.example/meters/{meter_id}"
target = "asset""#;

    fn parse<'i>(
        doc: &mut Document<'i>,
        value: &toml::Spanned<toml::de::DeValue<'i>>,
        context: &str,
    ) -> Option<Self> {
        parse_plain(doc, value, context)
    }

    /// Compiles the template and the body expression, checks the numbers.
    fn check(&self) -> Result<(), BuildError> {
        self.parts().map(drop)
    }

    fn build(&self, cx: &mut BuildContext<'_>) -> Result<Box<dyn Step>, BuildError> {
        cx.may_wait();
        let call = self.compile(cx.id(), cx.pipeline())?;
        let call = call.with_upstream(cx.context().upstream.clone());
        Ok(Box::new(Calls::new(cx.pipeline(), cx.id(), vec![call])))
    }
}

/// `enrich` calls run as a step: one call (an `enrich` step) or several at once (a
/// `parallel` block), concurrently across the messages of one input, each call bounded by
/// its own concurrency limit.
pub struct Calls {
    calls: Vec<Enrich>,
    metrics: StepMetrics,
}

impl Calls {
    /// `calls` as the step `id` of `pipeline`.
    pub fn new(pipeline: &str, id: &str, calls: Vec<Enrich>) -> Self {
        Calls {
            calls,
            metrics: StepMetrics::new(pipeline, id),
        }
    }

    /// Runs the calls for one message, counted in the step's metrics and span.
    async fn item(&self, mut item: Item, cx: RunContext<'_>) -> Result<Item, Failure> {
        let (started, wall) = (Instant::now(), cx.trace.now());
        let result = async {
            let first = self.calls.first().map(Enrich::id).unwrap_or("enrich");
            let mut value = guarded(first, || {
                std::mem::replace(&mut item.payload, Payload::Json(Value::Null)).into_json()
            })?;
            let scope = scope(cx.meta, &item);
            let mut requests = Vec::with_capacity(self.calls.len());
            for call in &self.calls {
                requests.push(guarded(call.id(), || {
                    crate::jmes::with_scope(&scope, || call.render(&value))
                })?);
            }
            let answers: Vec<Answer> = futures::future::try_join_all(
                self.calls
                    .iter()
                    .zip(requests)
                    .map(|(call, request)| call.fetch(request)),
            )
            .await?;
            for (call, answer) in self.calls.iter().zip(answers) {
                call.apply(&mut value, answer)?;
            }
            item.payload = Payload::Json(value);
            Ok(item)
        }
        .await;
        match &result {
            Ok(_) => self.metrics.processed(started.elapsed(), 1),
            Err(f) => self.metrics.failed(started.elapsed(), f),
        }
        cx.trace.child(self.metrics.step(), wall, result.as_ref().err());
        result
    }
}

impl Step for Calls {
    fn run<'a>(&'a self, items: Vec<Item>, cx: RunContext<'a>, _: &'a mut Outcome) -> Run<'a> {
        Run::Pending(Box::pin(futures::future::try_join_all(
            items.into_iter().map(move |item| self.item(item, cx)),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::call::retry_after;
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    fn config(extra: &str) -> EnrichConfig {
        toml::from_str(&format!(
            "url = 'http://h/meters/{{meter.id}}/x'\ntarget = 'asset'\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn templates_render_percent_encoded_values() {
        let step = config("").compile("steps[0].enrich", "p").unwrap();
        let r = step.render(&json!({"meter": {"id": "a b/c"}})).unwrap();
        assert_eq!(r.url, "http://h/meters/a%20b%2Fc/x");
        let r = step.render(&json!({"meter": {"id": 42}})).unwrap();
        assert_eq!(r.url, "http://h/meters/42/x");
        let err = step.render(&json!({})).unwrap_err();
        assert_eq!(err.code, ErrorCode::MappingError);
        assert!(err.message.contains("meter.id"), "{err}");
        // A placeholder in the host that gives no valid host fails the message.
        let c: EnrichConfig =
            toml::from_str("url = 'http://{region}.reg:8080/x'\ntarget = 't'\n").unwrap();
        let step = c.compile("s", "p").unwrap();
        let err = step.render(&json!({"region": "eu west"})).unwrap_err();
        assert!(err.message.contains("not valid"), "{err}");
    }

    /// A real HTTP server on 127.0.0.1 that records the request target of every call and
    /// answers `answer` (a whole HTTP/1.1 response).
    async fn recording_server(
        answer: &'static str,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = std::sync::Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let record = std::sync::Arc::clone(&record);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let target = text.split(' ').nth(1).unwrap_or_default().to_string();
                    record.lock().unwrap().push(target);
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (base, seen)
    }

    const OK_JSON: &str =
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";

    #[tokio::test]
    async fn a_dot_segment_value_never_moves_the_call_to_another_path() {
        let (base, seen) = recording_server(OK_JSON).await;
        let c: EnrichConfig = toml::from_str(&format!(
            "url = '{base}/meters/{{id}}/asset?q={{id}}'\ntarget = 'asset'\nmax_attempts = 1\n"
        ))
        .unwrap();
        let step = c.compile("steps[0].enrich", "p").unwrap();
        // Values with dots that are not whole segments, and a `..` with a slash (encoded).
        for (id, path) in [
            ("a.b", "/meters/a.b/asset?q=a.b"),
            ("...", "/meters/.../asset?q=..."),
            ("../admin", "/meters/..%2Fadmin/asset?q=..%2Fadmin"),
            ("%2e%2e", "/meters/%252e%252e/asset?q=%252e%252e"),
        ] {
            seen.lock().unwrap().clear();
            let request = step.render(&json!({ "id": id })).unwrap();
            step.fetch(request).await.unwrap();
            assert_eq!(*seen.lock().unwrap(), vec![path.to_string()], "{id}");
        }
        // `.` and `..` as a whole segment would be resolved away: refused, nothing called.
        seen.lock().unwrap().clear();
        for id in [".", ".."] {
            let err = step.render(&json!({ "id": id })).unwrap_err();
            assert_eq!(err.code, ErrorCode::MappingError, "{id}");
            assert!(err.message.contains("path segment"), "{err}");
        }
        // In the query only, a `..` moves nothing.
        let c: EnrichConfig = toml::from_str(&format!(
            "url = '{base}/lookup?id={{id}}'\ntarget = 'asset'\nmax_attempts = 1\n"
        ))
        .unwrap();
        let step = c.compile("steps[0].enrich", "p").unwrap();
        let request = step.render(&json!({ "id": ".." })).unwrap();
        step.fetch(request).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec!["/lookup?id=..".to_string()]);
    }

    #[tokio::test]
    async fn a_redirect_is_a_refusal_never_followed() {
        let (target, target_seen) = recording_server(OK_JSON).await;
        let answer: &'static str = Box::leak(
            format!("HTTP/1.1 302 Found\r\nlocation: {target}/elsewhere\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .into_boxed_str(),
        );
        let (base, seen) = recording_server(answer).await;
        for method in ["GET", "POST"] {
            let body = if method == "POST" {
                "body = 'id'\n"
            } else {
                ""
            };
            let c: EnrichConfig = toml::from_str(&format!(
                "url = '{base}/meters/{{id}}'\nmethod = '{method}'\n{body}target = 'asset'\nmax_attempts = 1\n"
            ))
            .unwrap();
            let step = c.compile("steps[0].enrich", "p").unwrap();
            let request = step.render(&json!({ "id": "m1" })).unwrap();
            let err = step.fetch(request).await.unwrap_err();
            assert_eq!(err.code, ErrorCode::EnrichmentFailed, "{method}");
            assert!(err.message.contains("302"), "{err}");
            assert!(err.message.contains("/elsewhere"), "{err}");
        }
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert!(
            target_seen.lock().unwrap().is_empty(),
            "the Location was not called"
        );
    }

    #[test]
    fn template_errors_point_into_the_url() {
        let c: EnrichConfig = toml::from_str("url = 'http://h/{a.[}'\ntarget = 't'\n").unwrap();
        let err = c.check().unwrap_err();
        assert_eq!(err.key.as_deref(), Some("url"));
        assert!(err.offset.unwrap() >= 10, "{err:?}");
        let c: EnrichConfig = toml::from_str("url = 'http://h/{a'\ntarget = 't'\n").unwrap();
        assert!(c.check().unwrap_err().message.contains("unclosed"));
        let c: EnrichConfig =
            toml::from_str("url = 'http://h/{{literal}}/{a}'\ntarget = 't'\n").unwrap();
        let step = c.compile("s", "p").unwrap();
        assert_eq!(
            step.render(&json!({"a": 1})).unwrap().url,
            "http://h/{literal}/1"
        );
        let c: EnrichConfig = toml::from_str("url = 'h/{a}'\ntarget = 't'\n").unwrap();
        assert!(c.check().unwrap_err().message.contains("scheme"));
        let c: EnrichConfig = toml::from_str("url = '{base}/x'\ntarget = 't'\n").unwrap();
        assert!(c.check().unwrap_err().message.contains("scheme"));
        let c: EnrichConfig =
            toml::from_str("url = 'http://h'\ntarget = 't'\nbody = 'a'\n").unwrap();
        assert!(c.check().unwrap_err().message.contains("GET"));
    }

    #[test]
    fn on_missing_modes() {
        let mut v = json!({"a": 1});
        let step = config("on_missing = 'null'").compile("s", "p").unwrap();
        step.apply(&mut v, Answer::Missing).unwrap();
        assert_eq!(v, json!({"a": 1, "asset": null}));
        let step = config("on_missing = 'skip'").compile("s", "p").unwrap();
        let mut v = json!({"a": 1});
        step.apply(&mut v, Answer::Missing).unwrap();
        assert_eq!(v, json!({"a": 1}));
        let step = config("").compile("s", "p").unwrap();
        assert_eq!(
            step.apply(&mut v, Answer::Missing).unwrap_err().code,
            ErrorCode::NotFound
        );
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_half_opens() {
        let b = Breaker::new(
            2,
            Duration::from_millis(50),
            Duration::from_millis(200),
            crate::metrics::BreakerGauge::new("p", "s"),
        );
        assert!(b.admit().is_ok());
        assert_eq!(b.failed(), None);
        b.succeeded();
        assert_eq!(b.failed(), None, "the success reset the count");
        assert!(b.failed().is_some(), "second consecutive failure opens it");
        assert!(b.admit().is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.admit().is_ok(), "half-open: one trial call");
        assert!(b.admit().is_err(), "only one trial at a time");
        std::thread::sleep(Duration::from_millis(210));
        assert!(
            b.admit().is_ok(),
            "an abandoned trial does not block for ever"
        );
        assert!(b.failed().is_some(), "a failed trial opens it again");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.admit().is_ok());
        b.succeeded();
        assert!(b.admit().is_ok() && b.admit().is_ok(), "closed again");
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(
            reqwest::header::RETRY_AFTER,
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
    }
}

