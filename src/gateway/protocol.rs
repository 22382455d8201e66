//! The WebSocket wire format, as pure functions: text frames in, typed messages
//! out; replies and pushes in, JSON text out. No sockets, no clock, no state.
//!
//! The shape of every message is the one the app's existing clients speak (the
//! source design's §4 examples): commands have `msgType: "command"` and a
//! `commandId`, replies negate the `commandId` and carry a string `code`, pushes
//! have `msgType: "pub"` and a numeric `type`. `docs/protocol.md` describes every
//! message, code and flow; this module is its implementation.
//!
//! Parsing is strict where pkd reads a field (a string where a number belongs is an
//! error, ids must be positive and fit an `i64`), bounded (frames longer than
//! [`MAX_FRAME_BYTES`] are refused before any parsing), and tolerant of fields it
//! does not read (old clients send `costTime`, `secondInitTime`, `fromUser`,
//! `toUser`, `mode`, `destination`; all are ignored, except that a string
//! `destination` is echoed in the reply). Every failure is a [`ProtocolError`] that
//! can be answered with [`Reply::for_error`]: no input makes this module panic.

use std::fmt;

use pkd_raft::effect::{Audience, MatchFailure, PkView, Push, PushMessage, SideView, TopGifter};
use pkd_raft::{Response, RoomId, UserId};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

/// The longest frame pkd parses, in bytes. A longer frame is answered with
/// [`code::FRAME_TOO_LARGE`] without being parsed. The largest legitimate command
/// is a few hundred bytes.
pub const MAX_FRAME_BYTES: usize = 8 * 1024;

/// The longest WebSocket message pkd reads at all. A command frame longer than
/// [`MAX_FRAME_BYTES`] and up to this is read and answered with
/// [`code::FRAME_TOO_LARGE`]; a longer one cannot be read, and the connection is closed
/// with close code 1009 (message too big).
pub const MAX_READ_BYTES: usize = 64 * 1024;

/// The `commandId`s pkd understands. A reply carries the negated id.
pub mod command_id {
    /// The source's command 27: an RTM token for the co-hosting channel.
    pub const RTM_TOKEN: i64 = 27;
    /// The source's command 28: start, accept, refuse or stop matching.
    pub const MATCH: i64 = 28;
    /// pkd's: the connection's user enters a room, as a viewer or as its anchor.
    pub const ENTER_ROOM: i64 = 40;
    /// pkd's: the connection's user leaves a room.
    pub const LEAVE_ROOM: i64 = 41;
    /// pkd's: ask for a room's PK state.
    pub const ROOM_PK_STATE: i64 = 42;
    /// pkd's: the connection's user goes on mic in a room.
    pub const GO_ON_MIC: i64 = 43;
    /// pkd's: an application-level heartbeat; the reply carries the server's time.
    pub const HEARTBEAT: i64 = 44;
}

/// The `type`s of pushes (`msgType: "pub"`).
pub mod push_type {
    /// The source's type 10: a PK's state.
    pub const PK_STATE: u8 = 10;
    /// The source's type 12: an invitation to a PK.
    pub const INVITATION: u8 = 12;
    /// The source's type 13: matching started.
    pub const MATCHING_STARTED: u8 = 13;
    /// pkd's type 14: matching ended without a match.
    pub const MATCH_FAILED: u8 = 14;
    /// pkd's type 15: the PK is over (after its after-battle stage, if any); its rooms
    /// are free.
    pub const PK_CLOSED: u8 = 15;
}

/// Reply codes of the protocol layer. The engine's own codes come from
/// `pkd_raft::Response::code` and `pkd_raft::Reason::code`; these sit apart from
/// them, in 900001 to 900008.
pub mod code {
    /// Success, as in the source.
    pub const SUCCESS: &str = "000000";
    /// The frame is not a JSON object (bad JSON, bad UTF-8, empty, an array, ...).
    pub const MALFORMED_JSON: &str = "900001";
    /// The `commandId` is an integer pkd does not know.
    pub const UNKNOWN_COMMAND: &str = "900002";
    /// A field pkd reads is missing, of the wrong type or out of range.
    pub const BAD_FIELD: &str = "900003";
    /// The frame is longer than [`super::MAX_FRAME_BYTES`].
    pub const FRAME_TOO_LARGE: &str = "900004";
    /// The connection has no valid login token (or it expired).
    pub const NOT_AUTHENTICATED: &str = "900005";
    /// The command acts for a user other than the connection's own.
    pub const IMPERSONATION: &str = "900006";
    /// The connection sends commands faster than allowed.
    pub const RATE_LIMITED: &str = "900007";
    /// pkd cannot serve the request right now (no leader reachable, shutting
    /// down); retry later, with the same gift id for gifts.
    pub const UNAVAILABLE: &str = "900008";
    /// Command 27 from a user who is not an anchor of a running PK.
    pub const NOT_IN_PK: &str = "905047";
}

