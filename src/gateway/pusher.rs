//! Pushes for this node's own clients, rendered from this node's own replicas.
//!
//! - Transition pushes (PK start and end, invitations, matching started, match
//!   failed) are effects of committed commands: rendered once and sent as they come.
//! - Push 10 of a running PK follows that PK's own deadline ([`Schedule`]). After a
//!   change (`PkChanged`: a gift, a presence change) the state goes out at
//!   `last push + push_cooldown`, or at once if the PK has been quiet that long;
//!   without a change, at `last push + push_period`. Every push 10 counts for both
//!   rules, transition pushes included: a change never waits longer than the rest of
//!   the cool-down, no PK gets more than one push per cool-down after changes, and a
//!   quiet PK still gets one every period. The deadlines are exact and per PK, so the
//!   pushes of many PKs spread over time instead of leaving in one burst.
//! - A push renders the PK's state once per room; the frame is shared by every
//!   session in the room. A PK with no client in its rooms on this node is not
//!   rendered at all.
//! - Presence, in a task of its own so that a slow proposal never holds a push back:
//!   this node's share (its clients: anchors online, viewers) is compared with the
//!   share the engine holds for it every `presence_interval`, and differences proposed
//!   in one batch per arena (a bounded rate, not one entry per connection event). The
//!   arena combines every node's fresh share.

use super::Gateway;
use super::hub::{Frame, StateStamp};
use super::protocol;
use crate::clock::now_ms;
use crate::replication::consensus::GroupId;
use pkd_raft::effect::{Audience, Effect, PushMessage};
use pkd_raft::{ArenaAction, PkId, PkStatus, PkView, Presence, RoomId, UserId};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;

/// Effects taken in one pass before due pushes are sent: a burst of changes (one
/// batch of gifts) becomes one push per PK, and a flood cannot hold pushes back.
const EFFECTS_PER_PASS: usize = 4096;

pub(super) async fn run(gateway: Weak<Gateway>) {
    let Some(strong) = gateway.upgrade() else { return };
    let mut effects = strong.node.subscribe_effects();
    let config = strong.config.clone();
    let stopping = strong.stopping.clone();
    let reporting = report_presence_every(gateway.clone(), config.presence_interval);
    strong.tasks.spawn(async move {
        tokio::select! {
            () = reporting => {}
            () = stopping.cancelled() => {}
        }
    });
    drop(strong);
    let mut schedule = Schedule::new(config.push_cooldown, config.push_period);
    // Finds running PKs this node has not seen start (a restart, a snapshot installed)
    // and forgets ended ones whose settlement was missed.
    let mut discover = tokio::time::interval(config.push_period);
    discover.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let wake = tokio::time::sleep_until(Instant::now());
    tokio::pin!(wake);
    loop {
        let next = schedule.next_due();
        if let Some(next) = next
            && wake.deadline() != next
        {
            wake.as_mut().reset(next);
        }
        tokio::select! {
            first = effects.recv() => {
                let Some(gateway) = gateway.upgrade() else { return };
                let mut received = first;
                for _ in 0..EFFECTS_PER_PASS {
                    match received {
                        Ok(tagged) => on_effect(&gateway, &mut schedule, &tagged.effect),
                        // Pushes are states: pushing every PK again heals what was missed.
                        Err(RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "pusher fell behind the effects");
                            schedule.all_changed(Instant::now());
                        }
                        Err(RecvError::Closed) => return,
                    }
                    received = match effects.try_recv() {
                        Ok(tagged) => Ok(tagged),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                        Err(TryRecvError::Closed) => Err(RecvError::Closed),
                    };
                }
            }
            _ = &mut wake, if next.is_some() => {}
            _ = discover.tick() => {
                let Some(gateway) = gateway.upgrade() else { return };
                discover_running(&gateway, &mut schedule);
            }
        }
        let Some(gateway) = gateway.upgrade() else { return };
        push_due(&gateway, &mut schedule);
    }
}

