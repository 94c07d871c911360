//! `http` source: POST on a path of the shared HTTP listener (its route, config and
//! admission are shared with `soap`, in [`super::route`]).
//!
//! The reply is sent only when the input's acknowledgement resolved:
//! - every message written: `202` `{"correlation_id": "...", "messages": N}`;
//! - the body could not be parsed: `400`; a step failed: `422` (the original body went to
//!   the dead-letter destination);
//! - neither sink nor dead-letter destination took it: `503` with `Retry-After`.
//!
//! Errors are `application/problem+json` (RFC 9457) and carry the correlation id.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::edge::Refusal;
use super::route::{admit, check_contract, problem, retry_after_secs, HttpSource, ReplyMode, Route};
/// The `http` kind's config: the keys it shares with `soap`, in [`super::route`].
pub use super::route::HttpSourceConfig;
use super::SourceContext;
use crate::ack::{Ack, Outcome};
use crate::error::{BuildError, ErrorCode, Failure};
use crate::message::{ContentType, Message, Meta, Origin, Payload};

impl HttpSourceConfig {
    /// Builds the source.
    pub fn build(&self, ctx: &SourceContext) -> Result<HttpSource, BuildError> {
        if !self.operations.is_empty() || self.wsdl.is_some() {
            return Err(BuildError::new(
                "`operations` and `wsdl` are for `kind = \"soap\"` sources",
            ));
        }
        self.build_route(ctx, serve_boxed, None)
    }
}

/// [`serve`] as the route table's [`Serve`](super::route::Serve).
fn serve_boxed<'a>(
    route: Route,
    request: Request,
    correlation_id: &'a str,
    path: &'a str,
) -> BoxFuture<'a, Response> {
    Box::pin(serve(route, request, correlation_id, path))
}

