//! What goes into the log: a leader-stamped [`Command`] with one [`Action`].
//!
//! Each kind of machine has its own action and timer types ([`LobbyAction`] and
//! [`LobbyTimer`], [`ArenaAction`] and [`ArenaTimer`]), so a caller names the kind of
//! group a command is for in its type.

use crate::audit::AuditRecord;
use crate::config::PkTiming;
use crate::ids::{GiftId, PkId, RoomId, TimestampMs, UserId};
use serde::{Deserialize, Serialize};

/// One entry's worth of intent. `at` is the proposing leader's clock; the core keeps
/// `now = max(now, at)`, so a leader whose clock lags cannot move time backwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub at: TimestampMs,
    pub action: Action,
}

impl Command {
    /// A command stamped `at` (ms): `Command::new(at, LobbyAction::StopMatch { anchor })`.
    pub fn new(at: i64, action: impl Into<Action>) -> Command {
        Command { at: TimestampMs(at), action: action.into() }
    }
}

/// Everything the engine can be asked to do. The lobby group takes [`LobbyAction`]s and
/// lobby timers, an arena group [`ArenaAction`]s and arena timers; both take `SetConfig`.
/// A typed caller cannot address an action to the wrong kind of group; one that arrives
/// there all the same (a corrupted or misrouted message) is refused with
/// `Reason::WrongGroup` and changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Matchmaking and the room directory: for the lobby.
    Lobby(LobbyAction),
    /// The PKs themselves: for an arena.
    Arena(ArenaAction),
    /// Set a `t_config` row (`pk_enable`, `pk_duration`, `pk_config`,
    /// `pk_filter_country`, `version_control`) or pkd's `pk_limits`, in its source format.
    /// Every group takes it.
    SetConfig { key: String, value: String },
    /// A timer the leader saw fall due. A no-op unless that very timer is due now.
    Fire(Timer),
    /// The operator's choice of this group's leader (`None`: leaders spread by the
    /// balancer's rule). Every group takes it; it changes nothing but where the shell's
    /// balancer moves the leadership.
    PlaceLeader { node: Option<u64> },
    /// Node `node` is being drained (`draining`), or takes part again: a drained node
    /// should lead no group. Every group takes it; like `PlaceLeader`, it only guides the
    /// shell's balancer.
    Drain { node: u64, draining: bool },
}

/// What the lobby can be asked to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LobbyAction {
    /// Command 28 type 1: `anchor` starts matching.
    ///
    /// `request` identifies the start for retries (0: none). A start sent again with the
    /// same `request` after its answer was lost gets the answer the first one got (queued,
    /// or matched into the PK that start led to) as long as that outcome stands, instead of
    /// "already matching" or "busy".
    StartMatch { anchor: UserId, profile: AnchorProfile, request: u64 },
    /// Command 28 type 4: `anchor` stops matching.
    StopMatch { anchor: UserId },
    /// Command 28 type 2: `invitee` accepts the invitation sent by `inviter`.
    Accept { inviter: UserId, invitee: UserId },
    /// Command 28 type 3: `invitee` refuses the invitation sent by `inviter`.
    Refuse { inviter: UserId, invitee: UserId },
    /// The anchor is streaming and connected to node `node`: it may be invited.
    GoLive { anchor: UserId, profile: AnchorProfile, node: u64 },
    /// The anchor is no longer connected to node `node`: unless it has gone live on another
    /// node since, it is off air: it leaves the queue and cannot be invited.
    GoOffAir { anchor: UserId, node: u64 },
    /// The arena hosting `pk` has created it: the lobby drops its order from the outbox.
    ConfirmPkCreated { pk: PkId },
    /// The PK is over: release both rooms.
    ReleaseRooms { pk: PkId },
    /// An operator acted through the admin API: add it to the audit log (the last
    /// [`crate::audit::AUDIT_CAPACITY`] entries, kept in the lobby's state).
    RecordAudit(AuditRecord),
}

/// What an arena can be asked to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArenaAction {
    /// Create a PK decided by the lobby. Idempotent by PK id.
    CreatePk(PkOrder),
    /// A gift from the app's gift service.
    Gift(Gift),
    /// Anchors' online flags and rooms' audience counts, gathered by the nodes.
    ReportPresence(Vec<Presence>),
    /// An administrator ends the PK abnormally (status 3).
    AbortPk { pk: PkId },
    /// The lobby has released the rooms of a settled PK.
    ConfirmRoomsReleased { pk: PkId },
    /// The shared results store (MySQL, written once by the arena's leader) holds the
    /// settled PK.
    ConfirmResultPersisted { pk: PkId },
    /// Node `node` holds the settled PK in its own results store (each node's embedded
    /// store, written from its own replica). `voters` are the group's voters as the node
    /// sees them: once every one of them has confirmed, the result leaves the outbox.
    ConfirmResultStored { pk: PkId, node: u64, voters: Vec<u64> },
}

