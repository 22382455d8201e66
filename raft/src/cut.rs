//! One consistent cut from group states captured one after another: what a backup holds.
//!
//! A backup reads the lobby first and the arenas after it, each at a committed index, but
//! not at one instant: PKs move between the groups in the meantime through the hand-over
//! outboxes (the lobby orders a PK from an arena; the arena releases the PK's rooms in the
//! lobby when it settles). Because the lobby is read first, the arenas can be ahead of it
//! in two ways only, and [`make_consistent`] takes each back to what the lobby saw:
//!
//! - an arena holds a PK the lobby of the cut had not ordered yet (its id is above the
//!   lobby's last one): the arena forgets it, as if the backup had been taken before the
//!   match;
//! - the lobby still holds the rooms of a PK its arena has settled and released since: the
//!   lobby releases them, as the arena's release would have.
//!
//! The opposite cases cannot arise from a lobby-first capture (a release the lobby applied
//! was sent by an arena before the lobby was read, so the arena read later shows it; an
//! order the lobby confirmed was created in the arena before the lobby was read). Every
//! other difference is an outbox item still pending, which the restored cluster delivers
//! again, idempotently, as after any failover.

use crate::{Arena, Lobby, PkId};

/// A machine whose leader placement can be cleared.
pub trait Placed {
    /// Forgets where the operator placed the leadership and which nodes were draining:
    /// they name the nodes of the cluster a backup came from.
    fn clear_placement(&mut self);
}

/// Clears `machine`'s leader placement ([`Placed`]).
pub fn clear_placement(machine: &mut impl Placed) {
    machine.clear_placement();
}

/// Where a PK stands in its arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Running, or settled with its rooms not yet released in the lobby.
    Live,
    /// Settled, its rooms released; the id is still remembered.
    Done,
    /// Never created here, or forgotten (an hour after it ended).
    Unknown,
}

/// What [`make_consistent`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutRepairs {
    /// PKs the arenas forgot: ordered after the lobby was read.
    pub forgotten: Vec<PkId>,
    /// PKs whose rooms the lobby released: settled before the arenas were read.
    pub released: Vec<PkId>,
}

/// Makes `lobby` (read first) and `arenas` (read after it) one consistent cut.
/// `arena_for` names the index in `arenas` of a PK's arena.
pub fn make_consistent(lobby: &mut Lobby, arenas: &mut [Arena], arena_for: impl Fn(PkId) -> usize) -> CutRepairs {
    let mut repairs = CutRepairs::default();
    let last_pk = lobby.last_pk();
    for arena in arenas.iter_mut() {
        repairs.forgotten.extend(arena.forget_after(last_pk));
    }
    repairs.forgotten.sort();
    for (pk, confirmed) in lobby.held_orders() {
        let standing = arenas.get(arena_for(pk)).map_or(Standing::Unknown, |arena| arena.standing(pk));
        // Unknown and confirmed: the arena settled it and forgot it since.
        let over = match standing {
            Standing::Live => false,
            Standing::Done => true,
            Standing::Unknown => confirmed,
        };
        if over {
            lobby.release_for_cut(pk);
            repairs.released.push(pk);
        }
    }
    repairs
}

/// Makes the lobby's next PK ids start `gap` above the last one it gave out, so that a
/// cluster restored from an older backup does not give out again the ids the old cluster
/// used after the backup (their results may already be stored).
pub fn skip_pk_ids(lobby: &mut Lobby, gap: u64) {
    lobby.skip_pk_ids(gap);
}
