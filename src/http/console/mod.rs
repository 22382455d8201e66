//! The web console (`/console` on the admin listener) and the watch page (`/watch` on the
//! client listener): the pages ([`pages`]), and the admin API's routes the console reads
//! and acts through. `docs/console.md` is the operator's guide.
//!
//! - [`cluster`]: every node's report, gathered from any node over the cluster's network.
//! - [`views`]: the running PKs, the lobby, the config rows and the audit log.
//! - [`audit`]: who asked, and recording each action in the replicated audit log.
//! - [`events`]: the live feed (Server-Sent Events).

pub mod audit;
pub mod cluster;
pub mod events;
pub mod pages;
pub mod views;
