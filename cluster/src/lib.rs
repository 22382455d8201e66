//! pkd-cluster: what the admin API of a pkd node speaks ([`api`]), a typed client for it
//! ([`client`]), the clients an app and its gift service are ([`app`]: WebSocket,
//! [`gifts`]: the gift API), each in the clear or over TLS ([`stream`]), and [`LocalCluster`], which runs real `pkd serve` processes
//! on loopback for tests, benches and fault drills, its node-to-node links optionally
//! through a [`LinkProxy`] that cuts or slows them, and a [`ServiceLink`] that cuts a
//! node's link to a service (the results database, Redis).
//!
//! The crate does not depend on the `pkd` package: the server depends on it for the
//! request and response types, so both sides share one definition.

pub mod api;
pub mod app;
pub mod client;
pub mod gifts;
pub mod local;
pub mod proxy;
pub mod stream;

pub use app::{AppClient, AppError, Auth, ConnectOptions, Received};
pub use client::{AdminClient, ClientError};
pub use gifts::{BatchReply, Gift, GiftClient, GiftEntry, GiftError, GiftReply};
pub use local::{LocalCluster, LocalNode, LocalOptions};
pub use proxy::{LinkProxy, Links, Rule, ServiceLink};
pub use stream::Stream;
