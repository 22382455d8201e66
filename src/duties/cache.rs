//! Keeping the Redis read cache in step with one group, on that group's leader.
//!
//! The lobby's leader writes the directory keys (`pkm`, `pkr`, `room_pk_invited`); each
//! arena's leader writes the keys of its own PKs (`pk_`, `pkg_`). Each applies its group's
//! `CacheChanged` effects, one pipeline per batch, rendering PKs from its own replica (a
//! leader's replica holds every acknowledged write), and rewrites its group's keys when it
//! gains the lead, after a Redis error, after losing effects, and every
//! [`CacheConfig::refresh_every`] (which also renews the keys' expiry).
//!
//! A Redis outage only delays these writes: the duty counts the error, backs off and
//! rewrites its keys once Redis answers again. The engine never waits for it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use pkd_raft::effect::CacheChange;
use pkd_raft::{Arena, Effect, Lobby, PkView};
use tokio::sync::broadcast::{self, error::TryRecvError};
use tokio::time::Instant;

use super::results::timed;
use super::{Duty, MIN_BACKOFF, Step};
use crate::clock::wall_clock;
use crate::replication::consensus::GroupId;
use crate::replication::node::Node;
use crate::replication::replica::{ReplicaHandle, TaggedEffect};
use crate::retry::Backoff;
use crate::sinks::{CacheSnapshot, RedisCache, RunningPk, SinkMetrics};
use crate::topology::Topology;

/// How the cache duty paces itself.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// At most this many effects per pipeline.
    pub batch: usize,
    /// How often the group's keys are rewritten from the replica regardless (this also
    /// renews the keys' expiry, an hour for the directory keys).
    pub refresh_every: Duration,
    /// The cap of the retry backoff while Redis is down.
    pub max_backoff: Duration,
    /// How long one Redis operation may take before it counts as failed.
    pub operation_timeout: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            batch: 2_000,
            refresh_every: Duration::from_secs(30),
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

/// The cache duty of one group.
pub struct Cache {
    group: GroupId,
    topology: Topology,
    keys: Keys,
    cache: RedisCache,
    config: CacheConfig,
    metrics: Arc<SinkMetrics>,
    effects: broadcast::Receiver<TaggedEffect>,
    /// The group's keys must be rewritten from the replica.
    stale: bool,
    next_refresh: Instant,
}

impl Cache {
    /// The lobby's cache duty: the directory keys.
    pub fn directory(node: &Node, cache: RedisCache, config: CacheConfig, metrics: Arc<SinkMetrics>) -> Cache {
        let effects = node.lobby().subscribe_effects();
        Cache::new(node, Keys::Directory(node.lobby().clone()), effects, cache, config, metrics)
    }

    /// An arena's cache duty: its PKs' keys.
    pub fn arena(
        node: &Node,
        replica: &ReplicaHandle<Arena>,
        cache: RedisCache,
        config: CacheConfig,
        metrics: Arc<SinkMetrics>,
    ) -> Cache {
        Cache::new(node, Keys::Arena(replica.clone()), replica.subscribe_effects(), cache, config, metrics)
    }

    fn new(
        node: &Node,
        keys: Keys,
        effects: broadcast::Receiver<TaggedEffect>,
        cache: RedisCache,
        config: CacheConfig,
        metrics: Arc<SinkMetrics>,
    ) -> Cache {
        let group = match &keys {
            Keys::Directory(replica) => replica.group(),
            Keys::Arena(replica) => replica.group(),
        };
        Cache {
            group,
            topology: node.topology(),
            keys,
            cache,
            next_refresh: Instant::now() + config.refresh_every,
            config,
            metrics,
            effects,
            stale: true,
        }
    }

