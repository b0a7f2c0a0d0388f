//! `tether-relay`: pairs an agent's producer channel with its viewers over websockets
//! (`PROTOCOL.md` §7). The binary is a thin CLI over `serve`, so tests and embedders run the
//! same code path as the daemon.
//!
//! - `accept`: the accept loop, connection caps and the header-read timeout.
//! - `cluster`: replicas paired through NATS (`--nats-url`).
//! - `config`: command line, environment and secret files.
//! - `handshake`: StreamOpen, query and token checks.
//! - `registry`: the only home of channel state (rings, cursors, floors).
//! - `ring`: the byte-bounded replay ring.
//! - `splice`: the per-connection pumps.
//! - `throttle`: the producer rate limit.
//! - `tally`: per-key counts against a cap (addresses, tokens).
//! - `metrics`: Prometheus counters.
//! - `view`: the browser viewer page (`/view`).

pub mod accept;
pub mod cluster;
pub mod config;
pub mod handshake;
pub mod metrics;
pub mod registry;
pub mod ring;
pub mod splice;
pub mod tally;
pub mod throttle;
pub mod view;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Extension, Query, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, http::Uri};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Cli, RelayConfig, Secret};

use accept::{ClientAddress, Gate, address_key};
use metrics::{Metrics, RejectReason};
use registry::{Limits, Registry};
use tally::{Slot, Tally};

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
    /// Connections in their handshake per source address (`max_pending_opens_per_address`).
    pending_per_address: Tally<IpAddr>,
    /// The connection caps.
    pub gate: Gate,
    /// Cluster mode: this replica's NATS membership (set once connected, by `serve`).
    cluster: std::sync::OnceLock<Arc<cluster::Cluster>>,
}

/// A connection's place among those in their handshake; dropped once its open is decided.
#[derive(Debug)]
pub struct PendingOpen {
    _place: OwnedSemaphorePermit,
    _from_address: Slot<IpAddr>,
}

impl Shared {
    pub fn new(config: RelayConfig) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        let limits = Limits {
            ring_bytes: config.ring_bytes,
            viewer_queue_bytes: config.viewer_queue_bytes,
            unclaimed_input_bytes: config.unclaimed_input_bytes,
            waits_per_token: config.max_waits_per_token,
            probe_timeout: config.producer_probe_timeout,
        };
        Arc::new(Shared {
            registry: Registry::new(limits, metrics.clone()),
            metrics,
            pending_opens: Arc::new(Semaphore::new(config.max_pending_opens)),
            pending_per_address: Tally::new(config.max_pending_opens_per_address),
            gate: Gate::new(&config),
            config,
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// The cluster this relay is a replica of (`None`: it works alone).
    pub fn cluster(&self) -> Option<Arc<cluster::Cluster>> {
        self.cluster.get().cloned()
    }
}

/// The relay's routes: `/stream`, `/healthz`, `/metrics`. `/stream` needs the peer's address,
/// which [`accept::run`] puts on every request.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/stream", get(stream))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .merge(view::routes())
        .with_state(shared)
}

/// What a connection over a connection cap is served: health and metrics, nothing else.
pub fn overflow_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(|uri: Uri| async move {
            let why = format!("{}: the relay is at its connection limit; retry", uri.path());
            (StatusCode::SERVICE_UNAVAILABLE, why)
        })
        .with_state(shared)
}

/// Read and write buffer of each websocket (bytes).
const SOCKET_BUFFER_BYTES: usize = 16 << 10;

async fn stream(
    ws: WebSocketUpgrade,
    Query(query): Query<HashMap<String, String>>,
    Extension(ClientAddress(from)): Extension<ClientAddress>,
    State(shared): State<Arc<Shared>>,
) -> Response {
    // Refused before the upgrade: a flood of connections that never authenticate cannot make
    // the relay hold more than `max_pending_opens` unverified sockets (and their messages),
    // nor one address take all of those places.
    let Some(from_address) = shared.pending_per_address.try_acquire(address_key(from)) else {
        shared.metrics.open_rejected(RejectReason::TooManyPendingFromAddress);
        let why = "too many stream opens in progress from this address; retry";
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    };
    let Ok(place) = shared.pending_opens.clone().try_acquire_owned() else {
        shared.metrics.open_rejected(RejectReason::TooManyPending);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many stream opens in progress; retry").into_response();
    };
    let pending = PendingOpen { _place: place, _from_address: from_address };
    let max = shared.config.max_message_bytes;
    let tracker = shared.connections.clone();
    // Small socket buffers, allocated up front per connection (a bigger message still arrives
    // whole, read in more steps): tungstenite's 128 KiB defaults made 1024 pending
    // unauthenticated sockets hold 128 MiB (faults_relay) and a replica with a thousand
    // channels weigh 100 MiB (bench-relay-cluster).
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(SOCKET_BUFFER_BYTES)
        .on_upgrade(move |socket| tracker.track_future(splice::run(socket, query, shared, pending)))
}

/// "ok", or 503 while a cluster replica is cut off from NATS.
async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.cluster.get() {
        Some(c) if !c.healthy() => (StatusCode::SERVICE_UNAVAILABLE, "NATS unreachable").into_response(),
        _ => "ok".into_response(),
    }
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let mut gauges = shared.registry.gauges();
    gauges.connections = shared.gate.open() as u64;
    gauges.overflow_connections = shared.gate.overflowing() as u64;
    gauges.pending_opens =
        (shared.config.max_pending_opens - shared.pending_opens.available_permits()) as u64;
    let mut body = shared.metrics.render(gauges);
    if let Some(c) = shared.cluster.get() {
        body.push_str(&c.render());
    }
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
    view::log_availability();
    if let Some(cluster) = &shared.config.cluster {
        let _ = shared.cluster.set(cluster::Cluster::start(&shared, cluster).await?);
    }
    let reaper =
        tokio::spawn(shared.registry.clone().run_reaper(shared.config.reap_after, shared.shutdown.clone()));
    let token = shared.shutdown.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: closing every stream");
        token.cancel();
    });
    accept::run(listener, shared.clone(), router(shared.clone()), overflow_router(shared.clone())).await;
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
