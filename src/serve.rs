//! `pkd serve`: one node (alone, or in a cluster), its raft groups, the gateway and the admin
//! API, until SIGINT or SIGTERM.

use crate::gateway::{Gateway, GatewayConfig, RtmCredentials};
use crate::network::NetworkConfig;
use crate::node::{Node, NodeConfig};
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Every setting is a flag and a `PKD_*` environment variable.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where the node keeps its raft logs and snapshots (created on first start).
    #[arg(long, env = "PKD_DATA_DIR", default_value = "pkd-data")]
    pub data_dir: PathBuf,
    /// This node's id in the cluster.
    #[arg(long, env = "PKD_NODE_ID", default_value_t = 1)]
    pub node_id: u64,
    /// Arena groups (PK shards). Fixed for the life of the cluster.
    #[arg(long, env = "PKD_ARENAS", default_value_t = 4)]
    pub arenas: u32,
    /// Address for app clients (`/ws`) and the gift API (`/internal/gifts`).
    #[arg(long, env = "PKD_LISTEN", default_value = "127.0.0.1:7600")]
    pub listen: SocketAddr,
    /// The secret shared with the app's login service.
    #[arg(long, env = "PKD_LOGIN_SECRET", hide_env_values = true)]
    pub login_secret: Option<String>,
    /// Accept `dev:<user id>` tokens. Development only.
    #[arg(long, env = "PKD_DEV_AUTH")]
    pub dev_auth: bool,
    /// The gift service's token for `/internal/gifts`; without it the gift API is off.
    #[arg(long, env = "PKD_GIFT_TOKEN", hide_env_values = true)]
    pub gift_token: Option<String>,
    #[arg(long, env = "PKD_RTM_APP_ID")]
    pub rtm_app_id: Option<String>,
    #[arg(long, env = "PKD_RTM_APP_CERTIFICATE", hide_env_values = true)]
    pub rtm_app_certificate: Option<String>,
    /// Log filter, e.g. `info` or `pkd=debug,info`.
    #[arg(long, env = "PKD_LOG", default_value = "info")]
    pub log: String,
    /// The app's MySQL database for settled results (`mysql://user:password@host:port/db`).
    /// Without it, results go to SQLite (see --sqlite-path).
    #[arg(long, env = "PKD_MYSQL_URL", hide_env_values = true)]
    pub mysql_url: Option<String>,
    /// The SQLite file for settled results when no --mysql-url is given
    /// (default: `<data-dir>/results.sqlite`).
    #[arg(long, env = "PKD_SQLITE_PATH")]
    pub sqlite_path: Option<PathBuf>,
    /// The Redis read cache (`redis://host:port/db`); without it, no cache is written.
    #[arg(long, env = "PKD_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Node-to-node address to listen on, e.g. 127.0.0.2:7700. With `--peers` and
    /// `--cluster-secret` it makes this node part of a cluster; without them it runs alone.
    #[arg(long, env = "PKD_CLUSTER_LISTEN")]
    pub cluster_listen: Option<SocketAddr>,
    /// Every node's id and node-to-node address, this one included:
    /// `1=127.0.0.1:7700,2=127.0.0.2:7700,3=127.0.0.3:7700`. On a first start, the
    /// smallest id makes them all members of every group (unless `--join`).
    #[arg(long, env = "PKD_PEERS")]
    pub peers: Option<String>,
    /// The secret every node of the cluster shares (at least 16 bytes).
    #[arg(long, env = "PKD_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// The cluster's name: nodes of differently named clusters refuse each other.
    #[arg(long, env = "PKD_CLUSTER_NAME", default_value = "pkd")]
    pub cluster_name: String,
    /// Start without initializing or waiting for the groups: the node becomes a member
    /// through the admin API (`pkd cluster init`, or `add-learner` then `promote`).
    #[arg(long, env = "PKD_JOIN")]
    pub join: bool,
    /// Address of the admin API (status, membership, leadership, config); off without it.
    #[arg(long, env = "PKD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// The bearer token of the admin API (at least 16 bytes).
    #[arg(long, env = "PKD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// A cluster's settings, checked.
