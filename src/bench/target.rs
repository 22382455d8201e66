//! The cluster a run drives: nodes the bench starts (`--local N`) or a running cluster
//! (`--nodes`), how its clients authenticate, its admin API if the bench has one, and
//! what the bench can see of the nodes' processes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use pkd_cluster::api::{FaultSettings, GroupKind, GroupStatus, NodeStatus, StateDigests};
use pkd_cluster::{AdminClient, AppClient, Auth, ConnectOptions, GiftClient, Links, LocalCluster, LocalOptions};
use tokio::time::Instant;

use super::report::{LoadGeneratorSummary, NodeSample, NodeSummary};
use crate::procfs;
use crate::tokens::login;

/// The client version the bench's signed tokens claim: above any `version_control` gate.
pub const CLIENT_VERSION: u32 = 1_000_000;

/// How WebSocket clients get their login tokens.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// `dev:<user>` (the nodes run with `--dev-auth`).
    Dev,
    /// Tokens signed with the login secret the nodes share with the login service.
    Signed(Vec<u8>),
}

impl TokenSource {
    /// A token for `user`, valid for a day. A signed one names no country (every pair of
    /// the bench's anchors may meet) and an Android client of version [`CLIENT_VERSION`],
    /// so that the version gate lets it match.
    pub fn token(&self, user: u64) -> anyhow::Result<String> {
        match self {
            TokenSource::Dev => Ok(format!("dev:{user}")),
            TokenSource::Signed(secret) => {
                let claims = login::Claims {
                    user_id: login::UserId::new(user.to_string())?,
                    expires_at_ms: u64::try_from(pkd_cluster::app::wall_clock_ms())? + 86_400_000,
                    country: None,
                    platform: Some(login::Platform::Android),
                    client_version: Some(CLIENT_VERSION),
                };
                Ok(login::mint(secret, &claims))
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            TokenSource::Dev => "dev",
            TokenSource::Signed(_) => "signed",
        }
    }
}

/// How long a membership change through the admin API may take: an added learner must
/// catch up with every group first.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(60);

/// A local node's new process: its id, client and admin addresses, and process id.
type StartedNode = (u64, String, String, Option<u32>);

/// One node of the target.
pub struct TargetNode {
    pub id: u64,
    /// The client address (WebSocket and gift API); a local node gets a new one on restart.
    client: RwLock<String>,
    admin: RwLock<Option<String>>,
    pid: Mutex<Option<u32>>,
    data_dir: Option<PathBuf>,
    up: AtomicBool,
    /// A voter of every group, as far as the bench knows: false for a slot kept for a node
    /// not added yet ([`Target::with_spare_slot`]) and for a node removed.
    member: AtomicBool,
    restarts: AtomicU32,
}

impl TargetNode {
    pub fn client_address(&self) -> String {
        self.client.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// True while the node is a member whose process runs: the bench sends it clients and
    /// asks its admin API.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) && self.is_member()
    }

    /// True while the node is a voter of every group, as far as the bench knows (a node
    /// added during the run from its promotion on, until it is removed).
    pub fn is_member(&self) -> bool {
        self.member.load(Ordering::Relaxed)
    }

