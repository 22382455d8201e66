//! A group's state machine: the lobby or an arena, behind one interface for the shell.

use crate::arena::Arena;
use crate::command::{Action, Command, Timer};
use crate::config::Config;
use crate::effect::Effect;
use crate::ids::TimestampMs;
use crate::lobby::Lobby;
use crate::response::{Reason, Response};
use serde::{Deserialize, Serialize};

/// The first byte of every snapshot. Bump it when the encoding of [`Machine`] changes,
/// and teach [`Machine::restore`] the old one, or refuse it by name.
///
/// Format 2 holds each kind's own timer type in its deadlines (format 1 held one timer
/// type for both kinds). This version reads format 2 only: a format-1 snapshot is
/// refused with [`SnapshotError::UnknownFormat`].
pub const SNAPSHOT_FORMAT: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Machine {
    Lobby(Lobby),
    Arena(Arena),
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("empty snapshot")]
    Empty,
    #[error("snapshot format {0} is not known to this version (it reads format {SNAPSHOT_FORMAT} only)")]
    UnknownFormat(u8),
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

impl Machine {
    pub fn lobby(config: Config) -> Machine {
        Machine::Lobby(Lobby::new(config))
    }

    pub fn arena(config: Config) -> Machine {
        Machine::Arena(Arena::new(config))
    }

    /// Applies one committed command: `now = max(now, at)`, then `SetConfig`, this
    /// kind's own actions and timers. The other kind's actions and timers are refused
    /// with `Response::Rejected(Reason::WrongGroup)` and change nothing else (they can
    /// only arrive in a corrupted or misrouted message). Effects are appended to
    /// `effects` (a buffer the caller reuses, so the hot path does not allocate).
    pub fn apply(&mut self, command: &Command, effects: &mut Vec<Effect>) -> Response {
        let now = self.now_mut();
        *now = (*now).max(command.at);
        match (self, &command.action) {
            (machine, Action::SetConfig { key, value }) => machine.set_config(key, value, effects),
            (Machine::Lobby(lobby), Action::Lobby(action)) => lobby.apply(action, effects),
            (Machine::Lobby(lobby), Action::Fire(Timer::Lobby(timer))) => lobby.fire(*timer, effects),
            (Machine::Arena(arena), Action::Arena(action)) => arena.apply(action, effects),
            (Machine::Arena(arena), Action::Fire(Timer::Arena(timer))) => arena.fire(*timer, effects),
            (Machine::Lobby(_), Action::Arena(_) | Action::Fire(Timer::Arena(_)))
            | (Machine::Arena(_), Action::Lobby(_) | Action::Fire(Timer::Lobby(_))) => {
                Response::Rejected(Reason::WrongGroup)
            }
        }
    }

    fn set_config(&mut self, key: &str, value: &str, effects: &mut Vec<Effect>) -> Response {
        let next = match self.config().with(key, value) {
            Ok(next) => next,
            Err(e) => return Response::Rejected(Reason::InvalidConfig(e.to_string())),
        };
        match self {
            Machine::Lobby(lobby) => {
                let old = std::mem::replace(&mut lobby.config, next);
                lobby.config_changed(&old, effects);
            }
            Machine::Arena(arena) => arena.config = next,
        }
        Response::Done
    }

    /// The latest time the log has shown this machine.
    pub fn now(&self) -> TimestampMs {
        match self {
            Machine::Lobby(lobby) => lobby.now,
            Machine::Arena(arena) => arena.now,
        }
    }

    fn now_mut(&mut self) -> &mut TimestampMs {
        match self {
            Machine::Lobby(lobby) => &mut lobby.now,
            Machine::Arena(arena) => &mut arena.now,
        }
    }

    pub fn config(&self) -> &Config {
        match self {
            Machine::Lobby(lobby) => &lobby.config,
            Machine::Arena(arena) => &arena.config,
        }
    }

    /// When the earliest armed timer falls due; the leader's ticker sleeps until then.
    pub fn next_deadline(&self) -> Option<TimestampMs> {
        match self {
            Machine::Lobby(lobby) => lobby.next_deadline(),
            Machine::Arena(arena) => arena.next_deadline(),
        }
    }

    /// The timers due at `now`, in due order: the leader proposes `Fire` for each.
    pub fn due_timers(&self, now: TimestampMs) -> Vec<Timer> {
        match self {
            Machine::Lobby(lobby) => lobby.due_timers(now),
            Machine::Arena(arena) => arena.due_timers(now),
        }
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

    /// The whole state as bytes: the format byte, then postcard. Replicas that applied
    /// the same log produce identical bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut bytes = vec![SNAPSHOT_FORMAT];
        postcard::to_io(self, &mut bytes).expect("writing to a Vec cannot fail");
        bytes
    }

    pub fn restore(bytes: &[u8]) -> Result<Machine, SnapshotError> {
        match bytes.split_first() {
            None => Err(SnapshotError::Empty),
            Some((&SNAPSHOT_FORMAT, body)) => Ok(postcard::from_bytes(body)?),
            Some((&format, _)) => Err(SnapshotError::UnknownFormat(format)),
        }
    }

    /// Checks the machine's internal invariants (tests call it after every step).
    pub fn check_invariants(&self) -> Result<(), String> {
        match self {
            Machine::Lobby(lobby) => lobby.check_invariants(),
            Machine::Arena(arena) => arena.check_invariants(),
        }
    }
}
