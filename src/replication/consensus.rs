//! pkd's binding to openraft: the type configuration of every raft group, and the few
//! openraft names the rest of the shell uses.
//!
//! This is the only module that names openraft's own paths. Everything else goes through
//! the aliases and re-exports below, so that an openraft upgrade touches one file.
//!
//! One raft entry carries a [`Batch`]: the commands proposed to a group while the previous
//! entry was being committed (group commit). Its response is the list of the machine's
//! responses, one per command, in the same order.

use std::fmt;
use std::future::Future;

use pkd_raft::{Command, Response};
use serde::{Deserialize, Serialize};

use super::error::{ChangeRefused, ReadIndexFailure};

pub use openraft::storage::{EntryResponder, RaftStateMachine};
pub use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
pub use openraft::{
    BasicNode, Config as RaftConfig, EntryPayload, OptionalSend, RaftSnapshotBuilder, ServerState, SnapshotPolicy,
};
pub use pkd_storage::{GroupId, NodeId};

/// The commands of one raft entry, applied in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Command>);

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} command(s)", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// The type configuration shared by the lobby group and every arena group.
    pub TypeConfig:
        D = Batch,
        R = Vec<Response>,
);

/// One group's raft instance over the state machine `SM` (the shell has one:
/// `replica::Raft`).
pub type RaftOf<SM> = openraft::Raft<TypeConfig, SM>;
/// What one log entry carries: a batch, a membership change, or nothing.
pub type Payload = EntryPayload<Batch, NodeId, BasicNode>;
/// A log position: term, leader and index.
pub type LogId = LogIdOf<TypeConfig>;
/// The membership in force and the log id that set it.
pub type StoredMembership = StoredMembershipOf<TypeConfig>;
/// A snapshot's metadata.
pub type SnapshotMeta = SnapshotMetaOf<TypeConfig>;
/// A snapshot whose data is held in memory.
pub type Snapshot = SnapshotOf<TypeConfig, Vec<u8>>;
/// The metrics a raft instance publishes on its watch channel.
pub type Metrics = openraft::RaftMetrics<TypeConfig>;
/// A group's raft log in the node's sled database.
pub type LogStore = pkd_storage::LogStore<TypeConfig>;
/// A group's latest snapshot in the node's sled database.
pub type SnapshotStore = pkd_storage::SnapshotStore<TypeConfig>;
/// Why a write to raft failed.
pub type WriteError = openraft::error::RaftError<TypeConfig, openraft::error::ClientWriteError<TypeConfig>>;
/// Why `initialize` failed.
pub type InitializeError = openraft::error::RaftError<TypeConfig, openraft::error::InitializeError<TypeConfig>>;
/// openraft stopped for good (storage failure, panic, shutdown).
pub type Fatal = openraft::error::Fatal<TypeConfig>;

/// The fatal error behind a failed raft RPC handler (they fail in no other way).
pub fn fatal_of(error: openraft::error::RaftError<TypeConfig>) -> Fatal {
    match error {
        openraft::error::RaftError::APIError(never) => match never {},
        openraft::error::RaftError::Fatal(fatal) => fatal,
    }
}

/// Whether raft stopped because it was shut down (rather than failed).
pub fn is_stopped(fatal: &Fatal) -> bool {
    matches!(fatal, openraft::error::Fatal::Stopped)
}

/// What a failed write means for the proposer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteFailure {
    /// Refused before it reached the log: this node does not lead the group (the leader,
    /// if known, is named). Safe to send to the leader.
    NotLeader(Option<NodeId>),
    /// The entry reached this node's log but was dropped when another leader took over:
    /// it may or may not commit. Retrying blindly may apply it twice.
    OutcomeUnknown,
    /// Raft has stopped for good.
    Stopped,
    /// Anything else, with its description.
    Other(String),
}

/// Classifies a failed write. openraft's own `forward_to_leader()` also answers for a
/// discarded entry, whose outcome is unknown; this keeps the two apart.
pub fn classify_write_error(error: &WriteError) -> WriteFailure {
    use openraft::error::{ClientWriteError, RaftError};
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => WriteFailure::NotLeader(forward.leader_id),
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => WriteFailure::OutcomeUnknown,
        RaftError::Fatal(_) => WriteFailure::Stopped,
        other => WriteFailure::Other(other.to_string()),
    }
}

