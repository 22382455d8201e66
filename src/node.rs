//! A pkd node: one lobby group (group 0) and N arena groups (groups 1..=N), all kept in
//! one sled database, plus each group's leader duties (timers and hand-overs).
//!
//! A node runs alone ([`Node::start`]) or in a cluster ([`Node::start_clustered`]). Alone,
//! on its first start with an empty data directory, it makes itself the only member of
//! every group. In a cluster, the node with the smallest id makes every node of the
//! configuration a member of every group on the first start. Either way a restart resumes
//! every group from the database. [`Node::propose`] goes to the group's leader: here if
//! this node leads the group, forwarded over the network otherwise.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pkd_raft::{Action, Config, Machine, Response, TimestampMs};
use pkd_storage::Store;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::consensus::WriteFailure;
use crate::consensus::{self, BasicNode, GroupId, NoNetwork, NodeId, Raft};
use crate::group::{Group, ProposeError, Route, is_leader_in};
use crate::network::{ChangeFailure, GroupChange, Network, NetworkConfig};
use crate::replica::{Replica, ReplicaHandle, TaggedEffect};
use pkd_cluster::api::{GroupKind, GroupStatus, MemberLag, NodeStatus};

/// The lobby's group id.
pub const LOBBY: GroupId = GroupId(0);

/// How long [`Node::start`] waits for every group to elect this node and catch up.
const READY_WAIT: Duration = Duration::from_secs(15);

/// What a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id in every group.
    pub node_id: NodeId,
    /// The sled database directory.
    pub data_dir: PathBuf,
    /// How many arena groups (PKs are spread over them by `pkd_raft::arena_for`). It must
    /// not change over the life of a cluster.
    pub arena_count: u32,
    /// The raft cluster name (shows in openraft's logs).
    pub cluster_name: String,
    /// Take a snapshot of a group every this many log entries.
    pub snapshot_every: u64,
    /// Room for effects on the broadcast channel; a subscriber further behind loses the
    /// oldest and is told how many.
    pub effect_capacity: usize,
    /// In a cluster: initialize nothing and wait for nothing at start. The node waits to be
    /// made a member through the admin API (`init`, or `learners` then `promote`).
    pub join: bool,
    /// Raft entries (or forwarded batches) a group has in flight from this node at once
    /// (see [`crate::group::DEFAULT_IN_FLIGHT`]).
    pub in_flight: usize,
}

impl NodeConfig {
    /// A single node with id 1 and the default four arenas, storing its data in `data_dir`.
    pub fn single(data_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            node_id: 1,
            data_dir: data_dir.into(),
            arena_count: 4,
            cluster_name: "pkd".to_owned(),
            snapshot_every: 5_000,
            effect_capacity: 65_536,
            join: false,
            in_flight: crate::group::DEFAULT_IN_FLIGHT,
        }
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid node config: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(#[from] pkd_storage::Error),
    #[error("replica of group {group}: {source}")]
    Replica { group: GroupId, source: io::Error },
    #[error("raft of group {group}: {message}")]
    Raft { group: GroupId, message: String },
    #[error("group {0} did not elect this node and catch up in time")]
    NotReady(GroupId),
    #[error("binding the cluster port: {0}")]
    Bind(io::Error),
    #[error("a node's start-up task failed: {0}")]
    Task(String),
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(NodeError::Bind)?;
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

/// How fresh a read of a replica must be (see [`Node::read`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// This node's replica as it stands: no message, no wait. On the leader it holds every
    /// acknowledged write. A follower's replica trails the leader by the time the leader
    /// takes to tell it that an entry committed: the next append or heartbeat, so at most
    /// one heartbeat interval (50 ms) plus a round trip while the cluster is healthy. A node
    /// cut off from its leader keeps serving its last state, however old.
    Local,
    /// Reflects every write acknowledged before the read began, wherever it was made. The
    /// leader confirms with a quorum that it still leads and names a log index (raft's
    /// ReadIndex); this node waits until its replica has applied that index. It costs a
    /// round of heartbeats, plus a round trip when this node does not lead the group.
    Linearizable,
}

/// How long a linearizable read may take to get its read index, and then to catch up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause before asking again for a read index while the leadership moves.
const READ_RETRY: Duration = Duration::from_millis(20);

/// What the node's tasks share.
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    pub(crate) arena_count: u32,
    /// Indexed by group id: the lobby first, then the arenas.
    pub(crate) groups: Vec<Group>,
    /// The network to the other nodes, in a cluster.
    pub(crate) network: Option<Network>,
    /// The node's database (every group's log and snapshots).
    pub(crate) store: Store,
}

