//! A group's state machine: the lobby or an arena, behind one interface for the shell.
//!
//! [`StateMachine`] is that interface. [`Lobby`] and [`Arena`] implement it, and so does
//! [`Machine`], which holds either (for code that handles both kinds alike, such as the
//! tests). The lobby and the arena also implement [`SingleKind`]: their kind is known
//! from their type, and they can start empty.

use crate::arena::Arena;
use crate::audit::AuditLog;
use crate::command::{Command, Timer};
use crate::config::Config;
use crate::effect::Effect;
use crate::ids::TimestampMs;
use crate::lobby::Lobby;
use crate::response::Response;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// The first byte of every snapshot. Bump it when the encoding of [`Machine`] changes,
/// and teach [`StateMachine::restore`] the old one, or refuse it by name.
///
/// Format 4 adds each arena PK's gift ledger (its sides' counted gifts, and the settled
/// results' `gifts`). Format 3 is format 2's machine followed by a second section: the
/// lobby's audit log ([`AuditLog`]; empty for an arena). Format 2 held each kind's own
/// timer type in its deadlines (format 1 held one timer type for both kinds). This
/// version reads formats 4, 3 and 2 (a format-2 lobby restores with an empty audit log,
/// an arena of format 3 or 2 with empty ledgers); a format-1 snapshot is refused with
/// [`SnapshotError::UnknownFormat`].
pub const SNAPSHOT_FORMAT: u8 = 4;

/// The format before the gift ledgers, still read.
const FORMAT_WITHOUT_LEDGER: u8 = 3;

/// The format before the audit log, still read.
const FORMAT_WITHOUT_AUDIT: u8 = 2;

/// The two kinds of group: the one lobby and the arenas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MachineKind {
    /// The one lobby: matchmaking and the room directory.
    Lobby,
    /// An arena: the PKs it hosts.
    Arena,
}

impl fmt::Display for MachineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MachineKind::Lobby => "lobby",
            MachineKind::Arena => "arena",
        })
    }
}

/// What the shell needs of a group's state machine: apply committed commands, tell when
/// the next timer falls due, and take and restore snapshots.
pub trait StateMachine: Sized {
    /// Which kind of group this machine serves.
    fn kind(&self) -> MachineKind;

    /// Applies one committed command: `now = max(now, at)`, then `SetConfig`, this
    /// kind's own actions and timers. The other kind's actions and timers are refused
    /// with `Response::Rejected(Reason::WrongGroup)` and change nothing else (they can
    /// only arrive in a corrupted or misrouted message). Effects are appended to
    /// `effects`, a buffer the caller reuses so that the hot path does not allocate.
    fn apply(&mut self, command: &Command, effects: &mut Vec<Effect>) -> Response;

    /// The latest time the log has shown this machine.
    fn now(&self) -> TimestampMs;

    /// The config in force at the last applied command.
    fn config(&self) -> &Config;

    /// Where the operator wants this group's leadership (`Action::PlaceLeader`,
    /// `Action::Drain`).
    fn placement(&self) -> &LeaderPlacement;

    /// When the earliest armed timer falls due; the leader's ticker sleeps until then.
    fn next_deadline(&self) -> Option<TimestampMs>;

    /// The timers due at `now`, in due order: the leader proposes `Fire` for each.
    fn due_timers(&self, now: TimestampMs) -> Vec<Timer>;

    /// The whole state as bytes: the format byte, then postcard. Replicas that applied
    /// the same log produce identical bytes, and a lobby's or an arena's bytes are those
    /// of the [`Machine`] holding it, so either type restores them.
    fn snapshot(&self) -> Vec<u8>;

    /// Reads a snapshot. A lobby or an arena refuses a snapshot of the other kind
    /// ([`SnapshotError::WrongKind`]).
    fn restore(bytes: &[u8]) -> Result<Self, SnapshotError>;

    /// Checks the machine's internal invariants (tests call it after every step).
    fn check_invariants(&self) -> Result<(), String>;
}

/// A state machine of a single kind, known from its type: [`Lobby`] or [`Arena`] (not
/// [`Machine`], which may be either).
pub trait SingleKind: StateMachine {
    /// Which kind of group this type serves.
    const KIND: MachineKind;

    /// A fresh machine of this kind, as a group starts before its first command.
    fn fresh(config: Config) -> Self;
}

/// Where the operator wants a group's leadership: on a node it placed it on, and away
/// from the nodes being drained. Replicated, so every leader's balancer sees it alike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderPlacement {
    /// The node the operator placed the leadership on, if any.
    pub placed: Option<u64>,
    /// Nodes being drained: they should lead nothing.
    pub draining: BTreeSet<u64>,
}

/// Either kind of machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Machine {
    Lobby(Lobby),
    Arena(Arena),
}

