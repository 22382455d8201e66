//! The drivers that carry replicated state into the sinks: settled results into the SQL
//! results store, and cache changes into Redis.
//!
//! Both act only where this node leads a group, and both read what they write from the
//! local replica rather than trusting the effect stream alone: effects covered by an
//! installed snapshot are never published, and a slow subscriber loses effects. So:
//!
//! - The **results driver** (one task per arena) works from the arena's outbox
//!   ([`pkd_raft::Arena::pending_results`]): it writes the pending results, reads them
//!   back (repairing any difference), and only then proposes
//!   `ConfirmResultPersisted`. A new leader simply resumes from the outbox; the writes are
//!   idempotent upserts, so a result written twice leaves the same rows. While a PK runs,
//!   the driver also writes its `t_pk` row once and its gifters' totals at a bounded rate.
//! - The **cache driver** (one task per node) applies the `CacheChanged` effects of the
//!   groups this node leads, one pipeline per batch, and rewrites the cache from the
//!   replicas when it gains a group, after a Redis error, after losing effects, and every
//!   [`CacheDriverConfig::refresh_every`] (which also renews the keys' expiry).
//!
//! A database or Redis outage only delays these writes: the drivers count the error, back
//! off (doubling up to a cap) and try again. The engine never waits for them.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pkd_raft::effect::{CacheChange, SettledPk};
use pkd_raft::{Action, Effect, PkId, PkView};
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::{CacheError, CacheSnapshot, RedisCache, ResultsStore, RunningPk, StoreError};
use crate::consensus::GroupId;
use crate::group::ProposeError;
use crate::node::{LOBBY, Node, wall_clock};
use crate::retry::Backoff;

/// Why one round of a driver failed. The driver logs it, counts it and tries again.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("confirming a stored result failed: {0}")]
    Propose(#[from] ProposeError),
    #[error("{0} did not answer within {1:?}")]
    Timeout(&'static str, Duration),
}

/// Counters of the sink drivers, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    results_written: AtomicU64,
    results_confirmed: AtomicU64,
    results_repaired: AtomicU64,
    results_errors: AtomicU64,
    started_written: AtomicU64,
    gift_totals_written: AtomicU64,
    result_lag_last_ms: AtomicU64,
    result_lag_max_ms: AtomicU64,
    cache_batches: AtomicU64,
    cache_changes: AtomicU64,
    cache_rebuilds: AtomicU64,
    cache_errors: AtomicU64,
    cache_lagged: AtomicU64,
}

/// A copy of [`SinkMetrics`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SinkCounters {
    /// Settled PKs written to the results store (a rewrite after a failure counts again).
    pub results_written: u64,
    /// `ConfirmResultPersisted` commands accepted by the arenas.
    pub results_confirmed: u64,
    /// Settled PKs whose rows differed from the engine's result when read back, and were
    /// rewritten.
    pub results_repaired: u64,
    /// Failed rounds of the results drivers (database down, a confirmation refused).
    pub results_errors: u64,
    /// Running PKs whose `t_pk` row was written.
    pub started_written: u64,
    /// Running PKs' gifter totals written to `t_pk_gift`.
    pub gift_totals_written: u64,
    /// How long after it settled (engine time) the last stored PK was written, in ms.
    pub result_lag_last_ms: u64,
    /// The largest such delay seen.
    pub result_lag_max_ms: u64,
    /// Pipelines of cache changes sent to Redis.
    pub cache_batches: u64,
    /// Cache changes applied.
    pub cache_changes: u64,
    /// Rewrites of the cache (or of one arena's keys) from the replicas.
    pub cache_rebuilds: u64,
    /// Failed Redis operations.
    pub cache_errors: u64,
    /// Times the cache driver fell behind the effect stream and lost effects.
    pub cache_lagged: u64,
}