/// Why an admin operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("this node runs alone: membership changes need a cluster (--peers)")]
    NotClustered,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("no group {0} on this node")]
    UnknownGroup(GroupId),
    #[error("group {group}: {message}")]
    Failed { group: GroupId, message: String },
}

/// How long a group change keeps being retried while the group has no leader or its
/// leader changes.
const CHANGE_PATIENCE: Duration = Duration::from_secs(20);

/// How an attempt of [`patiently`] failed.
enum Failed<E> {
    /// Worth trying again (the leader moving, unknown or out of reach).
    Again(E),
    ForGood(E),
}

/// Calls `attempt` until it succeeds or fails for good. A failure worth trying again is
/// tried again after `pause`, until `patience` has passed; then its error is returned.
async fn patiently<T, E: std::fmt::Display, F: Future<Output = Result<T, Failed<E>>>>(
    patience: Duration,
    pause: Duration,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(Failed::Again(error)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%error, "not done yet; trying again");
                tokio::time::sleep(pause).await;
            }
            Err(Failed::Again(error) | Failed::ForGood(error)) => return Err(error),
        }
    }
}

/// The pause between attempts of an admin operation while its group's leader moves.
const CHANGE_PAUSE: Duration = Duration::from_millis(200);

impl Shared {
    pub(crate) fn group(&self, group: GroupId) -> Result<&Group, ProposeError> {
        usize::try_from(group.0).ok().and_then(|index| self.groups.get(index)).ok_or(ProposeError::UnknownGroup(group))
    }

    /// Proposes `action` to `group` through its leader: written here if this node leads
    /// the group, forwarded to the leader otherwise (with whatever else is waiting for it).
    pub(crate) async fn propose(&self, group: GroupId, action: Action) -> Result<Response, ProposeError> {
        self.group(group)?.propose(action, Route::AnyLeader).await
    }

    /// Proposes `action` to `group` only if this node leads it (a leader's own timers: a
    /// node that lost the lead must not have them written by its successor).
    pub(crate) async fn propose_here(&self, group: GroupId, action: Action) -> Result<Response, ProposeError> {
        self.group(group)?.propose(action, Route::HereOnly).await
    }

    /// The log index this node's replica of `group` must have applied for a linearizable
    /// read: from the leader, here or over the network, after it has confirmed its
    /// leadership with a quorum. Tries again while the leadership moves, up to
    /// [`READ_TIMEOUT`].
    async fn read_index(&self, group: GroupId) -> Result<u64, ProposeError> {
        let local = self.group(group)?;
        patiently(READ_TIMEOUT, READ_RETRY, || async move {
            let result = match (local.leader(), &self.network) {
                (Some(leader), Some(network)) if leader != self.id => network.read_index(leader, group).await,
                _ => consensus::read_index(local.raft()).await,
            };
            result.map_err(|failure| {
                Failed::Again(match failure {
                    consensus::ReadIndexFailure::NotLeader(leader) => format!("leadership moving (leader: {leader:?})"),
                    consensus::ReadIndexFailure::Unavailable(message) => message,
                })
            })
        })
        .await
        .map_err(|failure| ProposeError::Raft {
            group,
            message: format!("no linearizable read within {READ_TIMEOUT:?}: {failure}"),
        })
    }

    /// Proposes commands forwarded by another node: only if this node leads the group, so
    /// that a proposal is never forwarded twice.
    async fn propose_forwarded(&self, group: GroupId, actions: Vec<Action>) -> Vec<Result<Response, String>> {
        match self.group(group) {
            Ok(local) => local
                .propose_here(actions)
                .await
                .into_iter()
                .map(|result| result.map_err(|error| error.to_string()))
                .collect(),
            Err(error) => actions.iter().map(|_| Err(error.to_string())).collect(),
        }
    }