/// [`Machine`]'s shape over borrowed state: a lobby or an arena serializes through it
/// to exactly the bytes of the [`Machine`] holding it, without being cloned.
#[derive(Serialize)]
pub(crate) enum MachineRef<'a> {
    Lobby(&'a Lobby),
    Arena(&'a Arena),
}

/// [`Machine`] as formats 3 and 2 encoded it: an arena without gift ledgers.
#[derive(Deserialize)]
enum MachineFormat3 {
    Lobby(Lobby),
    Arena(crate::arena::format3::Arena),
}

impl From<MachineFormat3> for Machine {
    fn from(machine: MachineFormat3) -> Machine {
        match machine {
            MachineFormat3::Lobby(lobby) => Machine::Lobby(lobby),
            MachineFormat3::Arena(arena) => Machine::Arena(arena.into()),
        }
    }
}

/// Why a snapshot was not restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("empty snapshot")]
    Empty,
    #[error(
        "snapshot format {0} is not known to this version (it reads formats {SNAPSHOT_FORMAT}, {FORMAT_WITHOUT_LEDGER} and {FORMAT_WITHOUT_AUDIT})"
    )]
    UnknownFormat(u8),
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] postcard::Error),
    #[error("snapshot is of kind {found}, expected kind {expected}")]
    WrongKind { expected: MachineKind, found: MachineKind },
    #[error("malformed snapshot: {0}")]
    Malformed(&'static str),
}

/// The format byte, then the machine and its audit log, each in postcard.
pub(crate) fn encode_snapshot(machine: &impl Serialize, audit: &AuditLog) -> Vec<u8> {
    // Every type in the state has a derived encoding or one that writes a sequence of
    // known length, and a Vec always takes the bytes: postcard has no way to fail here.
    let bytes = postcard::to_extend(machine, vec![SNAPSHOT_FORMAT]).expect("the state always encodes into a Vec");
    postcard::to_extend(audit, bytes).expect("the audit log always encodes into a Vec")
}

/// Reads a snapshot of either kind, in the current format, format 3 or format 2.
pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<Machine, SnapshotError> {
    match bytes.split_first() {
        None => Err(SnapshotError::Empty),
        Some((&SNAPSHOT_FORMAT, body)) => {
            let (machine, rest) = postcard::take_from_bytes::<Machine>(body)?;
            with_audit(machine, rest)
        }
        Some((&FORMAT_WITHOUT_LEDGER, body)) => {
            let (machine, rest) = postcard::take_from_bytes::<MachineFormat3>(body)?;
            with_audit(machine.into(), rest)
        }
        Some((&FORMAT_WITHOUT_AUDIT, body)) => Ok(postcard::from_bytes::<MachineFormat3>(body)?.into()),
        Some((&format, _)) => Err(SnapshotError::UnknownFormat(format)),
    }
}

/// The machine, given the audit log section that follows it (and nothing past that).
fn with_audit(mut machine: Machine, rest: &[u8]) -> Result<Machine, SnapshotError> {
    let (audit, rest) = postcard::take_from_bytes::<AuditLog>(rest)?;
    if !rest.is_empty() {
        return Err(SnapshotError::Malformed("bytes past the audit log"));
    }
    match &mut machine {
        Machine::Lobby(lobby) => lobby.set_audit(audit),
        Machine::Arena(_) if !audit.is_empty() => {
            return Err(SnapshotError::Malformed("an arena with an audit log"));
        }
        Machine::Arena(_) => {}
    }
    Ok(machine)
}

impl Machine {
    pub fn lobby(config: Config) -> Machine {
        Machine::Lobby(Lobby::fresh(config))
    }

    pub fn arena(config: Config) -> Machine {
        Machine::Arena(Arena::fresh(config))
    }

    pub fn as_lobby(&self) -> Option<&Lobby> {
        match self {
            Machine::Lobby(lobby) => Some(lobby),
            Machine::Arena(_) => None,
        }
    }

    pub fn as_arena(&self) -> Option<&Arena> {
        match self {
            Machine::Arena(arena) => Some(arena),
            Machine::Lobby(_) => None,
        }
    }
}

impl StateMachine for Machine {
    fn kind(&self) -> MachineKind {
        match self {
            Machine::Lobby(_) => MachineKind::Lobby,
            Machine::Arena(_) => MachineKind::Arena,
        }
    }

    fn apply(&mut self, command: &Command, effects: &mut Vec<Effect>) -> Response {
        match self {
            Machine::Lobby(lobby) => lobby.apply(command, effects),
            Machine::Arena(arena) => arena.apply(command, effects),
        }
    }

    fn now(&self) -> TimestampMs {
        match self {
            Machine::Lobby(lobby) => lobby.now(),
            Machine::Arena(arena) => arena.now(),
        }
    }

    fn config(&self) -> &Config {
        match self {
            Machine::Lobby(lobby) => lobby.config(),
            Machine::Arena(arena) => arena.config(),
        }
    }

    fn placement(&self) -> &LeaderPlacement {
        match self {
            Machine::Lobby(lobby) => lobby.placement(),
            Machine::Arena(arena) => arena.placement(),
        }
    }

    fn next_deadline(&self) -> Option<TimestampMs> {
        match self {
            Machine::Lobby(lobby) => lobby.next_deadline(),
            Machine::Arena(arena) => arena.next_deadline(),
        }
    }

    fn due_timers(&self, now: TimestampMs) -> Vec<Timer> {
        match self {
            Machine::Lobby(lobby) => lobby.due_timers(now),
            Machine::Arena(arena) => arena.due_timers(now),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        match self {
            Machine::Lobby(lobby) => lobby.snapshot(),
            Machine::Arena(arena) => arena.snapshot(),
        }
    }

    fn restore(bytes: &[u8]) -> Result<Machine, SnapshotError> {
        decode_snapshot(bytes)
    }

    fn check_invariants(&self) -> Result<(), String> {
        match self {
            Machine::Lobby(lobby) => lobby.check_invariants(),
            Machine::Arena(arena) => arena.check_invariants(),
        }
    }
}