fn refused(refusal: Refusal, route: &Route, ids: Value) -> Response {
    match refusal {
        Refusal::Unauthenticated => {
            let mut response = problem(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "an API key is required (X-API-Key or Authorization: Bearer)",
                ids,
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        Refusal::Forbidden => problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "this API key is not accepted here",
            ids,
        ),
        Refusal::OverQuota(wait) => {
            crate::metrics::quota_rejected(&route.pipeline);
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut response = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                &format!("over quota; retry in {seconds} s"),
                ids,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
    }
}

fn content_type(headers: &HeaderMap, body: &[u8]) -> ContentType {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase());
    match declared {
        Some(ct) if ct.contains("json") => ContentType::Json,
        Some(ct) if ct.contains("xml") => ContentType::Xml,
        Some(_) => ContentType::Other,
        None => ContentType::sniff(body),
    }
}

/// What a request gives the pipeline: its [`Meta`] and first payload, or the failure the
/// source rejects it with (a JSON body that does not parse, a body that breaks the route's
/// contract). The listener and `gridflow test` both read requests through it.
pub fn request_input(
    config: &HttpSourceConfig,
    contract: Option<&crate::contracts::Contract>,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
    correlation_id: &str,
) -> (Arc<Meta>, Result<Payload, Failure>) {
    let content_type = content_type(headers, &body);
    let meta = Arc::new(Meta {
        original: body.clone(),
        correlation_id: correlation_id.to_string(),
        content_type,
        origin: Origin::Http {
            path: path.to_string(),
        },
        key: None,
        headers: Vec::new(),
        request_headers: crate::message::request_headers(headers),
        received_at: Instant::now(),
        reply: (config.reply == ReplyMode::Mapped).then(|| std::sync::Mutex::new(Vec::new())),
    });
    // A JSON body is parsed once, to be checked (and read by the first step); the pipeline
    // still receives the bytes as sent, which a sink writes when no step changes them.
    let parsed = match content_type {
        ContentType::Json => {
            crate::message::json_from_bytes(&body, crate::message::UniqueNames)
                .map(|value| Payload::Parsed {
                    bytes: body.clone(),
                    value,
                })
                .map_err(|e| {
                    Failure::new(
                        "source.http",
                        ErrorCode::InvalidJson,
                        format!("the body is not valid JSON: {e}"),
                    )
                })
        }
        ContentType::Xml | ContentType::Other => Ok(Payload::Bytes(body)),
    };
    // The request contract: on the JSON body, or on an XML body after conversion (the
    // pipeline still receives the XML as sent).
    let parsed = parsed.and_then(|payload| match contract {
        Some(contract) => check_contract(contract, payload, content_type, "source.http"),
        None => Ok(payload),
    });
    (meta, parsed)
}

/// Serves one request on an `http` route.
async fn serve(route: Route, request: Request, correlation_id: &str, path: &str) -> Response {
    let ids = json!({ "correlation_id": correlation_id });
    if request.method() != Method::POST {
        let mut response = problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            "pipelines accept POST only",
            ids,
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    if let Err(refusal) = admit(&route, &request) {
        return refused(refusal, &route, ids);
    }
    // `lease`: the body's share of the listener's body budget, held until the input is
    // settled (also when the client leaves before its answer).
    let (parts, body, lease) =
        match super::ingress::read_body(request, route.config.max_body_bytes).await {
            Ok(read) => read,
            Err(e) => return e.problem(ids),
        };
    let (ack, outcome) = Ack::channel();
    let held = super::ingress::HeldBody::new(lease, outcome);
    let (meta, parsed) = request_input(
        &route.config,
        route.contract.as_deref(),
        path,
        &parts.headers,
        body,
        correlation_id,
    );
    let reply = Arc::clone(&meta);
    match parsed {
        Ok(payload) => route.downstream.push(Message { payload, meta, ack }).await,
        Err(failure) => {
            let message = Message {
                payload: Payload::Bytes(Bytes::new()),
                meta,
                ack,
            };
            route.downstream.reject(message, failure).await
        }
    }
    let outcome = held.outcome().await.unwrap_or_else(|_| {
        Outcome::Failed(Failure::new(
            "engine",
            ErrorCode::Dropped,
            "the pipeline stopped",
        ))
    });
    match (outcome, &reply.reply) {
        (Outcome::Delivered { .. }, Some(results)) => {
            let results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
            mapped_reply(results)
        }
        (outcome, _) => respond(outcome, &route, correlation_id),
    }
}

/// The synchronous reply: one message as it is, several as a JSON array, none `204`.
fn mapped_reply(mut results: Vec<Payload>) -> Response {
    let (content_type, body) = match results.len() {
        0 => return StatusCode::NO_CONTENT.into_response(),
        1 => match results.remove(0) {
            Payload::Json(value) => ("application/json", value.to_string().into_bytes()),
            Payload::Parsed { bytes, .. } => ("application/json", bytes.to_vec()),
            Payload::Bytes(bytes) => (
                match ContentType::sniff(&bytes) {
                    ContentType::Json => "application/json",
                    ContentType::Xml => "application/xml",
                    ContentType::Other => "application/octet-stream",
                },
                bytes.to_vec(),
            ),
        },
        _ => {
            let items: Vec<Value> = results
                .into_iter()
                .map(|p| match p {
                    Payload::Json(value) | Payload::Parsed { value, .. } => value,
                    Payload::Bytes(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&bytes).into_owned())
                    }),
                })
                .collect();
            (
                "application/json",
                Value::Array(items).to_string().into_bytes(),
            )
        }
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn respond(outcome: Outcome, route: &Route, correlation_id: &str) -> Response {
    match outcome {
        Outcome::Delivered { messages } => (
            StatusCode::ACCEPTED,
            [(header::CONTENT_TYPE, "application/json")],
            json!({ "correlation_id": correlation_id, "messages": messages }).to_string(),
        )
            .into_response(),
        // The destination stayed unavailable past the retry budget: the input is in the
        // dead-letter destination, and the caller is told to try again, as for a broker outage.
        Outcome::DeadLettered(failure) if failure.code == ErrorCode::RetriesExhausted => {
            unavailable(&failure, route, correlation_id, true)
        }
        Outcome::DeadLettered(failure) => {
            let (status, title) = if failure.code.is_parse() {
                (StatusCode::BAD_REQUEST, "Bad Request")
            } else {
                (StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable Content")
            };
            problem(
                status,
                title,
                &failure.message,
                failure_fields(&failure, &route.pipeline, correlation_id, true),
            )
        }
        Outcome::Failed(failure) => unavailable(&failure, route, correlation_id, false),
    }
}

fn unavailable(
    failure: &Failure,
    route: &Route,
    correlation_id: &str,
    dead_lettered: bool,
) -> Response {
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        &format!(
            "the destination is unavailable; try again later ({})",
            failure.message
        ),
        failure_fields(failure, &route.pipeline, correlation_id, dead_lettered),
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs(failure, route.config.retry_after_secs)),
    );
    response
}

