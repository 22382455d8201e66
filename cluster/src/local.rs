//! [`LocalCluster`]: real `pkd serve` processes on loopback, each with its own data
//! directory, for tests, benches and fault drills.
//!
//! Node `i` listens on 127.0.0.`i` (Linux routes all of 127.0.0.0/8 to loopback). Its
//! cluster port is picked once and kept across restarts, because the other nodes know it;
//! the client and admin ports are chosen by the kernel (port 0) at every start and read
//! from the lines `pkd serve` prints. A node's output goes to `node-<id>.log` in the
//! cluster's directory. Set `PKD_LOCAL_CLUSTER_DIR` to keep that directory after the run.
//!
//! With [`LocalOptions::proxy`], every node-to-node link goes through a [`LinkProxy`] the
//! launcher owns: each node's advertised cluster address is the proxy's listener in front
//! of its real one, and [`LocalCluster::links`] cuts or slows links while the nodes run.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::client::AdminClient;
use crate::proxy::{LinkProxy, Links};

/// How long a node may take to print its listening lines.
const START_WAIT: Duration = Duration::from_secs(30);

/// Why the launcher failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("node {node} did not start: {reason} (see {log})")]
    NotStarted { node: u64, reason: String, log: String },
    #[error("node {node} did not stop: {reason} (see {log})")]
    NotStopped { node: u64, reason: String, log: String },
    #[error("no node {0}")]
    NoNode(u64),
    #[error("node {0} is declared already")]
    Declared(u64),
}

/// How to launch the nodes.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// The `pkd` binary, e.g. `env!("CARGO_BIN_EXE_pkd")` in a test of the pkd package.
    pub binary: PathBuf,
    /// Nodes 1..=this form the initial cluster.
    pub nodes: u64,
    pub arenas: u32,
    pub cluster_secret: String,
    pub admin_token: String,
    pub gift_token: String,
    /// More `pkd serve` arguments for every node (e.g. `--dev-auth`).
    pub extra_args: Vec<String>,
    /// The log filter (`--log`).
    pub log: String,
    /// Start every node with `--join`: nothing is initialized until the admin API's
    /// `init` ([`LocalCluster::members`] gives its argument).
    pub join: bool,
    /// Route the node-to-node links through a [`LinkProxy`] (off by default), for fault
    /// drills that cut or slow them.
    pub proxy: bool,
}

impl LocalOptions {
    /// Three nodes, two arenas, dev auth, fixed test secrets.
    pub fn new(binary: impl Into<PathBuf>) -> LocalOptions {
        LocalOptions {
            binary: binary.into(),
            nodes: 3,
            arenas: 2,
            cluster_secret: "local-cluster-secret-0123456789".to_owned(),
            admin_token: "local-admin-token-0123456789".to_owned(),
            gift_token: "local-gift-token-0123456789".to_owned(),
            extra_args: vec!["--dev-auth".to_owned()],
            log: "info".to_owned(),
            join: false,
            proxy: false,
        }
    }
}

/// One node of the cluster and, while it runs, its process.
pub struct LocalNode {
    pub id: u64,
    /// Node-to-node address the other nodes dial (fixed for the node's life): the node's
    /// own listener, or the proxy's in front of it.
    pub cluster_addr: SocketAddr,
    /// The node's own node-to-node listener (`--cluster-listen`): `cluster_addr` unless
    /// the links go through the proxy.
    pub cluster_listen: SocketAddr,
    /// WebSocket and gift API address of the current process.
    pub client_addr: SocketAddr,
    /// Admin API address of the current process.
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// Started with `--join` (added by the admin API rather than in the initial `--peers`).
    join: bool,
    child: Option<Child>,
    stopped: bool,
}

