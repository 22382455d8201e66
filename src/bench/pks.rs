//! PKs made the way an app makes them: anchors connect over WebSocket, enter their own
//! rooms as anchors and start matching (command 28 type 1); every compatible pair is
//! matched. Each anchor lives in a task of its own ([`AnchorPool`]): it reads its pushes,
//! starts again once its PK has ended, and reconnects to another node if its connection
//! drops, as the app does. The [`Roster`] is what the anchors have seen: the PKs that
//! run, when their battles start and end, and how late each end reached them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use pkd_cluster::app::{self, AppClient, wall_clock_ms};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use super::recorder::{Recorder, new_histogram, record_latency};
use super::target::Target;

/// A PK the anchors have seen start and not yet end.
#[derive(Clone, Debug)]
pub struct RunningPk {
    pub id: u64,
    pub source: u64,
    pub target: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    /// When gifts start to count: the opening's end, if the bench knows the opening, or
    /// the first push that showed the battle.
    pub battle_from_ms: Option<i64>,
}

#[derive(Default)]
struct RosterInner {
    live: Vec<RunningPk>,
    positions: HashMap<u64, usize>,
    ended: HashSet<u64>,
    created: u64,
    ended_normally: u64,
    ended_abnormally: u64,
    lateness: Option<Histogram<u64>>,
    earliest_end_ms: Option<i64>,
    latest_end_ms: Option<i64>,
}

/// The PKs the anchors of a run have seen.
pub struct Roster {
    inner: Mutex<RosterInner>,
    /// The opening phase's length, if the bench set it.
    opening_ms: Option<i64>,
    /// Ends due before this (wall clock, ms) are not measured for lateness.
    measure_from_ms: AtomicI64,
}

/// What the roster saw, at the end of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RosterReport {
    pub pks_created: u64,
    pub pks_ended: u64,
    pub pks_ended_abnormally: u64,
    pub pks_running: u64,
    /// Running PKs whose end time passed more than 10 s ago with no end seen.
    pub ends_missed: u64,
}

