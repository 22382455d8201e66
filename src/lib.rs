//! pkd: the PK engine.

pub mod consensus;
pub mod group;
pub mod network;
pub mod node;
pub mod replica;
mod ticker;
pub mod tokens;

pub use group::ProposeError;
pub use node::{LOBBY, Node, NodeConfig, NodeError};
pub use replica::{ReplicaHandle, TaggedEffect};