/// On the group's leader: confirms with a quorum of voters that it still leads (one round
/// of heartbeats, raft's ReadIndex), and returns the log index a replica must have applied
/// to answer a read that reflects every write acknowledged before this call.
pub async fn read_index<SM: RaftStateMachine<TypeConfig>>(raft: &RaftOf<SM>) -> Result<u64, ReadIndexFailure> {
    use openraft::error::{LinearizableReadError, RaftError};
    match raft.get_read_linearizer(openraft::ReadPolicy::ReadIndex).await {
        Ok(linearizer) => Ok(linearizer.read_log_id().index()),
        Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward))) => {
            Err(ReadIndexFailure::NotLeader(forward.leader_id))
        }
        Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => Err(ReadIndexFailure::NoQuorum),
        Err(RaftError::Fatal(fatal)) => {
            tracing::warn!(error = %fatal, "a read index failed: raft has stopped");
            Err(ReadIndexFailure::Stopped)
        }
    }
}

/// What a failed membership change means for the admin who asked. Details that only the
/// leader's operator needs are logged here.
pub fn classify_change_error(error: &WriteError) -> ChangeRefused {
    use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            ChangeRefused::NotLeader { leader: forward.leader_id }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(change)) => match change {
            ChangeMembershipError::InProgress(_) => ChangeRefused::InProgress,
            ChangeMembershipError::EmptyMembership(_) => ChangeRefused::EmptyMembership,
            ChangeMembershipError::LearnerNotFound(missing) => ChangeRefused::LearnerNotFound(missing.node_id),
            ChangeMembershipError::UncommittedLeaderLog(_) => ChangeRefused::LeaderNotReady,
            other => {
                tracing::warn!(error = %other, "membership change refused");
                ChangeRefused::Unsupported
            }
        },
        RaftError::APIError(other) => {
            tracing::warn!(error = %other, "membership change failed");
            ChangeRefused::Failed
        }
        RaftError::Fatal(fatal) => {
            tracing::warn!(error = %fatal, "membership change failed: raft has stopped");
            ChangeRefused::Stopped
        }
    }
}

/// Whether `initialize` failed only because the group was initialized already.
pub fn is_already_initialized(error: &InitializeError) -> bool {
    matches!(error.api_error(), Some(openraft::error::InitializeError::NotAllowed(_)))
}

/// Adds `node`, reachable at `address`, to `raft`'s group as a learner, and waits until it
/// has caught up with the log. Only the group's leader can do this.
pub async fn add_learner<SM: RaftStateMachine<TypeConfig>>(
    raft: &RaftOf<SM>,
    node: NodeId,
    address: String,
) -> Result<(), WriteError> {
    raft.add_learner(node, BasicNode::new(address), true).await.map(|_| ())
}

/// Makes learner `node` a voter of `raft`'s group. Only the group's leader can do this.
pub async fn promote<SM: RaftStateMachine<TypeConfig>>(raft: &RaftOf<SM>, node: NodeId) -> Result<(), WriteError> {
    let change = openraft::ChangeMembers::AddVoterIds(std::collections::BTreeSet::from([node]));
    raft.change_membership(change, false).await.map(|_| ())
}

/// Takes `node` out of `raft`'s group, as a voter and as a learner. Only the group's leader
/// can do this.
pub async fn remove<SM: RaftStateMachine<TypeConfig>>(raft: &RaftOf<SM>, node: NodeId) -> Result<(), WriteError> {
    let ids = std::collections::BTreeSet::from([node]);
    let is_voter =
        MetricsWatch::new(raft).read(|metrics| metrics.membership_config.voter_ids().any(|voter| voter == node));
    let change =
        if is_voter { openraft::ChangeMembers::RemoveVoters(ids) } else { openraft::ChangeMembers::RemoveNodes(ids) };
    raft.change_membership(change, false).await.map(|_| ())
}

/// What both a group's full [`Metrics`] and the [`ServerMetrics`] a [`ServerWatch`] reads
/// say: the node's state, the leader it knows, and the membership in force.
pub trait Membership {
    fn membership_in_force(&self) -> &StoredMembership;
    fn server_state(&self) -> ServerState;
    fn known_leader(&self) -> Option<NodeId>;
}

