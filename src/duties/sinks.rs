//! Connecting the stores and starting their duties: the results duty on every arena, the
//! cache duty on every group.
//!
//! Connecting happens in the background, with retries: a database or Redis that is down
//! at start only delays the sinks. The results store, once connected, is also what the
//! history API reads ([`Sinks::results`]).

use std::sync::{Arc, OnceLock};

use super::cache::{Cache, CacheConfig};
use super::results::{Placement, Results, ResultsConfig, timed};
use super::{Duties, MIN_BACKOFF};
use crate::replication::node::Node;
use crate::retry::Backoff;
use crate::sinks::{Dialect, RedisCache, ResultsSlot, ResultsStore, SinkMetrics};

/// What [`Sinks::start`] connects to.
#[derive(Clone, Debug, Default)]
pub struct SinksConfig {
    /// `mysql://...` or `sqlite://path?mode=rwc`; `None`: no results store.
    pub results_url: Option<String>,
    /// `redis://host:port/db` or `rediss://` (TLS); `None`: no cache.
    pub redis_url: Option<String>,
    /// The CA that signs a `rediss://` server's certificate.
    pub redis_ca: Option<std::path::PathBuf>,
    pub results: ResultsConfig,
    pub cache: CacheConfig,
}

/// The sinks of one node: their duties, the results store once connected, the counters.
pub struct Sinks {
    duties: Arc<Duties>,
    results: ResultsSlot,
    metrics: Arc<SinkMetrics>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks").field("metrics", &self.metrics.snapshot()).finish_non_exhaustive()
    }
}

impl Sinks {
    /// Starts connecting, then the duties, on the current runtime.
    pub fn start(node: &Node, config: SinksConfig) -> Sinks {
        let duties = Arc::new(Duties::new(node));
        let results: ResultsSlot = Arc::new(OnceLock::new());
        let metrics = Arc::new(SinkMetrics::default());
        if let Some(url) = config.results_url.clone() {
            let connecting =
                connect_results(duties.clone(), url, config.results.clone(), metrics.clone(), results.clone());
            duties.spawn(connecting);
        }
        if let Some(url) = config.redis_url.clone() {
            let connecting =
                connect_cache(duties.clone(), url, config.redis_ca.clone(), config.cache.clone(), metrics.clone());
            duties.spawn(connecting);
        }
        Sinks { duties, results, metrics }
    }

    /// The results store, once connected.
    pub fn results(&self) -> ResultsSlot {
        self.results.clone()
    }

    pub fn metrics(&self) -> Arc<SinkMetrics> {
        self.metrics.clone()
    }

    /// Stops every duty and waits until they have let go of the node.
    pub async fn shutdown(&self) {
        self.duties.stop().await;
    }
}

/// Connects to the results store (retrying while the database is down), then runs the
/// results duty of every arena.
async fn connect_results(
    duties: Arc<Duties>,
    url: String,
    config: ResultsConfig,
    metrics: Arc<SinkMetrics>,
    slot: ResultsSlot,
) {
    let mut backoff = Backoff::new(MIN_BACKOFF, config.max_backoff);
    let store = loop {
        match timed("connecting the results store", config.operation_timeout, ResultsStore::connect(&url)).await {
            Ok(store) => break store,
            Err(error) => {
                SinkMetrics::add(&metrics.results_errors, 1);
                tracing::warn!(%error, "results store unavailable; retrying");
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    };
    tracing::info!(dialect = ?store.dialect(), "results store connected");
    let _ = slot.set(store.clone());
    let node = duties.node().clone();
    if store.dialect() == Dialect::Sqlite {
        // This node's own store: it copies what was settled before it joined.
        duties.spawn(super::backfill::complete(node.clone(), store.clone(), metrics.clone()));
    }
    for arena in node.arenas() {
        let duty = Results::new(&node, arena, store.clone(), config.clone(), metrics.clone());
        match duty.placement() {
            Placement::Shared => duties.run(arena.group(), duty),
            Placement::PerNode => duties.run_everywhere(arena.group(), duty),
        }
    }
}

/// Connects to Redis (retrying while it is down), then runs the cache duty of every group.
async fn connect_cache(
    duties: Arc<Duties>,
    url: String,
    ca: Option<std::path::PathBuf>,
    config: CacheConfig,
    metrics: Arc<SinkMetrics>,
) {
    let mut backoff = Backoff::new(MIN_BACKOFF, config.max_backoff);
    let cache = loop {
        let connecting = RedisCache::connect_with_ca(&url, ca.as_deref());
        match timed("connecting to Redis", config.operation_timeout, connecting).await {
            Ok(cache) => break cache,
            Err(error) => {
                SinkMetrics::add(&metrics.cache_errors, 1);
                tracing::warn!(%error, "Redis unavailable; retrying");
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    };
    tracing::info!("Redis cache connected");
    let node = duties.node().clone();
    duties.run(node.topology().lobby(), Cache::directory(&node, cache.clone(), config.clone(), metrics.clone()));
    for arena in node.arenas() {
        duties.run(arena.group(), Cache::arena(&node, arena, cache.clone(), config.clone(), metrics.clone()));
    }
}