impl LocalNode {
    /// The process id, while the node runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// Real `pkd serve` processes on loopback.
pub struct LocalCluster {
    options: LocalOptions,
    root: PathBuf,
    /// Removes the directory on drop, unless `PKD_LOCAL_CLUSTER_DIR` named one.
    _temp: Option<tempfile::TempDir>,
    nodes: BTreeMap<u64, LocalNode>,
    /// The proxy of the node-to-node links, with [`LocalOptions::proxy`]. Declared after
    /// the nodes, so it stops after them.
    proxy: Option<LinkProxy>,
}

impl LocalCluster {
    /// Starts nodes 1..=`options.nodes` at once (the smallest id initializes the groups)
    /// and waits until each prints its listening lines.
    pub fn start(options: LocalOptions) -> Result<LocalCluster, LocalError> {
        let mut cluster = LocalCluster::prepare(options)?;
        cluster.launch()?;
        Ok(cluster)
    }

    /// Declares nodes 1..=`options.nodes` (their directories and node-to-node addresses)
    /// without starting them, so that a caller can seed their data directories (e.g. with
    /// `pkd restore`) before [`LocalCluster::launch`].
    pub fn prepare(options: LocalOptions) -> Result<LocalCluster, LocalError> {
        let (root, temp) = match std::env::var_os("PKD_LOCAL_CLUSTER_DIR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                std::fs::create_dir_all(&dir).map_err(|e| LocalError::Io(dir.display().to_string(), e))?;
                (dir, None)
            }
            None => {
                let temp = tempfile::TempDir::new().map_err(|e| LocalError::Io("temporary directory".into(), e))?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let proxy = match options.proxy {
            true => Some(LinkProxy::new().map_err(|e| LocalError::Io("starting the link proxy".into(), e))?),
            false => None,
        };
        let mut cluster = LocalCluster { options, root, _temp: temp, nodes: BTreeMap::new(), proxy };
        for id in 1..=cluster.options.nodes {
            cluster.declare(id, cluster.options.join)?;
        }
        Ok(cluster)
    }

    /// Starts every declared node at once and waits until each prints its listening lines.
    pub fn launch(&mut self) -> Result<(), LocalError> {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let mut waiting = Vec::new();
        for &id in &ids {
            waiting.push((id, self.spawn(id)?));
        }
        for (id, lines) in waiting {
            self.await_lines(id, lines)?;
        }
        Ok(())
    }

    /// Every node's id and node-to-node address: the argument of the admin API's `init`.
    pub fn members(&self) -> BTreeMap<u64, String> {
        self.nodes.values().map(|node| (node.id, node.cluster_addr.to_string())).collect()
    }

    /// The ids of every node declared so far, running or not.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn node(&self, id: u64) -> Result<&LocalNode, LocalError> {
        self.nodes.get(&id).ok_or(LocalError::NoNode(id))
    }

    /// An admin client for node `id`'s current process.
    pub fn admin(&self, id: u64) -> Result<AdminClient, LocalError> {
        Ok(AdminClient::new(self.node(id)?.admin_addr.to_string(), self.options.admin_token.clone()))
    }

    pub fn options(&self) -> &LocalOptions {
        &self.options
    }

    /// The switchboard of the node-to-node links, if they go through the proxy.
    pub fn links(&self) -> Option<Links> {
        self.proxy.as_ref().map(LinkProxy::links)
    }

    /// Kills node `id` with SIGKILL and reaps it: no chance to flush or say goodbye.
    pub fn kill(&mut self, id: u64) -> Result<(), LocalError> {
        let node = self.nodes.get_mut(&id).ok_or(LocalError::NoNode(id))?;
        if let Some(mut child) = node.child.take() {
            child.kill().map_err(|e| LocalError::Io(format!("killing node {id}"), e))?;
            child.wait().map_err(|e| LocalError::Io(format!("reaping node {id}"), e))?;
        }
        node.stopped = false;
        Ok(())
    }

