//! Who is connected to this node, in which room, and how to reach them.
//!
//! Every session has a bounded outbound queue. A push to a session whose queue is full
//! drops the session from the hub: its writer then sees the queue close and ends the
//! connection with close code 4008. A slow client is disconnected; it never makes the
//! node hold more memory.

use pkd_raft::{RoomId, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

use super::limits::TokenBucket;

pub type SessionId = u64;

/// A frame shared by every session it goes to.
pub type Outbound = Arc<Frame>;

/// A text frame, and for a PK state (push 10) where that state stands.
#[derive(Debug)]
pub struct Frame {
    pub text: Box<str>,
    pub stamp: Option<StateStamp>,
}

impl Frame {
    pub fn text(text: impl Into<Box<str>>) -> Outbound {
        Arc::new(Frame { text: text.into(), stamp: None })
    }

    pub fn state(text: impl Into<Box<str>>, stamp: StateStamp) -> Outbound {
        Arc::new(Frame { text: text.into(), stamp: Some(stamp) })
    }
}

/// Where a PK's state stands in its course, as a client was shown it: a PK's status only
/// moves on and its scores only grow, so a state behind one already shown is an older one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateStamp {
    pub pk: u64,
    /// Opening 0, battle 1, over 2.
    pub course: u8,
    pub source_beans: i64,
    pub target_beans: i64,
}

impl StateStamp {
    pub fn of(view: &pkd_raft::PkView) -> StateStamp {
        StateStamp {
            pk: view.pk.0,
            course: view.status.push_code().min(2),
            source_beans: view.source.beans,
            target_beans: view.target.beans,
        }
    }

    fn is_behind(&self, shown: &StateStamp) -> bool {
        self.course < shown.course || self.source_beans < shown.source_beans || self.target_beans < shown.target_beans
    }
}

/// The latest PK states one connection was shown (replies and pushes), so that a push
/// rendered before a reply it is queued behind is not shown after it.
#[derive(Debug, Default)]
pub struct StatesShown(HashMap<u64, StateStamp>);

impl StatesShown {
    /// Most PKs a connection keeps track of (a client is in one room at a time).
    const LIMIT: usize = 16;

    /// Records a state shown in a reply.
    pub fn shown(&mut self, stamp: StateStamp) {
        if self.0.len() >= Self::LIMIT && !self.0.contains_key(&stamp.pk) {
            self.0.clear();
        }
        let entry = self.0.entry(stamp.pk).or_insert(stamp);
        if !stamp.is_behind(entry) {
            *entry = stamp;
        }
    }

    /// Whether a frame may go out: any frame but a PK state behind one already shown.
    pub fn admits(&mut self, frame: &Frame) -> bool {
        let Some(stamp) = frame.stamp else { return true };
        if self.0.get(&stamp.pk).is_some_and(|shown| stamp.is_behind(shown)) {
            return false;
        }
        self.shown(stamp);
        true
    }
}

pub struct Hub {
    next_id: AtomicU64,
    state: Mutex<HubState>,
    /// Each user's command budget over all of its connections here: rate and burst.
    user_rate: (u32, u32),
}

#[derive(Default)]
struct HubState {
    sessions: HashMap<SessionId, Session>,
    rooms: HashMap<RoomId, HashSet<SessionId>>,
    users: HashMap<UserId, HashSet<SessionId>>,
    /// When an anchor's connection in its room last closed (not by leaving the room):
    /// it may be reconnecting, here or to another node.
    dropped: HashMap<(UserId, RoomId), Instant>,
    /// The command budget of each user with a connection here.
    budgets: HashMap<UserId, TokenBucket>,
}

struct Session {
    user: UserId,
    room: Option<RoomId>,
    /// In its room as the room's anchor.
    anchor: bool,
    queue: mpsc::Sender<Outbound>,
    /// Told when the session is dropped for being too slow.
    kicked: Arc<Notify>,
}

/// Who is in a room on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoomPresence {
    /// Sessions in the room as viewers.
    pub viewers: u32,
    /// Whether the given anchor has a session in the room as its anchor.
    pub anchor_online: bool,
}

impl Hub {
    /// An empty hub; each user may send `rate` commands per second (`burst` at once) over
    /// all of its connections.
    pub fn new(rate: u32, burst: u32) -> Hub {
        Hub { next_id: AtomicU64::new(0), state: Mutex::default(), user_rate: (rate, burst) }
    }

    /// Takes one command from `user`'s budget at `now`, if there is one.
    pub fn allow_command(&self, user: UserId, now: Instant) -> bool {
        let (rate, burst) = self.user_rate;
        let mut state = self.lock();
        state.budgets.entry(user).or_insert_with(|| TokenBucket::new(rate, burst, now)).allow(now)
    }

    /// How many connections `user` has here.
    pub fn connections_of(&self, user: UserId) -> usize {
        self.lock().users.get(&user).map_or(0, HashSet::len)
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a session for `user`; pushes for it go into `queue`.
    pub fn connect(&self, user: UserId, queue: mpsc::Sender<Outbound>, kicked: Arc<Notify>) -> SessionId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut state = self.lock();
        state.sessions.insert(id, Session { user, room: None, anchor: false, queue, kicked });
        state.users.entry(user).or_default().insert(id);
        id
    }

