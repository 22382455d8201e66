//! pkd: the PK engine. The shell around the pure core (`pkd_raft`): the command line,
//! tokens, replication (consensus, replica, groups, node, leader ticker), the WebSocket
//! gateway and — as the work goes on — the result sinks.

pub mod admin;
pub mod bearer;
pub mod cli;
pub mod consensus;
pub mod gateway;
pub mod group;
pub mod network;
pub mod node;
pub mod replica;
pub mod retry;
pub mod serve;
pub mod sinks;
mod ticker;
pub mod tokens;

pub use group::ProposeError;
pub use node::{AdminError, Consistency, LOBBY, Node, NodeConfig, NodeError};
pub use replica::{ReplicaHandle, TaggedEffect};
