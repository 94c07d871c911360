//! `http` sink: POST each message; 2xx acknowledges it; 5xx, 408, 429 and network faults are
//! transient; other statuses are permanent. Requests of one pipeline run concurrently (up to
//! `[engine] max_in_flight`), so an HTTP sink does not keep the order of messages.
//!
//! A redirect is never a delivery. By default a `3xx` is a refusal (the message is
//! dead-lettered, the status and `Location` in the reason): following a `301`/`302`/`303`
//! would turn the POST into a bodiless GET whose `200` acknowledges what reached nobody. With
//! `follow_redirects = true` the sink follows `307` and `308` only (they keep the method and
//! the body), at most `max_redirects` hops; any other `3xx` still is a refusal.
//!
//! With `[sink.acknowledgement]`, a `2xx` is not enough: its body (JSON, or XML read as
//! `xml_to_json` reads it) is the destination's acknowledgement, and a JMESPath condition on it
//! says whether the message was accepted. A refusal is permanent (`sink_rejected`, its reason
//! from the document in the dead letter); an answer that cannot be read is a refusal too.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;

use super::{Delivery, Record, Sink};
use crate::error::{BuildError, ErrorCode, SinkError};
use crate::jmes::Expr;
use crate::message::{ContentType, Payload};
use crate::xml::{self, XmlToJsonOptions};

/// `kind = "http"`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// The endpoint; each message is POSTed to it.
    pub url: String,
    /// Timeout of one request, in milliseconds (default 10000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Follow `307`/`308` redirects (which keep the method and the body); default false:
    /// every `3xx` is a refusal and the message is dead-lettered. `301`, `302` and `303` are
    /// never followed.
    #[serde(default)]
    pub follow_redirects: bool,
    /// With `follow_redirects`, the most hops followed for one message (default 3); past
    /// them the last `3xx` is a refusal.
    #[serde(default = "default_max_redirects")]
    pub max_redirects: usize,
    /// The request's `Content-Type` (SOAP 1.1: `text/xml; charset=utf-8`); default: from the
    /// message (JSON, XML or octet-stream).
    #[serde(default)]
    pub content_type: Option<String>,
    /// `[sink.acknowledgement]`: the answer's body must acknowledge the message; none by
    /// default (any `2xx` acknowledges).
    #[serde(default)]
    pub acknowledgement: Option<AcknowledgementConfig>,
}

/// `[sink.acknowledgement]`: how a `2xx` answer's body says accepted or refused.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcknowledgementConfig {
    /// JMESPath condition on the answer's body (JSON, or XML converted as `xml_to_json`
    /// converts, prefixes stripped): `true` accepts the message, anything else refuses it.
    pub accepted: String,
    /// JMESPath giving the refusal's reason from the answer's body (a string, or its JSON
    /// text); default: the whole answer.
    #[serde(default)]
    pub reason: Option<String>,
    /// Largest answer read, in bytes (default 1048576); a larger one is a refusal.
    #[serde(default = "default_max_ack_bytes")]
    pub max_bytes: usize,
}