impl From<LobbyAction> for Action {
    fn from(action: LobbyAction) -> Action {
        Action::Lobby(action)
    }
}

impl From<ArenaAction> for Action {
    fn from(action: ArenaAction) -> Action {
        Action::Arena(action)
    }
}

/// Firing a timer: `Action::from(timer)` is `Action::Fire(timer)`.
impl From<Timer> for Action {
    fn from(timer: Timer) -> Action {
        Action::Fire(timer)
    }
}

/// What the engine knows of an anchor for matching: where it streams and what the
/// filters look at. The gateway takes these from the anchor's signed login token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorProfile {
    pub room: RoomId,
    /// ISO country code, as the app stores it ("IN", "PK", ...).
    pub country: String,
    /// "android", "ios", ...
    pub platform: String,
    pub version_code: u32,
}

/// The lobby's decision that two anchors meet, handed to the arena that hosts the PK.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkOrder {
    pub pk: PkId,
    /// Who started matching first, or the inviter.
    pub source: Seat,
    /// Who was matched later, or the invitee who accepted.
    pub target: Seat,
    /// Made through an invitation (t_pk.interfered = 1).
    pub interfered: bool,
    /// The lobby's time of the match: the PK's start.
    pub created_at: TimestampMs,
    /// `pk_duration` as it stood at the match.
    pub timing: PkTiming,
}

/// An anchor and its room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seat {
    pub anchor: UserId,
    pub room: RoomId,
}

/// One gift. `beans` has already been charged by the gift service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gift {
    pub id: GiftId,
    pub pk: PkId,
    /// The anchor who receives the gift.
    pub receiver: UserId,
    pub sender: UserId,
    pub beans: i64,
    /// The sender's display profile for the top-gifters list, when the gift service has it.
    pub profile: Option<Box<GifterProfile>>,
}

/// The user fields of the source's top-gifters entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GifterProfile {
    pub nickname: String,
    pub headimg: String,
    pub level: u32,
    pub roomlevel: u32,
    pub vip: u32,
    pub sex: u32,
}

/// One anchor's room in a PK as one node's gateway sees it. Every node reports its own
/// share; the arena keeps the latest report of each node and combines the fresh ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub pk: PkId,
    pub anchor: UserId,
    /// The reporting node.
    pub node: u64,
    /// The anchor is connected to its room on that node.
    pub online: bool,
    /// Viewers in the anchor's room on that node.
    pub audience: u32,
}

/// A timer, named by what it does. Each is due at a time held in the state; `Fire` is a
/// no-op when the timer is not due (early), or no longer scheduled (late or repeated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Timer {
    Lobby(LobbyTimer),
    Arena(ArenaTimer),
}

/// The lobby's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LobbyTimer {
    /// Invite anchors for a waiting anchor; its previous batch lapses.
    Intervene { anchor: UserId },
    /// A waiting anchor gives up and is told matching failed.
    GiveUp { anchor: UserId },
    /// Forget an invitation record (kept a while so late answers get a precise code).
    ExpireInvitation { inviter: UserId, invitee: UserId },
    /// An anchor's invitation cool-down is over.
    EndCooldown { anchor: UserId },
    /// A PK's rooms are still held long past its scheduled end (its arena never took the
    /// order, e.g. after a long outage): release them.
    AbandonPk { pk: PkId },
}

/// An arena's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ArenaTimer {
    /// The battle is over: decide the winner.
    EndBattle { pk: PkId },
    /// The after-battle stage is over: settle.
    EndPk { pk: PkId },
    /// An anchor has been away longer than the grace period: end abnormally.
    AnchorAway { pk: PkId, anchor: UserId },
    /// Forget a settled PK's id (it guarded against a late duplicate `CreatePk`).
    ForgetPk { pk: PkId },
}

impl From<LobbyTimer> for Timer {
    fn from(timer: LobbyTimer) -> Timer {
        Timer::Lobby(timer)
    }
}

impl From<ArenaTimer> for Timer {
    fn from(timer: ArenaTimer) -> Timer {
        Timer::Arena(timer)
    }
}