    pub fn pid(&self) -> Option<u32> {
        *self.pid.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a new process of this (local) node, which is up from now on.
    fn set_process(&self, client: String, admin: String, pid: Option<u32>) {
        *self.client.write().unwrap_or_else(std::sync::PoisonError::into_inner) = client;
        *self.admin.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(admin);
        *self.pid.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = pid;
        self.up.store(true, Ordering::Relaxed);
    }

    fn admin_address(&self) -> Option<String> {
        self.admin.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// The cluster under load.
pub struct Target {
    pub nodes: Vec<TargetNode>,
    pub tokens: TokenSource,
    pub gift_token: Option<String>,
    admin_token: Option<String>,
    pub arenas: Option<u32>,
    local: Option<Arc<Mutex<LocalCluster>>>,
    /// The local cluster's node-to-node links, when they go through the launcher's proxy.
    links: Option<Links>,
    /// TLS to the nodes' client and admin listeners (`--tls-ca`); in the clear if unset.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Where the cluster is and how to reach it, from the command line.
pub struct TargetSpec {
    pub local: Option<u64>,
    pub arenas: u32,
    pub nodes: Vec<String>,
    pub gift_token: Option<String>,
    pub login_secret: Option<String>,
    pub dev_auth: bool,
    pub admin: Vec<String>,
    pub admin_token: Option<String>,
    /// The Redis the --local nodes write their read cache to.
    pub redis: Option<String>,
    /// The CA that signs the running cluster's certificates: clients speak `wss://` and
    /// HTTPS to it.
    pub tls_ca: Option<PathBuf>,
}

impl Target {
    /// Starts the local cluster, or checks the remote one's settings.
    pub async fn open(spec: TargetSpec) -> anyhow::Result<Target> {
        match spec.local {
            Some(count) => Target::start_local(count, spec.arenas, "warn", spec.redis, false).await,
            None => Target::remote(spec),
        }
    }

    /// Starts `count` local nodes of this binary with `arenas` arena groups, logging at
    /// `log` (`pkd serve --log`), writing their read cache to `redis` if given, their
    /// node-to-node links through the launcher's proxy if `proxy` (see [`Target::links`]).
    pub async fn start_local(
        count: u64,
        arenas: u32,
        log: &str,
        redis: Option<String>,
        proxy: bool,
    ) -> anyhow::Result<Target> {
        let extra = redis.map(|url| vec!["--redis-url".to_owned(), url]).unwrap_or_default();
        Target::start_local_with_args(count, arenas, log, extra, proxy).await
    }

    /// [`Target::start_local`] with more `pkd serve` arguments for every node (e.g.
    /// `--mysql-url`, `--redis-url`).
    pub async fn start_local_with_args(
        count: u64,
        arenas: u32,
        log: &str,
        extra_args: Vec<String>,
        proxy: bool,
    ) -> anyhow::Result<Target> {
        if !(1..=9).contains(&count) {
            bail!("--local takes 1 to 9 nodes, not {count}");
        }
        let binary = std::env::current_exe().context("finding this pkd binary")?;
        let mut options = LocalOptions::new(binary);
        options.nodes = count;
        options.arenas = arenas;
        options.log = log.to_owned();
        options.proxy = proxy;
        options.extra_args.extend(extra_args);
        eprintln!("starting a local cluster of {count} nodes ({arenas} arenas)...");
        let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(options))
            .await
            .context("the launcher's thread")?
            .context("starting the local cluster")?;
        let mut nodes = Vec::new();
        for id in cluster.ids() {
            let node = cluster.node(id)?;
            nodes.push(TargetNode {
                id,
                client: RwLock::new(node.client_addr.to_string()),
                admin: RwLock::new(Some(node.admin_addr.to_string())),
                pid: Mutex::new(node.pid()),
                data_dir: Some(node.data_dir.clone()),
                up: AtomicBool::new(true),
                member: AtomicBool::new(true),
                restarts: AtomicU32::new(0),
            });
        }
        let options = cluster.options().clone();
        let links = cluster.links();
        eprintln!("local cluster up; its data and logs are in {}", cluster.root().display());
        Ok(Target {
            nodes,
            tokens: TokenSource::Dev,
            gift_token: Some(options.gift_token.clone()),
            admin_token: Some(options.admin_token.clone()),
            arenas: Some(arenas),
            local: Some(Arc::new(Mutex::new(cluster))),
            links,
            tls: None,
        })
    }

    fn remote(spec: TargetSpec) -> anyhow::Result<Target> {
        if spec.nodes.is_empty() {
            bail!("say which cluster: --local N to start one, or --nodes host:port,... for a running one");
        }
        let tokens = match (&spec.login_secret, spec.dev_auth) {
            (Some(secret), _) => TokenSource::Signed(secret.as_bytes().to_vec()),
            (None, true) => TokenSource::Dev,
            (None, false) => {
                bail!(
                    "WebSocket clients need tokens: set --login-secret (PKD_LOGIN_SECRET), or --dev-auth for nodes that accept dev:<user> tokens"
                )
            }
        };
        if !spec.admin.is_empty() && spec.admin_token.is_none() {
            bail!("--admin needs --admin-token (PKD_ADMIN_TOKEN)");
        }
        if spec.admin.len() > 1 && spec.admin.len() != spec.nodes.len() {
            bail!("give one --admin address, or one per node in --nodes order");
        }
        let tls = match &spec.tls_ca {
            Some(ca) => {
                crate::tls::install_default_provider();
                let config = crate::tls::client_config(ca).with_context(|| format!("--tls-ca {}", ca.display()))?;
                Some(Arc::new(config))
            }
            None => None,
        };
        let nodes = spec
            .nodes
            .iter()
            .enumerate()
            .map(|(index, address)| {
                let admin = match spec.admin.len() {
                    0 => None,
                    1 => Some(spec.admin[0].clone()),
                    _ => Some(spec.admin[index].clone()),
                };
                TargetNode {
                    id: index as u64 + 1,
                    client: RwLock::new(address.clone()),
                    admin: RwLock::new(admin),
                    pid: Mutex::new(None),
                    data_dir: None,
                    up: AtomicBool::new(true),
                    member: AtomicBool::new(true),
                    restarts: AtomicU32::new(0),
                }
            })
            .collect();
        Ok(Target {
            nodes,
            tokens,
            gift_token: spec.gift_token,
            admin_token: spec.admin_token,
            arenas: None,
            local: None,
            links: None,
            tls,
        })
    }

    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// The same target with one more slot in [`Target::nodes`], for a node that may join
    /// the local cluster while it runs (the next id): the slot is not a member until
    /// [`Target::add_node`]. The slots are fixed from here on, so that whoever holds the
    /// target may iterate them while members come and go; each says whether it is a
    /// member.
    pub fn with_spare_slot(mut self) -> Target {
        let id = self.nodes.iter().map(|node| node.id).max().unwrap_or(0) + 1;
        self.nodes.push(TargetNode {
            id,
            client: RwLock::new(String::new()),
            admin: RwLock::new(None),
            pid: Mutex::new(None),
            data_dir: None,
            up: AtomicBool::new(false),
            member: AtomicBool::new(false),
            restarts: AtomicU32::new(0),
        });
        self
    }

    /// The nodes that are members now (up or not), in id order.
    pub fn members(&self) -> Vec<&TargetNode> {
        self.nodes.iter().filter(|node| node.is_member()).collect()
    }

    /// The ids of [`Target::members`].
    pub fn member_ids(&self) -> Vec<u64> {
        self.members().iter().map(|node| node.id).collect()
    }

    /// True if the bench can reach an admin API (to set `t_config` rows, read raft
    /// indexes, move leaders).
    pub fn has_admin(&self) -> bool {
        self.admin_token.is_some() && self.nodes.iter().any(|node| node.admin_address().is_some())
    }

    /// The gift service's token, or why the run cannot send gifts.
    pub fn require_gift_token(&self) -> anyhow::Result<String> {
        self.gift_token.clone().context("this scenario sends gifts: set --gift-token (PKD_GIFT_TOKEN)")
    }

    /// The client address of the `index`-th node (modulo the count), or of the next one
    /// that is up.
    pub fn address_for(&self, index: usize) -> String {
        self.node_for(index).client_address()
    }

    /// The `index`-th node (modulo the count), or the next one that is up.
    pub fn node_for(&self, index: usize) -> &TargetNode {
        let count = self.nodes.len();
        (0..count)
            .map(|step| &self.nodes[(index + step) % count])
            .find(|node| node.is_up())
            .unwrap_or(&self.nodes[index % count])
    }

    /// Connects `user` to the `index`-th node (or the next one up), with lean buffers.
    pub async fn connect(&self, index: usize, user: u64) -> anyhow::Result<AppClient> {
        let token = self.tokens.token(user)?;
        let address = self.address_for(index);
        let options = ConnectOptions { tls: self.tls.clone(), ..ConnectOptions::lean() };
        Ok(AppClient::connect_with(&address, user, Auth::Bearer(token), &options).await?)
    }

    /// A gift client of the `index`-th node (or the next one up).
    pub fn gift_client(&self, index: usize) -> anyhow::Result<GiftClient> {
        let client =
            GiftClient::new(self.address_for(index), self.require_gift_token()?).with_timeout(Duration::from_secs(10));
        Ok(match &self.tls {
            Some(tls) => client.with_tls(tls.clone()),
            None => client,
        })
    }

    /// An admin client of `address`, over TLS if the bench was given a CA.
    fn admin_client(&self, address: String, token: String) -> AdminClient {
        let client = AdminClient::new(address, token).with_timeout(Duration::from_secs(5));
        match &self.tls {
            Some(tls) => client.with_tls(tls.clone()),
            None => client,
        }
    }

    /// Admin clients of the nodes that are up, first the `index`-th.
    fn admins(&self) -> Vec<(u64, AdminClient)> {
        let Some(token) = &self.admin_token else { return Vec::new() };
        let count = self.nodes.len();
        (0..count)
            .map(|index| &self.nodes[index])
            .filter(|node| node.is_up())
            .filter_map(|node| node.admin_address().map(|address| (node.id, self.admin_client(address, token.clone()))))
            .collect()
    }

    /// Sets a `t_config` row in every group through the first admin API that answers.
    pub async fn set_config(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let mut last = None;
        for (_, admin) in self.admins() {
            match admin.set_config(key, value).await {
                Ok(_) => return Ok(()),
                Err(error) => last = Some(error),
            }
        }
        match last {
            Some(error) => Err(error).with_context(|| format!("setting {key}={value}")),
            None => bail!("setting {key}: no admin API (--admin, --admin-token)"),
        }
    }

    /// Every reachable node's state digests (`GET /admin/digest`), asked of all nodes at
    /// once; a node that does not answer within 2 s is left out.
    pub async fn digests(&self) -> Vec<StateDigests> {
        let asks = self.admins().into_iter().map(|(_, admin)| async move {
            tokio::time::timeout(Duration::from_secs(2), admin.digest()).await.ok().and_then(Result::ok)
        });
        futures_util::future::join_all(asks).await.into_iter().flatten().collect()
    }

    /// Injects faults on node `id` (a build with the `fault-injection` feature).
    pub async fn set_faults(&self, id: u64, settings: &FaultSettings) -> anyhow::Result<FaultSettings> {
        let (_, admin) = self
            .admins()
            .into_iter()
            .find(|(node, _)| *node == id)
            .with_context(|| format!("node {id} is down or has no admin API"))?;
        admin.set_faults(settings).await.with_context(|| format!("injecting faults on node {id}"))
    }

    /// Every reachable node's status.
    pub async fn statuses(&self) -> Vec<NodeStatus> {
        let mut all = Vec::new();
        for (_, admin) in self.admins() {
            if let Ok(status) = admin.status().await {
                all.push(status);
            }
        }
        all
    }

    /// Waits (at most `limit`) until every group has a leader that every reachable node
    /// agrees on and that is the one the balancer prefers (voter `group % voters`), so the
    /// load does not start in the middle of leadership moves. Without an admin API it
    /// returns at once.
    pub async fn settle(&self, limit: Duration) -> bool {
        if !self.has_admin() {
            return true;
        }
        let deadline = Instant::now() + limit;
        loop {
            let statuses = self.statuses().await;
            if settled(&statuses) {
                return true;
            }
            if Instant::now() >= deadline {
                eprintln!("warning: leadership had not settled after {limit:?}; starting anyway");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The sum of the arena groups' last log indexes as one node sees them, to count the
    /// entries appended while measuring.
    pub async fn arena_log_total(&self) -> Option<u64> {
        let status = self.statuses().await.into_iter().next()?;
        Some(
            status
                .groups
                .iter()
                .filter(|group| group.kind == GroupKind::Arena)
                .map(|group| group.last_log_index.unwrap_or(0))
                .sum(),
        )
    }

    /// The leader of `group`, as the first reachable node sees it.
    pub async fn leader_of(&self, group: u64) -> Option<u64> {
        self.statuses().await.iter().find_map(|status| status.group(group).and_then(|group| group.leader))
    }

    /// The arena group ids, as the first reachable node lists them.
    pub async fn arena_groups(&self) -> Vec<u64> {
        let statuses = self.statuses().await;
        let Some(status) = statuses.first() else { return Vec::new() };
        status.groups.iter().filter(|group| group.kind == GroupKind::Arena).map(|group| group.id).collect()
    }

    /// Hands `group`'s leadership to `to` through an admin API.
    pub async fn transfer_leader(&self, group: u64, to: u64) -> anyhow::Result<Option<u64>> {
        let mut last = None;
        for (_, admin) in self.admins() {
            match admin.transfer_leader(group, to).await {
                Ok(reply) => return Ok(reply.leader),
                Err(error) => last = Some(error),
            }
        }
        match last {
            Some(error) => Err(error.into()),
            None => bail!("no admin API reachable"),
        }
    }

    /// Adds local node `id` (a slot that is not a member) to the running cluster, as an
    /// operator does: starts its process with `--join` on an empty data directory, adds it
    /// to every group as a learner through another member's admin API (answered once it
    /// has caught up), promotes it to voter, and waits until it is a voter that knows
    /// every group's leader. From then on it is a member: clients go to it as to the
    /// others. With the proxy, its links go through it too.
    pub async fn add_node(&self, id: u64) -> anyhow::Result<()> {
        let cluster = self.local.clone().context("only nodes the bench started (--local) can be added")?;
        let node = self.node(id)?;
        if node.is_member() {
            bail!("node {id} is a member already");
        }
        let (client, admin, pid, cluster_address) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut cluster = lock(&cluster);
            let node = cluster.add_node(id)?;
            Ok((node.client_addr.to_string(), node.admin_addr.to_string(), node.pid(), node.cluster_addr.to_string()))
        })
        .await??;
        node.set_process(client, admin, pid);
        let has_joined = |group: &GroupStatus| group.learners.contains(&id) || group.voters.contains(&id);
        self.change_membership(id, has_joined, |admin| {
            let address = cluster_address.clone();
            async move { admin.add_learner(id, address).await.map(|_| ()) }
        })
        .await
        .with_context(|| format!("adding node {id} as a learner"))?;
        let is_voter = |group: &GroupStatus| group.voters.contains(&id);
        self.change_membership(id, is_voter, |admin| async move { admin.promote(id).await.map(|_| ()) })
            .await
            .with_context(|| format!("promoting node {id}"))?;
        let own = self.admin_of(node).with_context(|| format!("node {id} has no admin API"))?;
        let deadline = Instant::now() + MEMBERSHIP_WAIT;
        loop {
            let status = own.status().await;
            let ready = status.as_ref().is_ok_and(|status| {
                !status.groups.is_empty()
                    && status.groups.iter().all(|group| group.voters.contains(&id) && group.leader.is_some())
            });
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {id} was promoted, but {MEMBERSHIP_WAIT:?} later it did not see itself a voter with a leader in every group: {status:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        node.member.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Takes member `id` out of every group through another member's admin API, as an
    /// operator does before retiring a machine. From then on it is not a member (no new
    /// clients, no admin requests), but its process runs on until
    /// [`Target::retire_node`].
    pub async fn remove_node(&self, id: u64) -> anyhow::Result<()> {
        let node = self.node(id)?;
        if !node.is_member() {
            bail!("node {id} is not a member");
        }
        let is_gone = |group: &GroupStatus| !group.learners.contains(&id) && !group.voters.contains(&id);
        self.change_membership(id, is_gone, |admin| async move { admin.remove(id).await.map(|_| ()) })
            .await
            .with_context(|| format!("removing node {id}"))?;
        node.member.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Stops local node `id`, removed from the cluster, and forgets it: its data
    /// directory is deleted, so that the id may join again afresh ([`Target::add_node`]).
    pub async fn retire_node(&self, id: u64) -> anyhow::Result<()> {
        let cluster = self.local.clone().context("only nodes the bench started (--local) can be retired")?;
        let node = self.node(id)?;
        if node.is_member() {
            bail!("node {id} is still a member: remove it first");
        }
        node.up.store(false, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || lock(&cluster).remove_node(id)).await??;
        *node.pid.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        Ok(())
    }

    /// Makes one membership change about node `id` through the admin API of each other
    /// member in turn, until one answers it made. When none does, the change still counts
    /// as made if every member's status shows `made` in every group (an answer lost while
    /// the change went through, e.g. the leader that made it stepped down).
    async fn change_membership<Change, Asked>(
        &self,
        id: u64,
        made: impl Fn(&GroupStatus) -> bool,
        change: Change,
    ) -> anyhow::Result<()>
    where
        Change: Fn(AdminClient) -> Asked,
        Asked: std::future::Future<Output = Result<(), pkd_cluster::ClientError>>,
    {
        let mut last = None;
        for (node, admin) in self.admins() {
            if node == id {
                continue;
            }
            match change(admin.with_timeout(MEMBERSHIP_WAIT)).await {
                Ok(()) => return Ok(()),
                Err(error) => last = Some(format!("node {node}: {error}")),
            }
        }
        let statuses = self.statuses().await;
        let everywhere = !statuses.is_empty()
            && statuses.iter().all(|status| !status.groups.is_empty() && status.groups.iter().all(&made));
        match last {
            _ if everywhere => Ok(()),
            Some(error) => bail!("{error}"),
            None => bail!("no other member's admin API is reachable"),
        }
    }

    /// An admin client of `node`, whether it is a member or not.
    fn admin_of(&self, node: &TargetNode) -> Option<AdminClient> {
        let token = self.admin_token.clone()?;
        node.admin_address().map(|address| self.admin_client(address, token))
    }

    /// The switchboard of the local nodes' links (started with the proxy).
    pub fn links(&self) -> anyhow::Result<&Links> {
        self.links.as_ref().context("only a local cluster started with the link proxy has links to cut")
    }

    /// Kills local node `id` with SIGKILL.
    pub async fn kill(&self, id: u64) -> anyhow::Result<()> {
        let cluster = self.local.clone().context("only nodes the bench started (--local) can be killed")?;
        let node = self.node(id)?;
        node.up.store(false, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || lock(&cluster).kill(id)).await??;
        *node.pid.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        node.restarts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Starts local node `id` again on its data directory; it gets new client and admin
    /// ports.
    pub async fn restart(&self, id: u64) -> anyhow::Result<()> {
        let cluster = self.local.clone().context("only nodes the bench started (--local) can be restarted")?;
        let node = self.node(id)?;
        let (client, admin, pid) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut cluster = lock(&cluster);
            cluster.restart(id)?;
            let node = cluster.node(id)?;
            Ok((node.client_addr.to_string(), node.admin_addr.to_string(), node.pid()))
        })
        .await??;
        node.set_process(client, admin, pid);
        Ok(())
    }

    /// Freezes local node `id` with SIGSTOP. The bench counts it as down (its admin API
    /// is not asked, new clients go elsewhere) until [`Target::resume`].
    pub async fn pause(&self, id: u64) -> anyhow::Result<()> {
        let cluster = self.local.clone().context("only nodes the bench started (--local) can be paused")?;
        let node = self.node(id)?;
        node.up.store(false, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || lock(&cluster).pause(id)).await??;
        Ok(())
    }

    /// Lets a paused local node go on with SIGCONT.
    pub async fn resume(&self, id: u64) -> anyhow::Result<()> {
        let cluster = self.local.clone().context("only nodes the bench started (--local) can be resumed")?;
        let node = self.node(id)?;
        tokio::task::spawn_blocking(move || lock(&cluster).resume(id)).await??;
        node.up.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Kills every local node with SIGKILL, then starts them all again at once.
    pub async fn restart_all(&self) -> anyhow::Result<()> {
        let cluster = self.local.clone().context("only nodes the bench started (--local) can be restarted")?;
        for node in &self.nodes {
            node.up.store(false, Ordering::Relaxed);
        }
        let started = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<StartedNode>> {
            let mut cluster = lock(&cluster);
            cluster.restart_all()?;
            cluster
                .ids()
                .into_iter()
                .map(|id| {
                    let node = cluster.node(id)?;
                    Ok((id, node.client_addr.to_string(), node.admin_addr.to_string(), node.pid()))
                })
                .collect()
        })
        .await??;
        for (id, client, admin, pid) in started {
            let node = self.node(id)?;
            node.restarts.fetch_add(1, Ordering::Relaxed);
            node.set_process(client, admin, pid);
        }
        Ok(())
    }

    /// The local cluster's directory (data directories and `node-<id>.log` files).
    pub fn local_root(&self) -> Option<PathBuf> {
        self.local.as_ref().map(|cluster| lock(cluster).root().to_path_buf())
    }

    fn node(&self, id: u64) -> anyhow::Result<&TargetNode> {
        self.nodes.iter().find(|node| node.id == id).with_context(|| format!("no node {id}"))
    }

    /// Stops the local cluster's processes (the remote one is left alone).
    pub async fn shutdown(&self) {
        if let Some(cluster) = self.local.clone() {
            let _ = tokio::task::spawn_blocking(move || {
                let mut cluster = lock(&cluster);
                for id in cluster.ids() {
                    let _ = cluster.kill(id);
                }
            })
            .await;
        }
    }
}

fn lock(cluster: &Mutex<LocalCluster>) -> std::sync::MutexGuard<'_, LocalCluster> {
    cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// True if every node sees every group led by the same node, the balancer's choice.
fn settled(statuses: &[NodeStatus]) -> bool {
    let Some(first) = statuses.first() else { return false };
    first.groups.iter().all(|group| {
        let preferred =
            (!group.voters.is_empty()).then(|| group.voters[(group.id % group.voters.len() as u64) as usize]);
        group.leader.is_some()
            && group.leader == preferred
            && statuses.iter().all(|status| status.group(group.id).is_some_and(|other| other.leader == group.leader))
    })
}

/// Samples the local nodes' CPU, memory and data directories every `every`, and adds up
/// CPU across restarts.
pub struct NodeSampler {
    state: Mutex<SamplerState>,
    keep_samples: bool,
    load_start: Instant,
}

#[derive(Default)]
struct SamplerState {
    per_node: BTreeMap<u64, NodeTrack>,
    /// This process's CPU seconds when measuring began and ended.
    own_cpu: (Option<f64>, Option<f64>),
}

#[derive(Default, Clone)]
struct NodeTrack {
    /// CPU seconds of the node's earlier processes.
    earlier_cpu: f64,
    pid: Option<u32>,
    cpu: f64,
    /// The running total when measuring began.
    cpu_at_measure: Option<f64>,
    cpu_at_end: Option<f64>,
    resident: Option<u64>,
    max_resident: Option<u64>,
    data_dir: Option<u64>,
    samples: Vec<NodeSample>,
}

impl NodeSampler {
    pub fn new(load_start: Instant, keep_samples: bool) -> NodeSampler {
        NodeSampler { state: Mutex::new(SamplerState::default()), keep_samples, load_start }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SamplerState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes one sample of every node.
    pub fn sample(&self, target: &Target) {
        if !target.is_local() {
            return;
        }
        let second = Instant::now().saturating_duration_since(self.load_start).as_secs_f64();
        for node in &target.nodes {
            let pid = node.pid();
            let cpu = pid.and_then(procfs::cpu_seconds);
            let memory = pid.and_then(procfs::resident_bytes);
            let data_dir = node.data_dir.as_deref().map(procfs::dir_bytes);
            let mut state = self.state();
            let track = state.per_node.entry(node.id).or_default();
            if pid != track.pid {
                track.earlier_cpu += track.cpu;
                track.cpu = 0.0;
                track.pid = pid;
            }
            if let Some(cpu) = cpu {
                track.cpu = cpu;
            }
            track.resident = memory.map(|(resident, _)| resident);
            if let Some((resident, peak)) = memory {
                let largest = track.max_resident.unwrap_or(0).max(resident).max(peak);
                track.max_resident = Some(largest);
            }
            track.data_dir = data_dir;
            if self.keep_samples {
                track.samples.push(NodeSample {
                    second,
                    up: pid.is_some(),
                    resident_bytes: track.resident,
                    data_dir_bytes: data_dir,
                    cpu_seconds: Some(track.earlier_cpu + track.cpu),
                });
            }
        }
    }

    /// Samples now and marks the start of the measured part.
    pub fn mark_measure_start(&self, target: &Target) {
        self.sample(target);
        let mut state = self.state();
        for track in state.per_node.values_mut() {
            track.cpu_at_measure = Some(track.earlier_cpu + track.cpu);
        }
        state.own_cpu.0 = procfs::cpu_seconds(std::process::id());
    }

    /// Samples now and marks the end of the measured part.
    pub fn mark_measure_end(&self, target: &Target) {
        self.sample(target);
        let mut state = self.state();
        for track in state.per_node.values_mut() {
            track.cpu_at_end = Some(track.earlier_cpu + track.cpu);
        }
        state.own_cpu.1 = procfs::cpu_seconds(std::process::id());
    }

    /// The bench's own CPU seconds over the measured part, and its resident size now.
    pub fn load_generator(&self, measured: f64) -> LoadGeneratorSummary {
        let state = self.state();
        let cpu = match state.own_cpu {
            (Some(from), Some(to)) => Some((to - from).max(0.0)),
            _ => None,
        };
        LoadGeneratorSummary {
            cpu_seconds: cpu,
            cpu_cores: cpu.filter(|_| measured > 0.0).map(|cpu| cpu / measured),
            resident_bytes: procfs::resident_bytes(std::process::id()).map(|(resident, _)| resident),
        }
    }

    /// Every node's figures over `measured` seconds.
    pub fn summaries(&self, target: &Target, measured: f64) -> Vec<NodeSummary> {
        let state = self.state();
        target
            .nodes
            .iter()
            .map(|node| {
                let track = state.per_node.get(&node.id).cloned().unwrap_or_default();
                let cpu = match (track.cpu_at_measure, track.cpu_at_end) {
                    (Some(from), Some(to)) if target.is_local() => Some((to - from).max(0.0)),
                    _ => None,
                };
                NodeSummary {
                    id: node.id,
                    address: node.client_address(),
                    pid: node.pid(),
                    cpu_seconds: cpu,
                    cpu_cores: cpu.filter(|_| measured > 0.0).map(|cpu| cpu / measured),
                    resident_bytes: track.resident,
                    max_resident_bytes: track.max_resident,
                    data_dir_bytes: track.data_dir,
                    restarts: node.restarts.load(Ordering::Relaxed),
                    samples: track.samples,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(id: u64, leader: Option<u64>) -> GroupStatus {
        GroupStatus {
            id,
            kind: if id == 0 { GroupKind::Lobby } else { GroupKind::Arena },
            state: "follower".into(),
            leader,
            term: 1,
            last_log_index: Some(10),
            committed: Some(10),
            applied: Some(10),
            voters: vec![1, 2, 3],
            learners: vec![],
            replication: vec![],
        }
    }

    #[test]
    fn leadership_has_settled_when_every_node_agrees_on_the_preferred_leaders() {
        let status = |node: u64, leaders: [u64; 3]| NodeStatus {
            node,
            groups: (0..3).map(|id| group(id, Some(leaders[id as usize]))).collect(),
            connected: vec![],
        };
        assert!(settled(&[status(1, [1, 2, 3]), status(2, [1, 2, 3])]));
        assert!(!settled(&[status(1, [1, 2, 3]), status(2, [1, 3, 3])]), "node 2 disagrees");
        assert!(!settled(&[status(1, [2, 2, 3])]), "the lobby is not on its preferred node");
        assert!(!settled(&[]));
    }

    #[test]
    fn dev_and_signed_tokens_are_minted_for_a_user() {
        assert_eq!(TokenSource::Dev.token(42).unwrap(), "dev:42");
        let secret = b"bench-login-secret-0123456789".to_vec();
        let token = TokenSource::Signed(secret.clone()).token(42).unwrap();
        let now = u64::try_from(pkd_cluster::app::wall_clock_ms()).unwrap();
        let claims = login::verify(&secret, &token, now).unwrap();
        assert_eq!(claims.user_id.as_str(), "42");
    }
}
