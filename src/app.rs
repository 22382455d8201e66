//! The one seam to start pkd: [`start`] runs everything a node serves (its groups, their
//! duties, the sinks, the gateway, the HTTP servers) on sockets the caller has bound, until
//! the caller's shutdown token is cancelled. `pkd serve` parses, binds, waits for signals
//! and calls it; tests call it on port 0 and stop it at will.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::duties::Duties;
use crate::duties::sinks::{Sinks, SinksConfig};
use crate::gateway::{Gateway, GatewayConfig};
use crate::http::server::{self, ServeOptions};
use crate::http::{self, ClientState};
use crate::replication::network::NetworkConfig;
use crate::replication::node::{Node, NodeConfig, NodeError};
use crate::tls::{Reloading, ServerFiles, TlsError};

/// Everything a node needs besides its sockets.
#[derive(Clone, Debug)]
pub struct AppConfig {
    pub node: NodeConfig,
    /// In a cluster: the network's settings (its listener comes in [`Listeners::cluster`]).
    pub network: Option<NetworkConfig>,
    pub gateway: GatewayConfig,
    pub sinks: SinksConfig,
    /// The admin API's bearer token (its listener comes in [`Listeners::admin`]).
    pub admin_token: Option<String>,
    /// HTTPS and `wss://` on the client and admin listeners; plain without.
    pub tls: Option<ServerFiles>,
}

/// The sockets a node serves on, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// App clients (`/ws`), the gift service and the read API.
    pub client: TcpListener,
    /// The admin API, if it is on.
    pub admin: Option<TcpListener>,
    /// Node-to-node traffic, in a cluster.
    pub cluster: Option<TcpListener>,
}

/// Why the app did not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("reading a listener's address: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A running node and everything around it.
pub struct App {
    node: Node,
    duties: Duties,
    sinks: Sinks,
    gateway: Arc<Gateway>,
    client_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    servers: TaskTracker,
    shutdown: CancellationToken,
    /// Cancelled by the admin API's `POST /admin/drain`.
    drain_requested: CancellationToken,
}

/// Starts the node on `listeners` and returns once it is ready (every group has a leader
/// and, where this node leads, has applied its log) and its servers accept requests. It
/// runs until `shutdown` is cancelled; then [`App::stopped`] returns once everything has
/// stopped.
pub async fn start(config: AppConfig, listeners: Listeners, shutdown: CancellationToken) -> Result<App, AppError> {
    let admin = match (listeners.admin, config.admin_token) {
        (Some(listener), Some(token)) => Some((listener, token)),
        (None, _) => None,
        (Some(_), None) => return Err(AppError::Config("the admin listener needs an admin token".to_owned())),
    };
    let tls = config.tls.map(Reloading::load).transpose()?;
    let client_addr = listeners.client.local_addr()?;
    let admin_addr = admin.as_ref().map(|(listener, _)| listener.local_addr()).transpose()?;
    let node = match (config.network, listeners.cluster) {
        (None, None) => Node::start(config.node).await?,
        (Some(network), Some(listener)) => Node::start_clustered(config.node, network, listener).await?,
        _ => return Err(AppError::Config("a cluster needs both its settings and its listener".to_owned())),
    };
    crate::telemetry::exporter();
    let duties = Duties::start(&node);
    let sinks = Sinks::start(&node, config.sinks);
    let gateway = Gateway::start(&node, config.gateway);
    let servers = TaskTracker::new();
    let drain_requested = CancellationToken::new();
    let client_router = http::client_router(ClientState::new(gateway.clone(), sinks.results()));
    if let Some(tls) = &tls {
        tls.watch(&servers, shutdown.clone());
    }
    let client_options = ServeOptions::client(tls.clone());
    servers.spawn(server::serve(listeners.client, client_router, client_options, shutdown.clone()));
    http::console::cluster::answer_peers(gateway.clone(), sinks.metrics(), sinks.results(), drain_requested.clone());
    if let Some((listener, token)) = admin {
        let admin_router = http::admin_router(http::AdminSetup {
            gateway: gateway.clone(),
            token,
            sinks: sinks.metrics(),
            drain: drain_requested.clone(),
            closing: shutdown.clone(),
        });
        servers.spawn(server::serve(listener, admin_router, ServeOptions::admin(tls), shutdown.clone()));
    }
    if node.network().is_some() {
        // A node back from a drain (a restart, a rolling upgrade) takes part again.
        let undraining = node.clone();
        servers.spawn(async move {
            if let Err(error) = undraining.undrain().await {
                tracing::warn!(%error, "could not clear this node's drain mark");
            }
        });
    }
    tracing::info!(node = node.id(), %client_addr, ?admin_addr, "serving");
    Ok(App { node, duties, sinks, gateway, client_addr, admin_addr, servers, shutdown, drain_requested })
}

impl App {
    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    pub fn sinks(&self) -> &Sinks {
        &self.sinks
    }

    /// The client listener's address (app clients, the gift API, the read API).
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The admin listener's address, if the admin API is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Cancelled when an operator asks this node to drain and stop (`POST /admin/drain`).
    pub fn drain_requested(&self) -> CancellationToken {
        self.drain_requested.clone()
    }

    /// Drains the node before it stops: it stops taking connections (`/readyz` says so),
    /// hands every group it leads to another node (waiting up to `wait`), then closes its
    /// sessions with a reconnect hint (close code 1012). Cancel the shutdown token next.
    pub async fn drain(&self, wait: Duration) {
        tracing::info!("draining");
        self.gateway.drain_accepting();
        let still_led = self.node.drain(wait).await;
        if !still_led.is_empty() {
            tracing::warn!(
                ?still_led,
                "groups still led here at the end of the drain; they elect anew once this node stops"
            );
        }
        self.gateway.drain();
        // Let the sessions send their close frames before the servers stop.
        tokio::time::sleep(Duration::from_millis(200)).await;
        tracing::info!("drained");
    }

    /// Waits for the shutdown token, then stops everything in order: the HTTP servers
    /// (they finish the requests under way), the sinks, the duties, the gateway, and last
    /// the node's groups.
    pub async fn stopped(self) {
        self.shutdown.cancelled().await;
        self.servers.close();
        self.servers.wait().await;
        tracing::info!("shutting down");
        let step = std::time::Instant::now();
        self.sinks.shutdown().await;
        tracing::debug!(took = ?step.elapsed(), "sinks stopped");
        let step = std::time::Instant::now();
        self.duties.stop().await;
        tracing::debug!(took = ?step.elapsed(), "duties stopped");
        let step = std::time::Instant::now();
        self.gateway.stop().await;
        tracing::debug!(took = ?step.elapsed(), "gateway stopped");
        let step = std::time::Instant::now();
        self.node.shutdown().await;
        tracing::debug!(took = ?step.elapsed(), "groups stopped");
    }

    /// Cancels the shutdown token and waits until everything has stopped.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.stopped().await;
    }
}