/// The `desc` of a successful reply, as in the source.
pub const SUCCESS_DESC: &str = "Success!";

// ---- incoming ------------------------------------------------------------------------

/// A command frame from an app client, checked and typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientMessage {
    /// The client's `sequence`, echoed in the reply (0 to `i64::MAX`).
    pub sequence: i64,
    /// The client's `destination`, when it is a string; echoed in the reply.
    pub destination: Option<String>,
    /// The client's `logId`, for logs only.
    pub log_id: Option<String>,
    /// The client's `initTime` (its clock, ms), for logs only.
    pub init_time: Option<i64>,
    /// What the client asks for.
    pub command: ClientCommand,
}

/// What a client can ask for, one variant per `commandId`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientCommand {
    /// 27: an RTM token for the co-hosting channel of `room`.
    RtmToken { room: RoomId },
    /// 28: a matchmaking action; `room` is the sender's room (for a start, the
    /// room the anchor streams in).
    Match { room: RoomId, action: MatchAction },
    /// 40: the connection's user enters `room`.
    EnterRoom { room: RoomId, role: RoomRole },
    /// 41: the connection's user leaves `room`.
    LeaveRoom { room: RoomId },
    /// 42: the PK state of `room`.
    RoomPkState { room: RoomId },
    /// 43: the connection's user goes on mic in `room`.
    GoOnMic { room: RoomId },
    /// 44: a heartbeat, in a room or not.
    Heartbeat { room: Option<RoomId> },
}

/// Command 28's `type`, with the users it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchAction {
    /// Type 1: `source` starts matching.
    Start { anchor: UserId },
    /// Type 2: `target` accepts the invitation sent by `source`.
    Accept { inviter: UserId, invitee: UserId },
    /// Type 3: `target` refuses the invitation sent by `source`.
    Refuse { inviter: UserId, invitee: UserId },
    /// Type 4: `source` stops matching.
    Stop { anchor: UserId },
}

impl MatchAction {
    /// The value of the `type` field.
    pub fn type_code(self) -> i64 {
        match self {
            MatchAction::Start { .. } => 1,
            MatchAction::Accept { .. } => 2,
            MatchAction::Refuse { .. } => 3,
            MatchAction::Stop { .. } => 4,
        }
    }

    /// The user this action is taken by: the only user a connection may name here
    /// is its own.
    pub fn actor(self) -> UserId {
        match self {
            MatchAction::Start { anchor } | MatchAction::Stop { anchor } => anchor,
            MatchAction::Accept { invitee, .. } | MatchAction::Refuse { invitee, .. } => invitee,
        }
    }
}

/// How a user enters a room (command 40's `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomRole {
    /// Type 1, the default: a viewer.
    Viewer,
    /// Type 2: the room's anchor, going live.
    Anchor,
}

impl RoomRole {
    /// The value of the `type` field.
    pub fn type_code(self) -> i64 {
        match self {
            RoomRole::Viewer => 1,
            RoomRole::Anchor => 2,
        }
    }
}

impl ClientCommand {
    /// The `commandId` of this command.
    pub fn command_id(&self) -> i64 {
        match self {
            ClientCommand::RtmToken { .. } => command_id::RTM_TOKEN,
            ClientCommand::Match { .. } => command_id::MATCH,
            ClientCommand::EnterRoom { .. } => command_id::ENTER_ROOM,
            ClientCommand::LeaveRoom { .. } => command_id::LEAVE_ROOM,
            ClientCommand::RoomPkState { .. } => command_id::ROOM_PK_STATE,
            ClientCommand::GoOnMic { .. } => command_id::GO_ON_MIC,
            ClientCommand::Heartbeat { .. } => command_id::HEARTBEAT,
        }
    }

    /// The room the command is about, if any.
    pub fn room(&self) -> Option<RoomId> {
        match *self {
            ClientCommand::RtmToken { room }
            | ClientCommand::Match { room, .. }
            | ClientCommand::EnterRoom { room, .. }
            | ClientCommand::LeaveRoom { room }
            | ClientCommand::RoomPkState { room }
            | ClientCommand::GoOnMic { room } => Some(room),
            ClientCommand::Heartbeat { room } => room,
        }
    }
}

