//! The WebSocket gateway: how app clients talk to pkd once their connection is upgraded
//! (the HTTP side, `/ws` and the gift API, is served by the HTTP module).
//!
//! - [`protocol`]: the wire format as pure functions (see `docs/protocol.md`).
//! - [`hub`]: who is connected to this node and in which room; bounded queues.
//! - [`session`]: one WebSocket connection: authentication, rate limit, idle timeout,
//!   commands turned into proposals, replies in order.
//! - `pusher`: the node's effects turned into pushes for its own clients (every node
//!   pushes from its own replica), the 1 s coalescing and the 5 s cadence of push 10,
//!   and presence reports.

pub mod hub;
pub mod limits;
pub mod protocol;
mod pusher;
pub mod session;

use crate::replication::node::Node;
use pkd_raft::{PkId, PkView, RoomId};
pub use session::{CLOSE_DRAINING, CLOSE_GOING_AWAY, CLOSE_IDLE, CLOSE_TOKEN_EXPIRED, CLOSE_TOO_BIG, CLOSE_TOO_SLOW};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Credentials for RTM tokens (command 27).
#[derive(Clone)]
pub struct RtmCredentials {
    pub app_id: String,
    pub app_certificate: String,
}

impl std::fmt::Debug for RtmCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtmCredentials").field("app_id", &self.app_id).finish_non_exhaustive()
    }
}

/// How the gateway behaves. Secrets are never printed by `Debug`.
#[derive(Clone)]
pub struct GatewayConfig {
    /// The secret shared with the app's login service. `None` only with `dev_auth`.
    pub login_secret: Option<Vec<u8>>,
    /// Accept `dev:<user id>` as a token. For development only; logged loudly.
    pub dev_auth: bool,
    /// The gift service's token; `None` switches the gift API off.
    pub gift_token: Option<String>,
    /// For command 27; `None` answers it with 900008.
    pub rtm: Option<RtmCredentials>,
    /// Frames waiting for one client; past it the client is disconnected (4008).
    pub queue_capacity: usize,
    /// Commands a connection may send per second, sustained; a user gets the same over
    /// all of its connections to this node.
    pub commands_per_second: u32,
    /// ... and in a burst.
    pub command_burst: u32,
    /// Connections one user may hold to this node at once; an upgrade past it gets
    /// HTTP 429.
    pub connections_per_user: usize,
    /// A connection silent this long (no frame, no pong) is closed.
    pub idle_timeout: Duration,
    /// A reply or push the client has not taken within this long (it stopped reading and
    /// the socket's buffers are full) drops the connection.
    pub send_timeout: Duration,
    pub ping_interval: Duration,
    /// After a change, a PK's state is pushed at most this often.
    pub push_cooldown: Duration,
    /// A running PK's state is pushed at least this often.
    pub push_period: Duration,
    /// How often presence (anchors online, audiences) is compared with the engine.
    pub presence_interval: Duration,
    /// An anchor whose connection dropped is still reported online this long: it may be
    /// reconnecting, to this node or another.
    pub presence_grace: Duration,
    /// An anchor whose last connection closed is taken off air after this long.
    pub off_air_grace: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            login_secret: None,
            dev_auth: false,
            gift_token: None,
            rtm: None,
            queue_capacity: 256,
            commands_per_second: 20,
            command_burst: 40,
            connections_per_user: 8,
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            push_cooldown: Duration::from_secs(1),
            push_period: Duration::from_secs(5),
            presence_interval: Duration::from_secs(1),
            presence_grace: Duration::from_secs(5),
            off_air_grace: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("login_secret", &self.login_secret.as_ref().map(|_| "<set>"))
            .field("dev_auth", &self.dev_auth)
            .field("gift_token", &self.gift_token.as_ref().map(|_| "<set>"))
            .field("rtm", &self.rtm)
            .field("queue_capacity", &self.queue_capacity)
            .finish_non_exhaustive()
    }
}

/// What the gateway's sessions share.
pub struct Gateway {
    node: Node,
    hub: hub::Hub,
    config: GatewayConfig,
    /// The pusher, the presence reports and the sessions' delayed work.
    tasks: TaskTracker,
    stopping: CancellationToken,
    /// Cancelled when the node starts draining: no new connections.
    refusing: CancellationToken,
    /// Cancelled when the sessions are told to reconnect elsewhere.
    draining: CancellationToken,
}

impl Gateway {
    /// The gateway over `node`. Starts the pusher on the current runtime; it runs until
    /// [`Gateway::stop`].
    pub fn start(node: &Node, config: GatewayConfig) -> Arc<Gateway> {
        if config.dev_auth {
            tracing::warn!(
                "DEVELOPMENT AUTHENTICATION IS ON: any client can act as any user with a `dev:<user id>` token. \
                 Never run this in production."
            );
        }
        let gateway = Arc::new(Gateway {
            node: node.clone(),
            hub: hub::Hub::new(config.commands_per_second, config.command_burst),
            config,
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            refusing: CancellationToken::new(),
            draining: CancellationToken::new(),
        });
        let stopping = gateway.stopping.clone();
        let pushing = pusher::run(Arc::downgrade(&gateway));
        gateway.tasks.spawn(async move {
            tokio::select! {
                () = pushing => {}
                () = stopping.cancelled() => {}
            }
        });
        gateway
    }

    /// The first step of a drain: new connections are refused (HTTP 503), and `/readyz`
    /// says the node is not ready.
    pub fn drain_accepting(&self) {
        self.refusing.cancel();
    }

    /// The last step of a drain: every session is closed with [`CLOSE_DRAINING`]
    /// (reconnect to another node).
    pub fn drain(&self) {
        self.refusing.cancel();
        self.draining.cancel();
    }

    /// Whether the node is draining (it takes no new connections).
    pub fn is_draining(&self) -> bool {
        self.refusing.is_cancelled()
    }

    /// Stops the pusher and the sessions' delayed work, and waits for them.
    pub async fn stop(&self) {
        self.stopping.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The gateway's tasks: [`Gateway::stop`] waits for every one of them, sessions
    /// included.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    pub fn hub(&self) -> &hub::Hub {
        &self.hub
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Reads this node's lobby replica.
    pub fn lobby<T>(&self, read: impl FnOnce(&pkd_raft::Lobby) -> T) -> T {
        self.node.lobby().read(read)
    }

    /// A running PK's state from this node's replica of its arena, as it stands now by
    /// this node's clock.
    fn pk_view(&self, pk: PkId) -> Option<PkView> {
        let now = crate::clock::wall_clock();
        self.node.arena_for(pk).read(|arena| arena.view_at(pk, now))
    }

    /// The PK state of a room, if the room is in a running PK.
    fn room_view(&self, room: RoomId) -> Option<PkView> {
        let pk = self.lobby(|lobby| lobby.pk_of_room(room))?;
        self.pk_view(pk)
    }
}