impl Roster {
    pub fn new(opening_ms: Option<i64>) -> Roster {
        Roster { inner: Mutex::new(RosterInner::default()), opening_ms, measure_from_ms: AtomicI64::new(i64::MAX) }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, RosterInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lateness of ends due from `from_ms` on is measured.
    pub fn measure_ends_from(&self, from_ms: i64) {
        self.measure_from_ms.store(from_ms, Ordering::Relaxed);
    }

    /// A state push (its `content`) that arrived at `at_ms`.
    pub fn observe_state(&self, content: &Value, at_ms: i64) {
        let field = |name: &str| content[name].as_i64();
        let (Some(id), Some(status)) = (content["pkId"].as_u64(), content["status"].as_u64()) else { return };
        let (Some(start_ms), Some(end_ms)) = (field("startTime"), field("endTime")) else { return };
        let mut inner = self.inner();
        if inner.ended.contains(&id) {
            return;
        }
        if status >= 2 {
            if let Some(position) = inner.positions.remove(&id) {
                inner.live.swap_remove(position);
                if let Some(moved) = inner.live.get(position).map(|pk| pk.id) {
                    inner.positions.insert(moved, position);
                }
            }
            inner.ended.insert(id);
            if status == 2 {
                inner.ended_normally += 1;
                if end_ms >= self.measure_from_ms.load(Ordering::Relaxed) {
                    let lateness = Duration::from_millis(u64::try_from(at_ms - end_ms).unwrap_or(0));
                    record_latency(inner.lateness.get_or_insert_with(new_histogram), lateness);
                    inner.earliest_end_ms = Some(inner.earliest_end_ms.map_or(end_ms, |earliest| earliest.min(end_ms)));
                    inner.latest_end_ms = Some(inner.latest_end_ms.map_or(end_ms, |latest| latest.max(end_ms)));
                }
            } else {
                inner.ended_abnormally += 1;
            }
            return;
        }
        let battle_seen = (status == 1).then_some(at_ms);
        match inner.positions.get(&id).copied() {
            Some(position) => {
                let pk = &mut inner.live[position];
                pk.battle_from_ms = pk.battle_from_ms.or(battle_seen);
            }
            None => {
                let (Some(source), Some(target)) = (content["sourceUser"].as_u64(), content["targetUser"].as_u64())
                else {
                    return;
                };
                let battle_from_ms = self.opening_ms.map(|opening| start_ms + opening).or(battle_seen);
                let position = inner.live.len();
                inner.live.push(RunningPk { id, source, target, start_ms, end_ms, battle_from_ms });
                inner.positions.insert(id, position);
                inner.created += 1;
            }
        }
    }

    /// A random PK in its battle at `now_ms` with at least `margin_ms` of it left.
    pub fn pick(&self, rng: &mut impl Rng, now_ms: i64, margin_ms: i64) -> Option<RunningPk> {
        let inner = self.inner();
        if inner.live.is_empty() {
            return None;
        }
        let fits =
            |pk: &RunningPk| pk.battle_from_ms.is_some_and(|from| now_ms >= from) && pk.end_ms - now_ms > margin_ms;
        for _ in 0..16 {
            let pk = &inner.live[rng.random_range(0..inner.live.len())];
            if fits(pk) {
                return Some(pk.clone());
            }
        }
        // Few fit (PKs ending, others still in their opening): choose among those.
        let fitting: Vec<&RunningPk> = inner.live.iter().filter(|pk| fits(pk)).collect();
        (!fitting.is_empty()).then(|| fitting[rng.random_range(0..fitting.len())].clone())
    }

    /// PKs in their battle at `now_ms` with at least `margin_ms` left.
    pub fn in_battle(&self, now_ms: i64, margin_ms: i64) -> Vec<RunningPk> {
        self.inner()
            .live
            .iter()
            .filter(|pk| pk.battle_from_ms.is_some_and(|from| now_ms >= from) && pk.end_ms - now_ms > margin_ms)
            .cloned()
            .collect()
    }

    /// Every PK seen running and not yet ended.
    pub fn running(&self) -> Vec<RunningPk> {
        self.inner().live.clone()
    }

    /// How late the measured ends reached the anchors (push arrival minus `endTime`).
    pub fn lateness(&self) -> Option<Histogram<u64>> {
        self.inner().lateness.clone()
    }

    pub fn report(&self, now_ms: i64) -> RosterReport {
        let inner = self.inner();
        RosterReport {
            pks_created: inner.created,
            pks_ended: inner.ended_normally + inner.ended_abnormally,
            pks_ended_abnormally: inner.ended_abnormally,
            pks_running: inner.live.len() as u64,
            ends_missed: inner.live.iter().filter(|pk| pk.end_ms + 10_000 < now_ms).count() as u64,
        }
    }
}

/// Where an anchor read a PK state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateSource {
    /// A push 10's `content`.
    Push,
    /// The reply to the anchor's room entry (command 40), after a (re)connection.
    Entry,
}

/// Who read a PK state, over which connection, where, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reader {
    /// The user reading: an anchor, or a viewer.
    pub user: u64,
    /// The anchor's connections so far, this one included (1 for its first): states read
    /// over one connection come from one node, in the order it sent them.
    pub connection: u64,
    /// The node the connection went to.
    pub node: u64,
    pub source: StateSource,
    /// When the state arrived (wall clock, ms).
    pub at_ms: i64,
}

/// Told of every PK state an anchor reads.
pub type StateObserver = Arc<dyn Fn(Reader, &Value) + Send + Sync>;

/// An anchor's answer to an invitation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvitationAction {
    /// Command 28 type 2.
    Accept,
    /// Command 28 type 3.
    Refuse,
}

/// An invitation (push 12) an anchor answered, and what the node replied.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InvitationAnswer {
    pub invitee: u64,
    /// The push's `content.source`.
    pub inviter: u64,
    /// When the push arrived (wall clock, ms).
    pub received_ms: i64,
    pub action: InvitationAction,
    /// The reply's code (`902004` won, `902003` taken by someone else, ...), or
    /// `timeout` / `disconnected` / `error` when no reply came.
    pub code: String,
    /// When the reply came, or the wait for it ended (wall clock, ms).
    pub answered_ms: i64,
}

/// Told of every invitation an anchor answered.
pub type InvitationObserver = Arc<dyn Fn(&InvitationAnswer) + Send + Sync>;

