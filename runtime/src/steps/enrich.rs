//! `enrich`: an HTTP call per message (webMethods' INVOKE), its answer placed into the message.
//!
//! The request is rendered from the message (URL template, optional JMESPath body); the call
//! has a timeout, is retried for transient faults only (connect errors, timeouts, `408`,
//! `429` and `5xx`, waiting `Retry-After` when the upstream gives one), goes through a TTL
//! cache keyed on the rendered request, a concurrency limit and a circuit breaker.
//!
//! Outcomes: the answer (JSON, or XML converted like `xml_to_json`) is set at `target`; a
//! `404` follows `on_missing`; another `4xx` fails the message (`enrichment_failed`,
//! dead-lettered); an unavailable upstream (breaker open, retries used up) is *not* a fault of
//! the message: the engine makes a Kafka input wait and answers an HTTP input `503` with
//! `Retry-After`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::fields::FieldPath;
use super::{guarded, parse_plain, scope, BuildContext, Outcome, Run, RunContext, Step, StepKind};
use crate::config::document::Document;
use crate::error::{BuildError, ErrorCode, Failure, StepError};
use crate::message::{Item, Payload};
use crate::metrics::StepMetrics;
use crate::jmes::Expr;
use crate::retry::RetryPolicy;
use crate::xml::{self, Namespaces, XmlToJsonOptions};

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

/// `[steps.cache]`: answers kept for `ttl_ms`, at most `max_bytes` of them.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long an answer is reused, in milliseconds.
    pub ttl_ms: u64,
    /// Most bytes of answers kept (default 67108864, 64 MiB); the least used go first.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}

/// `[steps.breaker]`: after `failures` consecutive failed calls the step fails fast for
/// `cooldown_ms`, then lets one trial call through.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failed calls that open the breaker (default 5).
    pub failures: u32,
    /// How long it stays open, in milliseconds (default 30000).
    pub cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            cooldown_ms: 30_000,
        }
    }
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

/// One piece of a URL template.
#[derive(Debug)]
enum Part {
    Text(String),
    Expr(Expr),
}

/// Parses `text{expr}text`; `{{`/`}}` are literal braces; an expression may hold balanced
/// braces (a multi-select hash).
fn parse_template(url: &str) -> Result<Vec<Part>, BuildError> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = url.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let start = i + 1;
                let mut depth = 1;
                let mut end = None;
                for (j, c) in chars.by_ref() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let Some(end) = end else {
                    return Err(
                        BuildError::at("url", format!("unclosed `{{` at character {i}"))
                            .with_hint("close the expression with `}`, or write `{{` for a brace"),
                    );
                };
                let source = url[start..end].trim();
                let expr = Expr::compile(source).map_err(|e| {
                    let mut err = e.at("url");
                    err.offset = err.offset.map(|o| o + start);
                    err
                })?;
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Expr(expr));
            }
            '}' => {
                return Err(
                    BuildError::at("url", format!("unmatched `}}` at character {i}"))
                        .with_hint("write `}}` for a literal brace"),
                )
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

/// The first `.` or `..` segment (also written `%2e`) of the path of `url`, an absolute URL
/// as the template rendered it (before any parser resolved it).
fn dot_segment(url: &str) -> Option<&str> {
    let after_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    let path = match after_scheme.find('/') {
        Some(i) => &after_scheme[i..],
        None => return None,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').find(|segment| {
        let lower = segment.to_ascii_lowercase().replace("%2e", ".");
        lower == "." || lower == ".."
    })
}

/// Characters a template value keeps as they are: RFC 3986 unreserved.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

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
        let cache = self.cache.as_ref().map(|c| {
            moka::future::Cache::builder()
                .max_capacity(c.max_bytes)
                .weigher(|request: &Request, cached: &Cached| {
                    let bytes = request.url.len()
                        + request.body.as_ref().map_or(0, Bytes::len)
                        + cached.bytes;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .time_to_live(Duration::from_millis(c.ttl_ms))
                .build()
        });
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

/// A rendered request: what the cache is keyed on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    url: String,
    body: Option<Bytes>,
}

/// What the upstream said about a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `2xx`: the body as JSON (null when empty).
    Found(Value),
    /// `404`.
    Missing,
}

/// A cached answer, with the size of the body it came from (its weight in the cache).
#[derive(Debug, Clone)]
struct Cached {
    answer: Answer,
    bytes: usize,
}

/// State of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial call is out, since then.
    HalfOpen {
        since: Instant,
    },
}

