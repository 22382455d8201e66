//! The lobby: matchmaking, invitations, cool-downs and the room directory.
//!
//! It is the single authority on which anchor is matching and which is in a PK, so the
//! global rule "an anchor is in at most one match" holds however many arena groups run
//! the PKs themselves. A match allocates a PK id and puts a [`PkOrder`] in the outbox;
//! the arena's `ReleaseRooms` frees the rooms when the PK is over.
//!
//! It takes [`LobbyAction`]s and fires [`LobbyTimer`]s; an arena's action or timer is
//! refused (see [`StateMachine::apply`]).

use crate::audit::AuditLog;
use crate::command::{Action, AnchorProfile, Command, LobbyAction, LobbyTimer, PkOrder, Seat, Timer};
use crate::config::Config;
use crate::deadlines::Deadlines;
use crate::effect::{Audience, CacheChange, Effect, MatchFailure, Push, PushMessage};
use crate::ids::{PkId, RoomId, TimestampMs, UserId};
use crate::machine::{
    LeaderPlacement, Machine, MachineKind, MachineRef, SingleKind, SnapshotError, StateMachine, decode_snapshot,
    encode_snapshot,
};
use crate::response::{Reason, Response};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How long an invitation's record outlives its batch, so that a late answer gets a
/// precise code ("taken", "expired") instead of "no such invitation".
pub const INVITATION_RECORD_MS: i64 = 60_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lobby {
    now: TimestampMs,
    config: Config,
    /// The last PK id handed out.
    last_pk: u64,
    /// Anchors streaming now: the pool for invitations.
    live: BTreeMap<UserId, Live>,
    /// `live` by (since, anchor): longest live first.
    live_order: BTreeSet<(TimestampMs, UserId)>,
    /// Anchors matching now.
    waiting: BTreeMap<UserId, Waiting>,
    /// The waiting anchors by country, oldest first: a newcomer looks at the head of
    /// each compatible country's queue only.
    queues: BTreeMap<String, BTreeMap<(TimestampMs, u64), UserId>>,
    last_ticket: u64,
    /// Invitation records by (invitee, inviter).
    invitations: BTreeMap<(UserId, UserId), Invitation>,
    /// `room_pk_invited`: when each anchor was last invited, while its cool-down lasts.
    invited_at: BTreeMap<UserId, TimestampMs>,
    /// The room directory: anchors in a PK ...
    in_pk: BTreeMap<UserId, PkId>,
    /// ... and their rooms.
    rooms_in_pk: BTreeMap<RoomId, PkId>,
    /// PKs whose rooms are held, with their order while the arena has not confirmed it.
    pks: BTreeMap<PkId, HeldPk>,
    deadlines: Deadlines<LobbyTimer>,
    /// Where the operator wants this group's leadership.
    placement: LeaderPlacement,
    /// The last keyed start of each anchor that is still waiting or in the PK it led to,
    /// so that a retried start gets its first answer again.
    starts: BTreeMap<UserId, StartRecord>,
    /// The operators' audit log. It is not part of the machine's own encoding: a
    /// snapshot carries it in a section of its own, after the machine (format 3), so
    /// that a format-2 snapshot, which has none, still reads.
    /// Boxed: most commands never touch it, and the machine stays small to move.
    #[serde(skip)]
    audit: Box<AuditLog>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Live {
    profile: AnchorProfile,
    since: TimestampMs,
    /// The node the anchor last went live on (its connection moves with it).
    node: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Waiting {
    profile: AnchorProfile,
    since: TimestampMs,
    ticket: u64,
    /// The number of the current (latest) invitation batch; 0 before the first.
    batch: u32,
    /// The current batch's invitees and whether each refused.
    invitees: BTreeMap<UserId, bool>,
}

/// A keyed start and what it led to so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StartRecord {
    request: u64,
    /// The PK the start led to (at once, or later while waiting); `None` while waiting.
    pk: Option<PkId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Invitation {
    batch: u32,
    state: InvitationState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum InvitationState {
    Open,
    Refused,
    Accepted,
    /// The inviter met someone else.
    Taken,
    /// The inviter stopped, gave up or left.
    Withdrawn,
    /// The batch lapsed, or the invitee went off air.
    Lapsed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct HeldPk {
    seats: [Seat; 2],
    /// Present until the arena confirms it created the PK.
    order: Option<PkOrder>,
}

/// An anchor matching, for the admin console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchingAnchor {
    pub anchor: UserId,
    pub room: RoomId,
    pub country: String,
    /// When it started matching.
    pub since: TimestampMs,
    /// Its current invitation batch (0: none sent yet).
    pub batch: u32,
    /// The current batch's invitees, each with whether it refused.
    pub invitees: Vec<(UserId, bool)>,
}

/// A summary of the lobby for tests, the admin console and invariant checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LobbySummary {
    pub waiting: Vec<UserId>,
    pub in_pk: Vec<(UserId, PkId)>,
    pub live: usize,
    pub open_invitations: Vec<(UserId, UserId)>,
    pub cooldowns: usize,
    pub outbox: Vec<PkId>,
}

impl StateMachine for Lobby {
    fn kind(&self) -> MachineKind {
        Self::KIND
    }

    fn apply(&mut self, command: &Command, effects: &mut Vec<Effect>) -> Response {
        self.now = self.now.max(command.at);
        match &command.action {
            Action::Lobby(action) => self.apply_action(action, effects),
            Action::Fire(Timer::Lobby(timer)) => self.fire(*timer, effects),
            Action::PlaceLeader { node } => {
                self.placement.placed = *node;
                Response::Done
            }
            Action::Drain { node, draining } => {
                if *draining {
                    self.placement.draining.insert(*node);
                } else {
                    self.placement.draining.remove(node);
                }
                Response::Done
            }
            Action::SetConfig { key, value } => match self.config.with(key, value) {
                Ok(next) => {
                    let old = std::mem::replace(&mut self.config, next);
                    self.config_changed(&old, effects);
                    Response::Done
                }
                Err(e) => Response::Rejected(Reason::InvalidConfig(e.to_string())),
            },
            Action::Arena(_) | Action::Fire(Timer::Arena(_)) => Response::Rejected(Reason::WrongGroup),
        }
    }

    fn now(&self) -> TimestampMs {
        self.now
    }

    fn config(&self) -> &Config {
        &self.config
    }

    fn placement(&self) -> &LeaderPlacement {
        &self.placement
    }

    fn next_deadline(&self) -> Option<TimestampMs> {
        self.deadlines.next()
    }

    fn due_timers(&self, now: TimestampMs) -> Vec<Timer> {
        self.deadlines.due(now).map(Timer::Lobby).collect()
    }

    fn snapshot(&self) -> Vec<u8> {
        encode_snapshot(&MachineRef::Lobby(self), &self.audit)
    }

    fn restore(bytes: &[u8]) -> Result<Lobby, SnapshotError> {
        match decode_snapshot(bytes)? {
            Machine::Lobby(lobby) => Ok(lobby),
            Machine::Arena(_) => {
                Err(SnapshotError::WrongKind { expected: MachineKind::Lobby, found: MachineKind::Arena })
            }
        }
    }

    fn check_invariants(&self) -> Result<(), String> {
        self.audit.check()?;
        for (anchor, record) in &self.starts {
            let stands = match record.pk {
                None => self.waiting.contains_key(anchor),
                Some(pk) => self.in_pk.get(anchor) == Some(&pk),
            };
            if !stands {
                return Err(format!("{anchor}'s start record {record:?} no longer stands"));
            }
        }
        for anchor in self.waiting.keys() {
            if self.in_pk.contains_key(anchor) {
                return Err(format!("{anchor} is both waiting and in a PK"));
            }
        }
        let queued: usize = self.queues.values().map(BTreeMap::len).sum();
        if queued != self.waiting.len() {
            return Err(format!("{queued} queued but {} waiting", self.waiting.len()));
        }
        for (pk, held) in &self.pks {
            for seat in held.seats {
                if self.in_pk.get(&seat.anchor) != Some(pk) {
                    return Err(format!("{pk} holds {} which the directory does not", seat.anchor));
                }
            }
        }
        for ((invitee, inviter), invitation) in &self.invitations {
            if invitation.state != InvitationState::Open {
                continue;
            }
            let current = self
                .waiting
                .get(inviter)
                .is_some_and(|w| w.batch == invitation.batch && w.invitees.contains_key(invitee));
            if !current {
                return Err(format!("open invitation {inviter}->{invitee} outside its inviter's current batch"));
            }
        }
        if self.rooms_in_pk.len() != self.pks.len() * 2 {
            return Err(format!("{} rooms in PKs for {} PKs", self.rooms_in_pk.len(), self.pks.len()));
        }
        if self.in_pk.len() != self.pks.len() * 2 {
            return Err(format!("{} anchors in PKs for {} PKs", self.in_pk.len(), self.pks.len()));
        }
        Ok(())
    }
}

impl SingleKind for Lobby {
    const KIND: MachineKind = MachineKind::Lobby;

    fn fresh(config: Config) -> Lobby {
        Lobby { config, ..Lobby::default() }
    }
}

impl Lobby {
    fn apply_action(&mut self, action: &LobbyAction, effects: &mut Vec<Effect>) -> Response {
        match action {
            LobbyAction::StartMatch { anchor, profile, request } => self.start(*anchor, profile, *request, effects),
            LobbyAction::StopMatch { anchor } => self.stop(*anchor, effects),
            LobbyAction::Accept { inviter, invitee } => self.accept(*inviter, *invitee, effects),
            LobbyAction::Refuse { inviter, invitee } => self.refuse(*inviter, *invitee, effects),
            LobbyAction::GoLive { anchor, profile, node } => self.go_live(*anchor, profile, *node),
            LobbyAction::GoOffAir { anchor, node } => self.go_off_air(*anchor, *node, effects),
            LobbyAction::ConfirmPkCreated { pk } => match self.pks.get_mut(pk) {
                Some(held) if held.order.is_some() => {
                    held.order = None;
                    Response::Done
                }
                _ => Response::Ignored,
            },
            LobbyAction::ReleaseRooms { pk } => self.release(*pk, effects),
            LobbyAction::RecordAudit(record) => match self.audit.record(self.now, record) {
                Some(_) => Response::Done,
                None => Response::Ignored,
            },
        }
    }

    /// Called after the config changed.
    fn config_changed(&mut self, old: &Config, effects: &mut Vec<Effect>) {
        if old.enabled && !self.config.enabled {
            for anchor in self.waiting.keys().copied().collect::<Vec<_>>() {
                self.fail(anchor, MatchFailure::Disabled, effects);
            }
        }
        if old.versions != self.config.versions {
            let too_old: Vec<UserId> = self
                .waiting
                .iter()
                .filter(|(_, w)| !self.config.versions.allows(&w.profile.platform, w.profile.version_code))
                .map(|(anchor, _)| *anchor)
                .collect();
            for anchor in too_old {
                self.fail(anchor, MatchFailure::VersionTooOld, effects);
            }
        }
    }

    // ---- queries -------------------------------------------------------------------

    pub fn is_waiting(&self, anchor: UserId) -> bool {
        self.waiting.contains_key(&anchor)
    }

    pub fn pk_of(&self, anchor: UserId) -> Option<PkId> {
        self.in_pk.get(&anchor).copied()
    }

    /// The PK a room is in (the `pkr` cache), for room entry and pushes.
    pub fn pk_of_room(&self, room: RoomId) -> Option<PkId> {
        self.rooms_in_pk.get(&room).copied()
    }

    /// PK orders the arenas have not confirmed yet: the leader delivers these.
    pub fn pending_orders(&self) -> impl Iterator<Item = &PkOrder> {
        self.pks.values().filter_map(|held| held.order.as_ref())
    }

    /// Every PK whose rooms are held, with its seats.
    pub fn held_pks(&self) -> impl Iterator<Item = (PkId, [Seat; 2])> + '_ {
        self.pks.iter().map(|(pk, held)| (*pk, held.seats))
    }

    /// The anchors matching, with when they started (the `pkm` cache).
    pub fn waiting_anchors(&self) -> impl Iterator<Item = (UserId, TimestampMs)> + '_ {
        self.waiting.iter().map(|(anchor, w)| (*anchor, w.since))
    }

    /// Anchors in their invitation cool-down, with when they were invited
    /// (`room_pk_invited`).
    pub fn cooldowns(&self) -> impl Iterator<Item = (UserId, TimestampMs)> + '_ {
        self.invited_at.iter().map(|(anchor, at)| (*anchor, *at))
    }

    /// The anchors matching, oldest first by when they started, with their current
    /// invitation batch.
    pub fn matching(&self) -> Vec<MatchingAnchor> {
        let mut matching: Vec<MatchingAnchor> = self
            .waiting
            .iter()
            .map(|(anchor, w)| MatchingAnchor {
                anchor: *anchor,
                room: w.profile.room,
                country: w.profile.country.clone(),
                since: w.since,
                batch: w.batch,
                invitees: w.invitees.iter().map(|(invitee, refused)| (*invitee, *refused)).collect(),
            })
            .collect();
        matching.sort_by_key(|m| (m.since, m.anchor));
        matching
    }

    /// The invitations still open: (inviter, invitee, the inviter's batch number).
    pub fn open_invitations(&self) -> impl Iterator<Item = (UserId, UserId, u32)> + '_ {
        self.invitations
            .iter()
            .filter(|(_, invitation)| invitation.state == InvitationState::Open)
            .map(|((invitee, inviter), invitation)| (*inviter, *invitee, invitation.batch))
    }

    /// The operators' audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Puts back the audit log a snapshot carried beside the machine.
    pub(crate) fn set_audit(&mut self, audit: AuditLog) {
        *self.audit = audit;
    }

    pub fn summary(&self) -> LobbySummary {
        LobbySummary {
            waiting: self.waiting.keys().copied().collect(),
            in_pk: self.in_pk.iter().map(|(a, p)| (*a, *p)).collect(),
            live: self.live.len(),
            open_invitations: self
                .invitations
                .iter()
                .filter(|(_, inv)| inv.state == InvitationState::Open)
                .map(|((invitee, inviter), _)| (*inviter, *invitee))
                .collect(),
            cooldowns: self.invited_at.len(),
            outbox: self.pending_orders().map(|order| order.pk).collect(),
        }
    }

    // ---- matching ------------------------------------------------------------------

    fn start(&mut self, anchor: UserId, profile: &AnchorProfile, request: u64, effects: &mut Vec<Effect>) -> Response {
        if let Some(first) = self.replayed_start(anchor, request) {
            return first;
        }
        let response = self.first_start(anchor, profile, effects);
        if request != 0 {
            let pk = match &response {
                Response::Waiting => Some(None),
                Response::Matched { pk, .. } => Some(Some(*pk)),
                _ => None,
            };
            if let Some(pk) = pk {
                self.starts.insert(anchor, StartRecord { request, pk });
            }
        }
        response
    }

    /// The first answer to a start sent again with the same request, if its outcome
    /// stands: the anchor still waits, or is in the PK the start led to.
    fn replayed_start(&self, anchor: UserId, request: u64) -> Option<Response> {
        let record = self.starts.get(&anchor).filter(|record| request != 0 && record.request == request)?;
        match record.pk {
            None => self.waiting.contains_key(&anchor).then_some(Response::Waiting),
            Some(pk) if self.in_pk.get(&anchor) == Some(&pk) => {
                let [source, target] = self.pks.get(&pk)?.seats;
                Some(Response::Matched { pk, source: source.anchor, target: target.anchor })
            }
            Some(_) => None,
        }
    }

    fn first_start(&mut self, anchor: UserId, profile: &AnchorProfile, effects: &mut Vec<Effect>) -> Response {
        if !self.config.enabled {
            return Response::Rejected(Reason::PkDisabled);
        }
        if self.in_pk.contains_key(&anchor) {
            return Response::Rejected(Reason::AnchorBusy);
        }
        if self.waiting.contains_key(&anchor) {
            return Response::Rejected(Reason::AlreadyMatching);
        }
        if !self.config.versions.allows(&profile.platform, profile.version_code) {
            return Response::Rejected(Reason::VersionTooOld);
        }
        // The claim: the opponent leaves the queue in this same step, so no other start
        // can see it. Commands apply one at a time; this is the atomic part.
        if let Some(opponent) = self.oldest_compatible(&profile.country)
            && let Some(opponent_waited) = self.leave_queue(opponent, InvitationState::Taken, effects)
        {
            let source = Seat { anchor: opponent, room: opponent_waited.profile.room };
            let target = Seat { anchor, room: profile.room };
            return self.make_pk(source, target, false, effects);
        }
        self.last_ticket += 1;
        let now = self.now;
        self.queues.entry(profile.country.clone()).or_default().insert((now, self.last_ticket), anchor);
        self.waiting.insert(
            anchor,
            Waiting {
                profile: profile.clone(),
                since: now,
                ticket: self.last_ticket,
                batch: 0,
                invitees: BTreeMap::new(),
            },
        );
        let matching = &self.config.matching;
        self.deadlines.arm(now.plus(matching.give_up_ms), LobbyTimer::GiveUp { anchor });
        if matching.intervening_ms < matching.give_up_ms {
            self.deadlines.arm(now.plus(matching.intervening_ms), LobbyTimer::Intervene { anchor });
        }
        effects.push(Effect::CacheChanged(CacheChange::Matching { anchor, since: Some(now) }));
        effects.push(push_to(anchor, profile.room, PushMessage::MatchingStarted { anchor }));
        Response::Waiting
    }

    /// The anchor waiting longest among those the filters let meet `country`.
    fn oldest_compatible(&self, country: &str) -> Option<UserId> {
        let filter = &self.config.country_filter;
        self.queues
            .iter()
            .filter(|(other, _)| filter.allows(country, other))
            .filter_map(|(_, queue)| queue.first_key_value())
            .min_by_key(|(key, _)| **key)
            .map(|(_, anchor)| *anchor)
    }

    fn stop(&mut self, anchor: UserId, effects: &mut Vec<Effect>) -> Response {
        if !self.waiting.contains_key(&anchor) {
            return Response::Rejected(Reason::NotMatching);
        }
        self.leave_queue(anchor, InvitationState::Withdrawn, effects);
        Response::Done
    }

    /// Removes a waiting anchor from the queue and closes its open invitations; returns
    /// its entry, or `None` if it was not waiting.
    fn leave_queue(&mut self, anchor: UserId, close_as: InvitationState, effects: &mut Vec<Effect>) -> Option<Waiting> {
        let waiting = self.waiting.remove(&anchor)?;
        if let Some(queue) = self.queues.get_mut(&waiting.profile.country) {
            queue.remove(&(waiting.since, waiting.ticket));
            if queue.is_empty() {
                self.queues.remove(&waiting.profile.country);
            }
        }
        self.deadlines.disarm(LobbyTimer::GiveUp { anchor });
        self.deadlines.disarm(LobbyTimer::Intervene { anchor });
        for invitee in waiting.invitees.keys() {
            if let Some(invitation) = self.invitations.get_mut(&(*invitee, anchor))
                && invitation.state == InvitationState::Open
            {
                invitation.state = close_as;
            }
        }
        effects.push(Effect::CacheChanged(CacheChange::Matching { anchor, since: None }));
        if close_as != InvitationState::Taken {
            // Out of the queue without a match: a retried start is a new one.
            self.starts.remove(&anchor);
        }
        Some(waiting)
    }

    fn fail(&mut self, anchor: UserId, why: MatchFailure, effects: &mut Vec<Effect>) {
        let Some(room) = self.waiting.get(&anchor).map(|w| w.profile.room) else {
            return;
        };
        self.leave_queue(anchor, InvitationState::Withdrawn, effects);
        effects.push(push_to(anchor, room, PushMessage::MatchFailed { anchor, why }));
    }

    fn make_pk(&mut self, source: Seat, target: Seat, interfered: bool, effects: &mut Vec<Effect>) -> Response {
        self.last_pk += 1;
        let pk = PkId(self.last_pk);
        let order = PkOrder { pk, source, target, interfered, created_at: self.now, timing: self.config.timing };
        // A waiting anchor's keyed start led to this PK.
        for seat in [source, target] {
            if let Some(record) = self.starts.get_mut(&seat.anchor)
                && record.pk.is_none()
            {
                record.pk = Some(pk);
            }
        }
        for seat in [source, target] {
            self.in_pk.insert(seat.anchor, pk);
            self.rooms_in_pk.insert(seat.room, pk);
            effects.push(Effect::CacheChanged(CacheChange::RoomInPk { room: seat.room, pk: Some(pk) }));
        }
        let timing = &order.timing;
        let scheduled_end = self.now.plus(timing.opening_ms + timing.battle_ms + timing.ending_ms);
        self.deadlines.arm(scheduled_end.plus(crate::arena::ORDER_HORIZON_MS), LobbyTimer::AbandonPk { pk });
        self.pks.insert(pk, HeldPk { seats: [source, target], order: Some(order.clone()) });
        effects.push(Effect::PkOrdered(order));
        Response::Matched { pk, source: source.anchor, target: target.anchor }
    }

    fn release(&mut self, pk: PkId, effects: &mut Vec<Effect>) -> Response {
        let Some(held) = self.pks.remove(&pk) else {
            return Response::Ignored;
        };
        self.deadlines.disarm(LobbyTimer::AbandonPk { pk });
        for seat in held.seats {
            if self.starts.get(&seat.anchor).is_some_and(|record| record.pk == Some(pk)) {
                self.starts.remove(&seat.anchor);
            }
            if self.in_pk.get(&seat.anchor) == Some(&pk) {
                self.in_pk.remove(&seat.anchor);
            }
            if self.rooms_in_pk.get(&seat.room) == Some(&pk) {
                self.rooms_in_pk.remove(&seat.room);
            }
            effects.push(Effect::CacheChanged(CacheChange::RoomInPk { room: seat.room, pk: None }));
        }
        Response::Done
    }

    // ---- invitations ---------------------------------------------------------------

    /// Sends the waiting `inviter` a new batch of invitations; the previous batch lapses.
    fn intervene(&mut self, inviter: UserId, effects: &mut Vec<Effect>) {
        let now = self.now;
        let matching = self.config.matching.clone();
        // The inviter's entry leaves the map while its new batch is chosen among the other
        // anchors, and goes back with the batch.
        let Some(mut waiting) = self.waiting.remove(&inviter) else {
            return;
        };
        let give_up_at = waiting.since.plus(matching.give_up_ms);
        for invitee in waiting.invitees.keys() {
            if let Some(invitation) = self.invitations.get_mut(&(*invitee, inviter))
                && invitation.state == InvitationState::Open
            {
                invitation.state = InvitationState::Lapsed;
            }
        }
        // Longest live first; skip whoever cannot or may not be invited.
        let filter = &self.config.country_filter;
        let versions = &self.config.versions;
        let chosen: Vec<(UserId, RoomId)> = self
            .live_order
            .iter()
            .filter_map(|(_, candidate)| Some((*candidate, self.live.get(candidate)?)))
            .filter(|(candidate, live)| {
                *candidate != inviter
                    && !self.waiting.contains_key(candidate)
                    && !self.in_pk.contains_key(candidate)
                    && !self.invited_at.contains_key(candidate)
                    && filter.allows(&waiting.profile.country, &live.profile.country)
                    && versions.allows(&live.profile.platform, live.profile.version_code)
            })
            .take(matching.invite_count as usize)
            .map(|(candidate, live)| (candidate, live.profile.room))
            .collect();
        waiting.batch += 1;
        let batch = waiting.batch;
        waiting.invitees = chosen.iter().map(|(invitee, _)| (*invitee, false)).collect();
        self.waiting.insert(inviter, waiting);
        let forget_at = now.plus(matching.intervening_ms + INVITATION_RECORD_MS);
        for (invitee, invitee_room) in chosen {
            self.invitations.insert((invitee, inviter), Invitation { batch, state: InvitationState::Open });
            self.deadlines.arm(forget_at, LobbyTimer::ExpireInvitation { inviter, invitee });
            self.invited_at.insert(invitee, now);
            self.deadlines.arm(now.plus(matching.invite_cooldown_ms), LobbyTimer::EndCooldown { anchor: invitee });
            effects.push(Effect::CacheChanged(CacheChange::Invited { anchor: invitee, at: Some(now) }));
            effects.push(push_to(invitee, invitee_room, PushMessage::Invitation { inviter }));
        }
        let next = now.plus(matching.intervening_ms);
        if next < give_up_at {
            self.deadlines.arm(next, LobbyTimer::Intervene { anchor: inviter });
        } else {
            self.deadlines.disarm(LobbyTimer::Intervene { anchor: inviter });
        }
    }

    /// Checks an answer to an invitation; returns the inviter's waiting entry.
    fn open_invitation(&self, inviter: UserId, invitee: UserId) -> Result<&Waiting, Reason> {
        match self.invitations.get(&(invitee, inviter)).map(|inv| inv.state) {
            None => Err(Reason::NoSuchInvitation),
            // An open invitation belongs to its inviter's current batch: the inviter waits.
            Some(InvitationState::Open) => self.waiting.get(&inviter).ok_or(Reason::InvitationWithdrawn),
            Some(InvitationState::Taken) => Err(Reason::InvitationTaken),
            Some(InvitationState::Refused | InvitationState::Accepted) => Err(Reason::AlreadyAnswered),
            Some(InvitationState::Withdrawn) => Err(Reason::InvitationWithdrawn),
            Some(InvitationState::Lapsed) => Err(Reason::InvitationExpired),
        }
    }

    fn accept(&mut self, inviter: UserId, invitee: UserId, effects: &mut Vec<Effect>) -> Response {
        if !self.config.enabled {
            return Response::Rejected(Reason::PkDisabled);
        }
        if self.in_pk.contains_key(&invitee) {
            return Response::Rejected(Reason::AnchorBusy);
        }
        let inviter_profile = match self.open_invitation(inviter, invitee) {
            Ok(waiting) => &waiting.profile,
            Err(reason) => return Response::Rejected(reason),
        };
        let Some(live) = self.live.get(&invitee) else {
            return Response::Rejected(Reason::NotLive);
        };
        let invitee_profile = &live.profile;
        if !self.config.country_filter.allows(&inviter_profile.country, &invitee_profile.country) {
            return Response::Rejected(Reason::CountryFiltered);
        }
        if !self.config.versions.allows(&invitee_profile.platform, invitee_profile.version_code) {
            return Response::Rejected(Reason::VersionTooOld);
        }
        let source = Seat { anchor: inviter, room: inviter_profile.room };
        let target = Seat { anchor: invitee, room: invitee_profile.room };
        self.leave_queue(inviter, InvitationState::Taken, effects);
        if let Some(invitation) = self.invitations.get_mut(&(invitee, inviter)) {
            invitation.state = InvitationState::Accepted;
        }
        // An invitee who started matching meanwhile stops matching: it has its PK.
        self.leave_queue(invitee, InvitationState::Taken, effects);
        self.make_pk(source, target, true, effects)
    }

    fn refuse(&mut self, inviter: UserId, invitee: UserId, effects: &mut Vec<Effect>) -> Response {
        if let Err(reason) = self.open_invitation(inviter, invitee) {
            return Response::Rejected(reason);
        }
        self.mark_refused(inviter, invitee, InvitationState::Refused, effects);
        Response::Done
    }

    /// Closes one open invitation without a match; when the whole batch has refused,
    /// the inviter gets a new batch at once.
    fn mark_refused(&mut self, inviter: UserId, invitee: UserId, state: InvitationState, effects: &mut Vec<Effect>) {
        if let Some(invitation) = self.invitations.get_mut(&(invitee, inviter)) {
            invitation.state = state;
        }
        let Some(waiting) = self.waiting.get_mut(&inviter) else {
            return;
        };
        if let Some(refused) = waiting.invitees.get_mut(&invitee) {
            *refused = true;
        }
        if waiting.invitees.values().all(|refused| *refused) {
            self.intervene(inviter, effects);
        }
    }

    // ---- presence ------------------------------------------------------------------

    fn go_live(&mut self, anchor: UserId, profile: &AnchorProfile, node: u64) -> Response {
        let since = match self.live.get(&anchor) {
            Some(live) => live.since,
            None => self.now,
        };
        self.live.insert(anchor, Live { profile: profile.clone(), since, node });
        self.live_order.insert((since, anchor));
        Response::Done
    }

    fn go_off_air(&mut self, anchor: UserId, node: u64, effects: &mut Vec<Effect>) -> Response {
        if self.live.get(&anchor).is_some_and(|live| live.node != node) {
            // The anchor has gone live on another node since: the report of the node it
            // left comes too late to count.
            return Response::Ignored;
        }
        let was_live = match self.live.remove(&anchor) {
            Some(live) => self.live_order.remove(&(live.since, anchor)),
            None => false,
        };
        let was_waiting = self.waiting.contains_key(&anchor);
        if !was_live && !was_waiting {
            return Response::Ignored;
        }
        // It leaves the queue (no failure push: it is gone) ...
        self.leave_queue(anchor, InvitationState::Withdrawn, effects);
        // ... and the invitations it holds lapse, counting as refusals.
        let held: Vec<UserId> = self
            .invitations
            .range((anchor, UserId(0))..=(anchor, UserId(u64::MAX)))
            .filter(|(_, inv)| inv.state == InvitationState::Open)
            .map(|((_, inviter), _)| *inviter)
            .collect();
        for inviter in held {
            self.mark_refused(inviter, anchor, InvitationState::Lapsed, effects);
        }
        Response::Done
    }

    // ---- timers --------------------------------------------------------------------

    fn fire(&mut self, timer: LobbyTimer, effects: &mut Vec<Effect>) -> Response {
        if !self.deadlines.take_due(timer, self.now) {
            return Response::Ignored;
        }
        match timer {
            LobbyTimer::Intervene { anchor } => self.intervene(anchor, effects),
            LobbyTimer::GiveUp { anchor } => self.fail(anchor, MatchFailure::TimedOut, effects),
            LobbyTimer::ExpireInvitation { inviter, invitee } => {
                self.invitations.remove(&(invitee, inviter));
            }
            LobbyTimer::EndCooldown { anchor } => {
                self.invited_at.remove(&anchor);
                effects.push(Effect::CacheChanged(CacheChange::Invited { anchor, at: None }));
            }
            LobbyTimer::AbandonPk { pk } => {
                self.release(pk, effects);
            }
        }
        Response::Done
    }
}

fn push_to(user: UserId, room: RoomId, message: PushMessage) -> Effect {
    Effect::Pushed(Push { to: Audience::User { user, room }, message })
}

// ---- backups -------------------------------------------------------------------------

impl Lobby {
    /// The id of the last PK this lobby ordered.
    pub fn last_pk(&self) -> PkId {
        PkId(self.last_pk)
    }

    /// The held PKs, each with whether its arena confirmed creating it.
    pub(crate) fn held_orders(&self) -> Vec<(PkId, bool)> {
        self.pks.iter().map(|(pk, held)| (*pk, held.order.is_none())).collect()
    }

    /// Frees a held PK's rooms as the arena's release would, for [`crate::cut`].
    pub(crate) fn release_for_cut(&mut self, pk: PkId) {
        self.release(pk, &mut Vec::new());
    }

    /// Makes the next PK ids start `gap` above the last one given out.
    pub(crate) fn skip_pk_ids(&mut self, gap: u64) {
        self.last_pk = self.last_pk.saturating_add(gap);
    }
}

impl crate::cut::Placed for Lobby {
    fn clear_placement(&mut self) {
        self.placement = LeaderPlacement::default();
    }
}