impl ClientMessage {
    /// What a reply to this message echoes.
    pub fn echo(&self) -> Echo {
        Echo {
            command_id: Some(self.command.command_id()),
            sequence: Some(self.sequence),
            // Ids are at most i64::MAX by construction (see `parse_frame`).
            room_id: self.command.room().map(|room| i64::try_from(room.0).unwrap_or(i64::MAX)),
            destination: self.destination.clone(),
        }
    }

    /// The user the message acts for, when it names one (command 28). Every other
    /// command acts for the connection's user implicitly.
    pub fn acting_user(&self) -> Option<UserId> {
        match self.command {
            ClientCommand::Match { action, .. } => Some(action.actor()),
            _ => None,
        }
    }

    /// Checks that the message acts only for `connection_user`, the user of the
    /// connection's login token; otherwise an [`code::IMPERSONATION`] error.
    ///
    /// Command 28 must name the connection's user as its actor. Entering a room
    /// as its anchor (command 40, type 2) is allowed only in the room whose id is
    /// the user's id, the app's convention: the login token names no room.
    pub fn authorize(&self, connection_user: UserId) -> Result<(), ProtocolError> {
        let claimed = match self.command {
            ClientCommand::EnterRoom { room, role: RoomRole::Anchor } => Some(UserId(room.0)),
            _ => self.acting_user(),
        };
        match claimed {
            Some(claimed) if claimed != connection_user => Err(ProtocolError {
                kind: ProtocolErrorKind::Impersonation { claimed, actual: connection_user },
                echo: Box::new(self.echo()),
            }),
            _ => Ok(()),
        }
    }

    /// The frame a client sends for this message, in the source's request shape.
    /// Parsing it with [`parse_frame`] gives this message back.
    pub fn encode(&self) -> String {
        let mut fields = Map::new();
        fields.insert("commandId".into(), self.command.command_id().into());
        fields.insert("costTime".into(), Value::Array(Vec::new()));
        if let Some(init_time) = self.init_time {
            fields.insert("initTime".into(), init_time.into());
        }
        if let Some(log_id) = &self.log_id {
            fields.insert("logId".into(), log_id.clone().into());
        }
        fields.insert("msgType".into(), "command".into());
        if let Some(room) = self.command.room() {
            fields.insert("roomId".into(), room.0.into());
        }
        fields.insert("sequence".into(), self.sequence.into());
        if let Some(destination) = &self.destination {
            fields.insert("destination".into(), destination.clone().into());
        }
        match self.command {
            ClientCommand::Match { action, .. } => {
                let (source, target) = match action {
                    MatchAction::Start { anchor } | MatchAction::Stop { anchor } => (anchor, None),
                    MatchAction::Accept { inviter, invitee } | MatchAction::Refuse { inviter, invitee } => {
                        (inviter, Some(invitee))
                    }
                };
                fields.insert("source".into(), source.0.into());
                if let Some(target) = target {
                    fields.insert("target".into(), target.0.into());
                }
                fields.insert("type".into(), action.type_code().into());
            }
            ClientCommand::EnterRoom { role, .. } => {
                fields.insert("type".into(), role.type_code().into());
            }
            _ => {}
        }
        Value::Object(fields).to_string()
    }
}

/// What an answer echoes of a command: whatever of it could be read, even from a
/// frame that was refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Echo {
    /// The request's `commandId` (the reply carries it negated).
    pub command_id: Option<i64>,
    pub sequence: Option<i64>,
    pub room_id: Option<i64>,
    pub destination: Option<String>,
}

impl Echo {
    /// Reads what can be echoed, field by field, ignoring fields of the wrong type.
    fn read(fields: &Map<String, Value>) -> Echo {
        Echo {
            command_id: fields.get("commandId").and_then(Value::as_i64),
            sequence: fields.get("sequence").and_then(Value::as_i64),
            room_id: fields.get("roomId").and_then(Value::as_i64),
            destination: fields.get("destination").and_then(Value::as_str).map(str::to_owned),
        }
    }
}

/// A frame that cannot be served, with what its reply echoes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ProtocolError {
    pub kind: ProtocolErrorKind,
    /// Boxed to keep `Result<_, ProtocolError>` small on the happy path.
    pub echo: Box<Echo>,
}

