//! An arena: the PKs hosted by one group — their phases, gifts, presence and results.
//!
//! PKs arrive as [`PkOrder`]s from the lobby, idempotently by id. When a PK settles, its
//! result waits in the outbox until the lobby has released the rooms and the results
//! sink has stored it; a new leader resumes from there.
//!
//! It takes [`ArenaAction`]s and fires [`ArenaTimer`]s; a lobby action or timer is
//! refused (see [`StateMachine::apply`]).

use crate::audit::AuditLog;
use crate::command::{Action, ArenaAction, ArenaTimer, Command, Gift, GifterProfile, PkOrder, Presence, Seat, Timer};
use crate::config::Config;
use crate::deadlines::Deadlines;
use crate::effect::{
    AbnormalEnd, Audience, CacheChange, CountedGift, Effect, GifterTotal, PkStatus, PkView, Push, PushMessage,
    SettledPk, SettledSide, SideView, TopGifter,
};
use crate::gift_ids::GiftIdSet;
use crate::ids::{PkId, TimestampMs, UserId};
use crate::machine::{
    LeaderPlacement, Machine, MachineKind, MachineRef, SingleKind, SnapshotError, StateMachine, decode_snapshot,
    encode_snapshot,
};
use crate::response::{Reason, Response};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A node's presence report counts for this long; a node that stopped reporting (it
/// died, or its clients left) stops counting after it. Nodes repeat unchanged reports
/// well within it.
pub const PRESENCE_FRESH_MS: i64 = 30_000;

