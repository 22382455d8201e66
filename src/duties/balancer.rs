//! Spreading leadership over the nodes: while this node leads a group whose preferred
//! node is another one, and that node is connected, hand the leadership to it. The
//! preferred node is the operator's placement of the group, if there is one
//! (`Action::PlaceLeader`, replicated, so it holds whoever leads), and otherwise worked out
//! from the membership in force each time, so the balance follows nodes joining and
//! leaving (and a cluster formed through the admin API's `init`).

use std::time::Duration;

use pkd_raft::StateMachine;

use super::{Duty, Step};
use crate::replication::consensus::{self, GroupId};
use crate::replication::node::Node;
use crate::replication::replica::ReplicaHandle;
use crate::topology::preferred_leader;

/// How long a new leader waits before handing leadership to the group's preferred node.
const BALANCE_DELAY: Duration = Duration::from_millis(500);
/// How long before looking again if the preferred node did not take over.
const BALANCE_RETRY: Duration = Duration::from_secs(2);

/// The balancer of one group, whose machine is an `M`.
pub struct Balancer<M> {
    node: Node,
    group: GroupId,
    replica: ReplicaHandle<M>,
    /// The next step waits [`BALANCE_DELAY`] first: leadership has just changed.
    settling: bool,
}

impl<M: StateMachine> Balancer<M> {
    /// The balancer of the group `replica` belongs to.
    pub fn new(node: &Node, replica: &ReplicaHandle<M>) -> Balancer<M> {
        Balancer { node: node.clone(), group: replica.group(), replica: replica.clone(), settling: true }
    }
}

impl<M: StateMachine + Send + Sync + 'static> Duty for Balancer<M> {
    fn name(&self) -> &'static str {
        "balancer"
    }

    fn lead(&mut self) {
        self.settling = true;
    }

    async fn step(&mut self) -> Step {
        if std::mem::take(&mut self.settling) {
            return Step::Sleep(BALANCE_DELAY);
        }
        self.settling = true;
        let (Ok(group), Some(network)) = (self.node.group(self.group), self.node.network()) else {
            return Step::Sleep(BALANCE_RETRY);
        };
        let voters = group.metrics().read(consensus::voters);
        let placement = self.replica.read(|machine| machine.placement().clone());
        let me = self.node.id();
        if let Some(preferred) = preferred_leader(self.group, &voters, &placement).filter(|&preferred| preferred != me)
            && network.is_connected(preferred)
        {
            tracing::info!(group = %self.group, to = preferred, "handing leadership to the preferred node");
            if let Err(error) = group.transfer_leadership(preferred).await {
                tracing::warn!(group = %self.group, %error, "leadership transfer failed");
            }
        }
        Step::Sleep(BALANCE_RETRY)
    }
}