/// Why a frame cannot be served. Each kind has its reply code ([`Self::code`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolErrorKind {
    /// 900001: not a JSON object; `detail` says what is wrong.
    MalformedJson { detail: String },
    /// 900002: a `commandId` pkd does not know.
    UnknownCommand { command_id: i64 },
    /// 900003: a field pkd reads is missing, of the wrong type or out of range.
    BadField { field: &'static str, problem: FieldProblem },
    /// 900004: the frame is longer than [`MAX_FRAME_BYTES`].
    FrameTooLarge { len: usize },
    /// 900005: the connection is not authenticated.
    NotAuthenticated,
    /// 900006: the command names `claimed` as its actor, but the connection is
    /// `actual`'s.
    Impersonation { claimed: UserId, actual: UserId },
    /// 900007: too many commands; try again later.
    RateLimited,
}

/// What is wrong with a field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldProblem {
    /// Absent (or `null`) but required.
    Missing,
    /// A value of JSON type `found` where `expected` belongs.
    WrongType { expected: &'static str, found: &'static str },
    /// An integer outside the allowed range, described by `allowed`.
    OutOfRange { allowed: &'static str },
}

impl ProtocolErrorKind {
    /// The reply code.
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolErrorKind::MalformedJson { .. } => code::MALFORMED_JSON,
            ProtocolErrorKind::UnknownCommand { .. } => code::UNKNOWN_COMMAND,
            ProtocolErrorKind::BadField { .. } => code::BAD_FIELD,
            ProtocolErrorKind::FrameTooLarge { .. } => code::FRAME_TOO_LARGE,
            ProtocolErrorKind::NotAuthenticated => code::NOT_AUTHENTICATED,
            ProtocolErrorKind::Impersonation { .. } => code::IMPERSONATION,
            ProtocolErrorKind::RateLimited => code::RATE_LIMITED,
        }
    }
}

impl fmt::Display for ProtocolErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolErrorKind::MalformedJson { detail } => write!(f, "malformed frame: {detail}"),
            ProtocolErrorKind::UnknownCommand { command_id } => {
                write!(f, "unknown commandId {command_id}")
            }
            ProtocolErrorKind::BadField { field, problem } => write!(f, "{field}: {problem}"),
            ProtocolErrorKind::FrameTooLarge { len } => {
                write!(f, "frame of {len} bytes is longer than the limit of {MAX_FRAME_BYTES}")
            }
            ProtocolErrorKind::NotAuthenticated => write!(f, "not authenticated"),
            ProtocolErrorKind::Impersonation { claimed, actual } => {
                write!(f, "user {actual} may not act for user {claimed}")
            }
            ProtocolErrorKind::RateLimited => write!(f, "too many commands; slow down"),
        }
    }
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldProblem::Missing => write!(f, "missing"),
            FieldProblem::WrongType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            FieldProblem::OutOfRange { allowed } => write!(f, "out of range (allowed: {allowed})"),
        }
    }
}

impl ProtocolError {
    /// The connection has no valid login token: answer a frame with this.
    pub fn not_authenticated(echo: Echo) -> ProtocolError {
        ProtocolError { kind: ProtocolErrorKind::NotAuthenticated, echo: Box::new(echo) }
    }

    /// The connection is over its command rate: answer a frame with this.
    pub fn rate_limited(echo: Echo) -> ProtocolError {
        ProtocolError { kind: ProtocolErrorKind::RateLimited, echo: Box::new(echo) }
    }

    /// The reply code.
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }
}

/// Parses a text frame.
pub fn parse_text(frame: &str) -> Result<ClientMessage, ProtocolError> {
    parse_frame(frame.as_bytes())
}

/// Parses a frame's bytes (UTF-8 JSON text) into a [`ClientMessage`], or says why
/// it cannot be served. Frames longer than [`MAX_FRAME_BYTES`] are refused before
/// any parsing.
pub fn parse_frame(frame: &[u8]) -> Result<ClientMessage, ProtocolError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError {
            kind: ProtocolErrorKind::FrameTooLarge { len: frame.len() },
            echo: Box::default(),
        });
    }
    let malformed =
        |detail: String| ProtocolError { kind: ProtocolErrorKind::MalformedJson { detail }, echo: Box::default() };
    // serde_json limits nesting depth, so deep input cannot exhaust the stack.
    let value: Value = serde_json::from_slice(frame).map_err(|error| malformed(error.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(malformed(format!("expected a JSON object, found {}", json_type(&value))));
    };
    parse_object(&fields).map_err(|kind| ProtocolError { kind, echo: Box::new(Echo::read(&fields)) })
}