    /// The node that should lead `group` when it is up, so that leaders are spread over the
    /// nodes: the lobby on the first voter, arena `i` on voter `i` (modulo the voter count),
    /// voters in increasing id order as the group's membership stands.
    pub(crate) fn preferred_leader(&self, group: GroupId) -> Option<NodeId> {
        let voters = self.group(group).ok()?.metrics().read(consensus::voters);
        let count = u64::try_from(voters.len()).ok().filter(|&count| count > 0)?;
        let index = usize::try_from(group.0 % count).ok()?;
        voters.get(index).copied()
    }

    /// Makes `change` in `group` at its leader: here if this node leads it, over the
    /// network otherwise. While the group has no leader, or its leader moves, it tries
    /// again for a while.
    async fn change(&self, group: GroupId, change: GroupChange) -> Result<(), AdminError> {
        let local = self.group(group).map_err(|_| AdminError::UnknownGroup(group))?;
        let network = self.network.as_ref().ok_or(AdminError::NotClustered)?;
        let change = &change;
        patiently(CHANGE_PATIENCE, CHANGE_PAUSE, || async move {
            let result = match local.leader() {
                Some(leader) if leader == self.id => self.change_here(group, change.clone()).await,
                Some(leader) => network.change(leader, group, change.clone()).await,
                None => Err(ChangeFailure { retry: true, message: "the group has no leader".to_owned() }),
            };
            result.map_err(|failure| if failure.retry { Failed::Again(failure) } else { Failed::ForGood(failure) })
        })
        .await
        .map_err(|failure| AdminError::Failed { group, message: failure.message })
    }

    /// Makes `change` in `group`, which this node should lead.
    async fn change_here(&self, group: GroupId, change: GroupChange) -> Result<(), ChangeFailure> {
        let local = self.group(group).map_err(|error| ChangeFailure { retry: false, message: error.to_string() })?;
        let raft = local.raft();
        let written = match change {
            GroupChange::AddLearner { node, address } => {
                if let Some(network) = &self.network {
                    network.add_peer(node, address.clone());
                }
                consensus::add_learner(raft, node, address).await
            }
            GroupChange::Promote { node } => consensus::promote(raft, node).await,
            GroupChange::Remove { node } => consensus::remove(raft, node).await,
            GroupChange::TransferLeader { to } => {
                if !local.is_leader() {
                    return Err(ChangeFailure { retry: true, message: "this node does not lead the group".to_owned() });
                }
                return local
                    .transfer_leadership(to)
                    .await
                    .map_err(|error| ChangeFailure { retry: false, message: error.to_string() });
            }
        };
        written.map_err(|error| {
            let retry = matches!(consensus::classify_write_error(&error), WriteFailure::NotLeader(_))
                || consensus::is_membership_change_in_progress(&error);
            ChangeFailure { retry, message: error.to_string() }
        })
    }

    /// Every group as this node sees it.
    fn status(&self) -> NodeStatus {
        let groups = self
            .groups
            .iter()
            .map(|group| {
                group.metrics().read(|metrics| {
                    let (term, committed, applied) = consensus::positions(metrics);
                    let last = metrics.last_log_index;
                    let replication = consensus::replication(metrics)
                        .into_iter()
                        .map(|(node, matched)| MemberLag {
                            node,
                            matched,
                            lag: last.unwrap_or(0).saturating_sub(matched.unwrap_or(0)),
                        })
                        .collect();
                    GroupStatus {
                        id: group.id().0,
                        kind: if group.id() == LOBBY { GroupKind::Lobby } else { GroupKind::Arena },
                        state: format!("{:?}", metrics.state).to_lowercase(),
                        leader: metrics.current_leader,
                        term,
                        last_log_index: last,
                        committed,
                        applied,
                        voters: consensus::voters(metrics),
                        learners: consensus::learners(metrics),
                        replication,
                    }
                })
            })
            .collect();
        let connected = self.network.as_ref().map(Network::connected_peers).unwrap_or_default();
        NodeStatus { node: self.id, groups, connected }
    }

    /// The arena group that hosts `pk`.
    pub(crate) fn arena_of(&self, pk: pkd_raft::PkId) -> GroupId {
        GroupId(u64::from(pkd_raft::arena_for(pk, self.arena_count)) + 1)
    }
}

