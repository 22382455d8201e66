//! Keeping the Redis read cache in step with one group, on that group's leader.
//!
//! The lobby's leader writes the directory keys (`pkm`, `pkr`, `room_pk_invited`); each
//! arena's leader writes the keys of its own PKs (`pk_`, `pkg_`). Nobody writes another
//! group's keys. Every write carries the group's log index and is refused if the cache
//! holds a later one (`crate::sinks::redis_cache`), so no value ever goes backwards.
//!
//! - **Current on every change**, coalesced: the group's `CacheChanged` and `PkChanged`
//!   effects (gifts, presence, phases) gather for [`CacheConfig::coalesce`] and go out
//!   in one script call: a gift storm costs at most one write per PK per interval. A PK
//!   is rendered from this leader's own replica at the time of writing, so the opening's
//!   end shows when it comes, with no command to mark it.
//! - **Repaired within seconds**: the group's marker key is checked every
//!   [`CacheConfig::check_every`]; a missing marker (a flush, an eviction, an empty
//!   Redis) gets the group's keys rewritten at once. Renewing the keys' expiry every
//!   `RENEW_EVERY` also finds a single lost `pk_` key.
//! - **The end stays readable**: an ended PK's final state replaces its `pk_` key and
//!   stays for `ENDED_TTL_SECONDS`; `pkr` loses its rooms at once (the lobby's release).
//!   The replica forgets an ended PK, so the duty keeps its final state and its gifters'
//!   totals, for a rewrite (after a failed write, or on a new leader, which keeps the
//!   ends among the effects it had queued) to write them again.
//!
//! A Redis outage only delays these writes: the duty counts the error, backs off and
//! rewrites its keys once Redis answers again. The engine never waits for it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use pkd_raft::effect::CacheChange;
use pkd_raft::{Arena, Effect, Lobby, PkId, PkStatus, PkView, TimestampMs, UserId};
use tokio::sync::broadcast::{self, error::TryRecvError};
use tokio::time::Instant;

use super::results::timed;
use super::{Duty, MIN_BACKOFF, Step};
use crate::clock::wall_clock;
use crate::replication::consensus::GroupId;
use crate::replication::node::Node;
use crate::replication::replica::{ReplicaHandle, TaggedEffect};
use crate::retry::Backoff;
use crate::sinks::redis_cache::{self, Directory, Op, RunningPk, Writes, Written};
use crate::sinks::{RedisCache, SinkMetrics};

/// How the cache duty paces itself.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Changes gather this long before they go out together.
    pub coalesce: Duration,
    /// How often the group's marker key is checked (a lost cache is rewritten then).
    pub check_every: Duration,
    /// How often the group's keys are rewritten as a whole regardless.
    pub refresh_every: Duration,
    /// The cap of the retry backoff while Redis is down.
    pub max_backoff: Duration,
    /// How long one Redis operation may take before it counts as failed.
    pub operation_timeout: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            coalesce: Duration::from_millis(100),
            check_every: Duration::from_secs(1),
            refresh_every: Duration::from_secs(300),
            max_backoff: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(5),
        }
    }
}

/// Whose keys a cache duty writes.
enum Keys {
    /// The lobby's: `pkm`, `pkr`, `room_pk_invited`.
    Directory(ReplicaHandle<Lobby>),
    /// An arena's: `pk_` and `pkg_` of its PKs.
    Arena(ReplicaHandle<Arena>),
}

/// Changes gathered since the last write.
#[derive(Default)]
struct Pending {
    /// Directory operations, in order.
    directory: Vec<Op>,
    /// PKs to render again.
    pks: BTreeSet<PkId>,
    /// New gifter totals: (PK, receiving anchor) → sender → beans.
    gifters: BTreeMap<(PkId, UserId), BTreeMap<UserId, i64>>,
    /// PKs that ended: their final state.
    ended: BTreeMap<PkId, (Box<PkView>, [UserId; 2])>,
    /// The log index of the latest effect gathered: the directory's operations are as of
    /// it (not as of the replica's index when they go out, which may hold entries of a new
    /// leader that has rewritten the keys since).
    index: u64,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.directory.is_empty() && self.pks.is_empty() && self.gifters.is_empty() && self.ended.is_empty()
    }

    fn count(&self) -> u64 {
        (self.directory.len()
            + self.pks.len()
            + self.gifters.values().map(BTreeMap::len).sum::<usize>()
            + self.ended.len()) as u64
    }

    fn take(&mut self, change: CacheChange) {
        match change {
            CacheChange::Matching { anchor, since } => self.directory.push(redis_cache::matching_op(anchor, since)),
            CacheChange::RoomInPk { room, pk } => self.directory.push(redis_cache::room_op(room, pk)),
            CacheChange::Invited { anchor, at } => self.directory.push(redis_cache::invited_op(anchor, at)),
            CacheChange::Pk { pk } => {
                self.pks.insert(pk);
            }
            CacheChange::GifterTotal { pk, anchor, sender, beans } => {
                self.gifters.entry((pk, anchor)).or_default().insert(sender, beans);
            }
            CacheChange::PkEnded { pk, anchors, final_view } => {
                self.pks.remove(&pk);
                if end_is_written(pk) {
                    self.ended.insert(pk, (final_view, anchors));
                }
            }
        }
    }
}

