//! Faults on the node-to-node RPC path, for the in-process fault tests (compiled in only
//! with the `fault-injection` feature; a production build has no rules table and no check).
//!
//! [`LinkFaults`] is one rules table shared by every node of a test cluster in one process
//! (each node's [`super::NetworkConfig::link_faults`] holds the same handle). Every request a
//! node sends through [`super::Network`] consults it twice: the direction of the request
//! (`from` the caller `to` the peer) before it is sent, and the direction of the reply (`from`
//! the peer `to` the caller) once the reply is back. A rule applies to one group or, without
//! one, to every group of the pair (inquiries count as the lobby's, group 0):
//!
//! - [`LinkFault::Drop`]: a request is not sent and fails at once, as a connection refused
//!   does; a reply is thrown away after the peer has acted on the request, so the caller
//!   gets an error for something that may have happened (the case a retry must survive);
//! - [`LinkFault::Delay`]: the request waits this long before it is sent, the reply this
//!   long before it is handed back, within the request's time limit.
//!
//! A group's own rule and the pair's rule add up: a drop in either drops, delays add.
//! Partitions are made of drops ([`LinkFaults::partition`], [`LinkFaults::isolate`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lock;
use crate::replication::consensus::{GroupId, NodeId};

/// What happens to the traffic one rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFault {
    /// Nothing gets through.
    Drop,
    /// Everything gets through this much later.
    Delay(Duration),
}

/// The traffic a rule covers: one direction between two nodes, in one group or in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Direction {
    pub from: NodeId,
    pub to: NodeId,
    /// `None`: every group of the pair.
    pub group: Option<GroupId>,
}

/// The rules table. Cheap to clone: clones share the table.
#[derive(Clone, Default)]
pub struct LinkFaults {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    rules: Mutex<BTreeMap<Direction, LinkFault>>,
    dropped: AtomicU64,
    delayed: AtomicU64,
}

impl fmt::Debug for LinkFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkFaults").field("rules", &*lock(&self.inner.rules)).finish()
    }
}

impl LinkFaults {
    pub fn new() -> LinkFaults {
        LinkFaults::default()
    }

    /// Sets the rule of one direction (replacing the one it had).
    pub fn set(&self, direction: Direction, fault: LinkFault) {
        lock(&self.inner.rules).insert(direction, fault);
    }

    /// Removes the rule of one direction.
    pub fn clear(&self, direction: Direction) {
        lock(&self.inner.rules).remove(&direction);
    }

    /// Removes every rule: every link passes again.
    pub fn heal(&self) {
        lock(&self.inner.rules).clear();
    }

    /// The rules in force.
    pub fn rules(&self) -> BTreeMap<Direction, LinkFault> {
        lock(&self.inner.rules).clone()
    }

    /// Cuts what `from` sends `to` (in `group`, or in every group); the other way passes.
    pub fn cut_one_way(&self, from: NodeId, to: NodeId, group: Option<GroupId>) {
        self.set(Direction { from, to, group }, LinkFault::Drop);
    }

    /// Cuts both ways between `a` and `b`.
    pub fn cut(&self, a: NodeId, b: NodeId, group: Option<GroupId>) {
        self.cut_one_way(a, b, group);
        self.cut_one_way(b, a, group);
    }

    /// Delays both ways between `a` and `b` by `delay`.
    pub fn delay(&self, a: NodeId, b: NodeId, group: Option<GroupId>, delay: Duration) {
        self.set(Direction { from: a, to: b, group }, LinkFault::Delay(delay));
        self.set(Direction { from: b, to: a, group }, LinkFault::Delay(delay));
    }

    /// Cuts, both ways, every pair of nodes on different sides.
    pub fn partition(&self, sides: &[Vec<NodeId>], group: Option<GroupId>) {
        for (index, side) in sides.iter().enumerate() {
            for other in &sides[index + 1..] {
                for &a in side {
                    for &b in other {
                        self.cut(a, b, group);
                    }
                }
            }
        }
    }

