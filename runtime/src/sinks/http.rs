//! `http` sink: POST each message; 2xx acknowledges it; 5xx, 408, 429 and network faults are
//! transient; other statuses are permanent. Requests of one pipeline run concurrently (up to
//! `[engine] max_in_flight`), so an HTTP sink does not keep the order of messages.
//!
//! A redirect is never a delivery. By default a `3xx` is a refusal (the message is
//! dead-lettered, the status and `Location` in the reason): following a `301`/`302`/`303`
//! would turn the POST into a bodiless GET whose `200` acknowledges what reached nobody. With
//! `follow_redirects = true` the sink follows `307` and `308` only (they keep the method and
//! the body), at most `max_redirects` hops; any other `3xx` still is a refusal.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;

use super::{Delivery, Record, Sink};
use crate::error::{BuildError, ErrorCode, SinkError};
use crate::message::{ContentType, Payload};

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
        Ok(HttpSink {
            url: self.url.clone(),
            client,
            version: ctx.version.to_string(),
        })
    }
}

/// The running `http` sink.
pub struct HttpSink {
    url: String,
    client: reqwest::Client,
    version: String,
}

impl Sink for HttpSink {
    fn send<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, Result<Delivery, SinkError>> {
        let content_type = match &record.payload {
            Payload::Json(_) | Payload::Parsed { .. } => "application/json",
            Payload::Bytes(bytes) => match ContentType::sniff(bytes) {
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
        let delivery: Delivery = Box::pin(async move {
            let response = request
                .send()
                .await
                .map_err(|e| SinkError::Transient(format!("POST {url} failed: {e}")))?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else if status.is_redirection() {
                Err(SinkError::Permanent {
                    code: ErrorCode::SinkRejected,
                    message: redirect_refusal("POST", &url, &response),
                })
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