/// How long after its scheduled end a PK's order is still accepted, and its id
/// remembered after it settled. Past it a (duplicate or hopelessly late) order is
/// ignored; the lobby releases the rooms of an order never confirmed by then.
pub const ORDER_HORIZON_MS: i64 = 60 * 60 * 1000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arena {
    now: TimestampMs,
    config: Config,
    pks: BTreeMap<PkId, Pk>,
    /// The outbox: settled PKs not yet fully handed over.
    settled: BTreeMap<PkId, Settlement>,
    /// Ids of settled PKs, remembered until the order horizon passes.
    settled_ids: BTreeMap<PkId, TimestampMs>,
    deadlines: Deadlines<ArenaTimer>,
    /// Where the operator wants this group's leadership.
    placement: LeaderPlacement,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Pk {
    order: PkOrder,
    /// Set when the battle ended; the winner (0 for a draw) from then on.
    winner: Option<UserId>,
    sides: [Side; 2],
    /// Gifts seen, for de-duplication; also orders senders' ties (who got there first).
    gift_ids: GiftIdSet,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Side {
    seat: Seat,
    beans: i64,
    /// The anchor is online, from the fresh reports (true until a report says otherwise).
    online: bool,
    /// The latest report of each node.
    reports: BTreeMap<u64, NodeReport>,
    peak_audience: u32,
    senders: BTreeMap<UserId, Sender>,
    /// The gift ledger: every gift counted for this side, in the order counted (32 bytes
    /// each). It goes out with the settled result.
    gifts: Vec<CountedGift>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub online: bool,
    pub audience: u32,
    pub at: TimestampMs,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Sender {
    beans: i64,
    times: u32,
    /// The PK's gift count when this sender last rose: earlier wins a tie.
    reached: u64,
    profile: Option<GifterProfile>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Settlement {
    result: SettledPk,
    rooms_released: bool,
    persisted: bool,
    /// The nodes whose own results store holds the result.
    stored_by: BTreeSet<u64>,
}

impl Pk {
    fn battle_start(&self) -> TimestampMs {
        self.order.created_at.plus(self.order.timing.opening_ms)
    }

    fn battle_end(&self) -> TimestampMs {
        self.battle_start().plus(self.order.timing.battle_ms)
    }

    fn pk_end(&self) -> TimestampMs {
        self.battle_end().plus(self.order.timing.ending_ms)
    }

    fn status(&self, now: TimestampMs) -> PkStatus {
        if self.winner.is_some() {
            PkStatus::Ending
        } else if now < self.battle_start() {
            PkStatus::Opening
        } else {
            PkStatus::Battle
        }
    }

    /// The PK's state as pushed to clients, listing `top` gifters on each side.
    fn view(&self, status: PkStatus, top: usize, now: TimestampMs) -> PkView {
        PkView {
            pk: self.order.pk,
            status,
            interfered: self.order.interfered,
            start_time: self.order.created_at,
            end_time: self.battle_end(),
            source: self.sides[0].view(top, now),
            target: self.sides[1].view(top, now),
            winner: self.winner,
        }
    }

    fn side_of(&self, anchor: UserId) -> Option<usize> {
        self.sides.iter().position(|side| side.seat.anchor == anchor)
    }
}

impl Side {
    fn new(seat: Seat) -> Side {
        Side {
            seat,
            beans: 0,
            online: true,
            reports: BTreeMap::new(),
            peak_audience: 0,
            senders: BTreeMap::new(),
            gifts: Vec::new(),
        }
    }

    /// Senders highest first; ties go to whoever reached the amount first.
    fn ranked(&self) -> Vec<(&UserId, &Sender)> {
        let mut ranked: Vec<_> = self.senders.iter().collect();
        ranked.sort_by_key(|(id, s)| (-s.beans, s.reached, **id));
        ranked
    }

    fn fresh(&self, now: TimestampMs) -> impl Iterator<Item = &NodeReport> {
        self.reports.values().filter(move |report| now.since(report.at) < PRESENCE_FRESH_MS)
    }

    /// Viewers over all nodes with a fresh report.
    fn audience(&self, now: TimestampMs) -> u32 {
        self.fresh(now).fold(0u32, |sum, report| sum.saturating_add(report.audience))
    }

    /// Online if any fresh report says so; with no fresh report, as it was.
    fn combined_online(&self, now: TimestampMs) -> bool {
        let mut fresh = self.fresh(now).peekable();
        if fresh.peek().is_none() {
            return self.online;
        }
        fresh.any(|report| report.online)
    }

    fn view(&self, top: usize, now: TimestampMs) -> SideView {
        let mut best: Vec<_> = self.senders.iter().collect();
        let key = |(id, s): &(&UserId, &Sender)| (-s.beans, s.reached, **id);
        if best.len() > top {
            best.select_nth_unstable_by_key(top, key);
            best.truncate(top);
        }
        best.sort_by_key(key);
        SideView {
            anchor: self.seat.anchor,
            room: self.seat.room,
            beans: self.beans,
            online: self.combined_online(now),
            audience: self.audience(now),
            top_gifters: best
                .into_iter()
                .map(|(id, s)| TopGifter { sender: *id, beans: s.beans, profile: s.profile.clone() })
                .collect(),
        }
    }

    /// Every sender with its totals, highest first, ranked from 1.
    fn gifter_totals(&self) -> Vec<GifterTotal> {
        self.ranked()
            .into_iter()
            .enumerate()
            .map(|(i, (id, s))| GifterTotal { sender: *id, beans: s.beans, times: s.times, rank: i as u32 + 1 })
            .collect()
    }

    /// The side's result; its ledger moves into it, without spare capacity.
    fn settle(&mut self) -> SettledSide {
        self.gifts.shrink_to_fit();
        SettledSide {
            anchor: self.seat.anchor,
            room: self.seat.room,
            beans: self.beans,
            audience: self.peak_audience,
            gifters: self.gifter_totals(),
            gifts: std::mem::take(&mut self.gifts),
        }
    }
}

/// A summary of an arena for tests and the admin console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaSummary {
    pub running: Vec<PkId>,
    pub outbox: Vec<PkId>,
    pub remembered: usize,
}

impl StateMachine for Arena {
    fn kind(&self) -> MachineKind {
        Self::KIND
    }

    fn apply(&mut self, command: &Command, effects: &mut Vec<Effect>) -> Response {
        self.now = self.now.max(command.at);
        match &command.action {
            Action::Arena(action) => self.apply_action(action, effects),
            Action::Fire(Timer::Arena(timer)) => self.fire(*timer, effects),
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
                    self.config = next;
                    Response::Done
                }
                Err(e) => Response::Rejected(Reason::InvalidConfig(e.to_string())),
            },
            Action::Lobby(_) | Action::Fire(Timer::Lobby(_)) => Response::Rejected(Reason::WrongGroup),
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
        self.deadlines.due(now).map(Timer::Arena).collect()
    }

    fn snapshot(&self) -> Vec<u8> {
        encode_snapshot(&MachineRef::Arena(self), &AuditLog::default())
    }

    fn restore(bytes: &[u8]) -> Result<Arena, SnapshotError> {
        match decode_snapshot(bytes)? {
            Machine::Arena(arena) => Ok(arena),
            Machine::Lobby(_) => {
                Err(SnapshotError::WrongKind { expected: MachineKind::Arena, found: MachineKind::Lobby })
            }
        }
    }

    fn check_invariants(&self) -> Result<(), String> {
        for (id, pk) in &self.pks {
            // A ledger holding every counted id matches the totals exactly; one begun
            // after a restore from format 3 or older holds a part of them.
            let recorded: usize = pk.sides.iter().map(|side| side.gifts.len()).sum();
            let complete = recorded == pk.gift_ids.len();
            if recorded > pk.gift_ids.len() {
                return Err(format!("{id}: {recorded} gifts in the ledger, {} counted", pk.gift_ids.len()));
            }
            for side in &pk.sides {
                let sum: i64 = side.senders.values().map(|s| s.beans).sum();
                if sum != side.beans {
                    return Err(format!(
                        "{id}: side {} has {} beans but its senders sum to {sum}",
                        side.seat.anchor, side.beans
                    ));
                }
                let ledger: i64 = side.gifts.iter().map(|gift| gift.beans).sum();
                if (complete && ledger != side.beans) || ledger > side.beans {
                    return Err(format!(
                        "{id}: side {} has {} beans but its ledger sums to {ledger}",
                        side.seat.anchor, side.beans
                    ));
                }
                if complete && !side.gifts.iter().all(|gift| pk.gift_ids.contains(gift.id)) {
                    return Err(format!("{id}: side {} has an uncounted gift in its ledger", side.seat.anchor));
                }
            }
            if pk.winner.is_none() && self.deadlines.when(ArenaTimer::EndBattle { pk: *id }) != Some(pk.battle_end()) {
                return Err(format!("{id}: battle running without its end timer"));
            }
        }
        Ok(())
    }
}

impl SingleKind for Arena {
    const KIND: MachineKind = MachineKind::Arena;

    fn fresh(config: Config) -> Arena {
        Arena { config, ..Arena::default() }
    }
}

impl Arena {
    fn apply_action(&mut self, action: &ArenaAction, effects: &mut Vec<Effect>) -> Response {
        match action {
            ArenaAction::Gift(gift) => self.gift(gift, effects),
            ArenaAction::CreatePk(order) => self.create(order, effects),
            ArenaAction::ReportPresence(reports) => self.presence(reports, effects),
            ArenaAction::AbortPk { pk } => {
                if !self.pks.contains_key(pk) {
                    return Response::Rejected(Reason::NoSuchPk);
                }
                self.end_early(*pk, AbnormalEnd::Aborted, effects);
                Response::Done
            }
            ArenaAction::ConfirmRoomsReleased { pk } => self.confirm(*pk, |s| &mut s.rooms_released),
            ArenaAction::ConfirmResultPersisted { pk } => self.confirm(*pk, |s| &mut s.persisted),
            ArenaAction::ConfirmResultStored { pk, node, voters } => self.confirm_stored(*pk, *node, voters),
        }
    }

    // ---- queries -------------------------------------------------------------------

    /// The PK's state as of the last applied command, or `None` if it is not running
    /// here.
    pub fn view(&self, pk: PkId) -> Option<PkView> {
        self.view_at(pk, self.now)
    }

    /// The PK's state as it stands at `now`, a renderer's clock: the phase (the opening
    /// ends at its time, with no command to mark it), the presence still fresh at `now`.
    /// Everything the log decides (totals, the winner, the end) is as last applied; a
    /// `now` behind the log's time counts as the log's time.
    pub fn view_at(&self, pk: PkId, now: TimestampMs) -> Option<PkView> {
        let pk = self.pks.get(&pk)?;
        let now = now.max(self.now);
        Some(pk.view(pk.status(now), self.top_gifters(), now))
    }

    /// When a running PK's opening ends and its battle starts.
    pub fn battle_start(&self, pk: PkId) -> Option<TimestampMs> {
        self.pks.get(&pk).map(Pk::battle_start)
    }

    /// How many top gifters a view lists.
    fn top_gifters(&self) -> usize {
        self.config.limits.top_gifters as usize
    }

    pub fn running(&self) -> impl Iterator<Item = PkId> + '_ {
        self.pks.keys().copied()
    }

    /// A running PK's senders to one anchor with their totals (the `pkg_` cache).
    pub fn gifters(&self, pk: PkId, anchor: UserId) -> Vec<(UserId, i64)> {
        let Some(pk) = self.pks.get(&pk) else {
            return Vec::new();
        };
        let Some(side) = pk.side_of(anchor) else {
            return Vec::new();
        };
        pk.sides[side].senders.iter().map(|(id, s)| (*id, s.beans)).collect()
    }

    /// A running PK's gifters on each side (source, target), highest first, with their
    /// totals, gift counts and ranks: what the results sink writes to `t_pk_gift` while
    /// the PK runs, and the cache's `pkg_` keys. `None` if the PK is not running here.
    pub fn gifter_totals(&self, pk: PkId) -> Option<[Vec<GifterTotal>; 2]> {
        let pk = self.pks.get(&pk)?;
        Some([pk.sides[0].gifter_totals(), pk.sides[1].gifter_totals()])
    }

    /// Settled PKs whose rooms the lobby has not released yet.
    pub fn pending_releases(&self) -> impl Iterator<Item = PkId> + '_ {
        self.settled.iter().filter(|(_, s)| !s.rooms_released).map(|(pk, _)| *pk)
    }

    /// Settled PKs the results sink has not stored yet.
    pub fn pending_results(&self) -> impl Iterator<Item = &SettledPk> {
        self.settled.values().filter(|s| !s.persisted).map(|s| &s.result)
    }

    /// Settled PKs that node `node`'s own results store has not confirmed yet.
    pub fn unstored_results(&self, node: u64) -> impl Iterator<Item = &SettledPk> {
        self.settled.values().filter(move |s| !s.persisted && !s.stored_by.contains(&node)).map(|s| &s.result)
    }

    pub fn summary(&self) -> ArenaSummary {
        ArenaSummary {
            running: self.pks.keys().copied().collect(),
            outbox: self.settled.keys().copied().collect(),
            remembered: self.settled_ids.len(),
        }
    }

    // ---- life of a PK --------------------------------------------------------------

    fn create(&mut self, order: &PkOrder, effects: &mut Vec<Effect>) -> Response {
        let pk = order.pk;
        let scheduled_end =
            order.created_at.plus(order.timing.opening_ms + order.timing.battle_ms + order.timing.ending_ms);
        if self.pks.contains_key(&pk) || self.settled_ids.contains_key(&pk) {
            return Response::Ignored;
        }
        if self.now >= scheduled_end.plus(ORDER_HORIZON_MS) {
            return Response::Ignored;
        }
        let created = Pk {
            order: order.clone(),
            winner: None,
            sides: [Side::new(order.source), Side::new(order.target)],
            gift_ids: GiftIdSet::default(),
        };
        self.deadlines.arm(created.battle_end(), ArenaTimer::EndBattle { pk });
        let view = created.view(created.status(self.now), self.top_gifters(), self.now);
        self.pks.insert(pk, created);
        push_state(view, effects);
        effects.push(Effect::CacheChanged(CacheChange::Pk { pk }));
        Response::Done
    }

    fn gift(&mut self, gift: &Gift, effects: &mut Vec<Effect>) -> Response {
        let limits = self.config.limits;
        let now = self.now;
        let Some(pk) = self.pks.get_mut(&gift.pk) else {
            return Response::Rejected(Reason::NoSuchPk);
        };
        let Some(side_index) = pk.side_of(gift.receiver) else {
            return Response::Rejected(Reason::NotASide);
        };
        if pk.gift_ids.contains(gift.id) {
            let side_beans = pk.sides[side_index].beans;
            return Response::GiftCounted { duplicate: true, side_beans };
        }
        if pk.winner.is_some() || now < pk.battle_start() || now >= pk.battle_end() {
            return Response::Rejected(Reason::NotInBattle);
        }
        if gift.beans <= 0 {
            return Response::Rejected(Reason::BeansNotPositive);
        }
        if gift.beans > limits.max_gift_beans {
            return Response::Rejected(Reason::BeansTooLarge);
        }
        if pk.gift_ids.len() >= limits.max_gifts_per_pk as usize {
            return Response::Rejected(Reason::TooManyGifts);
        }
        let count = pk.gift_ids.len() as u64 + 1;
        let side = &mut pk.sides[side_index];
        let previous = side.senders.get(&gift.sender).map_or(0, |s| s.beans);
        let (Some(side_beans), Some(sender_beans)) =
            (side.beans.checked_add(gift.beans), previous.checked_add(gift.beans))
        else {
            return Response::Rejected(Reason::BeansOverflow);
        };
        pk.gift_ids.insert(gift.id);
        side.beans = side_beans;
        side.gifts.push(CountedGift { id: gift.id, sender: gift.sender, beans: gift.beans, at: now });
        let sender =
            side.senders.entry(gift.sender).or_insert(Sender { beans: 0, times: 0, reached: 0, profile: None });
        sender.beans = sender_beans;
        sender.times = sender.times.saturating_add(1);
        sender.reached = count;
        if let Some(profile) = &gift.profile {
            sender.profile = Some((**profile).clone());
        }
        effects.push(Effect::CacheChanged(CacheChange::GifterTotal {
            pk: gift.pk,
            anchor: gift.receiver,
            sender: gift.sender,
            beans: sender_beans,
        }));
        effects.push(Effect::PkChanged { pk: gift.pk });
        Response::GiftCounted { duplicate: false, side_beans }
    }

    fn presence(&mut self, reports: &[Presence], effects: &mut Vec<Effect>) -> Response {
        let now = self.now;
        let grace = self.config.limits.anchor_grace_ms;
        for report in reports {
            let Some(pk) = self.pks.get_mut(&report.pk) else { continue };
            let Some(index) = pk.side_of(report.anchor) else { continue };
            let side = &mut pk.sides[index];
            let before = (side.online, side.audience(now));
            side.reports.insert(report.node, NodeReport { online: report.online, audience: report.audience, at: now });
            // Reports of nodes that stopped reporting are dropped once stale.
            side.reports.retain(|_, r| now.since(r.at) < PRESENCE_FRESH_MS);
            let online = side.combined_online(now);
            let timer = ArenaTimer::AnchorAway { pk: report.pk, anchor: report.anchor };
            if side.online && !online {
                self.deadlines.arm(now.plus(grace), timer);
            } else if !side.online && online {
                self.deadlines.disarm(timer);
            }
            side.online = online;
            let audience = side.audience(now);
            side.peak_audience = side.peak_audience.max(audience);
            if before != (online, audience) {
                effects.push(Effect::PkChanged { pk: report.pk });
            }
        }
        Response::Done
    }

    /// The latest report `node` made for an anchor of a running PK.
    pub fn report_of(&self, pk: PkId, anchor: UserId, node: u64) -> Option<NodeReport> {
        let pk = self.pks.get(&pk)?;
        let side = pk.side_of(anchor)?;
        pk.sides[side].reports.get(&node).copied()
    }

    fn end_battle(&mut self, pk_id: PkId, effects: &mut Vec<Effect>) {
        let now = self.now;
        let top = self.top_gifters();
        let Some(pk) = self.pks.get_mut(&pk_id) else {
            return;
        };
        let [source, target] = &pk.sides;
        pk.winner = Some(match source.beans.cmp(&target.beans) {
            std::cmp::Ordering::Greater => source.seat.anchor,
            std::cmp::Ordering::Less => target.seat.anchor,
            std::cmp::Ordering::Equal => UserId(0),
        });
        if pk.order.timing.ending_ms > 0 && now < pk.pk_end() {
            let pk_end = pk.pk_end();
            self.deadlines.arm(pk_end, ArenaTimer::EndPk { pk: pk_id });
            push_state(pk.view(PkStatus::Ending, top, now), effects);
            effects.push(Effect::CacheChanged(CacheChange::Pk { pk: pk_id }));
        } else {
            self.settle(pk_id, None, Announce::Result, effects);
        }
    }

    /// An abort or an anchor gone too long. Before the battle's end the PK ends abnormally
    /// (status 3, no winner); in the after-battle stage the announced result stands and the
    /// stage ends at once.
    fn end_early(&mut self, pk_id: PkId, why: AbnormalEnd, effects: &mut Vec<Effect>) {
        match self.pks.get(&pk_id) {
            Some(pk) if pk.winner.is_some() => self.settle(pk_id, None, Announce::Closed, effects),
            Some(_) => self.settle(pk_id, Some(why), Announce::Result, effects),
            None => {}
        }
    }

    /// Ends a PK for good: its rooms released, its result queued for storage, and its
    /// final state pushed, unless `announce` says the result went out at the battle's end.
    fn settle(&mut self, pk_id: PkId, abnormal: Option<AbnormalEnd>, announce: Announce, effects: &mut Vec<Effect>) {
        let Some(mut pk) = self.pks.remove(&pk_id) else {
            return;
        };
        let now = self.now;
        for timer in [ArenaTimer::EndBattle { pk: pk_id }, ArenaTimer::EndPk { pk: pk_id }] {
            self.deadlines.disarm(timer);
        }
        for side in &pk.sides {
            self.deadlines.disarm(ArenaTimer::AnchorAway { pk: pk_id, anchor: side.seat.anchor });
        }
        let status = if abnormal.is_some() { PkStatus::Error } else { PkStatus::Done };
        let mut view = pk.view(status, self.top_gifters(), now);
        // An abnormal end has no winner.
        let winner = if abnormal.is_some() { UserId(0) } else { pk.winner.unwrap_or(UserId(0)) };
        view.winner = Some(winner);
        let battle_end = pk.battle_end();
        let result = SettledPk {
            pk: pk_id,
            status,
            abnormal,
            interfered: pk.order.interfered,
            start_time: pk.order.created_at,
            battle_end,
            end_time: now,
            duration_ms: now.since(pk.order.created_at),
            source: pk.sides[0].settle(),
            target: pk.sides[1].settle(),
            winner,
        };
        let forget_at = pk.pk_end().max(now).plus(ORDER_HORIZON_MS);
        self.settled_ids.insert(pk_id, forget_at);
        self.deadlines.arm(forget_at, ArenaTimer::ForgetPk { pk: pk_id });
        let settlement =
            Settlement { result: result.clone(), rooms_released: false, persisted: false, stored_by: BTreeSet::new() };
        self.settled.insert(pk_id, settlement);
        let rooms = [view.source.room, view.target.room];
        let final_view = Box::new(view.clone());
        if announce == Announce::Result {
            push_state(view, effects);
        }
        for room in rooms {
            let message = PushMessage::PkClosed { pk: pk_id, status };
            effects.push(Effect::Pushed(Push { to: Audience::Room(room), message }));
        }
        effects.push(Effect::CacheChanged(CacheChange::PkEnded {
            pk: pk_id,
            anchors: [pk.sides[0].seat.anchor, pk.sides[1].seat.anchor],
            final_view,
        }));
        effects.push(Effect::PkSettled(Box::new(result)));
    }

    fn confirm(&mut self, pk: PkId, flag: fn(&mut Settlement) -> &mut bool) -> Response {
        let Some(settlement) = self.settled.get_mut(&pk) else {
            return Response::Ignored;
        };
        let done = flag(settlement);
        if *done {
            return Response::Ignored;
        }
        *done = true;
        if settlement.rooms_released && settlement.persisted {
            self.settled.remove(&pk);
        }
        Response::Done
    }

    /// Node `node` stored the result; with every voter's store holding it, it is persisted.
    fn confirm_stored(&mut self, pk: PkId, node: u64, voters: &[u64]) -> Response {
        let Some(settlement) = self.settled.get_mut(&pk) else {
            return Response::Ignored;
        };
        if settlement.persisted || !settlement.stored_by.insert(node) {
            return Response::Ignored;
        }
        if voters.iter().all(|voter| settlement.stored_by.contains(voter)) {
            return self.confirm(pk, |s| &mut s.persisted);
        }
        Response::Done
    }

    fn fire(&mut self, timer: ArenaTimer, effects: &mut Vec<Effect>) -> Response {
        if !self.deadlines.take_due(timer, self.now) {
            return Response::Ignored;
        }
        match timer {
            ArenaTimer::EndBattle { pk } => self.end_battle(pk, effects),
            ArenaTimer::EndPk { pk } => self.settle(pk, None, Announce::Closed, effects),
            ArenaTimer::AnchorAway { pk, anchor } => self.end_early(pk, AbnormalEnd::AnchorLeft { anchor }, effects),
            ArenaTimer::ForgetPk { pk } => {
                self.settled_ids.remove(&pk);
            }
        }
        Response::Done
    }
}