/// How anchors answer invitations. Every idle anchor (not matching, not in a PK, not
/// winding down) answers at once; one that is matching or in a PK lets it lapse.
#[derive(Clone)]
pub struct InvitationAnswers {
    pub observer: InvitationObserver,
    /// The chance that an idle anchor accepts; otherwise it refuses.
    pub accept_chance: f64,
    /// Every `linger_every`-th anchor (by index; 0: none) pauses for `linger` before its
    /// first start and after each PK, instead of the think time, so that an anchor left
    /// waiting alone finds it idle and invites it.
    pub linger_every: u64,
    pub linger: (Duration, Duration),
}

/// How the anchors behave.
#[derive(Clone, Default)]
pub struct AnchorBehaviour {
    /// Told of every PK state the anchors read, beside the roster.
    pub observer: Option<StateObserver>,
    /// While set, anchors whose PK is over do not start matching again (the ones already
    /// matching or in a PK go on), so that a run can wind down to no running PK.
    pub hold_starts: Arc<AtomicBool>,
    /// A pause before each start, drawn between these (none if unset).
    pub think: Option<(Duration, Duration)>,
    /// The chance that an anchor goes off air (leaves its room) for a while after a PK.
    pub off_air_chance: f64,
    /// Once set, each start's reply latency is recorded as `command` (failures by code).
    pub recorder: Arc<std::sync::OnceLock<Arc<Recorder>>>,
    /// If set, idle anchors answer invitations (push 12); otherwise they ignore them.
    pub invitations: Option<InvitationAnswers>,
}

/// What the anchors did, beyond the roster.
#[derive(Default)]
pub struct AnchorStats {
    pub starts: AtomicU64,
    pub reconnects: AtomicU64,
    pub off_air: AtomicU64,
    pub invitations_answered: AtomicU64,
    codes: Mutex<BTreeMap<String, u64>>,
}

impl AnchorStats {
    fn count(&self, code: &str) {
        *self.codes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(code.to_owned()).or_default() += 1;
    }

