//! Carrying outboxes between groups, on the sending group's leader.
//!
//! The lobby's leader creates each ordered PK on its arena and then confirms it to the
//! lobby ([`Orders`]); each arena's leader releases a settled PK's rooms in the lobby and
//! then confirms that to itself ([`Releases`]). Every step is idempotent, and an item stays
//! in its outbox until confirmed, so a failed delivery is simply tried again.

use pkd_raft::{ArenaAction, LobbyAction, PkOrder, Response};

use super::{Duty, Step};
use crate::replication::consensus::GroupId;
use crate::replication::error::ProposeError;
use crate::replication::node::Node;

/// The lobby's hand-over duty: PK orders to their arenas.
pub struct Orders {
    node: Node,
}

impl Orders {
    pub fn new(node: &Node) -> Orders {
        Orders { node: node.clone() }
    }

    /// Creates each PK on its arena, then confirms it to the lobby.
    async fn deliver(&self, orders: Vec<PkOrder>) -> Result<(), ProposeError> {
        let node = &self.node;
        for order in orders {
            let pk = order.pk;
            let arena = node.arena_of(pk);
            let created = node.propose_arena(arena, ArenaAction::CreatePk(order.clone())).await?;
            if let Response::Rejected(reason) = &created {
                // The arena refuses for good (e.g. a misrouted order): confirming keeps the
                // outbox from retrying forever; the lobby's abandon timer frees the rooms.
                tracing::error!(%pk, %arena, ?reason, "arena refused a PK order");
            }
            #[cfg(feature = "fault-injection")]
            if let Some(copy) = crate::fault_hooks::doubled_order(&order) {
                node.propose_arena(node.arena_of(copy.pk), ArenaAction::CreatePk(copy)).await?;
            }
            node.propose_lobby(LobbyAction::ConfirmPkCreated { pk }).await?;
            tracing::debug!(%pk, %arena, "PK handed over to its arena");
        }
        Ok(())
    }
}

impl Duty for Orders {
    fn name(&self) -> &'static str {
        "hand-over of PK orders"
    }

    async fn step(&mut self) -> Step {
        let orders: Vec<PkOrder> = self.node.lobby().read(|lobby| lobby.pending_orders().cloned().collect());
        if orders.is_empty() {
            return Step::Idle(None);
        }
        match self.deliver(orders).await {
            Ok(()) => Step::Worked,
            Err(error) => {
                tracing::warn!(%error, "hand-over of PK orders failed; retrying");
                Step::Failed
            }
        }
    }
}

/// An arena's hand-over duty: settled PKs' rooms released in the lobby.
pub struct Releases {
    node: Node,
    arena: GroupId,
}

impl Releases {
    pub fn new(node: &Node, arena: GroupId) -> Releases {
        Releases { node: node.clone(), arena }
    }

    /// Releases each PK's rooms in the lobby, then confirms that to the arena.
    async fn deliver(&self, pks: Vec<pkd_raft::PkId>) -> Result<(), ProposeError> {
        let node = &self.node;
        for pk in pks {
            let released = node.propose_lobby(LobbyAction::ReleaseRooms { pk }).await?;
            if let Response::Rejected(reason) = &released {
                tracing::error!(%pk, ?reason, "lobby refused to release a PK's rooms");
            }
            node.propose_arena(self.arena, ArenaAction::ConfirmRoomsReleased { pk }).await?;
            tracing::debug!(%pk, "PK's rooms released in the lobby");
        }
        Ok(())
    }
}

impl Duty for Releases {
    fn name(&self) -> &'static str {
        "hand-over of room releases"
    }

    async fn step(&mut self) -> Step {
        let Some(replica) = self.node.arena(self.arena) else { return Step::Idle(None) };
        let pks: Vec<pkd_raft::PkId> = replica.read(|arena| arena.pending_releases().collect());
        if pks.is_empty() {
            return Step::Idle(None);
        }
        match self.deliver(pks).await {
            Ok(()) => Step::Worked,
            Err(error) => {
                tracing::warn!(arena = %self.arena, %error, "hand-over of room releases failed; retrying");
                Step::Failed
            }
        }
    }
}