fn parse_object(fields: &Map<String, Value>) -> Result<ClientMessage, ProtocolErrorKind> {
    let command_id = required(integer(fields, "commandId")?, "commandId")?;
    if !KNOWN_COMMAND_IDS.contains(&command_id) {
        return Err(ProtocolErrorKind::UnknownCommand { command_id });
    }
    match fields.get("msgType") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if kind == "command" => {}
        Some(Value::String(_)) => {
            return Err(ProtocolErrorKind::BadField {
                field: "msgType",
                problem: FieldProblem::OutOfRange { allowed: "\"command\"" },
            });
        }
        Some(other) => return Err(wrong_type("msgType", "a string", other)),
    }
    let sequence = required(integer(fields, "sequence")?, "sequence")?;
    if sequence < 0 {
        return Err(ProtocolErrorKind::BadField {
            field: "sequence",
            problem: FieldProblem::OutOfRange { allowed: "0 to 9223372036854775807" },
        });
    }
    let command = match command_id {
        command_id::RTM_TOKEN => ClientCommand::RtmToken { room: RoomId(required_id(fields, "roomId")?) },
        command_id::MATCH => {
            let room = RoomId(required_id(fields, "roomId")?);
            let kind = required(integer(fields, "type")?, "type")?;
            let action = match kind {
                1 => MatchAction::Start { anchor: UserId(required_id(fields, "source")?) },
                2 => MatchAction::Accept {
                    inviter: UserId(required_id(fields, "source")?),
                    invitee: UserId(required_id(fields, "target")?),
                },
                3 => MatchAction::Refuse {
                    inviter: UserId(required_id(fields, "source")?),
                    invitee: UserId(required_id(fields, "target")?),
                },
                4 => MatchAction::Stop { anchor: UserId(required_id(fields, "source")?) },
                _ => {
                    return Err(ProtocolErrorKind::BadField {
                        field: "type",
                        problem: FieldProblem::OutOfRange { allowed: "1, 2, 3 or 4" },
                    });
                }
            };
            ClientCommand::Match { room, action }
        }
        command_id::ENTER_ROOM => {
            let room = RoomId(required_id(fields, "roomId")?);
            let role = match integer(fields, "type")? {
                None | Some(1) => RoomRole::Viewer,
                Some(2) => RoomRole::Anchor,
                Some(_) => {
                    return Err(ProtocolErrorKind::BadField {
                        field: "type",
                        problem: FieldProblem::OutOfRange { allowed: "1 or 2" },
                    });
                }
            };
            ClientCommand::EnterRoom { room, role }
        }
        command_id::LEAVE_ROOM => ClientCommand::LeaveRoom { room: RoomId(required_id(fields, "roomId")?) },
        command_id::ROOM_PK_STATE => ClientCommand::RoomPkState { room: RoomId(required_id(fields, "roomId")?) },
        command_id::GO_ON_MIC => ClientCommand::GoOnMic { room: RoomId(required_id(fields, "roomId")?) },
        command_id::HEARTBEAT => ClientCommand::Heartbeat { room: id(fields, "roomId")?.map(RoomId) },
        other => return Err(ProtocolErrorKind::UnknownCommand { command_id: other }),
    };
    let log_id = match fields.get("logId") {
        None | Some(Value::Null) => None,
        Some(Value::String(log_id)) => Some(log_id.clone()),
        Some(other) => return Err(wrong_type("logId", "a string", other)),
    };
    Ok(ClientMessage {
        sequence,
        destination: fields.get("destination").and_then(Value::as_str).map(str::to_owned),
        log_id,
        init_time: integer(fields, "initTime")?,
        command,
    })
}

/// Every `commandId` [`parse_frame`] accepts.
const KNOWN_COMMAND_IDS: [i64; 7] = [
    command_id::RTM_TOKEN,
    command_id::MATCH,
    command_id::ENTER_ROOM,
    command_id::LEAVE_ROOM,
    command_id::ROOM_PK_STATE,
    command_id::GO_ON_MIC,
    command_id::HEARTBEAT,
];

/// The allowed range of ids, for error messages.
const ID_RANGE: &str = "1 to 9223372036854775807";

