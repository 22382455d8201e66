//! Where committed effects leave the cluster: the SQL results tables and the Redis
//! read cache of the source design (SPEC §5).
//!
//! Both sinks are called from a group leader, after commit, and may see the same
//! effect twice (a restart replays the log, a new leader re-sends its outbox): every
//! write is an idempotent upsert of absolute values.

pub mod driver;
pub mod http;
pub mod redis_cache;
pub mod sql;

pub use driver::{
    CacheDriverConfig, DriverError, ResultsDriverConfig, ResultsSlot, SinkCounters, SinkMetrics, Sinks, SinksConfig,
};
pub use redis_cache::{CacheError, CacheSnapshot, RebuildReport, RedisCache, RunningPk};
pub use sql::{Dialect, Mismatch, PkRecord, ResultsStore, StoreError};