/// Whether a settlement pushes the PK's final state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Announce {
    /// The final state (status 2 or 3) goes out now.
    Result,
    /// The result went out when the battle ended: only the close is pushed.
    Closed,
}

fn push_state(view: PkView, effects: &mut Vec<Effect>) {
    let rooms = [view.source.room, view.target.room];
    let view = Box::new(view);
    for room in rooms {
        effects.push(Effect::Pushed(Push { to: Audience::Room(room), message: PushMessage::PkState(view.clone()) }));
    }
}

// ---- backups -------------------------------------------------------------------------

impl Arena {
    /// Where PK `pk` stands here, for [`crate::cut`].
    pub(crate) fn standing(&self, pk: PkId) -> crate::cut::Standing {
        use crate::cut::Standing;
        if self.pks.contains_key(&pk) || self.pending_releases().any(|pending| pending == pk) {
            Standing::Live
        } else if self.settled_ids.contains_key(&pk) {
            Standing::Done
        } else {
            Standing::Unknown
        }
    }

    /// Forgets every PK whose id is above `last_pk`, running or settled, with its timers:
    /// for [`crate::cut`], PKs the lobby of the cut never ordered. Returns their ids.
    pub(crate) fn forget_after(&mut self, last_pk: PkId) -> Vec<PkId> {
        let running: Vec<PkId> = self.pks.range(PkId(last_pk.0 + 1)..).map(|(id, _)| *id).collect();
        for id in &running {
            if let Some(pk) = self.pks.remove(id) {
                for timer in [ArenaTimer::EndBattle { pk: *id }, ArenaTimer::EndPk { pk: *id }] {
                    self.deadlines.disarm(timer);
                }
                for side in &pk.sides {
                    self.deadlines.disarm(ArenaTimer::AnchorAway { pk: *id, anchor: side.seat.anchor });
                }
            }
        }
        let after = PkId(last_pk.0 + 1)..;
        let mut settled: Vec<PkId> = self.settled_ids.range(after.clone()).map(|(id, _)| *id).collect();
        settled.extend(self.settled.range(after).map(|(id, _)| *id));
        settled.sort();
        settled.dedup();
        for id in &settled {
            self.settled_ids.remove(id);
            self.settled.remove(id);
            self.deadlines.disarm(ArenaTimer::ForgetPk { pk: *id });
        }
        let mut forgotten = running;
        forgotten.extend(settled);
        forgotten.sort();
        forgotten
    }
}