/// The cache duty of one group.
pub struct Cache {
    node: Node,
    group: GroupId,
    keys: Keys,
    cache: RedisCache,
    config: CacheConfig,
    metrics: Arc<SinkMetrics>,
    effects: broadcast::Receiver<TaggedEffect>,
    /// The group's keys must be rewritten from the replica.
    stale: bool,
    /// After gaining the lead: writes wait until the replica has applied this index, so
    /// that this leader never writes older values than its predecessor did.
    catch_up_to: Option<u64>,
    pending: Pending,
    last_write: Instant,
    next_check: Instant,
    next_renew: Instant,
    next_refresh: Instant,
    /// Running PKs last written in their opening, by when it ends.
    openings: BTreeMap<TimestampMs, BTreeSet<PkId>>,
    /// Running PKs and their anchors, as last written (for renewing their keys).
    running: BTreeMap<PkId, [UserId; 2]>,
    /// PKs that ended here lately, with their final state and when they ended: a rewrite
    /// (after a failed write, say) writes their final state again while the cache should
    /// still show it.
    ended: BTreeMap<PkId, (Box<PkView>, [UserId; 2], Instant)>,
    /// Every gifter's total on each side of the PKs running or ended lately, as the
    /// effects told them: a rewrite writes an ended PK's again (the replica no longer has
    /// them, and gifts counted while Redis was away never reached its `pkg_` keys).
    totals: GifterTotals,
}

/// (PK, receiving anchor) → sender → beans.
type GifterTotals = BTreeMap<(PkId, UserId), BTreeMap<UserId, i64>>;

/// Raises `into`'s totals to those of `from` (a total never goes down).
fn merge_totals(into: &mut GifterTotals, from: &GifterTotals) {
    for (side, senders) in from {
        let known = into.entry(*side).or_default();
        for (sender, beans) in senders {
            let total = known.entry(*sender).or_insert(*beans);
            *total = (*total).max(*beans);
        }
    }
}

impl Cache {
    /// The lobby's cache duty: the directory keys.
    pub fn directory(node: &Node, cache: RedisCache, config: CacheConfig, metrics: Arc<SinkMetrics>) -> Cache {
        let replica = node.lobby().clone();
        let effects = replica.subscribe_effects();
        Cache::new(node, replica.group(), Keys::Directory(replica), effects, cache, config, metrics)
    }

    /// An arena's cache duty: its PKs' keys.
    pub fn arena(
        node: &Node,
        replica: &ReplicaHandle<Arena>,
        cache: RedisCache,
        config: CacheConfig,
        metrics: Arc<SinkMetrics>,
    ) -> Cache {
        let effects = replica.subscribe_effects();
        Cache::new(node, replica.group(), Keys::Arena(replica.clone()), effects, cache, config, metrics)
    }

    fn new(
        node: &Node,
        group: GroupId,
        keys: Keys,
        effects: broadcast::Receiver<TaggedEffect>,
        cache: RedisCache,
        config: CacheConfig,
        metrics: Arc<SinkMetrics>,
    ) -> Cache {
        let now = Instant::now();
        Cache {
            node: node.clone(),
            group,
            keys,
            cache,
            next_refresh: now + config.refresh_every,
            config,
            metrics,
            effects,
            stale: true,
            catch_up_to: None,
            pending: Pending::default(),
            last_write: now,
            next_check: now,
            next_renew: now + redis_cache::RENEW_EVERY,
            openings: BTreeMap::new(),
            running: BTreeMap::new(),
            ended: BTreeMap::new(),
            totals: BTreeMap::new(),
        }
    }

    fn applied(&self) -> u64 {
        match &self.keys {
            Keys::Directory(replica) => replica.last_applied_index(),
            Keys::Arena(replica) => replica.last_applied_index(),
        }
        .unwrap_or(0)
    }

