//! Which raft groups a node hosts and what each one is for: one lobby (group 0), the only
//! authority on who is matching and who is in a PK, and N arenas (groups 1..=N), a PK
//! living on arena `pkd_raft::arena_for(pk, N)`. Every part of the shell that needs a group
//! id asks here rather than working it out again.

use pkd_raft::{MachineKind, PkId};

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
}