struct ClusterSettings {
    listen: SocketAddr,
    network: NetworkConfig,
}

impl ServeArgs {
    /// Where the sinks write: MySQL if given, else SQLite in the data directory.
    fn sinks_config(&self) -> crate::sinks::SinksConfig {
        let results_url = match &self.mysql_url {
            Some(url) => url.clone(),
            None => {
                let path = self.sqlite_path.clone().unwrap_or_else(|| self.data_dir.join("results.sqlite"));
                format!("sqlite://{}?mode=rwc", path.display())
            }
        };
        crate::sinks::SinksConfig {
            results_url: Some(results_url),
            redis_url: self.redis_url.clone(),
            ..crate::sinks::SinksConfig::default()
        }
    }

    /// The cluster settings, if any: all three of `--cluster-listen`, `--peers` and
    /// `--cluster-secret`, or none of them.
    fn cluster_settings(&self) -> anyhow::Result<Option<ClusterSettings>> {
        let (listen, peers, secret) = match (self.cluster_listen, &self.peers, &self.cluster_secret) {
            (None, None, None) => {
                if self.join {
                    bail!("--join needs the cluster settings (--cluster-listen, --peers, --cluster-secret)");
                }
                return Ok(None);
            }
            (Some(listen), Some(peers), Some(secret)) => (listen, peers, secret),
            _ => bail!("set all of --cluster-listen, --peers and --cluster-secret, or none of them"),
        };
        if secret.len() < 16 {
            bail!("the cluster secret must be at least 16 bytes");
        }
        let peers = parse_peers(peers)?;
        if !peers.contains_key(&self.node_id) {
            bail!("--peers must include this node ({})", self.node_id);
        }
        let network = NetworkConfig::new(self.node_id, self.cluster_name.clone(), secret.as_bytes(), peers);
        Ok(Some(ClusterSettings { listen, network }))
    }

    /// The admin API's address and token, if it is on.
    fn admin_settings(&self) -> anyhow::Result<Option<(SocketAddr, String)>> {
        match (self.admin_listen, &self.admin_token) {
            (None, _) => Ok(None),
            (Some(_), None) => bail!("--admin-listen needs --admin-token (PKD_ADMIN_TOKEN)"),
            (Some(_), Some(token)) if token.len() < 16 => bail!("the admin token must be at least 16 bytes"),
            (Some(listen), Some(token)) => Ok(Some((listen, token.clone()))),
        }
    }

    fn gateway_config(&self) -> anyhow::Result<GatewayConfig> {
        if self.login_secret.is_none() && !self.dev_auth {
            bail!("set --login-secret (PKD_LOGIN_SECRET), or --dev-auth for development");
        }
        if self.login_secret.as_ref().is_some_and(|s| s.len() < 16) {
            bail!("the login secret must be at least 16 bytes");
        }
        if self.gift_token.as_ref().is_some_and(|s| s.len() < 16) {
            bail!("the gift token must be at least 16 bytes");
        }
        let rtm = match (&self.rtm_app_id, &self.rtm_app_certificate) {
            (Some(app_id), Some(app_certificate)) => {
                Some(RtmCredentials { app_id: app_id.clone(), app_certificate: app_certificate.clone() })
            }
            (None, None) => None,
            _ => bail!("set both --rtm-app-id and --rtm-app-certificate, or neither"),
        };
        Ok(GatewayConfig {
            login_secret: self.login_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            dev_auth: self.dev_auth,
            gift_token: self.gift_token.clone(),
            rtm,
            ..GatewayConfig::default()
        })
    }
}

