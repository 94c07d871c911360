//! `http` source: POST on a path of the shared HTTP listener.
//!
//! The listener's route table ([`HttpRoutes`]) maps a path to the pipeline that owns it and is
//! swapped atomically, so a pipeline can come and go without restarting the listener.
//! The reply is sent only when the input's acknowledgement resolved:
//! - every message written: `202` `{"correlation_id": "...", "messages": N}`;
//! - the body could not be parsed: `400`; a step failed: `422` (the original body went to
//!   the dead-letter destination);
//! - neither sink nor dead-letter destination took it: `503` with `Retry-After`.
//!
//! Errors are `application/problem+json` (RFC 9457) and carry the correlation id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::edge::{ApiKeys, AuthConfig, Limiter, QuotaConfig, Refusal};
use super::soap::SoapRoute;
use super::{Downstream, Source, SourceContext};
use crate::ack::{Ack, Outcome};
use crate::error::{BuildError, ErrorCode, Failure};
use crate::message::{new_correlation_id, trace_id, ContentType, Message, Meta, Origin, Payload};

/// The header carrying the correlation id, in and out.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// `kind = "http"`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// The path that receives POSTs, e.g. `/ingest/entsoe/actual-load`.
    pub path: String,
    /// Largest accepted body, in bytes (default 10 MiB); larger bodies get `413`.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Seconds announced in `Retry-After` with a `503` (default 5).
    #[serde(default = "default_retry_after_secs")]
    pub retry_after_secs: u64,
    /// `[source.auth]`: API keys callers must present (`401`/`403` otherwise).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// `[source.quota]`: requests per second per client (`429` past it).
    #[serde(default)]
    pub quota: Option<QuotaConfig>,
    /// Contract (`name@version`) a JSON request body must conform to (`422` otherwise).
    #[serde(default)]
    pub contract: Option<String>,
    /// `ack` (default): `202` once the sink acknowledged; `mapped`: the pipeline's result is
    /// the response body (synchronous request/reply, for lookups).
    #[serde(default)]
    pub reply: ReplyMode,
    /// `soap` only: accepted operations (SOAPAction in 1.1, `action` in 1.2); empty: any.
    #[serde(default)]
    pub operations: Vec<String>,
    /// `soap` only: a WSDL file served on `GET <path>?wsdl`.
    #[serde(default)]
    pub wsdl: Option<std::path::PathBuf>,
}

/// What an HTTP source answers on success.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ReplyMode {
    /// `202` with the correlation id and the number of messages written.
    #[default]
    Ack,
    /// `200` with the result: one message as it is, several as a JSON array, none `204`.
    Mapped,
}

fn default_max_body_bytes() -> usize {
    10 * 1024 * 1024
}

fn default_retry_after_secs() -> u64 {
    5
}

impl HttpSourceConfig {
    /// Checks the path.
    pub fn check(&self) -> Result<(), BuildError> {
        if let Some(auth) = &self.auth {
            auth.check()?;
        }
        if let Some(quota) = &self.quota {
            quota.check()?;
        }
        if let Some(contract) = &self.contract {
            if !crate::contracts::valid_reference(contract) {
                return Err(BuildError::at(
                    "contract",
                    format!("`{contract}` is not a contract reference"),
                )
                .with_hint("write it as `name@version`, e.g. `meter-reading@1`"));
            }
        }
        if !self.path.starts_with('/') || self.path.contains(char::is_whitespace) {
            return Err(BuildError::at(
                "path",
                format!("`{}` is not an absolute URL path", self.path),
            )
            .with_hint("write it like `/ingest/entsoe/actual-load`"));
        }
        let reserved = ["/health", "/admin", "/metrics"]
            .iter()
            .any(|r| self.path == *r || self.path.starts_with(&format!("{r}/")));
        if reserved {
            return Err(
                BuildError::at("path", format!("`{}` is reserved", self.path))
                    .with_hint("choose a path outside /health, /admin and /metrics"),
            );
        }
        Ok(())
    }

    /// Builds the source.
    pub fn build(&self, ctx: &SourceContext) -> Result<HttpSource, BuildError> {
        if !self.operations.is_empty() || self.wsdl.is_some() {
            return Err(BuildError::new(
                "`operations` and `wsdl` are for `kind = \"soap\"` sources",
            ));
        }
        self.build_route(ctx, None)
    }

    /// Builds a `soap` source on the same listener.
    pub fn build_soap(&self, ctx: &SourceContext) -> Result<HttpSource, BuildError> {
        let wsdl = match &self.wsdl {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                BuildError::at("wsdl", format!("cannot read {}: {e}", path.display()))
            })?),
            None => None,
        };
        self.build_route(
            ctx,
            Some(Arc::new(SoapRoute {
                operations: self.operations.clone(),
                wsdl,
            })),
        )
    }

    fn build_route(
        &self,
        ctx: &SourceContext,
        soap: Option<Arc<SoapRoute>>,
    ) -> Result<HttpSource, BuildError> {
        Ok(HttpSource {
            soap,
            config: self.clone(),
            routes: Arc::clone(&ctx.http_routes),
            pipeline: Arc::clone(&ctx.pipeline),
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            contract: match &self.contract {
                Some(reference) => Some(ctx.contracts.get(reference).ok_or_else(|| {
                    BuildError::at("contract", format!("unknown contract `{reference}`")).with_hint(
                        format!(
                            "contracts loaded: {}",
                            ctx.contracts.references().join(", ")
                        ),
                    )
                })?),
                None => None,
            },
            keys: self
                .auth
                .as_ref()
                .map(AuthConfig::load)
                .transpose()?
                .map(Arc::new),
            limiter: self
                .quota
                .as_ref()
                .map(QuotaConfig::build)
                .transpose()?
                .map(Arc::new),
        })
    }
}

