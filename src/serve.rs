//! `pkd serve`: flags and environment into an [`AppConfig`], the listeners bound, then
//! [`app::start`] until SIGINT or SIGTERM.

use crate::app::{self, AppConfig, Listeners};
use crate::duties::sinks::SinksConfig;
use crate::gateway::{GatewayConfig, RtmCredentials};
use crate::logs::LogFormat;
use crate::replication::network::{NetworkConfig, NetworkTls};
use crate::replication::node::NodeConfig;
use crate::tls::{Reloading, ServerFiles};
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Every setting is a flag, a `PKD_*` environment variable and a key of the settings file
/// (`--config`).
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A TOML settings file: each key a flag's name (`node-id = 2`). Flags and `PKD_*`
    /// variables win over it. `pkd config init` writes a starting file.
    #[arg(long, env = "PKD_CONFIG")]
    pub config: Option<PathBuf>,
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
    /// Log filter, e.g. `info` or `pkd=debug,info` (openraft stays at `warn` unless the
    /// filter names it). Logs go to stderr.
    #[arg(long, env = "PKD_LOG", default_value = "info")]
    pub log: String,
    /// `text` (coloured on a terminal) or `json` (one object per line).
    #[arg(long, env = "PKD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    /// A PEM certificate chain: the client and admin listeners serve HTTPS and `wss://`
    /// with it (with --tls-key). The files are read again when they change.
    #[arg(long, env = "PKD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "PKD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// This node's PEM certificate on node-to-node links (with --cluster-tls-key and
    /// --cluster-tls-ca): every link is TLS, and a peer's certificate must come from the CA.
    #[arg(long, env = "PKD_CLUSTER_TLS_CERT")]
    pub cluster_tls_cert: Option<PathBuf>,
    /// The PEM private key of --cluster-tls-cert.
    #[arg(long, env = "PKD_CLUSTER_TLS_KEY")]
    pub cluster_tls_key: Option<PathBuf>,
    /// The PEM certificate of the CA that signs every node's certificate.
    #[arg(long, env = "PKD_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// The PEM certificate of the CA that signs Redis's certificate, for a `rediss://`
    /// --redis-url (the public roots are not trusted).
    #[arg(long, env = "PKD_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// A first look: one node with development tokens and short PKs, simulated anchors
    /// matching and a simulated gift service, and a page to watch them (`/watch`). Data
    /// goes to a temporary directory unless --data-dir is given. Not for production.
    #[arg(long, conflicts_with_all = ["peers", "cluster_listen", "join", "login_secret"])]
    pub demo: bool,
}

impl ServeArgs {
    /// Where the sinks write: MySQL if given, else SQLite in the data directory.
    fn sinks_config(&self) -> SinksConfig {
        let results_url = match &self.mysql_url {
            Some(url) => url.clone(),
            None => {
                let path = self.sqlite_path.clone().unwrap_or_else(|| self.data_dir.join("results.sqlite"));
                format!("sqlite://{}?mode=rwc", path.display())
            }
        };
        SinksConfig {
            results_url: Some(results_url),
            redis_url: self.redis_url.clone(),
            redis_ca: self.redis_ca.clone(),
            ..SinksConfig::default()
        }
    }

    /// Every setting, checked: what [`app::start`] needs besides its listeners.
    pub fn app_config(&self) -> anyhow::Result<AppConfig> {
        let gateway = self.gateway_config()?;
        let network = self.network_config()?;
        let admin_token = self.admin_token()?;
        let node = NodeConfig {
            node_id: self.node_id,
            arena_count: self.arenas,
            join: self.join,
            ..NodeConfig::single(&self.data_dir)
        };
        let tls = self.tls_files()?;
        Ok(AppConfig { node, network, gateway, sinks: self.sinks_config(), admin_token, tls })
    }

