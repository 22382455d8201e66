//! `pkd serve`: one node, its raft groups, the gateway, until SIGINT or SIGTERM.

use crate::gateway::{Gateway, GatewayConfig, RtmCredentials};
use crate::node::{Node, NodeConfig};
use anyhow::{Context, bail};
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

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("bad --log filter")?)
        .init();
    let gateway_config = args.gateway_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(args, gateway_config))
}

async fn serve(args: ServeArgs, gateway_config: GatewayConfig) -> anyhow::Result<()> {
    let mut node_config = NodeConfig::single(&args.data_dir);
    node_config.node_id = args.node_id;
    node_config.arena_count = args.arenas;
    let node = Arc::new(Node::start(node_config).await.context("starting the node")?);
    let gateway = Gateway::start(node.clone(), gateway_config);
    let sinks = crate::sinks::Sinks::start(node.clone(), args.sinks_config());
    let router = gateway.router().merge(crate::sinks::http::router(node.clone(), sinks.results()));
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    // Tests and launchers read this line to find the port when --listen ends in :0.
    println!("pkd listening on {address}");
    tracing::info!(%address, node = args.node_id, arenas = args.arenas, "serving");
    axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await?;
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
