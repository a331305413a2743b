//! The admin endpoint: `/healthz` (the process is alive), `/readyz` (the first configuration is programmed),
//! `/metrics` (Prometheus) and `/status` (every input object with its computed Gateway API status).
pub mod metrics;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};

pub use metrics::Metrics;

/// What the admin endpoint reports, shared with the agent loop.
#[derive(Default)]
pub struct AdminState {
    /// Set once the first configuration has been programmed into the kernel.
    pub ready: AtomicBool,
    pub metrics: Metrics,
    /// `objects_with_status` of the last translation (a Kubernetes `List`).
    pub status: RwLock<serde_json::Value>,
}

impl AdminState {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// Errors of the admin endpoint.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("binding the admin endpoint to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the admin address (so a port clash is reported before anything else starts) and returns the server.
pub async fn bind(
    addr: SocketAddr,
    state: Arc<AdminState>,
) -> Result<impl std::future::Future<Output = std::io::Result<()>>, AdminError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route("/status", get(status))
        .with_state(state);
    Ok(async move { axum::serve(listener, app).await })
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no configuration programmed yet\n",
        )
    }
}

async fn metrics_handler(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn status(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let body = state.status.read().expect("status lock").clone();
    axum::Json(body)
}