    /// The client and admin listeners' certificate, if they serve TLS.
    fn tls_files(&self) -> anyhow::Result<Option<ServerFiles>> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(certificate), Some(key)) => {
                Ok(Some(ServerFiles { certificate: certificate.clone(), key: key.clone() }))
            }
            _ => bail!("set both --tls-cert and --tls-key, or neither"),
        }
    }

    /// TLS on node-to-node links, if asked for.
    fn network_tls(&self) -> anyhow::Result<Option<NetworkTls>> {
        match (&self.cluster_tls_cert, &self.cluster_tls_key, &self.cluster_tls_ca) {
            (None, None, None) => Ok(None),
            (Some(certificate), Some(key), Some(ca)) => {
                let files = ServerFiles { certificate: certificate.clone(), key: key.clone() };
                let server = Reloading::load(files).context("the node's cluster certificate")?;
                let client = Arc::new(crate::tls::client_config(ca).context("the cluster's CA")?);
                Ok(Some(NetworkTls { server, client }))
            }
            _ => bail!("set all of --cluster-tls-cert, --cluster-tls-key and --cluster-tls-ca, or none"),
        }
    }

    /// The cluster's network settings, if any: all three of `--cluster-listen`, `--peers`
    /// and `--cluster-secret`, or none of them.
    fn network_config(&self) -> anyhow::Result<Option<NetworkConfig>> {
        let (peers, secret) = match (self.cluster_listen, &self.peers, &self.cluster_secret) {
            (None, None, None) => {
                if self.join {
                    bail!("--join needs the cluster settings (--cluster-listen, --peers, --cluster-secret)");
                }
                return Ok(None);
            }
            (Some(_), Some(peers), Some(secret)) => (peers, secret),
            _ => bail!("set all of --cluster-listen, --peers and --cluster-secret, or none of them"),
        };
        if secret.len() < 16 {
            bail!("the cluster secret must be at least 16 bytes");
        }
        let peers = parse_members("--peers", peers)?;
        if !peers.contains_key(&self.node_id) {
            bail!("--peers must include this node ({})", self.node_id);
        }
        let mut network = NetworkConfig::new(self.node_id, self.cluster_name.clone(), secret.as_bytes(), peers);
        network.tls = self.network_tls()?;
        Ok(Some(network))
    }

    /// The admin API's token, if the admin API is on.
    fn admin_token(&self) -> anyhow::Result<Option<String>> {
        match (self.admin_listen, &self.admin_token) {
            (None, _) => Ok(None),
            (Some(_), None) => bail!("--admin-listen needs --admin-token (PKD_ADMIN_TOKEN)"),
            (Some(_), Some(token)) if token.len() < 16 => bail!("the admin token must be at least 16 bytes"),
            (Some(_), Some(token)) => Ok(Some(token.clone())),
        }
    }

    fn gateway_config(&self) -> anyhow::Result<GatewayConfig> {
        if self.demo {
            return Ok(GatewayConfig {
                dev_auth: true,
                gift_token: Some(crate::demo::DEMO_GIFT_TOKEN.to_owned()),
                ..GatewayConfig::default()
            });
        }
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

/// Parses a member list, `1=127.0.0.1:7700,2=127.0.0.2:7700`, given with `flag`.
pub fn parse_members(flag: &str, members: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut parsed = BTreeMap::new();
    for entry in members.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let Some((id, address)) = entry.split_once('=') else {
            bail!("{flag}: expected id=host:port, found {entry:?}");
        };
        let id: u64 = id.trim().parse().with_context(|| format!("{flag}: bad node id in {entry:?}"))?;
        let address = address.trim();
        if address.rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_err()) {
            bail!("{flag}: expected host:port for node {id}, found {address:?}");
        }
        if parsed.insert(id, address.to_owned()).is_some() {
            bail!("{flag}: node {id} is listed twice");
        }
    }
    if parsed.is_empty() {
        bail!("{flag} is empty");
    }
    Ok(parsed)
}