    /// Stops node `id` as an orchestrator does: SIGTERM (the node drains: hands its groups
    /// off, closes its clients with 1012), then waits for the process to exit, for at most
    /// `limit`. Returns how long the exit took.
    pub fn terminate(&mut self, id: u64, limit: Duration) -> Result<Duration, LocalError> {
        let started = Instant::now();
        self.signal(id, "TERM")?;
        let node = self.nodes.get_mut(&id).ok_or(LocalError::NoNode(id))?;
        let Some(child) = node.child.as_mut() else { return Ok(Duration::ZERO) };
        loop {
            match child.try_wait().map_err(|e| LocalError::Io(format!("waiting for node {id}"), e))? {
                Some(_) => break,
                None if started.elapsed() > limit => {
                    let reason = format!("still running {limit:?} after SIGTERM");
                    return Err(LocalError::NotStopped { node: id, reason, log: node.log_path.display().to_string() });
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        node.child = None;
        node.stopped = false;
        Ok(started.elapsed())
    }

    /// Freezes node `id` with SIGSTOP: its sockets stay open but it answers nothing.
    pub fn pause(&mut self, id: u64) -> Result<(), LocalError> {
        self.signal(id, "STOP")?;
        if let Some(node) = self.nodes.get_mut(&id) {
            node.stopped = true;
        }
        Ok(())
    }

    /// Lets a paused node go on with SIGCONT.
    pub fn resume(&mut self, id: u64) -> Result<(), LocalError> {
        self.signal(id, "CONT")?;
        if let Some(node) = self.nodes.get_mut(&id) {
            node.stopped = false;
        }
        Ok(())
    }

    /// Starts node `id` again on its data directory and cluster address (killing it
    /// first if it still runs), and waits for its listening lines.
    pub fn restart(&mut self, id: u64) -> Result<(), LocalError> {
        self.kill(id)?;
        let lines = self.spawn(id)?;
        self.await_lines(id, lines)
    }

    /// Kills every node, then starts them all again at once.
    pub fn restart_all(&mut self) -> Result<(), LocalError> {
        let ids = self.ids();
        for &id in &ids {
            self.kill(id)?;
        }
        let mut waiting = Vec::new();
        for &id in &ids {
            waiting.push((id, self.spawn(id)?));
        }
        for (id, lines) in waiting {
            self.await_lines(id, lines)?;
        }
        Ok(())
    }

    /// Starts a new node `id` with `--join`: it initializes nothing and waits to be added
    /// through the admin API (`add_learner` with its `cluster_addr`). An id given up with
    /// [`LocalCluster::remove_node`] may come back this way, on an empty data directory.
    /// With the proxy, the new node's links go through it as every other node's.
    pub fn add_node(&mut self, id: u64) -> Result<&LocalNode, LocalError> {
        if self.nodes.contains_key(&id) {
            return Err(LocalError::Declared(id));
        }
        self.declare(id, true)?;
        let lines = self.spawn(id)?;
        self.await_lines(id, lines)?;
        self.node(id)
    }

    /// Kills node `id` (SIGKILL) and forgets it, as an operator retires a machine once the
    /// node is out of every group: its data directory is deleted (its log file stays, and
    /// goes on if the id comes back), and it is no longer started, restarted or named in
    /// `--peers`.
    pub fn remove_node(&mut self, id: u64) -> Result<(), LocalError> {
        self.kill(id)?;
        let node = self.nodes.remove(&id).ok_or(LocalError::NoNode(id))?;
        match std::fs::remove_dir_all(&node.data_dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(LocalError::Io(node.data_dir.display().to_string(), error))
            }
            _ => Ok(()),
        }
    }

    fn declare(&mut self, id: u64, join: bool) -> Result<(), LocalError> {
        let ip = loopback(id);
        let port = free_port(ip).map_err(|e| LocalError::Io(format!("finding a port on {ip}"), e))?;
        let cluster_listen = SocketAddr::from((ip, port));
        let cluster_addr = match &self.proxy {
            Some(proxy) => proxy
                .forward(id, SocketAddr::from((ip, 0)), cluster_listen)
                .map_err(|e| LocalError::Io(format!("the link proxy's listener on {ip}"), e))?,
            None => cluster_listen,
        };
        let data_dir = self.root.join(format!("node-{id}"));
        let log_path = self.root.join(format!("node-{id}.log"));
        let unset = SocketAddr::from((ip, 0));
        let node = LocalNode {
            id,
            cluster_addr,
            cluster_listen,
            client_addr: unset,
            admin_addr: unset,
            data_dir,
            log_path,
            join,
            child: None,
            stopped: false,
        };
        self.nodes.insert(id, node);
        Ok(())
    }

    fn peers(&self) -> String {
        let peers: Vec<String> = self.nodes.values().map(|node| format!("{}={}", node.id, node.cluster_addr)).collect();
        peers.join(",")
    }

    /// Starts node `id`'s process; returns the channel its listening lines arrive on.
    fn spawn(&mut self, id: u64) -> Result<mpsc::Receiver<String>, LocalError> {
        let peers = self.peers();
        let options = &self.options;
        let node = self.nodes.get_mut(&id).ok_or(LocalError::NoNode(id))?;
        let ip = loopback(id);
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(|e| LocalError::Io(node.log_path.display().to_string(), e))?;
        let _ = writeln!(log, "---- starting node {id}");
        let stderr = log.try_clone().map_err(|e| LocalError::Io(node.log_path.display().to_string(), e))?;
        let mut command = Command::new(&options.binary);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--node-id", &id.to_string()])
            .args(["--arenas", &options.arenas.to_string()])
            .args(["--listen", &format!("{ip}:0")])
            .args(["--cluster-listen", &node.cluster_listen.to_string()])
            .args(["--peers", &peers])
            .args(["--cluster-secret", &options.cluster_secret])
            .args(["--admin-listen", &format!("{ip}:0")])
            .args(["--admin-token", &options.admin_token])
            .args(["--gift-token", &options.gift_token])
            .args(["--log", &options.log])
            .args(&options.extra_args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        if node.join {
            command.arg("--join");
        }
        let mut child =
            command.spawn().map_err(|e| LocalError::Io(format!("starting {}", options.binary.display()), e))?;
        let stdout = child.stdout.take();
        node.child = Some(child);
        node.stopped = false;
        let (sender, receiver) = mpsc::channel();
        if let Some(stdout) = stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with("pkd ") && line.contains(" listening on ") {
                        let _ = sender.send(line.clone());
                    }
                    let _ = writeln!(log, "{line}");
                }
            });
        }
        Ok(receiver)
    }

