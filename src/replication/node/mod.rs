//! A pkd node: the lobby and the arenas of its [`Topology`], each a raft [`Group`], all kept
//! in one sled database.
//!
//! - [`start`](Node::start) opens the database and starts the groups (`start.rs`).
//! - Proposals go to a group's leader: written here if this node leads the group, forwarded
//!   over the network otherwise ([`Node::propose`]).
//! - Reads go to this node's replica, as fresh as asked (`read.rs`).
//! - Membership and leadership changes run at each group's leader (`membership.rs`).
//!
//! A `Node` is a cheap handle: clones share the node. The leader duties (timers,
//! hand-overs, balancing, sinks) are not started here: they run on top of a node.

mod membership;
mod read;
mod start;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use pkd_cluster::api::{GroupDigest, GroupKind, GroupStatus, MemberLag, NodeStatus, StateDigests};
use pkd_raft::{Action, Arena, ArenaAction, Lobby, LobbyAction, MachineKind, PkId, Response};
use pkd_storage::Store;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use membership::AdminError;
pub use read::{Consistency, READ_TIMEOUT};
pub use start::{LoopbackNode, start_loopback_cluster};

use super::consensus::{self, GroupId, NodeId};
use super::error::ProposeError;
use super::group::{Group, Route};
use super::network::Network;
use super::replica::{ReplicaHandle, TaggedEffect};
use crate::topology::Topology;

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
    /// (see [`super::group::DEFAULT_IN_FLIGHT`]).
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
            in_flight: super::group::DEFAULT_IN_FLIGHT,
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

/// A running node. Cheap to clone: clones share it.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    topology: Topology,
    /// In [`Topology::groups`] order: the lobby first, then the arenas.
    groups: Vec<Group>,
    /// The lobby's replica.
    lobby: ReplicaHandle<Lobby>,
    /// The arenas' replicas, in [`Topology::arenas`] order.
    arenas: Vec<ReplicaHandle<Arena>>,
    /// The network to the other nodes, in a cluster.
    network: Option<Network>,
    /// The node's database (every group's log and snapshots).
    store: Store,
    effects: broadcast::Sender<TaggedEffect>,
    /// Started on an empty data directory as a member from the cluster's start (not
    /// joining a running one, not restarted).
    founding: bool,
    /// The node's own tasks (membership followers), stopped by [`Node::shutdown`].
    tasks: TaskTracker,
    stopping: CancellationToken,
}

impl Node {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The node's groups and where each PK lives.
    pub fn topology(&self) -> Topology {
        self.inner.topology
    }

    /// The arena group that hosts `pk`.
    pub fn arena_of(&self, pk: PkId) -> GroupId {
        self.inner.topology.arena_of(pk)
    }

    /// This node's replica of the lobby.
    pub fn lobby(&self) -> &ReplicaHandle<Lobby> {
        &self.inner.lobby
    }

    /// This node's replica of arena `group`, if it is one.
    pub fn arena(&self, group: GroupId) -> Option<&ReplicaHandle<Arena>> {
        let index = usize::try_from(group.0).ok()?.checked_sub(1)?;
        self.inner.arenas.get(index)
    }

    /// This node's replica of the arena that hosts `pk`.
    pub fn arena_for(&self, pk: PkId) -> &ReplicaHandle<Arena> {
        // `arena_of` names one of the topology's arenas, and there is a replica for each.
        &self.inner.arenas[(self.arena_of(pk).0 - 1) as usize]
    }

    /// This node's replicas of every arena, in id order.
    pub fn arenas(&self) -> &[ReplicaHandle<Arena>] {
        &self.inner.arenas
    }

    /// One of this node's groups.
    pub fn group(&self, group: GroupId) -> Result<&Group, ProposeError> {
        self.inner
            .topology
            .index(group)
            .and_then(|index| self.inner.groups.get(index))
            .ok_or(ProposeError::UnknownGroup(group))
    }

    /// Every group of the node: the lobby, then the arenas.
    pub fn groups(&self) -> &[Group] {
        &self.inner.groups
    }

    /// Whether this process started on an empty data directory as one of the cluster's
    /// first members (alone, or with `--peers` and no `--join`): then this node applies
    /// every entry of its groups' logs from the first on, and every settled PK waits in
    /// its arena's outbox until this node has stored it.
    pub fn founding(&self) -> bool {
        self.inner.founding
    }

    /// The network to the other nodes, in a cluster.
    pub fn network(&self) -> Option<&Network> {
        self.inner.network.as_ref()
    }

