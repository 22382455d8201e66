//! One WebSocket connection.
//!
//! The upgrade is refused (HTTP 401) without a valid login token
//! ([`authenticate`]). Then one task per connection ([`run`]) reads commands, answers each with exactly one reply (in order), forwards
//! pushes from the hub, pings the client, closes an idle or too-slow connection, and
//! answers floods with `900007`. A client that stops reading altogether is dropped once a
//! reply or push has waited `send_timeout` for it.

use super::Gateway;
use super::hub::{Frame, Outbound, SessionId, StateStamp, StatesShown};
use super::limits::TokenBucket;
use super::protocol::{self, ClientCommand, ClientMessage, MatchAction, ProtocolError, Reply, ReplyResult, RoomRole};
use crate::clock::now_ms;
use crate::tokens::{login, rtm};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use pkd_raft::{AnchorProfile, LobbyAction, RoomId, StateMachine, UserId};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Notify, mpsc};
use tracing::Instrument;

/// Close codes pkd uses (4000–4999 are for applications).
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
pub const CLOSE_IDLE: u16 = 4002;
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// The server is stopping (RFC 6455's "going away"): reconnect, to another node if need be.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// A message longer than `protocol::MAX_READ_BYTES` (RFC 6455's "message too big").
pub const CLOSE_TOO_BIG: u16 = 1009;
/// The node is draining before a restart (RFC 6455's "service restart"): reconnect at
/// once, to another node.
pub const CLOSE_DRAINING: u16 = 1012;

/// A connection's read buffer. Commands are small; the WebSocket library's default
/// (128 KiB) is zero-filled on every poll of the connection, i.e. for every push sent,
/// and held by every connection.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// The platform a `dev:` token stands for.
pub const DEV_PLATFORM: &str = "dev";

/// Who a connection acts for, from its login token.
#[derive(Clone, Debug)]
pub struct Identity {
    user: UserId,
    expires_at_ms: i64,
    country: String,
    platform: String,
    version_code: u32,
}

impl Identity {
    /// The user the connection acts for.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// The anchor profile matchmaking filters on; an anchor's room is its user id.
    fn profile(&self) -> AnchorProfile {
        AnchorProfile {
            room: RoomId(self.user.0),
            country: self.country.clone(),
            platform: self.platform.clone(),
            version_code: self.version_code,
        }
    }
}

/// Who `token` says the client is, if the token is valid now.
pub fn authenticate(gateway: &Gateway, token: &str) -> Result<Identity, String> {
    if gateway.config.dev_auth
        && let Some(user) = token.strip_prefix("dev:")
    {
        let user = parse_user(user)?;
        // A development client: the latest version of a platform the gate has no rule
        // for, so that `version_control` never refuses it.
        return Ok(Identity {
            user,
            expires_at_ms: i64::MAX,
            country: String::new(),
            platform: DEV_PLATFORM.to_owned(),
            version_code: u32::MAX,
        });
    }
    let Some(secret) = &gateway.config.login_secret else {
        return Err("no login secret is configured".into());
    };
    let claims = login::verify(secret, token, now_ms().max(0) as u64).map_err(|e| e.to_string())?;
    Ok(Identity {
        user: parse_user(claims.user_id.as_str())?,
        expires_at_ms: i64::try_from(claims.expires_at_ms).unwrap_or(i64::MAX),
        country: claims.country.map(|c| c.as_str().to_owned()).unwrap_or_default(),
        platform: claims.platform.map(|p| p.as_str().to_owned()).unwrap_or_default(),
        version_code: claims.client_version.unwrap_or(0),
    })
}

fn parse_user(text: &str) -> Result<UserId, String> {
    match text.parse::<u64>() {
        Ok(id) if id >= 1 && id <= i64::MAX as u64 && !text.starts_with('0') => Ok(UserId(id)),
        _ => Err("the token's user id is not a numeric user id".into()),
    }
}

struct Connection {
    gateway: Arc<Gateway>,
    identity: Identity,
    session: SessionId,
    /// The room this connection is in, and whether as its anchor.
    room: Option<(RoomId, bool)>,
    /// The PK states this connection was shown.
    shown: StatesShown,
}