impl SinkCounters {
    /// The counters in Prometheus' text format (`GET /metrics`). Names follow
    /// `pkd_<subsystem>_<what>_<unit>`; no label carries a user or PK id.
    pub fn to_prometheus(&self) -> String {
        let rows: [(&str, &str, &str, u64); 13] = [
            ("pkd_results_written_total", "counter", "settled PKs written to the results store", self.results_written),
            (
                "pkd_results_confirmed_total",
                "counter",
                "settled PKs confirmed persisted through raft",
                self.results_confirmed,
            ),
            (
                "pkd_results_repaired_total",
                "counter",
                "settled PKs whose stored rows differed and were rewritten",
                self.results_repaired,
            ),
            ("pkd_results_errors_total", "counter", "failed results store operations", self.results_errors),
            ("pkd_results_started_written_total", "counter", "running PKs' start rows written", self.started_written),
            (
                "pkd_results_gift_totals_written_total",
                "counter",
                "running PKs' gifter totals written",
                self.gift_totals_written,
            ),
            ("pkd_results_lag_last_milliseconds", "gauge", "settlement to stored, last PK", self.result_lag_last_ms),
            ("pkd_results_lag_max_milliseconds", "gauge", "settlement to stored, worst PK", self.result_lag_max_ms),
            ("pkd_cache_batches_total", "counter", "pipelined Redis batches", self.cache_batches),
            ("pkd_cache_changes_total", "counter", "cache changes applied to Redis", self.cache_changes),
            ("pkd_cache_rebuilds_total", "counter", "full Redis rebuilds from the replicas", self.cache_rebuilds),
            ("pkd_cache_errors_total", "counter", "failed Redis operations", self.cache_errors),
            ("pkd_cache_lagged_total", "counter", "times the cache driver fell behind the effects", self.cache_lagged),
        ];
        let mut text = String::new();
        for (name, kind, help, value) in rows {
            text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        }
        text
    }
}

impl SinkMetrics {
    pub fn snapshot(&self) -> SinkCounters {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SinkCounters {
            results_written: get(&self.results_written),
            results_confirmed: get(&self.results_confirmed),
            results_repaired: get(&self.results_repaired),
            results_errors: get(&self.results_errors),
            started_written: get(&self.started_written),
            gift_totals_written: get(&self.gift_totals_written),
            result_lag_last_ms: get(&self.result_lag_last_ms),
            result_lag_max_ms: get(&self.result_lag_max_ms),
            cache_batches: get(&self.cache_batches),
            cache_changes: get(&self.cache_changes),
            cache_rebuilds: get(&self.cache_rebuilds),
            cache_errors: get(&self.cache_errors),
            cache_lagged: get(&self.cache_lagged),
        }
    }

    fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    fn record_lag(&self, lag_ms: u64) {
        self.result_lag_last_ms.store(lag_ms, Ordering::Relaxed);
        self.result_lag_max_ms.fetch_max(lag_ms, Ordering::Relaxed);
    }
}

/// How the results driver paces itself.
#[derive(Clone, Debug)]
pub struct ResultsDriverConfig {
    /// At most this many settled PKs per transaction.
    pub batch: usize,
    /// At most this many running PKs' rows (started rows, gifter totals) between two
    /// looks at the outbox, so that settled results never wait behind a long pass.
    pub step: usize,
    /// How often an idle driver looks at its arena again.
    pub poll: Duration,
    /// How often the gifter totals of running PKs are written (only PKs whose totals
    /// changed).
    pub gifts_every: Duration,
    /// The cap of the retry backoff while the database is down.
    pub max_backoff: Duration,
    /// How long one database operation may take before it counts as failed.
    pub operation_timeout: Duration,
}

impl Default for ResultsDriverConfig {
    fn default() -> Self {
        ResultsDriverConfig {
            batch: 200,
            step: 16,
            poll: Duration::from_millis(50),
            gifts_every: Duration::from_secs(2),
            max_backoff: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
        }
    }
}

/// How the cache driver paces itself.
#[derive(Clone, Debug)]
pub struct CacheDriverConfig {
    /// At most this many effects per pipeline.
    pub batch: usize,
    /// How often the cache is rewritten from the replicas regardless (this also renews
    /// the keys' expiry, an hour for the directory keys).
    pub refresh_every: Duration,
    /// How often leadership is looked at.
    pub poll: Duration,
    /// The cap of the retry backoff while Redis is down.
    pub max_backoff: Duration,
    /// How long one Redis operation may take before it counts as failed.
    pub operation_timeout: Duration,
}

impl Default for CacheDriverConfig {
    fn default() -> Self {
        CacheDriverConfig {
            batch: 2_000,
            refresh_every: Duration::from_secs(30),
            poll: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(5),
        }
    }
}

