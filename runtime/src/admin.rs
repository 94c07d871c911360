//! The admin listener: `/health/live`, `/health/ready`, `/metrics`, `GET /admin/pipelines`,
//! `POST /admin/reload`, `POST /admin/pipelines/<name>/pause` and `/resume`, `GET
//! /openapi.json`.
//!
//! Every request that is not a `GET` or `HEAD` (`POST /admin/reload`, pause, resume) passes the
//! [`AdminGuard`]: with a token configured (`[admin] token_file`, or `GRIDFLOW_ADMIN_TOKEN`) it
//! needs `Authorization: Bearer <token>` (`401` problem+json otherwise, compared in constant
//! time); without one, only loopback clients are answered (`403` problem+json otherwise).
//! Probes and scrapes (`GET`) stay open.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::engine::reload::ReloadHandle;
use crate::kafka::KafkaSettings;
use crate::sources::route::problem;

/// What the admin endpoints report.
#[derive(Clone, Default)]
pub struct AdminState {
    /// Set once the pipelines were loaded.
    pub loaded: Arc<AtomicBool>,
    /// Last broker probe result.
    pub broker_reachable: Arc<AtomicBool>,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// The reload task, for `/admin/*`.
    pub reload: Option<ReloadHandle>,
    /// The ingress routes, for `/openapi.json`.
    pub routes: Option<Arc<crate::sources::HttpRoutes>>,
    /// The process's producers, for the fault injection of debug builds.
    pub producers: Option<crate::kafka::Producers>,
    /// Who may call the mutating endpoints.
    pub guard: Arc<AdminGuard>,
}

/// The environment variable holding the admin token when `[admin] token_file` is not set.
pub const ADMIN_TOKEN_ENV: &str = "GRIDFLOW_ADMIN_TOKEN";

/// The shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Where the admin token comes from.
#[derive(Debug, Clone, PartialEq)]
enum TokenSource {
    /// Re-read on each mutating request.
    File(PathBuf),
    /// Read once at start.
    Env,
}

/// Who may call the mutating admin endpoints: the holders of the token, or (without a
/// token) loopback clients.
#[derive(Debug, Default)]
pub struct AdminGuard {
    source: Option<TokenSource>,
    /// SHA-256 of the token in force (the last good one read from the file).
    token: Mutex<Option<[u8; 32]>>,
}

/// Why a mutating admin request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRefusal {
    /// A token is configured and the request has no `Authorization: Bearer`: `401`.
    NoToken,
    /// A token is configured and the request presents another one: `401`.
    WrongToken,
    /// No token is configured and the client is not on loopback: `403`.
    NotLoopback,
}

fn read_token(text: &str, from: &str) -> Result<[u8; 32], String> {
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{from} is empty"));
    }
    if token.len() < MIN_TOKEN_LEN || token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "{from}: the admin token must be at least {MIN_TOKEN_LEN} printable characters without spaces (e.g. `openssl rand -base64 32`)"
        ));
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

/// The decision, apart from where the token comes from: `expected` is the SHA-256 of the token
/// in force (`None`: no token configured), `peer` the client's address, `presented` the
/// bearer token of the request.
pub fn decide(
    expected: Option<&[u8; 32]>,
    peer: Option<IpAddr>,
    presented: Option<&str>,
) -> Result<(), AdminRefusal> {
    match expected {
        Some(expected) => {
            let presented = presented.ok_or(AdminRefusal::NoToken)?;
            let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
            if bool::from(digest.ct_eq(expected)) {
                Ok(())
            } else {
                Err(AdminRefusal::WrongToken)
            }
        }
        None if peer.is_some_and(|ip| ip.to_canonical().is_loopback()) => Ok(()),
        None => Err(AdminRefusal::NotLoopback),
    }
}