/// Serves one upgraded connection until it closes.
pub async fn run(gateway: Arc<Gateway>, identity: Identity, mut socket: WebSocket) {
    let config = gateway.config.clone();
    let (queue, mut outbound) = mpsc::channel::<Outbound>(config.queue_capacity);
    let kicked = Arc::new(Notify::new());
    let session = gateway.hub.connect(identity.user, queue, kicked.clone());
    tracing::Span::current().record("session", session);
    tracing::debug!("client connected");
    let mut connection =
        Connection { gateway: gateway.clone(), identity, session, room: None, shown: StatesShown::default() };
    let mut limit = TokenBucket::new(config.commands_per_second, config.command_burst, Instant::now());
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let close = loop {
        let idle_left = config.idle_timeout.saturating_sub(last_heard.elapsed());
        let sent = tokio::select! {
            incoming = socket.recv() => {
                let message = match incoming {
                    Some(Ok(message)) => message,
                    Some(Err(error)) if too_big(&error) => {
                        break Some((CLOSE_TOO_BIG, "frame over the size limit"));
                    }
                    Some(Err(_)) | None => break None,
                };
                last_heard = Instant::now();
                let frame: &[u8] = match &message {
                    Message::Text(text) => text.as_bytes(),
                    Message::Binary(bytes) => bytes,
                    Message::Close(_) => break None,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                let handling = Instant::now();
                let (reply, close) = connection.handle(frame, &mut limit).await;
                crate::telemetry::command_answered(reply.echo.command_id, &reply.code, handling.elapsed());
                let sent = send(&mut socket, Message::Text(reply.render().into()), &kicked, config.send_timeout).await;
                match (sent, close) {
                    (Sent::Done, Some(close)) => break Some(close),
                    (sent, _) => sent,
                }
            }
            Some(frame) = outbound.recv() => {
                // A PK state rendered before a reply that showed a later one stays unsent.
                if !connection.shown.admits(&frame) {
                    continue;
                }
                send(&mut socket, Message::Text((*frame.text).into()), &kicked, config.send_timeout).await
            }
            _ = kicked.notified() => break Some((CLOSE_TOO_SLOW, "too slow: pushes were not read")),
            () = gateway.stopping.cancelled() => break Some((CLOSE_GOING_AWAY, "server shutting down")),
            () = gateway.draining.cancelled() => break Some((CLOSE_DRAINING, "node draining: reconnect to another node")),
            _ = ping.tick() => send(&mut socket, Message::Ping(Vec::new().into()), &kicked, config.send_timeout).await,
            _ = tokio::time::sleep(idle_left) => break Some((CLOSE_IDLE, "idle")),
        };
        match sent {
            Sent::Done => {}
            Sent::Failed => break None,
            Sent::Stalled => {
                // The connection takes nothing: a close frame would wait like the rest.
                tracing::info!(session, "client stopped reading: connection dropped");
                break None;
            }
        }
    };
    if let Some((code, reason)) = close {
        let frame = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
        let _ = tokio::time::timeout(config.send_timeout, socket.send(frame)).await;
    }
    connection.closed();
}

/// A number drawn once per process.
fn incarnation() -> u64 {
    static INCARNATION: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *INCARNATION.get_or_init(rand::random)
}

/// FNV-1a, 64 bits: a hash every node computes alike (std's hasher is seeded per process).
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Whether a read failed on a message over the size limit.
fn too_big(error: &axum::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
        .is_some_and(|error| matches!(error, tungstenite::Error::Capacity(_)))
}

/// How a send to the client ended.
enum Sent {
    Done,
    /// The connection is broken.
    Failed,
    /// The client took nothing for the whole send timeout, or the hub gave up on it (its
    /// pushes piled up) while the send waited.
    Stalled,
}

/// Sends `message`, for at most `timeout`, and gives up early if the hub kicks the session.
/// A client that stops reading fills the socket's buffers; without a bound the session
/// would wait on it for ever, and never see its idle timeout or the kick.
async fn send(socket: &mut WebSocket, message: Message, kicked: &Notify, timeout: std::time::Duration) -> Sent {
    tokio::select! {
        sent = socket.send(message) => if sent.is_ok() { Sent::Done } else { Sent::Failed },
        _ = kicked.notified() => Sent::Stalled,
        _ = tokio::time::sleep(timeout) => Sent::Stalled,
    }
}

impl Connection {
    /// Answers one frame; a `Some` second value closes the connection after the reply.
    async fn handle(&mut self, frame: &[u8], limit: &mut TokenBucket) -> (Reply, Option<(u16, &'static str)>) {
        let started = Instant::now();
        // Every frame counts against the rate, well-formed or not: this connection's and
        // its user's over all of the user's connections on this node.
        let now = Instant::now();
        let allowed = limit.allow(now) & self.gateway.hub.allow_command(self.identity.user, now);
        let message = match protocol::parse_frame(frame) {
            Ok(message) => message,
            Err(error) if allowed => return (Reply::for_error(&error).to_user(self.identity.user), None),
            Err(error) => {
                let limited = ProtocolError::rate_limited((*error.echo).clone());
                return (Reply::for_error(&limited).to_user(self.identity.user), None);
            }
        };
        let echo = message.echo();
        if now_ms() >= self.identity.expires_at_ms {
            let reply = Reply::for_error(&ProtocolError::not_authenticated(echo));
            return (reply.to_user(self.identity.user), Some((CLOSE_TOKEN_EXPIRED, "login token expired")));
        }
        if !allowed {
            return (Reply::for_error(&ProtocolError::rate_limited(echo)).to_user(self.identity.user), None);
        }
        if let Err(error) = message.authorize(self.identity.user) {
            return (Reply::for_error(&error).to_user(self.identity.user), None);
        }
        let pk = self.room.and_then(|(room, _)| self.gateway.lobby(|lobby| lobby.pk_of_room(room)));
        let span = match pk {
            Some(pk) => tracing::info_span!("pk", pk = pk.0),
            None => tracing::Span::none(),
        };
        let command = message.command.command_id();
        let reply = async {
            let reply = self.execute(&message).await;
            tracing::debug!(command, code = %reply.code, "command answered");
            reply
        }
        .instrument(span)
        .await;
        let cost = started.elapsed().as_millis() as u64;
        (reply.to_user(self.identity.user).cost_ms(cost), None)
    }

    async fn execute(&mut self, message: &ClientMessage) -> Reply {
        let echo = message.echo();
        let gateway = self.gateway.clone();
        match &message.command {
            ClientCommand::Match { action, .. } => {
                let action = match *action {
                    MatchAction::Start { anchor } => {
                        let request = self.retry_key(message);
                        LobbyAction::StartMatch { anchor, profile: self.identity.profile(), request }
                    }
                    MatchAction::Stop { anchor } => LobbyAction::StopMatch { anchor },
                    MatchAction::Accept { inviter, invitee } => LobbyAction::Accept { inviter, invitee },
                    MatchAction::Refuse { inviter, invitee } => LobbyAction::Refuse { inviter, invitee },
                };
                #[cfg(feature = "fault-injection")]
                if crate::fault_hooks::refuses_clients() {
                    return unavailable(echo, "unavailable-after-restart");
                }
                #[cfg(feature = "fault-injection")]
                let asked = action.clone();
                match gateway.node.propose_lobby(action).await {
                    Ok(response) => {
                        #[cfg(feature = "fault-injection")]
                        let response = crate::fault_hooks::told_response(&asked, response);
                        Reply::for_response(echo, &response)
                    }
                    Err(error) => unavailable(echo, &error.to_string()),
                }
            }
            ClientCommand::RtmToken { .. } => self.rtm_token(echo),
            ClientCommand::EnterRoom { room, role } => {
                let anchor = *role == RoomRole::Anchor;
                gateway.hub.enter(self.session, *room, anchor);
                self.room = Some((*room, anchor));
                if anchor {
                    let live = LobbyAction::GoLive {
                        anchor: self.identity.user,
                        profile: self.identity.profile(),
                        node: gateway.node.id(),
                    };
                    if let Err(error) = gateway.node.propose_lobby(live).await {
                        return unavailable(echo, &error.to_string());
                    }
                    // An anchor back in its room (maybe on another node) while it is
                    // matching is told so again.
                    self.push_if_matching(*room);
                }
                Reply::success(echo, ReplyResult::PkState(self.room_state(*room)))
            }
            ClientCommand::LeaveRoom { room } => {
                gateway.hub.leave(self.session, *room);
                if self.room.is_some_and(|(current, _)| current == *room)
                    && let Some(anchor) = self.left_room()
                {
                    // An anchor leaving its own room stops streaming: off air at once, out
                    // of the queue before the reply, so it is never matched afterwards.
                    let off_air = LobbyAction::GoOffAir { anchor, node: gateway.node.id() };
                    if let Err(error) = gateway.node.propose_lobby(off_air).await {
                        return unavailable(echo, &error.to_string());
                    }
                }
                Reply::success(echo, ReplyResult::Null)
            }
            ClientCommand::RoomPkState { room } => Reply::success(echo, ReplyResult::PkState(self.room_state(*room))),
            ClientCommand::GoOnMic { room } => {
                // The source pushes 13 to a user going on mic while the room is matching.
                self.push_if_matching(*room);
                Reply::success(echo, ReplyResult::Null)
            }
            ClientCommand::Heartbeat { .. } => Reply::success(echo, ReplyResult::ServerTime(now_ms())),
        }
    }

    /// The key that makes a start safe to send again: its `logId` if it has one (the same
    /// on any connection and node), else this connection's `sequence`. Never 0.
    fn retry_key(&self, message: &ClientMessage) -> u64 {
        let mut hash = Fnv1a::default();
        match message.log_id.as_deref().filter(|log_id| !log_id.is_empty()) {
            Some(log_id) => {
                hash.write(b"logId:");
                hash.write(log_id.as_bytes());
            }
            None => {
                hash.write(b"sequence:");
                hash.write(&self.gateway.node.id().to_be_bytes());
                // Session ids start again with each process: the incarnation keeps a new
                // process's connection from replaying an old one's starts.
                hash.write(&incarnation().to_be_bytes());
                hash.write(&self.session.to_be_bytes());
                hash.write(&message.sequence.to_be_bytes());
            }
        }
        hash.finish().max(1)
    }

    /// The state of the PK in `room`, as a reply shows it (and this connection saw it).
    fn room_state(&mut self, room: RoomId) -> Option<Box<protocol::PkStateContent>> {
        let view = self.gateway.room_view(room)?;
        self.shown.shown(StateStamp::of(&view));
        Some(Box::new(protocol::PkStateContent::from_view(&view, now_ms())))
    }

    /// Push 13 to this connection's user if `room`'s anchor is matching.
    fn push_if_matching(&self, room: RoomId) {
        let anchor = UserId(room.0);
        if self.gateway.lobby(|lobby| lobby.is_waiting(anchor)) {
            let push = pkd_raft::effect::Push {
                to: pkd_raft::effect::Audience::User { user: self.identity.user, room },
                message: pkd_raft::effect::PushMessage::MatchingStarted { anchor },
            };
            let frame = Frame::text(protocol::render_push(&push, now_ms()));
            self.gateway.hub.send_to_user(self.identity.user, &frame);
        }
    }

    fn rtm_token(&self, echo: protocol::Echo) -> Reply {
        let Some(credentials) = &self.gateway.config.rtm else {
            return Reply::new(
                echo,
                protocol::code::UNAVAILABLE,
                "RTM is not configured on this node",
                ReplyResult::Null,
            );
        };
        // The token is for co-hosting: only an anchor whose PK has not ended gets one.
        let (in_pk, validity_ms) = self
            .gateway
            .lobby(|lobby| (lobby.pk_of(self.identity.user).is_some(), lobby.config().timing.rtm_token_validity_ms));
        if !in_pk {
            return Reply::new(
                echo,
                protocol::code::NOT_IN_PK,
                "RTM tokens are for the anchors of a running PK",
                ReplyResult::Null,
            );
        }
        let issued_at = u32::try_from(now_ms() / 1000).unwrap_or(u32::MAX);
        let request = rtm::RtmTokenRequest {
            app_id: &credentials.app_id,
            app_certificate: &credentials.app_certificate,
            user_id: &self.identity.user.0.to_string(),
            issued_at,
            salt: rand::random::<u32>().max(1),
            expire_seconds: u32::try_from(validity_ms / 1000).unwrap_or(u32::MAX),
        };
        match rtm::build(&request) {
            Ok(token) => Reply::success(echo, ReplyResult::Token(token)),
            Err(error) => {
                tracing::error!(%error, "RTM credentials are invalid");
                Reply::new(echo, protocol::code::UNAVAILABLE, "RTM is misconfigured on this node", ReplyResult::Null)
            }
        }
    }

    /// The connection left its room (command 41, or disconnect); the anchor, if it was
    /// there as the room's anchor.
    fn left_room(&mut self) -> Option<UserId> {
        let (_, anchor) = self.room.take()?;
        anchor.then_some(self.identity.user)
    }

    /// The connection closed: an anchor that does not come back to its room within the
    /// off-air grace (a reconnect, maybe to another node) goes off air: it leaves the
    /// queue and cannot be invited.
    fn dropped_from_room(&mut self) {
        let Some((room, true)) = self.room.take() else { return };
        let gateway = self.gateway.clone();
        let user = self.identity.user;
        let grace = gateway.config.off_air_grace;
        self.gateway.tasks.spawn(async move {
            // A stopping node does not wait: its anchors were told to reconnect elsewhere,
            // and what a node that is gone decided is unknown either way (as after a crash).
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = gateway.stopping.cancelled() => return,
            }
            if !gateway.hub.anchor_present(user, room)
                && let Err(error) =
                    gateway.node.propose_lobby(LobbyAction::GoOffAir { anchor: user, node: gateway.node.id() }).await
            {
                tracing::warn!(%error, %user, "could not take an anchor off air");
            }
        });
    }

    fn closed(&mut self) {
        self.gateway.hub.disconnect(self.session);
        self.dropped_from_room();
        tracing::debug!(session = self.session, user = %self.identity.user, "client disconnected");
    }
}

fn unavailable(echo: protocol::Echo, why: &str) -> Reply {
    tracing::warn!(%why, "command not applied");
    Reply::new(echo, protocol::code::UNAVAILABLE, "temporarily unavailable, retry", ReplyResult::Null)
}

#[cfg(test)]
mod tests {
    use super::Fnv1a;

    #[test]
    fn fnv1a_matches_its_published_vectors() {
        let hash = |bytes: &[u8]| {
            let mut hash = Fnv1a::default();
            hash.write(bytes);
            hash.finish()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
