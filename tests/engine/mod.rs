//! What the in-process engine tests share (`cluster.rs`, `replica.rs`, `sinks_driver.rs`):
//! the command an anchor's start of matching becomes, waiting for a condition, and reads
//! of a node's replicas.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::time::Duration;

use pkd::{LOBBY, Node};
use pkd_raft::{Action, AnchorProfile, PkId, RoomId, UserId};

/// Command 28 type 1 from `anchor` (room `anchor + 1000`, India, Android, version 300).
pub fn start_match(anchor: u64) -> Action {
    Action::StartMatch {
        anchor: UserId(anchor),
        profile: AnchorProfile {
            room: RoomId(anchor + 1000),
            country: "IN".into(),
            platform: "android".into(),
            version_code: 300,
        },
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
    node.replica(node.arena_of(pk)).is_some_and(|replica| {
        replica.read(|machine| machine.as_arena().is_some_and(|arena| arena.running().any(|id| id == pk)))
    })
}

/// Whether `node`'s lobby replica holds `anchor` in a PK.
pub fn lobby_holds(node: &Node, anchor: u64) -> bool {
    node.replica(LOBBY).is_some_and(|replica| {
        replica.read(|machine| machine.as_lobby().is_some_and(|lobby| lobby.pk_of(UserId(anchor)).is_some()))
    })
}
