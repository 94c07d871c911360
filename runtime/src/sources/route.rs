//! What the `http` and `soap` sources share: their config, the shared HTTP listener's route
//! table and its router, admission (API keys, quotas), the request contract, and the
//! `application/problem+json` answers (RFC 9457).
//!
//! The route table ([`HttpRoutes`]) maps a path to the pipeline that owns it and is swapped
//! atomically, so a pipeline can come and go without restarting the listener. Each route
//! carries the handler of its source kind ([`Serve`]): the router knows no kind, and the
//! `http` and `soap` sources import this module, not each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::edge::{ApiKeys, AuthConfig, Limiter, QuotaConfig, Refusal};
use super::{Downstream, Source, SourceContext};
use crate::error::{BuildError, ErrorCode, Failure};
use crate::message::{new_correlation_id, trace_id, ContentType, Payload};

/// The header carrying the correlation id, in and out.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// `kind = "http"`: the keys of a source on the shared listener; `kind = "soap"` takes the
/// same keys (`operations` and `wsdl` are SOAP's only).
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
}

/// How a route answers a request (`route`, `request`, its correlation id, its path): the
/// handler of the `http` or the `soap` source, set when the source is built.
pub type Serve = for<'a> fn(Route, Request, &'a str, &'a str) -> BoxFuture<'a, Response>;

/// What a SOAP route knows beyond an HTTP one.
#[derive(Debug, Clone, Default)]
pub struct SoapRoute {
    /// Accepted operations (SOAPAction / action); empty: any.
    pub operations: Vec<String>,
    /// The WSDL served on `GET <path>?wsdl`.
    pub wsdl: Option<String>,
}

impl HttpSourceConfig {
    /// Builds an `http` or `soap` source: `serve` answers its requests, `soap` is the SOAP
    /// part of a `soap` source.
    pub(super) fn build_route(
        &self,
        ctx: &SourceContext,
        serve: Serve,
        soap: Option<Arc<SoapRoute>>,
    ) -> Result<HttpSource, BuildError> {
        Ok(HttpSource {
            serve,
            soap,
            config: self.clone(),
            routes: Arc::clone(&ctx.http_routes),
            pipeline: Arc::clone(&ctx.pipeline),
            pause: ctx.paused.clone(),
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
    pub(super) pipeline: Arc<str>,
    generation: u64,
    pub(super) config: HttpSourceConfig,
    pub(super) downstream: Arc<dyn Downstream>,
    keys: Option<Arc<ApiKeys>>,
    limiter: Option<Arc<Limiter>>,
    pub(super) contract: Option<Arc<crate::contracts::Contract>>,
    soap: Option<Arc<SoapRoute>>,
    metrics: Arc<crate::metrics::HttpMetrics>,
    serve: Serve,
    /// The pipeline's pause switch: while on, every request is answered `503`.
    pause: super::Pause,
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

/// The running `http` or `soap` source: it owns its route while it runs.
pub struct HttpSource {
    serve: Serve,
    config: HttpSourceConfig,
    routes: Arc<HttpRoutes>,
    pipeline: Arc<str>,
    pause: super::Pause,
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
            serve: self.serve,
            pause: self.pause.clone(),
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

/// The correlation id a request carries: `X-Correlation-ID`, else the trace id of a W3C
/// `traceparent`.
pub fn correlation_id_of(headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header(CORRELATION_HEADER)
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .or_else(|| header("traceparent").and_then(trace_id))
        .map(str::to_string)
}

/// Answers every request of the listener: through the handler of the route of its path (or
/// `404`), counted for that route's pipeline, with its correlation id in the answer.
async fn handle(State(routes): State<Arc<HttpRoutes>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    // X-Correlation-ID, else the trace id of a W3C traceparent, else a new UUID v7.
    let correlation_id = correlation_id_of(request.headers()).unwrap_or_else(new_correlation_id);
    let started = std::time::Instant::now();
    // Counted for the pipeline whose route answered (requests to no route are not counted).
    let route = routes.table.load().get(&path).cloned();
    let metrics = route.as_ref().map(|r| Arc::clone(&r.metrics));
    let mut response = match route {
        Some(route) if route.pause.is_paused() => paused(&route, &correlation_id),
        Some(route) => (route.serve)(route, request, &correlation_id, &path).await,
        None => problem(
            StatusCode::NOT_FOUND,
            "Not Found",
            &format!("no pipeline serves `{path}`"),
            json!({ "correlation_id": correlation_id }),
        ),
    };
    if let Some(metrics) = metrics {
        metrics.answered(response.status().as_u16(), started.elapsed());
    }
    if let Ok(value) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert(CORRELATION_HEADER, value);
    }
    response
}

/// The answer of a paused pipeline's route: `503`, come back after the route's
/// `retry_after_secs` (the body is not read). It is given before the route's authentication,
/// so it names neither the pipeline nor anything else of it.
fn paused(route: &Route, correlation_id: &str) -> Response {
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        "this path is paused by an operator; send the request again later",
        json!({ "correlation_id": correlation_id, "paused": true }),
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(route.config.retry_after_secs.max(1)),
    );
    response
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
        (
            Payload::Json(document)
            | Payload::Parsed {
                value: document, ..
            },
            _,
        ) => document,
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

/// Seconds for `Retry-After`: the failure's own (an upstream's breaker cool-down), rounded
/// up, else the route's default.
pub(super) fn retry_after_secs(failure: &Failure, default: u64) -> u64 {
    failure
        .retry_after
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .map_or(default, |s| s.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

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