/// A circuit breaker over consecutive failed calls.
struct Breaker {
    threshold: u32,
    cooldown: Duration,
    /// A trial call that has not ended after this long was abandoned (its caller went away):
    /// another may go.
    trial_timeout: Duration,
    state: Mutex<BreakerState>,
    gauge: crate::metrics::BreakerGauge,
}

impl Breaker {
    fn new(
        threshold: u32,
        cooldown: Duration,
        trial_timeout: Duration,
        gauge: crate::metrics::BreakerGauge,
    ) -> Breaker {
        gauge.set(0);
        Breaker {
            threshold,
            cooldown,
            trial_timeout,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May a call go out? `Err(wait)` while open (or while the trial call is out).
    fn admit(&self) -> Result<(), Duration> {
        let mut state = self.lock();
        match *state {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now < until {
                    Err(until - now)
                } else {
                    *state = BreakerState::HalfOpen { since: now };
                    self.gauge.set(2);
                    Ok(())
                }
            }
            BreakerState::HalfOpen { since } if since.elapsed() > self.trial_timeout => {
                *state = BreakerState::HalfOpen {
                    since: Instant::now(),
                };
                Ok(())
            }
            BreakerState::HalfOpen { .. } => Err(self.cooldown.min(Duration::from_secs(1))),
        }
    }

    fn succeeded(&self) {
        let mut state = self.lock();
        if *state != (BreakerState::Closed { failures: 0 }) {
            if !matches!(*state, BreakerState::Closed { .. }) {
                tracing::info!(step = %self.gauge.step(), "Enrichment breaker closed.");
            }
            *state = BreakerState::Closed { failures: 0 };
            self.gauge.set(0);
        }
    }

    /// Records a failed call; the time until the next call may go, when it opened.
    fn failed(&self) -> Option<Duration> {
        let mut state = self.lock();
        let open = match *state {
            BreakerState::Closed { failures } if failures + 1 >= self.threshold => true,
            BreakerState::Closed { failures } => {
                *state = BreakerState::Closed {
                    failures: failures + 1,
                };
                false
            }
            BreakerState::HalfOpen { .. } => true,
            BreakerState::Open { until } => {
                return Some(until.saturating_duration_since(Instant::now()))
            }
        };
        if open {
            *state = BreakerState::Open {
                until: Instant::now() + self.cooldown,
            };
            self.gauge.set(1);
            tracing::warn!(step = %self.gauge.step(), cooldown_ms = self.cooldown.as_millis() as u64, "Enrichment breaker opened.");
            return Some(self.cooldown);
        }
        None
    }
}

/// How one attempt ended.
enum Attempt {
    /// The answer, and the size of its body.
    Done(Answer, usize),
    /// Worth another attempt, after `retry_after` if the upstream said so.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The upstream refused this request.
    Refused(String),
}

/// The running `enrich` step.
pub struct Enrich {
    id: String,
    parts: Vec<Part>,
    body: Option<Expr>,
    target: FieldPath,
    method: Method,
    client: reqwest::Client,
    on_missing: OnMissing,
    retry: RetryPolicy,
    max_retry_after: Duration,
    max_response_bytes: usize,
    xml: XmlToJsonOptions,
    permits: Semaphore,
    cache: Option<moka::future::Cache<Request, Cached>>,
    breaker: Breaker,
    metrics: crate::metrics::EnrichMetrics,
    /// Answers the calls instead of the network (`gridflow test`).
    upstream: Option<std::sync::Arc<dyn Upstream>>,
}

/// An upstream's answer as it came over the wire: what an [`Upstream`] hands back.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: reqwest::StatusCode,
    /// The response headers (`Content-Type`, `Retry-After`).
    pub headers: reqwest::header::HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// Answers an `enrich` step's calls in place of the network (`gridflow test` answers them
/// from recordings). The answer goes through the same handling as a real one: `404` follows
/// `on_missing`, `5xx`, `408` and `429` are retried then reported as transient, the body is
/// parsed as JSON or XML.
pub trait Upstream: Send + Sync + std::fmt::Debug {
    /// The answer to `method url` (with the JSON `body` of a POST); `Err` when there is none:
    /// the call is refused with that reason (not retried).
    fn answer(&self, method: &str, url: &str, body: Option<&[u8]>) -> Result<Response, String>;
}

impl Enrich {
    /// Sends every call of this step to `upstream` instead of the network.
    pub fn with_upstream(mut self, upstream: Option<std::sync::Arc<dyn Upstream>>) -> Self {
        self.upstream = upstream;
        self
    }

