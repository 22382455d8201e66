//! A pkd node: one lobby group (group 0) and N arena groups (groups 1..=N), all kept in
//! one sled database, plus each group's leader duties (timers and hand-overs).
//!
//! For now a node runs alone: on its first start, with an empty data directory, it makes
//! itself the only member of every group; on a restart it resumes every group from its
//! database. It leads every group, so [`Node::propose`] always reaches the leader.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pkd_raft::{Action, Config, Machine, Response, TimestampMs};
use pkd_storage::Store;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::consensus::{self, BasicNode, GroupId, NoNetwork, NodeId, Raft};
use crate::group::{Group, ProposeError, is_leader_in};
use crate::replica::{Replica, ReplicaHandle, TaggedEffect};

/// The lobby's group id.
pub const LOBBY: GroupId = GroupId(0);

/// How long [`Node::start`] waits for every group to elect this node and catch up.
const READY_WAIT: Duration = Duration::from_secs(10);

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
}

/// What the node's tasks share.
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    pub(crate) arena_count: u32,
    /// Indexed by group id: the lobby first, then the arenas.
    pub(crate) groups: Vec<Group>,
}

impl Shared {
    pub(crate) fn group(&self, group: GroupId) -> Result<&Group, ProposeError> {
        usize::try_from(group.0).ok().and_then(|index| self.groups.get(index)).ok_or(ProposeError::UnknownGroup(group))
    }

    /// Proposes `action` to `group`, stamped with this node's clock.
    pub(crate) async fn propose(&self, group: GroupId, action: Action) -> Result<Response, ProposeError> {
        self.group(group)?.propose_at(wall_clock(), action).await
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
    /// Opens the database, starts every group (initializing them on a first start) and
    /// waits until this node leads each of them and has applied its log.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        if config.arena_count == 0 {
            return Err(NodeError::Config("arena_count must be at least 1".to_owned()));
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
        let (effects, _) = broadcast::channel(config.effect_capacity);
        let mut groups = Vec::with_capacity(config.arena_count as usize + 1);
        for index in 0..=u64::from(config.arena_count) {
            let group = GroupId(index);
            let fresh =
                if group == LOBBY { Machine::lobby(Config::default()) } else { Machine::arena(Config::default()) };
            let (replica, handle) = Replica::open(group, store.snapshot_store(group)?, fresh, effects.clone())
                .map_err(|source| NodeError::Replica { group, source })?;
            let raft = Raft::new(config.node_id, Arc::clone(&raft_config), NoNetwork, store.log_store(group)?, replica)
                .await
                .map_err(|error| NodeError::Raft { group, message: error.to_string() })?;
            initialize_alone(group, config.node_id, &raft).await?;
            groups.push(Group::new(group, config.node_id, raft, handle));
        }
        for group in &groups {
            wait_until_ready(group).await?;
        }
        let shared = Arc::new(Shared { id: config.node_id, arena_count: config.arena_count, groups });
        let (stop, stopped) = watch::channel(false);
        let mut duties = Vec::new();
        for group in &shared.groups {
            duties.extend(crate::ticker::spawn_leader_duties(Arc::clone(&shared), group.id(), stopped.clone()));
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

    /// Stops the leader duties and every group, and closes the database once the last
    /// handle on it is gone.
    pub async fn shutdown(self) {
        let Node { shared, effects: _, stop, duties } = self;
        let _ = stop.send(true);
        for duty in duties {
            duty.abort();
            let _ = duty.await;
        }
        for group in &shared.groups {
            group.shutdown().await;
        }
        tracing::info!(node = shared.id, "node stopped");
    }
}

/// Makes this node the only member of `group`, unless the group was initialized before.
async fn initialize_alone(group: GroupId, node: NodeId, raft: &Raft) -> Result<(), NodeError> {
    let initialized =
        raft.is_initialized().await.map_err(|error| NodeError::Raft { group, message: error.to_string() })?;
    if initialized {
        return Ok(());
    }
    let members = BTreeMap::from([(node, BasicNode::default())]);
    match raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(%group, node, "group initialized with this node alone");
            Ok(())
        }
        Err(error) if consensus::is_already_initialized(&error) => Ok(()),
        Err(error) => Err(NodeError::Raft { group, message: error.to_string() }),
    }
}

/// Waits until this node leads `group` and has applied every entry of its log.
async fn wait_until_ready(group: &Group) -> Result<(), NodeError> {
    let mut metrics = group.metrics();
    let node = group.node();
    let ready = async {
        loop {
            let done = metrics.read(|metrics| {
                let applied = metrics.last_applied.map(|log_id| log_id.index);
                is_leader_in(metrics, node) && applied >= metrics.last_log_index
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
