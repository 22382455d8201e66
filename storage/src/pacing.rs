//! Flush pacing: which of a group's replicas must flush their appends at once, and which
//! may let them wait for a flush that another group asks for anyway
//! ([`LogStore::set_urgent`](crate::LogStore::set_urgent)).
//!
//! A leader commits an entry once a majority of the voters hold it on disk: itself and, of
//! `n` voters, `n / 2` followers. Those followers are the ones after the leader in id order,
//! wrapping around. The other followers defer their flushes, so each node does fewer of
//! them; none of them acknowledges anything before its flush. A pure function of the
//! group's view and of which peers answer, tested without a cluster.

use crate::NodeId;

/// Whether node `me` must flush its appends at once, given the group's leader and voters
/// (`voters` in increasing id order) and which peers it is connected to. Everything flushes
/// at once but a follower the leader does not count on: the leader, a learner, a node that
/// knows no leader, and a deferring follower not connected to one of the followers the
/// leader counts on (that one may be down, and then the leader needs this node).
pub fn urgent_appends(
    me: NodeId,
    leader: Option<NodeId>,
    voters: &[NodeId],
    connected: impl Fn(NodeId) -> bool,
) -> bool {
    let Some(leader) = leader else { return true };
    if leader == me || !voters.contains(&me) {
        return true;
    }
    let Some(at) = voters.iter().position(|&voter| voter == leader) else { return true };
    let counted: Vec<NodeId> =
        (1..voters.len()).map(|step| voters[(at + step) % voters.len()]).take(voters.len() / 2).collect();
    counted.contains(&me) || counted.iter().any(|&peer| !connected(peer))
}

#[cfg(test)]
mod tests {
    use super::urgent_appends;

    fn everyone(_: u64) -> bool {
        true
    }

    #[test]
    fn of_three_voters_the_leader_and_the_next_one_flush_at_once() {
        let voters = [1, 2, 3];
        // (leader, the follower it counts on, the follower that defers)
        for (leader, counted, deferring) in [(1, 2, 3), (2, 3, 1), (3, 1, 2)] {
            assert!(urgent_appends(leader, Some(leader), &voters, everyone), "leader {leader}");
            assert!(urgent_appends(counted, Some(leader), &voters, everyone), "leader {leader}, node {counted}");
            assert!(!urgent_appends(deferring, Some(leader), &voters, everyone), "leader {leader}, node {deferring}");
        }
    }

    #[test]
    fn of_five_voters_two_followers_flush_at_once() {
        let voters = [1, 2, 4, 7, 9];
        let urgent: Vec<u64> =
            voters.into_iter().filter(|&me| urgent_appends(me, Some(7), &voters, everyone)).collect();
        assert_eq!(urgent, vec![1, 7, 9]);
    }

    #[test]
    fn without_a_known_leader_a_learner_or_a_counted_peer_everyone_flushes_at_once() {
        let voters = [1, 2, 3];
        assert!(urgent_appends(3, None, &voters, everyone), "no leader known");
        assert!(urgent_appends(4, Some(1), &voters, everyone), "a learner");
        assert!(
            urgent_appends(3, Some(1), &voters, |peer| peer != 2),
            "node 2, which leader 1 counts on, is unreachable"
        );
        assert!(!urgent_appends(3, Some(1), &voters, |peer| peer != 1), "only the leader is unreachable from here");
        assert!(urgent_appends(1, Some(1), &[1], everyone), "a single voter");
    }
}