/// A running node.
pub struct Node {
    shared: Arc<Shared>,
    effects: broadcast::Sender<TaggedEffect>,
    stop: watch::Sender<bool>,
    duties: Vec<JoinHandle<()>>,
}

impl Node {
    /// Starts a node alone in its groups: opens the database, starts every group
    /// (initializing them on a first start) and waits until this node leads each of them
    /// and has applied its log.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        Node::start_inner(config, None).await
    }

    /// Starts a node of a cluster: the network accepts peers on `listener` and dials the
    /// others named in `network.peers` (which must include this node). Returns once every
    /// group has a leader and, in the groups this node leads, the log is applied.
    pub async fn start_clustered(
        config: NodeConfig,
        network: NetworkConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<Node, NodeError> {
        if network.node_id != config.node_id || !network.peers.contains_key(&config.node_id) {
            return Err(NodeError::Config("the network's node id must be this node's, and among its peers".to_owned()));
        }
        Node::start_inner(config, Some((network, listener))).await
    }

    async fn start_inner(
        config: NodeConfig,
        cluster: Option<(NetworkConfig, tokio::net::TcpListener)>,
    ) -> Result<Node, NodeError> {
        if config.arena_count == 0 {
            return Err(NodeError::Config("arena_count must be at least 1".to_owned()));
        }
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
        let expected: Vec<GroupId> = (0..=u64::from(config.arena_count)).map(GroupId).collect();
        if !first_start && existing != expected {
            return Err(NodeError::Config(format!(
                "the data directory holds groups {existing:?}, but {} arenas were asked for; \
                 the arena count cannot change",
                config.arena_count
            )));
        }
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
        let mut groups = Vec::with_capacity(config.arena_count as usize + 1);
        let mut logs = Vec::with_capacity(config.arena_count as usize + 1);
        for index in 0..=u64::from(config.arena_count) {
            let group = GroupId(index);
            let fresh =
                if group == LOBBY { Machine::lobby(Config::default()) } else { Machine::arena(Config::default()) };
            let (replica, handle) = Replica::open(group, store.snapshot_store(group)?, fresh, effects.clone())
                .map_err(|source| NodeError::Replica { group, source })?;
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
            groups.push(Group::new(group, config.node_id, raft, handle, network.clone(), config.in_flight));
        }
        if !joining {
            for group in &groups {
                wait_until_ready(group, network.is_none()).await?;
            }
        }
        let shared = Arc::new(Shared { id: config.node_id, arena_count: config.arena_count, groups, network, store });
        if let Some(network) = &shared.network {
            let weak = Arc::downgrade(&shared);
            network.set_propose_handler(Arc::new(move |group, actions| {
                let shared = weak.upgrade();
                Box::pin(async move {
                    match shared {
                        Some(shared) => shared.propose_forwarded(group, actions).await,
                        None => actions.iter().map(|_| Err("the node is stopping".to_owned())).collect(),
                    }
                })
            }));
            let weak = Arc::downgrade(&shared);
            network.set_change_handler(Arc::new(move |group, change| {
                let shared = weak.upgrade();
                Box::pin(async move {
                    match shared {
                        Some(shared) => shared.change_here(group, change).await,
                        None => Err(ChangeFailure { retry: false, message: "the node is stopping".to_owned() }),
                    }
                })
            }));
        }
        let (stop, stopped) = watch::channel(false);
        let mut duties = Vec::new();
        for (group, log) in shared.groups.iter().zip(logs) {
            duties.extend(crate::ticker::spawn_leader_duties(Arc::clone(&shared), group.id(), stopped.clone()));
            if let Some(network) = &shared.network {
                let watch = consensus::ServerWatch::new(group.raft());
                duties.push(tokio::spawn(follow_membership(network.clone(), group.id(), watch, log)));
            }
        }
        tracing::info!(node = config.node_id, "node ready");
        Ok(Node { shared, effects, stop, duties })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// How many arena groups the node hosts (their ids are 1..=this).
    pub fn arena_count(&self) -> u32 {
        self.shared.arena_count
    }

    /// The arena group that hosts `pk`.
    pub fn arena_of(&self, pk: pkd_raft::PkId) -> GroupId {
        self.shared.arena_of(pk)
    }

    /// Proposes `action` to `group`, stamped with this node's wall clock, and returns the
    /// machine's response once the command is committed and applied.
    pub async fn propose(&self, group: GroupId, action: Action) -> Result<Response, ProposeError> {
        self.shared.propose(group, action).await
    }

    /// The disk flushes (fsyncs) of the node's database so far and the time they took.
    pub fn flush_totals(&self) -> pkd_storage::FlushTotals {
        self.shared.store.flush_totals()
    }

    /// Runs `read` on this node's replica of `group`, as fresh as `consistency` asks.
    ///
    /// [`Consistency::Linearizable`] fails rather than answer from a replica it cannot
    /// prove current: no leader reachable, no quorum behind it, or the replica not caught up
    /// within [`READ_TIMEOUT`].
    pub async fn read<T>(
        &self,
        group: GroupId,
        consistency: Consistency,
        read: impl FnOnce(&Machine) -> T,
    ) -> Result<T, ProposeError> {
        let replica = self.shared.group(group)?.replica();
        if consistency == Consistency::Linearizable {
            let index = self.shared.read_index(group).await?;
            let mut applied = replica.applied();
            let caught_up = applied.wait_for(|applied| applied.is_some_and(|applied| applied >= index));
            match tokio::time::timeout(READ_TIMEOUT, caught_up).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(ProposeError::Stopped(group)),
                Err(_) => {
                    let message = format!("the replica did not apply index {index} within {READ_TIMEOUT:?}");
                    return Err(ProposeError::Raft { group, message });
                }
            }
        }
        Ok(replica.read(read))
    }

    /// A read handle on `group`'s replica.
    pub fn replica(&self, group: GroupId) -> Option<&ReplicaHandle> {
        self.shared.group(group).ok().map(Group::replica)
    }

    /// Every effect applied from now on, tagged with its group and log index.
    pub fn subscribe_effects(&self) -> broadcast::Receiver<TaggedEffect> {
        self.effects.subscribe()
    }

    /// Whether this node leads `group` right now.
    pub fn is_leader(&self, group: GroupId) -> bool {
        self.shared.group(group).map(Group::is_leader).unwrap_or(false)
    }

    /// The leader of `group` as this node knows it.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.shared.group(group).ok().and_then(Group::leader)
    }

    /// Asks `group`, which this node leads, to hand leadership to node `to`.
    pub async fn transfer_leadership(&self, group: GroupId, to: NodeId) -> Result<(), ProposeError> {
        self.shared.group(group)?.transfer_leadership(to).await
    }

    /// Every group as this node sees it: leader, term, log positions, members and, in the
    /// groups this node leads, each member's replication lag.
    pub fn status(&self) -> NodeStatus {
        self.shared.status()
    }

    /// Makes `members` (id → cluster address) the voters of every group of a fresh
    /// cluster. Groups initialized before are left as they are.
    pub async fn initialize_cluster(&self, members: &BTreeMap<NodeId, String>) -> Result<Vec<u64>, AdminError> {
        let network = self.shared.network.as_ref().ok_or(AdminError::NotClustered)?;
        if !members.contains_key(&self.shared.id) {
            return Err(AdminError::Invalid(format!("the members must include this node ({})", self.shared.id)));
        }
        for (&id, address) in members {
            network.add_peer(id, address.clone());
        }
        let nodes: BTreeMap<NodeId, BasicNode> =
            members.iter().map(|(&id, address)| (id, BasicNode::new(address.clone()))).collect();
        for group in &self.shared.groups {
            initialize(group.id(), &nodes, group.raft())
                .await
                .map_err(|error| AdminError::Failed { group: group.id(), message: error.to_string() })?;
        }
        Ok(self.group_ids())
    }

    /// Adds `node`, reachable at cluster address `address`, to every group as a learner;
    /// returns once it has caught up with every group.
    pub async fn add_learner(&self, node: NodeId, address: &str) -> Result<Vec<u64>, AdminError> {
        if address.is_empty() {
            return Err(AdminError::Invalid("the learner's address is empty".to_owned()));
        }
        self.change_every_group(GroupChange::AddLearner { node, address: address.to_owned() }).await
    }

    /// Makes learner `node` a voter in every group.
    pub async fn promote(&self, node: NodeId) -> Result<Vec<u64>, AdminError> {
        self.change_every_group(GroupChange::Promote { node }).await
    }

    /// Takes `node` out of every group.
    pub async fn remove(&self, node: NodeId) -> Result<Vec<u64>, AdminError> {
        self.change_every_group(GroupChange::Remove { node }).await
    }

    /// Asks `group`'s leader, wherever it is, to hand leadership to `to`.
    pub async fn transfer_leader(&self, group: GroupId, to: NodeId) -> Result<(), AdminError> {
        let voters =
            self.shared.group(group).map_err(|_| AdminError::UnknownGroup(group))?.metrics().read(consensus::voters);
        if !voters.contains(&to) {
            return Err(AdminError::Invalid(format!("node {to} is not a voter of group {group}")));
        }
        if self.leader(group) == Some(to) {
            return Ok(());
        }
        self.shared.change(group, GroupChange::TransferLeader { to }).await
    }

    /// Proposes the `t_config` row `key` = `value` to every group. Refused without effect
    /// when the value does not parse.
    pub async fn set_config(&self, key: &str, value: &str) -> Result<Vec<u64>, AdminError> {
        pkd_raft::Config::default().with(key, value).map_err(|error| AdminError::Invalid(error.to_string()))?;
        for group in &self.shared.groups {
            let set = patiently(CHANGE_PATIENCE, CHANGE_PAUSE, || async move {
                let action = Action::SetConfig { key: key.to_owned(), value: value.to_owned() };
                match self.shared.propose(group.id(), action).await {
                    Ok(Response::Rejected(reason)) => Err(Failed::ForGood(format!("refused: {reason:?}"))),
                    Ok(_) => Ok(()),
                    // Setting a row to the same value twice is harmless, so a proposal whose
                    // leader was unreachable or changed is simply sent again.
                    Err(
                        error @ (ProposeError::NotLeader { .. }
                        | ProposeError::Forward { .. }
                        | ProposeError::OutcomeUnknown(_)),
                    ) => Err(Failed::Again(error.to_string())),
                    Err(error) => Err(Failed::ForGood(error.to_string())),
                }
            });
            set.await.map_err(|message| AdminError::Failed { group: group.id(), message })?;
        }
        Ok(self.group_ids())
    }

    fn group_ids(&self) -> Vec<u64> {
        self.shared.groups.iter().map(|group| group.id().0).collect()
    }

    async fn change_every_group(&self, change: GroupChange) -> Result<Vec<u64>, AdminError> {
        for group in &self.shared.groups {
            self.shared.change(group.id(), change.clone()).await?;
        }
        Ok(self.group_ids())
    }

    /// Stops the leader duties and every group, and closes the database once the last
    /// handle on it is gone.
    pub async fn shutdown(self) {
        let Node { shared, effects: _, stop, duties } = self;
        let _ = stop.send(true);
        for duty in duties {
            duty.abort();
            let _ = duty.await;
        }
        if let Some(network) = &shared.network {
            network.shutdown().await;
        }
        for group in &shared.groups {
            group.shutdown().await;
        }
        tracing::info!(node = shared.id, "node stopped");
    }
}