/// An integer field that fits an `i64`, or `None` when absent or `null`.
fn integer(fields: &Map<String, Value>, field: &'static str) -> Result<Option<i64>, ProtocolErrorKind> {
    let value = match fields.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(value) => value,
    };
    let Value::Number(number) = value else {
        return Err(wrong_type(field, "an integer", value));
    };
    if let Some(integer) = number.as_i64() {
        return Ok(Some(integer));
    }
    // Beyond i64: a u64 above i64::MAX, or a float (serde_json reads integers
    // beyond u64 as floats). An integral float that an i64 could hold (`1.0`) is
    // still the wrong type.
    let out_of_range = number.is_u64()
        || number.as_f64().is_some_and(|float| float.fract() == 0.0 && float.abs() >= 9.223_372_036_854_776e18);
    if out_of_range {
        Err(ProtocolErrorKind::BadField {
            field,
            problem: FieldProblem::OutOfRange { allowed: "-9223372036854775808 to 9223372036854775807" },
        })
    } else {
        Err(ProtocolErrorKind::BadField {
            field,
            problem: FieldProblem::WrongType { expected: "an integer", found: "a fraction" },
        })
    }
}

/// An id field: a positive integer that fits an `i64`, or `None` when absent.
fn id(fields: &Map<String, Value>, field: &'static str) -> Result<Option<u64>, ProtocolErrorKind> {
    match integer(fields, field) {
        Ok(None) => Ok(None),
        Ok(Some(value)) if value > 0 => Ok(Some(value.unsigned_abs())),
        Ok(Some(_)) | Err(ProtocolErrorKind::BadField { problem: FieldProblem::OutOfRange { .. }, .. }) => {
            Err(ProtocolErrorKind::BadField { field, problem: FieldProblem::OutOfRange { allowed: ID_RANGE } })
        }
        Err(other) => Err(other),
    }
}

fn required_id(fields: &Map<String, Value>, field: &'static str) -> Result<u64, ProtocolErrorKind> {
    required(id(fields, field)?, field)
}

fn required<T>(value: Option<T>, field: &'static str) -> Result<T, ProtocolErrorKind> {
    value.ok_or(ProtocolErrorKind::BadField { field, problem: FieldProblem::Missing })
}

fn wrong_type(field: &'static str, expected: &'static str, found: &Value) -> ProtocolErrorKind {
    ProtocolErrorKind::BadField { field, problem: FieldProblem::WrongType { expected, found: json_type(found) } }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---- replies -------------------------------------------------------------------------

/// The answer to one command frame, rendered by [`Reply::render`] in the source's
/// shape: `{"roomId", "destination", "costTime", "msgType": "command", "fromUser",
/// "toUser", "mode": "u", "sequence", "commandId" (negated), "code", "desc",
/// "result"}`. Values that could not be read from the request render as `null`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub echo: Echo,
    /// The connection's user: the reply's `fromUser` and `toUser`.
    pub user: Option<UserId>,
    /// How long the server took, in ms: `costTime` is `[cost_ms]`, or `[]`.
    pub cost_ms: Option<u64>,
    pub code: String,
    pub desc: String,
    pub result: ReplyResult,
}

/// The `result` of a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyResult {
    /// `null`: the result of commands 28, 41, 43 and of every error.
    Null,
    /// A string: the RTM token of command 27.
    Token(String),
    /// A PK state (the content of push type 10), or `null` when the room is in no
    /// PK: the result of commands 40 and 42.
    PkState(Option<Box<PkStateContent>>),
    /// The server's clock, in ms: the result of command 44.
    ServerTime(i64),
}

impl Serialize for ReplyResult {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ReplyResult::Null | ReplyResult::PkState(None) => serializer.serialize_unit(),
            ReplyResult::Token(token) => serializer.serialize_str(token),
            ReplyResult::PkState(Some(content)) => content.serialize(serializer),
            ReplyResult::ServerTime(ms) => serializer.serialize_i64(*ms),
        }
    }
}

impl Reply {
    /// A reply with the given code, description and result.
    pub fn new(echo: Echo, code: impl Into<String>, desc: impl Into<String>, result: ReplyResult) -> Reply {
        Reply { echo, user: None, cost_ms: None, code: code.into(), desc: desc.into(), result }
    }

    /// "000000", "Success!" and `result`.
    pub fn success(echo: Echo, result: ReplyResult) -> Reply {
        Reply::new(echo, code::SUCCESS, SUCCESS_DESC, result)
    }

    /// The reply to command 28 from the engine's answer: its code, and for a
    /// refusal the reason's description. The result is `null`, as old clients
    /// expect.
    pub fn for_response(echo: Echo, response: &Response) -> Reply {
        let desc = match response {
            Response::Rejected(reason) => reason.describe(),
            Response::Matched { .. } => "Matched! The PK state follows.".to_owned(),
            _ => SUCCESS_DESC.to_owned(),
        };
        Reply::new(echo, response.code(), desc, ReplyResult::Null)
    }

