//! Carrying outboxes between groups, on the sending group's leader.
//!
//! The lobby's leader creates each ordered PK on its arena and then confirms it to the
//! lobby; each arena's leader releases a settled PK's rooms in the lobby and then confirms
//! that to itself. Every step is idempotent, and an item stays in its outbox until
//! confirmed, so a failed delivery is simply tried again.

use pkd_raft::{Action, PkId, PkOrder, Response};

use super::{Duty, Step};
use crate::replication::consensus::GroupId;
use crate::replication::error::ProposeError;
use crate::replication::node::Node;
use crate::topology::LOBBY;

/// The hand-over duty of one group.
pub struct Handover {
    node: Node,
    group: GroupId,
}

/// What a group's outbox holds for other groups.
enum Outbox {
    /// The lobby's PKs to create on their arenas.
    Orders(Vec<PkOrder>),
    /// An arena's settled PKs whose rooms the lobby must release.
    Releases(Vec<PkId>),
}

impl Outbox {
    fn is_empty(&self) -> bool {
        match self {
            Outbox::Orders(orders) => orders.is_empty(),
            Outbox::Releases(pks) => pks.is_empty(),
        }
    }
}

impl Handover {
    pub fn new(node: &Node, group: GroupId) -> Handover {
        Handover { node: node.clone(), group }
    }

    /// Delivers every item of `outbox` and confirms it to its group.
    async fn deliver(&self, outbox: Outbox) -> Result<(), ProposeError> {
        let node = &self.node;
        match outbox {
            Outbox::Orders(orders) => {
                for order in orders {
                    let pk = order.pk;
                    let arena = node.arena_of(pk);
                    let created = node.propose(arena, Action::CreatePk(order)).await?;
                    if let Response::Rejected(reason) = &created {
                        // The arena refuses for good (e.g. a misrouted order): confirming
                        // keeps the outbox from retrying forever; the lobby's abandon timer
                        // frees the rooms.
                        tracing::error!(%pk, %arena, ?reason, "arena refused a PK order");
                    }
                    node.propose(self.group, Action::ConfirmPkCreated { pk }).await?;
                    tracing::debug!(%pk, %arena, "PK handed over to its arena");
                }
            }
            Outbox::Releases(pks) => {
                for pk in pks {
                    let released = node.propose(LOBBY, Action::ReleaseRooms { pk }).await?;
                    if let Response::Rejected(reason) = &released {
                        tracing::error!(%pk, ?reason, "lobby refused to release a PK's rooms");
                    }
                    node.propose(self.group, Action::ConfirmRoomsReleased { pk }).await?;
                    tracing::debug!(%pk, "PK's rooms released in the lobby");
                }
            }
        }
        Ok(())
    }
}

impl Duty for Handover {
    fn name(&self) -> &'static str {
        "hand-over"
    }

    async fn step(&mut self) -> Step {
        let Some(replica) = self.node.replica(self.group) else { return Step::Idle(None) };
        let outbox = replica.read(|machine| match machine.as_lobby() {
            Some(lobby) => Outbox::Orders(lobby.pending_orders().cloned().collect()),
            None => {
                Outbox::Releases(machine.as_arena().map(|arena| arena.pending_releases().collect()).unwrap_or_default())
            }
        });
        if outbox.is_empty() {
            return Step::Idle(None);
        }
        match self.deliver(outbox).await {
            Ok(()) => Step::Worked,
            Err(error) => {
                tracing::warn!(group = %self.group, %error, "hand-over failed; retrying");
                Step::Failed
            }
        }
    }
}