pub fn run(mut args: ServeArgs) -> anyhow::Result<()> {
    crate::tls::install_default_provider();
    crate::logs::init(&args.log, args.log_format).context("bad --log filter")?;
    // A demo's data is thrown away with the process, unless a directory was named.
    let _demo_dir =
        match args.demo && std::env::var_os("PKD_DATA_DIR").is_none() && args.data_dir == Path::new("pkd-data") {
            true => {
                let dir = tempfile::TempDir::with_prefix("pkd-demo-").context("a temporary data directory")?;
                args.data_dir = dir.path().to_path_buf();
                Some(dir)
            }
            false => None,
        };
    let config = args.app_config()?;
    let limit = crate::procfs::raise_open_files_limit();
    tracing::debug!(limit, "open-file limit");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(&args, config))
}

/// Binds every listener first, so that a port in use is found before any state is created;
/// then starts the app and runs it until SIGINT or SIGTERM.
async fn serve(args: &ServeArgs, config: AppConfig) -> anyhow::Result<()> {
    let bind = |address: SocketAddr| async move {
        TcpListener::bind(address).await.with_context(|| format!("binding {address}"))
    };
    let cluster = match &config.network {
        Some(_) => Some(bind(args.cluster_listen.context("a cluster needs --cluster-listen")?).await?),
        None => None,
    };
    let client = bind(args.listen).await?;
    let admin = match args.admin_listen {
        Some(address) if config.admin_token.is_some() => Some(bind(address).await?),
        _ => None,
    };
    // Launchers read these lines to find the ports when an address ends in :0: the cluster
    // port at once (the other nodes need it to elect), the others once the node is ready.
    if let Some(cluster) = &cluster {
        println!("pkd cluster listening on {}", cluster.local_addr()?);
    }
    let shutdown = CancellationToken::new();
    let app = app::start(config, Listeners { client, admin, cluster }, shutdown.clone())
        .await
        .context("starting the node")?;
    if let Some(address) = app.admin_addr() {
        println!("pkd admin listening on {address}");
    }
    println!("pkd listening on {}", app.client_addr());
    if args.demo {
        start_demo(&app, shutdown.clone()).await?;
    }
    // The first SIGTERM or SIGINT (or the admin API's drain) drains the node, then stops
    // it; a second one stops it at once.
    let drain_requested = app.drain_requested();
    tokio::select! {
        () = shutdown_signal() => {}
        () = drain_requested.cancelled() => {}
        (group, why) = app.node().group_failure() => {
            // Fail-stop: a group whose storage failed cannot go on here, and a node that
            // kept serving without it would look alive while it was not. Its supervisor
            // restarts it on its data directory, once the disk is fixed.
            tracing::error!(%group, %why, "a raft group stopped on an error; the node stops");
            shutdown.cancel();
            app.stopped().await;
            anyhow::bail!("raft group {group} stopped: {why}");
        }
    }
    let now = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::warn!("second signal: stopping without finishing the drain");
        now.cancel();
    });
    tokio::select! {
        () = app.drain(DRAIN_WAIT) => {}
        () = shutdown.cancelled() => {}
    }
    shutdown.cancel();
    app.stopped().await;
    Ok(())
}

/// Sets the demo's short PKs and starts its simulated anchors and gift service.
async fn start_demo(app: &app::App, shutdown: CancellationToken) -> anyhow::Result<()> {
    app.node().set_config("pk_duration", crate::demo::DEMO_DURATION).await.context("the demo's PK phases")?;
    let address = app.client_addr().to_string();
    tokio::spawn(crate::demo::run(address.clone(), shutdown));
    let room = crate::demo::DEMO_ANCHORS[0];
    println!("pkd demo: simulated anchors match and a simulated gift service sends gifts; PKs last about a minute.");
    println!("pkd demo: watch one live at http://{address}/watch?room={room}&token=dev:9001");
    Ok(())
}

/// How long a drain waits for this node's groups to find other leaders.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

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
