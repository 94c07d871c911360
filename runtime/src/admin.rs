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
    Router::new()
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

async fn ready(State(state): State<AdminState>) -> Response {
    let loaded = state.loaded.load(Ordering::SeqCst);
    let broker = state.broker_reachable.load(Ordering::SeqCst);
    if loaded && broker {
        (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response()
    } else {
        let detail = match (loaded, broker) {
            (false, _) => "pipelines are not loaded yet",
            _ => "the Kafka broker is unreachable",
        };
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not Ready",
            detail,
            json!({"pipelines_loaded": loaded, "broker_reachable": broker}),
        )
    }
}

async fn pipelines(State(state): State<AdminState>) -> Response {
    match &state.reload {
        Some(handle) => {
            let (pipelines, restart_required) = handle.views();
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