/// Each built HTTP source gets its own generation, so that a stopping old version removes
/// its route only if a new version has not taken it over.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// One entry of the route table.
#[derive(Clone)]
pub struct Route {
    pipeline: Arc<str>,
    generation: u64,
    config: HttpSourceConfig,
    downstream: Arc<dyn Downstream>,
    keys: Option<Arc<ApiKeys>>,
    limiter: Option<Arc<Limiter>>,
    contract: Option<Arc<crate::contracts::Contract>>,
    soap: Option<Arc<SoapRoute>>,
    metrics: Arc<crate::metrics::HttpMetrics>,
}

/// The HTTP listener's route table: path → route, swapped atomically.
#[derive(Default)]
pub struct HttpRoutes {
    table: ArcSwap<HashMap<String, Route>>,
}

impl Route {
    /// The pipeline serving this route.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// The source's config.
    pub fn config(&self) -> &HttpSourceConfig {
        &self.config
    }

    /// The request contract, if any.
    pub fn contract(&self) -> Option<&Arc<crate::contracts::Contract>> {
        self.contract.as_ref()
    }

    /// The SOAP part of a `soap` source's route.
    pub fn soap(&self) -> Option<&Arc<SoapRoute>> {
        self.soap.as_ref()
    }

    /// Where the route's inputs go.
    pub fn downstream(&self) -> &Arc<dyn Downstream> {
        &self.downstream
    }
}

impl HttpRoutes {
    /// Every route served now.
    pub fn table_snapshot(&self) -> Vec<(String, Route)> {
        self.table
            .load()
            .iter()
            .map(|(path, route)| (path.clone(), route.clone()))
            .collect()
    }

    /// Pipelines currently served, by path.
    pub fn paths(&self) -> Vec<(String, Arc<str>)> {
        self.table
            .load()
            .iter()
            .map(|(path, route)| (path.clone(), Arc::clone(&route.pipeline)))
            .collect()
    }

    /// The pipeline serving `path`, if any.
    pub fn owner(&self, path: &str) -> Option<Arc<str>> {
        self.table.load().get(path).map(|r| Arc::clone(&r.pipeline))
    }

    /// Takes `path` for `route`, replacing whatever served it: the engine checks ownership
    /// (see `owner`) before it launches a source, so a route is taken over only from the
    /// version being replaced.
    fn insert(&self, path: &str, route: Route) {
        self.table.rcu(|table| {
            let mut table = HashMap::clone(table);
            table.insert(path.to_string(), route.clone());
            table
        });
    }

    /// Removes the route of `path` if it is still the one of `generation`.
    fn remove(&self, path: &str, generation: u64) {
        self.table.rcu(|table| {
            let mut table = HashMap::clone(table);
            if table.get(path).is_some_and(|r| r.generation == generation) {
                table.remove(path);
            }
            table
        });
    }
}

/// The running `http` source: it owns its route while it runs.
pub struct HttpSource {
    config: HttpSourceConfig,
    routes: Arc<HttpRoutes>,
    pipeline: Arc<str>,
    generation: u64,
    keys: Option<Arc<ApiKeys>>,
    limiter: Option<Arc<Limiter>>,
    contract: Option<Arc<crate::contracts::Contract>>,
    soap: Option<Arc<SoapRoute>>,
}

impl Source for HttpSource {
    fn run(
        self: Box<Self>,
        downstream: Arc<dyn Downstream>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), String>> {
        // The route is taken at once, when the engine launches the source (not when the task
        // first runs): a reload swaps routes with no gap.
        let route = Route {
            pipeline: Arc::clone(&self.pipeline),
            generation: self.generation,
            config: self.config.clone(),
            downstream,
            keys: self.keys.clone(),
            limiter: self.limiter.clone(),
            contract: self.contract.clone(),
            soap: self.soap.clone(),
            metrics: Arc::new(crate::metrics::HttpMetrics::new(&self.pipeline)),
        };
        self.routes.insert(&self.config.path, route);
        async move {
            // A key file is re-read while the source runs: a revoked key is refused within
            // about a second, without a restart or a pipeline edit.
            match &self.keys {
                Some(keys) => {
                    Arc::clone(keys)
                        .watch(
                            Arc::clone(&self.pipeline),
                            super::edge::KEY_FILE_CHECK_INTERVAL,
                            shutdown.clone(),
                        )
                        .await;
                    shutdown.cancelled().await;
                }
                None => shutdown.cancelled().await,
            }
            self.routes.remove(&self.config.path, self.generation);
            Ok(())
        }
        .boxed()
    }
}

