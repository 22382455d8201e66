//! pkd's integration tests: one binary, one module per feature, all over real sockets.
//!
//! - In-process nodes (`engine` helpers): [`replica`] (one node on sled), [`cluster`]
//!   (three nodes on loopback), [`sinks_driver`] (the results store and the cache duties).
//! - One app started through its seam (`pkd::app::start`) on port 0: [`gateway`], [`edge`].
//! - Real `pkd serve` processes (`common` helpers, `pkd_cluster::LocalCluster`):
//!   [`processes`], [`flows`], [`backup`], [`upgrade`], [`logs`], [`openapi`], [`cli`],
//!   [`bench`], [`faults`], [`browser`] (headless Chromium).
//! - The in-process tier of the fault tests, with the `fault-injection` feature:
//!   `faults_in_process` (many seeds, nodes in this process).
//! - The cache as readers see it, written by real processes: [`cache`].
//! - Stores and formats: [`sinks_sql`] (SQLite and MariaDB), [`sinks_redis`] (Redis),
//!   [`protocol`], [`tokens`].
//!
//! Services come from the environment `scripts/test` sets: `PKD_TEST_REDIS_URL`,
//! `PKD_TEST_MYSQL_URL`, `PKD_CHROMIUM`.

mod common;
mod engine;

mod backup;
mod bench;
mod browser;
mod cache;
mod cli;
mod cluster;
mod edge;
mod faults;
#[cfg(feature = "fault-injection")]
mod faults_in_process;
mod flows;
mod gateway;
mod layout;
mod logs;
mod openapi;
mod processes;
mod protocol;
mod replica;
mod sinks_driver;
mod sinks_redis;
mod sinks_sql;
mod tls;
mod tokens;
mod upgrade;
