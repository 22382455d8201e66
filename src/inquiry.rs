//! What one node asks another over the cluster's authenticated network, outside of raft:
//! its report (the admin console's view of the whole cluster), a drain, and a page of its
//! settled results (for a node that joined a running cluster, `duties/backfill.rs`).
//!
//! Questions and answers travel as inquiries (`Network::inquire`), in JSON, so that nodes
//! of neighbouring versions still understand each other (unknown fields are ignored,
//! missing ones take their defaults; an unknown question is answered `Unknown`).

use std::time::Duration;

use pkd_cluster::api::{NodeId, NodeReport};
use serde::{Deserialize, Serialize};

use crate::replication::network::Network;
use crate::sinks::SettledExport;

/// What one node asks another.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Question {
    /// Its [`NodeReport`].
    Report,
    /// Drain and stop, as `POST /admin/drain` on its own admin API would.
    Drain,
    /// The rows of its settled PKs with an id above `after`, up to `limit` PKs.
    SettledResults { after: u64, limit: u32 },
}

/// What it answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Report(Box<NodeReport>),
    Draining,
    /// A page of settled results, from a store that holds every settled PK of the
    /// cluster (`complete`) or not.
    SettledResults {
        complete: bool,
        page: SettledExport,
    },
    /// The question could not be answered there (no embedded store, a store error).
    Refused(String),
    /// The question was not understood (a node of another version).
    Unknown(String),
}

/// Asks `peer` over `network`, waiting at most `wait` for its answer.
pub async fn ask(network: &Network, peer: NodeId, question: &Question, wait: Duration) -> Result<Answer, String> {
    let bytes = serde_json::to_vec(question).map_err(|error| error.to_string())?;
    let answer = network.inquire(peer, bytes, wait).await.map_err(|error| error.to_string())?;
    serde_json::from_slice(&answer).map_err(|error| format!("unreadable answer: {error}"))
}