/// What [`Sinks::start`] connects to.
#[derive(Clone, Debug, Default)]
pub struct SinksConfig {
    /// `mysql://...` or `sqlite://path?mode=rwc`; `None`: no results store.
    pub results_url: Option<String>,
    /// `redis://host:port/db`; `None`: no cache.
    pub redis_url: Option<String>,
    pub results: ResultsDriverConfig,
    pub cache: CacheDriverConfig,
}

/// The results store once connected (the history API reads it; empty until then).
pub type ResultsSlot = Arc<OnceLock<ResultsStore>>;

/// The running sink drivers of one node.
pub struct Sinks {
    results: ResultsSlot,
    metrics: Arc<SinkMetrics>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks").field("metrics", &self.metrics.snapshot()).finish_non_exhaustive()
    }
}

impl Sinks {
    /// Starts the drivers on the current runtime. Connecting happens in the background,
    /// with retries: a database or Redis that is down at start only delays the sinks.
    pub fn start(node: Arc<Node>, config: SinksConfig) -> Sinks {
        let results: ResultsSlot = Arc::new(OnceLock::new());
        let metrics = Arc::new(SinkMetrics::default());
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        if let Some(url) = config.results_url.clone() {
            let run = run_results_sink(
                node.clone(),
                url,
                config.results.clone(),
                metrics.clone(),
                results.clone(),
                stopped.clone(),
            );
            tasks.push(tokio::spawn(run));
        }
        if let Some(url) = config.redis_url.clone() {
            let run = run_cache_sink(node, url, config.cache.clone(), metrics.clone());
            tasks.push(tokio::spawn(until_stopped(stopped, run)));
        }
        Sinks { results, metrics, stop, tasks }
    }

    /// The results store, once connected.
    pub fn results(&self) -> ResultsSlot {
        self.results.clone()
    }

    pub fn metrics(&self) -> Arc<SinkMetrics> {
        self.metrics.clone()
    }

    /// Stops every driver and waits until they have let go of the node.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn until_stopped(mut stop: watch::Receiver<bool>, duty: impl Future<Output = ()>) {
    tokio::select! {
        _ = stop.wait_for(|stopped| *stopped) => {}
        () = duty => {}
    }
}

/// The first wait after a failed sink operation.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

async fn timed<T, E>(
    what: &'static str,
    limit: Duration,
    operation: impl Future<Output = Result<T, E>>,
) -> Result<T, DriverError>
where
    DriverError: From<E>,
{
    match tokio::time::timeout(limit, operation).await {
        Ok(result) => result.map_err(DriverError::from),
        Err(_) => Err(DriverError::Timeout(what, limit)),
    }
}

// ---- results ----------------------------------------------------------------------

/// Connects to the results store (retrying while the database is down), then runs one
/// results driver per arena until stopped.
async fn run_results_sink(
    node: Arc<Node>,
    url: String,
    config: ResultsDriverConfig,
    metrics: Arc<SinkMetrics>,
    slot: ResultsSlot,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(FIRST_BACKOFF, config.max_backoff);
    let connect = async {
        loop {
            match timed("connecting the results store", config.operation_timeout, ResultsStore::connect(&url)).await {
                Ok(store) => return store,
                Err(error) => {
                    SinkMetrics::add(&metrics.results_errors, 1);
                    tracing::warn!(%error, "results store unavailable; retrying");
                    tokio::time::sleep(backoff.next_wait()).await;
                }
            }
        }
    };
    let store = tokio::select! {
        _ = stop.wait_for(|stopped| *stopped) => return,
        store = connect => store,
    };
    tracing::info!(dialect = ?store.dialect(), "results store connected");
    let _ = slot.set(store.clone());
    let mut drivers = JoinSet::new();
    for arena in 1..=u64::from(node.arena_count()) {
        let driver = ResultsDriver::new(node.clone(), GroupId(arena), store.clone(), config.clone(), metrics.clone());
        drivers.spawn(driver.run());
    }
    // The drivers loop until stopped; then they are aborted, and waited for so that
    // none still holds the node when this returns.
    let _ = stop.wait_for(|stopped| *stopped).await;
    drivers.shutdown().await;
}