fn failure_fields(
    failure: &Failure,
    pipeline: &str,
    correlation_id: &str,
    dead_lettered: bool,
) -> Value {
    let mut fields = json!({
        "pipeline": pipeline,
        "step": failure.step,
        "code": failure.code.as_str(),
        "attempts": failure.attempts,
        "correlation_id": correlation_id,
        "dead_lettered": dead_lettered,
    });
    if let (Some(details), Value::Object(map)) = (&failure.details, &mut fields) {
        map.insert("violations".into(), details.clone());
    }
    fields
}

impl super::SourceKind for HttpSourceConfig {
    const KIND: &'static str = "http";
    const EXAMPLE: &'static str = r#"[source]
kind = "http"
path = "/ingest/meter-readings""#;
    const WAITS_FOR_SINK: bool = false;
    const REDELIVERS: bool = true;

    fn check(&self) -> Result<(), BuildError> {
        HttpSourceConfig::check(self)
    }

    fn build(&self, ctx: &super::SourceContext) -> Result<Box<dyn super::Source>, BuildError> {
        Ok(Box::new(HttpSourceConfig::build(self, ctx)?))
    }

    fn http(&self) -> Option<&HttpSourceConfig> {
        Some(self)
    }

    /// The request a client would have made: its headers and `Content-Type`, the
    /// correlation id it gives, the source's contract checked.
    fn offline_input(
        &self,
        input: &super::OfflineInput<'_>,
    ) -> Result<super::Received, String> {
        let headers = input.http_headers()?;
        let contract = input.contract(self.contract.as_deref())?;
        let id = super::route::correlation_id_of(&headers)
            .unwrap_or_else(|| input.correlation_id.to_string());
        Ok(request_input(
            self,
            contract.as_deref(),
            &self.path,
            &headers,
            input.body.clone(),
            &id,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JSON body checked against the route's contract reaches the pipeline as the bytes
    /// sent (parsed alongside, for the first step): a sink writes them byte for byte.
    #[test]
    fn a_body_checked_against_a_contract_goes_on_as_sent() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts");
        let (contracts, _) = crate::contracts::Contracts::load(&dir);
        let contract = contracts.get("meter-reading@1").unwrap();
        let config = HttpSourceConfig {
            path: "/in".into(),
            max_body_bytes: 1 << 20,
            retry_after_secs: 1,
            auth: None,
            quota: None,
            contract: Some("meter-reading@1".into()),
            reply: ReplyMode::Ack,
            operations: Vec::new(),
            wsdl: None,
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let body = Bytes::from_static(
            b"{\n  \"value\": 1e2, \"unit\":\"kWh\", \"meter_id\":\"caf\\u00e9\",\t\"measured_at\": \"2026-01-14T00:45:00Z\" }\n",
        );
        let (meta, payload) =
            request_input(&config, Some(&contract), "/in", &headers, body.clone(), "c-1");
        let payload = payload.unwrap();
        assert_eq!(payload.to_bytes(), body);
        assert_eq!(meta.original, body);
        assert_eq!(payload.as_json().unwrap()["meter_id"], "caf\u{e9}");
        // Without a contract too; a body that breaks it, or is not JSON, is refused.
        let (_, payload) = request_input(&config, None, "/in", &headers, body.clone(), "c-2");
        assert_eq!(payload.unwrap().to_bytes(), body);
        let bad = Bytes::from_static(b"{\"value\": \"1\"}");
        let (_, refused) = request_input(&config, Some(&contract), "/in", &headers, bad, "c-3");
        assert_eq!(refused.unwrap_err().code, ErrorCode::ContractViolation);
        let bom = Bytes::from_static(b"\xef\xbb\xbf{}");
        let (_, refused) = request_input(&config, None, "/in", &headers, bom, "c-4");
        assert_eq!(refused.unwrap_err().code, ErrorCode::InvalidJson);
    }

    #[test]
    fn content_type_from_header_or_sniffed() {
        let mut h = HeaderMap::new();
        assert_eq!(content_type(&h, b"  <a/>"), ContentType::Xml);
        assert_eq!(content_type(&h, b"{}"), ContentType::Json);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/soap+xml; charset=utf-8"),
        );
        assert_eq!(content_type(&h, b"{}"), ContentType::Xml);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON"),
        );
        assert_eq!(content_type(&h, b"<a/>"), ContentType::Json);
    }
}