    /// The step's name (`steps[2].enrich`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Renders the request for `input` (a missing template value is an error of the message).
    pub fn render(&self, input: &Value) -> Result<Request, StepError> {
        let mut url = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => url.push_str(t),
                Part::Expr(e) => match e.search(input)? {
                    Value::Null => {
                        return Err(StepError::new(
                            ErrorCode::MappingError,
                            format!("enrich: `{}` is null or missing in the message", e.source()),
                        ))
                    }
                    Value::String(s) => {
                        url.extend(percent_encoding::utf8_percent_encode(&s, COMPONENT))
                    }
                    other => url.extend(percent_encoding::utf8_percent_encode(
                        &other.to_string(),
                        COMPONENT,
                    )),
                },
            }
        }
        if let Err(e) = reqwest::Url::parse(&url) {
            return Err(StepError::new(
                ErrorCode::MappingError,
                format!("enrich: the rendered URL is not valid ({e})"),
            ));
        }
        // `.` is unreserved, so a value `..` stays as it is, and a URL parser resolves a
        // `..` (or `%2e%2e`) segment against the one before it: the call would go to another
        // path. A rendered path with a dot segment is a fault of this message.
        if let Some(segment) = dot_segment(&url) {
            return Err(StepError::new(
                ErrorCode::MappingError,
                format!("enrich: the rendered URL `{url}` has a `{segment}` path segment, which would move the call to another path"),
            ));
        }
        let body = match &self.body {
            Some(expr) => Some(Bytes::from(expr.search(input)?.to_string())),
            None => None,
        };
        Ok(Request { url, body })
    }

    /// Places `answer` into `value` as `on_missing` says; false when the message goes on
    /// unchanged.
    pub fn apply(&self, value: &mut Value, answer: Answer) -> Result<(), Failure> {
        let fail = |e: StepError| Failure::new(&self.id, e.code, e.message);
        match answer {
            Answer::Found(v) => self.target.set(value, v).map_err(fail),
            Answer::Missing => match self.on_missing {
                OnMissing::Fail => Err(Failure::new(
                    &self.id,
                    ErrorCode::NotFound,
                    "enrich: the upstream answered 404 Not Found",
                )),
                OnMissing::Skip => Ok(()),
                OnMissing::Null => self.target.set(value, Value::Null).map_err(fail),
            },
        }
    }

    /// The answer to `request`: from the cache, or from the upstream.
    pub async fn fetch(&self, request: Request) -> Result<Answer, Failure> {
        let Some(cache) = &self.cache else {
            return self.call(&request).await.map(|c| c.answer);
        };
        if let Some(cached) = cache.get(&request).await {
            self.metrics.cache(true);
            return Ok(cached.answer);
        }
        self.metrics.cache(false);
        // Concurrent identical requests share one call.
        cache
            .try_get_with(request.clone(), self.call(&request))
            .await
            .map(|c| c.answer)
            .map_err(|e| (*e).clone())
    }

    fn backoff(&self, attempt: u32) -> Duration {
        self.retry.backoff(attempt)
    }

    /// Calls the upstream, retrying transient faults.
    async fn call(&self, request: &Request) -> Result<Cached, Failure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Err(wait) = self.breaker.admit() {
                return Err(Failure::unavailable(
                    &self.id,
                    "enrich: the upstream's circuit breaker is open",
                    wait,
                ));
            }
            let started = Instant::now();
            let outcome = {
                let _permit = self.permits.acquire().await.expect("never closed");
                self.attempt(request).await
            };
            self.metrics.call(started.elapsed());
            match outcome {
                Attempt::Done(answer, bytes) => {
                    self.breaker.succeeded();
                    return Ok(Cached { answer, bytes });
                }
                Attempt::Refused(reason) => {
                    self.breaker.succeeded();
                    return Err(Failure::new(&self.id, ErrorCode::EnrichmentFailed, reason));
                }
                Attempt::Transient {
                    reason,
                    retry_after,
                } => {
                    let opened = self.breaker.failed();
                    if let Some(cooldown) = opened {
                        let mut failure = Failure::unavailable(
                            &self.id,
                            format!("enrich: {reason}; the upstream's circuit breaker opened"),
                            cooldown.max(retry_after.unwrap_or_default()),
                        );
                        failure.attempts = attempt;
                        return Err(failure);
                    }
                    // An upstream asking for more than we wait is not retried now: the
                    // input is offered again after what it asked.
                    let too_long = retry_after.filter(|r| *r > self.max_retry_after);
                    let wait = retry_after.unwrap_or_else(|| self.backoff(attempt));
                    if attempt >= self.retry.max_attempts || too_long.is_some() {
                        return Err(Failure {
                            attempts: attempt,
                            ..Failure::unavailable(&self.id, format!("enrich: {reason}"), wait)
                        }
                        .exhausted());
                    }
                    tracing::debug!(step = %self.id, attempt, error = %reason, wait_ms = wait.as_millis() as u64, "Enrichment call failed; retrying.");
                    // Recorded answers (`gridflow test`) are there at once: waiting would
                    // change nothing but the time a test takes.
                    if self.upstream.is_none() {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }

    async fn attempt(&self, request: &Request) -> Attempt {
        if let Some(upstream) = &self.upstream {
            let method = match (&request.body, self.method) {
                (Some(_), _) | (None, Method::Post) => "POST",
                (None, Method::Get) => "GET",
            };
            return match upstream.answer(method, &request.url, request.body.as_deref()) {
                Err(reason) => Attempt::Refused(format!("enrich: {reason}")),
                Ok(response) => {
                    if let Some(done) = judge(response.status, &response.headers) {
                        return done;
                    }
                    let body = if response.body.len() > self.max_response_bytes {
                        Err(Limited::TooLarge)
                    } else {
                        Ok(response.body)
                    };
                    self.parse_answer(is_xml(&response.headers), body)
                }
            };
        }
        let builder = match (&request.body, self.method) {
            (Some(body), _) => self
                .client
                .post(&request.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone()),
            (None, Method::Post) => self.client.post(&request.url),
            (None, Method::Get) => self.client.get(&request.url),
        };
        let response = match builder.send().await {
            Ok(r) => r,
            // A request that cannot be built or redirects without end fails the same way
            // every time: a fault of this message, not of the upstream.
            Err(e) if e.is_builder() || e.is_redirect() => {
                return Attempt::Refused(format!("enrich: {}", describe(&e)))
            }
            Err(e) => {
                return Attempt::Transient {
                    reason: describe(&e),
                    retry_after: None,
                }
            }
        };
        if let Some(done) = judge(response.status(), response.headers()) {
            return done;
        }
        let is_xml = is_xml(response.headers());
        let body = read_limited(response, self.max_response_bytes).await;
        self.parse_answer(is_xml, body)
    }

    /// The answer a successful response's body gives.
    fn parse_answer(&self, is_xml: bool, body: Result<Bytes, Limited>) -> Attempt {
        let body = match body {
            Ok(body) => body,
            Err(Limited::TooLarge) => {
                return Attempt::Refused(format!(
                    "enrich: the answer exceeds {} bytes",
                    self.max_response_bytes
                ))
            }
            Err(Limited::Failed(e)) => {
                return Attempt::Transient {
                    reason: format!("reading the answer failed: {}", describe(&e)),
                    retry_after: None,
                }
            }
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            return Attempt::Done(Answer::Found(Value::Null), body.len());
        }
        let parsed = if is_xml
            || crate::message::ContentType::sniff(&body) == crate::message::ContentType::Xml
        {
            xml::xml_to_json(&body, &self.xml).map_err(|e| e.to_string())
        } else {
            serde_json::from_slice(&body).map_err(|e| e.to_string())
        };
        match parsed {
            Ok(v) => Attempt::Done(Answer::Found(v), body.len()),
            Err(e) => Attempt::Refused(format!("enrich: the answer is neither JSON nor XML: {e}")),
        }
    }
}

/// What a response's status says before its body is read: `404` is an answer, `5xx`, `408`
/// and `429` are transient, another non-success status is a refusal; `None` for a success.
fn judge(status: reqwest::StatusCode, headers: &reqwest::header::HeaderMap) -> Option<Attempt> {
    if status == reqwest::StatusCode::NOT_FOUND {
        return Some(Attempt::Done(Answer::Missing, 0));
    }
    if status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
    {
        return Some(Attempt::Transient {
            reason: format!("the upstream answered {status}"),
            retry_after: retry_after(headers),
        });
    }
    if status.is_redirection() {
        let location = headers
            .get(reqwest::header::LOCATION)
            .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
            .unwrap_or_else(|| "none".into());
        return Some(Attempt::Refused(format!(
            "enrich: the upstream answered {status} (Location: {location}); redirects are not followed"
        )));
    }
    if !status.is_success() {
        return Some(Attempt::Refused(format!(
            "enrich: the upstream answered {status}"
        )));
    }
    None
}

fn is_xml(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("xml"))
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the call timed out".into()
    } else if e.is_connect() {
        "cannot connect to the upstream".into()
    } else {
        format!("the call failed: {e}")
    }
}

enum Limited {
    TooLarge,
    Failed(reqwest::Error),
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Bytes, Limited> {
    if response
        .content_length()
        .is_some_and(|n| n as usize > limit)
    {
        return Err(Limited::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Limited::Failed)? {
        if body.len() + chunk.len() > limit {
            return Err(Limited::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
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
    use super::*;
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