/// Spawns the results driver of every arena over an already connected store.
pub fn spawn_results_drivers(
    node: Arc<Node>,
    store: ResultsStore,
    config: ResultsDriverConfig,
    metrics: Arc<SinkMetrics>,
) -> Vec<JoinHandle<()>> {
    (1..=u64::from(node.arena_count()))
        .map(|arena| {
            let driver =
                ResultsDriver::new(node.clone(), GroupId(arena), store.clone(), config.clone(), metrics.clone());
            tokio::spawn(driver.run())
        })
        .collect()
}

/// Whether a round left work behind.
enum Round {
    /// More settled PKs wait: go again at once.
    More,
    Idle,
}

/// Carries one arena's settled results (and running PKs' rows) into the results store
/// while this node leads the arena.
struct ResultsDriver {
    node: Arc<Node>,
    group: GroupId,
    store: ResultsStore,
    config: ResultsDriverConfig,
    metrics: Arc<SinkMetrics>,
    /// Running PKs whose `t_pk` row was written under the current leadership.
    started: BTreeSet<PkId>,
    /// Running PKs' side totals when their gifters were last written.
    gifts_written: BTreeMap<PkId, [i64; 2]>,
    /// Running PKs whose gifter totals the current pass has still to look at.
    gifts_due: std::collections::VecDeque<PkId>,
    next_gifts: Instant,
}

