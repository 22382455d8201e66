//! Starting a node: alone ([`Node::start`]) or in a cluster ([`Node::start_clustered`]).
//!
//! Alone, on its first start with an empty data directory, a node makes itself the only
//! member of every group. In a cluster, the node with the smallest id makes every node of
//! the configuration a member of every group on the first start (unless the nodes join
//! through the admin API). Either way a restart resumes every group from the database.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use pkd_raft::{Arena, Lobby, MachineKind};
use pkd_storage::Store;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::membership::{follow_membership, initialize};
use super::{Inner, Node, NodeConfig, NodeError};
use crate::replication::consensus::{self, BasicNode, GroupId, NoNetwork, ServerWatch};
use crate::replication::error::{ChangeRefused, ProposalRefused};
use crate::replication::group::{Group, is_leader_in};
use crate::replication::network::{Network, NetworkConfig};
use crate::replication::replica::{Raft, Replica, ReplicaHandle};
use crate::topology::Topology;

/// How long a start waits for every group to have a leader and, where this node leads, to
/// have applied its log.
const READY_WAIT: Duration = Duration::from_secs(15);

impl Node {
    /// Starts a node alone in its groups: opens the database, starts every group
    /// (initializing them on a first start) and waits until this node leads each of them
    /// and has applied its log.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        start(config, None).await
    }

    /// Starts a node of a cluster: the network accepts peers on `listener` and dials the
    /// others named in `network.peers` (which must include this node). Returns once every
    /// group has a leader and, in the groups this node leads, the log is applied.
    pub async fn start_clustered(
        config: NodeConfig,
        network: NetworkConfig,
        listener: TcpListener,
    ) -> Result<Node, NodeError> {
        if network.node_id != config.node_id || !network.peers.contains_key(&config.node_id) {
            return Err(NodeError::Config("the network's node id must be this node's, and among its peers".to_owned()));
        }
        start(config, Some((network, listener))).await
    }
}

async fn start(config: NodeConfig, cluster: Option<(NetworkConfig, TcpListener)>) -> Result<Node, NodeError> {
    let topology = Topology::new(config.arena_count)
        .ok_or_else(|| NodeError::Config("arena_count must be at least 1".to_owned()))?;
    if config.in_flight == 0 {
        return Err(NodeError::Config("in_flight must be at least 1".to_owned()));
    }
    if config.effect_capacity == 0 {
        return Err(NodeError::Config("effect_capacity must be at least 1".to_owned()));
    }
    let raft_config =
        Arc::new(consensus::raft_config(&config.cluster_name, config.snapshot_every).map_err(NodeError::Config)?);
    let store = Store::open(&config.data_dir)?;
    let existing = store.groups();
    let first_start = existing.is_empty();
    if !first_start && !existing.iter().copied().eq(topology.groups()) {
        return Err(NodeError::Config(format!(
            "the data directory holds groups {existing:?}, but {} arenas were asked for; \
             the arena count cannot change",
            config.arena_count
        )));
    }
    #[cfg(feature = "fault-injection")]
    crate::fault_hooks::node_started(config.node_id, first_start);
    tracing::info!(
        node = config.node_id,
        data_dir = %config.data_dir.display(),
        arenas = config.arena_count,
        first_start,
        "node starting"
    );
    let (members, network) = match cluster {
        None => (BTreeMap::from([(config.node_id, BasicNode::default())]), None),
        Some((network_config, listener)) => {
            let members =
                network_config.peers.iter().map(|(&id, address)| (id, BasicNode::new(address.clone()))).collect();
            (members, Some(Network::start(network_config, listener)))
        }
    };
    // Alone, this node initializes its groups; in a cluster, the smallest id does (unless
    // the nodes join through the admin API).
    let joining = config.join && network.is_some();
    let initializer = !joining && members.keys().next() == Some(&config.node_id);
    let (effects, _) = broadcast::channel(config.effect_capacity);
    let mut groups = Vec::with_capacity(topology.group_count());
    let mut logs = Vec::with_capacity(topology.group_count());
    let mut lobby: Option<ReplicaHandle<Lobby>> = None;
    let mut arenas: Vec<ReplicaHandle<Arena>> = Vec::with_capacity(topology.arena_count() as usize);
    for group in topology.groups() {
        let snapshots = store.snapshot_store(group)?;
        let opened = match topology.kind(group) {
            Some(MachineKind::Lobby) => {
                Replica::open::<Lobby>(group, snapshots, effects.clone()).map(|(replica, handle)| {
                    let watch = (handle.applied(), handle.effect_sender());
                    lobby = Some(handle);
                    (replica, watch)
                })
            }
            _ => Replica::open::<Arena>(group, snapshots, effects.clone()).map(|(replica, handle)| {
                let watch = (handle.applied(), handle.effect_sender());
                arenas.push(handle);
                (replica, watch)
            }),
        };
        let (replica, watch) = opened.map_err(|source| NodeError::Replica { group, source })?;
        let log = store.log_store(group)?;
        logs.push(log.clone());
        let started = match &network {
            None => Raft::new(config.node_id, Arc::clone(&raft_config), NoNetwork, log, replica).await,
            Some(network) => {
                Raft::new(config.node_id, Arc::clone(&raft_config), network.for_group(group), log, replica).await
            }
        };
        let raft = started.map_err(|error| NodeError::Raft { group, message: error.to_string() })?;
        if let Some(network) = &network {
            network.register_group(group, raft.clone());
        }
        if initializer {
            initialize(group, &members, &raft).await?;
        }
        groups.push(Group::new(group, config.node_id, raft, watch, network.clone(), config.in_flight));
    }
    if !joining {
        for group in &groups {
            wait_until_ready(group, network.is_none()).await?;
        }
    }
    let lobby = lobby.ok_or_else(|| NodeError::Config("the topology has no lobby".to_owned()))?;
    let inner = Arc::new(Inner {
        id: config.node_id,
        topology,
        groups,
        lobby,
        arenas,
        network,
        store,
        effects,
        founding: first_start && !joining,
        tasks: TaskTracker::new(),
        stopping: CancellationToken::new(),
    });
    let node = Node { inner };
    if let Some(network) = node.network() {
        answer_for(network, Arc::downgrade(&node.inner));
        for (group, log) in node.groups().iter().zip(logs) {
            let watch = ServerWatch::new(group.raft());
            let stopping = node.stopping().clone();
            let following = follow_membership(network.clone(), group.id(), watch, log);
            node.inner.tasks.spawn(async move {
                tokio::select! {
                    () = following => {}
                    () = stopping.cancelled() => {}
                }
            });
        }
    }
    tracing::info!(node = config.node_id, "node ready");
    Ok(node)
}

