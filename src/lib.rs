//! pkd: the PK engine. The shell around the pure core (`pkd_raft`).
//!
//! - [`app`]: the one seam that starts a node and everything around it; [`serve`] and
//!   [`cli`] are the command line over it.
//! - [`replication`]: raft groups (openraft over sled), the node, the node network.
//! - [`duties`]: what a group's leader does: timers, hand-overs, balancing, sinks.
//! - [`gateway`]: WebSocket sessions, pushes; [`http`]: every HTTP route.
//! - [`sinks`]: the SQL results store and the Redis read cache.
//! - [`topology`], [`clock`], [`retry`], [`tokens`]: what the rest shares.

pub mod app;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config_file;
pub mod demo;
pub mod duties;
#[cfg(feature = "fault-injection")]
pub mod fault_hooks;
pub mod faults;
pub mod gateway;
pub mod http;
pub mod inquiry;
pub mod logs;
pub mod procfs;
pub mod replication;
pub mod retry;
pub mod serve;
pub mod sinks;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod topology;

pub use replication::{AdminError, Consistency, GroupId, Node, NodeConfig, NodeError, ProposeError};
pub use replication::{ReplicaHandle, TaggedEffect};
pub use topology::{LOBBY, Topology};
