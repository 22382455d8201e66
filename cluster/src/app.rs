//! [`AppClient`]: one app client of a pkd node, over WebSocket, speaking the app's protocol
//! (`docs/protocol.md` §1–§7).
//!
//! A command is one frame; its reply is the next message whose `msgType` is `"command"`
//! and whose `sequence` is the command's. Pushes that arrive while the client waits for a
//! reply (or for another push) are kept, each with the time it arrived, and the push
//! waits ([`AppClient::wait_for`], [`AppClient::pushes_within`], ...) look at the kept
//! ones first. The client is one task's: it reads only while one of its methods runs, so
//! a caller that holds it idle for long must keep reading (see [`AppClient::next_frame`])
//! or the node drops it as a slow client.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, http};

use crate::stream::Stream;

/// How long a client waits for a reply or a push unless told otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(15);
/// The reply code of success.
pub const SUCCESS: &str = "000000";
/// The reply code for "no leader reachable; nothing was applied, retry".
pub const UNAVAILABLE: &str = "900008";

/// The socket under an [`AppClient`]: a WebSocket over TCP, in the clear or over TLS.
pub type AppSocket = WebSocketStream<Stream>;

/// Why a WebSocket exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("connecting to {address}: {source}")]
    Connect { address: String, source: std::io::Error },
    #[error("the WebSocket upgrade at {address} was refused with HTTP {status}")]
    Refused { address: String, status: u16 },
    #[error("the WebSocket upgrade at {address} failed: {message}")]
    Handshake { address: String, message: String },
    #[error("user {user}: nothing arrived within {limit:?}")]
    Timeout { user: u64, limit: Duration },
    #[error("user {user}: the connection closed ({reason})")]
    Closed { user: u64, reason: String },
    #[error("user {user}: {source}")]
    WebSocket { user: u64, source: Box<tungstenite::Error> },
    #[error("user {user}: a message that is not a JSON object: {text}")]
    Malformed { user: u64, text: String },
    #[error("user {user}: the reply to sequence {sequence} answers another command: {reply}")]
    Mismatch { user: u64, sequence: i64, reply: Value },
}

impl AppError {
    /// True if the connection is gone (closed, reset, or a transport error): reconnect.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, AppError::Closed { .. } | AppError::WebSocket { .. } | AppError::Connect { .. })
    }
}

/// How the client presents its login token (`docs/protocol.md` §1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <token>` on the upgrade request (what native apps do).
    Bearer(String),
    /// `?token=<token>` on the URL (for clients that cannot set headers).
    Query(String),
    /// No token at all (to check that the node refuses it).
    None,
}

impl Auth {
    /// A `dev:<user>` token in the header, for nodes started with `--dev-auth`.
    pub fn dev(user: u64) -> Auth {
        Auth::Bearer(format!("dev:{user}"))
    }
}

/// Socket settings for many cheap connections.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// The WebSocket read buffer. tungstenite's default (128 KiB) is zero-filled on every
    /// read, CPU that thousands of idle viewers take from the node they share cores with.
    pub read_buffer_bytes: Option<usize>,
    /// The kernel's receive buffer of the socket (`SO_RCVBUF`), to fill a connection that
    /// reads nothing quickly.
    pub receive_buffer_bytes: Option<u32>,
    /// How long the client waits for a reply or a push ([`DEFAULT_WAIT`] if unset).
    pub wait: Option<Duration>,
    /// TLS (`wss://`), trusting the roots of this configuration; in the clear if unset.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl ConnectOptions {
    /// A small read buffer (4 KiB): what a load generator holding thousands of
    /// connections wants.
    pub fn lean() -> ConnectOptions {
        ConnectOptions { read_buffer_bytes: Some(4 * 1024), ..ConnectOptions::default() }
    }
}

/// One message from the node, and when it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    /// The wall clock when it arrived, in ms since the Unix epoch (the clock of the
    /// push's `version` and of a PK's `endTime`).
    pub at_ms: i64,
    /// The monotonic clock when it arrived.
    pub at: Instant,
    pub message: Value,
}

/// One text frame from the node, unparsed, and when it arrived.
#[derive(Clone, Debug)]
pub struct Frame {
    pub at_ms: i64,
    pub at: Instant,
    pub text: String,
}