    /// The reply to a frame that cannot be served.
    pub fn for_error(error: &ProtocolError) -> Reply {
        Reply::new((*error.echo).clone(), error.code(), error.kind.to_string(), ReplyResult::Null)
    }

    /// Sets `fromUser` and `toUser` to the connection's user.
    pub fn to_user(mut self, user: UserId) -> Reply {
        self.user = Some(user);
        self
    }

    /// Sets `costTime` to `[cost_ms]`.
    pub fn cost_ms(mut self, cost_ms: u64) -> Reply {
        self.cost_ms = Some(cost_ms);
        self
    }

    /// The reply's JSON text.
    pub fn render(&self) -> String {
        to_json_text(&self.wire())
    }

    /// The reply as a JSON value (for tests and logs).
    pub fn to_value(&self) -> Value {
        to_json_value(&self.wire())
    }

    fn wire(&self) -> ReplyWire<'_> {
        ReplyWire {
            room_id: self.echo.room_id,
            destination: self.echo.destination.as_deref(),
            cost_time: self.cost_ms.into_iter().collect(),
            msg_type: "command",
            from_user: self.user.map(|user| user.0),
            to_user: self.user.map(|user| user.0),
            mode: "u",
            sequence: self.echo.sequence,
            command_id: self.echo.command_id.and_then(i64::checked_neg),
            code: &self.code,
            desc: &self.desc,
            result: &self.result,
        }
    }
}

/// A reply's fields in the source's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReplyWire<'a> {
    room_id: Option<i64>,
    destination: Option<&'a str>,
    cost_time: Vec<u64>,
    msg_type: &'static str,
    from_user: Option<u64>,
    to_user: Option<u64>,
    mode: &'static str,
    sequence: Option<i64>,
    command_id: Option<i64>,
    code: &'a str,
    desc: &'a str,
    result: &'a ReplyResult,
}

// ---- pushes --------------------------------------------------------------------------

/// The content of push type 10 (and of the result of commands 40 and 42): exactly
/// the fields of the source's example, plus `winner` once the battle is decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PkStateContent {
    pub pk_id: u64,
    /// Always 1: a two-room PK.
    #[serde(rename = "type")]
    pub kind: u8,
    /// 0 opening, 1 battle, 2 over, 3 ended abnormally.
    pub status: u8,
    pub start_time: i64,
    /// When the battle ends.
    pub end_time: i64,
    /// `endTime - now`, never negative.
    pub remaining_time: i64,
    /// Always 0: no sequel.
    pub sequel_type: u8,
    pub source_user: u64,
    pub source_room: u64,
    pub source_gifts: i64,
    pub source_online: bool,
    pub source_top_gifts: Vec<TopGiftEntry>,
    pub target_user: u64,
    pub target_room: u64,
    pub target_gifts: i64,
    pub target_online: bool,
    pub target_top_gifts: Vec<TopGiftEntry>,
    /// The winner's id, 0 for a draw or an abnormal end; present only when status
    /// is 2 or 3 or the winner is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub winner: Option<u64>,
}

/// One entry of `sourceTopGifts` / `targetTopGifts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopGiftEntry {
    /// Beans this sender gave this side.
    pub consume: i64,
    pub user: TopGiftUser,
}

/// The sender in a top-gifts entry, with the source's null fields (`agency`,
/// `crest`, `area`, `tags`) kept as `null`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopGiftUser {
    pub id: u64,
    agency: (),
    crest: (),
    pub nickname: String,
    pub headimg: String,
    pub level: u32,
    pub roomlevel: u32,
    pub vip: u32,
    area: (),
    pub sex: u32,
    tags: (),
}

impl PkStateContent {
    /// The content for `view` as seen at `now_ms`.
    pub fn from_view(view: &PkView, now_ms: i64) -> PkStateContent {
        let status = view.status.push_code();
        let winner = match (view.winner, status) {
            (Some(winner), _) => Some(winner.0),
            (None, 2 | 3) => Some(0),
            (None, _) => None,
        };
        let top = |side: &SideView| side.top_gifters.iter().map(TopGiftEntry::from).collect();
        // A deliberately broken build shows some scores short (fault tests).
        #[cfg(feature = "fault-injection")]
        let source_gifts = crate::fault_hooks::shown_beans(view.source.beans, now_ms);
        #[cfg(not(feature = "fault-injection"))]
        let source_gifts = view.source.beans;
        PkStateContent {
            pk_id: view.pk.0,
            kind: 1,
            status,
            start_time: view.start_time.0,
            end_time: view.end_time.0,
            remaining_time: view.end_time.0.saturating_sub(now_ms).max(0),
            sequel_type: 0,
            source_user: view.source.anchor.0,
            source_room: view.source.room.0,
            source_gifts,
            source_online: view.source.online,
            source_top_gifts: top(&view.source),
            target_user: view.target.anchor.0,
            target_room: view.target.room.0,
            target_gifts: view.target.beans,
            target_online: view.target.online,
            target_top_gifts: top(&view.target),
            winner,
        }
    }
}