impl crate::cut::Placed for Arena {
    fn clear_placement(&mut self) {
        self.placement = LeaderPlacement::default();
    }
}

// ---- formats 2 and 3 -----------------------------------------------------------------

/// An arena as snapshot formats 2 and 3 encoded it: the same state without the gift
/// ledgers (postcard is not self-describing, so the old shape is spelled out here).
/// Read only; its PKs restore with empty ledgers (see [`SettledSide::gifts`]).
pub(crate) mod format3 {
    use super::{BTreeMap, BTreeSet, Config, Deadlines, GiftIdSet, LeaderPlacement, NodeReport, Sender};
    use crate::command::{ArenaTimer, PkOrder, Seat};
    use crate::effect::{AbnormalEnd, GifterTotal, PkStatus};
    use crate::ids::{PkId, RoomId, TimestampMs, UserId};
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(crate) struct Arena {
        now: TimestampMs,
        config: Config,
        pks: BTreeMap<PkId, Pk>,
        settled: BTreeMap<PkId, Settlement>,
        settled_ids: BTreeMap<PkId, TimestampMs>,
        deadlines: Deadlines<ArenaTimer>,
        placement: LeaderPlacement,
    }

    #[derive(Deserialize)]
    struct Pk {
        order: PkOrder,
        winner: Option<UserId>,
        sides: [Side; 2],
        gift_ids: GiftIdSet,
    }