/// One WebSocket client of a pkd node, acting as one user.
pub struct AppClient {
    user: u64,
    address: String,
    socket: AppSocket,
    sequence: i64,
    /// Sets this client's `logId`s apart from every other client's, in this process or
    /// any other: a `logId` names one request, and a node answers a second request with
    /// the same one as a retry of the first.
    instance: String,
    wait: Duration,
    /// Pushes received while waiting for something else, oldest first.
    kept: VecDeque<Received>,
}

/// A name no other client gets: the process id, the wall clock in nanoseconds and a
/// counter of the clients this process made.
fn instance_id() -> String {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
    format!("{:x}{:x}{made:x}", std::process::id(), nanos)
}

/// Milliseconds since the Unix epoch.
pub fn wall_clock_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// The `code` of a reply (or of a gift answer), `""` if it has none.
pub fn reply_code(reply: &Value) -> &str {
    reply["code"].as_str().unwrap_or("")
}

/// True if `message` is push `push_type` (10, 12, 13 or 14).
pub fn is_push(message: &Value, push_type: i64) -> bool {
    message["msgType"] == "pub" && message["type"] == push_type
}

/// True if `message` is a state push (type 10) of `pk`.
pub fn is_state_of(message: &Value, pk: u64) -> bool {
    is_push(message, 10) && message["content"]["pkId"] == pk
}

impl AppClient {
    /// Connects to the node whose client address is `address` ("host:port") as `user`.
    pub async fn connect(address: &str, user: u64, auth: Auth) -> Result<AppClient, AppError> {
        AppClient::connect_with(address, user, auth, &ConnectOptions::default()).await
    }