    /// Cuts `node` off from each of `others`, both ways.
    pub fn isolate(&self, node: NodeId, others: &[NodeId], group: Option<GroupId>) {
        self.partition(&[vec![node], others.iter().copied().filter(|&other| other != node).collect()], group);
    }

    /// What happens to what `from` sends `to` in `group` now.
    pub fn fault(&self, from: NodeId, to: NodeId, group: GroupId) -> Option<LinkFault> {
        let rules = lock(&self.inner.rules);
        if rules.is_empty() {
            return None;
        }
        let found = [None, Some(group)].map(|group| rules.get(&Direction { from, to, group }).copied());
        let mut delay = Duration::ZERO;
        for fault in found.into_iter().flatten() {
            match fault {
                LinkFault::Drop => return Some(LinkFault::Drop),
                LinkFault::Delay(more) => delay += more,
            }
        }
        (!delay.is_zero()).then_some(LinkFault::Delay(delay))
    }

    /// Requests and replies dropped, and delayed, so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.inner.dropped.load(Ordering::Relaxed), self.inner.delayed.load(Ordering::Relaxed))
    }

    /// Applies the rule of one direction to one message: `false` if it is dropped, after
    /// waiting out a delay (at most `limit`).
    pub(super) async fn pass(&self, from: NodeId, to: NodeId, group: GroupId, limit: Duration) -> bool {
        match self.fault(from, to, group) {
            None => true,
            Some(LinkFault::Drop) => {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            Some(LinkFault::Delay(delay)) => {
                self.inner.delayed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay.min(limit)).await;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOBBY: GroupId = GroupId(0);
    const ARENA: GroupId = GroupId(1);

    #[test]
    fn rules_apply_per_direction_and_group_and_add_up() {
        let faults = LinkFaults::new();
        assert_eq!(faults.fault(1, 2, LOBBY), None);
        faults.cut_one_way(1, 2, Some(ARENA));
        assert_eq!(faults.fault(1, 2, ARENA), Some(LinkFault::Drop));
        assert_eq!(faults.fault(1, 2, LOBBY), None, "another group passes");
        assert_eq!(faults.fault(2, 1, ARENA), None, "the other way passes");
        faults.delay(1, 2, None, Duration::from_millis(30));
        assert_eq!(faults.fault(1, 2, ARENA), Some(LinkFault::Drop), "a drop wins over a delay");
        assert_eq!(faults.fault(2, 1, LOBBY), Some(LinkFault::Delay(Duration::from_millis(30))));
        faults.delay(2, 1, Some(LOBBY), Duration::from_millis(20));
        assert_eq!(faults.fault(2, 1, LOBBY), Some(LinkFault::Delay(Duration::from_millis(50))), "delays add");
        faults.heal();
        assert_eq!(faults.fault(1, 2, ARENA), None);
    }

    #[test]
    fn a_partition_cuts_every_pair_across_its_sides_only() {
        let faults = LinkFaults::new();
        faults.partition(&[vec![1], vec![2, 3]], None);
        for (from, to) in [(1, 2), (2, 1), (1, 3), (3, 1)] {
            assert_eq!(faults.fault(from, to, ARENA), Some(LinkFault::Drop), "{from} -> {to}");
        }
        assert_eq!(faults.fault(2, 3, ARENA), None);
        faults.heal();
        faults.isolate(2, &[1, 2, 3], Some(LOBBY));
        assert_eq!(faults.fault(3, 2, LOBBY), Some(LinkFault::Drop));
        assert_eq!(faults.fault(3, 2, ARENA), None);
        assert_eq!(faults.fault(1, 3, LOBBY), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_is_waited_out_within_the_limit_and_a_drop_counted() {
        let faults = LinkFaults::new();
        faults.delay(1, 2, None, Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        assert!(faults.pass(1, 2, LOBBY, Duration::from_secs(1)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        faults.cut_one_way(2, 1, None);
        assert!(!faults.pass(2, 1, LOBBY, Duration::from_secs(1)).await);
        assert_eq!(faults.counts(), (1, 1));
    }
}
