//! Which raft groups a node hosts and what each one is for: one lobby (group 0), the only
//! authority on who is matching and who is in a PK, and N arenas (groups 1..=N), a PK
//! living on arena `pkd_raft::arena_for(pk, N)`. Every part of the shell that needs a group
//! id asks here rather than working it out again.

use pkd_raft::{LeaderPlacement, MachineKind, PkId};
use pkd_storage::NodeId;

use pkd_storage::GroupId;

/// The lobby's group id.
pub const LOBBY: GroupId = GroupId(0);

/// The groups of a cluster: fixed for its whole life, since a PK's arena follows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    arenas: u32,
}

impl Topology {
    /// One lobby and `arenas` arenas; `None` without any arena.
    pub fn new(arenas: u32) -> Option<Topology> {
        (arenas > 0).then_some(Topology { arenas })
    }

    /// How many arenas.
    pub fn arena_count(&self) -> u32 {
        self.arenas
    }

    /// The lobby.
    pub fn lobby(&self) -> GroupId {
        LOBBY
    }

    /// Every arena, in id order.
    pub fn arenas(&self) -> impl Iterator<Item = GroupId> + use<> {
        (1..=u64::from(self.arenas)).map(GroupId)
    }

    /// Every group: the lobby, then the arenas.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + use<> {
        (0..=u64::from(self.arenas)).map(GroupId)
    }

    /// How many groups in all.
    pub fn group_count(&self) -> usize {
        self.arenas as usize + 1
    }

    /// The arena that hosts `pk`.
    pub fn arena_of(&self, pk: PkId) -> GroupId {
        GroupId(u64::from(pkd_raft::arena_for(pk, self.arenas)) + 1)
    }

    /// What `group` is for, if it is one of this topology's.
    pub fn kind(&self, group: GroupId) -> Option<MachineKind> {
        match group.0 {
            0 => Some(MachineKind::Lobby),
            id if id <= u64::from(self.arenas) => Some(MachineKind::Arena),
            _ => None,
        }
    }

    /// `group`'s position among [`Topology::groups`].
    pub fn index(&self, group: GroupId) -> Option<usize> {
        self.kind(group).map(|_| group.0 as usize)
    }
}

/// The node that should lead `group` when it is up: the voter the operator placed it on,
/// if any; otherwise leaders are spread over the nodes: the lobby on the first voter, arena
/// `i` on voter `i` (modulo the voter count), `voters` in increasing id order. A node being
/// drained leads nothing: a group that would be its goes to the other voters, spread the
/// same way, and the other groups stay where they are.
pub fn preferred_leader(group: GroupId, voters: &[NodeId], placement: &LeaderPlacement) -> Option<NodeId> {
    let spread = |among: &[NodeId]| {
        let count = u64::try_from(among.len()).ok().filter(|&count| count > 0)?;
        among.get(usize::try_from(group.0 % count).ok()?).copied()
    };
    let wanted = placement.placed.filter(|placed| voters.contains(placed)).or_else(|| spread(voters))?;
    if !placement.draining.contains(&wanted) {
        return Some(wanted);
    }
    let others: Vec<NodeId> = voters.iter().copied().filter(|voter| !placement.draining.contains(voter)).collect();
    spread(&others)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_arenas_and_the_home_of_a_pk() {
        assert!(Topology::new(0).is_none());
        let topology = Topology::new(3).unwrap();
        assert_eq!(topology.groups().map(|g| g.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(topology.arenas().map(|g| g.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(topology.kind(GroupId(0)), Some(MachineKind::Lobby));
        assert_eq!(topology.kind(GroupId(3)), Some(MachineKind::Arena));
        assert_eq!(topology.kind(GroupId(4)), None);
        for pk in 1..100 {
            let arena = topology.arena_of(PkId(pk));
            assert_eq!(topology.kind(arena), Some(MachineKind::Arena), "pk {pk}");
            assert_eq!(arena.0, u64::from(pkd_raft::arena_for(PkId(pk), 3)) + 1);
        }
    }

    #[test]
    fn leaders_are_spread_over_the_voters() {
        let voters = [1, 2, 3];
        let none = LeaderPlacement::default();
        let preferred: Vec<Option<NodeId>> =
            (0..5).map(|group| preferred_leader(GroupId(group), &voters, &none)).collect();
        assert_eq!(preferred, [Some(1), Some(2), Some(3), Some(1), Some(2)]);
        assert_eq!(preferred_leader(GroupId(2), &[4, 9], &none), Some(4));
        assert_eq!(preferred_leader(GroupId(0), &[], &none), None);
    }

    #[test]
    fn an_operator_placement_wins_while_the_node_is_a_voter() {
        let placed = LeaderPlacement { placed: Some(3), ..LeaderPlacement::default() };
        assert_eq!(preferred_leader(GroupId(1), &[1, 2, 3], &placed), Some(3));
        assert_eq!(preferred_leader(GroupId(1), &[1, 2], &placed), Some(2), "node 3 was removed: spread again");
    }

    #[test]
    fn a_draining_node_leads_nothing() {
        let draining = LeaderPlacement { placed: None, draining: [1].into() };
        let preferred: Vec<Option<NodeId>> =
            (0..4).map(|group| preferred_leader(GroupId(group), &[1, 2, 3], &draining)).collect();
        assert_eq!(preferred, [Some(2), Some(2), Some(3), Some(3)], "node 1's groups to 2 and 3, the others stay");
        let placed_on_draining = LeaderPlacement { placed: Some(1), draining: [1].into() };
        assert_eq!(preferred_leader(GroupId(1), &[1, 2, 3], &placed_on_draining), Some(3));
        let all = LeaderPlacement { placed: None, draining: [1, 2, 3].into() };
        assert_eq!(preferred_leader(GroupId(0), &[1, 2, 3], &all), None);
    }
}
