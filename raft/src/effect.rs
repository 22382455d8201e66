//! What the shell must do after a command commits: pushes, cache writes, hand-overs.
//!
//! Effects are consequences of committed state, tagged by the shell with the log index
//! that produced them. A restart replays the log and produces them again, so every
//! consumer must be idempotent: cache writes carry absolute values, hand-overs are keyed
//! by PK id, pushes are state snapshots.

use crate::command::{GifterProfile, PkOrder};
use crate::ids::{GiftId, PkId, RoomId, TimestampMs, UserId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// A message for app clients.
    Pushed(Push),
    /// A PK's scoreboard changed (gift, presence). Each node pushes the state from its
    /// own replica, at most once a second per PK, and every 5 s regardless.
    PkChanged { pk: PkId },
    /// A Redis read-cache key changed.
    CacheChanged(CacheChange),
    /// Lobby: a PK was decided and must be created on its arena (kept in the lobby's
    /// outbox until `ConfirmPkCreated`).
    PkOrdered(PkOrder),
    /// Arena: a PK settled: release its rooms in the lobby and store its result (kept
    /// in the arena's outbox until both are confirmed).
    PkSettled(Box<SettledPk>),
}

/// A push and who receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    pub to: Audience,
    pub message: PushMessage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Audience {
    /// Everyone in the room (`mode` "m").
    Room(RoomId),
    /// One user, in a room (`mode` "u").
    User { user: UserId, room: RoomId },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushMessage {
    /// pub type 10: the PK's state (start, change, end).
    PkState(Box<PkView>),
    /// pub type 12: an invitation from `inviter` (content.source).
    Invitation { inviter: UserId },
    /// pub type 13: matching started (content.msg = the anchor).
    MatchingStarted { anchor: UserId },
    /// pub type 14 (pkd's): matching ended without a match.
    MatchFailed { anchor: UserId, why: MatchFailure },
    /// pub type 15 (pkd's): the PK is over, after its after-battle stage if it had one;
    /// its rooms are free. `status` is `Done` or `Error`.
    PkClosed { pk: PkId, status: PkStatus },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchFailure {
    /// `endTime` passed without a match.
    TimedOut,
    /// `pk_enable` was switched off.
    Disabled,
    /// `version_control` now refuses the anchor's client.
    VersionTooOld,
}

/// The Redis keys of the source, and what to write. Values are absolute, so a write
/// replayed after a restart is harmless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheChange {
    /// `pkm`: the anchor is matching (`Some(since)`) or not (`None`).
    Matching { anchor: UserId, since: Option<TimestampMs> },
    /// `pkr`: the room is in PK `pk`, or no longer in any PK (`None`).
    RoomInPk { room: RoomId, pk: Option<PkId> },
    /// `room_pk_invited`: the anchor was invited at `at` (`None`: cool-down over).
    Invited { anchor: UserId, at: Option<TimestampMs> },
    /// `pk_${pk}`: the PK's data changed; the shell writes it from its replica.
    Pk { pk: PkId },
    /// `pkg_${pk}_${anchor}`: `sender` has given `beans` in all to `anchor`.
    GifterTotal { pk: PkId, anchor: UserId, sender: UserId, beans: i64 },
    /// The PK is over: `pk_${pk}` shows its final state (status 2 or 3, the winner, the
    /// final totals and top gifters) for a while, then it and its `pkg_` keys go.
    PkEnded { pk: PkId, anchors: [UserId; 2], final_view: Box<PkView> },
}

/// A PK's status as the app sees it (push `status`; `t_pk.status` adds 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PkStatus {
    /// The opening phase: gifts do not count yet (push status 0).
    Opening,
    /// The battle (push status 1, t_pk 1).
    Battle,
    /// After the battle, winner known (push status 2, t_pk 4).
    Ending,
    /// Settled normally (push 2, t_pk 2).
    Done,
    /// Ended abnormally (push 3, t_pk 3).
    Error,
}

impl PkStatus {
    /// `status` in pub type 10.
    pub fn push_code(self) -> u8 {
        match self {
            PkStatus::Opening => 0,
            PkStatus::Battle => 1,
            PkStatus::Ending | PkStatus::Done => 2,
            PkStatus::Error => 3,
        }
    }

    /// `t_pk.status`.
    pub fn table_code(self) -> u8 {
        match self {
            PkStatus::Opening | PkStatus::Battle => 1,
            PkStatus::Done => 2,
            PkStatus::Error => 3,
            PkStatus::Ending => 4,
        }
    }
}

/// One side of a PK as pushed to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideView {
    pub anchor: UserId,
    pub room: RoomId,
    pub beans: i64,
    pub online: bool,
    pub audience: u32,
    pub top_gifters: Vec<TopGifter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopGifter {
    pub sender: UserId,
    pub beans: i64,
    pub profile: Option<GifterProfile>,
}

/// A PK's state: the content of pub type 10 and of the `pk_${pk}` hash.
/// `remainingTime` is computed by whoever renders it, from `end_time` and its clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkView {
    pub pk: PkId,
    pub status: PkStatus,
    pub interfered: bool,
    /// When the PK was made (the opening phase starts).
    pub start_time: TimestampMs,
    /// When the battle ends.
    pub end_time: TimestampMs,
    pub source: SideView,
    pub target: SideView,
    /// Decided at the end of the battle; `Some(UserId(0))` is a draw.
    pub winner: Option<UserId>,
}

/// A settled PK: what the results sink writes to `t_pk`, `t_pk_anchor`, `t_pk_gift`
/// and, from each side's counted gifts, `t_pk_gift_ledger`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettledPk {
    pub pk: PkId,
    /// `Done` or `Error`.
    pub status: PkStatus,
    pub abnormal: Option<AbnormalEnd>,
    pub interfered: bool,
    pub start_time: TimestampMs,
    pub battle_end: TimestampMs,
    /// When it settled.
    pub end_time: TimestampMs,
    /// `end_time - start_time`, in ms.
    pub duration_ms: i64,
    pub source: SettledSide,
    pub target: SettledSide,
    /// The winner's id, or 0 for a draw and for an abnormal end.
    pub winner: UserId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbnormalEnd {
    /// An administrator aborted it.
    Aborted,
    /// An anchor was away longer than `pk_limits.anchorGraceMs`.
    AnchorLeft { anchor: UserId },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettledSide {
    pub anchor: UserId,
    pub room: RoomId,
    pub beans: i64,
    /// The largest audience seen.
    pub audience: u32,
    /// Every sender to this side, highest first; `rank` counts from 1.
    pub gifters: Vec<GifterTotal>,
    /// The gift ledger: every gift counted for this side, once, in the order counted.
    /// Complete unless the PK was running when its arena was restored from a snapshot
    /// of format 3 or older, which kept no ledger: the gifts counted before then are
    /// missing (their beans are in `beans` and `gifters` all the same).
    pub gifts: Vec<CountedGift>,
}

/// One counted gift, as the ledger keeps it (32 bytes in memory; its receiver is the
/// side's anchor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountedGift {
    pub id: GiftId,
    pub sender: UserId,
    pub beans: i64,
    /// When it was counted: the time of the command that carried it.
    pub at: TimestampMs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GifterTotal {
    pub sender: UserId,
    pub beans: i64,
    pub times: u32,
    pub rank: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_gift_takes_32_bytes() {
        // ARCHITECTURE.md's memory figures for the gift ledger rest on this.
        assert_eq!(std::mem::size_of::<CountedGift>(), 32);
    }
}