    /// Proposes `action` to `group` through its leader: written here if this node leads
    /// the group, forwarded to the leader otherwise (with whatever else is waiting for it).
    /// The leader stamps it with its clock; the machine's response comes back once the
    /// command is committed and applied.
    pub async fn propose(&self, group: GroupId, action: Action) -> Result<Response, ProposeError> {
        self.group(group)?.propose(action, Route::AnyLeader).await
    }

    /// Proposes `action` to `group` only if this node leads it: a leader's own timers,
    /// which a node that lost the lead must not have written by its successor.
    pub async fn propose_here(&self, group: GroupId, action: Action) -> Result<Response, ProposeError> {
        self.group(group)?.propose(action, Route::HereOnly).await
    }

    /// Proposes a lobby action, through the lobby's leader.
    pub async fn propose_lobby(&self, action: LobbyAction) -> Result<Response, ProposeError> {
        self.propose(self.inner.topology.lobby(), Action::Lobby(action)).await
    }

    /// Proposes an arena action to arena `arena`, through its leader.
    pub async fn propose_arena(&self, arena: GroupId, action: ArenaAction) -> Result<Response, ProposeError> {
        match self.inner.topology.kind(arena) {
            Some(MachineKind::Arena) => self.propose(arena, Action::Arena(action)).await,
            _ => Err(ProposeError::UnknownGroup(arena)),
        }
    }

    /// Every effect applied from now on, in every group, tagged with its group and log
    /// index.
    pub fn subscribe_effects(&self) -> broadcast::Receiver<TaggedEffect> {
        self.inner.effects.subscribe()
    }

    /// Whether this node leads `group` right now.
    pub fn is_leader(&self, group: GroupId) -> bool {
        self.group(group).map(Group::is_leader).unwrap_or(false)
    }

    /// The leader of `group` as this node knows it.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.group(group).ok().and_then(Group::leader)
    }

    /// The disk flushes (fsyncs) of the node's database so far and the time they took.
    pub fn flush_totals(&self) -> pkd_storage::FlushTotals {
        self.inner.store.flush_totals()
    }

    /// Cancelled when the node begins to stop.
    pub fn stopping(&self) -> &CancellationToken {
        &self.inner.stopping
    }

    /// Every group as this node sees it: leader, term, log positions, members and, in the
    /// groups this node leads, each member's replication lag.
    pub fn status(&self) -> NodeStatus {
        let groups = self
            .inner
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
                        kind: match self.inner.topology.kind(group.id()) {
                            Some(MachineKind::Lobby) => GroupKind::Lobby,
                            _ => GroupKind::Arena,
                        },
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
        let connected = self.inner.network.as_ref().map(Network::connected_peers).unwrap_or_default();
        NodeStatus { node: self.inner.id, groups, connected }
    }

    /// Waits until one of the node's groups has failed (its raft stopped on a storage error
    /// or a panic) while the node was not stopping, and says which and why. Such a node
    /// can no longer take part in that group: the caller stops it, to be restarted.
    pub async fn group_failure(&self) -> (GroupId, String) {
        let waits = self.inner.groups.iter().map(|group| {
            let mut metrics = group.metrics();
            let id = group.id();
            Box::pin(async move { (id, metrics.failed().await) })
        });
        let stopping = self.inner.stopping.clone();
        let failure = futures_util::future::select_all(waits);
        tokio::select! {
            ((group, why), _, _) = failure => {
                if stopping.is_cancelled() {
                    std::future::pending::<()>().await;
                }
                (group, why)
            }
            () = stopping.cancelled() => std::future::pending().await,
        }
    }

    /// A digest of every group's replicated state on this node, each taken at one instant
    /// (see [`ReplicaHandle::digest`]): what fault tests compare between replicas.
    pub fn digests(&self) -> io::Result<StateDigests> {
        let lobby = std::iter::once(self.lobby().digest().map(|digest| (self.lobby().group(), digest)));
        let arenas = self.arenas().iter().map(|arena| arena.digest().map(|digest| (arena.group(), digest)));
        let groups = lobby
            .chain(arenas)
            .map(|digest| {
                digest.map(|(group, (applied_index, sha256))| GroupDigest {
                    group: group.0,
                    applied_index,
                    sha256: sha256.iter().map(|byte| format!("{byte:02x}")).collect(),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(StateDigests { node: self.inner.id, groups })
    }

    /// Stops the node's tasks, the network and every group. Other handles on the node stay
    /// valid, but every proposal through them fails from now on.
    pub async fn shutdown(&self) {
        self.inner.stopping.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        if let Some(network) = &self.inner.network {
            network.shutdown().await;
        }
        for group in &self.inner.groups {
            group.shutdown().await;
        }
        tracing::info!(node = self.inner.id, "node stopped");
    }
}
