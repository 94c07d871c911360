//! The admin listener: `/health/live`, `/health/ready`, `/metrics`, `GET /admin/pipelines`,
//! `POST /admin/reload`, `GET /openapi.json`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::engine::reload::ReloadHandle;
use crate::kafka::KafkaSettings;
use crate::sources::http::problem;

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
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "Not Found",
                "no such admin endpoint",
                json!({}),
            )
        })
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

async fn pipelines(State(state): State<AdminState>) -> Response {
    match &state.reload {
        Some(handle) => {
            let (pipelines, restart_required) = handle.views();
            let stuck = not_delivering();
            // A running pipeline whose sink fails every delivery says so.
            let pipelines: Vec<serde_json::Value> = pipelines
                .into_iter()
                .map(|view| {
                    let mut value = serde_json::to_value(&view).unwrap_or_default();
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