fn default_max_ack_bytes() -> usize {
    1 << 20
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_max_redirects() -> usize {
    3
}

/// The redirect policy of an HTTP client that must not acknowledge what reached nobody:
/// `307`/`308` only (method and body kept), at most `max` hops; every other redirect is
/// handed back to the caller as the `3xx` it is. `max == 0` follows nothing.
fn redirect_policy(max: usize) -> reqwest::redirect::Policy {
    if max == 0 {
        return reqwest::redirect::Policy::none();
    }
    reqwest::redirect::Policy::custom(move |attempt| {
        let keeps_body = matches!(attempt.status().as_u16(), 307 | 308);
        if keeps_body && attempt.previous().len() <= max {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// The reason a `3xx` answer is a refusal: its status and `Location`.
fn redirect_refusal(method: &str, url: &str, response: &reqwest::Response) -> String {
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
        .unwrap_or_else(|| "none".into());
    format!(
        "{method} {url} answered {} (Location: {location}); a redirect is not a delivery",
        response.status()
    )
}

impl HttpSinkConfig {
    /// Checks the URL.
    pub fn check(&self) -> Result<(), BuildError> {
        if self.timeout_ms == 0 {
            return Err(BuildError::at(
                "timeout_ms",
                "timeout_ms must be at least 1",
            ));
        }
        if self.follow_redirects && self.max_redirects == 0 {
            return Err(BuildError::at(
                "max_redirects",
                "max_redirects must be at least 1 when follow_redirects is true",
            ));
        }
        let url = reqwest::Url::parse(&self.url).map_err(|e| {
            BuildError::at("url", format!("`{}` is not a valid URL: {e}", self.url))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(BuildError::at("url", "the URL must use http or https"));
        }
        if let Some(content_type) = &self.content_type {
            reqwest::header::HeaderValue::from_str(content_type).map_err(|_| {
                BuildError::at("content_type", "not a valid header value")
            })?;
        }
        if let Some(ack) = &self.acknowledgement {
            ack.compile()?;
        }
        Ok(())
    }

    /// Builds the sink.
    pub fn build(&self, ctx: &super::SinkContext) -> Result<HttpSink, BuildError> {
        self.check()?;
        let max_redirects = if self.follow_redirects {
            self.max_redirects
        } else {
            0
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(self.timeout_ms))
            .connect_timeout(Duration::from_millis(self.timeout_ms))
            .redirect(redirect_policy(max_redirects))
            .build()
            .map_err(|e| BuildError::new(format!("cannot build the HTTP client: {e}")))?;
        let acknowledgement = match &self.acknowledgement {
            Some(ack) => Some(std::sync::Arc::new(ack.compile()?)),
            None => None,
        };
        Ok(HttpSink {
            url: self.url.clone(),
            client,
            version: ctx.version.to_string(),
            content_type: self.content_type.clone(),
            acknowledgement,
        })
    }
}

impl AcknowledgementConfig {
    /// Compiles the two expressions.
    fn compile(&self) -> Result<Acknowledgement, BuildError> {
        if self.max_bytes == 0 {
            return Err(BuildError::at(
                "acknowledgement.max_bytes",
                "max_bytes must be at least 1",
            ));
        }
        let accepted =
            Expr::compile(&self.accepted).map_err(|e| e.at("acknowledgement.accepted"))?;
        let reason = match &self.reason {
            Some(r) => Some(Expr::compile(r).map_err(|e| e.at("acknowledgement.reason"))?),
            None => None,
        };
        Ok(Acknowledgement {
            accepted,
            reason,
            max_bytes: self.max_bytes,
        })
    }
}

/// The compiled `[sink.acknowledgement]`.
struct Acknowledgement {
    accepted: Expr,
    reason: Option<Expr>,
    max_bytes: usize,
}

impl Acknowledgement {
    /// Reads a `2xx` answer: `Ok` when it accepts the message; a refusal (permanent) with its
    /// reason, or a transient fault when the answer was cut off.
    async fn check(&self, url: &str, response: reqwest::Response) -> Result<(), SinkError> {
        // The reason goes into the dead letter's `gridflow.error.message` header: a whole
        // answer of up to `max_bytes` could make the dead letter itself too large to send.
        let refused = |reason: String| SinkError::Permanent {
            code: ErrorCode::SinkRejected,
            message: format!(
                "POST {url}: the acknowledgement refused the message: {}",
                shortened(&reason)
            ),
        };
        let body = self.read(url, response).await?;
        let document = match ContentType::sniff(&body) {
            ContentType::Xml => xml::xml_to_json(&body, &XmlToJsonOptions::default())
                .map_err(|e| refused(format!("the answer is not a readable document: {e}")))?,
            _ => serde_json::from_slice(&body).map_err(|e| {
                refused(format!(
                    "the answer is neither JSON nor XML ({e}): {}",
                    excerpt(&body)
                ))
            })?,
        };
        let accepted = self
            .accepted
            .search(&document)
            .map_err(|e| refused(format!("acknowledgement.accepted failed: {e}")))?;
        if accepted == serde_json::Value::Bool(true) {
            return Ok(());
        }
        let reason = match &self.reason {
            Some(expr) => expr.search(&document).unwrap_or(serde_json::Value::Null),
            None => document,
        };
        Err(refused(match reason {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }))
    }

    /// The answer's body, at most `max_bytes` (more: a refusal); cut off: a transient fault.
    async fn read(&self, url: &str, mut response: reqwest::Response) -> Result<Vec<u8>, SinkError> {
        let too_large = || SinkError::Permanent {
            code: ErrorCode::SinkRejected,
            message: format!(
                "POST {url}: the acknowledgement refused the message: the answer is larger \
                 than acknowledgement.max_bytes ({})",
                self.max_bytes
            ),
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > self.max_bytes => {
                    return Err(too_large())
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => return Ok(body),
                Err(e) => {
                    return Err(SinkError::Transient(format!(
                        "POST {url}: the acknowledgement was cut off: {e}"
                    )))
                }
            }
        }
    }
}

/// The first 200 characters of a body, for a reason.
/// The fault of a SOAP answer that blames the request (1.1 `faultcode` `Client`, 1.2
/// `Code/Value` `Sender`), as `code: reason`; `None` for any other answer.
fn client_fault(body: &[u8]) -> Option<String> {
    let document = xml::xml_to_json(body, &XmlToJsonOptions::default()).ok()?;
    let fault = document.get("Envelope")?.get("Body")?.get("Fault")?;
    let text = |v: Option<&serde_json::Value>| -> Option<String> {
        let v = v?;
        v.as_str()
            .or_else(|| v.get("#text").and_then(|t| t.as_str()))
            .map(str::to_string)
    };
    let (code, reason) = match text(fault.get("faultcode")) {
        Some(code) => (code, text(fault.get("faultstring"))),
        None => (
            text(fault.get("Code").and_then(|c| c.get("Value")))?,
            text(fault.get("Reason").and_then(|r| r.get("Text"))),
        ),
    };
    let local = code.rsplit(':').next().unwrap_or(&code);
    (local.starts_with("Client") || local.starts_with("Sender"))
        .then(|| format!("{code}: {}", reason.unwrap_or_default()))
}

/// The most characters of a refusal's reason kept in its error message.
const MAX_REASON_CHARS: usize = 1024;

/// `reason`, cut to [`MAX_REASON_CHARS`] characters (`…` marks the cut).
fn shortened(reason: &str) -> String {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((cut, _)) => format!("{}…", &reason[..cut]),
        None => reason.to_string(),
    }
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}

/// The running `http` sink.
pub struct HttpSink {
    url: String,
    client: reqwest::Client,
    version: String,
    content_type: Option<String>,
    acknowledgement: Option<std::sync::Arc<Acknowledgement>>,
}

impl Sink for HttpSink {
    fn send<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, Result<Delivery, SinkError>> {
        let content_type = match (&self.content_type, &record.payload) {
            (Some(configured), _) => configured.as_str(),
            (None, Payload::Json(_) | Payload::Parsed { .. }) => "application/json",
            (None, Payload::Bytes(bytes)) => match ContentType::sniff(bytes) {
                ContentType::Json => "application/json",
                ContentType::Xml => "application/xml",
                ContentType::Other => "application/octet-stream",
            },
        };
        let mut request = self.client.post(&self.url);
        for (name, value) in record.headers.iter() {
            if !forwarded(name) {
                continue;
            }
            // Kafka header names that are not valid HTTP header names are left out.
            if let (Ok(n), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_bytes(value),
            ) {
                request = request.header(n, v);
            }
        }
        let request = request
            .header("content-type", content_type)
            .header("x-correlation-id", &record.meta.correlation_id)
            .header("x-gridflow-pipeline-version", &self.version)
            .body(record.payload.to_bytes());
        let url = self.url.clone();
        let acknowledgement = self.acknowledgement.clone();
        let delivery: Delivery = Box::pin(async move {
            let response = request
                .send()
                .await
                .map_err(|e| SinkError::Transient(format!("POST {url} failed: {e}")))?;
            let status = response.status();
            if status.is_success() {
                match acknowledgement {
                    Some(ack) => ack.check(&url, response).await,
                    None => Ok(()),
                }
            } else if status.is_redirection() {
                Err(SinkError::Permanent {
                    code: ErrorCode::SinkRejected,
                    message: redirect_refusal("POST", &url, &response),
                })
            } else if let (500, Some(ack)) = (status.as_u16(), &acknowledgement) {
                // SOAP 1.1 answers every fault 500: the legacy system's refusal of the request
                // (a Client or Sender fault) is permanent; a Server fault, or an answer that
                // is not a fault, is transient like any 5xx.
                let body = ack.read(&url, response).await.unwrap_or_default();
                match client_fault(&body) {
                    Some(reason) => Err(SinkError::Permanent {
                        code: ErrorCode::SinkRejected,
                        message: format!(
                            "POST {url} answered {status} with a SOAP client fault: {}",
                            shortened(&reason)
                        ),
                    }),
                    None => Err(SinkError::Transient(format!("POST {url} answered {status}"))),
                }
            } else if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                Err(SinkError::Transient(format!(
                    "POST {url} answered {status}"
                )))
            } else {
                Err(SinkError::Permanent {
                    code: ErrorCode::SinkRejected,
                    message: format!("POST {url} answered {status}"),
                })
            }
        });
        async move { Ok(delivery) }.boxed()
    }
}

/// Message headers that become request headers: not the ones HTTP itself or gridflow sets
/// (framing, hop-by-hop, content type, correlation), nor gridflow's own `gridflow.*`.
fn forwarded(name: &str) -> bool {
    const RESERVED: &[&str] = &[
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "x-correlation-id",
        "x-gridflow-pipeline-version",
    ];
    let lower = name.to_ascii_lowercase();
    !lower.starts_with("gridflow.") && !RESERVED.contains(&lower.as_str())
}

impl super::SinkKind for HttpSinkConfig {
    const KIND: &'static str = "http";
    const EXAMPLE: &'static str = r#"[sink]
kind = "http"
url = "http://billing.example/readings""#;

    fn check(&self) -> Result<(), crate::error::BuildError> {
        HttpSinkConfig::check(self)
    }

    fn build(
        &self,
        ctx: &super::SinkContext,
    ) -> Result<std::sync::Arc<dyn Sink>, crate::error::BuildError> {
        Ok(std::sync::Arc::new(HttpSinkConfig::build(self, ctx)?))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::message::{Meta, Origin};
    use crate::sinks::SinkContext;

    /// A server that answers every request with `answer` after `delay`, and keeps each
    /// request's head and body; its base URL.
    async fn legacy(answer: String, delay: Duration) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (answer, record) = (answer.clone(), Arc::clone(&record));
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Reads the head, then the body of its content-length.
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .and_then(|n| n.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    record
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&request).to_string());
                    tokio::time::sleep(delay).await;
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (base, seen)
    }

    /// A `200` answer with `body`.
    fn ok(content_type: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// The SOAP acknowledgement of the legacy stub, with `code` and `reason`.
    fn soap_ack(code: &str, reason: &str) -> String {
        format!(
            r#"<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><ack:Acknowledgement xmlns:ack="urn:legacy:ack"><ack:Code>{code}</ack:Code><ack:Reason>{reason}</ack:Reason></ack:Acknowledgement></soap:Body></soap:Envelope>"#
        )
    }

    const ACK: &str = "
[acknowledgement]
accepted = \"Envelope.Body.Acknowledgement.Code == 'ACCEPTED'\"
reason = \"join(': ', [Envelope.Body.Acknowledgement.Code, Envelope.Body.Acknowledgement.Reason])\"
";

    fn sink(base: &str, extra: &str) -> HttpSink {
        let config: HttpSinkConfig = toml::from_str(&format!(
            "url = '{base}/legacy'\ntimeout_ms = 300\ncontent_type = 'text/xml; charset=utf-8'\n{extra}"
        ))
        .unwrap();
        config
            .build(&SinkContext {
                pipeline: "p".into(),
                version: "v1".into(),
                producer: None,
                dry: false,
            })
            .unwrap()
    }

    fn record(xml: &'static str) -> Record {
        Record {
            payload: Payload::Bytes(Bytes::from_static(xml.as_bytes())),
            meta: Arc::new(Meta {
                original: Bytes::from_static(b"{}"),
                correlation_id: "c-1".into(),
                content_type: ContentType::Json,
                origin: Origin::Kafka {
                    topic: "in".into(),
                    partition: 0,
                    offset: 0,
                },
                key: None,
                headers: Vec::new(),
                request_headers: Vec::new(),
                received_at: std::time::Instant::now(),
                reply: None,
            }),
            headers: Arc::new(vec![("SOAPAction".into(), Bytes::from_static(b"\"urn:submit\""))]),
            key: None,
        }
    }

    async fn deliver(sink: &HttpSink) -> Result<(), SinkError> {
        let record = record("<Envelope><Body><Reading/></Body></Envelope>");
        let delivery = sink.send(&record).await.unwrap();
        delivery.await
    }

    #[tokio::test]
    async fn an_accepting_acknowledgement_delivers_and_the_request_is_soap() {
        let (base, seen) = legacy(ok("text/xml", &soap_ack("ACCEPTED", "")), Duration::ZERO).await;
        deliver(&sink(&base, ACK)).await.unwrap();
        let request = seen.lock().unwrap()[0].to_lowercase();
        assert!(request.contains("content-type: text/xml; charset=utf-8"), "{request}");
        assert!(request.contains("soapaction: \"urn:submit\""), "{request}");
        assert!(request.ends_with("<envelope><body><reading/></body></envelope>"), "{request}");
    }

    #[tokio::test]
    async fn a_refusal_is_permanent_with_its_reason() {
        let (base, _) = legacy(
            ok("text/xml", &soap_ack("REFUSED", "unknown meter FR-PRM-0")),
            Duration::ZERO,
        )
        .await;
        match deliver(&sink(&base, ACK)).await {
            Err(SinkError::Permanent { code, message }) => {
                assert_eq!(code, ErrorCode::SinkRejected);
                assert!(
                    message.ends_with("refused the message: REFUSED: unknown meter FR-PRM-0"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn without_reason_the_whole_answer_is_the_reason_and_json_answers_are_read() {
        let (base, _) = legacy(
            ok("application/json", r#"{"status": "rejected"}"#),
            Duration::ZERO,
        )
        .await;
        let extra = "[acknowledgement]\naccepted = \"status == 'accepted'\"\n";
        match deliver(&sink(&base, extra)).await {
            Err(SinkError::Permanent { message, .. }) => {
                assert!(message.ends_with(r#"{"status":"rejected"}"#), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_long_refusal_reason_is_cut_to_max_reason_chars() {
        let reason = "é".repeat(5000);
        let (base, _) = legacy(ok("text/xml", &soap_ack("REFUSED", &reason)), Duration::ZERO).await;
        match deliver(&sink(&base, ACK)).await {
            Err(SinkError::Permanent { code, message }) => {
                assert_eq!(code, ErrorCode::SinkRejected);
                let kept = message.split_once("refused the message: ").unwrap().1;
                assert_eq!(kept.chars().count(), MAX_REASON_CHARS + 1, "{kept}");
                assert!(kept.starts_with("REFUSED: éé") && kept.ends_with("é…"), "{kept}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unreadable_empty_or_truthy_but_not_true_answer_refuses() {
        // `accepted` must give `true`: a truthy string is a refusal.
        for (body, want) in [
            ("not a document", "neither JSON nor XML"),
            ("", "neither JSON nor XML"),
            ("<Envelope><Body>", "not a readable document"),
            (r#"{"status": "ACCEPTED"}"#, r#"{"status":"ACCEPTED"}"#),
        ] {
            let (base, _) = legacy(ok("text/xml", body), Duration::ZERO).await;
            let extra = "[acknowledgement]\naccepted = 'status'\n";
            match deliver(&sink(&base, extra)).await {
                Err(SinkError::Permanent { message, .. }) => {
                    assert!(message.contains(want), "{body}: {message}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_answer_over_max_bytes_refuses() {
        let big = soap_ack("ACCEPTED", &"x".repeat(2000));
        let (base, _) = legacy(ok("text/xml", &big), Duration::ZERO).await;
        let extra = format!("{ACK}max_bytes = 1000\n");
        match deliver(&sink(&base, &extra)).await {
            Err(SinkError::Permanent { message, .. }) => {
                assert!(message.contains("larger than acknowledgement.max_bytes"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_5xx_a_slow_and_an_unreachable_endpoint_are_transient() {
        let fault = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string();
        let (base, _) = legacy(fault, Duration::ZERO).await;
        assert!(matches!(deliver(&sink(&base, ACK)).await, Err(SinkError::Transient(_))));
        // Slower than timeout_ms (300).
        let (base, _) = legacy(ok("text/xml", &soap_ack("ACCEPTED", "")), Duration::from_secs(3)).await;
        let started = std::time::Instant::now();
        assert!(matches!(deliver(&sink(&base, ACK)).await, Err(SinkError::Transient(_))));
        assert!(started.elapsed() < Duration::from_secs(2));
        // Nothing listens.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let base = format!("http://127.0.0.1:{port}");
        assert!(matches!(deliver(&sink(&base, ACK)).await, Err(SinkError::Transient(_))));
    }

    #[tokio::test]
    async fn an_answer_cut_off_is_transient_and_a_fault_with_200_is_refused_with_the_fault() {
        let cut = "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: 500\r\nconnection: close\r\n\r\n<soap:Envelope>".to_string();
        let (base, _) = legacy(cut, Duration::ZERO).await;
        match deliver(&sink(&base, ACK)).await {
            Err(SinkError::Transient(message)) => assert!(message.contains("cut off"), "{message}"),
            other => panic!("{other:?}"),
        }
        let fault = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode>soap:Server</faultcode><faultstring>database locked</faultstring></soap:Fault></soap:Body></soap:Envelope>"#;
        let (base, _) = legacy(ok("text/xml", fault), Duration::ZERO).await;
        let extra = "[acknowledgement]\naccepted = \"Envelope.Body.Ack.Code == 'ACCEPTED'\"\nreason = 'Envelope.Body.Ack || Envelope.Body.Fault'\n";
        match deliver(&sink(&base, extra)).await {
            Err(SinkError::Permanent { message, .. }) => assert!(
                message.ends_with(r#"{"faultcode":"soap:Server","faultstring":"database locked"}"#),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_soap_client_fault_is_refused_and_a_server_fault_retried() {
        let answer = |fault: &str| {
            let body = format!(r#"<s:Envelope xmlns:s="urn:x"><s:Body><s:Fault>{fault}</s:Fault></s:Body></s:Envelope>"#);
            format!(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        for (fault, refused) in [
            ("<faultcode>soap:Client</faultcode><faultstring>unknown SOAPAction</faultstring>", Some("soap:Client: unknown SOAPAction")),
            ("<s:Code><s:Value>s:Sender</s:Value></s:Code><s:Reason><s:Text xml:lang=\"en\">bad order</s:Text></s:Reason>", Some("s:Sender: bad order")),
            ("<faultcode>soap:Server</faultcode><faultstring>database locked</faultstring>", None),
            ("not a fault", None),
        ] {
            let (base, _) = legacy(answer(fault), Duration::ZERO).await;
            match (deliver(&sink(&base, ACK)).await, refused) {
                (Err(SinkError::Permanent { code, message }), Some(want)) => {
                    assert_eq!(code, ErrorCode::SinkRejected);
                    assert!(message.ends_with(want), "{message}");
                }
                (Err(SinkError::Transient(message)), None) => {
                    assert!(message.contains("500"), "{message}")
                }
                (other, _) => panic!("{fault}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_bad_expression_or_content_type_is_a_build_error() {
        for (extra, key) in [
            ("[acknowledgement]\naccepted = 'a ||'\n", "acknowledgement.accepted"),
            ("[acknowledgement]\naccepted = 'a'\nreason = '[['\n", "acknowledgement.reason"),
            ("[acknowledgement]\naccepted = 'a'\nmax_bytes = 0\n", "acknowledgement.max_bytes"),
            ("content_type = \"text/xml\\n\"\n", "content_type"),
        ] {
            let config: HttpSinkConfig =
                toml::from_str(&format!("url = 'http://legacy.example'\n{extra}")).unwrap();
            let err = config.check().unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{extra}: {err:?}");
        }
    }

    #[test]
    fn framing_and_gridflow_headers_are_not_forwarded() {
        for name in [
            "Content-Length",
            "transfer-encoding",
            "Host",
            "gridflow.pipeline",
            "x-correlation-id",
        ] {
            assert!(!super::forwarded(name), "{name}");
        }
        assert!(super::forwarded("x-region"));
    }
}