    /// Start replies by code.
    pub fn codes(&self) -> BTreeMap<String, u64> {
        self.codes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Anchors, each in its own task.
pub struct AnchorPool {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub stats: Arc<AnchorStats>,
}

impl AnchorPool {
    /// Starts `count` anchors with user ids from `first_user` on, spread over the nodes.
    pub fn spawn(
        target: Arc<Target>,
        roster: Arc<Roster>,
        first_user: u64,
        count: u64,
        behaviour: AnchorBehaviour,
    ) -> AnchorPool {
        let (stop, stopped) = watch::channel(false);
        let stats = Arc::new(AnchorStats::default());
        let tasks = (0..count)
            .map(|index| {
                let lingers = behaviour.invitations.as_ref().is_some_and(|answers| {
                    answers.linger_every > 0 && index % answers.linger_every == answers.linger_every - 1
                });
                let anchor = Anchor {
                    lingers,
                    invitations: Vec::new(),
                    target: target.clone(),
                    roster: roster.clone(),
                    user: first_user + index,
                    node: index as usize,
                    behaviour: behaviour.clone(),
                    stats: stats.clone(),
                    rng: rand::rngs::SmallRng::seed_from_u64(first_user + index),
                    connections: 0,
                    connected_to: 0,
                };
                tokio::spawn(anchor.live(stopped.clone()))
            })
            .collect();
        AnchorPool { stop, tasks, stats }
    }

    /// Waits until at least `count` PKs are in their battle (gifts count) with `margin_ms`
    /// of it left.
    pub async fn wait_for_battles(
        &self,
        roster: &Roster,
        count: usize,
        margin_ms: i64,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let ready = roster.in_battle(wall_clock_ms(), margin_ms).len();
            if ready >= count {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "only {ready} of {count} PKs reached their battle within {limit:?} (start replies: {:?}); \
                     is another client matching anchors on this cluster?",
                    self.stats.codes()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every anchor (their connections close).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Where an anchor is in its cycle.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Starts matching at this time.
    Idle { start_at: Instant },
    /// Started; waits for its PK's first push.
    Matching { since: Instant },
    /// In PK `pk`, which ends at `end_ms`.
    InPk { pk: u64, end_ms: i64 },
    /// About to leave its room, to come back at `until`.
    Leaving { until: Instant },
    /// Left its room; comes back at this time.
    OffAir { until: Instant },
}

struct Anchor {
    target: Arc<Target>,
    roster: Arc<Roster>,
    user: u64,
    node: usize,
    behaviour: AnchorBehaviour,
    stats: Arc<AnchorStats>,
    rng: rand::rngs::SmallRng,
    /// Connections made so far.
    connections: u64,
    /// The node of the latest one.
    connected_to: u64,
    /// Pauses for the invitation answers' `linger` rather than the think time.
    lingers: bool,
    /// Invitations received and not yet answered: (inviter, arrival ms).
    invitations: Vec<(u64, i64)>,
}

impl Anchor {
    async fn live(mut self, mut stopped: watch::Receiver<bool>) {
        let first_pause = if self.lingers { self.pause() } else { Duration::ZERO };
        let mut phase = Phase::Idle { start_at: Instant::now() + first_pause };
        let mut client: Option<AppClient> = None;
        while !*stopped.borrow() {
            let Some(connected) = client.as_mut() else {
                tokio::select! {
                    connected = self.connect(&mut phase) => client = connected,
                    _ = stopped.changed() => break,
                }
                continue;
            };
            let result = tokio::select! {
                result = self.step(connected, &mut phase) => result,
                _ = stopped.changed() => break,
            };
            if let Err(error) = result
                && error.is_disconnect()
            {
                client = None;
                self.node += 1;
                self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(client) = client {
            client.close().await;
        }
    }

    /// Connects to the current node (or the next one up) and enters the room as its
    /// anchor; the reply says whether a PK still runs there.
    async fn connect(&mut self, phase: &mut Phase) -> Option<AppClient> {
        let node = self.target.node_for(self.node).id;
        let mut client = match self.target.connect(self.node, self.user).await {
            Ok(client) => {
                self.connections += 1;
                self.connected_to = node;
                client
            }
            Err(_) => {
                self.node += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                return None;
            }
        };
        if let Phase::OffAir { until } | Phase::Leaving { until } = *phase {
            *phase = Phase::OffAir { until };
            return Some(client);
        }
        match client.enter(self.user, true).await {
            Ok(reply) if app::reply_code(&reply) == app::SUCCESS => {
                // Pushes that came before the reply first: the reply is the newest state.
                self.drain_kept(&mut client, phase);
                let state = &reply["result"];
                if state.is_object()
                    && let Some(observer) = &self.behaviour.observer
                {
                    observer(self.reader(StateSource::Entry, wall_clock_ms()), state);
                }
                if state.is_object() && state["status"].as_u64().is_some_and(|status| status < 2) {
                    self.roster.observe_state(state, wall_clock_ms());
                    if let (Some(pk), Some(end_ms)) = (state["pkId"].as_u64(), state["endTime"].as_i64()) {
                        *phase = Phase::InPk { pk, end_ms };
                    }
                } else if matches!(phase, Phase::InPk { .. }) {
                    // The PK ended while the anchor was away.
                    *phase = Phase::Idle { start_at: Instant::now() };
                }
                Some(client)
            }
            _ => {
                self.node += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
        }
    }

    /// One step of the cycle: a command when one is due, otherwise reading a push.
    async fn step(&mut self, client: &mut AppClient, phase: &mut Phase) -> Result<(), app::AppError> {
        if !self.invitations.is_empty() {
            let (inviter, received_ms) = self.invitations.remove(0);
            let idle = matches!(phase, Phase::Idle { .. }) && !self.behaviour.hold_starts.load(Ordering::Relaxed);
            return match self.behaviour.invitations.clone() {
                Some(answers) if idle => self.answer(client, phase, &answers, inviter, received_ms).await,
                _ => Ok(()),
            };
        }
        let now = Instant::now();
        match *phase {
            Phase::Idle { start_at } if now >= start_at && !self.behaviour.hold_starts.load(Ordering::Relaxed) => {
                self.stats.starts.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let reply = client.start().await?;
                let code = app::reply_code(&reply).to_owned();
                self.stats.count(&code);
                if let Some(recorder) = self.behaviour.recorder.get() {
                    match code.as_str() {
                        app::SUCCESS | "902004" => recorder.record_other("command", sent, sent.elapsed()),
                        other => recorder.count_error(&format!("start {other}")),
                    }
                }
                *phase = match code.as_str() {
                    app::SUCCESS | "902004" | "902005" => Phase::Matching { since: Instant::now() },
                    // The room is still busy (the lobby has not applied the release yet)
                    // or no leader is reachable: try again shortly.
                    "905033" | app::UNAVAILABLE => {
                        Phase::Idle { start_at: Instant::now() + Duration::from_millis(250) }
                    }
                    _ => Phase::Idle { start_at: Instant::now() + Duration::from_secs(1) },
                };
                self.drain_kept(client, phase);
                Ok(())
            }
            Phase::Leaving { until } => {
                client.leave(self.user).await?;
                *phase = Phase::OffAir { until };
                self.drain_kept(client, phase);
                Ok(())
            }
            Phase::OffAir { until } if now >= until => {
                let reply = client.enter(self.user, true).await?;
                *phase = if app::reply_code(&reply) == app::SUCCESS {
                    Phase::Idle { start_at: Instant::now() }
                } else {
                    Phase::OffAir { until: Instant::now() + Duration::from_secs(1) }
                };
                self.drain_kept(client, phase);
                Ok(())
            }
            _ => {
                let wake = match *phase {
                    Phase::Idle { start_at } if start_at > now => start_at,
                    Phase::OffAir { until } => until,
                    _ => now + Duration::from_secs(1),
                };
                match client.next_message(wake.saturating_duration_since(now)).await {
                    Ok(received) => {
                        self.handle(&received.message, received.at_ms, phase);
                        Ok(())
                    }
                    Err(error @ app::AppError::Timeout { .. }) => {
                        self.check_overdue(client, phase).await?;
                        drop(error);
                        Ok(())
                    }
                    Err(app::AppError::Malformed { .. }) => Ok(()),
                    Err(error) => Err(error),
                }
            }
        }
    }

    /// Accepts or refuses `inviter`'s invitation and tells the observer; a won accept
    /// waits for its PK's first push like a start.
    async fn answer(
        &mut self,
        client: &mut AppClient,
        phase: &mut Phase,
        answers: &InvitationAnswers,
        inviter: u64,
        received_ms: i64,
    ) -> Result<(), app::AppError> {
        let action = if self.rng.random_bool(answers.accept_chance.clamp(0.0, 1.0)) {
            InvitationAction::Accept
        } else {
            InvitationAction::Refuse
        };
        let result = match action {
            InvitationAction::Accept => client.accept(inviter).await,
            InvitationAction::Refuse => client.refuse(inviter).await,
        };
        let code = match &result {
            Ok(reply) => app::reply_code(reply).to_owned(),
            Err(app::AppError::Timeout { .. }) => "timeout".to_owned(),
            Err(error) if error.is_disconnect() => "disconnected".to_owned(),
            Err(_) => "error".to_owned(),
        };
        self.stats.invitations_answered.fetch_add(1, Ordering::Relaxed);
        if action == InvitationAction::Accept && code == "902004" {
            *phase = Phase::Matching { since: Instant::now() };
        }
        (answers.observer)(&InvitationAnswer {
            invitee: self.user,
            inviter,
            received_ms,
            action,
            code,
            answered_ms: wall_clock_ms(),
        });
        if result.is_ok() {
            self.drain_kept(client, phase);
        }
        result.map(drop)
    }

    fn drain_kept(&mut self, client: &mut AppClient, phase: &mut Phase) {
        for received in client.take_kept() {
            self.handle(&received.message, received.at_ms, phase);
        }
    }

    /// A message from the node: state pushes feed the roster and move the cycle on.
    fn handle(&mut self, message: &Value, at_ms: i64, phase: &mut Phase) {
        if app::is_push(message, 12)
            && self.behaviour.invitations.is_some()
            && let Some(inviter) = message["content"]["source"].as_u64()
        {
            self.invitations.push((inviter, at_ms));
            return;
        }
        if !app::is_push(message, 10) {
            return;
        }
        let content = &message["content"];
        self.roster.observe_state(content, at_ms);
        if let Some(observer) = &self.behaviour.observer {
            observer(self.reader(StateSource::Push, at_ms), content);
        }
        let (Some(pk), Some(status), Some(end_ms)) =
            (content["pkId"].as_u64(), content["status"].as_u64(), content["endTime"].as_i64())
        else {
            return;
        };
        match *phase {
            Phase::Matching { .. } | Phase::Idle { .. } if status < 2 => *phase = Phase::InPk { pk, end_ms },
            Phase::InPk { pk: current, .. } if current == pk && status >= 2 => *phase = self.after_pk(),
            _ => {}
        }
    }

    fn reader(&self, source: StateSource, at_ms: i64) -> Reader {
        Reader { user: self.user, connection: self.connections, node: self.connected_to, source, at_ms }
    }

    /// What the anchor does once its PK is over.
    fn after_pk(&mut self) -> Phase {
        if self.behaviour.off_air_chance > 0.0 && self.rng.random_bool(self.behaviour.off_air_chance.min(1.0)) {
            self.stats.off_air.fetch_add(1, Ordering::Relaxed);
            let away = Duration::from_millis(self.rng.random_range(1_000..3_000));
            return Phase::Leaving { until: Instant::now() + away };
        }
        let pause = self.pause();
        Phase::Idle { start_at: Instant::now() + pause }
    }

    /// The pause before a start: the linger for an anchor that lingers, else the think
    /// time.
    fn pause(&mut self) -> Duration {
        let linger = self.behaviour.invitations.as_ref().filter(|_| self.lingers).map(|answers| answers.linger);
        match linger.or(self.behaviour.think) {
            Some((least, most)) if most > least => {
                Duration::from_secs_f64(self.rng.random_range(least.as_secs_f64()..most.as_secs_f64()))
            }
            Some((least, _)) => least,
            None => Duration::ZERO,
        }
    }

    /// Nothing arrived for a while: a PK long past its end (its end push lost in a
    /// failover) is looked up, and an anchor left waiting alone starts over.
    async fn check_overdue(&mut self, client: &mut AppClient, phase: &mut Phase) -> Result<(), app::AppError> {
        if let Phase::InPk { end_ms, .. } = *phase
            && wall_clock_ms() > end_ms + 10_000
        {
            let reply = client.room_state(self.user).await?;
            let state = &reply["result"];
            if !state.is_object() || state["status"].as_u64().is_some_and(|status| status >= 2) {
                *phase = self.after_pk();
            }
            self.drain_kept(client, phase);
        }
        if let Phase::Matching { since } = *phase
            && since.elapsed() > Duration::from_secs(30)
        {
            // Waiting alone for long (an odd anchor out): stop and start over later.
            let _ = client.stop().await?;
            *phase = Phase::Idle { start_at: Instant::now() + Duration::from_secs(1) };
            self.drain_kept(client, phase);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(pk: u64, status: u64, start: i64, end: i64) -> Value {
        json!({"pkId": pk, "status": status, "startTime": start, "endTime": end, "sourceUser": 10 * pk,
               "targetUser": 10 * pk + 1})
    }

    #[test]
    fn the_roster_follows_pks_from_their_first_push_to_their_end() {
        let roster = Roster::new(None);
        roster.measure_ends_from(0);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        roster.observe_state(&state(1, 0, 1_000, 10_000), 1_000);
        assert!(roster.pick(&mut rng, 2_000, 500).is_none(), "the opening is unknown until a push shows the battle");
        roster.observe_state(&state(1, 1, 1_000, 10_000), 2_500);
        let pk = roster.pick(&mut rng, 3_000, 500).expect("in its battle");
        assert_eq!((pk.id, pk.source, pk.target, pk.battle_from_ms), (1, 10, 11, Some(2_500)));
        assert!(roster.pick(&mut rng, 9_800, 500).is_none(), "too little battle left");
        roster.observe_state(&state(1, 2, 1_000, 10_000), 10_042);
        roster.observe_state(&state(1, 2, 1_000, 10_000), 10_050);
        roster.observe_state(&state(1, 1, 1_000, 10_000), 10_060);
        let report = roster.report(20_000);
        assert_eq!((report.pks_created, report.pks_ended, report.pks_running), (1, 1, 0));
        let lateness = roster.lateness().expect("one end measured");
        assert_eq!(lateness.len(), 1, "the settlement's repeated end is not counted again");
        assert_eq!(lateness.max(), lateness.highest_equivalent(42_000));
    }

    #[test]
    fn a_known_opening_makes_a_pk_pickable_from_its_battle_on() {
        let roster = Roster::new(Some(300));
        let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
        roster.observe_state(&state(7, 0, 1_000, 9_000), 1_001);
        assert!(roster.pick(&mut rng, 1_200, 500).is_none());
        assert_eq!(roster.pick(&mut rng, 1_300, 500).map(|pk| pk.id), Some(7));
        roster.observe_state(&state(7, 3, 1_000, 9_000), 5_000);
        let report = roster.report(20_000);
        assert_eq!((report.pks_ended_abnormally, report.ends_missed), (1, 0));
        assert!(roster.lateness().is_none(), "an abnormal end has no lateness");
    }
}
