//! Why a proposal, a read or a group change did not go through.
//!
//! [`ProposeError`] is what a proposer on this node gets. The refusals below it are what
//! crosses the node network when another node answers for its group: typed, so that the
//! node that asked can tell "not written, ask the leader" from "written, outcome unknown"
//! without reading a message. Details that only help an operator stay in the answering
//! node's log.

use serde::{Deserialize, Serialize};

use pkd_storage::{GroupId, NodeId};

/// Why a proposal did not get a response from the machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("no group {0} on this node")]
    UnknownGroup(GroupId),
    /// Not written: safe to send again, to the leader.
    #[error("this node is not the leader of group {group} (leader: {leader:?})")]
    NotLeader { group: GroupId, leader: Option<NodeId> },
    /// The leader could not be reached, or did not answer in time: the proposal may or may
    /// not have been applied.
    #[error("forwarding to node {leader}, the leader of group {group}, failed: {message}")]
    Forward { group: GroupId, leader: NodeId, message: String },
    /// Written, then dropped by a change of leader: it may or may not commit.
    #[error("group {0} changed leader while the command was in flight: it may or may not have been applied")]
    OutcomeUnknown(GroupId),
    #[error("group {0} is shutting down")]
    Stopped(GroupId),
    #[error("raft failed in group {group}: {message}")]
    Raft { group: GroupId, message: String },
}

impl ProposeError {
    /// Whether sending the same proposal again may succeed (the leadership moves, the
    /// leader is out of reach for a moment). Only idempotent proposals may be sent again
    /// after [`ProposeError::Forward`] or [`ProposeError::OutcomeUnknown`].
    pub fn is_transient(&self) -> bool {
        matches!(self, ProposeError::NotLeader { .. } | ProposeError::Forward { .. } | ProposeError::OutcomeUnknown(_))
    }
}

/// Why a leader did not apply a proposal that another node forwarded to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposalRefused {
    /// Not written: the leadership moved on.
    #[error("that node no longer leads the group (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("leadership changed while the command was in flight: it may or may not have been applied")]
    OutcomeUnknown,
    #[error("that node's group is shutting down")]
    Stopped,
    #[error("raft failed on that node (see its log)")]
    Failed,
    #[error("that node has no such group")]
    UnknownGroup,
}

impl ProposalRefused {
    /// The refusal that tells the forwarding node about `error`.
    pub fn of(error: &ProposeError) -> ProposalRefused {
        match error {
            ProposeError::NotLeader { leader, .. } => ProposalRefused::NotLeader { leader: *leader },
            ProposeError::OutcomeUnknown(_) => ProposalRefused::OutcomeUnknown,
            ProposeError::Stopped(_) => ProposalRefused::Stopped,
            ProposeError::UnknownGroup(_) => ProposalRefused::UnknownGroup,
            ProposeError::Forward { .. } | ProposeError::Raft { .. } => ProposalRefused::Failed,
        }
    }

    /// What the proposer on the forwarding node gets, for a proposal sent to `leader`.
    pub fn into_error(self, group: GroupId, leader: NodeId) -> ProposeError {
        match self {
            ProposalRefused::NotLeader { leader } => ProposeError::NotLeader { group, leader },
            ProposalRefused::OutcomeUnknown => ProposeError::OutcomeUnknown(group),
            refused @ (ProposalRefused::Stopped | ProposalRefused::Failed | ProposalRefused::UnknownGroup) => {
                ProposeError::Forward { group, leader, message: refused.to_string() }
            }
        }
    }
}

/// Why a group change (membership, leadership) was not made. Crosses the network when the
/// group's leader is another node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ChangeRefused {
    #[error("the node asked does not lead the group (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("the group has no leader")]
    NoLeader,
    #[error("a membership change is still in progress")]
    InProgress,
    #[error("the leader has not committed an entry of its own term yet")]
    LeaderNotReady,
    #[error("no such group")]
    UnknownGroup,
    #[error("node {0} is not a learner of the group")]
    LearnerNotFound(NodeId),
    #[error("the change would leave the group without voters")]
    EmptyMembership,
    #[error("the group's raft does not support this membership transition")]
    Unsupported,
    #[error("raft has stopped")]
    Stopped,
    #[error("raft failed (see the leader's log)")]
    Failed,
}

impl ChangeRefused {
    /// Whether the change may succeed if sent again (to the new leader, once one is known).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ChangeRefused::NotLeader { .. }
                | ChangeRefused::NoLeader
                | ChangeRefused::InProgress
                | ChangeRefused::LeaderNotReady
        )
    }
}

/// Why the leader could not give a read index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ReadIndexFailure {
    /// This node does not lead the group (the leader, if known, is named).
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// It could not confirm its leadership with a quorum.
    #[error("no quorum confirmed the leadership")]
    NoQuorum,
    #[error("raft has stopped")]
    Stopped,
}
