//! Each worker's Prometheus endpoint: the `metrics` recorder plus a small
//! HTTP server answering `GET /metrics`.

use aerie_proto::metric_names as m;
use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Installs the process-wide recorder with explicit histogram buckets.
pub fn install() -> Result<PrometheusHandle> {
    let seconds = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    let lengths: Vec<f64> = (1..=16).map(|x| x as f64).collect();
    let batch = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full(m::TARGET_ACCEPT_LENGTH.into()), &lengths)?
        .set_buckets_for_metric(Matcher::Full(m::TARGET_BATCH_SIZE.into()), &batch)?
        .install_recorder()
        .context("installing the Prometheus recorder")
}

/// A JSON view a worker fills in once it runs (a target: its adaptive
/// speculation budget), served at `GET /debug/spec_budget`.
pub type DebugView = Arc<std::sync::OnceLock<Box<dyn Fn() -> serde_json::Value + Send + Sync>>>;

/// Serves `/metrics`, `/health` (200 while `ready`, else 503: readiness for
/// Kubernetes and load balancers), `/live` (200: the process answers) and
/// `/debug/spec_budget` (404 until `debug` is filled) on `listener` until the
/// process ends.
pub async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle, ready: Arc<AtomicBool>, debug: DebugView) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(move || std::future::ready(handle.render())))
        .route("/live", axum::routing::get(|| async { "ok" }))
        .route(
            "/debug/spec_budget",
            axum::routing::get(move || {
                let view = debug.get().map(|f| f());
                async move {
                    match view {
                        Some(v) => (axum::http::StatusCode::OK, axum::Json(v)),
                        None => (axum::http::StatusCode::NOT_FOUND, axum::Json(serde_json::json!({ "error": "only target workers have a speculation budget" }))),
                    }
                }
            }),
        )
        .route(
            "/health",
            axum::routing::get(move || {
                let up = ready.load(Ordering::Acquire);
                async move {
                    if up {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready or draining")
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("metrics endpoint stopped: {e}");
    }
}