fn on_effect(gateway: &Gateway, schedule: &mut Schedule, effect: &Effect) {
    match effect {
        Effect::Pushed(push) => {
            let text = protocol::render_push(push, now_ms());
            let frame = match &push.message {
                PushMessage::PkState(view) => Frame::state(text, StateStamp::of(view)),
                _ => Frame::text(text),
            };
            metrics::counter!(crate::telemetry::PUSHES, "type" => push_type_label(&push.message)).increment(1);
            match push.to {
                Audience::Room(room) => gateway.hub.send_to_room(room, &frame),
                Audience::User { user, .. } => gateway.hub.send_to_user(user, &frame),
            };
            match &push.message {
                // Once its result is out (status 2 or 3), a PK's state is pushed no more.
                PushMessage::PkState(view) if !is_live(view) => schedule.forget(view.pk),
                PushMessage::PkState(view) => {
                    schedule.pushed(view.pk, rooms_of(view), Instant::now());
                }
                PushMessage::PkClosed { pk, .. } => schedule.forget(*pk),
                _ => {}
            }
        }
        Effect::PkChanged { pk } => {
            let now = Instant::now();
            if !schedule.changed(*pk, now)
                && let Some(view) = gateway.pk_view(*pk).filter(is_live)
            {
                schedule.track(*pk, rooms_of(&view), now);
                schedule.changed(*pk, now);
            }
        }
        Effect::PkSettled(result) => schedule.forget(result.pk),
        _ => {}
    }
}

/// Sends every push 10 that is due.
fn push_due(gateway: &Gateway, schedule: &mut Schedule) {
    let now = Instant::now();
    while let Some((pk, rooms)) = schedule.pop_due(now) {
        if !rooms.iter().any(|room| gateway.hub.has_room(*room)) {
            // Nobody to tell on this node; a client entering gets the state in its reply.
            schedule.skipped(pk, now);
            continue;
        }
        match gateway.pk_view(pk).filter(is_live) {
            Some(view) => {
                push_state(gateway, &view);
                if let Some(waited) = schedule.pushed(pk, rooms, Instant::now()) {
                    metrics::histogram!(crate::telemetry::CHANGE_TO_PUSH_SECONDS).record(waited.as_secs_f64());
                }
            }
            None => schedule.forget(pk),
        }
    }
}

/// Pushes a PK's state to both its rooms on this node; returns the sessions reached.
fn push_state(gateway: &Gateway, view: &PkView) -> usize {
    let now = now_ms();
    metrics::counter!(crate::telemetry::PUSHES, "type" => "10").increment(2);
    rooms_of(view)
        .into_iter()
        .filter(|room| gateway.hub.has_room(*room))
        .map(|room| {
            gateway
                .hub
                .send_to_room(room, &Frame::state(protocol::render_pk_state(room, view, now), StateStamp::of(view)))
        })
        .sum()
}

/// The `type` label of a push's metric.
fn push_type_label(message: &PushMessage) -> &'static str {
    match message {
        PushMessage::PkState(_) => "10",
        PushMessage::Invitation { .. } => "12",
        PushMessage::MatchingStarted { .. } => "13",
        PushMessage::MatchFailed { .. } => "14",
        PushMessage::PkClosed { .. } => "15",
    }
}

fn rooms_of(view: &PkView) -> [RoomId; 2] {
    [view.source.room, view.target.room]
}

/// Whether a PK's state is still pushed: in its opening or its battle. Its result (status
/// 2 or 3) is pushed once, when it is decided, and the after-battle stage then waits in
/// silence for the close (push 15).
fn is_live(view: &PkView) -> bool {
    matches!(view.status, PkStatus::Opening | PkStatus::Battle)
}

/// Puts running PKs the schedule does not know on it, spread over one period, and
/// takes off the ones that are no longer running.
fn discover_running(gateway: &Gateway, schedule: &mut Schedule) {
    let mut running = HashSet::new();
    let mut found = Vec::new();
    for replica in gateway.node.arenas() {
        replica.read(|arena| {
            for pk in arena.running() {
                running.insert(pk);
                if !schedule.knows(pk)
                    && let Some(view) = arena.view(pk).filter(is_live)
                {
                    found.push((pk, rooms_of(&view)));
                }
            }
        });
    }
    schedule.retain(|pk| running.contains(&pk));
    schedule.discovered(found, Instant::now());
}

