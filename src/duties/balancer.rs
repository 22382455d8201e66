//! Spreading leadership over the nodes: while this node leads a group whose preferred
//! node is another one, and that node is connected, hand the leadership to it. The
//! preferred node is worked out from the membership in force each time, so the balance
//! follows nodes joining and leaving (and a cluster formed through the admin API's `init`).

use std::time::Duration;

use super::{Duty, Step};
use crate::replication::consensus::{self, GroupId, NodeId};
use crate::replication::node::Node;

/// How long a new leader waits before handing leadership to the group's preferred node.
const BALANCE_DELAY: Duration = Duration::from_millis(500);
/// How long before looking again if the preferred node did not take over.
const BALANCE_RETRY: Duration = Duration::from_secs(2);

/// The node that should lead `group` when it is up, so that leaders are spread over the
/// nodes: the lobby on the first voter, arena `i` on voter `i` (modulo the voter count),
/// `voters` in increasing id order.
pub fn preferred_leader(group: GroupId, voters: &[NodeId]) -> Option<NodeId> {
    let count = u64::try_from(voters.len()).ok().filter(|&count| count > 0)?;
    voters.get(usize::try_from(group.0 % count).ok()?).copied()
}

/// The balancer of one group.
pub struct Balancer {
    node: Node,
    group: GroupId,
    /// The next step waits [`BALANCE_DELAY`] first: leadership has just changed.
    settling: bool,
}

impl Balancer {
    pub fn new(node: &Node, group: GroupId) -> Balancer {
        Balancer { node: node.clone(), group, settling: true }
    }
}

impl Duty for Balancer {
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
        let me = self.node.id();
        if let Some(preferred) = preferred_leader(self.group, &voters).filter(|&preferred| preferred != me)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaders_are_spread_over_the_voters() {
        let voters = [1, 2, 3];
        let preferred: Vec<Option<NodeId>> = (0..5).map(|group| preferred_leader(GroupId(group), &voters)).collect();
        assert_eq!(preferred, [Some(1), Some(2), Some(3), Some(1), Some(2)]);
        assert_eq!(preferred_leader(GroupId(2), &[4, 9]), Some(4));
        assert_eq!(preferred_leader(GroupId(0), &[]), None);
    }
}