/// Parses `1=127.0.0.1:7700,2=127.0.0.2:7700`.
fn parse_peers(peers: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut parsed = BTreeMap::new();
    for entry in peers.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let Some((id, address)) = entry.split_once('=') else {
            bail!("--peers: expected id=host:port, found {entry:?}");
        };
        let id: u64 = id.trim().parse().with_context(|| format!("--peers: bad node id in {entry:?}"))?;
        let address = address.trim();
        if address.rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_err()) {
            bail!("--peers: expected host:port for node {id}, found {address:?}");
        }
        if parsed.insert(id, address.to_owned()).is_some() {
            bail!("--peers: node {id} is listed twice");
        }
    }
    if parsed.is_empty() {
        bail!("--peers is empty");
    }
    Ok(parsed)
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("bad --log filter")?)
        .init();
    let gateway_config = args.gateway_config()?;
    let cluster = args.cluster_settings()?;
    let admin = args.admin_settings()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(args, gateway_config, cluster, admin))
}

async fn serve(
    args: ServeArgs,
    gateway_config: GatewayConfig,
    cluster: Option<ClusterSettings>,
    admin: Option<(SocketAddr, String)>,
) -> anyhow::Result<()> {
    let mut node_config = NodeConfig::single(&args.data_dir);
    node_config.node_id = args.node_id;
    node_config.arena_count = args.arenas;
    node_config.join = args.join;
    let node = match cluster {
        None => Node::start(node_config).await,
        Some(ClusterSettings { listen, network }) => {
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            let address = listener.local_addr()?;
            println!("pkd cluster listening on {address}");
            Node::start_clustered(node_config, network, listener).await
        }
    };
    let node = Arc::new(node.context("starting the node")?);
    let gateway = Gateway::start(node.clone(), gateway_config);
    let sinks = crate::sinks::Sinks::start(node.clone(), args.sinks_config());
    let metrics = sinks.metrics();
    let metrics_node = node.clone();
    let router = gateway.router().merge(crate::sinks::http::router(node.clone(), sinks.results())).route(
        "/metrics",
        axum::routing::get(move || async move {
            let mut text = metrics.snapshot().to_prometheus();
            text.push_str(&storage_metrics(metrics_node.flush_totals()));
            text
        }),
    );
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let admin_server = match admin {
        None => None,
        Some((listen, token)) => {
            let admin_listener =
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            let admin_address = admin_listener.local_addr()?;
            println!("pkd admin listening on {admin_address}");
            tracing::info!(address = %admin_address, "admin API on");
            let router = crate::admin::router(node.clone(), &token);
            let mut stopping = stopping.clone();
            Some(tokio::spawn(async move {
                axum::serve(admin_listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopping.wait_for(|stopped| *stopped).await;
                    })
                    .await
            }))
        }
    };
    // Tests and launchers read these lines to find the ports when an address ends in :0.
    println!("pkd listening on {address}");
    tracing::info!(%address, node = args.node_id, arenas = args.arenas, "serving");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        })
        .await?;
    if let Some(admin_server) = admin_server {
        let _ = admin_server.await;
    }
    drop(stopping);
    tracing::info!("shutting down");
    sinks.shutdown().await;
    drop(gateway);
    match Arc::try_unwrap(node) {
        Ok(node) => node.shutdown().await,
        Err(_) => tracing::warn!("node still in use at shutdown; its data is safe, the log is flushed per entry"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return interrupt.await.unwrap_or(()),
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    interrupt.await.unwrap_or(());
}

/// The database's flush counters in Prometheus text format.
fn storage_metrics(totals: pkd_storage::FlushTotals) -> String {
    format!(
        "# HELP pkd_storage_flushes_total Disk flushes (fsyncs) of the node's database.\n\
         # TYPE pkd_storage_flushes_total counter\n\
         pkd_storage_flushes_total {}\n\
         # HELP pkd_storage_flush_seconds_total Time spent in those flushes.\n\
         # TYPE pkd_storage_flush_seconds_total counter\n\
         pkd_storage_flush_seconds_total {}\n",
        totals.count,
        totals.busy.as_secs_f64()
    )
}