/// The router of the HTTP listener: every request is looked up in `routes`.
pub fn router(routes: Arc<HttpRoutes>) -> Router {
    Router::new().fallback(handle).with_state(routes)
}

/// An `application/problem+json` response (RFC 9457).
pub fn problem(status: StatusCode, title: &str, detail: &str, extra: Value) -> Response {
    let mut body = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// Authentication, then quota: the client is the API key's client, or the caller's IP address.
pub(super) fn admit(route: &Route, request: &Request) -> Result<(), Refusal> {
    let client: Arc<str> = match &route.keys {
        Some(keys) => keys.client(request.headers())?,
        None => match &route.limiter {
            Some(_) => request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| Arc::from(c.0.ip().to_string().as_str()))
                .unwrap_or_else(|| Arc::from("unknown")),
            None => return Ok(()),
        },
    };
    match &route.limiter {
        Some(limiter) => limiter.check(&client),
        None => Ok(()),
    }
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

/// The correlation id a request carries: `X-Correlation-ID`, else the trace id of a W3C
/// `traceparent`.
pub fn correlation_id_of(headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header(CORRELATION_HEADER)
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .or_else(|| header("traceparent").and_then(trace_id))
        .map(str::to_string)
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
    let parsed = match content_type {
        ContentType::Json => {
            crate::message::json_from_bytes(&body, std::marker::PhantomData::<Value>)
                .map(Payload::Json)
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

async fn handle(State(routes): State<Arc<HttpRoutes>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    // X-Correlation-ID, else the trace id of a W3C traceparent, else a new UUID v7.
    let correlation_id = correlation_id_of(request.headers()).unwrap_or_else(new_correlation_id);
    let started = std::time::Instant::now();
    // Counted for the pipeline whose route answered (requests to no route are not counted).
    let route = routes.table.load().get(&path).cloned();
    let metrics = route.as_ref().map(|r| Arc::clone(&r.metrics));
    let mut response = serve(route, &path, request, &correlation_id).await;
    if let Some(metrics) = metrics {
        metrics.answered(response.status().as_u16(), started.elapsed());
    }
    if let Ok(value) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert(CORRELATION_HEADER, value);
    }
    response
}

async fn serve(
    route: Option<Route>,
    path: &str,
    request: Request,
    correlation_id: &str,
) -> Response {
    let ids = json!({ "correlation_id": correlation_id });
    let Some(route) = route else {
        return problem(
            StatusCode::NOT_FOUND,
            "Not Found",
            &format!("no pipeline serves `{path}`"),
            ids,
        );
    };
    if route.soap.is_some() {
        return super::soap::serve(route, request, correlation_id, path).await;
    }
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

/// Checks the request body against the source's contract.
pub(super) fn check_contract(
    contract: &crate::contracts::Contract,
    payload: Payload,
    content_type: ContentType,
    step: &str,
) -> Result<Payload, Failure> {
    let converted;
    let document = match (&payload, content_type) {
        (Payload::Json(document), _) => document,
        (Payload::Bytes(bytes), ContentType::Xml) => {
            converted = crate::xml::xml_to_json(bytes, &Default::default())
                .map_err(|e| Failure::new(step, ErrorCode::InvalidXml, e.to_string()))?;
            &converted
        }
        _ => return Ok(payload),
    };
    match contract.validate(document) {
        Ok(()) => Ok(payload),
        Err(violations) => {
            let mut failure = Failure::new(
                step,
                ErrorCode::ContractViolation,
                format!(
                    "{} violation(s) of {}",
                    violations.len(),
                    contract.reference
                ),
            );
            failure.details = Some(crate::contracts::violations_json(&violations));
            Err(failure)
        }
    }
}

/// The synchronous reply: one message as it is, several as a JSON array, none `204`.
fn mapped_reply(mut results: Vec<Payload>) -> Response {
    let (content_type, body) = match results.len() {
        0 => return StatusCode::NO_CONTENT.into_response(),
        1 => match results.remove(0) {
            Payload::Json(value) => ("application/json", value.to_string().into_bytes()),
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
                    Payload::Json(value) => value,
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

/// Seconds for `Retry-After`: the failure's own (an upstream's breaker cool-down), rounded
/// up, else the route's default.
pub(crate) fn retry_after_secs(failure: &Failure, default: u64) -> u64 {
    failure
        .retry_after
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .map_or(default, |s| s.max(1))
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn reserved_and_relative_paths_are_rejected() {
        let c = |p: &str| HttpSourceConfig {
            path: p.into(),
            max_body_bytes: 1,
            retry_after_secs: 1,
            auth: None,
            quota: None,
            contract: None,
            reply: ReplyMode::Ack,
            operations: Vec::new(),
            wsdl: None,
        };
        assert!(c("/ingest/x").check().is_ok());
        assert!(c("ingest").check().is_err());
        assert!(c("/health/live").check().is_err());
        assert!(c("/metrics").check().is_err());
        assert!(c("/healthcare/readings").check().is_ok());
    }
}