    /// [`AppClient::connect`] with socket settings.
    pub async fn connect_with(
        address: &str,
        user: u64,
        auth: Auth,
        options: &ConnectOptions,
    ) -> Result<AppClient, AppError> {
        let handshake = |message: String| AppError::Handshake { address: address.to_owned(), message };
        let scheme = if options.tls.is_some() { "wss" } else { "ws" };
        let url = match &auth {
            Auth::Query(token) => format!("{scheme}://{address}/ws?token={token}"),
            Auth::Bearer(_) | Auth::None => format!("{scheme}://{address}/ws"),
        };
        let mut request = url.into_client_request().map_err(|error| handshake(error.to_string()))?;
        if let Auth::Bearer(token) = &auth {
            let value =
                format!("Bearer {token}").parse().map_err(|_| handshake("a token unfit for a header".into()))?;
            request.headers_mut().insert(http::header::AUTHORIZATION, value);
        }
        let connect = |source| AppError::Connect { address: address.to_owned(), source };
        let target = tokio::net::lookup_host(address)
            .await
            .map_err(connect)?
            .next()
            .ok_or_else(|| connect(std::io::Error::other("the address resolves to nothing")))?;
        let socket = if target.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
            .map_err(connect)?;
        if let Some(bytes) = options.receive_buffer_bytes {
            socket.set_recv_buffer_size(bytes).map_err(connect)?;
        }
        let stream = socket.connect(target).await.map_err(connect)?;
        stream.set_nodelay(true).map_err(connect)?;
        let stream = Stream::over(stream, address, options.tls.as_ref()).await.map_err(connect)?;
        let mut config = WebSocketConfig::default();
        if let Some(bytes) = options.read_buffer_bytes {
            config = config.read_buffer_size(bytes);
        }
        let (socket, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await.map_err(|error| {
                match error {
                    tungstenite::Error::Http(response) => {
                        AppError::Refused { address: address.to_owned(), status: response.status().as_u16() }
                    }
                    other => handshake(other.to_string()),
                }
            })?;
        Ok(AppClient {
            user,
            address: address.to_owned(),
            socket,
            sequence: 0,
            instance: instance_id(),
            wait: options.wait.unwrap_or(DEFAULT_WAIT),
            kept: VecDeque::new(),
        })
    }

    pub fn user(&self) -> u64 {
        self.user
    }

    /// The node address this client is connected to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// How long replies and pushes are waited for.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    pub fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    /// The next text frame from the socket (kept pushes are not looked at), unparsed.
    /// Pings are answered and skipped; a close frame is an error.
    pub async fn next_frame(&mut self, limit: Duration) -> Result<Frame, AppError> {
        let user = self.user;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| AppError::Timeout { user, limit })?;
            let message = match message {
                None => return Err(AppError::Closed { user, reason: "end of stream".to_owned() }),
                Some(Err(error)) => return Err(AppError::WebSocket { user, source: Box::new(error) }),
                Some(Ok(message)) => message,
            };
            let text = match message {
                Message::Text(text) => text.as_str().to_owned(),
                Message::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Message::Close(frame) => {
                    let reason = frame.map_or_else(|| "no close frame".to_owned(), |frame| frame.to_string());
                    return Err(AppError::Closed { user, reason });
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            return Ok(Frame { at_ms: wall_clock_ms(), at: Instant::now(), text });
        }
    }

    /// The next message from the socket (kept pushes are not looked at), parsed.
    pub async fn next_message(&mut self, limit: Duration) -> Result<Received, AppError> {
        let frame = self.next_frame(limit).await?;
        match serde_json::from_str::<Value>(&frame.text) {
            Ok(message) if message.is_object() => Ok(Received { at_ms: frame.at_ms, at: frame.at, message }),
            _ => Err(AppError::Malformed { user: self.user, text: frame.text }),
        }
    }

    /// Sends one text frame as it is, without waiting for anything.
    pub async fn send_raw(&mut self, frame: impl Into<String>) -> Result<(), AppError> {
        let user = self.user;
        self.socket
            .send(Message::Text(frame.into().into()))
            .await
            .map_err(|source| AppError::WebSocket { user, source: Box::new(source) })
    }

    /// Sends one text frame as it is and returns the next reply (whatever its sequence);
    /// pushes that arrive meanwhile are kept.
    pub async fn raw(&mut self, frame: impl Into<String>) -> Result<Value, AppError> {
        self.send_raw(frame).await?;
        self.next_reply(|_| true).await
    }

    /// Sends command `command_id` about `room` (if any) with `fields` added to the frame,
    /// and returns its reply; pushes that arrive meanwhile are kept.
    pub async fn command(&mut self, command_id: i64, room: Option<u64>, fields: Value) -> Result<Value, AppError> {
        self.sequence += 1;
        let sequence = self.sequence;
        let mut frame = json!({"commandId": command_id, "msgType": "command", "sequence": sequence,
                               "initTime": wall_clock_ms(),
                               "logId": format!("pkd_cluster_{}_{}_{command_id}_{sequence}", self.user, self.instance)});
        if let Some(room) = room {
            frame["roomId"] = json!(room);
        }
        if let (Some(frame), Some(fields)) = (frame.as_object_mut(), fields.as_object()) {
            frame.extend(fields.clone());
        }
        self.send_raw(frame.to_string()).await?;
        let reply = self.next_reply(|reply| reply["sequence"] == sequence).await?;
        if reply["commandId"] != -command_id {
            return Err(AppError::Mismatch { user: self.user, sequence, reply });
        }
        Ok(reply)
    }

    /// [`AppClient::command`], sent again while the node answers `900008` (no leader
    /// reachable, e.g. during an election; nothing was applied), as app clients do, for
    /// at most `patience`.
    pub async fn command_retrying(
        &mut self,
        command_id: i64,
        room: Option<u64>,
        fields: Value,
        patience: Duration,
    ) -> Result<Value, AppError> {
        let deadline = Instant::now() + patience;
        loop {
            let reply = self.command(command_id, room, fields.clone()).await?;
            if reply_code(&reply) != UNAVAILABLE || Instant::now() >= deadline {
                return Ok(reply);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads until a reply that `wanted` accepts; every push meanwhile is kept, and
    /// replies to other sequences are dropped.
    async fn next_reply(&mut self, wanted: impl Fn(&Value) -> bool) -> Result<Value, AppError> {
        let deadline = Instant::now() + self.wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let received = self.next_message(left).await?;
            if received.message["msgType"] == "command" {
                if wanted(&received.message) {
                    return Ok(received.message);
                }
                continue;
            }
            self.kept.push_back(received);
        }
    }

    /// Command 40: enters `room` as its anchor (`anchor`, only for one's own room) or as a
    /// viewer. The reply's `result` is the room's PK state, or `null`.
    pub async fn enter(&mut self, room: u64, anchor: bool) -> Result<Value, AppError> {
        self.command(40, Some(room), json!({"type": if anchor { 2 } else { 1 }})).await
    }

    /// Command 41: leaves `room`.
    pub async fn leave(&mut self, room: u64) -> Result<Value, AppError> {
        self.command(41, Some(room), json!({})).await
    }

    /// Command 42: the room's PK state (`result`), or `null`.
    pub async fn room_state(&mut self, room: u64) -> Result<Value, AppError> {
        self.command(42, Some(room), json!({})).await
    }

    /// Command 43: goes on mic in `room`.
    pub async fn on_mic(&mut self, room: u64) -> Result<Value, AppError> {
        self.command(43, Some(room), json!({})).await
    }

    /// Command 44: a heartbeat; the reply's `result` is the node's clock in ms.
    pub async fn heartbeat(&mut self) -> Result<Value, AppError> {
        self.command(44, None, json!({})).await
    }

    /// Command 27: an RTM token for `room`'s co-hosting channel (`result`).
    pub async fn rtm_token(&mut self, room: u64) -> Result<Value, AppError> {
        self.command(27, Some(room), json!({})).await
    }

    /// Command 28 type 1: this client's user starts matching in its own room.
    pub async fn start(&mut self) -> Result<Value, AppError> {
        let user = self.user;
        self.matching(1, user, user, 0).await
    }

    /// Command 28 type 4: this client's user stops matching.
    pub async fn stop(&mut self) -> Result<Value, AppError> {
        let user = self.user;
        self.matching(4, user, user, 0).await
    }

    /// Command 28 type 2: this client's user accepts `inviter`'s invitation.
    pub async fn accept(&mut self, inviter: u64) -> Result<Value, AppError> {
        let user = self.user;
        self.matching(2, user, inviter, user).await
    }

    /// Command 28 type 3: this client's user refuses `inviter`'s invitation.
    pub async fn refuse(&mut self, inviter: u64) -> Result<Value, AppError> {
        let user = self.user;
        self.matching(3, user, inviter, user).await
    }

    /// Command 28 with every field given: `kind` 1 start, 2 accept, 3 refuse, 4 stop.
    pub async fn matching(&mut self, kind: i64, room: u64, source: u64, target: u64) -> Result<Value, AppError> {
        self.command(28, Some(room), json!({"type": kind, "source": source, "target": target})).await
    }

    /// The pushes kept so far (received while waiting for something else), oldest first;
    /// the client forgets them.
    pub fn take_kept(&mut self) -> Vec<Received> {
        self.kept.drain(..).collect()
    }

    /// The next push (kept or new) that `wanted` accepts. Kept pushes before it stay
    /// kept; new ones it skips are dropped.
    pub async fn wait_for(&mut self, limit: Duration, wanted: impl Fn(&Value) -> bool) -> Result<Received, AppError> {
        if let Some(index) = self.kept.iter().position(|received| wanted(&received.message))
            && let Some(found) = self.kept.remove(index)
        {
            return Ok(found);
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let received = self.next_message(left).await?;
            if wanted(&received.message) {
                return Ok(received);
            }
        }
    }

    /// The next push of `push_type` (kept or new).
    pub async fn push(&mut self, push_type: i64, limit: Duration) -> Result<Received, AppError> {
        self.wait_for(limit, |message| is_push(message, push_type)).await
    }

    /// The next state push (type 10) of `pk` with `status` (kept or new).
    pub async fn state(&mut self, pk: u64, status: u64, limit: Duration) -> Result<Received, AppError> {
        self.wait_for(limit, |message| is_state_of(message, pk) && message["content"]["status"] == status).await
    }

    /// Every push (kept, then new) up to and including the first one `wanted` accepts.
    pub async fn pushes_until(
        &mut self,
        limit: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Vec<Received>, AppError> {
        let mut seen = Vec::new();
        while let Some(received) = self.kept.pop_front() {
            let found = wanted(&received.message);
            seen.push(received);
            if found {
                return Ok(seen);
            }
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let received = self.next_message(left).await?;
            let found = wanted(&received.message);
            seen.push(received);
            if found {
                return Ok(seen);
            }
        }
    }

    /// Every message kept, then every one that arrives within `window`. A closed
    /// connection ends the window early.
    pub async fn pushes_within(&mut self, window: Duration) -> Vec<Received> {
        let mut seen: Vec<Received> = self.kept.drain(..).collect();
        let deadline = Instant::now() + window;
        while let Ok(received) = self.next_message(deadline.saturating_duration_since(Instant::now())).await {
            seen.push(received);
        }
        seen
    }

    /// From now on the client only sends (heartbeats about `room`, over and over) and
    /// reads nothing, as a client whose reading side is stuck. The task ends once the node
    /// has dropped the connection and a send fails.
    pub fn stop_reading(self, room: u64) -> tokio::task::JoinHandle<()> {
        let (mut commands, replies) = self.socket.split();
        tokio::spawn(async move {
            let _unread = replies;
            let frame = json!({"commandId": 44, "msgType": "command", "roomId": room, "sequence": 1}).to_string();
            while commands.send(Message::Text(frame.clone().into())).await.is_ok() {}
        })
    }

    /// Sends a close frame and waits (briefly) for the node's.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.socket.close(None)).await;
    }

    /// The socket itself, for exchanges this client does not model.
    pub fn into_socket(self) -> AppSocket {
        self.socket
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_push_kinds_are_read_from_messages() {
        let reply = json!({"msgType": "command", "commandId": -28, "sequence": 3, "code": "902004"});
        assert_eq!(reply_code(&reply), "902004");
        assert_eq!(reply_code(&json!({})), "");
        let push = json!({"msgType": "pub", "type": 10, "content": {"pkId": 19, "status": 1}});
        assert!(is_push(&push, 10));
        assert!(!is_push(&push, 12));
        assert!(!is_push(&reply, 10));
        assert!(is_state_of(&push, 19));
        assert!(!is_state_of(&push, 20));
    }

    #[test]
    fn only_transport_failures_call_for_a_reconnection() {
        assert!(AppError::Closed { user: 1, reason: "4008".into() }.is_disconnect());
        assert!(!AppError::Timeout { user: 1, limit: Duration::from_secs(1) }.is_disconnect());
        assert!(!AppError::Refused { address: "x".into(), status: 401 }.is_disconnect());
    }

    /// A stand-in node on loopback: it answers the first command with a push, a reply to
    /// another sequence, then the real reply, and after that sends one more push.
    async fn scripted_node() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut socket = tokio_tungstenite::accept_async(stream).await.expect("upgrade");
            let Some(Ok(Message::Text(text))) = socket.next().await else { return };
            let command: Value = serde_json::from_str(text.as_str()).expect("json");
            let sequence = command["sequence"].as_i64().expect("sequence");
            let push = json!({"msgType": "pub", "type": 13, "content": {"msg": 5}, "version": 1});
            let stale = json!({"msgType": "command", "commandId": -44, "sequence": sequence + 100, "code": "000000"});
            let reply = json!({"msgType": "command", "commandId": -44, "sequence": sequence, "code": "000000",
                               "result": 123});
            let later = json!({"msgType": "pub", "type": 10, "content": {"pkId": 9, "status": 1}, "version": 2});
            for message in [push, stale, reply, later] {
                socket.send(Message::Text(message.to_string().into())).await.expect("send");
            }
            // Hold the connection until the client goes.
            while let Some(Ok(_)) = socket.next().await {}
        });
        address
    }

    #[tokio::test]
    async fn replies_are_paired_by_sequence_and_pushes_meanwhile_are_kept() {
        let address = scripted_node().await;
        let mut client = AppClient::connect(&address, 5, Auth::dev(5)).await.expect("connect");
        let reply = client.heartbeat().await.expect("reply");
        assert_eq!(reply["result"], 123, "the stale reply was skipped: {reply}");
        let state = client.state(9, 1, Duration::from_secs(5)).await.expect("the later push");
        assert_eq!(state.message["version"], 2);
        let kept = client.take_kept();
        assert_eq!(kept.len(), 1, "the push 13 that came before the reply is kept");
        assert!(is_push(&kept[0].message, 13));
        let nothing = client.next_message(Duration::from_millis(50)).await;
        assert!(matches!(nothing, Err(AppError::Timeout { .. })), "{nothing:?}");
    }

    #[tokio::test]
    async fn a_node_that_is_not_there_is_a_connect_error() {
        // Port 1 on loopback: nothing listens there.
        let error = AppClient::connect("127.0.0.1:1", 7, Auth::dev(7)).await.err();
        assert!(matches!(error, Some(AppError::Connect { .. })), "{error:?}");
    }
}