impl ResultsDriver {
    fn new(
        node: Arc<Node>,
        group: GroupId,
        store: ResultsStore,
        config: ResultsDriverConfig,
        metrics: Arc<SinkMetrics>,
    ) -> ResultsDriver {
        ResultsDriver {
            node,
            group,
            store,
            config,
            metrics,
            started: BTreeSet::new(),
            gifts_written: BTreeMap::new(),
            gifts_due: std::collections::VecDeque::new(),
            next_gifts: Instant::now(),
        }
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new(FIRST_BACKOFF, self.config.max_backoff);
        let mut leading = false;
        loop {
            if !self.node.is_leader(self.group) {
                if leading {
                    tracing::debug!(group = %self.group, "results driver idle: no longer the leader");
                    self.started.clear();
                    self.gifts_written.clear();
                    self.gifts_due.clear();
                }
                leading = false;
                tokio::time::sleep(self.config.poll).await;
                continue;
            }
            if !leading {
                tracing::debug!(group = %self.group, "results driver resuming from the outbox");
                leading = true;
            }
            match self.round().await {
                Ok(Round::More) => {
                    backoff.reset();
                    tokio::task::yield_now().await;
                }
                Ok(Round::Idle) => {
                    backoff.reset();
                    tokio::time::sleep(self.config.poll).await;
                }
                Err(error) => {
                    SinkMetrics::add(&self.metrics.results_errors, 1);
                    let wait = backoff.next_wait();
                    tracing::warn!(group = %self.group, %error, ?wait, "results sink: retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn read<T: Default>(&self, read: impl FnOnce(&pkd_raft::Arena) -> T) -> T {
        match self.node.replica(self.group) {
            Some(replica) => replica.read(|machine| machine.as_arena().map(read).unwrap_or_default()),
            None => T::default(),
        }
    }

    async fn round(&mut self) -> Result<Round, DriverError> {
        let batch = self.config.batch;
        let pending: Vec<SettledPk> = self.read(|arena| arena.pending_results().take(batch).cloned().collect());
        if !pending.is_empty() {
            self.store_results(&pending).await?;
            if pending.len() == batch {
                return Ok(Round::More);
            }
        }
        let more_started = self.store_started().await?;
        if self.gifts_due.is_empty() && Instant::now() >= self.next_gifts {
            self.plan_gifts();
            self.next_gifts = Instant::now() + self.config.gifts_every;
        }
        let more_gifts = self.store_gifts().await?;
        Ok(if more_started || more_gifts { Round::More } else { Round::Idle })
    }

    /// Writes settled PKs, reads them back (rewriting any that differ), then confirms
    /// them to the arena, which drops them from its outbox.
    async fn store_results(&mut self, pending: &[SettledPk]) -> Result<(), DriverError> {
        let limit = self.config.operation_timeout;
        timed("writing settled PKs", limit, self.store.record_settled_batch(pending)).await?;
        SinkMetrics::add(&self.metrics.results_written, pending.len() as u64);
        let now = wall_clock();
        for settled in pending {
            let lag = u64::try_from(now.since(settled.end_time)).unwrap_or(0);
            self.metrics.record_lag(lag);
        }
        for settled in pending {
            let mismatches = timed("verifying a settled PK", limit, self.store.verify_settled(settled)).await?;
            if !mismatches.is_empty() {
                tracing::warn!(pk = %settled.pk, ?mismatches, "stored result differs from the engine's; rewriting");
                timed("repairing a settled PK", limit, self.store.record_settled(settled)).await?;
                SinkMetrics::add(&self.metrics.results_repaired, 1);
            }
        }
        let confirmations = pending.iter().map(|settled| {
            let node = &self.node;
            let group = self.group;
            let pk = settled.pk;
            async move { node.propose(group, Action::ConfirmResultPersisted { pk }).await }
        });
        let outcomes = futures_util::future::join_all(confirmations).await;
        for settled in pending {
            self.started.remove(&settled.pk);
            self.gifts_written.remove(&settled.pk);
        }
        let mut failure = None;
        for outcome in outcomes {
            match outcome {
                Ok(_) => SinkMetrics::add(&self.metrics.results_confirmed, 1),
                Err(error) => failure = Some(error),
            }
        }
        // Unconfirmed PKs stay in the outbox and are written (identically) again.
        match failure {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }

    /// Writes the `t_pk` row of running PKs not written yet under this leadership, at
    /// most [`ResultsDriverConfig::step`] of them; `true` if more wait.
    async fn store_started(&mut self) -> Result<bool, DriverError> {
        let started = &self.started;
        let step = self.config.step;
        let fresh: Vec<PkView> = self.read(|arena| {
            arena.running().filter(|pk| !started.contains(pk)).take(step + 1).filter_map(|pk| arena.view(pk)).collect()
        });
        let more = fresh.len() > step;
        for view in fresh.into_iter().take(step) {
            timed("writing a started PK", self.config.operation_timeout, self.store.record_started(&view)).await?;
            SinkMetrics::add(&self.metrics.started_written, 1);
            self.started.insert(view.pk);
        }
        Ok(more)
    }

    /// Starts a pass over the running PKs' gifter totals, and forgets PKs no longer
    /// running.
    fn plan_gifts(&mut self) {
        let running: Vec<PkId> = self.read(|arena| arena.running().collect());
        let alive: BTreeSet<PkId> = running.iter().copied().collect();
        self.gifts_written.retain(|pk, _| alive.contains(pk));
        self.started.retain(|pk| alive.contains(pk));
        self.gifts_due = running.into();
    }

    /// Writes the gifter totals of the next [`ResultsDriverConfig::step`] PKs of the
    /// pass whose side totals changed since their last write; `true` if more wait.
    async fn store_gifts(&mut self) -> Result<bool, DriverError> {
        let Some(replica) = self.node.replica(self.group) else { return Ok(false) };
        let take = self.config.step.min(self.gifts_due.len());
        let due: Vec<PkId> = self.gifts_due.drain(..take).collect();
        let written = &self.gifts_written;
        let (at, changed) = replica.read(|machine| {
            let Some(arena) = machine.as_arena() else { return (machine.now(), Vec::new()) };
            let changed: Vec<_> = due
                .iter()
                .filter_map(|pk| {
                    let view = arena.view(*pk)?;
                    let totals = [view.source.beans, view.target.beans];
                    if totals == written.get(pk).copied().unwrap_or([0, 0]) {
                        return None;
                    }
                    Some((*pk, totals, arena.gifter_totals(*pk)?))
                })
                .collect();
            (machine.now(), changed)
        });
        for (pk, totals, [source, target]) in changed {
            let write = self.store.record_gifts(pk, at, &source, &target);
            timed("writing gifter totals", self.config.operation_timeout, write).await?;
            SinkMetrics::add(&self.metrics.gift_totals_written, 1);
            self.gifts_written.insert(pk, totals);
        }
        Ok(!self.gifts_due.is_empty())
    }
}

// ---- cache ------------------------------------------------------------------------

/// Connects to Redis (retrying while it is down), then runs the cache driver until
/// stopped.
async fn run_cache_sink(node: Arc<Node>, url: String, config: CacheDriverConfig, metrics: Arc<SinkMetrics>) {
    let mut backoff = Backoff::new(FIRST_BACKOFF, config.max_backoff);
    let cache = loop {
        match timed("connecting to Redis", config.operation_timeout, RedisCache::connect(&url)).await {
            Ok(cache) => break cache,
            Err(error) => {
                SinkMetrics::add(&metrics.cache_errors, 1);
                tracing::warn!(%error, "Redis unavailable; retrying");
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    };
    tracing::info!("Redis cache connected");
    CacheDriver::new(node, cache, config, metrics).run().await;
}

/// Spawns the cache driver over an already connected cache.
pub fn spawn_cache_driver(
    node: Arc<Node>,
    cache: RedisCache,
    config: CacheDriverConfig,
    metrics: Arc<SinkMetrics>,
) -> JoinHandle<()> {
    tokio::spawn(CacheDriver::new(node, cache, config, metrics).run())
}

/// Keeps the Redis read cache in step with the groups this node leads.
struct CacheDriver {
    node: Arc<Node>,
    cache: RedisCache,
    config: CacheDriverConfig,
    metrics: Arc<SinkMetrics>,
    /// Groups this node led at the last look.
    leading: BTreeSet<GroupId>,
    /// Groups whose keys must be rewritten from the replica.
    stale: BTreeSet<GroupId>,
    /// After a failure, no Redis traffic before this.
    quiet_until: Option<Instant>,
    backoff: Backoff,
}

impl CacheDriver {
    fn new(node: Arc<Node>, cache: RedisCache, config: CacheDriverConfig, metrics: Arc<SinkMetrics>) -> CacheDriver {
        let backoff = Backoff::new(FIRST_BACKOFF, config.max_backoff);
        CacheDriver {
            node,
            cache,
            config,
            metrics,
            leading: BTreeSet::new(),
            stale: BTreeSet::new(),
            quiet_until: None,
            backoff,
        }
    }

    async fn run(mut self) {
        let mut effects = self.node.subscribe_effects();
        let groups: Vec<GroupId> = (0..=u64::from(self.node.arena_count())).map(GroupId).collect();
        let mut next_refresh = Instant::now() + self.config.refresh_every;
        loop {
            let now_leading: BTreeSet<GroupId> =
                groups.iter().copied().filter(|group| self.node.is_leader(*group)).collect();
            self.stale.extend(now_leading.difference(&self.leading).copied());
            self.stale.retain(|group| now_leading.contains(group));
            self.leading = now_leading;
            if Instant::now() >= next_refresh {
                self.stale.extend(self.leading.iter().copied());
                next_refresh = Instant::now() + self.config.refresh_every;
            }
            if !self.stale.is_empty() && self.may_talk() {
                self.refresh().await;
            }

            let received = tokio::select! {
                received = effects.recv() => received,
                () = tokio::time::sleep(self.config.poll) => continue,
            };
            match received {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < self.config.batch {
                        match effects.try_recv() {
                            Ok(effect) => batch.push(effect),
                            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                self.lost_effects();
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let changes: Vec<CacheChange> = batch
                        .into_iter()
                        .filter(|tagged| self.leading.contains(&tagged.group))
                        .filter_map(|tagged| match tagged.effect {
                            Effect::CacheChanged(change) => Some(change),
                            _ => None,
                        })
                        .collect();
                    if !changes.is_empty() && self.may_talk() {
                        self.apply(changes).await;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.lost_effects(),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Whether Redis may be spoken to (not within the backoff after a failure).
    fn may_talk(&self) -> bool {
        self.quiet_until.is_none_or(|until| Instant::now() >= until)
    }

    fn failed(&mut self, error: &DriverError) {
        SinkMetrics::add(&self.metrics.cache_errors, 1);
        let wait = self.backoff.next_wait();
        tracing::warn!(%error, ?wait, "Redis cache write failed; the cache will be rebuilt");
        self.quiet_until = Some(Instant::now() + wait);
        self.stale.extend(self.leading.iter().copied());
    }

    fn succeeded(&mut self) {
        self.quiet_until = None;
        self.backoff.reset();
    }

    fn lost_effects(&mut self) {
        SinkMetrics::add(&self.metrics.cache_lagged, 1);
        tracing::warn!("the cache driver fell behind and lost effects; rebuilding");
        self.stale.extend(self.leading.iter().copied());
    }

    fn render(node: &Node, pk: PkId) -> Option<PkView> {
        node.replica(node.arena_of(pk))?.read(|machine| machine.as_arena()?.view(pk))
    }

    async fn apply(&mut self, mut changes: Vec<CacheChange>) {
        // One rendering per PK and batch: it reads the replica's latest state anyway.
        let mut rendered = BTreeSet::new();
        changes.retain(|change| match change {
            CacheChange::Pk { pk } => rendered.insert(*pk),
            _ => true,
        });
        let count = changes.len() as u64;
        let node = self.node.clone();
        let write = self.cache.apply(&changes, |pk| CacheDriver::render(&node, pk));
        match timed("applying cache changes", self.config.operation_timeout, write).await {
            Ok(()) => {
                SinkMetrics::add(&self.metrics.cache_batches, 1);
                SinkMetrics::add(&self.metrics.cache_changes, count);
                self.succeeded();
            }
            Err(error) => self.failed(&error),
        }
    }

    /// Rewrites the keys of the stale groups from the replicas. Leading the lobby, this
    /// node rewrites the whole cache (deleting keys of PKs no longer running); leading
    /// only arenas, it rewrites their running PKs' keys.
    async fn refresh(&mut self) {
        let limit = self.config.operation_timeout;
        let outcome = if self.stale.contains(&LOBBY) {
            let snapshot = self.snapshot();
            timed("rebuilding the cache", limit, self.cache.rebuild(&snapshot)).await.map(|_| ())
        } else {
            let changes: Vec<CacheChange> = self.stale.iter().flat_map(|group| self.arena_changes(*group)).collect();
            let node = self.node.clone();
            let write = self.cache.apply(&changes, |pk| CacheDriver::render(&node, pk));
            timed("refreshing arena cache keys", limit, write).await
        };
        match outcome {
            Ok(()) => {
                SinkMetrics::add(&self.metrics.cache_rebuilds, 1);
                self.stale.clear();
                self.succeeded();
            }
            Err(error) => self.failed(&error),
        }
    }

    /// The whole cache content from this node's replicas.
    fn snapshot(&self) -> CacheSnapshot {
        let mut snapshot = CacheSnapshot::default();
        if let Some(lobby) = self.node.replica(LOBBY) {
            lobby.read(|machine| {
                if let Some(lobby) = machine.as_lobby() {
                    snapshot.matching = lobby.waiting_anchors().collect();
                    snapshot.invited = lobby.cooldowns().collect();
                    snapshot.rooms_in_pk = lobby
                        .held_pks()
                        .flat_map(|(pk, seats)| seats.into_iter().map(move |seat| (seat.room, pk)))
                        .collect();
                }
            });
        }
        for arena in 1..=u64::from(self.node.arena_count()) {
            let Some(replica) = self.node.replica(GroupId(arena)) else { continue };
            replica.read(|machine| {
                let Some(arena) = machine.as_arena() else { return };
                for pk in arena.running() {
                    if let (Some(view), Some([source_gifters, target_gifters])) =
                        (arena.view(pk), arena.gifter_totals(pk))
                    {
                        snapshot.pks.push(RunningPk { view, source_gifters, target_gifters });
                    }
                }
            });
        }
        snapshot
    }

    /// Changes that rewrite one arena's running PKs (`pk_` and `pkg_` keys).
    fn arena_changes(&self, group: GroupId) -> Vec<CacheChange> {
        let Some(replica) = self.node.replica(group) else { return Vec::new() };
        replica.read(|machine| {
            let Some(arena) = machine.as_arena() else { return Vec::new() };
            let mut changes = Vec::new();
            for pk in arena.running() {
                changes.push(CacheChange::Pk { pk });
                let (Some(view), Some(gifters)) = (arena.view(pk), arena.gifter_totals(pk)) else { continue };
                for (anchor, side) in [view.source.anchor, view.target.anchor].into_iter().zip(gifters) {
                    changes.extend(side.into_iter().map(|gifter| CacheChange::GifterTotal {
                        pk,
                        anchor,
                        sender: gifter.sender,
                        beans: gifter.beans,
                    }));
                }
            }
            changes
        })
    }
}

#[cfg(test)]
mod metrics_tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text() {
        let counters = SinkCounters { results_repaired: 3, cache_errors: 7, ..SinkCounters::default() };
        let text = counters.to_prometheus();
        assert!(text.contains("# TYPE pkd_results_repaired_total counter\npkd_results_repaired_total 3\n"), "{text}");
        assert!(text.contains("pkd_cache_errors_total 7\n"));
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 13);
    }
}