/// Makes this node answer the proposals and group changes that other nodes forward to it,
/// for as long as it runs.
fn answer_for(network: &Network, node: Weak<Inner>) {
    let proposing = node.clone();
    network.set_propose_handler(Arc::new(move |group, actions| {
        let node = proposing.upgrade().map(|inner| Node { inner });
        Box::pin(async move {
            match node {
                Some(node) => node.propose_forwarded(group, actions).await,
                None => actions.iter().map(|_| Err(ProposalRefused::Stopped)).collect(),
            }
        })
    }));
    network.set_change_handler(Arc::new(move |group, change| {
        let node = node.upgrade().map(|inner| Node { inner });
        Box::pin(async move {
            match node {
                Some(node) => node.change_here(group, change).await,
                None => Err(ChangeRefused::Stopped),
            }
        })
    }));
}

impl Node {
    /// Proposes commands forwarded by another node: only if this node leads the group, so
    /// that a proposal is never forwarded twice.
    async fn propose_forwarded(
        &self,
        group: GroupId,
        actions: Vec<pkd_raft::Action>,
    ) -> Vec<Result<pkd_raft::Response, ProposalRefused>> {
        match self.group(group) {
            Ok(local) => local
                .propose_here(actions)
                .await
                .into_iter()
                .map(|result| result.map_err(|error| ProposalRefused::of(&error)))
                .collect(),
            Err(_) => actions.iter().map(|_| Err(ProposalRefused::UnknownGroup)).collect(),
        }
    }
}

/// Waits until `group` has a leader and, if this node leads it (always when `alone`), has
/// applied every entry of its log.
async fn wait_until_ready(group: &Group, alone: bool) -> Result<(), NodeError> {
    let mut metrics = group.metrics();
    let node = group.node();
    let ready = async {
        loop {
            let done = metrics.read(|metrics| {
                let applied = metrics.last_applied.map(|log_id| log_id.index);
                let caught_up = applied >= metrics.last_log_index;
                if alone {
                    is_leader_in(metrics, node) && caught_up
                } else {
                    match metrics.current_leader {
                        Some(leader) if leader == node => is_leader_in(metrics, node) && caught_up,
                        Some(_) => true,
                        None => false,
                    }
                }
            });
            if done || !metrics.changed().await {
                return done;
            }
        }
    };
    match tokio::time::timeout(READY_WAIT, ready).await {
        Ok(true) => Ok(()),
        Ok(false) | Err(_) => Err(NodeError::NotReady(group.id())),
    }
}

/// A node of a cluster started by [`start_loopback_cluster`], with the settings it started
/// with (to start it again on the same port and data).
pub struct LoopbackNode {
    pub node: Node,
    pub config: NodeConfig,
    pub network: NetworkConfig,
}

/// Starts one node per entry of `configs` in this process, as a cluster on loopback: node
/// ids 1, 2, ... in order, each with a cluster port the kernel picks, and the network
/// settings of [`NetworkConfig::new`] for `cluster` and `secret`, changed by `tune`. For
/// tests, benchmarks and drills; `pkd_cluster::LocalCluster` does the same with processes.
pub async fn start_loopback_cluster(
    configs: Vec<NodeConfig>,
    cluster: &str,
    secret: &[u8],
    tune: impl Fn(&mut NetworkConfig),
) -> Result<Vec<LoopbackNode>, NodeError> {
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in (1..).take(configs.len()) {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(NodeError::Bind)?;
        peers.insert(id, listener.local_addr().map_err(NodeError::Bind)?.to_string());
        listeners.push(listener);
    }
    let mut starting = Vec::new();
    for ((id, config), listener) in (1..).zip(configs).zip(listeners) {
        let config = NodeConfig { node_id: id, ..config };
        let mut network = NetworkConfig::new(id, cluster, secret, peers.clone());
        tune(&mut network);
        let start = tokio::spawn(Node::start_clustered(config.clone(), network.clone(), listener));
        starting.push((start, config, network));
    }
    let mut nodes = Vec::new();
    for (start, config, network) in starting {
        let node = start.await.map_err(|error| NodeError::Task(error.to_string()))??;
        nodes.push(LoopbackNode { node, config, network });
    }
    Ok(nodes)
}
