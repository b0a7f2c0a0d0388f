//! `tether-relay`: pairs an agent's producer channel with its viewers over websockets
//! (`PROTOCOL.md` §7). The binary is a thin CLI over `serve`, so tests and embedders run the
//! same code path as the daemon.
//!
//! - `config`: command line, environment and secret files.
//! - `handshake`: StreamOpen, query and token checks.
//! - `registry`: the only home of channel state (rings, cursors, floors).
//! - `ring`: the byte-bounded replay ring.
//! - `splice`: the per-connection pumps.
//! - `throttle`: the producer rate limit.
//! - `metrics`: Prometheus counters.

pub mod config;
pub mod handshake;
pub mod metrics;
pub mod registry;
pub mod ring;
pub mod splice;
pub mod throttle;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Cli, RelayConfig, Secret};

use metrics::{Metrics, RejectReason};
use registry::{Limits, Registry};

/// State shared by every route and connection.
#[derive(Debug)]
pub struct Shared {
    pub config: RelayConfig,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the relay starts shutting down.
    pub shutdown: CancellationToken,
    connections: TaskTracker,
    /// One permit per connection still in its handshake (`max_pending_opens`).
    pending_opens: Arc<Semaphore>,
}

impl Shared {
    pub fn new(config: RelayConfig) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        let limits = Limits { ring_bytes: config.ring_bytes, viewer_queue_bytes: config.viewer_queue_bytes };
        Arc::new(Shared {
            registry: Registry::new(limits, metrics.clone()),
            metrics,
            pending_opens: Arc::new(Semaphore::new(config.max_pending_opens)),
            config,
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
        })
    }
}

/// The relay's routes: `/stream`, `/healthz`, `/metrics`.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/stream", get(stream))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .with_state(shared)
}

async fn stream(
    ws: WebSocketUpgrade,
    Query(query): Query<HashMap<String, String>>,
    State(shared): State<Arc<Shared>>,
) -> Response {
    // Refused before the upgrade: a flood of connections that never authenticate cannot make
    // the relay hold more than `max_pending_opens` unverified sockets (and their messages).
    let Ok(pending) = shared.pending_opens.clone().try_acquire_owned() else {
        shared.metrics.open_rejected(RejectReason::TooManyPending);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many stream opens in progress; retry").into_response();
    };
    let max = shared.config.max_message_bytes;
    let tracker = shared.connections.clone();
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| tracker.track_future(splice::run(socket, query, shared, pending)))
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let body = shared.metrics.render(shared.registry.gauges());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

/// Serves on `listener` until `shutdown` resolves, then tells every peer (StreamClose) and
/// waits up to `shutdown_grace` for the connections to finish.
pub async fn serve(
    listener: TcpListener,
    config: RelayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shared = Shared::new(config);
    let reaper =
        tokio::spawn(shared.registry.clone().run_reaper(shared.config.reap_after, shared.shutdown.clone()));
    let token = shared.shutdown.clone();
    let app = router(shared.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: closing every stream");
            token.cancel();
        })
        .await?;
    shared.shutdown.cancel();
    shared.connections.close();
    if tokio::time::timeout(shared.config.shutdown_grace, shared.connections.wait()).await.is_err() {
        tracing::warn!(
            open = shared.connections.len(),
            "some connections did not finish within the shutdown grace"
        );
    }
    reaper.abort();
    Ok(())
}