    /// Removes a session (disconnect, or too slow). An anchor's connection in its room
    /// is remembered as dropped (see [`Hub::dropped_within`]).
    pub fn disconnect(&self, id: SessionId) {
        let mut state = self.lock();
        if let Some(session) = state.sessions.get(&id)
            && session.anchor
            && let Some(room) = session.room
        {
            let key = (session.user, room);
            state.dropped.insert(key, Instant::now());
        }
        remove(&mut state, id);
    }

    /// Whether `anchor`'s connection in `room` dropped less than `grace` before `now`: it
    /// may be reconnecting, to this node or another, and still counts as online. Drops
    /// older than `grace` are forgotten.
    pub fn dropped_within(&self, anchor: UserId, room: RoomId, now: Instant, grace: Duration) -> bool {
        let mut state = self.lock();
        state.dropped.retain(|_, at| now.saturating_duration_since(*at) < grace);
        state.dropped.contains_key(&(anchor, room))
    }

    /// Puts the session in `room` (leaving the room it was in).
    pub fn enter(&self, id: SessionId, room: RoomId, anchor: bool) {
        let mut state = self.lock();
        let Some(session) = state.sessions.get_mut(&id) else { return };
        let user = session.user;
        let previous = session.room.replace(room);
        session.anchor = anchor;
        if let Some(previous) = previous {
            leave_room(&mut state, id, previous);
        }
        state.rooms.entry(room).or_default().insert(id);
        if anchor {
            state.dropped.remove(&(user, room));
        }
    }

    /// Takes the session out of `room`, if it is there. An anchor that leaves its room
    /// this way is gone at once: it is not reconnecting.
    pub fn leave(&self, id: SessionId, room: RoomId) {
        let mut state = self.lock();
        let Some(session) = state.sessions.get_mut(&id) else { return };
        if session.room != Some(room) {
            return;
        }
        session.room = None;
        session.anchor = false;
        let user = session.user;
        state.dropped.remove(&(user, room));
        leave_room(&mut state, id, room);
    }

    pub fn has_room(&self, room: RoomId) -> bool {
        self.lock().rooms.contains_key(&room)
    }

    pub fn presence(&self, room: RoomId, anchor: UserId) -> RoomPresence {
        let state = self.lock();
        let mut presence = RoomPresence::default();
        for id in state.rooms.get(&room).into_iter().flatten() {
            let session = &state.sessions[id];
            if session.anchor && session.user == anchor {
                presence.anchor_online = true;
            } else {
                presence.viewers += 1;
            }
        }
        presence
    }

    /// Whether `user` has a session in `room` as its anchor.
    pub fn anchor_present(&self, user: UserId, room: RoomId) -> bool {
        let state = self.lock();
        state.users.get(&user).into_iter().flatten().any(|id| {
            let session = &state.sessions[id];
            session.anchor && session.room == Some(room)
        })
    }

    /// Sends to everyone in `room`; returns how many sessions it reached.
    pub fn send_to_room(&self, room: RoomId, frame: &Outbound) -> usize {
        let mut state = self.lock();
        let targets: Vec<SessionId> = state.rooms.get(&room).into_iter().flatten().copied().collect();
        deliver(&mut state, targets, frame)
    }

    /// Sends to every session of `user`.
    pub fn send_to_user(&self, user: UserId, frame: &Outbound) -> usize {
        let mut state = self.lock();
        let targets: Vec<SessionId> = state.users.get(&user).into_iter().flatten().copied().collect();
        deliver(&mut state, targets, frame)
    }

    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }
}

fn deliver(state: &mut HubState, targets: Vec<SessionId>, frame: &Outbound) -> usize {
    let mut delivered = 0;
    for id in targets {
        let Some(session) = state.sessions.get(&id) else { continue };
        match session.queue.try_send(frame.clone()) {
            Ok(()) => delivered += 1,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(crate::telemetry::SLOW_DROPS).increment(1);
                tracing::info!(session = id, user = %session.user, "client too slow: disconnecting");
                session.kicked.notify_one();
                remove(state, id);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => remove(state, id),
        }
    }
    delivered
}

fn remove(state: &mut HubState, id: SessionId) {
    let Some(session) = state.sessions.remove(&id) else { return };
    if let Some(room) = session.room {
        leave_room(state, id, room);
    }
    if let Some(ids) = state.users.get_mut(&session.user) {
        ids.remove(&id);
        if ids.is_empty() {
            state.users.remove(&session.user);
            state.budgets.remove(&session.user);
        }
    }
}

