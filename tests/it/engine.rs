//! What the in-process engine tests share (`cluster.rs`, `replica.rs`, `sinks_driver.rs`):
//! the command an anchor's start of matching becomes, waiting for a condition, and reads
//! of a node's replicas.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::time::Duration;

use pkd::Node;
use pkd_raft::{AnchorProfile, LobbyAction, PkId, RoomId, UserId};

/// Command 28 type 1 from `anchor` (room `anchor + 1000`, India, Android, version 300).
pub fn start_match(anchor: u64) -> LobbyAction {
    LobbyAction::StartMatch {
        anchor: UserId(anchor),
        profile: AnchorProfile {
            room: RoomId(anchor + 1000),
            country: "IN".into(),
            platform: "android".into(),
            version_code: 300,
        },
        request: 0,
    }
}

/// Polls `check` every 20 ms until it holds; fails the test after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pk` runs on `node`'s replica of its arena.
pub fn pk_running(node: &Node, pk: PkId) -> bool {
    node.arena_for(pk).read(|arena| arena.running().any(|id| id == pk))
}

/// Whether `node`'s lobby replica holds `anchor` in a PK.
pub fn lobby_holds(node: &Node, anchor: u64) -> bool {
    node.lobby().read(|lobby| lobby.pk_of(UserId(anchor)).is_some())
}

/// A node with the engine's own duties running (timers, hand-overs, leader balancing),
/// as `pkd serve` runs it, without the gateway and the sinks.
pub struct Running {
    pub node: Node,
    duties: pkd::duties::Duties,
}

impl Running {
    pub fn new(node: Node) -> Running {
        let duties = pkd::duties::Duties::start(&node);
        Running { node, duties }
    }

    /// Stops the duties, then the node.
    pub async fn shutdown(self) {
        self.duties.stop().await;
        self.node.shutdown().await;
    }
}

impl std::ops::Deref for Running {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}