/// When each running PK's state is pushed next (see the module's documentation).
///
/// Pure bookkeeping: time is an argument, nothing here sleeps or reads a clock.
#[derive(Debug)]
struct Schedule {
    cooldown: Duration,
    period: Duration,
    pks: HashMap<PkId, Planned>,
    /// Every PK's next push, earliest first.
    queue: BTreeSet<(Instant, PkId)>,
}

#[derive(Clone, Copy, Debug)]
struct Planned {
    rooms: [RoomId; 2],
    /// The last push 10 of this PK from this node, of any kind.
    last_push: Option<Instant>,
    /// Changed since the last push, and when it first did.
    changed: Option<Instant>,
    due: Instant,
}

impl Schedule {
    fn new(cooldown: Duration, period: Duration) -> Schedule {
        Schedule { cooldown, period, pks: HashMap::new(), queue: BTreeSet::new() }
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }

    fn knows(&self, pk: PkId) -> bool {
        self.pks.contains_key(&pk)
    }

    fn set_due(&mut self, pk: PkId, due: Instant) {
        let Some(planned) = self.pks.get_mut(&pk) else { return };
        self.queue.remove(&(planned.due, pk));
        planned.due = due;
        self.queue.insert((due, pk));
    }

    /// Starts following a running PK that has not been pushed from here yet.
    fn track(&mut self, pk: PkId, rooms: [RoomId; 2], now: Instant) {
        if self.knows(pk) {
            return;
        }
        let due = now + self.period;
        self.pks.insert(pk, Planned { rooms, last_push: None, changed: None, due });
        self.queue.insert((due, pk));
    }

    /// Running PKs found in the replicas: their first pushes are spread over one period
    /// rather than sent together.
    fn discovered(&mut self, mut found: Vec<(PkId, [RoomId; 2])>, now: Instant) {
        found.retain(|(pk, _)| !self.knows(*pk));
        let count = found.len() as u32;
        for (i, (pk, rooms)) in found.into_iter().enumerate() {
            self.track(pk, rooms, now);
            self.set_due(pk, now + self.period * i as u32 / count);
        }
    }

    /// A push 10 of `pk` went out at `now`: the next one is a period away, unless it
    /// changes. Returns how long the change it shows waited, if it showed one.
    fn pushed(&mut self, pk: PkId, rooms: [RoomId; 2], now: Instant) -> Option<Duration> {
        self.track(pk, rooms, now);
        let waited = self.pks.get_mut(&pk).and_then(|planned| {
            planned.last_push = Some(now);
            planned.changed.take().map(|at| now.saturating_duration_since(at))
        });
        self.set_due(pk, now + self.period);
        waited
    }

    /// A push came due with nobody to send it to: nothing was sent, so the cool-down
    /// does not start.
    fn skipped(&mut self, pk: PkId, now: Instant) {
        if let Some(planned) = self.pks.get_mut(&pk) {
            planned.changed = None;
        }
        self.set_due(pk, now + self.period);
    }

    /// `pk` changed at `now`: it is pushed when its cool-down ends, at once if it has
    /// ended. Returns false if the PK is not followed.
    fn changed(&mut self, pk: PkId, now: Instant) -> bool {
        let Some(planned) = self.pks.get_mut(&pk) else { return false };
        if planned.changed.is_none() {
            planned.changed = Some(now);
            let earliest = planned.last_push.map_or(now, |at| (at + self.cooldown).max(now));
            let due = planned.due.min(earliest);
            self.set_due(pk, due);
        }
        true
    }

    /// Every followed PK may have changed (effects were missed).
    fn all_changed(&mut self, now: Instant) {
        let pks: Vec<PkId> = self.pks.keys().copied().collect();
        for pk in pks {
            self.changed(pk, now);
        }
    }

    /// Takes the earliest PK due at `now` off the queue, with its rooms. The caller
    /// reports what it did with [`Schedule::pushed`], [`Schedule::skipped`] or
    /// [`Schedule::forget`].
    fn pop_due(&mut self, now: Instant) -> Option<(PkId, [RoomId; 2])> {
        let (due, pk) = *self.queue.first()?;
        if due > now {
            return None;
        }
        self.queue.pop_first();
        // Not due again until the caller says what happened.
        let planned = self.pks.get_mut(&pk)?;
        planned.due = now + self.period;
        self.queue.insert((planned.due, pk));
        Some((pk, planned.rooms))
    }

