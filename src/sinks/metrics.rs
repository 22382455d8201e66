//! The sinks' counters, shared by the duties that write the stores and by `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters of the sink drivers, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    pub(crate) results_written: AtomicU64,
    pub(crate) results_confirmed: AtomicU64,
    pub(crate) results_repaired: AtomicU64,
    pub(crate) results_errors: AtomicU64,
    pub(crate) started_written: AtomicU64,
    pub(crate) gift_totals_written: AtomicU64,
    pub(crate) result_lag_last_ms: AtomicU64,
    pub(crate) result_lag_max_ms: AtomicU64,
    pub(crate) cache_batches: AtomicU64,
    pub(crate) cache_changes: AtomicU64,
    pub(crate) cache_rebuilds: AtomicU64,
    pub(crate) cache_errors: AtomicU64,
    pub(crate) cache_lagged: AtomicU64,
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
    /// Every counter with its metric name and help (the lags are exported in seconds by
    /// `crate::telemetry`).
    pub fn named_with_help(&self) -> [(&'static str, &'static str, u64); 11] {
        [
            ("pkd_results_written_total", "settled PKs written to the results store", self.results_written),
            ("pkd_results_confirmed_total", "settled PKs confirmed persisted through raft", self.results_confirmed),
            (
                "pkd_results_repaired_total",
                "settled PKs whose stored rows differed and were rewritten",
                self.results_repaired,
            ),
            ("pkd_results_errors_total", "failed results store operations", self.results_errors),
            ("pkd_results_started_written_total", "running PKs' start rows written", self.started_written),
            ("pkd_results_gift_totals_written_total", "running PKs' gifter totals written", self.gift_totals_written),
            ("pkd_cache_batches_total", "pipelined Redis batches", self.cache_batches),
            ("pkd_cache_changes_total", "cache changes applied to Redis", self.cache_changes),
            ("pkd_cache_rebuilds_total", "full Redis rebuilds from the replicas", self.cache_rebuilds),
            ("pkd_cache_errors_total", "failed Redis operations", self.cache_errors),
            ("pkd_cache_lagged_total", "times the cache driver fell behind the effects", self.cache_lagged),
        ]
    }

    /// Every counter with its metric name.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        self.named_with_help().into_iter().map(|(name, _, value)| (name, value)).collect()
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

    pub(crate) fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    pub(crate) fn record_lag(&self, lag_ms: u64) {
        self.result_lag_last_ms.store(lag_ms, Ordering::Relaxed);
        self.result_lag_max_ms.fetch_max(lag_ms, Ordering::Relaxed);
    }
}
