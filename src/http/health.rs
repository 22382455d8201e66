//! Health for load balancers and orchestrators:
//!
//! - `GET /livez`: 200 while the process serves HTTP at all.
//! - `GET /readyz`: 200 only when this node can take clients: every group has a leader
//!   this node reaches (itself, or a connected peer) and this node's replica has applied
//!   everything it knows to be committed, and the node is not draining; 503 otherwise,
//!   with the reasons.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use pkd_cluster::api::NodeStatus;
use serde_json::{Value, json};

use std::sync::Arc;

use crate::gateway::Gateway;

/// `GET /livez`.
pub async fn live() -> &'static str {
    "ok"
}

/// `GET /readyz`.
pub async fn ready(State(gateway): State<Arc<Gateway>>) -> (StatusCode, Json<Value>) {
    let mut reasons = unready_reasons(&gateway.node().status());
    if gateway.is_draining() {
        reasons.insert(0, "the node is draining".to_owned());
    }
    if reasons.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true })))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "reasons": reasons })))
    }
}

/// Why a node with `status` should not take clients; empty when it should.
pub fn unready_reasons(status: &NodeStatus) -> Vec<String> {
    let mut reasons = Vec::new();
    for group in &status.groups {
        match group.leader {
            None => reasons.push(format!("group {} has no leader", group.id)),
            Some(leader) if leader != status.node && !status.connected.contains(&leader) => {
                reasons.push(format!("group {}'s leader, node {leader}, is not reachable", group.id))
            }
            Some(_) => {}
        }
        if group.applied < group.committed {
            reasons.push(format!(
                "group {} has applied {:?} of {:?} committed entries",
                group.id, group.applied, group.committed
            ));
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use pkd_cluster::api::{GroupKind, GroupStatus};

    fn group(id: u64, leader: Option<u64>, committed: u64, applied: u64) -> GroupStatus {
        GroupStatus {
            id,
            kind: if id == 0 { GroupKind::Lobby } else { GroupKind::Arena },
            state: "follower".to_owned(),
            leader,
            term: 1,
            last_log_index: Some(committed),
            committed: Some(committed),
            applied: Some(applied),
            voters: vec![1, 2, 3],
            learners: Vec::new(),
            replication: Vec::new(),
        }
    }

    #[test]
    fn ready_with_reachable_leaders_and_a_replica_caught_up() {
        let mut status =
            NodeStatus { node: 1, groups: vec![group(0, Some(1), 5, 5), group(1, Some(2), 7, 7)], connected: vec![2] };
        assert!(unready_reasons(&status).is_empty());
        status.connected.clear();
        assert_eq!(unready_reasons(&status), ["group 1's leader, node 2, is not reachable"]);
        status.connected.push(2);
        status.groups[0].leader = None;
        status.groups[1].applied = Some(6);
        assert_eq!(
            unready_reasons(&status),
            ["group 0 has no leader", "group 1 has applied Some(6) of Some(7) committed entries"]
        );
    }
}