/// Makes `members` the members of `group`, unless the group was initialized before.
async fn initialize(group: GroupId, members: &BTreeMap<NodeId, BasicNode>, raft: &Raft) -> Result<(), NodeError> {
    let initialized =
        raft.is_initialized().await.map_err(|error| NodeError::Raft { group, message: error.to_string() })?;
    if initialized {
        return Ok(());
    }
    match raft.initialize(members.clone()).await {
        Ok(()) => {
            let members: Vec<NodeId> = members.keys().copied().collect();
            tracing::info!(%group, ?members, "group initialized");
            Ok(())
        }
        Err(error) if consensus::is_already_initialized(&error) => Ok(()),
        Err(error) => Err(NodeError::Raft { group, message: error.to_string() }),
    }
}

/// How often [`follow_membership`] looks again at the connections when nothing else changed.
const PACE_RECHECK: Duration = Duration::from_millis(200);

/// Follows one group's leader and membership as they change: tells the network about every
/// member (so that this node dials the members that joined after it started, and drops
/// removed ones), and keeps `log`'s flush urgency in step with this node's part in the
/// group. Its appends are flushed at once when the leader needs them for its majority, and
/// may otherwise wait a moment to share a flush with other writes (see [`urgent_appends`]).
async fn follow_membership(
    network: Network,
    group: GroupId,
    mut metrics: consensus::ServerWatch,
    log: consensus::LogStore,
) {
    let me = network.node_id();
    let mut seen = None;
    loop {
        let (membership, leader, voters) = metrics.read(|metrics| {
            let index = consensus::membership_index(metrics);
            let membership = (index != seen).then(|| (index, consensus::member_addresses(metrics)));
            (membership, metrics.current_leader, consensus::voters(metrics))
        });
        if let Some((index, members)) = membership {
            seen = index;
            network.set_members(group, &members);
        }
        let urgent = urgent_appends(me, leader, &voters, |peer| network.is_connected(peer));
        if urgent != log.is_urgent() {
            tracing::debug!(%group, urgent, "flush pacing changed");
            log.set_urgent(urgent);
        }
        tokio::select! {
            changed = metrics.changed() => if !changed { return },
            _ = tokio::time::sleep(PACE_RECHECK) => {}
        }
    }
}