    #[derive(Deserialize)]
    struct Side {
        seat: Seat,
        beans: i64,
        online: bool,
        reports: BTreeMap<u64, NodeReport>,
        peak_audience: u32,
        senders: BTreeMap<UserId, Sender>,
    }

    #[derive(Deserialize)]
    struct Settlement {
        result: SettledPk,
        rooms_released: bool,
        persisted: bool,
        stored_by: BTreeSet<u64>,
    }

    #[derive(Deserialize)]
    struct SettledPk {
        pk: PkId,
        status: PkStatus,
        abnormal: Option<AbnormalEnd>,
        interfered: bool,
        start_time: TimestampMs,
        battle_end: TimestampMs,
        end_time: TimestampMs,
        duration_ms: i64,
        source: SettledSide,
        target: SettledSide,
        winner: UserId,
    }

    #[derive(Deserialize)]
    struct SettledSide {
        anchor: UserId,
        room: RoomId,
        beans: i64,
        audience: u32,
        gifters: Vec<GifterTotal>,
    }

    impl From<Side> for super::Side {
        fn from(side: Side) -> super::Side {
            let Side { seat, beans, online, reports, peak_audience, senders } = side;
            super::Side { seat, beans, online, reports, peak_audience, senders, gifts: Vec::new() }
        }
    }

