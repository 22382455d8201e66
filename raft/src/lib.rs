//! pkd's replicated core: the pure, deterministic state machines behind every PK.
//!
//! Events in, effects out. The shell feeds committed log entries ([`Command`]s, each
//! stamped with the leader's clock) into a [`StateMachine`] and carries out the returned
//! [`Effect`]s; it asks [`StateMachine::next_deadline`] when to propose the next timer.
//! There is no clock, no randomness, no I/O and no task here: the same log always gives
//! the same state and the same snapshot bytes.
//!
//! Two kinds of machine, so that the cluster can shard: one [`Lobby`] (matchmaking and
//! the room directory: the one authority on who is matching and who is in a PK) and
//! any number of [`Arena`]s (the PKs themselves: gifts, presence, results), a PK living
//! on the arena [`arena_for`] its id. Each kind has its own actions and timers
//! ([`LobbyAction`], [`LobbyTimer`], [`ArenaAction`], [`ArenaTimer`]), so a command for
//! the wrong kind of group cannot be written; [`Machine`] holds either kind.

pub mod arena;
pub mod audit;
pub mod command;
pub mod config;
pub mod cut;
mod deadlines;
pub mod effect;
mod gift_ids;
pub mod ids;
pub mod lobby;
pub mod machine;
pub mod pseudo_json;
pub mod response;

pub use arena::Arena;
pub use audit::{AUDIT_CAPACITY, AuditEntry, AuditLog, AuditRecord};
pub use command::{
    Action, AnchorProfile, ArenaAction, ArenaTimer, Command, Gift, GifterProfile, LobbyAction, LobbyTimer, PkOrder,
    Presence, Seat, Timer,
};
pub use config::{Config, ConfigKey};
pub use effect::{Effect, PkStatus, PkView, SettledPk};
pub use ids::{GiftId, PkId, RoomId, TimestampMs, UserId, arena_for};
pub use lobby::Lobby;
pub use machine::{LeaderPlacement, Machine, MachineKind, SNAPSHOT_FORMAT, SingleKind, SnapshotError, StateMachine};
pub use response::{Reason, Response};
