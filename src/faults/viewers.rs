//! The viewers of a fault run: users who are not anchors, each watching one anchor's room
//! at a time over WebSocket, on a random member node. A viewer enters a room (command 40
//! with `type` 1), reads its pushes for a few seconds, then either moves to another room
//! over the same connection or hangs up and connects again elsewhere; a dropped
//! connection (a node killed, paused past the client's patience, partitioned) is made
//! again on another member. Every PK state a viewer reads, the room entry's reply and each
//! push 10, goes to the run's history with the connection it came over, so the checkers
//! hold viewers to the same promises as anchors: a state shown never goes back, an end
//! shown is the settled one and never early.

use std::sync::Arc;
use std::time::Duration;

use pkd_cluster::AppClient;
use pkd_cluster::app::{self, wall_clock_ms};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::bench::pks::{Reader, StateObserver, StateSource};
use crate::bench::target::Target;

/// How long a viewer stays in one room.
const DWELL: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(8));
/// The chance that a viewer done with a room hangs up and connects again elsewhere (it
/// moves to another room over the same connection otherwise).
const RECONNECT_CHANCE: f64 = 0.3;
/// How long a viewer waits for a node's reply before it gives the connection up.
const REPLY_WAIT: Duration = Duration::from_secs(3);

/// What viewers read: the users they are, the rooms they watch.
#[derive(Clone)]
pub struct Audience {
    pub target: Arc<Target>,
    /// The anchors whose rooms the viewers watch.
    pub rooms: Vec<u64>,
    /// Told of every PK state a viewer reads.
    pub observer: StateObserver,
}

/// Starts `count` viewers, users `first_user`, `first_user + 1`, ..., each with its own
/// generator drawn from `seed`; they hang up once `stop` turns true.
pub fn spawn(
    audience: &Audience,
    first_user: u64,
    count: u64,
    seed: u64,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..count)
        .map(|index| {
            let viewer = Viewer {
                audience: audience.clone(),
                user: first_user + index,
                rng: StdRng::seed_from_u64(seed ^ (0x7669_6577 + index)),
                connections: 0,
                connected_to: 0,
            };
            tokio::spawn(viewer.watch(stop.clone()))
        })
        .collect()
}

struct Viewer {
    audience: Audience,
    user: u64,
    rng: StdRng,
    /// Connections made so far.
    connections: u64,
    /// The node of the latest one.
    connected_to: u64,
}

impl Viewer {
    async fn watch(mut self, mut stopped: watch::Receiver<bool>) {
        let mut client: Option<AppClient> = None;
        while !*stopped.borrow() {
            let connected = match client.take() {
                Some(connected) => Some(connected),
                None => tokio::select! {
                    connected = self.connect() => connected,
                    _ = stopped.changed() => break,
                },
            };
            let Some(mut connected) = connected else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let room = self.audience.rooms[self.rng.random_range(0..self.audience.rooms.len())];
            let dwell = Duration::from_secs_f64(self.rng.random_range(DWELL.0.as_secs_f64()..DWELL.1.as_secs_f64()));
            let kept = tokio::select! {
                kept = self.stay(&mut connected, room, dwell) => kept,
                _ = stopped.changed() => true,
            };
            if kept && !self.rng.random_bool(RECONNECT_CHANCE) {
                client = Some(connected);
            } else {
                connected.close().await;
            }
        }
        if let Some(client) = client {
            client.close().await;
        }
    }

    /// Connects to a random member (or the next node up).
    async fn connect(&mut self) -> Option<AppClient> {
        let target = &self.audience.target;
        let members = target.member_ids();
        let node = if members.is_empty() {
            target.nodes[self.rng.random_range(0..target.nodes.len())].id
        } else {
            members[self.rng.random_range(0..members.len())]
        };
        let index = target.nodes.iter().position(|candidate| candidate.id == node).unwrap_or(0);
        let mut client = target.connect(index, self.user).await.ok()?;
        client.set_wait(REPLY_WAIT);
        self.connections += 1;
        self.connected_to = target.node_for(index).id;
        Some(client)
    }

    /// Enters `room`, reads its pushes for `dwell`, and leaves it; false if the connection
    /// is lost (or the node would not let the viewer in).
    async fn stay(&mut self, client: &mut AppClient, room: u64, dwell: Duration) -> bool {
        let reply = match client.enter(room, false).await {
            Ok(reply) => reply,
            Err(_) => return false,
        };
        // Pushes that came before the reply first: the reply is the newest state.
        self.observe_kept(client);
        if app::reply_code(&reply) != app::SUCCESS {
            return false;
        }
        let state = &reply["result"];
        if state.is_object() {
            (self.audience.observer)(self.reader(StateSource::Entry, wall_clock_ms()), state);
        }
        let until = Instant::now() + dwell;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match client.next_message(left).await {
                Ok(received) => self.observe(&received.message, received.at_ms),
                Err(app::AppError::Timeout { .. } | app::AppError::Malformed { .. }) => {}
                Err(_) => return false,
            }
        }
        let left = client.leave(room).await;
        self.observe_kept(client);
        left.is_ok()
    }

    fn observe_kept(&mut self, client: &mut AppClient) {
        for received in client.take_kept() {
            self.observe(&received.message, received.at_ms);
        }
    }

    fn observe(&self, message: &Value, at_ms: i64) {
        if app::is_push(message, 10) {
            (self.audience.observer)(self.reader(StateSource::Push, at_ms), &message["content"]);
        }
    }

    fn reader(&self, source: StateSource, at_ms: i64) -> Reader {
        Reader { user: self.user, connection: self.connections, node: self.connected_to, source, at_ms }
    }
}