    fn forget(&mut self, pk: PkId) {
        if let Some(planned) = self.pks.remove(&pk) {
            self.queue.remove(&(planned.due, pk));
        }
    }

    fn retain(&mut self, keep: impl Fn(PkId) -> bool) {
        let gone: Vec<PkId> = self.pks.keys().copied().filter(|pk| !keep(*pk)).collect();
        for pk in gone {
            self.forget(pk);
        }
    }
}

/// A node repeats an unchanged presence report this often, well within
/// `pkd_raft::arena::PRESENCE_FRESH_MS`, so its share keeps counting.
const PRESENCE_HEARTBEAT_MS: i64 = 10_000;

async fn report_presence_every(gateway: Weak<Gateway>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seats = HashMap::new();
    loop {
        tick.tick().await;
        let Some(gateway) = gateway.upgrade() else { return };
        report_presence(&gateway, &mut seats).await;
    }
}

/// Proposes this node's share of each running PK's presence where it differs from what
/// the engine holds for this node (or is due for its heartbeat). Every node reports its
/// own clients; the arena combines the shares, so an anchor connected to any node is
/// online and audiences are summed over the cluster. `seats` remembers each running
/// PK's anchors and rooms, so no PK's full state is built for this.
async fn report_presence(gateway: &Gateway, seats: &mut HashMap<PkId, [(UserId, RoomId); 2]>) {
    let me = gateway.node.id();
    let now = now_ms();
    let mut running = HashSet::new();
    let mut reports: HashMap<GroupId, Vec<Presence>> = HashMap::new();
    for replica in gateway.node.arenas() {
        let group = replica.group();
        // What the engine holds for this node, for every side of every running PK.
        let held = replica.read(|arena| {
            let mut held = Vec::new();
            for pk in arena.running() {
                let Some(sides) = seats.get(&pk).copied().or_else(|| {
                    let view = arena.view(pk)?;
                    let sides = [(view.source.anchor, view.source.room), (view.target.anchor, view.target.room)];
                    seats.insert(pk, sides);
                    Some(sides)
                }) else {
                    continue;
                };
                running.insert(pk);
                for (anchor, room) in sides {
                    held.push((pk, anchor, room, arena.report_of(pk, anchor, me)));
                }
            }
            held
        });
        let instant = std::time::Instant::now();
        let grace = gateway.config.presence_grace;
        for (pk, anchor, room, held) in held {
            let mut seen = gateway.hub.presence(room, anchor);
            // An anchor whose connection just dropped may be reconnecting, maybe to another
            // node: it stays online for the grace, so that viewers see no flicker.
            seen.anchor_online |= gateway.hub.dropped_within(anchor, room, instant, grace);
            // Every node reports every side, zeros included: "away" is only known when
            // every node with a fresh share says so.
            let due = match held {
                None => true,
                Some(held) => {
                    held.online != seen.anchor_online
                        || held.audience != seen.viewers
                        || now - held.at.0 >= PRESENCE_HEARTBEAT_MS
                }
            };
            if due {
                reports.entry(group).or_default().push(Presence {
                    pk,
                    anchor,
                    node: me,
                    online: seen.anchor_online,
                    audience: seen.viewers,
                });
            }
        }
    }
    seats.retain(|pk, _| running.contains(pk));
    for (group, batch) in reports {
        if let Err(error) = gateway.node.propose_arena(group, ArenaAction::ReportPresence(batch)).await {
            tracing::warn!(%error, %group, "presence report not applied");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(1);
    const PERIOD: Duration = Duration::from_secs(5);
    const ROOMS: [RoomId; 2] = [RoomId(1), RoomId(2)];

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Every PK popped at `now`, as the pusher would push them.
    fn push_due(schedule: &mut Schedule, now: Instant) -> Vec<PkId> {
        let mut pushed = Vec::new();
        while let Some((pk, rooms)) = schedule.pop_due(now) {
            schedule.pushed(pk, rooms, now);
            pushed.push(pk);
        }
        pushed
    }

    #[test]
    fn a_change_to_a_quiet_pk_is_pushed_at_once_then_once_per_cooldown() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(COOLDOWN, PERIOD);
        let pk = PkId(7);
        // The start (a transition push), then quiet for longer than the cool-down.
        schedule.pushed(pk, ROOMS, t0);
        assert!(schedule.changed(pk, t0 + ms(1500)));
        assert_eq!(schedule.next_due(), Some(t0 + ms(1500)), "quiet long enough: at once");
        assert_eq!(push_due(&mut schedule, t0 + ms(1500)), [pk]);
        // A change right after a push waits exactly the rest of the cool-down ...
        schedule.changed(pk, t0 + ms(1510));
        schedule.changed(pk, t0 + ms(1900));
        assert_eq!(schedule.next_due(), Some(t0 + ms(2500)));
        assert!(push_due(&mut schedule, t0 + ms(2499)).is_empty());
        assert_eq!(push_due(&mut schedule, t0 + ms(2500)), [pk]);
        // ... and without a change the next push is a period later.
        assert_eq!(schedule.next_due(), Some(t0 + ms(7500)));
    }

    #[test]
    fn every_push_counts_for_both_the_cooldown_and_the_period() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(COOLDOWN, PERIOD);
        let pk = PkId(7);
        schedule.pushed(pk, ROOMS, t0);
        // The periodic push at 5 s starts a cool-down: a change just after it waits 1 s.
        assert_eq!(push_due(&mut schedule, t0 + PERIOD), [pk]);
        schedule.changed(pk, t0 + ms(5001));
        assert_eq!(schedule.next_due(), Some(t0 + ms(6000)));
        // A PK that changes all the time is pushed once per cool-down, and never by the
        // period on top of that.
        let mut pushes = Vec::new();
        let mut now = t0 + ms(5001);
        while now < t0 + ms(20_000) {
            schedule.changed(pk, now);
            if !push_due(&mut schedule, now).is_empty() {
                pushes.push(now);
            }
            now += ms(50);
        }
        assert_eq!(pushes.len(), 14, "{pushes:?}");
        assert!(pushes.windows(2).all(|w| w[1] - w[0] == COOLDOWN), "{pushes:?}");
        // A transition push also counts: a change right after it waits the cool-down.
        schedule.pushed(pk, ROOMS, t0 + ms(20_100));
        schedule.changed(pk, t0 + ms(20_200));
        assert_eq!(schedule.next_due(), Some(t0 + ms(21_100)));
    }

    #[test]
    fn quiet_pks_are_pushed_every_period_each_on_its_own_deadline() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(COOLDOWN, PERIOD);
        schedule.pushed(PkId(1), ROOMS, t0);
        schedule.pushed(PkId(2), ROOMS, t0 + ms(2000));
        assert_eq!(push_due(&mut schedule, t0 + ms(5000)), [PkId(1)]);
        assert_eq!(push_due(&mut schedule, t0 + ms(7000)), [PkId(2)]);
        assert_eq!(push_due(&mut schedule, t0 + ms(10_000)), [PkId(1)]);
        // Nobody in the rooms: skipped, and a change after it is not held back.
        let (pk, _) = schedule.pop_due(t0 + ms(12_000)).unwrap();
        schedule.skipped(pk, t0 + ms(12_000));
        assert_eq!(schedule.next_due(), Some(t0 + ms(15_000)));
        schedule.changed(PkId(2), t0 + ms(12_001));
        assert_eq!(schedule.next_due(), Some(t0 + ms(12_001)));
    }

    #[test]
    fn discovered_pks_are_spread_over_a_period_and_ended_ones_forgotten() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(COOLDOWN, PERIOD);
        schedule.discovered((1..=5).map(|pk| (PkId(pk), ROOMS)).collect(), t0);
        let firsts: Vec<Instant> = schedule.queue.iter().map(|(at, _)| *at).collect();
        assert_eq!(firsts, (0..5).map(|i| t0 + ms(1000 * i)).collect::<Vec<_>>());
        schedule.retain(|pk| pk != PkId(1));
        schedule.forget(PkId(2));
        assert!(!schedule.knows(PkId(1)) && !schedule.knows(PkId(2)));
        assert_eq!(schedule.queue.len(), 3);
        assert!(!schedule.changed(PkId(1), t0), "a forgotten PK is not followed");
        schedule.all_changed(t0 + ms(10));
        assert_eq!(push_due(&mut schedule, t0 + ms(10)), [PkId(3), PkId(4), PkId(5)]);
    }
}