/// Whether node `me` must flush its appends at once, given the group's leader and voters.
/// A leader commits an entry once a majority of the voters hold it on disk: itself and, of
/// `n` voters, `n / 2` followers. Those followers are the ones after the leader in id
/// order, wrapping around; the others defer their flushes, so that each node does fewer of
/// them. Everything else flushes at once: the leader, a learner, a node that knows no
/// leader, and a deferring follower not connected to one of the followers the leader
/// counts on (that one may be down).
pub(crate) fn urgent_appends(
    me: NodeId,
    leader: Option<NodeId>,
    voters: &[NodeId],
    connected: impl Fn(NodeId) -> bool,
) -> bool {
    let Some(leader) = leader else { return true };
    if leader == me || !voters.contains(&me) {
        return true;
    }
    let Some(at) = voters.iter().position(|&voter| voter == leader) else { return true };
    let counted: Vec<NodeId> =
        (1..voters.len()).map(|step| voters[(at + step) % voters.len()]).take(voters.len() / 2).collect();
    counted.contains(&me) || counted.iter().any(|&peer| !connected(peer))
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

/// This node's clock, in milliseconds since the Unix epoch: the `at` of its proposals.
pub fn wall_clock() -> TimestampMs {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    TimestampMs(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::urgent_appends;

    fn everyone(_: u64) -> bool {
        true
    }

    #[test]
    fn of_three_voters_the_leader_and_the_next_one_flush_at_once() {
        let voters = [1, 2, 3];
        // (leader, the follower it counts on, the follower that defers)
        for (leader, counted, deferring) in [(1, 2, 3), (2, 3, 1), (3, 1, 2)] {
            assert!(urgent_appends(leader, Some(leader), &voters, everyone), "leader {leader}");
            assert!(urgent_appends(counted, Some(leader), &voters, everyone), "leader {leader}, node {counted}");
            assert!(!urgent_appends(deferring, Some(leader), &voters, everyone), "leader {leader}, node {deferring}");
        }
    }

    #[test]
    fn of_five_voters_two_followers_flush_at_once() {
        let voters = [1, 2, 4, 7, 9];
        let urgent: Vec<u64> =
            voters.into_iter().filter(|&me| urgent_appends(me, Some(7), &voters, everyone)).collect();
        assert_eq!(urgent, vec![1, 7, 9]);
    }

    #[test]
    fn without_a_known_leader_a_learner_or_a_counted_peer_everyone_flushes_at_once() {
        let voters = [1, 2, 3];
        assert!(urgent_appends(3, None, &voters, everyone), "no leader known");
        assert!(urgent_appends(4, Some(1), &voters, everyone), "a learner");
        assert!(
            urgent_appends(3, Some(1), &voters, |peer| peer != 2),
            "node 2, which leader 1 counts on, is unreachable"
        );
        assert!(!urgent_appends(3, Some(1), &voters, |peer| peer != 1), "only the leader is unreachable from here");
        assert!(urgent_appends(1, Some(1), &[1], everyone), "a single voter");
    }
}