    /// Reads the three listening lines of node `id` and records its addresses.
    fn await_lines(&mut self, id: u64, lines: mpsc::Receiver<String>) -> Result<(), LocalError> {
        let node = self.nodes.get_mut(&id).ok_or(LocalError::NoNode(id))?;
        let failed = |reason: String, node: &LocalNode| LocalError::NotStarted {
            node: id,
            reason,
            log: node.log_path.display().to_string(),
        };
        let deadline = Instant::now() + START_WAIT;
        let (mut client, mut admin) = (None, None);
        while client.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => return Err(failed("no listening lines in time".into(), node)),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(failed("the process exited".into(), node)),
            };
            let Some((what, address)) = line.split_once(" listening on ") else { continue };
            let Ok(address) = address.trim().parse::<SocketAddr>() else {
                return Err(failed(format!("unreadable line {line:?}"), node));
            };
            match what {
                "pkd" => client = Some(address),
                "pkd admin" => admin = Some(address),
                _ => {}
            }
        }
        if let (Some(client), Some(admin)) = (client, admin) {
            node.client_addr = client;
            node.admin_addr = admin;
        }
        Ok(())
    }

    fn signal(&self, id: u64, signal: &str) -> Result<(), LocalError> {
        let pid = self.node(id)?.pid().ok_or(LocalError::NoNode(id))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .map_err(|e| LocalError::Io(format!("kill -{signal} {pid}"), e))?;
        if status.success() {
            Ok(())
        } else {
            Err(LocalError::Io(format!("kill -{signal} {pid}"), std::io::Error::other(status.to_string())))
        }
    }

    /// The directory holding the nodes' data directories and logs.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let ids = self.ids();
        for id in ids {
            let _ = self.kill(id);
        }
    }
}

/// Node `id`'s loopback address: 127.0.0.`id` (ids 1..=254).
fn loopback(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, u8::try_from(id.clamp(1, 254)).unwrap_or(254))
}

/// A port that was free on `ip` a moment ago.
fn free_port(ip: Ipv4Addr) -> std::io::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}
