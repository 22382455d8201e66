//! The admin API's requests and responses (JSON). Every route needs
//! `Authorization: Bearer <admin token>`.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /admin/status` | | [`NodeStatus`] |
//! | `POST /admin/groups/{id}/transfer-leader` | [`TransferLeaderRequest`] | [`LeaderReply`] |
//! | `POST /admin/balance` | | [`MembershipReply`] |
//! | `POST /admin/drain` | [`NodeRequest`] (this node's id) | [`NodeRequest`] |
//! | `POST /admin/init` | [`InitRequest`] | [`MembershipReply`] |
//! | `POST /admin/learners` | [`AddLearnerRequest`] | [`MembershipReply`] |
//! | `POST /admin/promote` | [`NodeRequest`] | [`MembershipReply`] |
//! | `POST /admin/remove` | [`NodeRequest`] | [`MembershipReply`] |
//! | `POST /admin/config` | [`ConfigRequest`] | [`ConfigReply`] |
//!
//! A refused or failed request answers with a 4xx or 5xx status and an [`ErrorReply`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node's id in the cluster.
pub type NodeId = u64;

/// Which kind of raft group: the one lobby (group 0) or an arena (groups 1..=N).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    Lobby,
    Arena,
}

/// How far one member's log is behind the leader's (known only on the leader).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberLag {
    pub node: NodeId,
    /// The last log index the leader knows the member holds.
    pub matched: Option<u64>,
    /// Entries the member is missing: the leader's last log index minus `matched`.
    pub lag: u64,
}

/// One raft group as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub id: u64,
    pub kind: GroupKind,
    /// The node's role in the group: leader, follower, candidate, learner or shutdown.
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Per-member replication lag; empty unless the answering node leads the group.
    pub replication: Vec<MemberLag>,
}

/// `GET /admin/status`: the answering node and every group it hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: NodeId,
    pub groups: Vec<GroupStatus>,
    /// The nodes this node has a live connection to, in increasing id order.
    #[serde(default)]
    pub connected: Vec<NodeId>,
}

impl NodeStatus {
    /// The group with id `id`, if the node hosts it.
    pub fn group(&self, id: u64) -> Option<&GroupStatus> {
        self.groups.iter().find(|group| group.id == id)
    }
}

/// `POST /admin/groups/{id}/transfer-leader`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeaderRequest {
    pub to: NodeId,
}

/// The group's leader after a transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderReply {
    pub group: u64,
    pub leader: Option<NodeId>,
}

/// `POST /admin/init`: make these nodes (id → cluster address) the voters of every group
/// of a fresh cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitRequest {
    pub members: BTreeMap<NodeId, String>,
}

/// `POST /admin/learners`: add `node`, reachable at cluster address `addr`, to every group
/// as a learner. Returns once it has caught up with each group's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddLearnerRequest {
    pub node: NodeId,
    pub addr: String,
}

/// `POST /admin/promote` (make a learner a voter in every group) and `POST /admin/remove`
/// (take the node out of every group).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRequest {
    pub node: NodeId,
}

/// The answer to a membership change: the groups it was applied to, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipReply {
    pub groups: Vec<u64>,
}

/// `POST /admin/config`: set a `t_config` row in every group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRequest {
    pub key: String,
    pub value: String,
}

/// The groups that applied the config row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigReply {
    pub groups: Vec<u64>,
}

/// The body of every refusal or failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}