/// Both kinds of metrics name these fields alike.
macro_rules! membership_from_fields {
    ($($metrics:ty),*) => {$(
        impl Membership for $metrics {
            fn membership_in_force(&self) -> &StoredMembership {
                &self.membership_config
            }
            fn server_state(&self) -> ServerState {
                self.state
            }
            fn known_leader(&self) -> Option<NodeId> {
                self.current_leader
            }
        }
    )*};
}

membership_from_fields!(Metrics, ServerMetrics);

/// The voters of the membership in force, in increasing id order.
pub fn voters(metrics: &impl Membership) -> Vec<NodeId> {
    let mut voters: Vec<NodeId> = metrics.membership_in_force().voter_ids().collect();
    voters.sort_unstable();
    voters.dedup();
    voters
}

/// The learners of the membership in force, in increasing id order.
pub fn learners(metrics: &Metrics) -> Vec<NodeId> {
    let mut learners: Vec<NodeId> = metrics.membership_config.membership().learner_ids().collect();
    learners.sort_unstable();
    learners
}

/// Every member of the membership in force with its address.
pub fn member_addresses(metrics: &impl Membership) -> Vec<(NodeId, String)> {
    metrics.membership_in_force().nodes().map(|(&id, node)| (id, node.addr.clone())).collect()
}

/// The log index of the membership in force (changes whenever the membership does).
pub fn membership_index(metrics: &impl Membership) -> Option<u64> {
    metrics.membership_in_force().log_id().as_ref().map(|log_id| log_id.index)
}

/// On a leader: each member and the last log index it is known to hold.
pub fn replication(metrics: &Metrics) -> Vec<(NodeId, Option<u64>)> {
    metrics
        .replication
        .as_ref()
        .map(|members| members.iter().map(|(&id, matched)| (id, matched.as_ref().map(|log_id| log_id.index))).collect())
        .unwrap_or_default()
}

/// The metrics' term, committed and applied positions: (term, committed, applied).
pub fn positions(metrics: &Metrics) -> (u64, Option<u64>, Option<u64>) {
    (
        metrics.current_term,
        metrics.local_committed.as_ref().map(|log_id| log_id.index),
        metrics.last_applied.as_ref().map(|log_id| log_id.index),
    )
}

/// The raft settings pkd uses, with the given snapshot interval (in log entries).
pub fn raft_config(cluster: &str, snapshot_every: u64) -> Result<RaftConfig, String> {
    RaftConfig {
        cluster_name: cluster.to_owned(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: snapshot_every.min(1_000),
        // Followers get an entry as soon as the leader has written it, while the leader's
        // own fsync runs: the two disks work at the same time.
        broadcast_submitted_on_append: Some(true),
        ..RaftConfig::default()
    }
    .validate()
    .map_err(|error| error.to_string())
}

/// A network for a node alone in its groups: there is nobody to talk to, so every call
/// reports the peer unreachable. The TCP network between nodes replaces it.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoNetwork;

impl openraft::RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoNetwork;

    async fn new_client(&mut self, _target: NodeId, _node: &BasicNode) -> NoNetwork {
        NoNetwork
    }
}

fn unreachable() -> openraft::error::Unreachable<TypeConfig> {
    openraft::error::Unreachable::from_string("single-node mode: no network to other nodes")
}