/// The bearer token of `headers`, if any (blank: none).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl AdminGuard {
    /// The guard of `[admin]`: `token_file` (empty: unset), else `GRIDFLOW_ADMIN_TOKEN` as
    /// `env` gives it. An unreadable, empty or short token is an error (gridflow does not
    /// start).
    pub fn new(
        token_file: Option<&std::path::Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<AdminGuard, String> {
        let token_file = token_file.filter(|p| !p.as_os_str().is_empty());
        let from_env = env(ADMIN_TOKEN_ENV);
        match (token_file, from_env) {
            (Some(path), Some(_)) => Err(format!(
                "[admin] token_file ({}) and {ADMIN_TOKEN_ENV} are both set: give one",
                path.display()
            )),
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("[admin] token_file: cannot read {}: {e}", path.display())
                })?;
                let token = read_token(&text, &format!("[admin] token_file {}", path.display()))?;
                Ok(AdminGuard {
                    source: Some(TokenSource::File(path.to_path_buf())),
                    token: Mutex::new(Some(token)),
                })
            }
            (None, Some(value)) => Ok(AdminGuard {
                source: Some(TokenSource::Env),
                token: Mutex::new(Some(read_token(&value, ADMIN_TOKEN_ENV)?)),
            }),
            (None, None) => Ok(AdminGuard::default()),
        }
    }

    /// True when a token is configured.
    pub fn has_token(&self) -> bool {
        self.source.is_some()
    }

    /// The token in force: the file is re-read (a rotated token applies at once); a file that
    /// cannot be read or holds no valid token keeps the last good one (logged, counted).
    fn current(&self) -> Option<[u8; 32]> {
        let mut token = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(TokenSource::File(path)) = &self.source {
            let read = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|text| read_token(&text, &format!("{}", path.display())));
            match read {
                Ok(new) => *token = Some(new),
                Err(e) => {
                    crate::metrics::access_list_reload("admin_token", "failed");
                    tracing::error!(error = %e, "Admin token file not read; the last good token stays in force.");
                }
            }
        }
        *token
    }

    /// Lets `peer` in with the request's `headers`, or says why not.
    pub fn check(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Result<(), AdminRefusal> {
        decide(
            self.current().as_ref(),
            peer.map(|p| p.ip()),
            bearer(headers),
        )
    }
}