    impl From<SettledSide> for crate::effect::SettledSide {
        fn from(side: SettledSide) -> crate::effect::SettledSide {
            let SettledSide { anchor, room, beans, audience, gifters } = side;
            crate::effect::SettledSide { anchor, room, beans, audience, gifters, gifts: Vec::new() }
        }
    }

    impl From<Arena> for super::Arena {
        fn from(arena: Arena) -> super::Arena {
            let Arena { now, config, pks, settled, settled_ids, deadlines, placement } = arena;
            let pks = pks
                .into_iter()
                .map(|(id, pk)| {
                    let Pk { order, winner, sides: [source, target], gift_ids } = pk;
                    (id, super::Pk { order, winner, sides: [source.into(), target.into()], gift_ids })
                })
                .collect();
            let settled = settled
                .into_iter()
                .map(|(id, settlement)| {
                    let Settlement { result, rooms_released, persisted, stored_by } = settlement;
                    let SettledPk {
                        pk,
                        status,
                        abnormal,
                        interfered,
                        start_time,
                        battle_end,
                        end_time,
                        duration_ms,
                        source,
                        target,
                        winner,
                    } = result;
                    let result = crate::effect::SettledPk {
                        pk,
                        status,
                        abnormal,
                        interfered,
                        start_time,
                        battle_end,
                        end_time,
                        duration_ms,
                        source: source.into(),
                        target: target.into(),
                        winner,
                    };
                    (id, super::Settlement { result, rooms_released, persisted, stored_by })
                })
                .collect();
            super::Arena { now, config, pks, settled, settled_ids, deadlines, placement }
        }
    }
}
