//! Replication: every group's raft log, its replica of the core's machine, and the node
//! that hosts them all.
//!
//! - [`consensus`]: the only module that names openraft: the type configuration and the
//!   few openraft items the rest uses.
//! - [`replica`]: openraft's state machine over a `pkd_raft::Machine`; publishes effects.
//! - [`group`]: one group on this node: raft, replica, and the proposal queue that turns
//!   waiting proposals into one entry (group commit) or one forwarded message.
//! - [`node`]: the node: start, propose, read, membership.
//! - [`network`]: the node-to-node connections.
//! - [`error`]: why a proposal, a read or a change did not go through, typed on the wire.

pub mod consensus;
pub mod error;
pub mod group;
pub mod network;
pub mod node;
pub mod replica;

pub use consensus::{GroupId, NodeId};
pub use error::ProposeError;
pub use node::{AdminError, Consistency, Node, NodeConfig, NodeError};
pub use replica::{ReplicaHandle, TaggedEffect};