/// Runs before every admin route: `GET`/`HEAD` pass, anything else needs the guard's yes.
async fn guard(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let refusal = match state.guard.check(peer, request.headers()) {
        Ok(()) => return next.run(request).await,
        Err(refusal) => refusal,
    };
    let peer_text = peer.map(|p| p.to_string()).unwrap_or_default();
    let (reason, status, title, detail) = match refusal {
        AdminRefusal::NoToken => (
            "no_token",
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "this admin endpoint needs `Authorization: Bearer <admin token>`",
        ),
        AdminRefusal::WrongToken => (
            "wrong_token",
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the admin token is not accepted",
        ),
        AdminRefusal::NotLoopback => (
            "not_loopback",
            StatusCode::FORBIDDEN,
            "Forbidden",
            "no admin token is configured: this endpoint answers only to loopback clients (set [admin] token_file or GRIDFLOW_ADMIN_TOKEN)",
        ),
    };
    crate::metrics::admin_refused(reason);
    tracing::warn!(peer = %peer_text, method = %request.method(), path = %request.uri().path(), reason, "Admin request refused.");
    let mut response = problem(status, title, detail, json!({}));
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

impl AdminState {
    /// Probes the broker every `every` until `shutdown`, updating `broker_reachable`.
    pub fn watch_broker(
        &self,
        kafka: KafkaSettings,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let flag = Arc::clone(&self.broker_reachable);
        tokio::spawn(async move {
            loop {
                let ok = kafka.reachable(Duration::from_secs(3)).await;
                crate::metrics::broker_reachable(ok);
                if flag.swap(ok, Ordering::SeqCst) != ok {
                    if ok {
                        tracing::info!("Broker reachable.");
                    } else {
                        tracing::warn!(brokers = %kafka.brokers, "Broker unreachable.");
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    let router = Router::new();
    // Debug builds only, and only when the environment asks for it: tests of the recovery
    // from a fatal Kafka client error (see `inject_fatal_error`).
    #[cfg(debug_assertions)]
    let router = if std::env::var_os(FAULT_INJECTION_ENV).is_some_and(|v| v == "1") {
        router.route(
            "/admin/test/kafka-fatal-error",
            axum::routing::post(inject_fatal_error),
        )
    } else {
        router
    };
    router
        .route(
            "/health/live",
            get(|| async { (StatusCode::OK, axum::Json(json!({"status": "live"}))) }),
        )
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/admin/pipelines", get(pipelines))
        .route("/openapi.json", get(openapi))
        .route("/admin/reload", axum::routing::post(reload))
        .route(
            "/admin/pipelines/{name}/pause",
            axum::routing::post(|state, name| set_paused(state, name, true)),
        )
        .route(
            "/admin/pipelines/{name}/resume",
            axum::routing::post(|state, name| set_paused(state, name, false)),
        )
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "Not Found",
                "no such admin endpoint",
                json!({}),
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// `1` turns on the test-only fault injection endpoints of a debug build.
#[cfg(debug_assertions)]
pub const FAULT_INJECTION_ENV: &str = "GRIDFLOW_TEST_FAULT_INJECTION";

/// `POST /admin/test/kafka-fatal-error?client=stream|request|consumer`: the producer's client
/// (or every Kafka source's consumer) fails as a fenced idempotent producer does.
#[cfg(debug_assertions)]
async fn inject_fatal_error(
    State(state): State<AdminState>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(producers) = &state.producers else {
        return problem(StatusCode::NOT_FOUND, "Not Found", "no producer", json!({}));
    };
    let caller_waits = match query.get("client").map(String::as_str) {
        Some("consumer") => {
            tracing::warn!("Injecting a fatal error into every Kafka consumer (test).");
            crate::kafka::consumer_faults().send_modify(|n| *n += 1);
            return axum::Json(json!({"client": "consumer"})).into_response();
        }
        Some("request") => true,
        Some("stream") | None => false,
        Some(other) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                &format!("unknown client `{other}` (stream, request, consumer)"),
                json!({}),
            )
        }
    };
    let producer = producers.for_pipeline(caller_waits);
    let generation = producer.current().number();
    tracing::warn!(
        client = producer.role().label(),
        generation,
        "Injecting a fatal error into the Kafka producer (test)."
    );
    match producer.inject_fatal_error("injected by POST /admin/test/kafka-fatal-error") {
        Ok(()) => axum::Json(json!({"client": producer.role().label(), "generation": generation}))
            .into_response(),
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            &e.to_string(),
            json!({}),
        ),
    }
}

/// Pipelines whose sink failed every delivery for longer than
/// [`NOT_DELIVERING_AFTER`](crate::sinks::NOT_DELIVERING_AFTER): name → (since, last error).
fn not_delivering() -> std::collections::BTreeMap<String, (String, String)> {
    crate::sinks::DeliveryHealth::not_delivering(crate::sinks::NOT_DELIVERING_AFTER)
        .into_iter()
        .map(|(name, since, error)| {
            let since = time::OffsetDateTime::from(since)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            (name, (since, error))
        })
        .collect()
}

async fn ready(State(state): State<AdminState>) -> Response {
    let loaded = state.loaded.load(Ordering::SeqCst);
    let broker = state.broker_reachable.load(Ordering::SeqCst);
    let stuck = not_delivering();
    if loaded && broker && stuck.is_empty() {
        (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response()
    } else {
        let names: Vec<&String> = stuck.keys().collect();
        let detail = match (loaded, broker) {
            (false, _) => "pipelines are not loaded yet".to_string(),
            (_, false) => "the Kafka broker is unreachable".to_string(),
            _ => format!(
                "pipeline(s) {} cannot deliver (every delivery failed for {} s or more)",
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                crate::sinks::NOT_DELIVERING_AFTER.as_secs()
            ),
        };
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not Ready",
            &detail,
            json!({"pipelines_loaded": loaded, "broker_reachable": broker, "pipelines_not_delivering": names}),
        )
    }
}

fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `POST /admin/pipelines/<name>/pause` (`paused`) or `/resume`: idempotent; `404` for a
/// pipeline that is not running. Answers the pipeline's pause state, and whether this
/// request changed it.
async fn set_paused(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    paused: bool,
) -> Response {
    let Some(handle) = &state.reload else {
        return problem(
            StatusCode::NOT_FOUND,
            "Not Found",
            "reload is not enabled",
            json!({}),
        );
    };
    match handle.pauses().set(&name, paused) {
        Ok((pause, changed)) => axum::Json(json!({
            "pipeline": name,
            "paused": pause.is_paused(),
            "paused_since": pause.since().map(rfc3339),
            "changed": changed,
        }))
        .into_response(),
        Err(e) => problem(
            StatusCode::NOT_FOUND,
            "Not Found",
            &e.to_string(),
            json!({"pipeline": name}),
        ),
    }
}

async fn pipelines(State(state): State<AdminState>) -> Response {
    match &state.reload {
        Some(handle) => {
            let (pipelines, restart_required) = handle.views();
            let paused = handle.pauses().paused();
            let stuck = not_delivering();
            // A running pipeline whose sink fails every delivery says so.
            let pipelines: Vec<serde_json::Value> = pipelines
                .into_iter()
                .map(|view| {
                    let mut value = serde_json::to_value(&view).unwrap_or_default();
                    // Paused by an operator, since when (live, not as of the last reload).
                    let since = paused.get(&view.name).filter(|_| view.version.is_some());
                    value["paused"] = json!(since.is_some());
                    value["paused_since"] = json!(since.copied().map(rfc3339));
                    if let Some((since, error)) =
                        stuck.get(&view.name).filter(|_| view.state != "stopped")
                    {
                        value["state"] = json!("not_delivering");
                        value["delivery"] = json!({"failing_since": since, "last_error": error});
                    }
                    value
                })
                .collect();
            axum::Json(json!({"pipelines": pipelines, "restart_required": restart_required}))
                .into_response()
        }
        None => problem(
            StatusCode::NOT_FOUND,
            "Not Found",
            "reload is not enabled",
            json!({}),
        ),
    }
}

async fn openapi(State(state): State<AdminState>) -> Response {
    match &state.routes {
        Some(routes) => axum::Json(crate::sources::openapi::document(routes)).into_response(),
        None => problem(StatusCode::NOT_FOUND, "Not Found", "no ingress", json!({})),
    }
}

async fn reload(State(state): State<AdminState>) -> Response {
    let Some(handle) = &state.reload else {
        return problem(
            StatusCode::NOT_FOUND,
            "Not Found",
            "reload is not enabled",
            json!({}),
        );
    };
    match handle.reload("admin request").await {
        Some(report) => axum::Json(report).into_response(),
        None => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "gridflow is shutting down",
            json!({}),
        ),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            "Not Found",
            "metrics are not enabled",
            json!({}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(value) = authorization {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn without_a_token_only_loopback_clients_may_mutate() {
        let guard = AdminGuard::new(None, |_| None).unwrap();
        assert!(!guard.has_token());
        let at = |ip: &str| Some(SocketAddr::new(ip.parse().unwrap(), 4000));
        for ip in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(guard.check(at(ip), &headers(None)), Ok(()), "{ip}");
        }
        for ip in [
            "10.0.0.7",
            "192.168.1.2",
            "::ffff:10.0.0.7",
            "fe80::1",
            "0.0.0.0",
        ] {
            assert_eq!(
                guard.check(at(ip), &headers(Some("Bearer anything-at-all-here"))),
                Err(AdminRefusal::NotLoopback),
                "{ip}"
            );
        }
        assert_eq!(
            guard.check(None, &headers(None)),
            Err(AdminRefusal::NotLoopback)
        );
    }

    #[test]
    fn with_a_token_everyone_needs_it() {
        let token = "q+Vx/3kP0bYVq8cJ0QJx3q0b2Yk9y8zUuQ1c9hV1mX0=";
        let guard = AdminGuard::new(None, |name| {
            (name == ADMIN_TOKEN_ENV).then(|| format!("{token}\n"))
        })
        .unwrap();
        let local = Some(SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(
            guard.check(local, &headers(None)),
            Err(AdminRefusal::NoToken)
        );
        assert_eq!(
            guard.check(local, &headers(Some("Bearer "))),
            Err(AdminRefusal::NoToken)
        );
        assert_eq!(
            guard.check(local, &headers(Some(token))),
            Err(AdminRefusal::NoToken)
        );
        assert_eq!(
            guard.check(
                local,
                &headers(Some("Bearer q+Vx/3kP0bYVq8cJ0QJx3q0b2Yk9y8zUuQ1c9hV1mX0"))
            ),
            Err(AdminRefusal::WrongToken)
        );
        assert_eq!(
            guard.check(local, &headers(Some(&format!("Bearer {token}")))),
            Ok(())
        );
        let remote = Some(SocketAddr::from(([10, 1, 2, 3], 1)));
        assert_eq!(
            guard.check(remote, &headers(Some(&format!("bearer  {token}")))),
            Ok(())
        );
    }

    #[test]
    fn a_token_file_is_read_checked_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        assert!(AdminGuard::new(Some(&path), |_| None)
            .unwrap_err()
            .contains("cannot read"));
        std::fs::write(&path, "\n").unwrap();
        assert!(AdminGuard::new(Some(&path), |_| None)
            .unwrap_err()
            .contains("empty"));
        std::fs::write(&path, "short").unwrap();
        assert!(AdminGuard::new(Some(&path), |_| None)
            .unwrap_err()
            .contains("at least 16"));
        std::fs::write(&path, "first-token-0123456789\n").unwrap();
        assert!(AdminGuard::new(Some(&path), |_| Some("x".repeat(20)))
            .unwrap_err()
            .contains("both set"));
        // An empty token_file (`${GRIDFLOW_ADMIN_TOKEN_FILE:-}`) means unset.
        assert!(!AdminGuard::new(Some(std::path::Path::new("")), |_| None)
            .unwrap()
            .has_token());
        let guard = AdminGuard::new(Some(&path), |_| None).unwrap();
        let local = Some(SocketAddr::from(([127, 0, 0, 1], 1)));
        let with = |t: &str| headers(Some(&format!("Bearer {t}")));
        assert_eq!(guard.check(local, &with("first-token-0123456789")), Ok(()));
        std::fs::write(&path, "second-token-0123456789").unwrap();
        assert_eq!(
            guard.check(local, &with("first-token-0123456789")),
            Err(AdminRefusal::WrongToken)
        );
        assert_eq!(guard.check(local, &with("second-token-0123456789")), Ok(()));
        // Broken: the last good token stays.
        std::fs::write(&path, "").unwrap();
        assert_eq!(guard.check(local, &with("second-token-0123456789")), Ok(()));
        assert_eq!(
            guard.check(local, &headers(None)),
            Err(AdminRefusal::NoToken)
        );
    }
}
