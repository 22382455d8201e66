//! Reads of this node's replicas, as fresh as the caller asks ([`Consistency`]).

use std::time::Duration;

use pkd_raft::{Arena, Lobby};
use tokio::sync::watch;

use super::Node;
use crate::replication::consensus::{self, GroupId};
use crate::replication::error::{ProposeError, ReadIndexFailure};
use crate::retry::{Attempt, patiently};

/// How fresh a read of a replica must be (see [`Node::read`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// This node's replica as it stands: no message, no wait. On the leader it holds every
    /// acknowledged write. A follower's replica trails the leader by the time the leader
    /// takes to tell it that an entry committed: the next append or heartbeat, so at most
    /// one heartbeat interval (50 ms) plus a round trip while the cluster is healthy. A node
    /// cut off from its leader keeps serving its last state, however old.
    Local,
    /// Reflects every write acknowledged before the read began, wherever it was made. The
    /// leader confirms with a quorum that it still leads and names a log index (raft's
    /// ReadIndex); this node waits until its replica has applied that index. It costs a
    /// round of heartbeats, plus a round trip when this node does not lead the group.
    Linearizable,
}

/// How long a linearizable read may take to get its read index, and then to catch up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause before asking again for a read index while the leadership moves.
const READ_RETRY: Duration = Duration::from_millis(20);

impl Node {
    /// Runs `read` on this node's replica of the lobby, as fresh as `consistency` asks.
    ///
    /// [`Consistency::Linearizable`] fails rather than answer from a replica it cannot
    /// prove current: no leader reachable, no quorum behind it, or the replica not caught up
    /// within [`READ_TIMEOUT`].
    pub async fn read_lobby<T>(
        &self,
        consistency: Consistency,
        read: impl FnOnce(&Lobby) -> T,
    ) -> Result<T, ProposeError> {
        let replica = self.lobby();
        self.caught_up(replica.group(), replica.applied(), consistency).await?;
        Ok(replica.read(read))
    }

    /// Runs `read` on this node's replica of arena `arena`, as fresh as `consistency` asks
    /// (see [`Node::read_lobby`]).
    pub async fn read_arena<T>(
        &self,
        arena: GroupId,
        consistency: Consistency,
        read: impl FnOnce(&Arena) -> T,
    ) -> Result<T, ProposeError> {
        let replica = self.arena(arena).ok_or(ProposeError::UnknownGroup(arena))?;
        self.caught_up(arena, replica.applied(), consistency).await?;
        Ok(replica.read(read))
    }

    /// Returns once a read of `group`'s replica may answer as `consistency` asks.
    async fn caught_up(
        &self,
        group: GroupId,
        mut applied: watch::Receiver<Option<u64>>,
        consistency: Consistency,
    ) -> Result<(), ProposeError> {
        if consistency == Consistency::Local {
            return Ok(());
        }
        let index = self.read_index(group).await?;
        let caught_up = applied.wait_for(|applied| applied.is_some_and(|applied| applied >= index));
        match tokio::time::timeout(READ_TIMEOUT, caught_up).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ProposeError::Stopped(group)),
            Err(_) => {
                let message = format!("the replica did not apply index {index} within {READ_TIMEOUT:?}");
                Err(ProposeError::Raft { group, message })
            }
        }
    }

    /// The log index this node's replica of `group` must have applied for a linearizable
    /// read: from the leader, here or over the network, after it has confirmed its
    /// leadership with a quorum. Tries again while the leadership moves, up to
    /// [`READ_TIMEOUT`].
    async fn read_index(&self, group: GroupId) -> Result<u64, ProposeError> {
        let local = self.group(group)?;
        let asked = patiently(READ_TIMEOUT, READ_RETRY, || async move {
            match (local.leader(), self.network()) {
                (Some(leader), Some(network)) if leader != self.id() => {
                    network.read_index(leader, group).await.map_err(|failure| match failure {
                        Ok(refused) => Attempt::Again(refused.to_string()),
                        Err(unreachable) => Attempt::Again(unreachable.to_string()),
                    })
                }
                _ => consensus::read_index(local.raft()).await.map_err(|failure| match failure {
                    ReadIndexFailure::Stopped => Attempt::ForGood(failure.to_string()),
                    failure => Attempt::Again(failure.to_string()),
                }),
            }
        });
        asked.await.map_err(|failure| ProposeError::Raft {
            group,
            message: format!("no linearizable read within {READ_TIMEOUT:?}: {failure}"),
        })
    }
}
