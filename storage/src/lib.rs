//! Durable storage for pkd's raft groups.
//!
//! A pkd node hosts several raft groups (one lobby group and N arena groups), each with its own
//! openraft `Raft`. They all share one sled database per node, opened once as a [`Store`]. Each
//! group gets, keyed by its [`GroupId`]:
//!
//! - a [`LogStore`], which implements openraft's `RaftLogStorage` and `RaftLogReader`: log
//!   entries, the vote, the committed log id and the last purged log id;
//! - a [`SnapshotStore`], a helper the group's state machine uses to keep its latest snapshot.
//!
//! [`pacing`] decides which replicas of a group flush their appends at once.
//!
//! Values are encoded with postcard. Writes that raft needs to be durable (appended entries,
//! votes, snapshots) are acknowledged only after sled has flushed them to disk; concurrent
//! groups share flushes. See [`Store`] for the durability design and [`keys`] for the layout.

mod codec;
mod error;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod keys;
mod log_store;
pub mod pacing;
mod snapshot_store;
mod store;

pub use error::Error;
pub use log_store::LogStore;
pub use snapshot_store::SnapshotStore;
pub use store::DEFERRED_FLUSH_WAIT;
pub use store::FlushTotals;
pub use store::GroupId;

/// A node's id in the cluster (the same in every raft group the node belongs to).
pub type NodeId = u64;
pub use store::LOCK_WAIT;
pub use store::Store;