fn leave_room(state: &mut HubState, id: SessionId, room: RoomId) {
    if let Some(ids) = state.rooms.get_mut(&room) {
        ids.remove(&id);
        if ids.is_empty() {
            state.rooms.remove(&room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_users_presence_and_slow_sessions() {
        let hub = Hub::new(20, 40);
        let (fast_tx, mut fast_rx) = mpsc::channel(8);
        let (slow_tx, _slow_rx) = mpsc::channel(1);
        let (anchor_tx, _anchor_rx) = mpsc::channel(8);
        let kicked = Arc::new(Notify::new());
        let viewer = hub.connect(UserId(7), fast_tx, Arc::new(Notify::new()));
        let slow = hub.connect(UserId(8), slow_tx, kicked.clone());
        let anchor = hub.connect(UserId(1), anchor_tx, Arc::new(Notify::new()));
        hub.enter(viewer, RoomId(1), false);
        hub.enter(slow, RoomId(1), false);
        hub.enter(anchor, RoomId(1), true);
        assert_eq!(hub.presence(RoomId(1), UserId(1)), RoomPresence { viewers: 2, anchor_online: true });
        let frame = Frame::text("x");
        assert_eq!(hub.send_to_room(RoomId(1), &frame), 3);
        // The slow session's queue (1) is now full: the next push drops it.
        assert_eq!(hub.send_to_room(RoomId(1), &frame), 2);
        assert_eq!(hub.session_count(), 2);
        // The slow session's task is told, so it closes with 4008.
        assert!(futures_util::FutureExt::now_or_never(kicked.notified()).is_some());
        assert_eq!(hub.presence(RoomId(1), UserId(1)).viewers, 1);
        assert_eq!(&*fast_rx.try_recv().unwrap().text, "x");
        hub.enter(viewer, RoomId(2), false);
        assert_eq!(hub.presence(RoomId(1), UserId(1)).viewers, 0);
        assert_eq!(hub.send_to_user(UserId(7), &frame), 1);
        hub.disconnect(anchor);
        assert!(!hub.has_room(RoomId(1)));
        assert!(!hub.anchor_present(UserId(1), RoomId(1)));
    }

    #[test]
    fn a_dropped_anchor_counts_as_reconnecting_for_its_grace_but_one_that_left_does_not() {
        let hub = Hub::new(20, 40);
        let grace = Duration::from_secs(5);
        let (queue, _outbound) = mpsc::channel(8);
        let dropping = hub.connect(UserId(1), queue.clone(), Arc::new(Notify::new()));
        hub.enter(dropping, RoomId(1), true);
        hub.disconnect(dropping);
        let now = Instant::now();
        assert!(hub.dropped_within(UserId(1), RoomId(1), now, grace));
        assert!(!hub.dropped_within(UserId(1), RoomId(1), now + grace, grace), "the grace is over");
        // Back in the room: no longer dropped, even if it drops again later.
        let leaving = hub.connect(UserId(1), queue.clone(), Arc::new(Notify::new()));
        hub.enter(leaving, RoomId(1), true);
        hub.disconnect(leaving);
        let back = hub.connect(UserId(1), queue.clone(), Arc::new(Notify::new()));
        hub.enter(back, RoomId(1), true);
        assert!(!hub.dropped_within(UserId(1), RoomId(1), Instant::now(), grace));
        // Leaving the room (command 41) is not a drop; neither is a viewer's disconnect.
        hub.leave(back, RoomId(1));
        hub.disconnect(back);
        let viewer = hub.connect(UserId(2), queue, Arc::new(Notify::new()));
        hub.enter(viewer, RoomId(1), false);
        hub.disconnect(viewer);
        assert!(!hub.dropped_within(UserId(1), RoomId(1), Instant::now(), grace));
        assert!(!hub.dropped_within(UserId(2), RoomId(1), Instant::now(), grace));
    }

    #[test]
    fn a_pk_state_behind_one_shown_is_not_sent() {
        let stamp = |pk: u64, course: u8, source_beans: i64, target_beans: i64| StateStamp {
            pk,
            course,
            source_beans,
            target_beans,
        };
        let frame = |stamp: StateStamp| Frame::state("state", stamp);
        let mut shown = StatesShown::default();
        assert!(shown.admits(&Frame::text("other pushes always go")));
        // A reply showed 34:27; a push rendered before it (34:22) is held back, a later one
        // goes, and so does another PK's.
        shown.shown(stamp(7, 1, 34, 27));
        assert!(!shown.admits(&frame(stamp(7, 1, 34, 22))));
        assert!(!shown.admits(&frame(stamp(7, 0, 34, 27))), "the opening again");
        assert!(shown.admits(&frame(stamp(7, 1, 34, 27))), "the same state again");
        assert!(shown.admits(&frame(stamp(7, 1, 40, 27))));
        assert!(!shown.admits(&frame(stamp(7, 1, 35, 27))), "behind the push just sent");
        assert!(shown.admits(&frame(stamp(8, 0, 0, 0))));
        // Over: nothing of its battle goes out after it.
        assert!(shown.admits(&frame(stamp(7, 2, 40, 30))));
        assert!(!shown.admits(&frame(stamp(7, 1, 40, 30))));
        // A reply showing an older state than a push already sent changes nothing.
        shown.shown(stamp(7, 1, 1, 1));
        assert!(!shown.admits(&frame(stamp(7, 1, 40, 29))));
    }
}