impl From<&TopGifter> for TopGiftEntry {
    fn from(gifter: &TopGifter) -> TopGiftEntry {
        let profile = gifter.profile.clone().unwrap_or_default();
        TopGiftEntry {
            consume: gifter.beans,
            user: TopGiftUser {
                id: gifter.sender.0,
                agency: (),
                crest: (),
                nickname: profile.nickname,
                headimg: profile.headimg,
                level: profile.level,
                roomlevel: profile.roomlevel,
                vip: profile.vip,
                area: (),
                sex: profile.sex,
                tags: (),
            },
        }
    }
}

/// A push's fields in the source's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PushWire<C: Serialize> {
    room_id: u64,
    destination: (),
    cost_time: [u64; 0],
    msg_type: &'static str,
    from_user: i64,
    to_user: i64,
    mode: &'static str,
    #[serde(rename = "type")]
    kind: u8,
    content: C,
    version: i64,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PushContent {
    PkState(Box<PkStateContent>),
    Invitation {
        source: u64,
    },
    MatchingStarted {
        msg: u64,
    },
    MatchFailed {
        source: u64,
        reason: &'static str,
    },
    #[serde(rename_all = "camelCase")]
    PkClosed {
        pk_id: u64,
        status: u8,
    },
}

/// The `reason` of push type 14.
pub fn match_failure_reason(why: MatchFailure) -> &'static str {
    match why {
        MatchFailure::TimedOut => "timeout",
        MatchFailure::Disabled => "disabled",
        MatchFailure::VersionTooOld => "version",
    }
}

/// Renders a push effect as the JSON text sent to each receiver, as of `now_ms`
/// (the `version`, and the clock `remainingTime` is computed against). `fromUser`
/// and `toUser` are -1 and `destination` is `null`, as in the source's examples;
/// `mode` is "m" for a room and "u" for one user.
pub fn render_push(push: &Push, now_ms: i64) -> String {
    let (room, mode) = match push.to {
        Audience::Room(room) => (room, "m"),
        Audience::User { room, .. } => (room, "u"),
    };
    let (kind, content) = match &push.message {
        PushMessage::PkState(view) => {
            (push_type::PK_STATE, PushContent::PkState(Box::new(PkStateContent::from_view(view, now_ms))))
        }
        PushMessage::Invitation { inviter } => (push_type::INVITATION, PushContent::Invitation { source: inviter.0 }),
        PushMessage::MatchingStarted { anchor } => {
            (push_type::MATCHING_STARTED, PushContent::MatchingStarted { msg: anchor.0 })
        }
        PushMessage::MatchFailed { anchor, why } => {
            (push_type::MATCH_FAILED, PushContent::MatchFailed { source: anchor.0, reason: match_failure_reason(*why) })
        }
        PushMessage::PkClosed { pk, status } => {
            (push_type::PK_CLOSED, PushContent::PkClosed { pk_id: pk.0, status: status.push_code() })
        }
    };
    render_push_wire(room, mode, kind, content, now_ms)
}

/// Renders push type 10 for everyone in `room` from a replica's view of a PK: the
/// periodic (every 5 s) and coalesced (at most 1 per second) pushes that are not
/// effects of a command.
pub fn render_pk_state(room: RoomId, view: &PkView, now_ms: i64) -> String {
    render_push_wire(
        room,
        "m",
        push_type::PK_STATE,
        PushContent::PkState(Box::new(PkStateContent::from_view(view, now_ms))),
        now_ms,
    )
}

fn render_push_wire(room: RoomId, mode: &'static str, kind: u8, content: PushContent, now_ms: i64) -> String {
    to_json_text(&PushWire {
        room_id: room.0,
        destination: (),
        cost_time: [],
        msg_type: "pub",
        from_user: -1,
        to_user: -1,
        mode,
        kind,
        content,
        version: now_ms,
    })
}

fn to_json_text<T: Serialize>(value: &T) -> String {
    // These types hold only strings, integers, booleans and sequences, under string
    // keys: serializing them cannot fail.
    serde_json::to_string(value).expect("wire types always serialize")
}

fn to_json_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("wire types always serialize")
}
