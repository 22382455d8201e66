//! Where committed state leaves the cluster: the SQL results tables and the Redis read
//! cache of the source design (SPEC §5), and the counters of the duties that write them
//! (the results and cache duties).
//!
//! Both stores are written from a group's leader, after commit, and may be given the same
//! data twice (a restart replays the log, a new leader resumes its outbox): every write is
//! an idempotent upsert of absolute values.

pub mod metrics;
pub mod redis_cache;
pub mod sql;

use std::sync::{Arc, OnceLock};

pub use metrics::{SinkCounters, SinkMetrics};
pub use redis_cache::{CacheError, Directory, RedisCache, RunningPk, Writes, Written};
pub use sql::{
    Dialect, ExportedPk, LedgerGift, LedgerTotal, Mismatch, PkRecord, ResultsStore, SettledExport, StoreError,
};

/// The results store once connected (the history API reads it; empty until then).
pub type ResultsSlot = Arc<OnceLock<ResultsStore>>;
