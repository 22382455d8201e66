//! The audit log on the admin API's side: who asked (the `X-Pkd-Operator` header), and
//! recording each action with its outcome in the lobby's replicated log
//! (`LobbyAction::RecordAudit`).

use std::time::Duration;

use axum::http::HeaderMap;
use pkd_cluster::api::{AuditItem, OPERATOR_HEADER};
use pkd_raft::{AuditEntry, AuditRecord, LobbyAction};

use crate::replication::node::Node;
use crate::retry::{Attempt, patiently};

/// Who acted when a request names nobody.
pub const UNNAMED: &str = "admin API";

/// How long recording an entry may keep trying while the lobby's leadership moves (a
/// leadership transfer of the lobby itself is one of the actions recorded).
const RECORD_PATIENCE: Duration = Duration::from_secs(10);

/// The operator a request names, or [`UNNAMED`]. Control characters are left out and the
/// name is cut to 64 characters.
pub fn operator(headers: &HeaderMap) -> String {
    let named = headers
        .get(OPERATOR_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(|name| name.chars().filter(|c| !c.is_control()).take(64).collect::<String>())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty());
    named.unwrap_or_else(|| UNNAMED.to_owned())
}

/// Records that `who` did `what`, and how it went. A failure to record is logged; the
/// action itself has happened (or failed) regardless.
pub async fn record<T, E: std::fmt::Display>(node: &Node, who: String, what: String, outcome: &Result<T, E>) {
    let outcome = match outcome {
        Ok(_) => "done".to_owned(),
        Err(error) => format!("failed: {error}"),
    };
    tracing::info!(%who, %what, %outcome, "operator action");
    let record = AuditRecord { id: rand::random(), who, what, outcome };
    let record = &record;
    let recorded = patiently(RECORD_PATIENCE, Duration::from_millis(100), || async move {
        match node.propose_lobby(LobbyAction::RecordAudit(record.clone())).await {
            Ok(_) => Ok(()),
            // The record's id makes sending it again harmless, whatever became of it.
            Err(error) if error.is_transient() => Err(Attempt::Again(error.to_string())),
            Err(error) => Err(Attempt::ForGood(error.to_string())),
        }
    });
    if let Err(error) = recorded.await {
        tracing::warn!(%error, what = %record.what, "the action could not be written to the audit log");
    }
}

/// An entry as the admin API shows it.
pub fn item(entry: &AuditEntry) -> AuditItem {
    AuditItem {
        seq: entry.seq,
        at_ms: entry.at.0,
        who: entry.who.clone(),
        what: entry.what.clone(),
        outcome: entry.outcome.clone(),
    }
}