    /// Gathers the group's pending effects; `false` if some were lost.
    fn gather(&mut self) -> bool {
        loop {
            match self.effects.try_recv() {
                Ok(TaggedEffect { effect: Effect::CacheChanged(change), index, .. }) => {
                    self.pending.index = self.pending.index.max(index);
                    self.pending.take(change);
                }
                Ok(TaggedEffect { effect: Effect::PkChanged { pk }, index, .. }) => {
                    self.pending.index = self.pending.index.max(index);
                    self.pending.pks.insert(pk);
                }
                Ok(_) => {}
                Err(TryRecvError::Lagged(_)) => return false,
                Err(TryRecvError::Empty | TryRecvError::Closed) => return true,
            }
        }
    }

    async fn send(&mut self, writes: Writes, what: &'static str) -> Result<Written, Step> {
        let limit = self.config.operation_timeout;
        match timed(what, limit, self.cache.write(&writes)).await {
            Ok(written) => Ok(written),
            Err(error) => {
                SinkMetrics::add(&self.metrics.cache_errors, 1);
                tracing::warn!(group = %self.group, %error, "Redis cache write failed; the group's keys will be rewritten");
                self.stale = true;
                Err(Step::Failed)
            }
        }
    }

    /// Keeps the ends among the effects gathered or still queued, which are about to be
    /// dropped: a rewrite reads the running PKs from the replica, but an ended PK's final
    /// state only ever comes in its effect. Without this, an end applied just before this
    /// node took the lead (or while it caught up), whose write the last leader had not
    /// made, would leave the PK's key in its battle until it expired.
    fn keep_ends(&mut self) {
        let now = Instant::now();
        for (pk, (final_view, anchors)) in std::mem::take(&mut self.pending.ended) {
            self.ended.insert(pk, (final_view, anchors, now));
        }
        merge_totals(&mut self.totals, &std::mem::take(&mut self.pending.gifters));
        // An end older than its keys' expiry stays out (a follower's queue may be long).
        let shown_since = wall_clock().plus(-redis_cache::ENDED_TTL_SECONDS * 1_000);
        loop {
            match self.effects.try_recv() {
                Ok(TaggedEffect {
                    effect: Effect::CacheChanged(CacheChange::PkEnded { pk, anchors, final_view }),
                    ..
                }) => {
                    if end_is_written(pk) && final_view.end_time >= shown_since {
                        self.running.remove(&pk);
                        self.ended.insert(pk, (final_view, anchors, now));
                    }
                }
                Ok(TaggedEffect {
                    effect: Effect::CacheChanged(CacheChange::GifterTotal { pk, anchor, sender, beans }),
                    ..
                }) => {
                    let side = GifterTotals::from([((pk, anchor), BTreeMap::from([(sender, beans)]))]);
                    merge_totals(&mut self.totals, &side);
                }
                Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }

    /// Rewrites the group's keys from its replica as a whole.
    async fn rewrite(&mut self) -> Step {
        // Effects gathered or still queued are covered by what is read now, but for the
        // ends, which are kept.
        if matches!(self.keys, Keys::Arena(_)) {
            self.keep_ends();
        }
        self.effects = self.effects.resubscribe();
        self.pending = Pending::default();
        let now = wall_clock();
        let (index, ops) = match &self.keys {
            Keys::Directory(replica) => {
                let (directory, index) = replica.read_at(directory);
                (index, redis_cache::directory_ops(&directory))
            }
            Keys::Arena(replica) => {
                let (running, index) = replica.read_at(|arena| running_pks(arena, now));
                self.running.clear();
                self.openings.clear();
                let mut ops = Vec::new();
                for pk in &running {
                    ops.extend(redis_cache::running_pk_ops(pk, index));
                    self.note_running(&pk.view);
                }
                self.forget_old_ends();
                for (final_view, anchors, _) in self.ended.values() {
                    for anchor in anchors {
                        let Some(senders) = self.totals.get(&(final_view.pk, *anchor)) else { continue };
                        let totals: Vec<(UserId, i64)> =
                            senders.iter().map(|(sender, beans)| (*sender, *beans)).collect();
                        ops.extend(redis_cache::gifter_ops(
                            final_view.pk,
                            *anchor,
                            &totals,
                            redis_cache::LIVE_TTL_SECONDS,
                        ));
                    }
                    ops.extend(redis_cache::ended_pk_ops(final_view, *anchors, index));
                }
                (index, ops)
            }
        };
        let writes = Writes { group: self.group.0, index, rewrite: true, ops };
        match self.send(writes, "rewriting a group's cache keys").await {
            Ok(_) => {
                SinkMetrics::add(&self.metrics.cache_rebuilds, 1);
                self.stale = false;
                let now = Instant::now();
                self.last_write = now;
                self.next_refresh = now + self.config.refresh_every;
                Step::Worked
            }
            Err(step) => step,
        }
    }

    /// Forgets the ended PKs whose final state the cache no longer shows.
    fn forget_old_ends(&mut self) {
        let keep = Duration::from_secs(redis_cache::ENDED_TTL_SECONDS.unsigned_abs());
        self.ended.retain(|_, (_, _, at)| at.elapsed() < keep);
        let (ended, running) = (&self.ended, &self.running);
        self.totals.retain(|(pk, _), _| ended.contains_key(pk) || running.contains_key(pk));
    }

    /// Remembers a running PK written as `view`: its anchors, and when its opening ends.
    fn note_running(&mut self, view: &PkView) {
        self.running.insert(view.pk, [view.source.anchor, view.target.anchor]);
        if view.status == PkStatus::Opening
            && let Keys::Arena(replica) = &self.keys
            && let Some(battle_start) = replica.read(|arena| arena.battle_start(view.pk))
        {
            self.openings.entry(battle_start).or_default().insert(view.pk);
        }
    }

    /// Writes what gathered.
    async fn flush(&mut self) -> Step {
        let pending = std::mem::take(&mut self.pending);
        merge_totals(&mut self.totals, &pending.gifters);
        let count = pending.count();
        let now = wall_clock();
        let (index, ops) = match &self.keys {
            Keys::Directory(_) => {
                let mut ops = pending.directory;
                ops.extend(redis_cache::directory_expiries());
                (pending.index, ops)
            }
            Keys::Arena(replica) => {
                let pks: Vec<PkId> = pending.pks.iter().copied().collect();
                let (views, index) = replica
                    .read_at(|arena| pks.iter().filter_map(|pk| arena.view_at(*pk, now)).collect::<Vec<PkView>>());
                let mut ops = Vec::new();
                for view in &views {
                    ops.extend(redis_cache::pk_ops(view, index, redis_cache::LIVE_TTL_SECONDS));
                }
                for ((pk, anchor), totals) in &pending.gifters {
                    if pending.ended.contains_key(pk) || self.running.contains_key(pk) || pending.pks.contains(pk) {
                        let totals: Vec<(UserId, i64)> =
                            totals.iter().map(|(sender, beans)| (*sender, *beans)).collect();
                        ops.extend(redis_cache::gifter_ops(*pk, *anchor, &totals, redis_cache::LIVE_TTL_SECONDS));
                    }
                }
                for (final_view, anchors) in pending.ended.values() {
                    ops.extend(redis_cache::ended_pk_ops(final_view, *anchors, index));
                }
                for view in &views {
                    self.note_running(view);
                }
                let now = Instant::now();
                for (pk, (final_view, anchors)) in &pending.ended {
                    self.running.remove(pk);
                    self.ended.insert(*pk, (final_view.clone(), *anchors, now));
                }
                if !pending.ended.is_empty() {
                    self.forget_old_ends();
                }
                (index, ops)
            }
        };
        let writes = Writes { group: self.group.0, index, rewrite: false, ops };
        self.last_write = Instant::now();
        match self.send(writes, "applying cache changes").await {
            Ok(Written::Applied { .. }) => {
                SinkMetrics::add(&self.metrics.cache_batches, 1);
                SinkMetrics::add(&self.metrics.cache_changes, count);
                Step::Worked
            }
            // A later write of this group is in the cache already: these are covered.
            Ok(Written::Stale) => Step::Worked,
            Ok(Written::MarkerLost) => {
                tracing::warn!(group = %self.group, "the cache lost this group's keys; rewriting them");
                self.stale = true;
                Step::Worked
            }
            Err(step) => step,
        }
    }

    /// Renews the expiry of the group's keys (the live leader keeps them alive); a lost
    /// `pk_` key gets the group's keys rewritten.
    async fn renew(&mut self) -> Step {
        let ops: Vec<Op> = match &self.keys {
            Keys::Directory(_) => redis_cache::directory_expiries(),
            Keys::Arena(_) => {
                self.running.iter().flat_map(|(pk, anchors)| redis_cache::running_pk_expiries(*pk, *anchors)).collect()
            }
        };
        let writes = Writes { group: self.group.0, index: self.applied(), rewrite: false, ops };
        self.next_renew = Instant::now() + redis_cache::RENEW_EVERY;
        match self.send(writes, "renewing cache keys").await {
            Ok(Written::Applied { missing }) if missing > 0 => {
                tracing::warn!(group = %self.group, missing, "cache keys were lost; rewriting the group's keys");
                self.stale = true;
                Step::Worked
            }
            Ok(Written::MarkerLost) => {
                self.stale = true;
                Step::Worked
            }
            Ok(_) => Step::Worked,
            Err(step) => step,
        }
    }
}

impl Duty for Cache {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn lead(&mut self) {
        // What happened before this leadership is covered by the rewrite, once the replica
        // holds everything the last leader may have written; but for the ends, which only
        // their effects carry.
        if matches!(self.keys, Keys::Arena(_)) {
            self.keep_ends();
        }
        self.effects = self.effects.resubscribe();
        self.pending = Pending::default();
        self.stale = true;
        // The leader's log ends with the first entry of its term, which commits everything
        // before it: once that is applied, the replica holds all any earlier leader wrote.
        let last_log =
            self.node.group(self.group).ok().and_then(|group| group.metrics().read(|metrics| metrics.last_log_index));
        self.catch_up_to = Some(last_log.unwrap_or(0));
    }

    async fn step(&mut self) -> Step {
        if let Some(target) = self.catch_up_to {
            if self.applied() < target {
                return Step::Idle(Some(Duration::from_millis(50)));
            }
            self.catch_up_to = None;
        }
        let now = Instant::now();
        if now >= self.next_refresh {
            self.stale = true;
        }
        if self.stale {
            return self.rewrite().await;
        }
        if !self.gather() {
            SinkMetrics::add(&self.metrics.cache_lagged, 1);
            tracing::warn!(group = %self.group, "the cache duty fell behind and lost effects; rewriting");
            self.stale = true;
            return Step::Worked;
        }
        if now >= self.next_check {
            self.next_check = now + self.config.check_every;
            match timed("checking the cache marker", self.config.operation_timeout, self.cache.has_marker(self.group.0))
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(group = %self.group, "the cache lost this group's marker; rewriting its keys");
                    self.stale = true;
                    return Step::Worked;
                }
                Err(error) => {
                    SinkMetrics::add(&self.metrics.cache_errors, 1);
                    tracing::warn!(group = %self.group, %error, "Redis unavailable");
                    self.stale = true;
                    return Step::Failed;
                }
            }
        }
        if now >= self.next_renew {
            return self.renew().await;
        }
        // Openings that ended since: those PKs are written again, in their battle.
        let clock = wall_clock();
        while let Some(entry) = self.openings.first_entry() {
            if *entry.key() > clock {
                break;
            }
            self.pending.pks.extend(entry.remove());
        }
        if !self.pending.is_empty() {
            let since = now.saturating_duration_since(self.last_write);
            if since < self.config.coalesce {
                return Step::Sleep(self.config.coalesce - since);
            }
            return self.flush().await;
        }
        let next_opening = self
            .openings
            .keys()
            .next()
            .map(|at| Duration::from_millis(u64::try_from(at.since(clock)).unwrap_or(0) + 1));
        let wait = [Some(self.next_check - now), Some(self.next_renew - now), next_opening].into_iter().flatten().min();
        Step::Idle(wait)
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(MIN_BACKOFF, self.config.max_backoff)
    }
}

/// Whether a PK's end is written to the cache: always, unless a deliberately broken
/// build leaves some out (`stale-cache`, fault tests).
fn end_is_written(pk: PkId) -> bool {
    #[cfg(feature = "fault-injection")]
    if crate::fault_hooks::skips_cached_end(pk.0) {
        return false;
    }
    let _ = pk;
    true
}

/// The directory keys' content from the lobby's replica.
fn directory(lobby: &Lobby) -> Directory {
    Directory {
        matching: lobby.waiting_anchors().collect(),
        invited: lobby.cooldowns().collect(),
        rooms_in_pk: lobby
            .held_pks()
            .flat_map(|(pk, seats)| seats.into_iter().map(move |seat| (seat.room, pk)))
            .collect(),
    }
}

/// An arena's running PKs as they stand at `now`, with every gifter's total on each side.
fn running_pks(arena: &Arena, now: TimestampMs) -> Vec<RunningPk> {
    arena
        .running()
        .filter_map(|pk| {
            let view = arena.view_at(pk, now)?;
            let [source_gifters, target_gifters] = arena.gifter_totals(pk)?;
            Some(RunningPk { view, source_gifters, target_gifters })
        })
        .collect()
}
