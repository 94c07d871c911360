//! One `enrich` call: the request rendered from the message, the attempts (retried for
//! transient faults, through the cache, the concurrency limit and the breaker), and the
//! answer placed into the message.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::breaker::Breaker;
use super::cache::Cached;
use super::template::{dot_segment, Part, COMPONENT};
use super::{Method, OnMissing};
use crate::error::{ErrorCode, Failure, StepError};
use crate::jmes::Expr;
use crate::retry::RetryPolicy;
use crate::steps::fields::FieldPath;
use crate::xml::{self, XmlToJsonOptions};

/// A rendered request: what the cache is keyed on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    pub(super) url: String,
    pub(super) body: Option<Bytes>,
}

impl Request {
    /// The bytes it holds: its weight in the cache.
    pub(super) fn weight(&self) -> usize {
        self.url.len() + self.body.as_ref().map_or(0, Bytes::len)
    }
}

/// What the upstream said about a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `2xx`: the body as JSON (null when empty).
    Found(Value),
    /// `404`.
    Missing,
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
    pub(super) id: String,
    pub(super) parts: Vec<Part>,
    pub(super) body: Option<Expr>,
    pub(super) target: FieldPath,
    pub(super) method: Method,
    pub(super) client: reqwest::Client,
    pub(super) on_missing: OnMissing,
    pub(super) retry: RetryPolicy,
    pub(super) max_retry_after: Duration,
    pub(super) max_response_bytes: usize,
    pub(super) xml: XmlToJsonOptions,
    pub(super) permits: Semaphore,
    pub(super) cache: Option<moka::future::Cache<Request, Cached>>,
    pub(super) breaker: Breaker,
    pub(super) metrics: crate::metrics::EnrichMetrics,
    /// Answers the calls instead of the network (`gridflow test`).
    pub(super) upstream: Option<std::sync::Arc<dyn Upstream>>,
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
pub(super) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
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