    /// The group's pending cache changes, up to a batch; `None` if effects were lost.
    fn take_changes(&mut self) -> Option<Vec<CacheChange>> {
        let mut changes = Vec::new();
        while changes.len() < self.config.batch {
            match self.effects.try_recv() {
                Ok(TaggedEffect { effect: Effect::CacheChanged(change), .. }) => changes.push(change),
                Ok(_) => {}
                Err(TryRecvError::Lagged(_)) => return None,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        Some(changes)
    }

    async fn apply(&mut self, mut changes: Vec<CacheChange>) -> Step {
        // One rendering per PK and batch: it reads the replica's latest state anyway.
        let mut rendered = BTreeSet::new();
        changes.retain(|change| match change {
            CacheChange::Pk { pk } => rendered.insert(*pk),
            _ => true,
        });
        let count = changes.len() as u64;
        let arena = match &self.keys {
            Keys::Arena(replica) => Some(replica.clone()),
            Keys::Directory(_) => None,
        };
        let render = |pk| arena.as_ref().and_then(|replica| render(replica, pk));
        let write = self.cache.apply(&changes, render);
        match timed("applying cache changes", self.config.operation_timeout, write).await {
            Ok(()) => {
                SinkMetrics::add(&self.metrics.cache_batches, 1);
                SinkMetrics::add(&self.metrics.cache_changes, count);
                Step::Worked
            }
            Err(error) => self.failed(&error),
        }
    }

    /// Rewrites the group's keys from its replica: the directory keys for the lobby, the
    /// running PKs' keys (and no other keys of this arena's PKs) for an arena.
    async fn refresh(&mut self) -> Step {
        let limit = self.config.operation_timeout;
        let outcome = match &self.keys {
            Keys::Directory(replica) => {
                let snapshot = replica.read(directory);
                timed("rewriting the directory keys", limit, self.cache.rebuild_directory(&snapshot)).await
            }
            Keys::Arena(replica) => {
                let running = replica.read(running_pks);
                let (topology, group) = (self.topology, self.group);
                let write = self.cache.rebuild_pks(&running, |pk| topology.arena_of(pk) == group);
                timed("rewriting an arena's PK keys", limit, write).await
            }
        };
        match outcome {
            Ok(_) => {
                SinkMetrics::add(&self.metrics.cache_rebuilds, 1);
                self.stale = false;
                Step::Worked
            }
            Err(error) => self.failed(&error),
        }
    }

    fn failed(&mut self, error: &super::results::SinkError) -> Step {
        SinkMetrics::add(&self.metrics.cache_errors, 1);
        tracing::warn!(group = %self.group, %error, "Redis cache write failed; the group's keys will be rewritten");
        self.stale = true;
        Step::Failed
    }
}

impl Duty for Cache {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn lead(&mut self) {
        // What happened before this leadership is covered by the rewrite.
        self.effects = self.effects.resubscribe();
        self.stale = true;
    }

    async fn step(&mut self) -> Step {
        let now = Instant::now();
        if now >= self.next_refresh {
            self.stale = true;
            self.next_refresh = now + self.config.refresh_every;
        }
        if self.stale {
            // Effects from before the rewrite are covered by it.
            self.effects = self.effects.resubscribe();
            return self.refresh().await;
        }
        match self.take_changes() {
            None => {
                SinkMetrics::add(&self.metrics.cache_lagged, 1);
                tracing::warn!(group = %self.group, "the cache duty fell behind and lost effects; rewriting");
                self.stale = true;
                Step::Worked
            }
            Some(changes) if changes.is_empty() => Step::Idle(Some(self.next_refresh - now)),
            Some(changes) => self.apply(changes).await,
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(MIN_BACKOFF, self.config.max_backoff)
    }
}

/// A PK's state as it stands now (the phase follows the clock).
fn render(replica: &ReplicaHandle<Arena>, pk: pkd_raft::PkId) -> Option<PkView> {
    let now = wall_clock();
    replica.read(|arena| arena.view_at(pk, now))
}

/// The directory keys' content from the lobby's replica.
fn directory(lobby: &Lobby) -> CacheSnapshot {
    CacheSnapshot {
        matching: lobby.waiting_anchors().collect(),
        invited: lobby.cooldowns().collect(),
        rooms_in_pk: lobby
            .held_pks()
            .flat_map(|(pk, seats)| seats.into_iter().map(move |seat| (seat.room, pk)))
            .collect(),
        pks: Vec::new(),
    }
}

/// An arena's running PKs, with every gifter's total on each side.
fn running_pks(arena: &Arena) -> Vec<RunningPk> {
    let now = wall_clock();
    arena
        .running()
        .filter_map(|pk| {
            let view = arena.view_at(pk, now)?;
            let [source_gifters, target_gifters] = arena.gifter_totals(pk)?;
            Some(RunningPk { view, source_gifters, target_gifters })
        })
        .collect()
}