impl openraft::RaftNetworkV2<TypeConfig> for NoNetwork {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        _rpc: openraft::raft::AppendEntriesRequest<TypeConfig>,
        _option: openraft::network::RPCOption,
    ) -> Result<openraft::raft::AppendEntriesResponse<TypeConfig>, openraft::error::RPCError<TypeConfig>> {
        Err(openraft::error::RPCError::Unreachable(unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: openraft::raft::VoteRequest<TypeConfig>,
        _option: openraft::network::RPCOption,
    ) -> Result<openraft::raft::VoteResponse<TypeConfig>, openraft::error::RPCError<TypeConfig>> {
        Err(openraft::error::RPCError::Unreachable(unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: openraft::type_config::alias::VoteOf<TypeConfig>,
        _snapshot: Snapshot,
        _cancel: impl Future<Output = openraft::error::ReplicationClosed> + OptionalSend + 'static,
        _option: openraft::network::RPCOption,
    ) -> Result<openraft::raft::SnapshotResponse<TypeConfig>, openraft::error::StreamingError<TypeConfig>> {
        Err(openraft::error::StreamingError::Unreachable(unreachable()))
    }
}

/// The part of a group's metrics that changes with its leader, state and membership only.
pub type ServerMetrics = openraft::metrics::RaftServerMetrics<TypeConfig>;

/// A watch on metrics that one group's raft publishes.
pub struct Watch<M: OptionalSend + Sync + 'static>(openraft::type_config::alias::WatchReceiverOf<TypeConfig, M>);

/// A watch on one group's raft metrics (leadership, log and applied positions).
pub type MetricsWatch = Watch<Metrics>;

/// A watch on one group's leader, state and membership. Unlike [`MetricsWatch`] it does
/// not wake for every entry written or applied.
pub type ServerWatch = Watch<ServerMetrics>;

impl Watch<Metrics> {
    pub fn new<SM: RaftStateMachine<TypeConfig>>(raft: &RaftOf<SM>) -> MetricsWatch {
        Watch(raft.metrics())
    }
}

impl Watch<ServerMetrics> {
    pub fn new<SM: RaftStateMachine<TypeConfig>>(raft: &RaftOf<SM>) -> ServerWatch {
        Watch(raft.server_metrics())
    }
}

impl<M: OptionalSend + Sync + 'static> Watch<M> {
    /// Runs `read` on the latest metrics.
    pub fn read<T>(&self, read: impl FnOnce(&M) -> T) -> T {
        use openraft::async_runtime::WatchReceiver;
        read(&self.0.borrow_watched())
    }

    /// Waits for the next change; `false` once raft has stopped publishing.
    pub async fn changed(&mut self) -> bool {
        use openraft::async_runtime::WatchReceiver;
        self.0.changed().await.is_ok()
    }
}

impl Watch<Metrics> {
    /// Waits until raft has stopped on its own (a storage error, a panic), and says why;
    /// never returns while it runs, nor after a stop asked for (`Raft::shutdown`).
    pub async fn failed(&mut self) -> String {
        loop {
            if let Err(fatal) = self.read(|metrics| metrics.running_state.clone()) {
                if is_stopped(&fatal) {
                    // Stopped on purpose: not a failure.
                    return std::future::pending().await;
                }
                return fatal.to_string();
            }
            if !self.changed().await {
                return "raft stopped publishing its metrics".to_owned();
            }
        }
    }
}

// ---- the network between nodes ----------------------------------------------------------

pub use openraft::network::RPCOption;
pub use openraft::{RaftNetworkFactory, RaftNetworkV2};

/// Replicates log entries (and heartbeats).
pub type AppendRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendResponse = openraft::raft::AppendEntriesResponse<TypeConfig>;
/// Asks for a vote (or, for pre-vote, whether a vote would be granted).
pub type VoteRequest = openraft::raft::VoteRequest<TypeConfig>;
pub type VoteResponse = openraft::raft::VoteResponse<TypeConfig>;
/// A leader's term and id.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type SnapshotResponse = openraft::raft::SnapshotResponse<TypeConfig>;
pub type TransferLeaderRequest = openraft::raft::TransferLeaderRequest<TypeConfig>;
pub type TransferLeaderResponse = openraft::raft::TransferLeaderResponse<TypeConfig>;
/// Why an RPC to another node failed.
pub type RpcError = openraft::error::RPCError<TypeConfig>;
/// Why sending a snapshot to another node failed.
pub type StreamingError = openraft::error::StreamingError<TypeConfig>;
/// Sent when openraft stops replicating to a node while a snapshot is on its way.
pub type ReplicationClosed = openraft::error::ReplicationClosed;

/// An RPC failure for a peer that is not connected (openraft backs off).
pub fn rpc_unreachable(message: impl ToString) -> RpcError {
    openraft::error::RPCError::Unreachable(openraft::error::Unreachable::from_string(message))
}

/// An RPC failure on a connected peer (timeout, dropped connection, remote failure).
pub fn rpc_failed(message: impl ToString) -> RpcError {
    openraft::error::RPCError::Network(openraft::error::NetworkError::from_string(message))
}

/// The snapshot-transfer form of [`rpc_failed`] and [`rpc_unreachable`].
pub fn streaming_error(error: RpcError) -> StreamingError {
    match error {
        openraft::error::RPCError::Unreachable(unreachable) => {
            openraft::error::StreamingError::Unreachable(unreachable)
        }
        openraft::error::RPCError::Network(network) => openraft::error::StreamingError::Network(network),
        other => {
            openraft::error::StreamingError::Network(openraft::error::NetworkError::from_string(other.to_string()))
        }
    }
}
